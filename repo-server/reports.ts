// Fleet reports: what each host's agent says about itself. Validated strictly, stored one
// JSON file per (site, host) under the state directory, each written atomically
// (base/atomic.ts), so a crash leaves either the old report or the new one. The
// store is bounded in hosts (per site and in all) and in bytes per report, and is loaded
// back at start-up. Who may store a report for which (site, host) is decided before: the
// host's own token (hosts.ts, fleet-api.ts).
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import * as z from 'zod';
import { imageName, imageVersion, channelName, siteName, rolloutId } from '../format/index.js';
import { writeFileAtomic, isTempName } from '../base/atomic.js';
import { LoopshipError } from '../format/index.js';
import { ApiError } from './api-error.js';

export const hostName = z
  .string()
  .max(253)
  .regex(/^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/, 'expected a DNS host name');
export { siteName };

/**
 * The file name (without extension) a host's files are kept under: its name in lower case,
 * or, past 240 characters (a DNS name may have 253; a file name 255 bytes with ".revoked"),
 * a prefix and a digest of it. "~" is in no host name, so the two forms never meet.
 */
export function hostFileStem(host: string): string {
  const h = host.toLowerCase();
  return h.length <= 240 ? h : `${h.slice(0, 200)}~${createHash('sha256').update(h).digest('hex').slice(0, 32)}`;
}

export const HEALTH_STATES = ['healthy', 'unhealthy', 'starting', 'stopped', 'unknown'] as const;

export const ApplianceReportSchema = z.strictObject({
  name: imageName,
  /** the installed (current) version; null when nothing is installed yet */
  version: imageVersion.nullable(),
  channel: channelName.optional(),
  running: z.boolean(),
  health: z.enum(HEALTH_STATES),
  /** did the installed image verify against its signed manifest at the last check (null: not checked yet) */
  verified: z.boolean().nullable(),
  error: z.string().max(2000).nullable().optional(),
  /** versions that failed their health check on this host and were rolled back */
  failed_versions: z.array(imageVersion).max(32).optional(),
  /** the host's place in the rollout on its channel (format/rollout.ts) */
  rollout: z.strictObject({ id: rolloutId, to: imageVersion, taking: z.boolean(), reason: z.string().max(1000).nullable() }).optional(),
  /** a new version installed, waiting for the host's maintenance window */
  waiting: z.strictObject({ to: imageVersion, opens: z.string().max(64).nullable(), reason: z.string().max(1000) }).optional(),
  /** a move to an older version the host refused */
  held: z.strictObject({ to: imageVersion, reason: z.string().max(1000) }).optional(),
});

/**
 * What an agent sends. `host` must be the host its token was issued to, and `site` may be
 * left out: the token says which site it is (a site named here must be the token's).
 * `time` is the agent's clock, kept for display; "last seen" is the server's receiving time.
 */
export const ReportSchema = z.strictObject({
  host: hostName,
  site: siteName.nullable().optional(),
  agent_version: z.string().min(1).max(64),
  time: z.iso.datetime({ offset: true }).optional(),
  appliances: z.array(ApplianceReportSchema).max(256),
  last_error: z.string().max(4000).nullable(),
});
export type ReportInput = z.infer<typeof ReportSchema>;
/** A report as stored: its site and host are always the credential's. */
export type FleetReport = ReportInput & { site: string };
export type ApplianceReport = z.infer<typeof ApplianceReportSchema>;

/** What the server keeps: the report as sent, plus when it arrived (by the server's clock). */
export interface StoredReport {
  report: FleetReport;
  received_at: string;
}

export interface ReportStore {
  put(report: FleetReport): Promise<StoredReport>;
  list(): StoredReport[];
}

export interface FileReportStoreOptions {
  maxHosts: number;
  /** hosts one site may hold (checked before maxHosts, so one site cannot fill the store) */
  maxHostsPerSite?: number;
  now?: () => Date;
  log?: { warn: (obj: object, msg: string) => void };
}

export class FileReportStore implements ReportStore {
  readonly dir: string;
  private readonly reports = new Map<string, StoredReport>();
  private readonly opts: FileReportStoreOptions;
  private writes = new Map<string, Promise<unknown>>();

  private constructor(stateDir: string, opts: FileReportStoreOptions) {
    this.dir = path.join(stateDir, 'reports');
    this.opts = opts;
  }

  /** Opens (creating if needed) the store under `stateDir` and loads what earlier runs kept. */
  static async open(stateDir: string, opts: FileReportStoreOptions): Promise<FileReportStore> {
    const store = new FileReportStore(stateDir, opts);
    await mkdir(store.dir, { recursive: true, mode: 0o750 });
    await store.load();
    return store;
  }

  private static key(site: string, host: string): string {
    return `${site}/${host.toLowerCase()}`;
  }

  private async load(into: Map<string, StoredReport> = this.reports): Promise<void> {
    for (const site of await readdir(this.dir, { withFileTypes: true })) {
      if (!site.isDirectory() || !siteName.safeParse(site.name).success) continue;
      const siteDir = path.join(this.dir, site.name);
      for (const f of await readdir(siteDir, { withFileTypes: true })) {
        if (!f.isFile()) continue;
        const file = path.join(siteDir, f.name);
        if (isTempName(f.name)) {
          if (into === this.reports) await rm(file, { force: true }); // left by a crash between write and rename
          continue;
        }
        if (!f.name.endsWith('.json')) continue;
        if (into.size >= this.opts.maxHosts) {
          this.opts.log?.warn({ file }, 'report store is over its host limit; not loading the rest');
          return;
        }
        try {
          const stored = JSON.parse(await readFile(file, 'utf8')) as StoredReport;
          const report = ReportSchema.parse(stored.report) as FleetReport;
          if (report.site !== site.name || `${hostFileStem(report.host)}.json` !== f.name || typeof stored.received_at !== 'string') throw new Error('file name does not match its content');
          into.set(FileReportStore.key(report.site, report.host), { report, received_at: stored.received_at });
        } catch (err) {
          this.opts.log?.warn({ file, err: (err as Error).message }, 'ignoring an unreadable stored report');
        }
      }
    }
  }

  /**
   * Re-reads the store from disk every `intervalMs`: when several server processes share
   * one state directory (serve --workers), each sees the reports the others stored.
   */
  watch(intervalMs: number): () => void {
    let running = false;
    const timer = setInterval(() => {
      if (running) return;
      running = true;
      const fresh = new Map<string, StoredReport>();
      this.load(fresh)
        .then(() => {
          for (const [k, v] of fresh) {
            const mine = this.reports.get(k);
            if (!mine || mine.received_at < v.received_at) this.reports.set(k, v);
          }
        })
        .catch((err) => this.opts.log?.warn({ err: (err as Error).message }, 'could not re-read the report store'))
        .finally(() => (running = false));
    }, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** Hosts of `site` in the store. */
  hostsOf(site: string): number {
    let n = 0;
    for (const r of this.reports.values()) if (r.report.site === site) n++;
    return n;
  }

  async put(report: FleetReport): Promise<StoredReport> {
    const key = FileReportStore.key(report.site, report.host);
    if (!this.reports.has(key)) {
      const perSite = this.opts.maxHostsPerSite;
      if (perSite !== undefined && this.hostsOf(report.site) >= perSite) {
        throw new ApiError(507, 'STORE_FULL', `site ${report.site} holds its limit of ${perSite} hosts (limits.max_hosts_per_site); new host ${report.host} not stored`);
      }
      if (this.reports.size >= this.opts.maxHosts) {
        throw new ApiError(507, 'STORE_FULL', `the fleet store holds its limit of ${this.opts.maxHosts} hosts (limits.max_hosts); new host ${report.host} of site ${report.site} not stored`);
      }
    }
    const stored: StoredReport = { report, received_at: (this.opts.now?.() ?? new Date()).toISOString() };
    const file = path.join(this.dir, report.site, `${hostFileStem(report.host)}.json`);
    // one write at a time per host, in arrival order: the last report wins, on disk and in memory
    const prev = this.writes.get(key) ?? Promise.resolve();
    const write = prev.catch(() => {}).then(async () => {
      await mkdir(path.dirname(file), { recursive: true, mode: 0o750 });
      await writeFileAtomic(file, JSON.stringify(stored, null, 2) + '\n', { mode: 0o640 });
      this.reports.set(key, stored);
    });
    this.writes.set(key, write);
    try {
      await write;
    } catch (cause) {
      throw new LoopshipError('IO', `could not store the report (${(cause as Error).message})`, { where: file, cause });
    } finally {
      if (this.writes.get(key) === write) this.writes.delete(key);
    }
    return stored;
  }

  list(): StoredReport[] {
    return [...this.reports.values()].sort((a, b) => a.report.site.localeCompare(b.report.site) || a.report.host.localeCompare(b.report.host));
  }
}

/** Fixed one-minute windows per site: enough to stop one site flooding the server. */
export class RateLimiter {
  private windows = new Map<string, { start: number; count: number }>();
  constructor(
    private readonly perMinute: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Returns 0 when allowed, else the seconds until the next window. */
  take(key: string): number {
    const t = this.now();
    let w = this.windows.get(key);
    if (!w || t - w.start >= 60_000) {
      if (this.windows.size >= 100_000) this.windows.clear(); // bounded memory whatever the keys
      w = { start: t, count: 0 };
      this.windows.set(key, w);
    }
    if (w.count >= this.perMinute) return Math.max(1, Math.ceil((w.start + 60_000 - t) / 1000));
    w.count++;
    return 0;
  }
}
