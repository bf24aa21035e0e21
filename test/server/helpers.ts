// Shared fixtures for the server tests: a small repository tree on disk, raw HTTP
// requests (no URL normalisation, so traversal attempts reach the server as written),
// and a whole-tree hash to prove that nothing changed.
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, readlink, writeFile, lstat } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { RepositoryWriter, createPackage, SPEC_VERSION } from '../../format/index.js';
import { Keystore, buildRoot, signRoot, generateKey, readPrivateKey, type PrivateKey } from '../../keys/index.js';

export const sha256hex = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

export async function tempDir(prefix = 'loopship-server-'): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), prefix));
}

export interface FixtureRepo {
  dir: string;
  chunk: { rel: string; sha: string; bytes: Buffer };
  files: Record<string, Buffer>;
}

/** A repository-shaped tree with arbitrary (unsigned) content: enough to test serving. */
export async function makeFixtureRepo(): Promise<FixtureRepo> {
  const dir = await tempDir('loopship-repo-');
  const files: Record<string, Buffer> = {};
  const put = async (rel: string, data: Buffer) => {
    await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await writeFile(path.join(dir, rel), data);
    files[rel] = data;
  };
  const bytes = randomBytes(3 * 1024 * 1024 + 123);
  const sha = sha256hex(bytes); // name only needs to look right; the server does not check it
  const chunk = { rel: `chunks/${sha.slice(0, 2)}/${sha}`, sha, bytes };
  await put(chunk.rel, bytes);
  await put('root.json', Buffer.from('{"type":"loopship/root"}\n'));
  await put('root.json.asc', Buffer.from('-----BEGIN PGP SIGNATURE-----\n'));
  await put('root/1.json', Buffer.from('{"version":1}\n'));
  await put('index.json', Buffer.from('{"type":"loopship/index","version":1}\n'));
  await put('index.json.asc', Buffer.from('sig\n'));
  const m = Buffer.from('{"type":"loopship/manifest"}\n');
  await put(`manifests/${sha256hex(m)}.json`, m);
  await put('packages/demo_1.0_amd64.tar', randomBytes(10_000));
  await writeFile(path.join(dir, '.secret'), 'dot file');
  await writeFile(path.join(dir, 'chunks', '.hidden'), 'dot file');
  return { dir, chunk, files };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request with the path sent byte for byte as given. */
export function rawRequest(url: string, opts: { method?: string; path: string; headers?: Record<string, string>; body?: Buffer | string }): Promise<RawResponse> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: opts.method ?? 'GET', path: opts.path, headers: opts.headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** sha256 over every path, type, mode-independent content and link target in a tree. */
export async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  async function walk(rel: string): Promise<void> {
    const entries = (await readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const full = path.join(dir, r);
      const st = await lstat(full);
      if (e.isSymbolicLink()) h.update(`L ${r} -> ${await readlink(full)}\n`);
      else if (e.isDirectory()) {
        h.update(`D ${r}\n`);
        await walk(r);
      } else h.update(`F ${r} ${st.size} ${sha256hex(await readFile(full))}\n`);
    }
  }
  await walk('');
  return h.digest('hex');
}

// ---------- a real, signed repository (format/ writer, keys/ key store) ----------

export interface RealRepo {
  dir: string;
  keysDir: string;
  store: Keystore;
  writer: RepositoryWriter;
  publisherKey: PrivateKey;
  work: string;
}

export async function makeRealRepo(): Promise<RealRepo> {
  const keysDir = await tempDir('loopship-keys-');
  const dir = await tempDir('loopship-repo-');
  const work = await tempDir('loopship-work-');
  const store = await Keystore.init(keysDir);
  const root = await buildRoot(store, 1);
  const signed = await signRoot(root, await store.signingKeys('root'));
  const writer = await RepositoryWriter.init(dir, signed, { indexKeys: await store.signingKeys('index') });
  const [publisherKey] = await store.signingKeys('publisher');
  return { dir, keysDir, store, writer, publisherKey, work };
}

export async function strangerKey(): Promise<PrivateKey> {
  const k = await generateKey('not a publisher of this repository');
  return readPrivateKey(k.privateArmored, undefined);
}

/** A small signed package tar (random image blocks with a zero hole, a kernel). */
export async function makePackage(repo: RealRepo, name: string, version: string, opts: { key?: PrivateKey; imageBytes?: number; seed?: Buffer } = {}): Promise<{ tarPath: string; manifestSha256: string }> {
  const base = path.join(repo.work, `${name}-${version}-${randomBytes(4).toString('hex')}`);
  const imageBytes = opts.imageBytes ?? 512 * 1024;
  const image = Buffer.alloc(imageBytes + 256 * 1024);
  (opts.seed ?? randomBytes(imageBytes)).copy(image, 0, 0, imageBytes); // the tail stays zero: sparse
  await writeFile(base + '.img', image);
  await writeFile(base + '.kernel', randomBytes(40_000));
  const created = await createPackage({
    manifest: {
      type: 'loopship/manifest',
      spec_version: SPEC_VERSION,
      name,
      version,
      arch: 'amd64',
      build: {
        recipe_digest: sha256hex(name),
        suite: 'bookworm',
        packages: [
          { name: 'openssh-server', version: '1:9.2p1-2' },
          { name: 'xrdp', version: '0.9.21' },
        ],
        built_at: '2026-11-22T01:00:00Z',
        builder: 'test',
      },
      image: { fs: 'ext4' },
      boot: { type: 'pvh', cmdline: 'root=/dev/xvda ro', ready_marker: 'login:' },
      xen: { memory: 512, vcpus: 1, network: { nics: 1 } },
      settings: {},
    },
    imagePath: base + '.img',
    kernelPath: base + '.kernel',
    initrdPath: null,
    publisherKey: opts.key ?? repo.publisherKey,
    out: { tarPath: base + '.tar' },
  });
  return { tarPath: base + '.tar', manifestSha256: sha256hex(created.manifestBytes) };
}

/** Descriptors this process holds on a file (the servers under test run in this process). */
export function openCount(file: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === file) n++;
    } catch {
      /* closed meanwhile */
    }
  }
  return n;
}

/** Waits until `cond` holds (polling every 10 ms), or fails naming `what`. */
export async function settled(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  for (let i = 0; i < ms / 10 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`never settled: ${what}`);
}

/**
 * `clients` clients each download the whole `size`-byte file at `url` as Range requests of
 * at most `maxRange` bytes, all in flight over one keep-alive agent of 4 sockets (as an
 * agent fetches a pack). Every answer must be 206 with exactly the asked Content-Range and
 * length; returns each client's reassembled bytes.
 */
export async function rangedDownloads(url: string, size: number, clients: number, maxRange: number): Promise<Buffer[]> {
  const ranges: [number, number][] = [];
  for (let s = 0; s < size; s += maxRange) ranges.push([s, Math.min(size, s + maxRange) - 1]);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const client = async () => {
    const got = Buffer.alloc(size);
    await Promise.all(
      ranges.map(
        ([a, b]) =>
          new Promise<void>((resolve, reject) => {
            http
              .get(url, { agent, headers: { Range: `bytes=${a}-${b}` } }, (res) => {
                if (res.statusCode !== 206 || res.headers['content-range'] !== `bytes ${a}-${b}/${size}`) reject(new Error(`${res.statusCode} ${res.headers['content-range']}`));
                let at = a;
                res.on('data', (d: Buffer) => {
                  d.copy(got, at);
                  at += d.length;
                });
                res.on('end', () => (at === b + 1 ? resolve() : reject(new Error(`range ${a}-${b}: ended at ${at}`))));
                res.on('error', reject);
              })
              .on('error', reject);
          }),
      ),
    );
    return got;
  };
  try {
    return await Promise.all(Array.from({ length: clients }, client));
  } finally {
    agent.destroy();
  }
}
