// Benchmark (figures, not pass/fail): many concurrent clients downloading a chunked image
// from `loopship serve` and from nginx serving the same tree on loopback.
//
//   node --import tsx bench/server.ts [--clients 100] [--size-mib 256] [--rounds 5]
//        [--mode pack,chunks] [--workers N] [--curls 2] [--chunk-kib N] [--js-too] [--keep]
//
// The tree is shaped like a real repository: content-addressed chunk files whose sizes
// follow the chunker (4 KiB blocks, ~16 blocks on average, 4..256), stored "compressed"
// (incompressible random bytes, about half the raw size), and the version's pack
// (packs/<sha256>.pack: those frames concatenated, FORMAT.md "Packs").
//
// Two modes, each a row:
// - pack (the headline: what agents do now): every client downloads the whole image from
//   the pack as Range requests planned by format's planPackRanges (runs of frames of at
//   most 8 MiB), 4 in flight per client, like client-agent/pack-source.ts. Every answer must
//   be 206 with exactly the Content-Range and length asked for.
// - chunks (older clients, mirrors): every chunk file fetched once per round with CLIENTS
//   transfers in flight; every answer must be 200.
// Clients are curl processes running `--parallel` (keep-alive connections, C event loop),
// so the client side costs the same for both servers. Rounds alternate between the two
// servers (both stay up), so a busy machine slows both alike, and the median round of
// each is compared. Peak RSS (VmHWM, reset before each mode) is summed over each server's
// processes (nginx's master + workers; loopship's cluster primary + workers); beside it,
// the peak (sampled each second) with the binary's file pages, shared by all of a server's
// processes, counted once.
// loopship sends bodies the way `serve` picks at start (its log says: the sendfile addon
// when it is built, else copies in JS); --js-too adds a second loopship with
// LOOPSHIP_NO_SENDFILE=1 to the same rounds, so both paths are compared under the same load.
// loopship runs with `serve`'s default --workers unless --workers is given; nginx runs
// `worker_processes auto` (one per CPU). Uses the compiled CLI (dist/, `npm run build`)
// when present: that is what a deployment runs, and it spares the TypeScript loader's memory.
import { execa, type ResultPromise } from 'execa';
import { randomBytes, createHash } from 'node:crypto';
import { access, appendFile, chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { planPackRanges, type Chunk, type PackLayout } from '../format/index.js';
import { loadSendfile } from '../repo-server/sendfile.js';
import { report, type Row } from './report.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}
const num = (name: string, def: number) => Number(arg(name) ?? def);
const CLIENTS = num('clients', 100);
const SIZE = num('size-mib', 256) * 2 ** 20;
const ROUNDS = num('rounds', 5);
/** loopship's --workers; unset: serve's own default (what a deployment gets) */
const WORKERS = arg('workers');
/** client processes the transfers are spread over (one curl is single-threaded) */
const CURLS = num('curls', 2);
const MODES = (arg('mode') ?? 'pack,chunks').split(',') as ('pack' | 'chunks')[];
/** fixed chunk-file size in KiB (0: sizes like the chunker's, ~30 KiB on average) */
const CHUNK_KIB = num('chunk-kib', 0);
/** like client-agent/pack-source.ts */
const PACK_RANGE_MAX = 8 * 2 ** 20;
const PACK_PARALLEL = 4;
const KEEP = process.argv.includes('--keep');
const JS_TOO = process.argv.includes('--js-too');

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Chunk-file sizes like the content-defined chunker makes, stored at ~50% "compression". */
function chunkSize(): number {
  if (CHUNK_KIB > 0) return CHUNK_KIB * 1024;
  let blocks = 4;
  while (blocks < 256 && Math.random() > 1 / 12) blocks++;
  return Math.max(512, Math.round((blocks * 4096) / 2 + (Math.random() - 0.5) * 4096));
}

interface Tree {
  paths: string[];
  bytes: number;
  pack: string;
  layout: PackLayout;
}

async function makeTree(dir: string): Promise<Tree> {
  const paths: string[] = [];
  const layout: PackLayout = { entries: [], size: 0 };
  const packSha = createHash('sha256').update(randomBytes(32)).digest('hex'); // stands for a manifest's sha256
  const pack = `packs/${packSha}.pack`;
  await mkdir(path.join(dir, 'packs'), { recursive: true });
  let bytes = 0;
  while (bytes < SIZE) {
    const data = randomBytes(Math.min(chunkSize(), SIZE - bytes || 512));
    const sha = createHash('sha256').update(data).digest('hex');
    const rel = `chunks/${sha.slice(0, 2)}/${sha}`;
    await mkdir(path.join(dir, 'chunks', sha.slice(0, 2)), { recursive: true });
    await writeFile(path.join(dir, rel), data);
    await appendFile(path.join(dir, pack), data);
    paths.push(rel);
    layout.entries.push({ chunk: { sha256: sha, csize: data.length, offset: 0, length: data.length * 2 } as Chunk, offset: bytes });
    bytes += data.length;
  }
  layout.size = bytes;
  await writeFile(path.join(dir, 'index.json'), '{}\n');
  return { paths, bytes, pack, layout };
}

async function waitUp(url: string, proc: ResultPromise): Promise<void> {
  let exited = false;
  proc.then(() => (exited = true), () => (exited = true));
  for (let i = 0; i < 600; i++) {
    if (exited) throw new Error(`server exited early: ${(await proc.catch((e) => e)).stderr ?? ''}`);
    try {
      const r = await fetch(url + '/index.json');
      if (r.ok) return;
    } catch {
      /* not yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server at ${url} did not come up`);
}

/** A process and its children (nginx's workers, a cluster's workers). */
async function family(pid: number): Promise<number[]> {
  const pids = [pid];
  try {
    const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).trim();
    if (children) pids.push(...children.split(/\s+/).map(Number));
  } catch {
    /* gone */
  }
  return pids;
}

/** Peak resident memory (VmHWM) summed over a process and its children, in MiB. */
async function peakRssMiB(pid: number): Promise<number> {
  let total = 0;
  for (const p of await family(pid)) {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${p}/status`, 'utf8'));
      if (m) total += Number(m[1]) / 1024;
    } catch {
      /* gone */
    }
  }
  return total;
}

/** CPU time (user + system) used so far by a process and its children, in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  let ticks = 0;
  for (const p of await family(pid)) {
    try {
      // fields after the command's closing parenthesis: utime and stime are the 12th and 13th
      const stat = await readFile(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      /* gone */
    }
  }
  return ticks / 100; // USER_HZ
}

/** Resident memory of a process and its children with their file-backed pages (the node or
 * nginx binary and libraries, the same files in every process) counted once: the sum of
 * anonymous and shared-memory RSS plus the largest file-backed RSS, in MiB. PSS would
 * split those pages with every unrelated node process on the machine. */
async function ownMiB(pid: number): Promise<number> {
  let anon = 0;
  let file = 0;
  for (const p of await family(pid)) {
    try {
      const st = await readFile(`/proc/${p}/status`, 'utf8');
      const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(st)?.[1] ?? 0);
      anon += kb('RssAnon') + kb('RssShmem');
      file = Math.max(file, kb('RssFile'));
    } catch {
      /* gone */
    }
  }
  return (anon + file) / 1024;
}

/** Samples ownMiB every second until stopped; returns the highest seen. */
function sampleOwn(pid: number): () => number {
  let peak = 0;
  const t = setInterval(() => void ownMiB(pid).then((v) => (peak = Math.max(peak, v))), 1000);
  return () => {
    clearInterval(t);
    return peak;
  };
}

/** Starts the peak over (clear_refs 5 resets VmHWM to the current RSS), so each mode has its own. */
async function resetPeak(pid: number): Promise<void> {
  for (const p of await family(pid)) await writeFile(`/proc/${p}/clear_refs`, '5').catch(() => {});
}

function shuffled<T>(a: T[]): T[] {
  const b = [...a];
  for (let i = b.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [b[i], b[j]] = [b[j], b[i]];
  }
  return b;
}

interface Transfer {
  url: string;
  /** inclusive byte range, for pack requests */
  range?: [number, number];
}

const WRITE_OUT = '%{http_code} %{size_download} %header{content-range}\\n';

interface Round {
  seconds: number;
  requests: number;
  /** the server's CPU time during the round */
  cpu?: number;
}

/**
 * One round: the transfers spread over CURLS curl processes, `inFlight` at a time in all.
 * Every answer is checked: 200 and the whole file, or 206 with the Content-Range and
 * length asked for.
 */
async function round(name: string, base: string, transfers: Transfer[], inFlight: number, work: string): Promise<Round> {
  const lists: Transfer[][] = [];
  for (let i = 0; i < CURLS; i++) lists.push([]);
  transfers.forEach((t, i) => lists[i % CURLS].push(t)); // interleaved: each process gets every client's share
  const files = await Promise.all(
    lists.map(async (list, i) => {
      const f = path.join(work, `${name}-${i}.curl`);
      // one option group per transfer ("next"): a range would otherwise apply to every URL
      const lines: string[] = [];
      for (const t of list) {
        if (lines.length) lines.push('next');
        lines.push('silent', 'show-error', `write-out = "${WRITE_OUT}"`, `url = "${base}/${t.url}"`, 'output = "/dev/null"');
        if (t.range) lines.push(`range = "${t.range[0]}-${t.range[1]}"`);
      }
      await writeFile(f, lines.join('\n') + '\n');
      return f;
    }),
  );
  const parallel = String(Math.max(1, Math.round(inFlight / CURLS)));
  const t0 = process.hrtime.bigint();
  const results = await Promise.all(
    files.map((f) =>
      execa('curl', ['-Z', '--parallel-immediate', '--parallel-max', parallel, '-K', f], {
        reject: false,
        timeout: 3_600_000,
        maxBuffer: 256 * 2 ** 20,
      }),
    ),
  );
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  // answers come in completion order: compare as multisets
  const want = new Map<string, number>();
  for (const t of transfers) {
    const key = t.range ? `206 ${t.range[1] - t.range[0] + 1} bytes ${t.range[0]}-${t.range[1]}/` : '200';
    want.set(key, (want.get(key) ?? 0) + 1);
  }
  let answers = 0;
  const bad: string[] = [];
  for (const r of results) {
    if (r.exitCode !== 0) bad.push(`curl exit ${r.exitCode}: ${r.stderr.slice(0, 300)}`);
    for (const line of r.stdout.split('\n')) {
      if (!line) continue;
      answers++;
      const [code, size, ...rest] = line.split(' ');
      const cr = rest.join(' ');
      const key = code === '206' ? `206 ${size} ${cr.slice(0, cr.indexOf('/') + 1)}` : code;
      const n = want.get(key);
      if (n) want.set(key, n - 1);
      else if (bad.length < 5) bad.push(`unexpected answer: ${line}`);
    }
  }
  if (bad.length || answers !== transfers.length) throw new Error(`${name}: ${answers} answers of ${transfers.length}; ${bad.join('; ')}`);
  return { seconds, requests: answers };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface Server {
  name: string;
  url: string;
  proc: ResultPromise;
  /** how it sends file bodies */
  bodies: string;
}

interface Measured {
  mibs: number;
  /** server CPU seconds per GiB sent (median round) */
  cpuPerGiB: number;
  reqs: number;
  rss: number;
  own: number;
  all: string;
}

function measured(rounds: Round[], bytes: number, rss: number, own: number): Measured {
  const secs = median(rounds.map((r) => r.seconds));
  const cpuPerGiB = median(rounds.map((r) => (r.cpu ?? 0) / (bytes / 2 ** 30)));
  return { mibs: bytes / 2 ** 20 / secs, cpuPerGiB, reqs: rounds[0].requests / secs, rss, own, all: rounds.map((r) => (bytes / 2 ** 20 / r.seconds).toFixed(0)).join(' ') };
}

function show(name: string, m: Measured): void {
  process.stdout.write(`  ${name.padEnd(11)} ${m.mibs.toFixed(0).padStart(6)} MiB/s ${m.reqs.toFixed(0).padStart(7)} req/s ${m.cpuPerGiB.toFixed(2)} CPU s/GiB (median of ${ROUNDS}; rounds: ${m.all} MiB/s)  peak RSS ${m.rss.toFixed(0)} MiB (shared pages once: ${m.own.toFixed(0)})\n`);
}

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(os.tmpdir(), 'loopship-bench-'));
  await chmod(work, 0o755); // nginx's workers run as an unprivileged user
  const tree = path.join(work, 'repo');
  await mkdir(tree);
  const procs: ResultPromise[] = [];
  try {
    process.stderr.write(`making a ${(SIZE / 2 ** 20).toFixed(0)} MiB chunked tree and its pack in ${tree} ...\n`);
    const t = await makeTree(tree);
    process.stderr.write(`${t.paths.length} chunk files, ${(t.bytes / t.paths.length / 1024).toFixed(1)} KiB average; ${CLIENTS} clients, ${ROUNDS} round(s) each way, ${CURLS} curl process(es)\n`);

    // loopship serve (request log at warn: nginx below logs no requests either)
    const compiled = path.join(ROOT, 'dist/bin/loopship.js');
    const useDist = await access(compiled).then(() => true, () => false);
    const cli = useDist ? [compiled] : ['--import', 'tsx', path.join(ROOT, 'bin/loopship.ts')];
    await writeFile(path.join(work, 'none.yaml'), '{}\n');
    const workers = WORKERS === undefined ? [] : ['--workers', WORKERS];
    const startLoopship = async (name: string, env: Record<string, string>): Promise<Server> => {
      const port = await freePort();
      const proc = execa('node', [...cli, 'serve', ...workers, '--repo', tree, '--port', String(port), '--state-dir', path.join(work, `state-${name}`), '--log-level', 'warn', '--log-format', 'json', '--config', path.join(work, 'none.yaml')], {
        cwd: ROOT,
        reject: false,
        env,
      });
      procs.push(proc);
      const url = `http://127.0.0.1:${port}`;
      await waitUp(url, proc);
      // what serve's start line says (at info, not shown here): the same lookup, same addon file
      return { name, url, proc, bodies: loadSendfile({ ...process.env, ...env }).why };
    };
    const servers: Server[] = [await startLoopship('loopship', {})];
    if (JS_TOO) servers.push(await startLoopship('loopship-js', { LOOPSHIP_NO_SENDFILE: '1' }));
    const loopship = servers[0].proc;

    // nginx with its own config, as a child process
    const nport = await freePort();
    const ndir = path.join(work, 'nginx');
    await mkdir(ndir);
    const conf = path.join(ndir, 'nginx.conf');
    await writeFile(
      conf,
      `worker_processes auto;
daemon off;
master_process on;
pid ${ndir}/nginx.pid;
error_log ${ndir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path ${ndir}/body;
  proxy_temp_path ${ndir}/proxy;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${nport};
    root ${tree};
    location / { }
  }
}
`,
    );
    const nginx = execa('nginx', ['-c', conf, '-p', ndir], { reject: false });
    procs.push(nginx);
    const nurl = `http://127.0.0.1:${nport}`;
    await waitUp(nurl, nginx);
    servers.push({ name: 'nginx', url: nurl, proc: nginx, bodies: 'sendfile' });
    const lprocs = (await family(loopship.pid!)).length;
    const nprocs = (await family(nginx.pid!)).length;
    const paths = servers.map((v) => `${v.name}: ${v.bodies}`).join('; ');
    process.stderr.write(`loopship: ${useDist ? 'compiled (dist/)' : 'TypeScript via tsx (run npm run build for the deployed form)'}, ${lprocs} process(es); nginx: ${nprocs} process(es); file bodies: ${paths}\n`);

    const loads: number[] = [os.loadavg()[0]];
    const rows: Row[] = [];
    const figures: Record<string, unknown> = {};
    for (const mode of MODES) {
      let transfers: Transfer[];
      let inFlight: number;
      let bytes: number;
      let what: string;
      if (mode === 'pack') {
        // each client plans its own ranges, as the agent does; the list interleaves the
        // clients so that the transfers in flight are about PACK_PARALLEL per client
        const plan = planPackRanges(t.layout, () => true, PACK_RANGE_MAX);
        transfers = [];
        for (const r of plan) for (let c = 0; c < CLIENTS; c++) transfers.push({ url: t.pack, range: [r.start, r.end - 1] });
        inFlight = CLIENTS * PACK_PARALLEL;
        bytes = t.bytes * CLIENTS;
        what = `pack: ${CLIENTS} clients x ${plan.length} Range requests (<= 8 MiB, ${PACK_PARALLEL} in flight each) over a ${(t.bytes / 2 ** 20).toFixed(0)} MiB pack`;
      } else {
        transfers = t.paths.map((p) => ({ url: p }));
        inFlight = CLIENTS;
        bytes = t.bytes;
        what = `chunks: ${t.paths.length} chunk files (${(t.bytes / t.paths.length / 1024).toFixed(1)} KiB average), ${CLIENTS} in flight`;
      }
      process.stderr.write(`\n${what}\nwarming up ${servers.length} servers ...\n`);
      const order = () => (mode === 'chunks' ? shuffled(transfers) : transfers);
      for (const v of servers) await round(v.name, v.url, order(), inFlight, work);
      for (const v of servers) await resetPeak(v.proc.pid!);
      const rounds = servers.map(() => [] as Round[]);
      const own = servers.map((v) => sampleOwn(v.proc.pid!));
      for (let i = 0; i < ROUNDS; i++) {
        for (const [k, v] of servers.entries()) {
          const c0 = await cpuSeconds(v.proc.pid!);
          const r = await round(v.name, v.url, order(), inFlight, work);
          r.cpu = (await cpuSeconds(v.proc.pid!)) - c0;
          rounds[k].push(r);
        }
        loads.push(os.loadavg()[0]);
        process.stderr.write(`round ${i + 1}/${ROUNDS} done (load ${os.loadavg()[0].toFixed(1)})\n`);
      }
      const m = await Promise.all(servers.map(async (v, k) => measured(rounds[k], bytes, await peakRssMiB(v.proc.pid!), own[k]())));
      const b = m[m.length - 1]; // nginx
      process.stdout.write(`\n${what}\n`);
      servers.forEach((v, k) => show(v.name, m[k]));
      const a = m[0];
      process.stdout.write(`  throughput ratio loopship/nginx: ${(a.mibs / b.mibs).toFixed(2)} (target >= 0.8); loopship peak RSS ${a.rss.toFixed(0)} MiB (target < 200)\n`);
      if (JS_TOO) process.stdout.write(`  JS-copy loopship/nginx: ${(m[1].mibs / b.mibs).toFixed(2)}; ${servers[0].bodies} vs JS copy: ${(a.mibs / m[1].mibs).toFixed(2)}x\n`);
      const row: Row = { mode, 'loopship MiB/s': a.mibs, 'loopship req/s': a.reqs, 'loopship RSS MiB': a.rss, 'loopship RSS-shared-once MiB': a.own, 'loopship CPU s/GiB': a.cpuPerGiB };
      if (JS_TOO) Object.assign(row, { 'loopship-js MiB/s': m[1].mibs, 'loopship-js RSS MiB': m[1].rss, 'loopship-js CPU s/GiB': m[1].cpuPerGiB });
      Object.assign(row, { 'nginx MiB/s': b.mibs, 'nginx req/s': b.reqs, 'nginx RSS MiB': b.rss, 'nginx RSS-shared-once MiB': b.own, 'nginx CPU s/GiB': b.cpuPerGiB, ratio: a.mibs / b.mibs });
      rows.push(row);
      figures[mode] = { what, bytesPerRound: bytes, ...Object.fromEntries(servers.map((v, k) => [`${v.name}Rounds`, rounds[k]])) };
    }
    for (const v of servers.slice(0, -1)) v.proc.kill('SIGTERM');
    nginx.kill('SIGQUIT');
    await Promise.all(servers.map((v) => v.proc));

    const load = `${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}`;
    process.stdout.write(`\nmachine: ${os.cpus().length} CPU(s), ${os.cpus()[0]?.model ?? '?'}, load average ${load} during the run; clients and servers share it\n`);
    await report('server', `Repository server vs nginx, ${CLIENTS} clients, loopship ${lprocs} process(es), nginx ${nprocs}`, rows, {
      clients: CLIENTS,
      imageMiB: t.bytes / 2 ** 20,
      rounds: ROUNDS,
      curls: CURLS,
      loopshipProcesses: lprocs,
      fileBodies: Object.fromEntries(servers.map((v) => [v.name, v.bodies])),
      nginxProcesses: nprocs,
      loadAverage: loads,
      ...figures,
    });
  } finally {
    // stop gracefully: a SIGKILLed nginx master leaves its workers behind (so would a cluster primary)
    await Promise.all(
      procs.map(async (p) => {
        if (p.exitCode !== undefined && p.exitCode !== null) return;
        p.kill('SIGTERM');
        const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
        await p.catch(() => {});
        clearTimeout(t);
      }),
    );
    if (KEEP) process.stderr.write(`kept ${work}\n`);
    else await rm(work, { recursive: true, force: true });
  }
}

await main();
