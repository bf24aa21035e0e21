// A directory of content-addressed zstd chunks laid out as in the repository
// (chunks/<aa>/<sha256>). Writes are atomic (temp + fsync + rename): a crash leaves
// either no file or a whole one, never a torn chunk under its final name.
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { chunkPath } from './paths.js';

export class ChunkStore {
  /** `root` is the directory that holds `chunks/` (a repository, or a staging dir). */
  constructor(readonly root: string) {}

  pathOf(sha256: string): string {
    return join(this.root, chunkPath(sha256));
  }

  async has(sha256: string): Promise<boolean> {
    try {
      return (await stat(this.pathOf(sha256))).isFile();
    } catch {
      return false;
    }
  }

  /** Writes a chunk unless it is already there. Returns true when it was new. */
  async put(sha256: string, compressed: Uint8Array, opts: { fsync?: boolean } = {}): Promise<boolean> {
    const final = this.pathOf(sha256);
    if (await this.has(sha256)) return false;
    await writeFileAtomic(final, compressed, opts.fsync ?? true);
    return true;
  }
}

export async function writeFileAtomic(path: string, data: Uint8Array | string, fsync = true, mode = 0o644): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    if (fsync) await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fh.close();
  await rename(tmp, path);
}

/** fsync a directory so that renames inside it survive a power cut. */
export async function fsyncDir(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
