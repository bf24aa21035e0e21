// Durable file operations: every state change is a tmp file + fsync + rename (+ fsync of
// the directory), so a kill -9 or power cut leaves either the old or the new content.
import { open, rename, mkdir, rm, symlink, readlink, unlink } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LoopshipError } from '../format/index.js';

export function ioError(err: unknown, where: string, what: string): LoopshipError {
  const e = err as NodeJS.ErrnoException;
  const hint = e.code === 'ENOSPC' ? ' (disk full)' : '';
  // Node's own messages start with the code already ("ENOSPC: no space left on device, write")
  const detail = e.code && !String(e.message).startsWith(e.code) ? `${e.code} ${e.message}` : (e.message ?? String(err));
  return new LoopshipError('IO', `${what}: ${detail}${hint}`.replace(/\s+/g, ' '), { where, cause: err });
}

// One directory fsync for the whole project: format/ has it.
import { fsyncDir } from '../format/index.js';
export { fsyncDir };

export const tmpName = (path: string): string => join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);

export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: { mode?: number; mkdir?: boolean } = {},
): Promise<void> {
  if (opts.mkdir) await mkdir(dirname(path), { recursive: true });
  const tmp = tmpName(path);
  try {
    const fh = await open(tmp, 'wx', opts.mode ?? 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    await fsyncDir(dirname(path));
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {});
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
  try {
    await (await import('node:fs/promises')).lstat(path);
    return true;
  } catch {
    return false;
  }
}
