// Benchmark (figures, not pass/fail): many concurrent clients downloading a chunked image
// from `loopship serve` and from nginx serving the same tree on loopback.
//
//   node --import tsx bench/server.ts [--clients 100] [--size-mib 256] [--rounds 5] [--workers 1] [--chunk-kib N] [--keep]
//
// The tree is shaped like a real repository: content-addressed chunk files whose sizes
// follow the chunker (4 KiB blocks, ~16 blocks on average, 4..256), stored "compressed"
// (incompressible random bytes, about half the raw size). Clients are one curl process
// running `--parallel --parallel-max N` (keep-alive connections, C event loop), so the
// client side costs the same for both servers. Each round fetches every chunk once, in a
// different order per round; rounds alternate between the two servers (both stay up), so
// a busy machine slows both alike, and the median round of each is compared. Prints
// throughput of each server, the ratio, and the peak RSS of the server processes (VmHWM,
// summed over nginx's workers). Uses the compiled CLI (dist/, `npm run build`) when present:
// that is what a deployment runs, and it spares the TypeScript loader's memory.
import { execa, type ResultPromise } from 'execa';
import { randomBytes, createHash } from 'node:crypto';
import { access, chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}
const CLIENTS = arg('clients', 100);
const SIZE = arg('size-mib', 256) * 2 ** 20;
const ROUNDS = arg('rounds', 5);
const WORKERS = arg('workers', 1);
/** fixed chunk-file size in KiB (0: sizes like the chunker's, ~30 KiB on average) */
const CHUNK_KIB = arg('chunk-kib', 0);
const KEEP = process.argv.includes('--keep');

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

async function makeTree(dir: string): Promise<{ paths: string[]; bytes: number }> {
  const paths: string[] = [];
  let bytes = 0;
  while (bytes < SIZE) {
    const data = randomBytes(Math.min(chunkSize(), SIZE - bytes || 512));
    const sha = createHash('sha256').update(data).digest('hex');
    const rel = `chunks/${sha.slice(0, 2)}/${sha}`;
    await mkdir(path.join(dir, 'chunks', sha.slice(0, 2)), { recursive: true });
    await writeFile(path.join(dir, rel), data);
    paths.push(rel);
    bytes += data.length;
  }
  await writeFile(path.join(dir, 'index.json'), '{}\n');
  return { paths, bytes };
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

/** Peak resident memory (VmHWM) of a process and its children, in MiB. */
async function peakRssMiB(pid: number): Promise<number> {
  let total = 0;
  const pids = [pid];
  try {
    const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).trim();
    if (children) pids.push(...children.split(/\s+/).map(Number));
  } catch {
    /* gone */
  }
  for (const p of pids) {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${p}/status`, 'utf8'));
      if (m) total += Number(m[1]) / 1024;
    } catch {
      /* gone */
    }
  }
  return total;
}

function shuffled<T>(a: T[]): T[] {
  const b = [...a];
  for (let i = b.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [b[i], b[j]] = [b[j], b[i]];
  }
  return b;
}

interface Round {
  seconds: number;
  requests: number;
}

/** One round: every chunk once, in a fresh order, CLIENTS transfers at a time. */
async function round(name: string, url: string, paths: string[], work: string): Promise<Round> {
  const list = path.join(work, `${name}.curl`);
  const lines: string[] = [];
  for (const p of shuffled(paths)) lines.push(`url = "${url}/${p}"`, 'output = "/dev/null"');
  await writeFile(list, lines.join('\n') + '\n');
  const t0 = process.hrtime.bigint();
  const r = await execa('curl', ['-sS', '--fail', '-Z', '--parallel-max', String(CLIENTS), '-w', '%{http_code}\\n', '-K', list], { reject: false, timeout: 1_800_000 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const codes = r.stdout.split('\n').filter(Boolean);
  const bad = codes.filter((c) => c !== '200').length;
  if (r.exitCode !== 0 || bad > 0 || codes.length !== paths.length) throw new Error(`${name}: curl exit ${r.exitCode}, ${bad} non-200 answers of ${codes.length}: ${r.stderr.slice(0, 500)}`);
  return { seconds, requests: codes.length };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function show(name: string, rounds: Round[], bytes: number, rssMiB: number): { mibs: number } {
  const secs = median(rounds.map((r) => r.seconds));
  const mibs = bytes / 2 ** 20 / secs;
  const all = rounds.map((r) => (bytes / 2 ** 20 / r.seconds).toFixed(0)).join(' ');
  process.stdout.write(
    `${name.padEnd(9)} ${mibs.toFixed(0).padStart(6)} MiB/s ${(rounds[0].requests / secs).toFixed(0).padStart(7)} req/s (median of ${rounds.length}; rounds: ${all} MiB/s)  peak RSS ${rssMiB.toFixed(0)} MiB\n`,
  );
  return { mibs };
}

async function main(): Promise<void> {
  const work = await mkdtemp(path.join(os.tmpdir(), 'loopship-bench-'));
  await chmod(work, 0o755); // nginx's workers run as an unprivileged user
  const tree = path.join(work, 'repo');
  await mkdir(tree);
  const procs: ResultPromise[] = [];
  try {
    process.stderr.write(`making a ${(SIZE / 2 ** 20).toFixed(0)} MiB chunked tree in ${tree} ...\n`);
    const { paths, bytes } = await makeTree(tree);
    process.stderr.write(`${paths.length} chunk files, ${(bytes / paths.length / 1024).toFixed(1)} KiB average; ${CLIENTS} concurrent clients, ${ROUNDS} round(s) each way\n`);

    // loopship serve (request log at warn: nginx below logs no requests either)
    const compiled = path.join(ROOT, 'dist/bin/loopship.js');
    const useDist = await access(compiled).then(() => true, () => false);
    const cli = useDist ? [compiled] : ['--import', 'tsx', path.join(ROOT, 'bin/loopship.ts')];
    await writeFile(path.join(work, 'none.yaml'), '{}\n');
    const lport = await freePort();
    const loopship = execa('node', [...cli, 'serve', '--workers', String(WORKERS), '--repo', tree, '--port', String(lport), '--state-dir', path.join(work, 'state'), '--log-level', 'warn', '--log-format', 'json', '--config', path.join(work, 'none.yaml')], {
      cwd: ROOT,
      reject: false,
    });
    procs.push(loopship);
    const lurl = `http://127.0.0.1:${lport}`;
    await waitUp(lurl, loopship);

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

    process.stderr.write(`loopship: ${useDist ? 'compiled (dist/)' : 'TypeScript via tsx (run npm run build for the deployed form)'}; warming up both ...\n`);
    await round('loopship', lurl, paths, work);
    await round('nginx', nurl, paths, work);
    const ours: Round[] = [];
    const theirs: Round[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      ours.push(await round('loopship', lurl, paths, work));
      theirs.push(await round('nginx', nurl, paths, work));
      process.stderr.write(`round ${i + 1}/${ROUNDS} done\n`);
    }
    const oursRss = await peakRssMiB(loopship.pid!);
    const theirsRss = await peakRssMiB(nginx.pid!);
    loopship.kill('SIGTERM');
    nginx.kill('SIGQUIT');
    await Promise.all([loopship, nginx]);

    process.stdout.write('\n');
    const a = show('loopship', ours, bytes, oursRss);
    const b = show('nginx', theirs, bytes, theirsRss);
    process.stdout.write(`throughput ratio loopship/nginx: ${(a.mibs / b.mibs).toFixed(2)} (target >= 0.8); loopship peak RSS ${oursRss.toFixed(0)} MiB (target < 200)\n`);
    process.stdout.write(`machine: ${os.cpus().length} CPU(s), ${os.cpus()[0]?.model ?? '?'}, load average ${os.loadavg()[0].toFixed(1)}; clients and servers share it\n`);
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
