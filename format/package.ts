// Package tars: one image version in one file, for publishing and offline import.
// Entry order is fixed so a reader can verify while streaming: manifest.json,
// manifest.json.asc, then chunks/<aa>/<sha256> (zstd), each named by the manifest.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { signDetached, type SigningKey } from '../keys/pgp.js';
import { chunkFile, SharedReadBuffers, IMAGE_CHUNKING, FILE_CHUNKING, type ChunkerOptions, type RawChunk } from './chunker.js';
import { compressChunk, decodeChunk, sha256Hex, DEFAULT_ZSTD_LEVEL } from './codec.js';
import { ChunkStore } from './chunkstore.js';
import { PackageError, MetadataError, LoopshipError, VerificationError, RollbackError, ExpiredError } from './errors.js';
import { LIMITS, zstdCompressBound } from './limits.js';
import { chunkPath } from './paths.js';
import { parseMetadata, serialize, ManifestSchema, describeIssues, printable, type Manifest, type Blob, type Chunk, type Root, type Index } from './schema.js';
import { verifyManifestSignature, verifyRootTransition, verifyIndex, checkRootInForce } from './trust.js';

export const MANIFEST_ENTRY = 'manifest.json';
export const SIGNATURE_ENTRY = 'manifest.json.asc';

export interface PackageStats {
  chunks: number;
  newChunks: number;
  apparent: number;
  stored: number;
  compressed: number;
  newCompressed: number;
}

type ManifestInput = Omit<Manifest, 'image' | 'kernel' | 'initrd'> & { image: { fs: 'ext4'; uuid?: string } };

export interface CreatePackageOptions {
  manifest: ManifestInput;
  imagePath: string;
  kernelPath: string;
  initrdPath: string | null;
  publisherKey: SigningKey;
  /** a tar file; or chunks straight into a repository's chunk store (manifest returned, not indexed) */
  out: { tarPath: string } | { repoDir: string };
  zstdLevel?: number;
  chunking?: ChunkerOptions;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** compression threads (default: the CPUs, at most 4); 0 or 1 compresses on the calling thread */
  threads?: number;
}

export interface CreatedPackage {
  manifest: Manifest;
  manifestBytes: Buffer;
  signature: string;
  stats: PackageStats;
}

// Compression is the heaviest step of making a package: zstd runs on worker threads
// (each with its own context), which also write the new chunk files, while the main
// thread reads and chunks. The workers also hash: the chunker's read buffers are shared
// memory, so a batch of chunks costs one message and no copy (a warm rebuild, where
// nothing is compressed, is mostly hashing, and the main thread alone took as long as
// mkfs). The worker is a few lines of CommonJS evaluated in
// place, so it loads the same way from the TypeScript sources and from dist/, without
// the parent's loaders. It writes like ChunkStore.put (temporary name, then rename; no
// fsync, as before) to the path the main thread's ChunkStore names.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const path = require('node:path');
const binding = require(workerData.binding);
const cctx = new binding.CCtx();
let scratch = Buffer.alloc(0);
let seq = 0;
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, data, level, file, hash }) => {
  if (hash) {
    // views of the main thread's shared read buffers: hashed in place, no copy either way
    parentPort.postMessage({ id, shas: hash.map(([sab, off, len]) => createHash('sha256').update(new Uint8Array(sab, off, len)).digest('hex')) });
    return;
  }
  try {
    const bound = binding.compressBound(data.length);
    if (scratch.length < bound) scratch = Buffer.allocUnsafeSlow(bound);
    const n = cctx.compress(scratch, data, level);
    let isNew = false;
    if (!fs.statSync(file, { throwIfNoEntry: false })?.isFile()) {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      const tmp = file + '.tmp-' + process.pid + '-' + workerData.index + '-' + seq++;
      const fd = fs.openSync(tmp, 'wx', 0o644);
      try {
        try {
          for (let off = 0; off < n; ) off += fs.writeSync(fd, scratch, off, n - off);
        } finally {
          fs.closeSync(fd);
        }
        fs.renameSync(tmp, file);
      } catch (err) {
        fs.rmSync(tmp, { force: true });
        throw err;
      }
      isNew = true;
    }
    parentPort.postMessage({ id, csize: n, isNew });
  } catch (err) {
    parentPort.postMessage({ id, error: String((err && err.message) || err) });
  }
});
`;

/** What the pipeline knows about one distinct chunk once it is in the store. */
type Stored = { csize: number; isNew: boolean };

/** A fixed set of compress-and-store workers; jobs queue until a worker is free. */
class StorePool {
  private readonly workers: { worker: Worker; busy: number }[] = [];
  private readonly waiting = new Map<number, { resolve: (r: Stored) => void; reject: (e: Error) => void }>();
  private readonly hashing = new Map<number, { resolve: (shas: string[]) => void; reject: (e: Error) => void }>();
  private readonly queue: ({ id: number; data: Uint8Array; level: number; file: string } | { id: number; hash: [SharedArrayBuffer, number, number][] })[] = [];
  private nextId = 0;
  private failure: Error | undefined;
  private closing = false;

  constructor(threads: number) {
    const bindingPath = createRequire(import.meta.url).resolve('zstd-napi/binding.js');
    for (let index = 0; index < threads; index++) {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { binding: bindingPath, index }, execArgv: [] });
      const slot = { worker, busy: 0 };
      worker.on('message', (m: { id: number; csize?: number; isNew?: boolean; error?: string; shas?: string[] }) => {
        slot.busy--;
        if (m.shas) {
          const h = this.hashing.get(m.id);
          this.hashing.delete(m.id);
          h?.resolve(m.shas);
          return this.pump();
        }
        const w = this.waiting.get(m.id);
        this.waiting.delete(m.id);
        if (m.error === undefined) w?.resolve({ csize: m.csize!, isNew: m.isNew! });
        else w?.reject(new LoopshipError('IO', `compressing and storing a chunk failed: ${m.error}`));
        this.pump();
      });
      worker.on('error', (err) => this.fail(err));
      worker.on('exit', (code) => {
        if (!this.closing) this.fail(new Error(`compression worker exited with code ${code}`));
      });
      this.workers.push(slot);
    }
  }

  /** Compresses `data` and writes it to `file` unless that exists. */
  store(data: Uint8Array, level: number, file: string): Promise<Stored> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const p = new Promise<Stored>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    // an own copy: posting a view would copy its whole read buffer
    this.queue.push({ id, data: new Uint8Array(data), level, file });
    this.pump();
    return p;
  }

  /** sha256 (hex) of each chunk; all must be views of SharedArrayBuffers (nothing is copied). */
  hash(chunks: Uint8Array[]): Promise<string[]> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const p = new Promise<string[]>((resolve, reject) => this.hashing.set(id, { resolve, reject }));
    // hashing gates the pipeline (what to compress is known only after it): ahead of compression
    const at = this.queue.findIndex((j) => !('hash' in j));
    const job = { id, hash: chunks.map((c): [SharedArrayBuffer, number, number] => [c.buffer as SharedArrayBuffer, c.byteOffset, c.byteLength]) };
    this.queue.splice(at < 0 ? this.queue.length : at, 0, job);
    this.pump();
    return p;
  }

  // two jobs per worker: one running, one ready, so no worker idles for a round trip
  private pump(): void {
    while (this.queue.length) {
      const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
      if (slot.busy >= 2) return;
      const job = this.queue.shift()!;
      slot.busy++;
      if ('hash' in job) slot.worker.postMessage(job);
      else slot.worker.postMessage(job, [job.data.buffer as ArrayBuffer]);
    }
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    for (const h of this.hashing.values()) h.reject(err);
    this.hashing.clear();
    this.waiting.clear();
    this.queue.length = 0;
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

// Chunks (at most this many) hashed but not yet stored: bounds memory while the workers catch up.
const IN_FLIGHT = 64;
// Chunks hashed on a worker per message, and such batches out at once (two per worker).
const HASH_BATCH = 128;
const HASH_BATCHES = 4;

async function chunkInto(
  path: string,
  opts: ChunkerOptions,
  store: ChunkStore,
  stats: PackageStats,
  stored: Map<string, Promise<Stored>>,
  storeNew: (sha: string, raw: Uint8Array) => Promise<Stored>,
  progress: (n: number) => void,
  pool: StorePool | undefined,
  readBuffers: SharedReadBuffers,
): Promise<Blob> {
  const size = (await stat(path)).size;
  const chunks: Chunk[] = [];
  const whole = opts.skipZeroBlocks ? undefined : createHash('sha256');
  const pending = new Set<Promise<void>>();
  let failed: unknown;
  let last = 0;
  // The read buffer of the chunks being accounted. Chunks are accounted in file order, and
  // each one's bytes are hashed and copied (or compressed) by then: once a chunk of a later
  // buffer comes, nothing uses the earlier one and the chunker may read into it again.
  let current: SharedArrayBuffer | undefined;
  const recycle = (raw: RawChunk | undefined) => {
    const sab = raw?.data.buffer instanceof SharedArrayBuffer ? raw.data.buffer : undefined;
    if (raw && !sab) return; // a copy (spanning two reads): says nothing of the buffers
    if (current && sab !== current) readBuffers.giveBack(current);
    current = sab;
  };
  // one hashed chunk, in file order
  const account = async (raw: RawChunk, sha: string) => {
    const chunk: Chunk = { offset: raw.offset, length: raw.data.length, sha256: sha, csize: 0 };
    chunks.push(chunk);
    stats.chunks++;
    stats.stored += raw.data.length;
    // A chunk already in the store (an earlier build) is not compressed again: a warm
    // rebuild only pays for what changed. One that repeats within this package shares
    // the first one's work. (A synchronous stat: thousands of them cost milliseconds,
    // the same through the thread pool cost seconds.)
    let job = stored.get(sha);
    const first = !job;
    if (!job) {
      const existing = statSync(store.pathOf(sha), { throwIfNoEntry: false });
      job = existing?.isFile() ? Promise.resolve({ csize: existing.size, isNew: false }) : storeNew(sha, raw.data);
      stored.set(sha, job);
    }
    const done: Promise<void> = job
      .then(
        (r) => {
          chunk.csize = r.csize;
          stats.compressed += r.csize;
          if (first && r.isNew) {
            stats.newChunks++;
            stats.newCompressed += r.csize;
          }
        },
        (err) => {
          failed ??= err;
        },
      )
      .finally(() => pending.delete(done));
    pending.add(done);
    recycle(raw);
    if (pending.size >= IN_FLIGHT) await Promise.race(pending);
    progress(raw.offset + raw.data.length - last);
    last = raw.offset + raw.data.length;
  };
  // Batches of chunks hashed on the workers (those in shared memory; the few that span two
  // reads here), then accounted strictly in order, so dedup and the manifest are as if serial.
  const batches: { raws: RawChunk[]; shas: Promise<string[]> }[] = [];
  let batch: RawChunk[] = [];
  const isShared = (r: RawChunk) => pool !== undefined && r.data.buffer instanceof SharedArrayBuffer;
  const send = () => {
    if (!batch.length) return;
    const raws = batch;
    batch = [];
    const onWorkers = raws.filter(isShared);
    const hashed = onWorkers.length ? pool!.hash(onWorkers.map((r) => r.data)) : Promise.resolve([]);
    const shas = hashed.then((h) => {
      let i = 0;
      return raws.map((r) => (isShared(r) ? h[i++] : sha256Hex(r.data)));
    });
    shas.catch(() => undefined); // awaited in turn below; not unhandled if we stop before
    batches.push({ raws, shas });
  };
  const drain = async (keep: number) => {
    while (batches.length > keep && !failed) {
      const b = batches.shift()!;
      const shas = await b.shas;
      for (let i = 0; i < b.raws.length && !failed; i++) await account(b.raws[i], shas[i]);
    }
  };
  for await (const raw of chunkFile(path, opts, { buffers: pool && readBuffers })) {
    if (failed) break;
    whole?.update(raw.data);
    batch.push(raw);
    if (batch.length >= HASH_BATCH) {
      send();
      await drain(HASH_BATCHES);
    }
  }
  send();
  await drain(0);
  await Promise.all(pending);
  if (failed) throw failed;
  recycle(undefined);
  progress(size - last);
  stats.apparent += size;
  return whole ? { size, sha256: whole.digest('hex'), chunks } : { size, chunks };
}

/** Chunks, compresses, hashes and signs an image with its kernel and initrd. */
export async function createPackage(opts: CreatePackageOptions): Promise<CreatedPackage> {
  const level = opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL;
  const stats: PackageStats = { chunks: 0, newChunks: 0, apparent: 0, stored: 0, compressed: 0, newCompressed: 0 };
  const staging = 'tarPath' in opts.out ? await mkdtemp(join(dirname(opts.out.tarPath), '.loopship-pkg-')) : undefined;
  const store = new ChunkStore(staging ?? (opts.out as { repoDir: string }).repoDir);
  let pool: StorePool | undefined;
  try {
    const files = [opts.imagePath, opts.kernelPath, ...(opts.initrdPath ? [opts.initrdPath] : [])];
    const total = (await Promise.all(files.map((f) => stat(f)))).reduce((a, s) => a + s.size, 0);
    let done = 0;
    const progress = (n: number) => {
      done += n;
      opts.onProgress?.(done, total);
    };
    const stored = new Map<string, Promise<Stored>>();
    const threads = opts.threads ?? Math.min(4, availableParallelism());
    const workers = threads > 1 ? new StorePool(threads) : undefined;
    pool = workers;
    const storeNew = workers
      ? (sha: string, raw: Uint8Array) => workers.store(raw, level, store.pathOf(sha))
      : async (sha: string, raw: Uint8Array) => {
          const compressed = compressChunk(raw, level);
          return { csize: compressed.length, isNew: await store.put(sha, compressed, { fsync: false }) };
        };
    const readBuffers = new SharedReadBuffers();
    const chunk = (path: string, chunking: ChunkerOptions) => chunkInto(path, chunking, store, stats, stored, storeNew, progress, workers, readBuffers);
    const image = await chunk(opts.imagePath, opts.chunking ?? IMAGE_CHUNKING);
    const kernel = await chunk(opts.kernelPath, FILE_CHUNKING);
    const initrd = opts.initrdPath ? await chunk(opts.initrdPath, FILE_CHUNKING) : null;
    const candidate = { ...opts.manifest, image: { ...opts.manifest.image, ...image }, kernel, initrd };
    // Validate what we are about to sign: a builder bug must not produce a package no client accepts.
    const checked = ManifestSchema.safeParse(candidate);
    if (!checked.success) throw new MetadataError('METADATA_INVALID', `manifest would be invalid: ${describeIssues(checked.error.issues)}`, { where: 'manifest' });
    const manifest = checked.data;
    const manifestBytes = serialize(manifest);
    const signature = await signDetached(manifestBytes, [opts.publisherKey]);
    if (staging && 'tarPath' in opts.out) {
      await writePackageTar(opts.out.tarPath, manifest, manifestBytes, signature, store);
    }
    return { manifest, manifestBytes, signature, stats };
  } finally {
    await pool?.close();
    if (staging) await rm(staging, { recursive: true, force: true });
  }
}

/** Every distinct chunk a manifest names, in order of first appearance. */
export function manifestChunks(manifest: Manifest): Chunk[] {
  const seen = new Set<string>();
  const out: Chunk[] = [];
  for (const blob of [manifest.image, manifest.kernel, manifest.initrd]) {
    for (const c of blob?.chunks ?? []) {
      if (!seen.has(c.sha256)) {
        seen.add(c.sha256);
        out.push(c);
      }
    }
  }
  return out;
}

/** Streams a package tar from a chunk store (no whole-file buffering). */
export async function writePackageTar(tarPath: string, manifest: Manifest, manifestBytes: Buffer, signature: string, store: ChunkStore): Promise<void> {
  const pack = tar.pack();
  const header = (name: string, size: number) => ({ name, size, mode: 0o644, mtime: new Date(0), uid: 0, gid: 0, uname: 'root', gname: 'root' });
  const done = pipeline(pack, createWriteStream(tarPath));
  const put = (name: string, data: Buffer) => new Promise<void>((res, rej) => pack.entry(header(name, data.length), data, (e) => (e ? rej(e) : res())));
  await put(MANIFEST_ENTRY, manifestBytes);
  await put(SIGNATURE_ENTRY, Buffer.from(signature));
  for (const c of manifestChunks(manifest)) {
    const p = store.pathOf(c.sha256);
    const size = (await stat(p)).size;
    await new Promise<void>((res, rej) => {
      const entry = pack.entry(header(chunkPath(c.sha256), size), (e) => (e ? rej(e) : res()));
      createReadStream(p).on('error', rej).pipe(entry);
    });
  }
  pack.finalize();
  await done;
}

export interface ReadPackageOptions {
  /** the receiver's trusted root: whose publisher keys may sign the manifest */
  root: Root;
  /** where that root is kept (for error messages) */
  rootWhere?: string;
  /** called with each verified chunk, in tar order */
  onChunk: (sha256: string, compressed: Buffer) => Promise<void>;
  /** chunks the package may leave out because the receiver has them already */
  haveChunk?: (sha256: string) => Promise<boolean>;
  /** a name for error messages, e.g. the file or "upload" */
  where?: string;
  /** the highest index version the receiver has seen (checked when the package carries an index) */
  lastIndexVersion?: number;
  now?: () => Date;
}

export interface ReadPackageResult {
  manifest: Manifest;
  manifestBytes: Buffer;
  signature: string;
  manifestSha256: string;
  /** the receiver's root, advanced through any newer roots the package carried */
  root: Root;
  /** newer root versions the package carried, verified, in order */
  roots: { root: Root; bytes: Buffer; signature: string }[];
  /** the signed index the package carried, verified, naming this manifest */
  index?: { index: Index; bytes: Buffer; signature: string };
}

async function readEntry(stream: AsyncIterable<unknown>, max: number, where: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const part of stream) {
    n += (part as Buffer).length;
    if (n > max) throw new PackageError('PACKAGE_INVALID', `entry is larger than ${max} bytes`, { where });
    parts.push(part as Buffer);
  }
  return Buffer.concat(parts);
}

/**
 * Reads and verifies a package tar while streaming: the manifest signature is checked
 * before any chunk is accepted; every chunk must be named by the manifest, bounded,
 * and hash-correct; links, devices, absolute paths and traversal are refused.
 *
 * An exported package may start with signed metadata for offline receivers: newer
 * roots (`root/<N>.json` + `.asc`, ascending) and `index.json` + `.asc`. Roots are
 * accepted only through the chain from the receiver's root; the index must verify,
 * not be older than what the receiver saw, and name this very manifest.
 */
export async function readPackage(input: NodeJS.ReadableStream, opts: ReadPackageOptions): Promise<ReadPackageResult> {
  const where = opts.where ?? 'package';
  const now = opts.now ?? (() => new Date());
  const extract = tar.extract();
  let root = opts.root;
  const roots: ReadPackageResult['roots'] = [];
  // once the roots are walked (the first index or manifest entry), the root trust ends on must be in force
  let rootChecked = false;
  const ensureRootInForce = () => {
    if (rootChecked) return;
    checkRootInForce(root, now(), roots.length ? `${where}: root/${root.version}.json` : opts.rootWhere ?? `trusted root version ${root.version}`);
    rootChecked = true;
  };
  let pendingRoot: { bytes: Buffer; name: string } | undefined;
  let pendingIndex: Buffer | undefined;
  let index: ReadPackageResult['index'];
  let manifestBytes: Buffer | undefined;
  let signature: string | undefined;
  let manifest: Manifest | undefined;
  let expected = new Map<string, Chunk>();
  const received = new Set<string>();
  const src = input as Readable;
  src.on('error', (e) => extract.destroy(e));
  src.pipe(extract);
  try {
    let count = 0;
    for await (const entry of extract) {
      count++;
      const h = entry.header;
      const name = h.name;
      // entry names are read before anything is verified: into messages as printable text
      const at = `${where}: ${printable(name)}`;
      if (h.type !== 'file') throw new PackageError('PACKAGE_INVALID', `entry of type ${h.type} is not allowed (only regular files)`, { where: at });
      if (name.startsWith('/') || name.split('/').includes('..')) throw new PackageError('PACKAGE_INVALID', 'absolute or parent-relative path', { where: at });
      const expectSig = pendingRoot ? `${pendingRoot.name}.asc` : pendingIndex ? 'index.json.asc' : manifestBytes && !signature ? SIGNATURE_ENTRY : undefined;
      if (expectSig && name !== expectSig) throw new PackageError('PACKAGE_INVALID', `expected ${expectSig} next`, { where: at });
      if (pendingRoot) {
        const sig = (await readEntry(entry, LIMITS.signatureBytes, at)).toString('utf8');
        const rw = `${where}: ${pendingRoot.name}`;
        const next = parseMetadata('root', pendingRoot.bytes, rw);
        if (next.version <= root.version) {
          // Already trusted (or older): skip, but never go backwards.
        } else {
          if (next.version !== root.version + 1) throw new PackageError('ROOT_CHAIN', `root version ${next.version} follows ${root.version}: a link is missing`, { where: rw });
          await verifyRootTransition(root, next, pendingRoot.bytes, sig, rw, { now: now() });
          roots.push({ root: next, bytes: pendingRoot.bytes, signature: sig });
          root = next;
        }
        pendingRoot = undefined;
      } else if (pendingIndex) {
        const sig = (await readEntry(entry, LIMITS.signatureBytes, at)).toString('utf8');
        const iw = `${where}: index.json`;
        ensureRootInForce();
        const idx = await verifyIndex(pendingIndex, sig, root, { now: now(), lastVersion: opts.lastIndexVersion, where: iw });
        index = { index: idx, bytes: pendingIndex, signature: sig };
        pendingIndex = undefined;
      } else if (!manifestBytes && /^root\/[1-9][0-9]{0,8}\.json$/.test(name) && !index) {
        pendingRoot = { bytes: await readEntry(entry, LIMITS.rootBytes, at), name };
      } else if (!manifestBytes && name === 'index.json' && !index) {
        pendingIndex = await readEntry(entry, LIMITS.indexBytes, at);
      } else if (!manifestBytes) {
        if (name !== MANIFEST_ENTRY) throw new PackageError('PACKAGE_INVALID', `expected ${MANIFEST_ENTRY} (after optional root/ and index.json entries)`, { where: at });
        manifestBytes = await readEntry(entry, LIMITS.manifestBytes, at);
      } else if (!signature) {
        signature = (await readEntry(entry, LIMITS.signatureBytes, at)).toString('utf8');
        const mw = `${where}: ${MANIFEST_ENTRY}`;
        // the same decision as an update over the network: the root trust ends on must be in force
        ensureRootInForce();
        await verifyManifestSignature(manifestBytes, signature, root, mw, { now: now() });
        manifest = parseMetadata('manifest', manifestBytes, mw);
        if (index) {
          const entryOf = index.index.images[manifest.name]?.versions[manifest.version];
          if (!entryOf || entryOf.manifest !== sha256Hex(manifestBytes)) {
            throw new VerificationError('MIX_AND_MATCH', `the package's index does not list this manifest for ${manifest.name} ${manifest.version}`, { where: mw });
          }
        }
        expected = new Map(manifestChunks(manifest).map((c) => [c.sha256, c]));
      } else {
        const m = /^chunks\/([0-9a-f]{2})\/(\1[0-9a-f]{62})$/.exec(name);
        if (!m) throw new PackageError('PACKAGE_INVALID', 'unexpected entry (only chunks/<aa>/<sha256> may follow the manifest)', { where: at });
        const sha = m[2];
        const c = expected.get(sha);
        if (!c) throw new PackageError('PACKAGE_INVALID', 'chunk is not named by the manifest', { where: at });
        if (received.has(sha)) throw new PackageError('PACKAGE_INVALID', 'duplicate chunk', { where: at });
        const compressed = await readEntry(entry, zstdCompressBound(c.length), at);
        decodeChunk(compressed, c, at);
        received.add(sha);
        await opts.onChunk(sha, compressed);
      }
    }
    if (!manifest) throw new PackageError('PACKAGE_INVALID', count === 0 ? 'empty or not a tar archive' : manifestBytes ? 'no signature entry' : `no ${MANIFEST_ENTRY}`, { where });
    for (const sha of expected.keys()) {
      if (!received.has(sha) && !(await opts.haveChunk?.(sha))) {
        throw new PackageError('PACKAGE_INVALID', `chunk ${sha} named by the manifest is missing`, { where });
      }
    }
    return { manifest, manifestBytes: manifestBytes!, signature: signature!, manifestSha256: sha256Hex(manifestBytes!), root, roots, index };
  } catch (err) {
    extract.destroy();
    src.unpipe?.(extract);
    if (err instanceof LoopshipError) throw err;
    // tar-stream's own errors (bad header, truncated archive) and stream errors
    throw new PackageError('PACKAGE_INVALID', `malformed tar (${(err as Error).message})`, { where, cause: err });
  }
}

export { DEFAULT_ZSTD_LEVEL };
