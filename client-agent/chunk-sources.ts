// Where an install's chunks come from, as ordered fallbacks (the way desync puts seeds before
// its failover stores): each provider writes what it can and hands the rest to the next one.
// The host's own versions come first (seed-source.ts), then the version's pack on the
// repository (pack-source.ts), then single chunk files, which must deliver the rest.
import { join } from 'node:path';
import type { Chunk, PackEntry, PackRange } from '../format/index.js';
import { LoopshipError, chunkPath, decodeChunk, parallel } from '../format/index.js';
import { readOwnFile } from './fsutil.js';
import type { Work } from './install-plan.js';
import type { StagingWriter } from './install-writer.js';

/** What the install engine needs from the verifier (the lead's RepoClient has this shape). */
export interface ChunkSource {
  /** Fetches, bounds, decompresses and sha256-verifies one chunk: returns its raw bytes. */
  chunk(c: Chunk, where?: string): Promise<Buffer>;
  /**
   * Optional bulk path (RepoClient has it): the verified chunks of one run of the version's
   * pack, handed to `onChunk` in pack order. Throws when the pack is missing or bad; chunks
   * delivered before that stay delivered.
   */
  packChunks?(manifestSha256: string, range: PackRange, onChunk: (c: Chunk, raw: Buffer) => Promise<void>): Promise<void>;
  /** packChunks without decoding (RepoClient has it): the engine decodes and verifies on worker threads */
  packFrames?(manifestSha256: string, range: PackRange, onFrame: (e: PackEntry, frame: Buffer, where: string) => Promise<void>): Promise<void>;
}

/**
 * One place chunks can come from. `fill` writes every chunk of `wanted` it can get (each
 * verified) through the writer and returns the ones it could not, for the next provider.
 * It throws only for what must stop the install (our own write failing, a verification
 * failure where nothing is left to fall back to); before each chunk it calls `into.check()`,
 * so the install's first failure anywhere stops every provider.
 */
export interface ChunkProvider {
  fill(wanted: Work[], into: StagingWriter): Promise<Work[]>;
}

/** Runs the providers in order over what is still missing; the last must deliver it all. */
export async function fillInOrder(providers: ChunkProvider[], wanted: Work[], into: StagingWriter): Promise<void> {
  let left = wanted;
  for (const p of providers) {
    if (left.length === 0) return;
    into.check();
    left = await p.fill(left, into);
  }
  if (left.length) throw new LoopshipError('INTERNAL', `${left.length} chunk(s) came from no source`, { where: left[0].where });
}

/** Chunk by chunk from a ChunkSource: what nothing before it delivered. Never leaves any. */
export function singleChunks(source: ChunkSource, concurrency: number): ChunkProvider {
  return {
    async fill(wanted, into) {
      await parallel(wanted, concurrency, async (w) => {
        into.check();
        into.put(w, await source.chunk(w.chunk, w.where), false);
      });
      return [];
    },
  };
}

/** A ChunkSource over a directory of compressed chunk files (an imported package's spool), each decoded and verified as it is read. */
export function chunkDirSource(dir: string, where: string): ChunkSource {
  return {
    chunk: async (c: Chunk, at?: string) => decodeChunk(await readOwnFile(join(dir, chunkPath(c.sha256))), c, at ?? where),
  };
}
