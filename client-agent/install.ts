// The install engine: turns a verified manifest into a complete version directory.
//  - chunks already on the host (any installed version of any appliance: same sha256)
//    are copied from there and re-hashed, the rest fetched in parallel (bounded);
//  - every chunk is verified (by the fetcher, or re-hashed for a seed) before a byte of
//    it is written; writes are positional into a staging file truncated to the image's
//    apparent size, and all-zero blocks are never written, so images stay sparse;
//  - completed chunks are journaled only after their data is fsync'd, so a kill -9
//    resumes where it stopped; the staging dir is renamed into place only when complete;
//  - a resumed staging dir is trusted only as far as it holds files we made: a planted
//    symlink, hard link or fifo in it is an error (fsutil's safe opens), never written.
import { createHash } from 'node:crypto';
import { mkdir, rename, rm, rmdir, statfs, stat, unlink, lstat, type FileHandle } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import type { Chunk, Manifest, PackEntry, PackRange } from '../format/index.js';
import { parseMetadata, packLayout, planPackRanges } from '../format/index.js';
import { MetadataError, LoopshipError, FetchError, VerificationError } from '../format/index.js';
import { DecodePool } from './decode-pool.js';
import { writeSparseSync } from './sparse.js';
import type { StateDir } from './state.js';
import {
  writeFileAtomic, fsyncDir, ioError, pathExists, assertOwnDir, assertOwnDirsBelow, openOwnFile, createOwnFile, openOrCreateOwnFile,
  readOwnFile, readOwnFileOrNull, appendOwnFile,
} from './fsutil.js';
import { pauseAt } from './pause.js';

/** What the install engine needs from the verifier (the lead's RepoClient has this shape). */
export interface ChunkSource {
  /** Fetches, bounds, decompresses and sha256-verifies one chunk: returns its raw bytes. */
  chunk(c: Chunk, where?: string): Promise<Buffer>;
  /**
   * Optional bulk path (RepoClient has it): the verified chunks of one run of the version's
   * pack, handed to `onChunk` in pack order. Throws when the pack is missing or bad; chunks
   * delivered before that stay delivered.
   */
  packChunks?(manifestSha256: string, range: PackRange, onChunk: (c: Chunk, raw: Buffer) => Promise<void>): Promise<void>;
  /** packChunks without decoding (RepoClient has it): the engine decodes and verifies on worker threads */
  packFrames?(manifestSha256: string, range: PackRange, onFrame: (e: PackEntry, frame: Buffer, where: string) => Promise<void>): Promise<void>;
}

/** A counting semaphore: bounds the frames waiting for a decode worker. */
class Semaphore {
  private waiters: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiters.push(r));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }
}

export interface VerifiedManifest {
  manifest: Manifest;
  sha256: string;
  bytes: Buffer;
  signature: string;
}

export interface InstallProgress {
  doneBytes: number;
  totalBytes: number;
  fetchedBytes: number;
  reusedBytes: number;
}

export interface InstallResult {
  name: string;
  version: string;
  manifestSha256: string;
  alreadyInstalled: boolean;
  /** unique chunks in the version */
  chunks: number;
  fetchedChunks: number;
  reusedChunks: number;
  /** chunks found complete in a resumed staging dir */
  resumedChunks: number;
  /** compressed bytes downloaded */
  fetchedBytes: number;
  /** raw bytes copied from versions already on the host */
  reusedBytes: number;
  /** compressed size of every unique chunk: what a cold install would fetch */
  fullCompressedBytes: number;
  /** HTTP Range requests made on the version's pack */
  rangeRequests: number;
  /** pack ranges that failed and were fetched chunk by chunk instead */
  packFallbacks: number;
  seconds: number;
}

/**
 * Files of a version directory, one per blob of the manifest. The image is kept exactly
 * as verified (verified.img): it seeds later installs and is what `verify` checks. The
 * guest boots a working copy (disk.img) that configure and the guest itself change.
 */
export const BLOB_FILES = { image: 'verified.img', kernel: 'kernel', initrd: 'initrd' } as const;
export const BOOT_DISK = 'disk.img';
export type BlobName = keyof typeof BLOB_FILES;
const JOURNAL = 'done.log';

interface Target {
  file: BlobName;
  offset: number;
}
interface Work {
  chunk: Chunk;
  where: string;
  targets: Target[];
}

export function blobsOf(m: Manifest): [BlobName, Manifest['image'] | Manifest['kernel']][] {
  const out: [BlobName, Manifest['image'] | Manifest['kernel']][] = [['image', m.image], ['kernel', m.kernel]];
  if (m.initrd) out.push(['initrd', m.initrd]);
  return out;
}

/** Unique chunks of a manifest, each with every place its bytes go. */
export function planChunks(m: Manifest, label: string): Map<string, Work> {
  const work = new Map<string, Work>();
  for (const [blob, b] of blobsOf(m)) {
    b.chunks.forEach((c, i) => {
      const w = work.get(c.sha256);
      if (w) {
        if (w.chunk.length !== c.length) {
          throw new MetadataError('METADATA_INVALID', `chunk ${c.sha256} appears with two lengths (${w.chunk.length}, ${c.length})`, { where: `${label}: ${blob}.chunks.${i}` });
        }
        w.targets.push({ file: blob, offset: c.offset });
      } else {
        work.set(c.sha256, { chunk: c, where: `${label}: ${blob}.chunks.${i}`, targets: [{ file: blob, offset: c.offset }] });
      }
    });
  }
  return work;
}

/** Writes `data` at `position`, skipping all-zero blocks (they stay holes). */
export async function writeSparse(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  writeSparseSync(fh.fd, data, position);
}

async function readExactly(path: string, offset: number, length: number): Promise<Buffer | null> {
  let fh: FileHandle | undefined;
  try {
    fh = await openOwnFile(path, 'read');
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) return null;
      got += bytesRead;
    }
    return buf;
  } catch {
    return null;
  } finally {
    await fh?.close();
  }
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** sha256 -> where those bytes already are on this host (complete versions only). */
export async function seedIndex(state: StateDir, skip?: { name: string; version: string }): Promise<Map<string, { path: string; offset: number; length: number }>> {
  const seeds = new Map<string, { path: string; offset: number; length: number }>();
  for (const name of await state.applianceNames()) {
    // newest first: likeliest to share content with what comes next
    for (const version of (await state.installedVersions(name)).reverse()) {
      if (skip && skip.name === name && skip.version === version) continue;
      const dir = state.versionDir(name, version);
      let m: Manifest;
      try {
        m = parseMetadata('manifest', await readOwnFile(join(dir, 'manifest.json')), join(dir, 'manifest.json'));
      } catch {
        continue; // a damaged local manifest simply seeds nothing
      }
      for (const [blob, b] of blobsOf(m)) {
        for (const c of b.chunks) if (!seeds.has(c.sha256)) seeds.set(c.sha256, { path: join(dir, BLOB_FILES[blob]), offset: c.offset, length: c.length });
      }
    }
  }
  return seeds;
}

async function readJournal(path: string, manifestSha: string): Promise<Set<string>> {
  const done = new Set<string>();
  const bytes = await readOwnFileOrNull(path);
  if (!bytes) return done;
  const text = bytes.toString('utf8');
  const lines = text.split('\n');
  if (lines[0] !== `manifest ${manifestSha}`) return done;
  // a torn last line (crash mid-append) is simply not counted
  for (const l of lines.slice(1)) if (/^[0-9a-f]{64}$/.test(l)) done.add(l);
  return done;
}

export interface InstallOptions {
  state: StateDir;
  verified: VerifiedManifest;
  source: ChunkSource;
  concurrency?: number;
  onProgress?: (p: InstallProgress) => void;
  /** also write the boot disk (disk.img, the copy the guest boots) in the same pass */
  bootDisk?: boolean;
  /** decode worker threads for pack frames (default: up to 4, one per core; 0: decode on the main thread) */
  decodeWorkers?: number;
  /** the longest pack range one request asks for */
  packRangeBytes?: number;
  /** things worth a line in the log (a missing pack, a fallback) */
  onNotice?: (message: string) => void;
  /** journal at least this often (bytes written between fsyncs) */
  journalEveryBytes?: number;
  now?: () => number;
}

export async function installVersion(opts: InstallOptions): Promise<InstallResult> {
  const { state, verified, source } = opts;
  const now = opts.now ?? Date.now;
  const t0 = now();
  const m = verified.manifest;
  const label = `manifest ${m.name} ${m.version}`;
  const plan = planChunks(m, label);
  const concurrency = Math.max(1, opts.concurrency ?? 8);
  const fullCompressedBytes = [...plan.values()].reduce((s, w) => s + w.chunk.csize, 0);
  const result: InstallResult = {
    name: m.name, version: m.version, manifestSha256: verified.sha256, alreadyInstalled: false,
    chunks: plan.size, fetchedChunks: 0, reusedChunks: 0, resumedChunks: 0, fetchedBytes: 0, reusedBytes: 0, fullCompressedBytes, rangeRequests: 0, packFallbacks: 0, seconds: 0,
  };
  const finalDir = state.versionDir(m.name, m.version);
  const staging = state.stagingDir(m.name, m.version);
  // rm -r, mkdir -p and every open below would follow a directory planted as a symlink
  await assertOwnDirsBelow(state.root, staging);
  await assertOwnDirsBelow(state.root, finalDir);
  if (await pathExists(finalDir)) {
    const have = await readOwnFileOrNull(join(finalDir, 'manifest.json'));
    if (have && sha256(have) === verified.sha256) {
      // what a run killed right after the move left: the journal, the empty staging parent
      await unlink(join(finalDir, JOURNAL)).catch(() => {});
      await rmdir(dirname(state.stagingDir(m.name, m.version))).catch(() => {});
      return { ...result, alreadyInstalled: true };
    }
    throw new LoopshipError('IO', `a different build of ${m.name} ${m.version} is already installed; remove it first`, { where: finalDir });
  }

  const journalPath = join(staging, JOURNAL);
  const stagedManifest = await readOwnFileOrNull(join(staging, 'manifest.json'));
  const resuming = stagedManifest !== null && sha256(stagedManifest) === verified.sha256;
  if (!resuming) {
    await rm(staging, { recursive: true, force: true });
    await mkdir(staging, { recursive: true, mode: 0o700 });
    await writeFileAtomic(join(staging, 'manifest.json.asc'), verified.signature, { mode: 0o644 });
    await writeFileAtomic(join(staging, JOURNAL), `manifest ${verified.sha256}\n`, { mode: 0o600 });
    // the manifest last: its presence with the right digest is what makes staging resumable
    await writeFileAtomic(join(staging, 'manifest.json'), verified.bytes, { mode: 0o644 });
  }
  const done = resuming ? await readJournal(journalPath, verified.sha256) : new Set<string>();

  // free space: what is still to be written (holes cost nothing, so this is an upper bound)
  let toWrite = 0;
  for (const [sha, w] of plan) if (!done.has(sha)) toWrite += w.chunk.length * w.targets.length;
  // and the boot disk, a copy of the image's data made at the first configure
  toWrite += m.image.chunks.reduce((n, c) => n + c.length, 0);
  try {
    const fs = await statfs(staging);
    const free = fs.bavail * fs.bsize;
    if (toWrite > free) {
      throw new LoopshipError('IO', `not enough space: up to ${mib(toWrite)} MiB to write (image, kernel, initrd and the boot disk), ${mib(free)} MiB free`, { where: staging });
    }
  } catch (err) {
    if (err instanceof LoopshipError) throw err;
  }

  const handles = new Map<BlobName | 'boot', FileHandle>();
  let bootDisk: FileHandle | undefined;
  // decode/verify/write workers, for seed copies and pack frames alike (opts.decodeWorkers 0: none)
  const started: { workers?: DecodePool } = {};
  const workerPool = (): DecodePool | null => (opts.decodeWorkers === 0 ? null : (started.workers ??= new DecodePool(opts.decodeWorkers)));
  const seeds = await seedIndex(state, { name: m.name, version: m.version });
  const progress: InstallProgress = { doneBytes: 0, totalBytes: 0, fetchedBytes: 0, reusedBytes: 0 };
  for (const w of plan.values()) progress.totalBytes += w.chunk.length * w.targets.length;
  let pendingShas: string[] = [];
  let pendingBytes = 0;
  const journalEvery = opts.journalEveryBytes ?? 32 * 1024 * 1024;
  let lastJournal = now();

  const flush = async (): Promise<void> => {
    if (pendingShas.length === 0) return;
    const shas = pendingShas;
    pendingShas = [];
    pendingBytes = 0;
    lastJournal = now();
    for (const fh of handles.values()) await fh.datasync();
    await appendOwnFile(journalPath, shas.map((s) => s + '\n').join(''));
  };

  try {
    for (const [blob, b] of blobsOf(m)) {
      const path = join(staging, BLOB_FILES[blob]);
      const fh = await openOrCreateOwnFile(path, 0o600);
      handles.set(blob, fh);
      await fh.truncate(b.size);
    }
    // The boot disk in the same pass: no second read-copy-sync of the image afterwards.
    // A staging dir resumed without one (journaled chunks it never got) leaves it to configure.
    const bootPath = join(staging, BOOT_DISK);
    if (opts.bootDisk && (!resuming || done.size === 0 || (await pathExists(bootPath)))) {
      bootDisk = await openOrCreateOwnFile(bootPath, 0o600);
      handles.set('boot', bootDisk);
      await bootDisk.truncate(m.image.size);
    }
    for (const [sha, w] of plan) {
      if (done.has(sha)) {
        result.resumedChunks++;
        progress.doneBytes += w.chunk.length * w.targets.length;
      }
    }
    let failed: unknown = null;
    let flushing: Promise<void> | null = null;

    /** Every place a chunk's bytes go: (fd, offset), the boot disk included. */
    const writesOf = (w: Work): { fd: number; offset: number }[] =>
      w.targets.flatMap((t) => [{ fd: handles.get(t.file)!.fd, offset: t.offset }, ...(t.file === 'image' && bootDisk ? [{ fd: bootDisk.fd, offset: t.offset }] : [])]);

    /** Counts a chunk whose bytes are written, and journals it. */
    const account = (sha: string, w: Work, reused: boolean): void => {
      if (reused) {
        result.reusedChunks++;
        result.reusedBytes += w.chunk.length;
        progress.reusedBytes += w.chunk.length;
      } else {
        result.fetchedChunks++;
        result.fetchedBytes += w.chunk.csize;
        progress.fetchedBytes += w.chunk.csize;
      }
      progress.doneBytes += w.chunk.length * w.targets.length;
      pendingShas.push(sha);
      pendingBytes += w.chunk.length * w.targets.length;
      opts.onProgress?.({ ...progress });
      if ((pendingBytes >= journalEvery || now() - lastJournal > 1000) && !flushing) {
        // in the background: fetching goes on while the data is synced
        flushing = flush()
          .catch((err) => { failed ??= err; })
          .finally(() => { flushing = null; });
      }
    };

    /** Writes verified bytes to every place they go and journals them. */
    const commit = async (sha: string, w: Work, data: Buffer, reused: boolean): Promise<void> => {
      if (data.length !== w.chunk.length) {
        throw new MetadataError('CHUNK_INVALID', `chunk source returned ${data.length} bytes, expected ${w.chunk.length}`, { where: w.where });
      }
      for (const { fd, offset } of writesOf(w)) writeSparseSync(fd, data, offset);
      account(sha, w, reused);
    };

    /** Runs `fn` over `items` with `n` workers; the first failure stops them all. */
    const pool = async <T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> => {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (!failed && next < items.length) {
          const item = items[next++];
          try {
            await fn(item);
          } catch (err) {
            failed ??= err;
          }
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, Math.min(n, items.length)) }, worker));
    };

    // 1. what this host already has (any installed version), re-hashed: bit rot in an old
    //    version must not spread into the new one. On the workers (read, hash, write there:
    //    a slow host's upgrade is mostly this), each seed file opened once.
    const remote: string[] = [];
    const pending = [...plan.keys()].filter((sha) => !done.has(sha));
    const seedFiles = new Map<string, Promise<FileHandle | null>>();
    const seedFile = (path: string): Promise<FileHandle | null> => {
      let f = seedFiles.get(path);
      if (!f) seedFiles.set(path, (f = openOwnFile(path, 'read').catch(() => null)));
      return f;
    };
    try {
      await pool(pending, concurrency, async (sha) => {
        const w = plan.get(sha)!;
        const seed = seeds.get(sha);
        if (!seed || seed.length !== w.chunk.length) return void remote.push(sha);
        const copier = workerPool();
        if (!copier) {
          const bytes = await readExactly(seed.path, seed.offset, seed.length);
          if (bytes && sha256(bytes) === sha) await commit(sha, w, bytes, true);
          else remote.push(sha);
          return;
        }
        const fh = await seedFile(seed.path);
        if (!fh) return void remote.push(sha);
        try {
          await copier.copy({ fd: fh.fd, offset: seed.offset }, w.chunk, w.where, writesOf(w));
        } catch (err) {
          // not the bytes the manifest names (bit rot, a shorter file): fetch this one
          if (err instanceof VerificationError) return void remote.push(sha);
          throw err;
        }
        account(sha, w, true);
      });
    } finally {
      for (const f of seedFiles.values()) await (await f)?.close();
    }

    // 2. the rest from the version's pack: one Range request per run of missing chunks
    const delivered = new Set<string>();
    if (!failed && remote.length && source.packChunks) {
      const want = new Set(remote);
      const ranges = planPackRanges(packLayout(m), (sha) => want.has(sha), opts.packRangeBytes);
      let packGone = false;
      let writeFailed = false;
      // Decoding and hashing on worker threads when the source hands out raw frames: the
      // main thread then only moves bytes. At most `inFlight` frames wait for a worker.
      const decoders = source.packFrames ? workerPool() : null;
      const inFlight = new Semaphore(64);
      const fetchRange = async (range: PackRange): Promise<void> => {
        if (!decoders) {
          await source.packChunks!(verified.sha256, range, async (c, raw) => {
            try {
              await commit(c.sha256, plan.get(c.sha256)!, raw, false);
            } catch (err) {
              writeFailed = true;
              throw err;
            }
            delivered.add(c.sha256);
          });
          return;
        }
        const jobs: Promise<void>[] = [];
        let badFrame: Error | undefined;
        try {
          await source.packFrames!(verified.sha256, range, async (e, frame, where) => {
            if (failed) throw failed;
            const w = plan.get(e.chunk.sha256)!;
            await inFlight.acquire();
            jobs.push(
              decoders
                .decode(frame, e.chunk, where, writesOf(w))
                .then(
                  () => {
                    account(e.chunk.sha256, w, false);
                    delivered.add(e.chunk.sha256);
                  },
                  (err) => {
                    // a frame that does not verify falls back alone; a write error is fatal
                    if (err instanceof VerificationError) badFrame ??= err;
                    else {
                      writeFailed = true;
                      failed ??= ioError(err, staging, 'install failed');
                    }
                  },
                )
                .finally(() => inFlight.release()),
            );
          });
        } finally {
          await Promise.all(jobs);
        }
        if (failed) throw failed;
        if (badFrame) throw badFrame;
      };
      await pool(ranges, Math.min(concurrency, 4), async (range) => {
        if (packGone) return;
        try {
          result.rangeRequests++;
          await fetchRange(range);
        } catch (err) {
          // our own write failing (disk full) is fatal; a missing or bad pack is not: its
          // chunks are fetched one by one below, each verified as always
          if (writeFailed) throw err;
          if (err instanceof FetchError) {
            // no pack, no Range support, or the mirror failing: the other runs would fare no better
            if (!packGone) opts.onNotice?.(err.code === 'NOT_FOUND' ? `no pack for ${label} on the repository; fetching chunks one by one` : `cannot use the pack of ${label} (${err.message}); fetching chunks one by one`);
            packGone = true;
          } else {
            result.packFallbacks++;
            opts.onNotice?.(`pack range ${range.start}-${range.end - 1} of ${label} failed (${(err as Error).message}); fetching its remaining chunks one by one`);
          }
        }
      });
    }

    // 3. chunk by chunk: without a pack, or what a pack failed to deliver
    await pool(remote.filter((sha) => !delivered.has(sha)), concurrency, async (sha) => {
      const w = plan.get(sha)!;
      await commit(sha, w, await source.chunk(w.chunk, w.where), false);
    });
    // keep what was verified and written, also when something failed: the next run resumes
    await flushing;
    await flush();
    if (failed) throw failed;
  } catch (err) {
    await started.workers?.close().catch(() => {});
    for (const fh of handles.values()) await fh.close().catch(() => {});
    handles.clear();
    if (err instanceof LoopshipError) throw err;
    throw ioError(err, staging, 'install failed');
  }
  await started.workers?.close();
  for (const fh of handles.values()) await fh.close();
  await fsyncDir(staging);
  await mkdir(state.applianceDir(m.name), { recursive: true, mode: 0o700 });
  await pauseAt('verify');
  await rename(staging, finalDir);
  await pauseAt('move');
  await rmdir(dirname(staging)).catch(() => {}); // .staging/, when no other install is under way
  await fsyncDir(state.applianceDir(m.name));
  await unlink(join(finalDir, JOURNAL)).catch(() => {});
  result.seconds = (now() - t0) / 1000;
  return result;
}

const mib = (n: number): string => (n / 1024 / 1024).toFixed(1);

/**
 * Makes the boot disk (disk.img) of an installed version from its verified image: only
 * the ranges the manifest names are copied (the rest stays a hole), then renamed into place.
 */
export async function makeBootDisk(versionDir: string, m: Manifest): Promise<string> {
  const src = join(versionDir, BLOB_FILES.image);
  const dest = join(versionDir, BOOT_DISK);
  const tmp = join(versionDir, `.${BOOT_DISK}.tmp`);
  assertOwnDir(await lstat(versionDir), versionDir);
  const input = await openOwnFile(src, 'read');
  let output: FileHandle | undefined;
  try {
    // a killed run's leftover goes (unlink never follows a link); then a new file, exclusively
    await unlink(tmp).catch((err) => { if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; });
    output = await createOwnFile(tmp, 0o600);
    await output.truncate(m.image.size);
    let buf = Buffer.alloc(0);
    for (const c of m.image.chunks) {
      if (buf.length < c.length) buf = Buffer.allocUnsafe(c.length);
      const { bytesRead } = await input.read(buf, 0, c.length, c.offset);
      await writeSparse(output, buf.subarray(0, bytesRead), c.offset);
    }
    await output.sync();
  } catch (err) {
    await output?.close().catch(() => {});
    output = undefined;
    await rm(tmp, { force: true });
    throw err instanceof LoopshipError ? err : ioError(err, dest, 'cannot make the boot disk');
  } finally {
    await output?.close();
    await input.close();
  }
  await rename(tmp, dest);
  await fsyncDir(versionDir);
  return dest;
}

/** Size on disk (allocated blocks) of a file, for status and sparse checks. */
export async function allocatedBytes(path: string): Promise<number> {
  try {
    return (await stat(path)).blocks * 512;
  } catch {
    return 0;
  }
}
