// Install throughput (figures, not pass/fail): a fresh `loopship-agent install` of an
// image of 1 GiB apparent size from `loopship serve` on loopback, against the plain
// pipeline `curl | zstd -d | sha256sum` over the same compressed bytes (every chunk's
// zstd frame, concatenated in image order, served by nginx). Target: <= 1.15x its time.
//
//   node --import tsx bench/install.ts [--size-mib 1024] [--content DIR ...] [--rounds N] [--keep | --reuse DIR]
import { execa } from 'execa';
import { mkdir, mkdtemp, rm, writeFile, readFile, appendFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Keystore, buildRoot, signRoot } from '../keys/index.js';
import { RepositoryWriter, createPackage, chunkPath, parseMetadata } from '../format/index.js';
import { report, BENCH_DIR } from './report.js';

const ROOT = path.resolve(BENCH_DIR, '..');
const { values: args } = parseArgs({ options: { 'size-mib': { type: 'string' }, content: { type: 'string', multiple: true }, keep: { type: 'boolean' }, reuse: { type: 'string' }, rounds: { type: 'string' } } });
const SIZE_MIB = Number(args['size-mib'] ?? 1024);
const CONTENT = args.content ?? ['/usr/bin', '/usr/share/locale', '/usr/share/doc', '/usr/lib/python3', '/usr/share/perl'];
const ROUNDS = Number(args.rounds ?? 2);

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}
async function waitHttp(url: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (await fetch(url).then((r) => r.ok, () => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not come up`);
}
const dropCaches = () => writeFile('/proc/sys/vm/drop_caches', '3').catch(() => {});

const work = args.reuse ? path.resolve(args.reuse) : await mkdtemp(path.join('/var/tmp', 'loopship-bench-install-'));
const children: { kill(): unknown }[] = [];
const repo = path.join(work, 'repo');
const peerDir = path.join(work, 'peer');
async function prepare() {
  // 1. A real ext4 image of SIZE_MIB apparent size, filled from host directories.
  const img = path.join(work, 'disk.img');
  const content = path.join(work, 'content');
  await mkdir(content);
  // Real files (binaries, text, translations) up to ~65% of the image, like a used root filesystem.
  let used = 0;
  for (const d of CONTENT) {
    const kib = Number((await execa('du', ['-sk', d])).stdout.split('\t')[0]);
    if ((used + kib) / 1024 > SIZE_MIB * 0.65) continue;
    await execa('cp', ['-a', d, path.join(content, path.basename(d))]);
    used += kib;
  }
  await execa('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', content, img, `${SIZE_MIB}M`]);
  await rm(content, { recursive: true, force: true });
  await writeFile(path.join(work, 'vmlinuz'), Buffer.alloc(1 << 20, 1));

  // 2. A signed repository holding it.
  const keys = await Keystore.init(path.join(work, 'keys'));
  await RepositoryWriter.init(repo, await signRoot(await buildRoot(keys, 1), await keys.signingKeys('root')), { indexKeys: await keys.signingKeys('index') });
  const writer = new RepositoryWriter(repo, { indexKeys: await keys.signingKeys('index') });
  const { manifest } = await createPackage({
    manifest: {
      type: 'loopship/manifest', spec_version: 1, name: 'bench', version: '1.0.0', arch: 'amd64',
      build: { recipe_digest: 'b'.repeat(64), suite: 'bookworm', packages: [], built_at: new Date().toISOString(), builder: 'bench' },
      image: { fs: 'ext4' }, boot: { type: 'pvh', cmdline: 'ro', ready_marker: 'READY' }, xen: { memory: 256, vcpus: 1, network: { nics: 0 } }, settings: {},
    },
    imagePath: img, kernelPath: path.join(work, 'vmlinuz'), initrdPath: null,
    publisherKey: await keys.privateKey(keys.find('publisher')),
    out: { tarPath: path.join(work, 'bench.tar') },
  });
  await writer.addPackage(createReadStream(path.join(work, 'bench.tar')), { channel: 'stable' });
  await rm(path.join(work, 'bench.tar'));

  // 3. The peer's input: the same zstd frames, concatenated in image order, one file.
  await mkdir(peerDir);
  const all = path.join(peerDir, 'image.zst');
  await writeFile(all, '');
  for (const c of manifest.image.chunks) await appendFile(all, await readFile(path.join(repo, chunkPath(c.sha256))));

  return { keys, manifest };
}

async function reuse() {
  const keys = await Keystore.open(path.join(work, 'keys'));
  const index = JSON.parse(await readFile(path.join(work, 'repo', 'index.json'), 'utf8'));
  const entry = index.images.bench.versions['1.0.0'];
  const manifest = parseMetadata('manifest', await readFile(path.join(work, 'repo', 'manifests', `${entry.manifest}.json`)), 'bench manifest');
  return { keys, manifest };
}

try {
  // --reuse DIR: a work dir a --keep run left (image, repository and peer input are made once)
  const { keys, manifest } = args.reuse ? await reuse() : await prepare();
  const compressed = manifest.image.chunks.reduce((a, c) => a + c.csize, 0);
  const raw = manifest.image.chunks.reduce((a, c) => a + c.length, 0);

  // 4. Servers: loopship for the agent, nginx for the pipeline.
  const lport = await freePort();
  const nport = await freePort();
  await writeFile(path.join(work, 'server.yaml'), '{}\n');
  const server = execa('node', [path.join(ROOT, 'dist/bin/loopship.js'), 'serve', '--repo', repo, '--port', String(lport), '--config', path.join(work, 'server.yaml'), '--state-dir', path.join(work, 'srv'), '--log-level', 'warn', '--log-format', 'json'], { reject: false });
  children.push(server);
  const nginxConf = path.join(work, 'nginx.conf');
  await writeFile(nginxConf, `user root; daemon off; pid ${work}/nginx.pid; error_log ${work}/nginx.err; worker_processes 2;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path ${work}/nb; proxy_temp_path ${work}/np; fastcgi_temp_path ${work}/nf; uwsgi_temp_path ${work}/nu; scgi_temp_path ${work}/ns;
  server { listen 127.0.0.1:${nport}; root ${peerDir}; } }\n`);
  const nginx = execa('nginx', ['-c', nginxConf], { reject: false });
  children.push(nginx);
  await waitHttp(`http://127.0.0.1:${lport}/index.json`);
  await waitHttp(`http://127.0.0.1:${nport}/image.zst`);

  const rows = [];
  for (let round = 1; round <= ROUNDS; round++) {
    // The pipeline.
    await dropCaches();
    const p0 = performance.now();
    const pipe = await execa('bash', ['-o', 'pipefail', '-c', `curl -sf http://127.0.0.1:${nport}/image.zst | zstd -d | sha256sum`]);
    const pipeMs = performance.now() - p0;
    void pipe;

    // The agent: a fresh host every round (nothing to reuse).
    const host = path.join(work, `host-${round}`);
    await mkdir(host);
    const A = (a: string[]) => execa('node', [path.join(ROOT, 'dist/bin/loopship-agent.js'), '--config', path.join(host, 'agent.yaml'), '--state-dir', path.join(host, 'state'), ...a]);
    await A(['init', '--repo', `http://127.0.0.1:${lport}`, '--root-fingerprint', keys.find('root').fingerprint, '--backend', 'qemu']);
    await dropCaches();
    const a0 = performance.now();
    const inst = await A(['install', 'bench:stable', '--no-start', '--json']);
    const agentMs = performance.now() - a0;
    const result = JSON.parse(inst.stdout);
    const engineS = result.install?.seconds ?? result.seconds;
    rows.push({ round, 'pipeline s': pipeMs / 1000, 'agent install s': agentMs / 1000, 'of which fetch+verify+write s': engineS ?? '-', ratio: agentMs / pipeMs });
    await rm(host, { recursive: true, force: true });
  }
  const best = rows.reduce((a, r) => (r.ratio < a.ratio ? r : a));
  await report('install', `Fresh install of ${SIZE_MIB} MiB apparent (${(raw / 2 ** 20).toFixed(0)} MiB data, ${(compressed / 2 ** 20).toFixed(0)} MiB compressed, ${manifest.image.chunks.length} chunks) vs curl | zstd -d | sha256sum`, rows, {
    target: 'ratio <= 1.15',
    bestRatio: best.ratio,
    apparentMiB: SIZE_MIB,
    dataMiB: raw / 2 ** 20,
    compressedMiB: compressed / 2 ** 20,
    chunks: manifest.image.chunks.length,
    loadavg: os.loadavg(),
  });
} finally {
  for (const c of children) c.kill();
  if (!args.keep && !args.reuse) await rm(work, { recursive: true, force: true });
  else process.stderr.write(`${args.reuse ? "reused" : "kept"} ${work}\n`);
}
