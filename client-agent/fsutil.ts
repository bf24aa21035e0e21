// Durable file operations: every state change is a tmp file + fsync + rename (+ fsync of
// the directory), so a kill -9 or power cut leaves either the old or the new content.
// And safe ones: the agent runs as root, so it opens what it keeps only if it is a file it
// made itself (regular, ours, one name), never through a symlink (O_NOFOLLOW) and never
// stuck on a planted fifo (O_NONBLOCK); anything else is a STATE_UNSAFE error naming it.
import { open, rename, mkdir, symlink, readlink, unlink, lstat, stat, chmod, type FileHandle } from 'node:fs/promises';
import { constants, type Stats } from 'node:fs';
import { dirname, join, relative, isAbsolute, sep } from 'node:path';
import { LoopshipError } from '../format/index.js';

export function ioError(err: unknown, where: string, what: string): LoopshipError {
  const e = err as NodeJS.ErrnoException;
  const hint = e.code === 'ENOSPC' ? ' (disk full)' : '';
  // Node's own messages start with the code already ("ENOSPC: no space left on device, write")
  const detail = e.code && !String(e.message).startsWith(e.code) ? `${e.code} ${e.message}` : (e.message ?? String(err));
  return new LoopshipError('IO', `${what}: ${detail}${hint}`.replace(/\s+/g, ' '), { where, cause: err });
}

// One directory fsync and one atomic writer for the whole project: base/ has them.
import { fsyncDir, writeFileAtomic as writeAtomic, tempName } from '../base/atomic.js';
export { fsyncDir };

const { O_RDONLY, O_RDWR, O_WRONLY, O_CREAT, O_EXCL, O_APPEND, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY } = constants;
/** On every open of a file we keep: not through a symlink, not stuck on a fifo, never a controlling tty. */
const SAFE = O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
const ourUid = (): number => process.getuid?.() ?? 0;

/** Something where the agent keeps its files that it did not make: refused, never used. */
export function unsafeEntry(path: string, what: string, remedy = 'the agent did not make it: look at it, then remove it'): LoopshipError {
  return new LoopshipError('STATE_UNSAFE', `${what}; refused (${remedy})`, { where: path });
}

/** A file the agent made is a regular file of ours with one name; anything else was planted. */
export function assertOwnFile(st: Stats, path: string): void {
  if (st.isSymbolicLink()) throw unsafeEntry(path, 'is a symbolic link');
  if (st.isDirectory()) throw unsafeEntry(path, 'is a directory');
  if (!st.isFile()) throw unsafeEntry(path, 'is not a regular file (a fifo, socket or device)');
  if (st.uid !== ourUid()) throw unsafeEntry(path, `is owned by uid ${st.uid} (the agent runs as uid ${ourUid()})`);
  // a second name: writing it would write a file elsewhere (rename(2) would not, but truncate would)
  if (st.nlink !== 1) throw unsafeEntry(path, `has ${st.nlink} hard links`);
}

/** A directory the agent writes into: a real one (not a symlink to elsewhere), ours. */
export function assertOwnDir(st: Stats, path: string): void {
  if (st.isSymbolicLink()) throw unsafeEntry(path, 'is a symbolic link where a directory should be');
  if (!st.isDirectory()) throw unsafeEntry(path, 'is not a directory');
  if (st.uid !== ourUid()) throw unsafeEntry(path, `is owned by uid ${st.uid}, not by the agent (uid ${ourUid()})`, 'its directories must be its alone: chown it, or use another --state-dir');
}

export async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** The stats of a file we made, or null when there is none; anything planted there is refused. */
export async function ownFileOrNull(path: string): Promise<Stats | null> {
  const st = await lstatOrNull(path);
  if (st) assertOwnFile(st, path);
  return st;
}

/**
 * Every directory below `root` down to `path` that exists is a real directory of ours: what
 * mkdir -p, rm -r and opens under `path` would otherwise follow out of `root`.
 */
export async function assertOwnDirsBelow(root: string, path: string): Promise<void> {
  const rel = relative(root, path);
  if (rel.startsWith('..') || isAbsolute(rel)) throw new LoopshipError('INTERNAL', `not below ${root}`, { where: path });
  let cur = root;
  for (const part of rel.split(sep).filter(Boolean)) {
    cur = join(cur, part);
    const st = await lstatOrNull(cur);
    if (!st) return;
    assertOwnDir(st, cur);
  }
}

/**
 * Makes a directory that is the agent's alone (0700), or checks the one there: ours, not a
 * symlink (`path` itself may be one when `followLink`: an admin's --state-dir choice), and
 * a wider mode is tightened (an older agent made them 0755).
 */
export async function ensureOwnDir(path: string, opts: { followLink?: boolean } = {}): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  const st = opts.followLink ? await stat(path) : await lstat(path);
  assertOwnDir(st, path);
  if (st.mode & 0o077) await chmod(path, st.mode & 0o700);
}

const OPEN_FLAGS = { read: O_RDONLY, write: O_RDWR, append: O_WRONLY | O_APPEND } as const;

/**
 * Opens a file we made (it must exist: ENOENT comes through as is, so callers can tell
 * absent from planted). Checked before (lstat: a device is never even opened) and after
 * (fstat: the very file lstat saw).
 */
export async function openOwnFile(path: string, how: keyof typeof OPEN_FLAGS): Promise<FileHandle> {
  const before = await lstat(path);
  assertOwnFile(before, path);
  const fh = await open(path, OPEN_FLAGS[how] | SAFE).catch((err) => {
    throw (err as NodeJS.ErrnoException).code === 'ELOOP' ? unsafeEntry(path, 'is a symbolic link') : err;
  });
  try {
    const st = await fh.stat();
    if (st.ino !== before.ino || st.dev !== before.dev) throw unsafeEntry(path, 'was replaced while being opened');
    assertOwnFile(st, path);
    return fh;
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** Creates a new file, read-write; whatever already has that name (a planted link too) is EEXIST. */
export async function createOwnFile(path: string, mode: number): Promise<FileHandle> {
  return open(path, O_RDWR | O_CREAT | O_EXCL | SAFE, mode);
}

/** A file we keep across runs (a resumable staging image): the existing one if ours, else a new one. */
export async function openOrCreateOwnFile(path: string, mode: number): Promise<FileHandle> {
  try {
    return await createOwnFile(path, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  return openOwnFile(path, 'write');
}

/** Reads a file we keep (state.json, trust, a journal): never through a symlink. */
export async function readOwnFile(path: string): Promise<Buffer> {
  const fh = await openOwnFile(path, 'read');
  try {
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/** readOwnFile, null when there is no such file. */
export async function readOwnFileOrNull(path: string): Promise<Buffer | null> {
  try {
    return await readOwnFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Appends to a file we made and syncs it (the install journal). */
export async function appendOwnFile(path: string, data: string): Promise<void> {
  const fh = await openOwnFile(path, 'append');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export const tmpName = tempName;

/**
 * Replaces `path` whole (base/atomic.ts: random temporary name, fsync of file then directory,
 * never through a link, mode never widened). The file it replaces must be one we made:
 * anything planted there is a STATE_UNSAFE error naming it.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: { mode?: number; mkdir?: boolean } = {},
): Promise<void> {
  try {
    await writeAtomic(path, data, { ...opts, checkExisting: (st) => assertOwnFile(st, path) });
  } catch (err) {
    if (err instanceof LoopshipError) throw err;
    throw ioError(err, path, 'cannot write');
  }
}

/** Points `link` at `target` atomically (a new symlink renamed over the old one). */
export async function symlinkAtomic(target: string, link: string): Promise<void> {
  const tmp = tmpName(link);
  await symlink(target, tmp);
  try {
    await rename(tmp, link);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw ioError(err, link, 'cannot switch link');
  }
  await fsyncDir(dirname(link));
}

export async function readLinkOrNull(link: string): Promise<string | null> {
  try {
    return await readlink(link);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'EINVAL') return null;
    throw err;
  }
}

export async function pathExists(path: string): Promise<boolean> {
  return (await lstatOrNull(path).catch(() => null)) !== null;
}
