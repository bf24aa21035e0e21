// The second chunk provider: the version's pack on the repository, one Range request per
// run of missing chunks. A missing pack (or a server without Range support) ends this
// provider for the install; a range that fails otherwise (a bad frame) leaves its remaining
// chunks to the next provider. Our own write failing is never taken for a bad pack: it stops
// the install. With raw frames and decode workers, the main thread only moves bytes.
import type { Manifest, PackRange } from '../format/index.js';
import { FetchError, VerificationError, packLayout, planPackRanges, parallel, Semaphore } from '../format/index.js';
import { ioError } from './fsutil.js';
import type { Work } from './install-plan.js';
import type { DecodePool, LazyDecodePool } from './decode-pool.js';
import type { ChunkProvider, ChunkSource } from './chunk-sources.js';
import type { StagingWriter } from './install-writer.js';

export interface PackOptions {
  manifest: Manifest;
  manifestSha256: string;
  /** `manifest NAME VERSION`, for notices */
  label: string;
  /** the longest pack range one request asks for */
  rangeBytes?: number;
  /** ranges in flight at once */
  concurrency: number;
  workers: LazyDecodePool;
  onNotice?: (message: string) => void;
}

export interface PackStats {
  /** HTTP Range requests made on the version's pack */
  rangeRequests: number;
  /** pack ranges that failed and were left to single chunks */
  packFallbacks: number;
}

/** Frames held at once waiting for a decode worker, over all ranges: bounds memory. */
const FRAMES_IN_FLIGHT = 64;

type Pack = Required<Pick<ChunkSource, 'packChunks'>> & Pick<ChunkSource, 'packFrames'>;

export function packProvider(source: Pack, opts: PackOptions): ChunkProvider & { stats: PackStats } {
  const stats: PackStats = { rangeRequests: 0, packFallbacks: 0 };
  const inFlight = new Semaphore(FRAMES_IN_FLIGHT);
  return {
    stats,
    async fill(wanted, into) {
      const bySha = new Map(wanted.map((w) => [w.chunk.sha256, w]));
      const ranges = planPackRanges(packLayout(opts.manifest), (sha) => bySha.has(sha), opts.rangeBytes);
      const delivered = new Set<string>();
      const decoders = source.packFrames ? opts.workers.get() : null;
      const fetchRange = (range: PackRange): Promise<void> =>
        decoders
          ? viaWorkers(source, opts.manifestSha256, range, { bySha, into, delivered, decoders, inFlight })
          : onMainThread(source, opts.manifestSha256, range, { bySha, into, delivered });
      let packGone = false;
      await parallel(ranges, opts.concurrency, async (range) => {
        into.check();
        if (packGone) return;
        try {
          stats.rangeRequests++;
          await fetchRange(range);
        } catch (err) {
          // a failure on our side (a write, a journal sync) is fatal; one of the pack's is not
          into.check();
          if (err instanceof FetchError) {
            // no pack, no Range support, or the mirror failing: the other runs would fare no better
            if (!packGone) opts.onNotice?.(err.code === 'NOT_FOUND' ? `no pack for ${opts.label} on the repository; fetching chunks one by one` : `cannot use the pack of ${opts.label} (${err.message}); fetching chunks one by one`);
            packGone = true;
          } else {
            stats.packFallbacks++;
            opts.onNotice?.(`pack range ${range.start}-${range.end - 1} of ${opts.label} failed (${(err as Error).message}); fetching its remaining chunks one by one`);
          }
        }
      });
      return wanted.filter((w) => !delivered.has(w.chunk.sha256));
    },
  };
}

interface RangeCtx {
  bySha: Map<string, Work>;
  into: StagingWriter;
  delivered: Set<string>;
}

/** Decoded and verified chunks from the source, written here. */
async function onMainThread(source: Pack, manifestSha256: string, range: PackRange, { bySha, into, delivered }: RangeCtx): Promise<void> {
  await source.packChunks(manifestSha256, range, async (c, raw) => {
    try {
      into.put(bySha.get(c.sha256)!, raw, false);
    } catch (err) {
      into.fail(err);
      throw err;
    }
    delivered.add(c.sha256);
  });
}

/**
 * Raw frames from the source, decoded, verified and written on the workers. A frame that
 * does not verify falls back alone (its range is reported failed once the others are written).
 */
async function viaWorkers(source: Pack, manifestSha256: string, range: PackRange, ctx: RangeCtx & { decoders: DecodePool; inFlight: Semaphore }): Promise<void> {
  const { bySha, into, delivered, decoders, inFlight } = ctx;
  const jobs: Promise<void>[] = [];
  let badFrame: Error | undefined;
  const decoded = (w: Work) => () => {
    into.written(w, false);
    delivered.add(w.chunk.sha256);
  };
  const refused = (err: unknown) => {
    if (err instanceof VerificationError) badFrame ??= err;
    else into.fail(ioError(err, into.stagingDir, 'install failed'));
  };
  try {
    await source.packFrames!(manifestSha256, range, async (e, frame, where) => {
      into.check();
      const w = bySha.get(e.chunk.sha256)!;
      await inFlight.acquire();
      jobs.push(decoders.decode(frame, e.chunk, where, into.writesOf(w)).then(decoded(w), refused).finally(() => inFlight.release()));
    });
  } finally {
    // no write of this range may still be under way once it is over
    await Promise.all(jobs);
  }
  into.check();
  if (badFrame) throw badFrame;
}
