// The repository writer: the only code that changes a repository tree. Order is what
// makes it safe for readers (DESIGN.md "Publishing is atomic"): content-addressed
// files first (fsync), the versioned index copy next, index.json last by rename.
// Verification happens on a staging copy outside the served tree, so a rejected
// package leaves the repository exactly as it was. One lock serialises writers
// across processes, a promise chain within one.
import { closeSync, fdatasync, fsync, openSync, readFileSync, writeSync } from 'node:fs';
import { mkdir, readFile, rename, rm, readdir, stat, mkdtemp } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join, dirname } from 'node:path';
import lockfile from 'proper-lockfile';
import { signDetached, type SigningKey } from '../keys/pgp.js';
import { signingKeyFingerprint } from '../keys/signer.js';
import { ChunkStore } from './chunkstore.js';
import { writeFileAtomic, fsyncDir } from '../base/atomic.js';
import { decodeChunk, sha256Hex } from './codec.js';
import { LoopshipError, VerificationError, SignatureError, UsageError } from './errors.js';
import { LIMITS } from './limits.js';
import { readPackage } from './package.js';
import { parallel } from './parallel.js';
import { INDEX_FILE, ROOT_FILE, chunkPath, indexHistoryPath, manifestPath, packPath, rootHistoryPath, sigPath } from './paths.js';
import { packLayout, writePack } from './pack.js';
import { parseMetadata, serialize, SPEC_VERSION, channelName, type Index, type IndexImage, type Manifest, type Root } from './schema.js';
import { dropRollout } from './rollout.js';
import { verifyManifestSignature, verifyRootTransition, verifyRootSignature, verifyRole, checkSameRepository } from './trust.js';

export const WRITER_DIR = '.loopship';
const fdatasyncAsync = promisify(fdatasync);
const fsyncAsync = promisify(fsync);
const DAY_MS = 86_400_000;

export interface RepositoryWriterOptions {
  /** keys of the index role (enough of them to meet its threshold): key files or gpg-agent signers (keys/signer.ts) */
  indexKeys: SigningKey[];
  now?: () => Date;
  /** how long a freshly signed index stays valid */
  expiresDays?: number;
  /** write packs/<manifest>.pack for each new version (default true) */
  packs?: boolean;
}

export interface PublishResult {
  name: string;
  version: string;
  arch: string;
  manifestSha256: string;
  indexVersion: number;
  newChunks: number;
  reusedChunks: number;
  /** true when exactly this manifest was already published */
  unchanged: boolean;
  /** a pack file was written for this version */
  pack?: boolean;
}

const inProcess = new Map<string, Promise<unknown>>();

export class RepositoryWriter {
  private readonly now: () => Date;
  private readonly expiresDays: number;

  constructor(
    readonly repoDir: string,
    private readonly opts: RepositoryWriterOptions,
  ) {
    this.now = opts.now ?? (() => new Date());
    this.expiresDays = opts.expiresDays ?? 30;
    // an index that expires as it is signed would fail every host (the CLI refuses it first)
    if (!(this.expiresDays > 0)) throw new UsageError(`expiresDays must be positive, got ${this.expiresDays}`);
  }

  /** Creates an empty repository: root version 1 (already signed by the root keys) and an empty index. */
  static async init(repoDir: string, root: { bytes: Buffer; signature: string }, opts: RepositoryWriterOptions): Promise<RepositoryWriter> {
    const parsed = parseMetadata('root', root.bytes, 'new root');
    if (parsed.version !== 1) throw new LoopshipError('USAGE', 'a new repository starts at root version 1');
    try {
      await stat(join(repoDir, ROOT_FILE));
      throw new LoopshipError('CONFLICT', 'already a repository (root.json exists)', { where: repoDir });
    } catch (err) {
      if (err instanceof LoopshipError) throw err;
    }
    await verifyRootSignature(root.bytes, root.signature, parsed, 'new root');
    const writer = new RepositoryWriter(repoDir, opts);
    writer.assertIndexKeysOf(parsed);
    await mkdir(join(repoDir, WRITER_DIR), { recursive: true });
    await writer.locked(async () => {
      await writer.writeFile(rootHistoryPath(1), root.bytes);
      await writer.writeFile(sigPath(rootHistoryPath(1)), root.signature);
      await writer.writeFile(sigPath(ROOT_FILE), root.signature);
      await writer.writeFile(ROOT_FILE, root.bytes);
      const index: Index = { type: 'loopship/index', spec_version: SPEC_VERSION, version: 1, repository: parsed.repository, expires: writer.expiry(), root_version: 1, images: {} };
      await writer.writeIndex(index, parsed);
    });
    return writer;
  }

  async readRoot(): Promise<Root> {
    const where = join(this.repoDir, ROOT_FILE);
    return parseMetadata('root', await this.readBounded(ROOT_FILE, LIMITS.rootBytes), where);
  }

  async readIndex(): Promise<Index> {
    return parseMetadata('index', await this.readBounded(INDEX_FILE, LIMITS.indexBytes), join(this.repoDir, INDEX_FILE));
  }

  /**
   * Publishes a package tar (streamed). Chunks are verified into a staging directory;
   * nothing enters the tree unless the whole package verified.
   */
  async addPackage(tar: NodeJS.ReadableStream, opts: { where?: string; channel?: string } = {}): Promise<PublishResult> {
    const root = await this.readRoot();
    this.assertIndexKeysOf(root);
    const repoStore = new ChunkStore(this.repoDir);
    await mkdir(join(this.repoDir, WRITER_DIR), { recursive: true });
    // the pid in the name lets a later writer tell a dead upload's leftovers from a live one's
    const stagingDir = await mkdtemp(join(this.repoDir, WRITER_DIR, `staging-${process.pid}-`));
    const staging = new ChunkStore(stagingDir);
    let reused = 0;
    try {
      const pkg = await readPackage(tar, {
        root,
        where: opts.where ?? 'package',
        haveChunk: (sha) => repoStore.has(sha),
        onChunk: async (sha, compressed) => {
          if (await repoStore.has(sha)) reused++;
          else await staging.put(sha, compressed);
        },
      });
      return await this.locked(async () => {
        const staged = await listStaged(stagingDir);
        for (const sha of staged) {
          const dest = repoStore.pathOf(sha);
          await mkdir(dirname(dest), { recursive: true });
          await rename(staging.pathOf(sha), dest);
        }
        await Promise.all([...new Set(staged.map((s) => dirname(repoStore.pathOf(s))))].map(fsyncDir));
        return this.commitManifest(pkg.manifest, pkg.manifestBytes, pkg.signature, root, { newChunks: staged.length, reused, channel: opts.channel });
      });
    } finally {
      await rm(stagingDir, { recursive: true, force: true });
    }
  }

  /**
   * Publishes a manifest whose chunks were already written into this repository's
   * chunk store (the builder's --repo output). Every chunk is re-read and verified.
   *
   * One pass over the chunks: each frame is read once, verified, synced and written to
   * its place in the version's pack (offsets are running sums of csize, so frames land
   * in order whatever order they are read in). The pack is built in a staging directory
   * outside the served tree and moved into packs/ only after every chunk verified and
   * the chunks and their directories are synced; the order chunks, pack, manifest, index
   * is unchanged. (Before, every frame was read twice: once to verify, once by writePack.)
   */
  async addManifest(manifestBytes: Buffer, signature: string, opts: { channel?: string } = {}): Promise<PublishResult> {
    const root = await this.readRoot();
    this.assertIndexKeysOf(root);
    await verifyManifestSignature(manifestBytes, signature, root, 'manifest');
    const manifest = parseMetadata('manifest', manifestBytes, 'manifest');
    const manifestSha = sha256Hex(manifestBytes);
    const store = new ChunkStore(this.repoDir);
    // each distinct chunk with its frame's offset in the pack (running sums of csize)
    const { entries } = packLayout(manifest);
    const wantPack = this.opts.packs !== false && !(await stat(join(this.repoDir, packPath(manifestSha))).then(() => true, () => false));
    await mkdir(join(this.repoDir, WRITER_DIR), { recursive: true });
    // the pid in the name: only a dead writer's leftovers are swept (sweepLeftovers)
    const stagingDir = wantPack ? await mkdtemp(join(this.repoDir, WRITER_DIR, `staging-${process.pid}-`)) : undefined;
    const packTmp = stagingDir && join(stagingDir, 'pack');
    const packFd = packTmp ? openSync(packTmp, 'wx', 0o644) : undefined;
    let packFdOpen = packFd !== undefined;
    // a frame whose size differs from the manifest's csize: the layout would be wrong, so
    // no pack (clients do fine with per-chunk files alone), as writePack decides
    let packOk = wantPack;
    try {
      // Reads and decoding are synchronous (the files were just written: page cache, and a
      // promise per read cost more than the read); the datasyncs are not, several at a time:
      // each waits for the disk, and the journal commits concurrent syncs together. Nothing
      // below names a chunk before all of them are verified and synced.
      await parallel(entries, 8, async ({ chunk: c, offset }) => {
        const where = join(this.repoDir, chunkPath(c.sha256));
        let fd: number;
        try {
          fd = openSync(store.pathOf(c.sha256), 'r');
        } catch (cause) {
          throw new VerificationError('PACKAGE_INVALID', 'chunk named by the manifest is missing', { where, cause });
        }
        try {
          const frame = readFileSync(fd);
          decodeChunk(frame, c, where);
          if (packFd !== undefined && packOk) {
            if (frame.length !== c.csize) packOk = false;
            else for (let done = 0; done < frame.length; ) done += writeSync(packFd, frame, done, frame.length - done, offset + done);
          }
          // the builder writes chunks without syncing each; they must be durable before an
          // index names them (a clean file's datasync is cheap)
          await fdatasyncAsync(fd);
        } finally {
          closeSync(fd);
        }
      });
      // and their names: the chunk directories (at most 256)
      await Promise.all([...new Set(entries.map((e) => dirname(store.pathOf(e.chunk.sha256))))].map(fsyncDir));
      if (packFd !== undefined) {
        if (packOk) await fsyncAsync(packFd);
        closeSync(packFd);
        packFdOpen = false;
      }
      const prepared = packTmp && packOk ? packTmp : wantPack ? null : undefined;
      return await this.locked(() => this.commitManifest(manifest, manifestBytes, signature, root, { newChunks: 0, reused: 0, channel: opts.channel, pack: prepared }));
    } finally {
      if (packFdOpen) closeSync(packFd!);
      if (stagingDir) await rm(stagingDir, { recursive: true, force: true });
    }
  }

  /**
   * Throws unless the index keys this writer holds are enough of `root`'s index keys to sign:
   * checked before anything is written, so a writer given another key store's key changes
   * nothing (it used to move chunks and write the manifest, then fail at the index).
   */
  assertIndexKeysOf(root: Root, where = 'new index'): void {
    const mine = new Set(this.opts.indexKeys.map(signingKeyFingerprint));
    const listed = root.roles.index.keys.filter((k) => mine.has(k));
    if (listed.length < root.roles.index.threshold) {
      const held = [...mine].join(', ') || 'none';
      throw new SignatureError(listed.length ? 'SIGNATURE_THRESHOLD' : 'UNKNOWN_KEY',
        `the index keys this writer holds (${held}) are ${listed.length} of root version ${root.version}'s index keys, threshold ${root.roles.index.threshold}: nothing was written`, { where });
    }
  }

  /** Points a channel at a published version; the index is re-signed. */
  async promote(name: string, channel: string, version: string): Promise<{ indexVersion: number }> {
    const ch = channelName.safeParse(channel);
    if (!ch.success) throw new LoopshipError('USAGE', `invalid channel name ${JSON.stringify(channel)}: expected lowercase letters, digits, _ or -`);
    const { indexVersion } = await this.changeImage(name, (image) => {
      if (!image.versions[version]) throw new LoopshipError('NOT_FOUND', `image ${name} has no version ${version}`);
      image.channels[channel] = version;
      dropRollout(image, channel); // moved by hand: the one-step form ends a rollout
    });
    return { indexVersion };
  }

  /**
   * Changes one image's entry (a rollout's move, format/rollout.ts; a host's hold, format/holds.ts),
   * given the entry and the writer's clock, and re-signs the index; nothing is written when
   * `change` throws.
   */
  async changeImage<T>(name: string, change: (image: IndexImage, now: Date) => T): Promise<{ indexVersion: number; result: T }> {
    return this.locked(async () => {
      const root = await this.readRoot();
      this.assertIndexKeysOf(root);
      const index = await this.readIndex();
      const image = index.images[name];
      if (!image) throw new LoopshipError('NOT_FOUND', `no image named ${name}`);
      const result = change(image, this.now());
      return { indexVersion: await this.writeIndex(this.bump(index, root), root), result };
    });
  }

  /** The index as it stands (unverified: the writer's own tree). */
  async currentIndex(): Promise<Index> {
    return this.readIndex();
  }

  /** Re-signs the index with a fresh expiry (run periodically, e.g. daily). */
  async resign(): Promise<{ indexVersion: number; expires: string }> {
    return this.locked(async () => {
      const root = await this.readRoot();
      this.assertIndexKeysOf(root);
      const index = this.bump(await this.readIndex(), root);
      await this.writeIndex(index, root);
      return { indexVersion: index.version, expires: index.expires };
    });
  }

  /** Appends a new root version (rotation). It must verify against the current root. */
  async addRoot(bytes: Buffer, signature: string): Promise<Root> {
    return this.locked(async () => {
      const current = await this.readRoot();
      const next = parseMetadata('root', bytes, 'new root');
      if (next.version !== current.version + 1) throw new LoopshipError('CONFLICT', `new root must be version ${current.version + 1}, got ${next.version}`);
      await verifyRootTransition(current, next, bytes, signature, 'new root');
      this.assertIndexKeysOf(next); // the index is re-signed under the new root: before its files are written
      await this.writeFile(rootHistoryPath(next.version), bytes);
      await this.writeFile(sigPath(rootHistoryPath(next.version)), signature);
      await this.writeFile(sigPath(ROOT_FILE), signature);
      await this.writeFile(ROOT_FILE, bytes);
      // The index must be signed under the new root (its index keys may have changed).
      await this.writeIndex(this.bump(await this.readIndex(), next), next);
      return next;
    });
  }

  // ---------- internals ----------

  private async commitManifest(
    manifest: Manifest,
    manifestBytes: Buffer,
    signature: string,
    root: Root,
    info: { newChunks: number; reused: number; channel?: string; pack?: string | null },
  ): Promise<PublishResult> {
    const sha = sha256Hex(manifestBytes);
    const index = await this.readIndex();
    const image = (index.images[manifest.name] ??= { versions: {}, channels: {} });
    const existing = image.versions[manifest.version];
    const result = { name: manifest.name, version: manifest.version, arch: manifest.arch, manifestSha256: sha, newChunks: info.newChunks, reusedChunks: info.reused };
    if (existing) {
      if (existing.manifest !== sha) {
        throw new LoopshipError('CONFLICT', `${manifest.name} ${manifest.version} is already published with a different manifest (${existing.manifest}); versions are immutable, publish a new version`);
      }
      if (!info.channel || image.channels[info.channel] === manifest.version) return { ...result, indexVersion: index.version, unchanged: true };
    }
    // the pack before the manifest and the index: a reader never sees a version whose pack is half-written
    const pack = this.opts.packs === false ? false : await this.ensurePack(manifest, sha, info.pack);
    await this.writeFile(manifestPath(sha), manifestBytes);
    await this.writeFile(sigPath(manifestPath(sha)), signature);
    image.versions[manifest.version] = { manifest: sha, size: manifestBytes.length, arch: manifest.arch, published: existing?.published ?? this.now().toISOString() };
    if (info.channel) {
      if (!channelName.safeParse(info.channel).success) throw new LoopshipError('USAGE', `invalid channel name ${JSON.stringify(info.channel)}`);
      image.channels[info.channel] = manifest.version;
      dropRollout(image, info.channel);
    }
    const indexVersion = await this.writeIndex(this.bump(index, root), root);
    return { ...result, indexVersion, unchanged: false, pack };
  }

  /**
   * Writes the pack of a version whose chunks are all in the tree, unless it exists.
   * `prepared`: a pack already written and synced from the verified chunks (moved into
   * place), or null when those chunks showed it cannot be written (a frame's size is not
   * the manifest's csize).
   */
  private async ensurePack(manifest: Manifest, sha: string, prepared?: string | null): Promise<boolean> {
    const dest = join(this.repoDir, packPath(sha));
    if (await stat(dest).then(() => true, () => false)) return true;
    if (prepared === null) return false;
    let written: boolean;
    if (prepared !== undefined) {
      await mkdir(dirname(dest), { recursive: true });
      await rename(prepared, dest);
      written = true;
    } else {
      const store = new ChunkStore(this.repoDir);
      written = await writePack(dest, manifest, (c) => store.pathOf(c));
    }
    if (written) await fsyncDir(dirname(dest));
    return written;
  }

  /**
   * Writes the packs missing for published versions (repositories from before packs, or
   * mirrors, which rebuild packs from the chunks they verified rather than download them).
   */
  async writeMissingPacks(): Promise<{ written: string[]; skipped: string[] }> {
    return this.locked(async () => {
      const index = await this.readIndex();
      const written: string[] = [];
      const skipped: string[] = [];
      for (const [name, image] of Object.entries(index.images)) {
        for (const [version, entry] of Object.entries(image.versions)) {
          if (await stat(join(this.repoDir, packPath(entry.manifest))).then(() => true, () => false)) continue;
          const where = join(this.repoDir, manifestPath(entry.manifest));
          const manifest = parseMetadata('manifest', await this.readBounded(manifestPath(entry.manifest), LIMITS.manifestBytes), where);
          if (await this.ensurePack(manifest, entry.manifest)) written.push(`${name} ${version}`);
          else skipped.push(`${name} ${version}`);
        }
      }
      return { written, skipped };
    });
  }

  private bump(index: Index, root: Root): Index {
    return { ...index, version: index.version + 1, repository: root.repository, expires: this.expiry(), root_version: root.version };
  }

  private expiry(): string {
    return new Date(this.now().getTime() + this.expiresDays * DAY_MS).toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  private async writeIndex(index: Index, root: Root): Promise<number> {
    const bytes = serialize(index);
    parseMetadata('index', bytes, 'new index'); // never sign something clients would refuse
    checkSameRepository(root.repository, index.repository, `index version ${index.version}`, 'new index');
    const signature = await signDetached(bytes, this.opts.indexKeys);
    await verifyRole(bytes, signature, root, 'index', 'new index'); // the keys we hold are the root's index keys
    await this.writeFile(indexHistoryPath(index.version), bytes);
    await this.writeFile(sigPath(indexHistoryPath(index.version)), signature);
    await this.writeFile(sigPath(INDEX_FILE), signature);
    await this.writeFile(INDEX_FILE, bytes);
    await fsyncDir(this.repoDir);
    return index.version;
  }

  private async writeFile(rel: string, data: Uint8Array | string): Promise<void> {
    await writeFileAtomic(join(this.repoDir, rel), data, { mkdir: true });
  }

  private async readBounded(rel: string, max: number): Promise<Buffer> {
    const p = join(this.repoDir, rel);
    let size: number;
    try {
      size = (await stat(p)).size;
    } catch (cause) {
      throw new LoopshipError('NOT_FOUND', `not a loopship repository (${rel} missing); create one with 'loopship repo init'`, { where: this.repoDir, cause });
    }
    if (size > max) throw new LoopshipError('METADATA_TOO_LARGE', `${size} bytes exceeds ${max}`, { where: p });
    return readFile(p);
  }

  /**
   * Removes what a writer killed mid-publish left (called holding the lock): temp files of
   * metadata and packs (written only under the lock, so any found now are dead) and upload
   * staging dirs of processes no longer running on this host. Chunk dirs are not scanned
   * (a stray chunk temp file is never served and costs only its size).
   */
  private async sweepLeftovers(): Promise<void> {
    for (const dir of ['', 'index', 'root', 'manifests', 'packs']) {
      const names = await readdir(join(this.repoDir, dir)).catch(() => [] as string[]);
      for (const n of names) if (/\.tmp-\d+-[0-9a-f]+$/.test(n)) await rm(join(this.repoDir, dir, n), { force: true });
    }
    for (const n of await readdir(join(this.repoDir, WRITER_DIR)).catch(() => [] as string[])) {
      const m = /^staging-(\d+)-/.exec(n);
      if (m && !isAlive(Number(m[1]))) await rm(join(this.repoDir, WRITER_DIR, n), { recursive: true, force: true });
    }
  }

  /** Runs fn holding the repository lock (cross-process) and the in-process queue. */
  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    const key = this.repoDir;
    const prev = inProcess.get(key) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(async () => {
      await mkdir(join(this.repoDir, WRITER_DIR), { recursive: true });
      let release: () => Promise<void>;
      try {
        release = await lockfile.lock(this.repoDir, {
          lockfilePath: join(this.repoDir, WRITER_DIR, 'lock'),
          stale: 30_000,
          retries: { retries: 120, minTimeout: 100, maxTimeout: 1000 },
        });
      } catch (cause) {
        throw new LoopshipError('LOCKED', 'repository is locked by another writer', { where: this.repoDir, cause });
      }
      try {
        await this.sweepLeftovers();
        return await fn();
      } finally {
        await release();
      }
    });
    inProcess.set(key, run);
    try {
      return await run;
    } finally {
      if (inProcess.get(key) === run) inProcess.delete(key);
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function listStaged(stagingDir: string): Promise<string[]> {
  const out: string[] = [];
  let dirs: string[];
  try {
    dirs = await readdir(join(stagingDir, 'chunks'));
  } catch {
    return out;
  }
  for (const d of dirs.sort()) {
    for (const f of (await readdir(join(stagingDir, 'chunks', d))).sort()) if (/^[0-9a-f]{64}$/.test(f)) out.push(f);
  }
  return out;
}
