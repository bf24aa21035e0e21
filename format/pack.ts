// Pack files: one file per published version holding the zstd frames of all its distinct
// chunks, concatenated in manifest order (image, kernel, initrd; each chunk once, where it
// first appears). The layout is a pure function of the signed manifest (offsets are
// running sums of `csize`), so a pack needs no index of its own and no signature: every
// frame read from it is still decoded under the manifest's length bound and sha256-checked.
// A client fetches runs of the chunks it lacks with one HTTP Range request per run (a fresh
// install is a handful of big requests instead of one per chunk), and falls back to the
// per-chunk files when a pack is missing or does not verify.
import { open, readFile, stat, unlink, rename, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DigestError, LoopshipError } from './errors.js';
import { decodeChunk } from './codec.js';
import { manifestChunks } from './package.js';
import type { Chunk, Manifest } from './schema.js';

export interface PackEntry {
  chunk: Chunk;
  /** byte offset of the chunk's frame in the pack */
  offset: number;
}

export interface PackLayout {
  entries: PackEntry[];
  size: number;
}

/** Where each distinct chunk's frame sits in the version's pack. */
export function packLayout(m: Manifest): PackLayout {
  const entries: PackEntry[] = [];
  let offset = 0;
  for (const chunk of manifestChunks(m)) {
    entries.push({ chunk, offset });
    offset += chunk.csize;
  }
  return { entries, size: offset };
}

/** One Range request: the frames of `entries`, contiguous in the pack, bytes [start, end). */
export interface PackRange {
  start: number;
  end: number;
  entries: PackEntry[];
}

/**
 * Groups the wanted chunks into runs of adjacent frames, each at most `maxBytes` long (a
 * longer run is split so that several requests can run in parallel and a failure costs
 * little). Chunks not wanted are never downloaded: the bytes fetched are exactly the sum
 * of the wanted frames.
 */
export function planPackRanges(layout: PackLayout, wanted: (sha256: string) => boolean, maxBytes = 8 * 1024 * 1024): PackRange[] {
  const ranges: PackRange[] = [];
  let cur: PackRange | null = null;
  for (const e of layout.entries) {
    if (!wanted(e.chunk.sha256)) {
      cur = null;
      continue;
    }
    const end = e.offset + e.chunk.csize;
    if (cur && cur.end === e.offset && end - cur.start <= maxBytes) {
      cur.end = end;
      cur.entries.push(e);
    } else {
      cur = { start: e.offset, end, entries: [e] };
      ranges.push(cur);
    }
  }
  return ranges;
}

/**
 * Splits a stream of the bytes of `range` into its frames, NOT verified: `onFrame` must
 * decode and check each one (decodeChunk) before using a byte of it. Awaited, so the
 * stream is paused meanwhile and memory stays at a frame plus the socket's buffers.
 * Throws on a short stream or bytes past the last frame.
 */
export async function splitPackRange(body: AsyncIterable<Buffer>, range: PackRange, where: string, onFrame: (e: PackEntry, frame: Buffer) => Promise<void> | void): Promise<void> {
  let i = 0;
  let parts: Buffer[] = [];
  let have = 0;
  for await (const part of body) {
    parts.push(part);
    have += part.length;
    while (i < range.entries.length && have >= range.entries[i].chunk.csize) {
      const e = range.entries[i];
      const joined = parts.length === 1 ? parts[0] : Buffer.concat(parts, have);
      const rest = joined.subarray(e.chunk.csize);
      parts = rest.length ? [rest] : [];
      have = rest.length;
      i++;
      await onFrame(e, joined.subarray(0, e.chunk.csize));
    }
  }
  if (i < range.entries.length || have > 0) {
    const what = i < range.entries.length ? `ended after ${i} of its ${range.entries.length} chunks` : `has ${have} bytes past its last chunk`;
    throw new DigestError('CHUNK_INVALID', `pack range ${range.start}-${range.end - 1} ${what}`, { where });
  }
}

/** Where a frame of a pack is, for error messages. */
export const frameWhere = (where: string, e: PackEntry): string => `${where} (chunk ${e.chunk.sha256} at pack offset ${e.offset})`;

/**
 * splitPackRange, with each frame decoded and verified against the manifest before
 * `onChunk` sees it. Throws at the first bad frame; the chunks delivered before stay good.
 */
export async function readPackRange(body: AsyncIterable<Buffer>, range: PackRange, where: string, onChunk: (c: Chunk, raw: Buffer) => Promise<void> | void): Promise<void> {
  await splitPackRange(body, range, where, (e, frame) => onChunk(e.chunk, decodeChunk(frame, e.chunk, frameWhere(where, e))));
}

/**
 * Writes a pack for `m` from a directory of chunk files (`pathOf(sha256)`), atomically.
 * Returns false (and writes nothing) when a stored frame's size differs from the manifest's
 * `csize`: the layout would be wrong, and clients do fine with per-chunk files alone.
 */
export async function writePack(dest: string, m: Manifest, pathOf: (sha256: string) => string): Promise<boolean> {
  const { entries } = packLayout(m);
  for (const e of entries) {
    const s = await stat(pathOf(e.chunk.sha256));
    if (s.size !== e.chunk.csize) return false;
  }
  await mkdir(dirname(dest), { recursive: true });
  const tmp = `${dest}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const out = await open(tmp, 'wx', 0o644);
  try {
    let pos = 0;
    for (const e of entries) {
      // a frame is at most zstd's bound of 8 MiB: read whole (a stream per ~30 KiB frame
      // allocated a 1 MiB buffer each, gigabytes per version)
      const buf = await readFile(pathOf(e.chunk.sha256));
      if (buf.length !== e.chunk.csize) throw new LoopshipError('IO', `chunk file changed size while the pack was written (${buf.length}, manifest says ${e.chunk.csize})`, { where: pathOf(e.chunk.sha256) });
      let done = 0;
      while (done < buf.length) done += (await out.write(buf, done, buf.length - done, pos + done)).bytesWritten;
      pos += buf.length;
    }
    await out.sync();
  } catch (err) {
    await out.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await out.close();
  await rename(tmp, dest);
  return true;
}
