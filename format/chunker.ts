// Content-defined chunking at filesystem-block granularity (see DESIGN.md): chunk
// boundaries follow content, never fixed offsets, so a change in one place does not
// shift every chunk after it. A cut falls after a 4 KiB block whose fingerprint meets
// a condition, within [min, max] blocks; all-zero blocks are never stored (sparse).
import { open } from 'node:fs/promises';
import { BLOCK_SIZE } from './limits.js';

export interface ChunkerOptions {
  /** average-size control: a cut is allowed after a block when fp % divisor === 0 */
  divisor: number;
  minBlocks: number;
  maxBlocks: number;
  /** Treat all-zero blocks as holes (images). Off for kernel/initrd, which are small files. */
  skipZeroBlocks: boolean;
}

// Images: ~8 blocks past a 2-block minimum (a third of the bytes a one-package update
// fetches at divisor 16/min 4, for twice the chunks; figures in FORMAT.md "Chunks").
export const IMAGE_CHUNKING: ChunkerOptions = { divisor: 8, minBlocks: 2, maxBlocks: 256, skipZeroBlocks: true };
export const FILE_CHUNKING: ChunkerOptions = { divisor: 16, minBlocks: 4, maxBlocks: 256, skipZeroBlocks: false };

export interface RawChunk {
  offset: number;
  /** usually a view into a larger read buffer (never reused): copy it before transferring it */
  data: Buffer;
}

const READ_SIZE = 8 * 1024 * 1024;

/** A cheap fingerprint of one block: FNV-1a over 16 words spread across it. */
function blockFingerprint(buf: Buffer, pos: number, len: number): number {
  let h = 0x811c9dc5;
  const step = Math.max(4, Math.floor(len / 16) & ~3);
  for (let i = 0; i + 4 <= len; i += step) {
    h ^= buf.readUInt32LE(pos + i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

// The same fingerprint for a whole block read through a word view (words 0, 64, ..., 960
// of the block: the byte offsets 0, 256, ..., 3840 above). Only valid on little-endian hosts.
const WORD_STEP = BLOCK_SIZE / 16 / 4;
function fullBlockFingerprint(words: Uint32Array, w: number): number {
  let h = 0x811c9dc5;
  for (let k = 0; k < 16; k++) {
    h ^= words[w + k * WORD_STEP];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

// All-zero test by memcmp against zeros (native): most of an image's holes are zero
// blocks, and a JS loop over them cost more than everything else in the chunker. The call
// itself costs about as much as comparing a block, so a block whose sampled words are not
// all zero (most data blocks) is known at once, and a zero block is followed by one
// compare over as many of the next blocks as ZERO_SPAN holds (a hole is skipped in spans).
const ZERO_SPAN = Buffer.alloc(64 * BLOCK_SIZE);
function isZero(buf: Buffer, pos: number, len: number): boolean {
  return buf.compare(ZERO_SPAN, 0, len, pos, pos + len) === 0;
}
function sampledWordsZero(words: Uint32Array, w: number): boolean {
  for (let k = 0; k < 16; k++) if (words[w + k * WORD_STEP] !== 0) return false;
  return true;
}
/** End of the run of zero bytes starting at `pos` (a zero block), checked a span at a time. */
function zeroRunEnd(buf: Buffer, pos: number, got: number): number {
  let end = pos;
  while (end < got) {
    const span = Math.min(ZERO_SPAN.length, got - end);
    if (!isZero(buf, end, span)) break;
    end += span;
  }
  return end;
}

/**
 * Shared-memory read buffers for the chunker, handed back by the consumer once it is done
 * with every chunk cut from one. A new SharedArrayBuffer is zero-filled by the runtime:
 * for a 464 MiB image that alone cost a quarter of a second of the chunker's thread.
 */
export class SharedReadBuffers {
  private readonly free: SharedArrayBuffer[] = [];
  /** `keep`: at most this many idle buffers are kept (memory bound) */
  constructor(private readonly keep = 8) {}

  take(size: number): Buffer {
    const sab = this.free.pop() ?? new SharedArrayBuffer(READ_SIZE);
    return Buffer.from(sab, 0, size);
  }

  /** `sab` must come from take(), and no view of it be used any more. */
  giveBack(sab: SharedArrayBuffer): void {
    if (this.free.length < this.keep) this.free.push(sab);
  }
}

/**
 * Yields the chunks of a file in order. Memory stays bounded: one read buffer plus the
 * chunk being assembled (at most maxBlocks * 4 KiB), plus the read buffers of chunks a
 * consumer still holds. Chunks are views, not copies: each read gets a buffer no chunk
 * still uses (shared memory from `buffers` when given, so worker threads can hash the views
 * without a copy; a chunk that spans two reads is a copy, never shared). A consumer that
 * gives a buffer back must have seen a later read's chunk first: from then on the chunker
 * holds nothing of it.
 */
export async function* chunkFile(path: string, opts: ChunkerOptions, read: { buffers?: SharedReadBuffers } = {}): AsyncGenerator<RawChunk> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    let pending: Buffer[] = [];
    let pendingBlocks = 0;
    let pendingStart = 0;
    const flush = (): RawChunk | undefined => {
      if (pendingBlocks === 0) return undefined;
      const chunk = { offset: pendingStart, data: pending.length === 1 ? pending[0] : Buffer.concat(pending) };
      pending = [];
      pendingBlocks = 0;
      return chunk;
    };
    let fileOffset = 0;
    while (fileOffset < size) {
      const want = Math.min(READ_SIZE, size - fileOffset);
      const buf = read.buffers ? read.buffers.take(want) : Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, fileOffset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      const words = LITTLE_ENDIAN && buf.byteOffset % 4 === 0 ? new Uint32Array(buf.buffer, buf.byteOffset, got >>> 2) : undefined;
      let runStart = 0; // start (in buf) of blocks accumulated but not yet copied into pending
      const take = (end: number) => {
        if (end > runStart) pending.push(buf.subarray(runStart, end));
        runStart = end;
      };
      for (let pos = 0; pos < got; pos += BLOCK_SIZE) {
        const len = Math.min(BLOCK_SIZE, got - pos);
        const full = words !== undefined && len === BLOCK_SIZE;
        if (opts.skipZeroBlocks && (!full || sampledWordsZero(words, pos >>> 2)) && isZero(buf, pos, len)) {
          take(pos);
          const c = flush();
          if (c) yield c;
          // the zero blocks after this one, as far as whole spans reach (a partial span
          // that is not all zero is left to the blocks' own tests)
          const end = zeroRunEnd(buf, pos + len, got);
          runStart = end;
          pos = end - BLOCK_SIZE;
          continue;
        }
        if (pendingBlocks === 0) pendingStart = fileOffset + pos;
        pendingBlocks++;
        const cut =
          pendingBlocks >= opts.maxBlocks ||
          (pendingBlocks >= opts.minBlocks && (full ? fullBlockFingerprint(words, pos >>> 2) : blockFingerprint(buf, pos, len)) % opts.divisor === 0);
        if (cut) {
          take(pos + len);
          const c = flush();
          if (c) yield c;
        }
      }
      take(got);
      fileOffset += got;
      if (got < want) break;
    }
    const c = flush();
    if (c) yield c;
  } finally {
    await fh.close();
  }
}
