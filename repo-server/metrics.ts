// GET /metrics in Prometheus' text format, through prom-client (the format's own rules -
// escaping, HELP/TYPE, histogram buckets - are the library's, not hand-written). The fleet
// and rollout gauges are computed at scrape time from the report store and index.json, so
// they are never stale; counters and the publish histogram are updated as requests finish.
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client';
import { openStage, type Index } from '../format/index.js';
import { readServedIndex } from './repo-view.js';
import type { ReportStore } from './reports.js';
import { HALT_RULE_BY } from './rollouts.js';

export interface ServerMetricsOptions {
  repoDir: string;
  store?: ReportStore;
  now?: () => Date;
  /** a host whose last report is older than this is counted as stale */
  staleMinutes: number;
}

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'kind' | 'method' | 'code'>;
  private readonly bytes: Counter<'kind'>;
  private readonly publishSeconds: Histogram<'result'>;

  constructor(private readonly opts: ServerMetricsOptions) {
    const registers = [this.registry];
    const now = opts.now ?? (() => new Date());
    collectDefaultMetrics({ register: this.registry, prefix: 'loopship_server_' });
    // gauges named like counters, which promtool's lint refuses; the handle and request counts stay under their *_active_* gauges
    for (const n of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(`loopship_server_${n}`);
    this.requests = new Counter({ name: 'loopship_http_requests_total', help: 'HTTP requests answered, by kind (repository file, api, dashboard, metrics), method and status code', labelNames: ['kind', 'method', 'code'], registers });
    this.bytes = new Counter({ name: 'loopship_http_response_bytes_total', help: 'Bytes of response bodies sent (as declared by Content-Length), by kind', labelNames: ['kind'], registers });
    this.publishSeconds = new Histogram({ name: 'loopship_publish_duration_seconds', help: 'Time from the first byte of an upload to the signed index, by result', labelNames: ['result'], buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900], registers });

    const store = opts.store;
    new Gauge({
      name: 'loopship_fleet_hosts',
      help: 'Appliances reported by the fleet, by image, version, health and site (each host counts once per appliance)',
      labelNames: ['image', 'version', 'health', 'site'],
      registers,
      collect() {
        this.reset();
        for (const { report } of store?.list() ?? []) {
          for (const a of report.appliances) this.inc({ image: a.name, version: a.version ?? 'none', health: a.health, site: report.site });
        }
      },
    });
    new Gauge({
      name: 'loopship_fleet_hosts_stale',
      help: `Hosts whose last report is older than the dashboard's stale_minutes, by site`,
      labelNames: ['site'],
      registers,
      collect() {
        this.reset();
        const limit = now().getTime() - opts.staleMinutes * 60_000;
        for (const s of store?.list() ?? []) this.inc({ site: s.report.site }, Date.parse(s.received_at) < limit ? 1 : 0);
      },
    });

    const index = () => this.readIndex();
    new Gauge({
      name: 'loopship_index_expiry_timestamp_seconds',
      help: 'When the served index.json expires (clients refuse it after that: re-sign before)',
      registers,
      async collect() {
        const i = await index();
        this.reset();
        if (i) this.set(Date.parse(i.expires) / 1000);
      },
    });
    new Gauge({
      name: 'loopship_index_version',
      help: 'Version of the served index.json',
      registers,
      async collect() {
        const i = await index();
        this.reset();
        if (i) this.set(i.version);
      },
    });
    const rollouts = (i: Index | null) => Object.entries(i?.images ?? {}).flatMap(([image, img]) => Object.entries(img.rollouts ?? {}).map(([channel, r]) => ({ image, channel, r })));
    new Gauge({
      name: 'loopship_rollout_stage',
      help: 'Highest open stage of each rollout (1-based; 0 before the first opens)',
      labelNames: ['image', 'channel', 'to'],
      registers,
      async collect() {
        const list = rollouts(await index());
        this.reset();
        for (const { image, channel, r } of list) this.set({ image, channel, to: r.to }, openStage(r, now()).stage + 1);
      },
    });
    new Gauge({
      name: 'loopship_rollout_open_percent',
      help: 'Share of hosts the open stages of each rollout reach',
      labelNames: ['image', 'channel', 'to'],
      registers,
      async collect() {
        const list = rollouts(await index());
        this.reset();
        for (const { image, channel, r } of list) this.set({ image, channel, to: r.to }, openStage(r, now()).percent);
      },
    });
    new Gauge({
      name: 'loopship_rollout_halted',
      help: 'Whether a rollout stands still: 1 paused (by an operator or the halt rule), 2 aborted, 0 running',
      labelNames: ['image', 'channel', 'to', 'by_halt_rule'],
      registers,
      async collect() {
        const list = rollouts(await index());
        this.reset();
        for (const { image, channel, r } of list) {
          const byRule = r.stopped?.by === HALT_RULE_BY ? 'true' : 'false';
          this.set({ image, channel, to: r.to, by_halt_rule: byRule }, r.state === 'running' ? 0 : r.state === 'paused' ? 1 : 2);
        }
      },
    });
  }

  /** The kind of a request, for labels: bounded, never the URL itself. */
  static kindOf(url: string | undefined): 'api' | 'dashboard' | 'metrics' | 'repository' {
    if (!url || url === '/' || url.startsWith('/?')) return 'dashboard';
    if (url.startsWith('/api/')) return 'api';
    if (url === '/metrics' || url.startsWith('/metrics?')) return 'metrics';
    return 'repository';
  }

  observeRequest(url: string | undefined, method: string | undefined, code: number, bytes: number): void {
    const kind = ServerMetrics.kindOf(url);
    const m = method && ['GET', 'HEAD', 'POST', 'PUT', 'DELETE'].includes(method) ? method : 'other';
    this.requests.inc({ kind, method: m, code: String(code) });
    if (bytes > 0) this.bytes.inc({ kind }, bytes);
  }

  observePublish(seconds: number, ok: boolean): void {
    this.publishSeconds.observe({ result: ok ? 'published' : 'rejected' }, seconds);
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  private indexRead?: { at: number; index: Promise<Index | null> };

  /** index.json, read once per scrape (several gauges ask within the same second) */
  private readIndex(): Promise<Index | null> {
    const t = Date.now();
    if (!this.indexRead || t - this.indexRead.at > 1000) {
      const index = readServedIndex(this.opts.repoDir);
      this.indexRead = { at: t, index };
    }
    return this.indexRead.index;
  }
}

