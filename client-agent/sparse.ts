// Sparse positional writes, shared by the install engine and its decode workers.
import { writeSync } from 'node:fs';
import { BLOCK_SIZE } from '../format/limits.js';

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);

/**
 * Writes `data` at `position` of the open file `fd`, skipping all-zero blocks (they stay
 * holes). Synchronous: a write into the page cache is a memcpy, much cheaper than a
 * thread-pool round trip per chunk (measured: async writes took more main-thread time
 * than decompressing). Durability comes from the datasync before each journal entry.
 */
export function writeSparseSync(fd: number, data: Uint8Array, position: number): void {
  let runStart = -1;
  const blocks = Math.ceil(data.length / BLOCK_SIZE);
  // one step past the last block (a sentinel "zero" block) flushes the last run
  for (let b = 0; b <= blocks; b++) {
    const i = Math.min(b * BLOCK_SIZE, data.length);
    const end = Math.min(i + BLOCK_SIZE, data.length);
    const zero = b === blocks || ZERO_BLOCK.compare(data, i, end, 0, end - i) === 0;
    if (!zero && runStart < 0) runStart = i;
    if (zero && runStart >= 0) {
      let done = runStart;
      while (done < i) done += writeSync(fd, data, done, i - done, position + done);
      runStart = -1;
    }
  }
}
