// Atomic file writes, the one implementation every component uses (keys, the repository
// format, the server, the agent). A file is replaced whole: written under a random temporary
// name in its directory, fsync'd, renamed over the old one, then the directory fsync'd, so a
// kill -9 or a power cut leaves the old content or the new, never a mix. And carefully: the
// temporary file is opened O_EXCL|O_NOFOLLOW (never through a link planted under its name),
// a symlink or other non-file at the destination is refused rather than replaced, and an
// existing file's narrower mode is kept (a 0600 file holding a secret is never widened).
// This folder imports nothing of the project: it is the bottom layer.
import { open, rename, mkdir, rm, link, unlink, lstat } from 'node:fs/promises';
import { constants, type Stats } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY } = constants;
const NEW_FILE = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;

/**
 * A temporary name beside `path`: hidden, and telling a dead writer's leftovers (isTempName).
 * The file's own name is cut to 160 bytes, so a name near NAME_MAX (255) still gets one.
 */
export function tempName(path: string): string {
  const base = Buffer.from(basename(path)).subarray(0, 160).toString();
  return join(dirname(path), `.${base}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** Whether a directory entry is one of tempName's (left by a writer killed before its rename). */
export const isTempName = (name: string): boolean => /\.tmp-\d+-[0-9a-f]+$/.test(name);

/** fsync a directory so that renames inside it survive a power cut. */
export async function fsyncDir(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface AtomicWriteOptions {
  /** of a new file (default 0644); an existing file's narrower mode is kept */
  mode?: number;
  /** make the directory (and its parents) first, 0755 */
  mkdir?: boolean;
  /**
   * false: no fsync at all, for a scratch directory thrown away after use (a package being
   * built); a crash there loses nothing anyone relies on
   */
  durable?: boolean;
  /** checks the file being replaced before anything is written (the agent's: one it made) */
  checkExisting?: (st: Stats) => void;
}

/** An errno-style error, as Node's own: callers that wrap errors see a code. */
function refused(path: string, what: string, code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${path} ${what}; not replaced`), { code, path });
}

async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Writes `data` under a new temporary name, synced; returns that name. */
async function writeTemp(path: string, data: string | Uint8Array, mode: number, durable: boolean): Promise<string> {
  const tmp = tempName(path);
  const fh = await open(tmp, NEW_FILE, mode);
  try {
    await fh.writeFile(data);
    if (durable) await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
  await fh.close();
  return tmp;
}

/** Replaces `path` whole (see the top of this file). Errors are Node's own, unwrapped. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, opts: AtomicWriteOptions = {}): Promise<void> {
  const durable = opts.durable ?? true;
  if (opts.mkdir) await mkdir(dirname(path), { recursive: true, mode: 0o755 });
  const old = await lstatOrNull(path);
  if (old) {
    opts.checkExisting?.(old);
    if (old.isSymbolicLink()) throw refused(path, 'is a symbolic link', 'ELOOP');
    if (!old.isFile()) throw refused(path, 'is not a regular file', 'EEXIST');
  }
  const mode = (opts.mode ?? 0o644) & (old ? old.mode & 0o777 : 0o777);
  const tmp = await writeTemp(path, data, mode, durable);
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
  if (durable) await fsyncDir(dirname(path));
}

/**
 * Writes `data` as `path` only if nothing has that name (a symlink included): false if
 * something did. The same temporary file and syncs, then link(2), which refuses an
 * existing name where a rename would replace it.
 */
export async function createFileExclusive(path: string, data: string | Uint8Array, opts: { mode?: number } = {}): Promise<boolean> {
  const tmp = await writeTemp(path, data, opts.mode ?? 0o600, true);
  try {
    await link(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await unlink(tmp).catch(() => {});
  }
  await fsyncDir(dirname(path));
  return true;
}
