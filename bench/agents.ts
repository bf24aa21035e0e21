// Load (figures, not pass/fail): N simulated agents against one `loopship serve` on loopback
// for a fixed time, each in a closed loop (no pause between rounds, so far more load than a
// real fleet polling every 15 minutes makes) doing what an agent's round does over HTTP:
//   update    root/<next>.json (404), root.json, index.json, index.json.asc
//   manifest  manifests/<sha>.json and its .asc
//   delta     one Range request on the version's pack (a run of missing chunks) and a few
//             per-chunk GETs, two at a time (the agent's fallback path)
//   report    POST /api/v1/reports with the host's token (enrolled once with the site token)
// Prints requests, errors (any unexpected status, short body or network error), latency
// percentiles per kind, throughput, and the server's RSS (sampled, and its peak VmHWM) and
// CPU time. The simulated agents do not verify signatures or hashes: the client side stays
// cheap so the two cores measure the server (the verifier's cost is bench/verify.ts's).
// The report rate limit is raised for the run: 200 hosts of one site reporting in a closed
// loop would otherwise be (rightly) refused with 429 after 600 a minute.
//
// With --rollout, a second version is published and rolled out while the agents run (10% at
// once, 50% after a third of the run, all after two thirds): each agent reads index.json, places
// itself (format/rollout.ts), fetches its version's manifest and reports its place, and an
// operator asks GET /api/v1/rollouts every 2 s (bench/fleet.ts runs 200 and 1000 agents so).
//
//   node --import tsx bench/agents.ts [--agents 200] [--seconds 60] [--size-mib 64] [--chunks 8] [--range-kib 1024] [--workers 1] [--no-reports] [--rollout] [--name agents] [--keep]
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile, access } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Keystore, buildRoot, signRoot } from '../keys/index.js';
import { RepositoryWriter, createPackage, chunkPath, manifestPath, packPath, packLayout, placeHost, type Manifest, type Index } from '../format/index.js';
import { report, BENCH_DIR } from './report.js';

const ROOT = path.resolve(BENCH_DIR, '..');
const { values: args } = parseArgs({
  options: {
    agents: { type: 'string' }, seconds: { type: 'string' }, 'size-mib': { type: 'string' }, chunks: { type: 'string' },
    'range-kib': { type: 'string' }, workers: { type: 'string' }, keep: { type: 'boolean' }, 'no-reports': { type: 'boolean' },
    rollout: { type: 'boolean' }, name: { type: 'string' },
  },
});
const AGENTS = Number(args.agents ?? 200);
const SECONDS = Number(args.seconds ?? 60);
const SIZE = Number(args['size-mib'] ?? 64) * 2 ** 20;
const CHUNKS = Number(args.chunks ?? 8);
const RANGE = Number(args['range-kib'] ?? 1024) * 1024;
const WORKERS = Number(args.workers ?? 1);
const SITE_TOKEN = 'bench-site-token-0123456789abcdef';
const OPERATOR_TOKEN = 'bench-operator-token-0123456789abcdef';
const ROLLOUT = Boolean(args.rollout);

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

async function procStatus(pid: number): Promise<{ rssMiB: number; hwmMiB: number; cpuS: number }> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const stat = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ');
    const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) / 1024;
    return { rssMiB: kb('VmRSS'), hwmMiB: kb('VmHWM'), cpuS: (Number(stat[11]) + Number(stat[12])) / 100 };
  } catch {
    return { rssMiB: 0, hwmMiB: 0, cpuS: 0 };
  }
}

/** Every process of the server (the primary and, with --workers N, its workers). */
async function serverPids(pid: number): Promise<number[]> {
  const kids = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  return [pid, ...kids.trim().split(/\s+/).filter(Boolean).map(Number)];
}

const pct = (xs: number[], p: number) => (xs.length ? xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] : 0);

const work = await mkdtemp(path.join('/var/tmp', 'loopship-bench-agents-'));
let server: ReturnType<typeof execa> | undefined;
try {
  // 1. A signed repository with one version: SIZE of random blocks with zero holes, and its pack.
  process.stderr.write(`making a ${SIZE / 2 ** 20} MiB image and a signed repository in ${work} ...\n`);
  const keys = await Keystore.init(path.join(work, 'keys'));
  const repoDir = path.join(work, 'repo');
  const writer = await RepositoryWriter.init(repoDir, await signRoot(await buildRoot(keys, 1), await keys.signingKeys('root')), { indexKeys: await keys.signingKeys('index') });
  const img = randomBytes(SIZE);
  for (let off = 0; off < SIZE; off += 8 * 2 ** 20) img.fill(0, off + 6 * 2 ** 20, Math.min(SIZE, off + 8 * 2 ** 20)); // a quarter holes
  await writeFile(path.join(work, 'disk.img'), img);
  await writeFile(path.join(work, 'vmlinuz'), randomBytes(2 ** 20));
  const pkg = (version: string, tarPath: string) => createPackage({
    manifest: {
      type: 'loopship/manifest', spec_version: 1, name: 'sbc', version, arch: 'amd64',
      build: { recipe_digest: 'a'.repeat(64), suite: 'bookworm', packages: [{ name: 'xrdp', version: '0.9.21' }], built_at: '2026-01-01T00:00:00Z', builder: 'bench' },
      image: { fs: 'ext4' }, boot: { type: 'pvh', cmdline: 'root=/dev/xvda ro', ready_marker: 'LOOPSHIP-READY' },
      xen: { memory: 512, vcpus: 1, network: { nics: 1 } }, settings: {},
    } as Parameters<typeof createPackage>[0]['manifest'],
    imagePath: path.join(work, 'disk.img'), kernelPath: path.join(work, 'vmlinuz'), initrdPath: null,
    publisherKey: publisherKey, out: { tarPath },
  });
  const publisherKey = (await keys.signingKeys('publisher'))[0];
  await pkg('1.0.0', path.join(work, 'pkg.tar'));
  await writer.addPackage(createReadStream(path.join(work, 'pkg.tar')), { channel: 'stable' });
  if (ROLLOUT) {
    // the next version: a few MiB changed, the rest shared (what a delta upgrade fetches)
    randomBytes(4 * 2 ** 20).copy(img, Math.floor(SIZE / 3));
    await writeFile(path.join(work, 'disk.img'), img);
    await pkg('1.1.0', path.join(work, 'pkg2.tar'));
    await writer.addPackage(createReadStream(path.join(work, 'pkg2.tar')));
  }
  const index = JSON.parse(await readFile(path.join(repoDir, 'index.json'), 'utf8')) as Index;
  const msha = index.images.sbc.versions['1.0.0'].manifest;
  const manifestOf: Record<string, string> = Object.fromEntries(Object.entries(index.images.sbc.versions).map(([v, e]) => [v, e.manifest]));
  const manifest = JSON.parse(await readFile(path.join(repoDir, manifestPath(msha)), 'utf8')) as Manifest;
  const chunks = manifest.image.chunks;
  const layout = packLayout(manifest);
  const havePack = await access(path.join(repoDir, packPath(msha))).then(() => true, () => false);

  // 2. The server, compiled (what a deployment runs), request log off.
  const cfg = path.join(work, 'server.yaml');
  const tokenSha = createHash('sha256').update(SITE_TOKEN).digest('hex');
  const operatorSha = createHash('sha256').update(OPERATOR_TOKEN).digest('hex');
  await writeFile(cfg, `publishers: []\noperators:\n  - name: bench-ops\n    token_sha256: ${operatorSha}\nsites:\n  - name: bench\n    token_sha256: ${tokenSha}\nlimits:\n  reports_per_minute_per_site: 100000000\n  max_hosts_per_site: 100000\n  max_hosts: 100000\n`);
  const port = await freePort();
  const compiled = path.join(ROOT, 'dist/bin/loopship.js');
  const useDist = await access(compiled).then(() => true, () => false);
  const cli = useDist ? [compiled] : ['--import', 'tsx', path.join(ROOT, 'bin/loopship.ts')];
  const serveKeys = ROLLOUT ? ['--keys', path.join(work, 'keys')] : []; // the index key: the server signs the rollout's moves
  server = execa('node', [...cli, 'serve', '--repo', repoDir, '--port', String(port), '--workers', String(WORKERS), '--state-dir', path.join(work, 'state'), '--log-level', 'warn', '--log-format', 'json', '--config', cfg, ...serveKeys], { reject: false, stdio: ['ignore', 'ignore', 'pipe'] });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (await fetch(`${base}/index.json`).then((r) => r.ok, () => false)) break;
    if (i > 300) throw new Error('server did not come up');
    await new Promise((r) => setTimeout(r, 100));
  }
  const idle = await procStatus(server.pid!);

  // 3. The agents.
  type Kind = 'update' | 'manifest' | 'pack-range' | 'chunk' | 'report';
  const lat: Record<Kind, number[]> = { update: [], manifest: [], 'pack-range': [], chunk: [], report: [] };
  const errors: string[] = [];
  let bytes = 0;
  let rounds = 0;

  let retried = 0;
  function request(agent: http.Agent, kind: Kind, opts: { path: string; method?: string; headers?: Record<string, string>; body?: string; expect: number; length?: number; keep?: (body: Buffer) => void }, attempt = 0): Promise<void> {
    const t0 = performance.now();
    return new Promise((resolve) => {
      let answered = false;
      const req = http.request(`${base}/${opts.path}`, { agent, method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
        answered = true;
        let n = 0;
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => { n += d.length; if (opts.keep) parts.push(d); });
        res.on('end', () => {
          if (opts.keep && res.statusCode === opts.expect) opts.keep(Buffer.concat(parts));
          lat[kind].push(performance.now() - t0);
          bytes += n;
          if (res.statusCode !== opts.expect) errors.push(`${kind} ${opts.path}: HTTP ${res.statusCode}`);
          else if (opts.length !== undefined && n !== opts.length) errors.push(`${kind} ${opts.path}: ${n} bytes, expected ${opts.length}`);
          resolve();
        });
        res.on('error', (e) => { errors.push(`${kind} ${opts.path}: ${e.message}`); resolve(); });
      });
      req.setTimeout(60_000, () => req.destroy(new Error('timeout')));
      req.on('error', (e) => {
        // as the agent's fetcher does: a kept-alive socket the server closed (its keep-alive
        // timeout) just as we reused it never carried the request; send it once more
        const code = (e as NodeJS.ErrnoException).code;
        if (!answered && attempt === 0 && req.reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE' || e.message === 'socket hang up')) {
          retried++;
          resolve(request(agent, kind, opts, 1));
          return;
        }
        errors.push(`${kind} ${opts.path}: ${e.message}`);
        resolve();
      });
      req.end(opts.body);
    });
  }

  const onNew = new Set<string>();
  const deadline = Date.now() + SECONDS * 1000;
  // the rollout: 10% at once, 50% a third into the run, everyone two thirds in; an operator watches it
  const operator = { 'content-type': 'application/json', authorization: `Bearer ${OPERATOR_TOKEN}` };
  const watch: { polls: number; errors: number; lastStage: number } = { polls: 0, errors: 0, lastStage: 0 };
  let watcher: NodeJS.Timeout | undefined;
  if (ROLLOUT) {
    const third = Math.max(1, Math.round(SECONDS / 3));
    const res = await fetch(`${base}/api/v1/rollouts/sbc/stable/start`, { method: 'POST', headers: operator, body: JSON.stringify({ to: '1.1.0', stages: `10,50@+${third}s,100@+${third}s` }) });
    if (res.status !== 201) throw new Error(`rollout start answered HTTP ${res.status}: ${await res.text()}`);
    watcher = setInterval(() => {
      void fetch(`${base}/api/v1/rollouts`, { headers: operator }).then(async (r) => {
        watch.polls++;
        if (r.status !== 200) watch.errors++;
        else watch.lastStage = ((await r.json()) as { rollouts: { stage: number }[] }).rollouts[0]?.stage ?? 0;
      }, () => { watch.errors++; });
    }, 2000);
  }
  async function agentLoop(i: number): Promise<void> {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 2 });
    const host = `branch-${String(i).padStart(3, '0')}`;
    // a host reports with its own token, issued once at enrolment for the site token
    let hostToken = '';
    if (!args['no-reports']) {
      const res = await fetch(`${base}/api/v1/hosts/enrol`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${SITE_TOKEN}` }, body: JSON.stringify({ host }) });
      const answer = (await res.json()) as { token?: string };
      if (res.status !== 201 || !answer.token) throw new Error(`enrolment of ${host} answered HTTP ${res.status}: ${JSON.stringify(answer)}`);
      hostToken = answer.token;
    }
    while (Date.now() < deadline) {
      // update: the root chain ends (404), then root.json, index.json and its signature
      await request(agent, 'update', { path: 'root/2.json', expect: 404 });
      let served: Index | undefined;
      for (const p of ['root.json', 'index.json', 'index.json.asc']) {
        await request(agent, 'update', { path: p, expect: 200, keep: ROLLOUT && p === 'index.json' ? (b) => { served = JSON.parse(b.toString()) as Index; } : undefined });
      }
      // with a rollout under way, the version this host's place in it names
      const ro = served?.images.sbc.rollouts?.stable;
      const place = ro ? placeHost(ro, { host, site: 'bench' }, new Date()) : null;
      const version = place?.version ?? '1.0.0';
      if (place?.taking) onNew.add(host);
      const sha = manifestOf[version] ?? msha;
      await request(agent, 'manifest', { path: manifestPath(sha), expect: 200 });
      await request(agent, 'manifest', { path: `${manifestPath(sha)}.asc`, expect: 200 });
      // delta: a run of the pack, then a few chunks one by one, two at a time
      if (havePack) {
        const from = Math.floor(Math.random() * layout.entries.length);
        let to = from;
        while (to + 1 < layout.entries.length && layout.entries[to + 1].offset - layout.entries[from].offset < RANGE) to++;
        const start = layout.entries[from].offset;
        const end = layout.entries[to].offset + layout.entries[to].chunk.csize;
        await request(agent, 'pack-range', { path: packPath(msha), headers: { range: `bytes=${start}-${end - 1}` }, expect: 206, length: end - start });
      }
      const picks = Array.from({ length: CHUNKS }, () => chunks[Math.floor(Math.random() * chunks.length)]);
      for (let k = 0; k < picks.length; k += 2) {
        await Promise.all(picks.slice(k, k + 2).map((c) => request(agent, 'chunk', { path: chunkPath(c.sha256), expect: 200, length: c.csize })));
      }
      const body = JSON.stringify({
        host, agent_version: '0.1.0', time: new Date().toISOString(), last_error: null,
        appliances: [{
          name: 'sbc', version, channel: 'stable', running: true, health: 'healthy', verified: true, error: null,
          ...(ro && place ? { rollout: { id: ro.id, to: ro.to, taking: place.taking, reason: place.reason?.slice(0, 1000) ?? null } } : {}),
        }],
      });
      if (!args['no-reports']) await request(agent, 'report', { path: 'api/v1/reports', method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${hostToken}` }, body, expect: 201 });
      rounds++;
    }
    agent.destroy();
  }

  process.stderr.write(`${AGENTS} agents for ${SECONDS} s against ${base} (${chunks.length} chunks, pack ${havePack ? `${(layout.size / 2 ** 20).toFixed(1)} MiB` : 'absent'}) ...\n`);
  const samples: number[] = [];
  const sampler = setInterval(() => {
    void (async () => {
      let rss = 0;
      for (const p of await serverPids(server!.pid!)) rss += (await procStatus(p)).rssMiB;
      samples.push(rss);
    })();
  }, 1000);
  const load0 = os.loadavg()[0];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: AGENTS }, (_, i) => agentLoop(i)));
  const wall = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  if (watcher) clearInterval(watcher);
  const clientCpu = process.cpuUsage(cpu0);
  let hwm = 0;
  let serverCpu = 0;
  for (const p of await serverPids(server.pid!)) {
    const s = await procStatus(p);
    hwm += s.hwmMiB;
    serverCpu += s.cpuS;
  }
  serverCpu -= idle.cpuS;

  if (ROLLOUT) errors.push(...Array.from({ length: watch.errors }, () => 'operator GET /api/v1/rollouts failed'));
  const rows: { kind: string; requests: number; 'p50 ms': number; 'p99 ms': number; 'max ms': number }[] = (Object.keys(lat) as Kind[]).filter((k) => lat[k].length).map((k) => {
    const xs = lat[k].sort((a, b) => a - b);
    return { kind: k, requests: xs.length, 'p50 ms': pct(xs, 50), 'p99 ms': pct(xs, 99), 'max ms': xs[xs.length - 1] };
  });
  const all = Object.values(lat).flat().sort((a, b) => a - b);
  rows.push({ kind: 'all', requests: all.length, 'p50 ms': pct(all, 50), 'p99 ms': pct(all, 99), 'max ms': all[all.length - 1] });
  const figures = {
    agents: AGENTS, seconds: SECONDS, wall_s: wall, drain_s: wall - SECONDS, workers: WORKERS, rounds, requests: all.length, errors: errors.length, keepalive_retries: retried, error_samples: [...new Set(errors)].slice(0, 10),
    requests_per_s: all.length / wall, mib_per_s: bytes / 2 ** 20 / wall,
    server_rss_idle_mib: idle.rssMiB, server_rss_max_sampled_mib: Math.max(0, ...samples), server_peak_rss_vmhwm_mib: hwm, server_cpu_s: serverCpu, client_cpu_s: (clientCpu.user + clientCpu.system) / 1e6,
    load_avg_1min: { start: load0, end: os.loadavg()[0] },
    image_mib: SIZE / 2 ** 20, chunks: chunks.length, chunk_gets_per_round: CHUNKS, pack_range_kib: havePack ? RANGE / 1024 : 0,
    ...(ROLLOUT ? { rollout: { hosts_that_took_it: onNew.size, stage_at_end: watch.lastStage, operator_polls: watch.polls, operator_errors: watch.errors } } : {}),
  };
  await report(args.name ?? 'agents', `${AGENTS} simulated agents${ROLLOUT ? ' during a rollout' : ''}, ${SECONDS} s, one loopship serve (${WORKERS} worker${WORKERS > 1 ? 's' : ''}) on loopback`, rows, figures);
  process.stdout.write(
    `\n${rounds} agent rounds, ${all.length} requests (${figures.requests_per_s.toFixed(0)}/s, ${figures.mib_per_s.toFixed(1)} MiB/s), ${errors.length} errors${errors.length ? `: ${figures.error_samples.join('; ')}` : ''}; ${retried} request(s) resent after a keep-alive race\n` +
      `server RSS: idle ${idle.rssMiB.toFixed(0)} MiB, max sampled ${figures.server_rss_max_sampled_mib.toFixed(0)} MiB, peak (VmHWM) ${hwm.toFixed(0)} MiB; server CPU ${serverCpu.toFixed(1)} s, client CPU ${figures.client_cpu_s.toFixed(1)} s; ` +
      (ROLLOUT ? `rollout: ${onNew.size} of ${AGENTS} hosts took 1.1.0, stage ${watch.lastStage} of 3 at the end, ${watch.polls} operator polls (${watch.errors} failed)\n` : '') +
      `all rounds ended ${figures.drain_s.toFixed(1)} s after the deadline; load average ${load0.toFixed(1)} -> ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} CPUs\n`,
  );
} finally {
  server?.kill('SIGTERM');
  await server?.catch(() => {});
  if (!args.keep) await rm(work, { recursive: true, force: true });
  else process.stderr.write(`kept ${work}\n`);
}

