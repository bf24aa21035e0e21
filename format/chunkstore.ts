// A directory of content-addressed zstd chunks laid out as in the repository
// (chunks/<aa>/<sha256>). Writes are atomic (base/atomic.ts): a crash leaves either no
// file or a whole one, never a torn chunk under its final name.
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../base/atomic.js';
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

  /**
   * Writes a chunk unless it is already there. Returns true when it was new. `fsync: false`
   * for a scratch store thrown away after use (a package being built): no syncs at all.
   */
  async put(sha256: string, compressed: Uint8Array, opts: { fsync?: boolean } = {}): Promise<boolean> {
    const final = this.pathOf(sha256);
    if (await this.has(sha256)) return false;
    await writeFileAtomic(final, compressed, { mkdir: true, durable: opts.fsync ?? true });
    return true;
  }
}
