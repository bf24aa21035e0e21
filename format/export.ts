// Copies out of a repository, verifying everything on the way: one image version as an
// offline package tar (`loopship export`), or a whole repository into a directory
// that any HTTP server can serve as a mirror (`loopship mirror`).
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { RepoClient, type RootPin, type UpdateResult } from './client.js';
import { ChunkStore } from './chunkstore.js';
import { writeFileAtomic, fsyncDir } from '../base/atomic.js';
import { LoopshipError, FetchError, RootChainError } from './errors.js';
import { checkSameRepository, checkRootKeys, verifyRootSignature } from './trust.js';
import { LIMITS } from './limits.js';
import { manifestChunks, MANIFEST_ENTRY, SIGNATURE_ENTRY } from './package.js';
import { INDEX_FILE, ROOT_FILE, chunkPath, indexHistoryPath, manifestPath, packPath, rootHistoryPath, sigPath } from './paths.js';
import { parseMetadata, type Chunk, type Manifest } from './schema.js';
import { writePack } from './pack.js';
import type { Fetcher } from './fetcher.js';
import { parallel } from './parallel.js';

export interface ExportOptions {
  fetcher: Fetcher;
  pin: RootPin;
  name: string;
  version?: string;
  channel?: string;
  out: string;
  /** include the root chain and the signed index, so a receiver can verify offline and advance its trust */
  withMetadata?: boolean;
  onProgress?: (done: number, total: number) => void;
}

/**
 * root/1.json .. root/N.json of an update, as verified: those the update walked, from the
 * bytes it checked (never a second download); older ones (before the pin) fetched and checked
 * to be that version of this repository, with keys that match, signed by their own root role.
 */
async function verifiedRootFiles(fetcher: Fetcher, up: UpdateResult, have: (v: number) => Promise<boolean> = async () => false): Promise<UpdateResult['rootFiles']> {
  const walked = new Map(up.rootFiles.map((r) => [r.version, r]));
  const out: UpdateResult['rootFiles'] = [];
  for (let v = 1; v <= up.root.version; v++) {
    if (await have(v)) continue; // a mirror keeps the roots it stored: not fetched again
    const known = walked.get(v);
    if (known) {
      out.push(known);
      continue;
    }
    const where = `${fetcher.source}/${rootHistoryPath(v)}`;
    const bytes = await fetcher.get(rootHistoryPath(v), LIMITS.rootBytes);
    const signature = (await fetcher.get(sigPath(rootHistoryPath(v)), LIMITS.signatureBytes)).toString('utf8');
    const root = parseMetadata('root', bytes, where);
    if (root.version !== v) throw new RootChainError('ROOT_CHAIN', `file holds root version ${root.version}, expected ${v}`, { where });
    checkSameRepository(up.root.repository, root.repository, `root version ${v}`, where);
    await checkRootKeys(root, where);
    await verifyRootSignature(bytes, signature, root, where);
    out.push({ version: v, bytes, signature });
  }
  return out;
}

export async function exportPackage(opts: ExportOptions): Promise<{ name: string; version: string; chunks: number; bytes: number; out: string }> {
  const root = await RepoClient.pin(opts.fetcher, opts.pin);
  const client = new RepoClient({ fetchers: [opts.fetcher], trustedRoot: root });
  const up = await client.update();
  const { name, version } = client.resolve(opts.name, { version: opts.version, channel: opts.channel });
  const { bytes: manifestBytes, signature, manifest } = await client.manifest(name, version);
  const tmp = `${opts.out}.partial`;
  const pack = tar.pack();
  const done = pipeline(pack, createWriteStream(tmp));
  const put = (entryName: string, data: Buffer | string) => {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
    return new Promise<void>((res, rej) => pack.entry({ name: entryName, size: buf.length, mode: 0o644, mtime: new Date(0) }, buf, (e) => (e ? rej(e) : res())));
  };
  let written = 0;
  try {
    if (opts.withMetadata) {
      for (const file of await verifiedRootFiles(opts.fetcher, up)) {
        await put(rootHistoryPath(file.version), file.bytes);
        await put(sigPath(rootHistoryPath(file.version)), file.signature);
      }
      await put(INDEX_FILE, up.indexBytes);
      await put(sigPath(INDEX_FILE), up.indexSignature);
    }
    await put(MANIFEST_ENTRY, manifestBytes);
    await put(SIGNATURE_ENTRY, signature);
    const chunks = manifestChunks(manifest);
    for (const [i, c] of chunks.entries()) {
      const { compressed } = await client.chunkWithCompressed(c);
      await put(chunkPath(c.sha256), compressed);
      written += compressed.length;
      opts.onProgress?.(i + 1, chunks.length);
    }
    pack.finalize();
    await done;
    await rename(tmp, opts.out);
    return { name, version, chunks: chunks.length, bytes: (await stat(opts.out)).size, out: opts.out };
  } catch (err) {
    pack.destroy();
    await done.catch(() => {});
    await rm(tmp, { force: true });
    throw err;
  }
}

export interface MirrorOptions {
  from: Fetcher;
  to: string;
  /** needed for a new mirror; an existing one trusts the root it already holds */
  pin?: RootPin;
  concurrency?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface MirrorResult {
  rootVersion: number;
  indexVersion: number;
  manifests: number;
  chunks: number;
  newChunks: number;
  newBytes: number;
  /** pack files written (made locally from the verified chunks) */
  packs: number;
  unchanged: boolean;
}

/**
 * Mirrors a repository into a directory: root chain, manifests and chunks verified and
 * written first, the signed index (as published, not re-signed) last by rename.
 * Only chunks the mirror does not have are fetched. A mirror never goes backwards.
 */
export async function mirrorRepository(opts: MirrorOptions): Promise<MirrorResult> {
  await mkdir(opts.to, { recursive: true });
  let trusted;
  let lastIndexVersion: number | undefined;
  try {
    trusted = parseMetadata('root', await readFile(join(opts.to, ROOT_FILE)), join(opts.to, ROOT_FILE));
    lastIndexVersion = parseMetadata('index', await readFile(join(opts.to, INDEX_FILE)), join(opts.to, INDEX_FILE)).version;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (!trusted) {
    if (!opts.pin) throw new LoopshipError('USAGE', `${opts.to} is not a mirror yet: give the root key or fingerprint to pin`);
    trusted = await RepoClient.pin(opts.from, opts.pin);
  }
  const client = new RepoClient({ fetchers: [opts.from], trustedRoot: trusted, lastIndexVersion });
  const up = await client.update();
  const unchanged = lastIndexVersion === up.index.version;

  const write = (rel: string, data: Buffer | string) => writeFileAtomic(join(opts.to, rel), data, { mkdir: true });
  const exists = async (rel: string) => stat(join(opts.to, rel)).then(() => true, () => false);
  for (const file of await verifiedRootFiles(opts.from, up, (v) => exists(rootHistoryPath(v)))) {
    await write(rootHistoryPath(file.version), file.bytes);
    await write(sigPath(rootHistoryPath(file.version)), file.signature);
  }

  const store = new ChunkStore(opts.to);
  const chunks = new Map<string, Chunk>();
  let manifests = 0;
  const versions: { manifest: Manifest; sha256: string }[] = [];
  for (const [name, image] of Object.entries(up.index.images)) {
    for (const version of Object.keys(image.versions)) {
      const { manifest, bytes, signature, sha256 } = await client.manifest(name, version);
      manifests++;
      versions.push({ manifest, sha256 });
      for (const c of manifestChunks(manifest)) chunks.set(c.sha256, c);
      if (!(await exists(manifestPath(sha256)))) {
        await write(manifestPath(sha256), bytes);
        await write(sigPath(manifestPath(sha256)), signature);
      }
    }
  }
  const missing: Chunk[] = [];
  for (const c of chunks.values()) if (!(await store.has(c.sha256))) missing.push(c);
  let newBytes = 0;
  let done = 0;
  await parallel(missing, opts.concurrency ?? 8, async (c) => {
    const { compressed } = await client.chunkWithCompressed(c);
    await store.put(c.sha256, compressed);
    newBytes += compressed.length;
    opts.onProgress?.(++done, missing.length);
  });
  // packs are made here from the chunks just verified, not downloaded: same bytes, no trust needed
  let packs = 0;
  for (const { manifest, sha256 } of versions) {
    if (await exists(packPath(sha256))) continue;
    if (await writePack(join(opts.to, packPath(sha256)), manifest, (s) => store.pathOf(s))) packs++;
  }
  if (packs) await fsyncDir(join(opts.to, 'packs'));
  await fsyncDir(opts.to);
  await write(indexHistoryPath(up.index.version), up.indexBytes);
  await write(sigPath(indexHistoryPath(up.index.version)), up.indexSignature);
  await write(sigPath(INDEX_FILE), up.indexSignature);
  await write(INDEX_FILE, up.indexBytes);
  if (!(await exists(ROOT_FILE)) || up.rootsAccepted.length > 0) {
    // root.json is the newest root/<N>.json, as just written (verified above)
    await write(sigPath(ROOT_FILE), await readFile(join(opts.to, sigPath(rootHistoryPath(up.root.version)))));
    await write(ROOT_FILE, await readFile(join(opts.to, rootHistoryPath(up.root.version))));
  }
  return { rootVersion: up.root.version, indexVersion: up.index.version, manifests, chunks: chunks.size, newChunks: missing.length, newBytes, packs, unchanged };
}

export { FetchError };
