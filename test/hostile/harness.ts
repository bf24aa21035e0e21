// The hostile-repository harness: one signed repository ("the world": two root keys with
// threshold 2, two index keys with threshold 2, appliance sbc 1.0.0 installed and running
// on a template host, sbc 2.0.0 and another image published since), a small HTTP server
// that serves a tampered copy of that repository and can misbehave at the HTTP level, and
// the checks every attack must pass: the agent fails with the right exit code and error
// naming the file, the host (config, state dir, console logs) is byte-identical but for
// the fields named below, the running appliance was not touched, and afterwards a good
// repository completes the upgrade.
import { createHash } from 'node:crypto';
import { cp, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile, open } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { Agent } from '../../client-agent/agent.js';
import type { DomainSpec } from '../../client-agent/backends/types.js';
import {
  RepositoryWriter, createFetcher, exitCodeFor, serialize, manifestPath, chunkPath, packPath, sigPath,
  type Index, type Manifest, type HttpFetcherOptions,
} from '../../format/index.js';
import { Keystore, buildRoot, signRoot, signDetached, generateKey, readPrivateKey, type PrivateKey } from '../../keys/index.js';
import { startServer, type RunningServer } from '../../repo-server/server.js';
import { parseServerConfig } from '../../repo-server/config.js';
import { FakeBackend } from '../agent/fakes.js';
import { publishExt4 } from '../agent/ext4.js';
import type { Fixture } from '../helpers/repo.js';

export const sha256 = (b: Uint8Array | string): string => createHash('sha256').update(b).digest('hex');
const BIN = join(process.cwd(), 'dist', 'bin', 'loopship-agent.js');

// ---------- the world ----------

export interface World {
  dir: string;
  fx: Fixture;
  keystore: Keystore;
  /** the good repository, never modified after setup */
  repoDir: string;
  /** a host with sbc 1.0.0 installed, configured and (in the fake backend) running */
  templateHost: string;
  runningSpec: DomainSpec;
  indexVersion: number;
  manifests: { sbc1: string; sbc2: string; other: string };
  /** chunks of sbc 2.0.0 that an upgrade from 1.0.0 must download (not on the host) */
  newChunks: Manifest['image']['chunks'];
  sbc2: Manifest;
  /** sha256 of sbc 2.0.0's image as built: what a completed upgrade must hold */
  sbc2ImageSha: string;
  sbc2ImagePath: string;
  /** sbc 2.0.0's package tar (offline import) */
  sbc2Tar: string;
  /** `loopship serve` over the good repository */
  goodServer: RunningServer;
  indexKeys: PrivateKey[];
  /** the repository id its roots and indexes carry */
  repository: string;
  rootKeys: PrivateKey[];
  publisherKeys: PrivateKey[];
  stranger: PrivateKey;
  cleanup(): Promise<void>;
}

export async function hostConfig(host: string, repos: string[]): Promise<void> {
  await writeFile(join(host, 'agent.yaml'), [
    `repos: [${repos.join(', ')}]`,
    `trust: { root_key_file: ${join(host, 'root.asc')} }`,
    'health_timeout_s: 5',
    'fetch_concurrency: 2',
    'appliances:',
    '  - name: sbc',
    '    channel: stable',
    '    settings: { hostname: branch-01 }',
  ].join('\n') + '\n');
}

export async function buildWorld(): Promise<World> {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-hostile-'));
  const keysDir = join(dir, 'keys');
  const repoDir = join(dir, 'repo');
  const keystore = await Keystore.init(keysDir, { rootKeys: 2, rootThreshold: 2 });
  // two index keys, both needed: an index signed by one is below threshold
  await keystore.generate('index', 'index-2');
  keystore.thresholds.index = 2;
  const root = await buildRoot(keystore, 1);
  const rootKeys = await keystore.signingKeys('root');
  const indexKeys = await keystore.signingKeys('index');
  const publisherKeys = await keystore.signingKeys('publisher');
  const writer = await RepositoryWriter.init(repoDir, await signRoot(root, rootKeys), { indexKeys });
  const rootKeyArmored = (await keystore.publicKey(keystore.find('root'))).armored;
  const fx: Fixture = { dir, keysDir, repoDir, keystore, writer, rootKeyArmored, cleanup: async () => {} };

  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  // the template host installs and boots 1.0.0
  const templateHost = join(dir, 'template-host');
  await mkdir(templateHost);
  await writeFile(join(templateHost, 'root.asc'), rootKeyArmored);
  await hostConfig(templateHost, [repoDir]);
  const backend = new FakeBackend(join(templateHost, 'console'));
  const agent = new Agent({ configPath: join(templateHost, 'agent.yaml'), stateDir: join(templateHost, 'state'), backend, host: 'branch-01' });
  const inst = await agent.install('sbc');
  if (!inst.health?.ready) throw new Error('template install did not become ready');
  const runningSpec = backend.running.get('sbc')!;

  // published since: another image, and sbc 2.0.0 on stable
  await publishExt4(fx, 'other', '1.0.0', { channel: 'stable', motd: 'other' });
  const v2 = await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'version two' });
  // the host has seen the newest index (its rollback floor), not yet upgraded
  const seen = await agent.locked(() => agent.update());

  const index = JSON.parse(await readFile(join(repoDir, 'index.json'), 'utf8')) as Index;
  const manifests = {
    sbc1: index.images.sbc.versions['1.0.0'].manifest,
    sbc2: index.images.sbc.versions['2.0.0'].manifest,
    other: index.images.other.versions['1.0.0'].manifest,
  };
  const m1 = JSON.parse(await readFile(join(repoDir, manifestPath(manifests.sbc1)), 'utf8')) as Manifest;
  const sbc2 = JSON.parse(await readFile(join(repoDir, manifestPath(manifests.sbc2)), 'utf8')) as Manifest;
  const have = new Set([...m1.image.chunks, ...m1.kernel.chunks, ...(m1.initrd?.chunks ?? [])].map((c) => c.sha256));
  const newChunks = sbc2.image.chunks.filter((c) => !have.has(c.sha256));
  if (!newChunks.length) throw new Error('sbc 2.0.0 shares every chunk with 1.0.0: nothing to attack');

  const goodServer = await startServer({ repoDir, stateDir: null, config: parseServerConfig({}) });
  const stranger = await readPrivateKey((await generateKey('stranger')).privateArmored, undefined);
  return {
    dir, fx, keystore, repoDir, templateHost, runningSpec, indexVersion: seen.index_version, manifests, newChunks, sbc2,
    sbc2ImageSha: sha256(await readFile(v2.image)), sbc2ImagePath: v2.image, sbc2Tar: v2.tarPath, goodServer,
    indexKeys, repository: root.repository, rootKeys, publisherKeys, stranger,
    cleanup: async () => {
      await goodServer.close(0);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// ---------- the hostile server ----------

export type Override = (req: http.IncomingMessage, res: http.ServerResponse, path: string) => boolean | Promise<boolean>;

export interface HostileServer {
  url: string;
  requests: string[];
  override?: Override;
  close(): Promise<void>;
}

/** Serves `tree` like any static server (200, Content-Length, byte ranges), unless `override` answers. */
export async function hostileServer(tree: string, override?: Override): Promise<HostileServer> {
  const requests: string[] = [];
  const self: HostileServer = { url: '', requests, override, close: async () => {} };
  const server = http.createServer(async (req, res) => {
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]).replace(/^\/+/, '');
    requests.push(path + (req.headers.range ? ` ${req.headers.range}` : ''));
    res.on('error', () => {});
    try {
      if (self.override && (await self.override(req, res, path))) return;
      const file = resolve(tree, path);
      if (!file.startsWith(resolve(tree) + '/')) return void res.writeHead(400).end();
      const data = await readFile(file).catch(() => null);
      if (!data) return void res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      const m = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
      if (m) {
        const start = Number(m[1]);
        const end = m[2] ? Math.min(Number(m[2]), data.length - 1) : data.length - 1;
        if (start > end) return void res.writeHead(416, { 'content-range': `bytes */${data.length}` }).end();
        res.writeHead(206, { 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${data.length}` }).end(data.subarray(start, end + 1));
      } else {
        res.writeHead(200, { 'content-length': data.length }).end(data);
      }
    } catch {
      res.destroy();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  self.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  self.close = () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); });
  return self;
}

// ---------- what a row of the attack table can use ----------

export interface AttackContext {
  world: World;
  /** a copy of the good repository this attack's server serves; change it at will */
  tree: string;
  read(rel: string): Promise<Buffer>;
  write(rel: string, data: Uint8Array | string): Promise<void>;
  remove(rel: string): Promise<void>;
  index(): Promise<Index>;
  /** index.json + .asc, signed by `keys` (default: both index keys, i.e. validly) */
  writeIndex(index: Index | Buffer, keys?: PrivateKey[]): Promise<void>;
  /** a manifest signed by `keys` (default: the publisher), named by its sha256; returns its index entry */
  addManifest(m: Manifest | Buffer, keys?: PrivateKey[]): Promise<{ manifest: string; size: number }>;
}

export function context(world: World, tree: string): AttackContext {
  const ctx: AttackContext = {
    world,
    tree,
    read: (rel) => readFile(join(tree, rel)),
    write: async (rel, data) => {
      await mkdir(join(tree, rel, '..'), { recursive: true });
      await writeFile(join(tree, rel), data);
    },
    remove: (rel) => rm(join(tree, rel), { recursive: true, force: true }),
    index: async () => JSON.parse((await ctx.read('index.json')).toString('utf8')) as Index,
    writeIndex: async (index, keys = world.indexKeys) => {
      const bytes = Buffer.isBuffer(index) ? index : serialize(index);
      await ctx.write('index.json', bytes);
      await ctx.write('index.json.asc', await signDetached(bytes, keys));
    },
    addManifest: async (m, keys = world.publisherKeys) => {
      const bytes = Buffer.isBuffer(m) ? m : serialize(m);
      const sha = sha256(bytes);
      await ctx.write(manifestPath(sha), bytes);
      await ctx.write(sigPath(manifestPath(sha)), await signDetached(bytes, keys));
      return { manifest: sha, size: bytes.length };
    },
  };
  return ctx;
}

/** The good index with sbc 2.0.0 pointed elsewhere, signed validly, same version (the floor does not move). */
export async function repointSbc2(ctx: AttackContext, entry: { manifest: string; size: number }): Promise<void> {
  const index = await ctx.index();
  Object.assign(index.images.sbc.versions['2.0.0'], entry);
  await ctx.writeIndex(index);
}

export const manifestRel = (w: World) => manifestPath(w.manifests.sbc2);
export const chunkRel = (w: World, i = 0) => chunkPath(w.newChunks[i].sha256);
export const packRel = (w: World) => packPath(w.manifests.sbc2);

// ---------- host snapshots ----------

/**
 * sha256 over every path, type, mode, content and link target under `dir`, except the paths
 * `skip` names (relative). What a hostile repository must not change.
 */
export async function hashTree(dir: string, skip: (rel: string) => boolean = () => false): Promise<{ digest: string; files: Map<string, string> }> {
  const files = new Map<string, string>();
  async function walk(rel: string): Promise<void> {
    const entries = (await readdir(join(dir, rel))).sort();
    for (const name of entries) {
      const r = rel ? `${rel}/${name}` : name;
      if (skip(r)) continue;
      const full = join(dir, r);
      const st = await lstat(full);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) files.set(r, `L ${await readlink(full)}`);
      else if (st.isDirectory()) {
        files.set(r, `D ${mode}`);
        await walk(r);
      } else if (st.isFile()) files.set(r, `F ${mode} ${st.size} ${await fileSha(full)}`);
      else files.set(r, `? ${st.mode}`);
    }
  }
  await walk('');
  const digest = sha256([...files].map(([k, v]) => `${k} ${v}`).join('\n'));
  return { digest, files };
}

export async function fileSha(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const part of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(part as Buffer);
  return h.digest('hex');
}

/** Paths that differ between two snapshots (for a readable failure). */
export function diffTrees(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [k, v] of a) if (b.get(k) !== v) out.push(`${k}: ${v} -> ${b.get(k) ?? '(gone)'}`);
  for (const [k, v] of b) if (!a.has(k)) out.push(`${k}: (new) ${v}`);
  return out;
}

/**
 * What a failed upgrade may change on the host, and nothing else:
 *  - state.json: `last_update` (the index verified) and the appliance's `last_error`;
 *  - appliances/sbc/.staging/: the resumable download, checked separately (only verified bytes).
 */
export const SKIP = (rel: string): boolean => rel === 'state/state.json' || rel.startsWith('state/appliances/sbc/.staging');

export function normalizedState(text: string): unknown {
  const s = JSON.parse(text);
  delete s.last_update;
  for (const a of Object.values(s.appliances ?? {}) as { last_error?: unknown }[]) delete a.last_error;
  return s;
}

/**
 * Every non-zero 4 KiB block a partial download left in staging equals the good image's
 * block at the same offset: not one byte the hostile server sent was written.
 */
export async function stagingHoldsOnlyVerifiedBytes(stagingImg: string, goodImg: string): Promise<{ blocks: number; bad: number[] }> {
  const a = await open(stagingImg, 'r');
  const b = await open(goodImg, 'r');
  const bufA = Buffer.alloc(4096);
  const bufB = Buffer.alloc(4096);
  const zero = Buffer.alloc(4096);
  const size = (await a.stat()).size;
  let blocks = 0;
  const bad: number[] = [];
  try {
    for (let off = 0; off < size; off += 4096) {
      const { bytesRead } = await a.read(bufA, 0, 4096, off);
      if (bytesRead === 0) break;
      if (bufA.compare(zero, 0, bytesRead, 0, bytesRead) === 0) continue;
      blocks++;
      await b.read(bufB, 0, 4096, off);
      if (bufA.compare(bufB, 0, bytesRead, 0, bytesRead) !== 0) bad.push(off);
    }
  } finally {
    await a.close();
    await b.close();
  }
  return { blocks, bad };
}

// ---------- running the agent ----------

export interface Host {
  dir: string;
  configPath: string;
  stateDir: string;
  consoleDir: string;
}

export async function copyHost(world: World, name: string): Promise<Host> {
  const dir = join(world.dir, 'hosts', name);
  await mkdir(join(world.dir, 'hosts'), { recursive: true });
  await execa('cp', ['-a', '--sparse=always', world.templateHost, dir]);
  return { dir, configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), consoleDir: join(dir, 'console') };
}

/** A fake backend in which the host's sbc 1.0.0 is running, as on the template host. */
export function runningBackend(world: World, host: Host): FakeBackend {
  const b = new FakeBackend(host.consoleDir);
  b.running.set('sbc', { ...world.runningSpec, disk: join(host.stateDir, 'appliances', 'sbc', '1.0.0', 'disk.img') });
  return b;
}

export function agentFor(host: Host, backend: FakeBackend, opts: { fetcher?: HttpFetcherOptions; now?: () => Date; logs?: string[] } = {}): Agent {
  return new Agent({
    configPath: host.configPath,
    stateDir: host.stateDir,
    backend,
    host: 'branch-01',
    now: opts.now,
    createFetcher: (s) => createFetcher(s, opts.fetcher),
    log: (l) => opts.logs?.push(l),
  });
}

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  json: { code?: string; where?: string; message?: string } | null;
}

/** The compiled `loopship-agent` as a real process. */
export async function runCli(host: Host, args: string[], timeoutMs = 120_000): Promise<CliResult> {
  const r = await execa('node', [BIN, '--config', host.configPath, '--state-dir', host.stateDir, ...args], { reject: false, timeout: timeoutMs });
  let json = null;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    /* not JSON */
  }
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr, json };
}

export type { PrivateKey };
export { exitCodeFor, sigPath, signDetached, buildRoot, signRoot, Keystore };

/** At most `n` at a time (loop mounts and node processes on a small shared machine). */
export function limiter(n: number): <T>(f: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async (f) => {
    if (active >= n) await new Promise<void>((r) => waiting.push(r));
    active++;
    try {
      return await f();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}
