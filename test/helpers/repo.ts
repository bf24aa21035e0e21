// Test fixtures for the repository format: a key store, a repository, small fake
// images (random data with zero holes, so chunking and sparseness are exercised) and
// a static HTTP server over a directory.
import { mkdtemp, writeFile, rm, readFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import { randomBytes, createHash } from 'node:crypto';
import { Keystore, buildRoot, signRoot } from '../../keys/index.js';
import { RepositoryWriter, createPackage, type Manifest } from '../../format/index.js';

export async function tempDir(prefix = 'loopship-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export interface Fixture {
  dir: string;
  keysDir: string;
  repoDir: string;
  keystore: Keystore;
  writer: RepositoryWriter;
  rootKeyArmored: string;
  cleanup(): Promise<void>;
}

export async function makeRepo(opts: { rootKeys?: number; rootThreshold?: number; now?: () => Date; expiresDays?: number } = {}): Promise<Fixture> {
  const dir = await tempDir();
  const keysDir = join(dir, 'keys');
  const repoDir = join(dir, 'repo');
  const keystore = await Keystore.init(keysDir, { rootKeys: opts.rootKeys, rootThreshold: opts.rootThreshold });
  const root = await buildRoot(keystore, 1, { now: opts.now?.() });
  const signed = await signRoot(root, await keystore.signingKeys('root'));
  const writer = await RepositoryWriter.init(repoDir, signed, { indexKeys: await keystore.signingKeys('index'), now: opts.now, expiresDays: opts.expiresDays });
  const rootKeyArmored = (await keystore.publicKey(keystore.find('root'))).armored;
  return { dir, keysDir, repoDir, keystore, writer, rootKeyArmored, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A deterministic pseudo-random buffer (seeded), so two "builds" can share content. */
export function seeded(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  let counter = 0;
  for (let off = 0; off < n; off += 32) {
    const h = createHash('sha256').update(`${seed}:${counter++}`).digest();
    h.copy(out, off, 0, Math.min(32, n - off));
  }
  return out;
}

/** An "image": blocks of seeded data with a zero hole in the middle. */
export async function makeImage(path: string, opts: { seed?: string; size?: number; patch?: { offset: number; data: Buffer } } = {}): Promise<void> {
  const size = opts.size ?? 3 * 1024 * 1024;
  const buf = seeded(opts.seed ?? 'img', size);
  buf.fill(0, size / 3, (2 * size) / 3); // a hole: must not be stored
  if (opts.patch) opts.patch.data.copy(buf, opts.patch.offset);
  await writeFile(path, buf);
}

export function baseManifest(name = 'tiny', version = '1.0.0'): Parameters<typeof createPackage>[0]['manifest'] {
  return {
    type: 'loopship/manifest',
    spec_version: 1,
    name,
    version,
    arch: 'amd64',
    build: { recipe_digest: 'a'.repeat(64), suite: 'bookworm', packages: [{ name: 'busybox', version: '1:1.35.0-4' }], built_at: '2026-01-01T00:00:00Z', builder: 'loopship-test' },
    image: { fs: 'ext4' },
    boot: { type: 'pvh', cmdline: 'root=/dev/xvda ro', ready_marker: 'LOOPSHIP-READY' },
    xen: { memory: 256, vcpus: 1, network: { nics: 1 } },
    settings: { hostname: { type: 'hostname', required: false } },
  } as Parameters<typeof createPackage>[0]['manifest'];
}

/** Builds a package tar for name@version from fake files; returns its path and manifest. */
export async function makePackage(fx: Fixture, opts: { name?: string; version?: string; seed?: string; patch?: { offset: number; data: Buffer }; publisher?: string } = {}): Promise<{ tarPath: string; manifest: Manifest; imagePath: string }> {
  const name = opts.name ?? 'tiny';
  const version = opts.version ?? '1.0.0';
  const work = await mkdtemp(join(fx.dir, 'pkg-'));
  const imagePath = join(work, 'disk.img');
  await makeImage(imagePath, { seed: opts.seed, patch: opts.patch });
  await writeFile(join(work, 'vmlinuz'), seeded('kernel', 300_000));
  await writeFile(join(work, 'initrd.img'), seeded('initrd', 200_000));
  const tarPath = join(work, `${name}_${version}.tar`);
  const publisherKey = await fx.keystore.privateKey(fx.keystore.find('publisher', opts.publisher));
  const { manifest } = await createPackage({
    manifest: baseManifest(name, version),
    imagePath,
    kernelPath: join(work, 'vmlinuz'),
    initrdPath: join(work, 'initrd.img'),
    publisherKey,
    out: { tarPath },
  });
  return { tarPath, manifest, imagePath };
}

export async function publish(fx: Fixture, tarPath: string, channel?: string) {
  return fx.writer.addPackage(createReadStream(tarPath), { channel });
}

/** A plain static file server (like any CDN would be), with an optional per-request override. */
export async function serveDir(
  dir: string,
  override?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean | Promise<boolean>,
): Promise<{ url: string; close(): Promise<void>; requests: string[] }> {
  const requests: string[] = [];
  const server = http.createServer(async (req, res) => {
    requests.push(req.url ?? '');
    if (override && (await override(req, res))) return;
    const path = join(dir, decodeURIComponent((req.url ?? '/').split('?')[0]));
    if (!path.startsWith(dir)) return res.writeHead(400).end();
    try {
      const data = await readFile(path);
      res.writeHead(200, { 'content-length': data.length }).end(data);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

export { randomBytes };
