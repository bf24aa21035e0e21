// The install engine: turns a verified manifest into a complete version directory, in
// three steps with one job each:
//  - plan (install-plan.ts): the unique chunks and where each goes, what a resumed staging
//    dir's journal already holds, free space;
//  - chunk providers (chunk-sources.ts), tried in order over what is still missing: this
//    host's installed versions (re-hashed), the version's pack, single chunk files; each
//    chunk is verified before a byte of it is written;
//  - the writer (install-writer.ts): positional sparse writes, journal after fsync (a
//    kill -9 resumes where it stopped), rename into place only when complete.
// A resumed staging dir is trusted only as far as it holds files we made: a planted
// symlink, hard link or fifo in it is an error (fsutil's safe opens), never written.
import { rename, rm, stat, unlink, lstat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Manifest } from '../format/index.js';
import { LoopshipError } from '../format/index.js';
import { LazyDecodePool } from './decode-pool.js';
import { writeSparseSync } from './sparse.js';
import type { StateDir } from './state.js';
import { ioError, assertOwnDir, openOwnFile, createOwnFile, fsyncDir } from './fsutil.js';
import { planInstall, BLOB_FILES, BOOT_DISK, type InstallPlan, type VerifiedManifest } from './install-plan.js';
import { StagingWriter, moveIntoPlace, type InstallProgress } from './install-writer.js';
import { fillInOrder, singleChunks, type ChunkProvider, type ChunkSource } from './chunk-sources.js';
import { seedIndex, seedProvider, type SeedIndex } from './seed-source.js';
import { packProvider, type PackStats } from './pack-source.js';

export { BLOB_FILES, BOOT_DISK, blobsOf, planChunks, type BlobName, type VerifiedManifest } from './install-plan.js';
export type { InstallProgress } from './install-writer.js';
export type { ChunkSource } from './chunk-sources.js';
export { seedIndex } from './seed-source.js';

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

/** Writes `data` at `position`, skipping all-zero blocks (they stay holes). */
export async function writeSparse(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  writeSparseSync(fh.fd, data, position);
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

/** The providers of one install, in the order they are tried. */
function providersFor(opts: InstallOptions, plan: InstallPlan, seeds: SeedIndex, workers: LazyDecodePool, concurrency: number): { providers: ChunkProvider[]; pack?: PackStats } {
  const { source } = opts;
  const providers: ChunkProvider[] = [seedProvider(seeds, workers, concurrency)];
  let pack: PackStats | undefined;
  if (source.packChunks) {
    const p = packProvider({ packChunks: source.packChunks.bind(source), packFrames: source.packFrames?.bind(source) }, {
      manifest: plan.manifest, manifestSha256: plan.verified.sha256, label: plan.label,
      rangeBytes: opts.packRangeBytes, concurrency: Math.min(concurrency, 4), workers, onNotice: opts.onNotice,
    });
    providers.push(p);
    pack = p.stats;
  }
  providers.push(singleChunks(source, concurrency));
  return { providers, pack };
}

export async function installVersion(opts: InstallOptions): Promise<InstallResult> {
  const { state, verified } = opts;
  const now = opts.now ?? Date.now;
  const t0 = now();
  const m = verified.manifest;
  const plan = await planInstall(state, verified);
  const result: InstallResult = {
    name: m.name, version: m.version, manifestSha256: verified.sha256, alreadyInstalled: plan.installed,
    chunks: plan.work.size, fetchedChunks: 0, reusedChunks: 0, resumedChunks: 0, fetchedBytes: 0, reusedBytes: 0,
    fullCompressedBytes: [...plan.work.values()].reduce((s, w) => s + w.chunk.csize, 0), rangeRequests: 0, packFallbacks: 0, seconds: 0,
  };
  if (plan.installed) return result;

  const concurrency = Math.max(1, opts.concurrency ?? 8);
  // decode/verify/write workers, for seed copies and pack frames alike (opts.decodeWorkers 0: none)
  const workers = new LazyDecodePool(opts.decodeWorkers);
  const seeds = await seedIndex(state, { name: m.name, version: m.version });
  const writer = new StagingWriter(plan, { bootDisk: opts.bootDisk, journalEveryBytes: opts.journalEveryBytes, onProgress: opts.onProgress, now });
  const { providers, pack } = providersFor(opts, plan, seeds, workers, concurrency);
  try {
    await writer.open();
    await fillInOrder(providers, plan.pending, writer).catch((err) => writer.fail(err));
    // keep what was verified and written, also when something failed: the next run resumes
    await writer.settle();
    writer.check();
  } catch (err) {
    await workers.close().catch(() => {});
    await writer.close(true);
    if (err instanceof LoopshipError) throw err;
    throw ioError(err, plan.staging, 'install failed');
  }
  await workers.close();
  await writer.close();
  await moveIntoPlace(state, plan);
  Object.assign(result, writer.tally, pack ?? {});
  result.seconds = (now() - t0) / 1000;
  return result;
}

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
