// The writer step of an install: verified chunk bytes go by positional sparse writes into the
// staging files (truncated to each blob's size, so all-zero blocks stay holes), a chunk is
// journaled only after its data is fsync'd (a kill -9 resumes from the journal), and the
// staging dir is renamed into place only once complete.
import { mkdir, rename, rmdir, unlink, type FileHandle } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { MetadataError } from '../format/index.js';
import { writeSparseSync } from './sparse.js';
import type { StateDir } from './state.js';
import { fsyncDir, pathExists, openOrCreateOwnFile, appendOwnFile } from './fsutil.js';
import { pauseAt } from './pause.js';
import { BLOB_FILES, BOOT_DISK, JOURNAL, blobsOf, bytesOf, type BlobName, type InstallPlan, type Work } from './install-plan.js';

export interface InstallProgress {
  doneBytes: number;
  totalBytes: number;
  fetchedBytes: number;
  reusedBytes: number;
}

/** What the writer counted: chunks written, by where they came from. */
export interface WriteTally {
  fetchedChunks: number;
  reusedChunks: number;
  resumedChunks: number;
  /** compressed bytes downloaded */
  fetchedBytes: number;
  /** raw bytes copied from versions already on the host */
  reusedBytes: number;
}

export interface WriterOptions {
  /** also write the boot disk (disk.img) in the same pass */
  bootDisk?: boolean;
  /** journal at least this often (bytes written between fsyncs) */
  journalEveryBytes?: number;
  onProgress?: (p: InstallProgress) => void;
  now: () => number;
}

/** Where chunk bytes go: one (fd, offset) per copy, as the decode workers take them. */
export type Writes = { fd: number; offset: number }[];

export class StagingWriter {
  readonly tally: WriteTally = { fetchedChunks: 0, reusedChunks: 0, resumedChunks: 0, fetchedBytes: 0, reusedBytes: 0 };
  private readonly progress: InstallProgress = { doneBytes: 0, totalBytes: 0, fetchedBytes: 0, reusedBytes: 0 };
  private readonly handles = new Map<BlobName | 'boot', FileHandle>();
  private bootDisk?: FileHandle;
  private pendingShas: string[] = [];
  private pendingBytes = 0;
  private lastJournal: number;
  private flushing: Promise<void> | null = null;
  private readonly journalEvery: number;
  /** the first failure of the install (a source's, a write's, a background journal sync's) */
  failed: unknown = undefined;

  constructor(private readonly plan: InstallPlan, private readonly opts: WriterOptions) {
    this.journalEvery = opts.journalEveryBytes ?? 32 * 1024 * 1024;
    this.lastJournal = opts.now();
    for (const w of plan.work.values()) {
      this.progress.totalBytes += bytesOf(w);
      if (plan.done.has(w.chunk.sha256)) {
        this.tally.resumedChunks++;
        this.progress.doneBytes += bytesOf(w);
      }
    }
  }

  get stagingDir(): string {
    return this.plan.staging;
  }

  /** Opens (or, resuming, reopens) every staging file at its final size. */
  async open(): Promise<void> {
    const { staging, manifest: m, resuming, done } = this.plan;
    for (const [blob, b] of blobsOf(m)) {
      const fh = await openOrCreateOwnFile(join(staging, BLOB_FILES[blob]), 0o600);
      this.handles.set(blob, fh);
      await fh.truncate(b.size);
    }
    // The boot disk in the same pass: no second read-copy-sync of the image afterwards.
    // A staging dir resumed without one (journaled chunks it never got) leaves it to configure.
    const bootPath = join(staging, BOOT_DISK);
    if (this.opts.bootDisk && (!resuming || done.size === 0 || (await pathExists(bootPath)))) {
      this.bootDisk = await openOrCreateOwnFile(bootPath, 0o600);
      this.handles.set('boot', this.bootDisk);
      await this.bootDisk.truncate(m.image.size);
    }
  }

  /** Every place a chunk's bytes go, the boot disk included. */
  writesOf(w: Work): Writes {
    const boot = this.bootDisk;
    return w.targets.flatMap((t) => [{ fd: this.handles.get(t.file)!.fd, offset: t.offset }, ...(t.file === 'image' && boot ? [{ fd: boot.fd, offset: t.offset }] : [])]);
  }

  /** Writes verified bytes to every place they go and journals them. */
  put(w: Work, data: Buffer, reused: boolean): void {
    if (data.length !== w.chunk.length) {
      throw new MetadataError('CHUNK_INVALID', `chunk source returned ${data.length} bytes, expected ${w.chunk.length}`, { where: w.where });
    }
    for (const { fd, offset } of this.writesOf(w)) writeSparseSync(fd, data, offset);
    this.written(w, reused);
  }

  /** Counts a chunk whose bytes are written (here or by a decode worker) and journals it. */
  written(w: Work, reused: boolean): void {
    const { tally, progress } = this;
    if (reused) {
      tally.reusedChunks++;
      tally.reusedBytes += w.chunk.length;
      progress.reusedBytes += w.chunk.length;
    } else {
      tally.fetchedChunks++;
      tally.fetchedBytes += w.chunk.csize;
      progress.fetchedBytes += w.chunk.csize;
    }
    progress.doneBytes += bytesOf(w);
    this.pendingShas.push(w.chunk.sha256);
    this.pendingBytes += bytesOf(w);
    this.opts.onProgress?.({ ...progress });
    if ((this.pendingBytes >= this.journalEvery || this.opts.now() - this.lastJournal > 1000) && !this.flushing) {
      // in the background: fetching goes on while the data is synced
      this.flushing = this.flush()
        .catch((err) => this.fail(err))
        .finally(() => { this.flushing = null; });
    }
  }

  fail(err: unknown): void {
    this.failed ??= err;
  }

  /** Throws the install's first failure, if any: every source checks before its next chunk. */
  check(): void {
    if (this.failed !== undefined) throw this.failed;
  }

  /** Syncs and journals everything written so far, also after a failure: the next run resumes from it. */
  async settle(): Promise<void> {
    await this.flushing;
    await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.pendingShas.length === 0) return;
    const shas = this.pendingShas;
    this.pendingShas = [];
    this.pendingBytes = 0;
    this.lastJournal = this.opts.now();
    for (const fh of this.handles.values()) await fh.datasync();
    await appendOwnFile(this.plan.journalPath, shas.map((s) => s + '\n').join(''));
  }

  /** Closes the staging files; `quietly` after a failure (the first error is what is reported). */
  async close(quietly = false): Promise<void> {
    const handles = [...this.handles.values()];
    this.handles.clear();
    for (const fh of handles) {
      if (quietly) await fh.close().catch(() => {});
      else await fh.close();
    }
  }
}

/** The complete staging dir becomes the version dir: synced, renamed, and the journal dropped. */
export async function moveIntoPlace(state: StateDir, plan: InstallPlan): Promise<void> {
  const { staging, finalDir, manifest: m } = plan;
  await fsyncDir(staging);
  await mkdir(state.applianceDir(m.name), { recursive: true, mode: 0o700 });
  await pauseAt('verify');
  await rename(staging, finalDir);
  await pauseAt('move');
  await rmdir(dirname(staging)).catch(() => {}); // .staging/, when no other install is under way
  await fsyncDir(state.applianceDir(m.name));
  await unlink(join(finalDir, JOURNAL)).catch(() => {});
}
