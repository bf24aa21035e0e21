// Upper bounds on everything a repository can make a client read. A client never
// reads more than these, whatever a server claims, so a hostile or broken server
// cannot exhaust memory or disk. Generous for real use, small enough to be safe.
export const LIMITS = {
  rootBytes: 512 * 1024,
  indexBytes: 16 * 1024 * 1024,
  manifestBytes: 64 * 1024 * 1024,
  signatureBytes: 64 * 1024,
  /** root versions walked in one update: a server cannot keep us walking forever */
  rootChainLength: 1024,
  chunksPerBlob: 1_000_000,
  chunkLength: 8 * 1024 * 1024,
  imageSize: 2 ** 40,
  kernelSize: 256 * 1024 * 1024,
  packagesPerManifest: 50_000,
  imagesPerIndex: 10_000,
  versionsPerImage: 10_000,
  rolloutStages: 16,
  holdsPerImage: 10_000,
  keysPerRoot: 256,
} as const;

export const BLOCK_SIZE = 4096;

/** zstd's ZSTD_COMPRESSBOUND: the most a frame of `n` bytes of input can take. */
export function zstdCompressBound(n: number): number {
  return n + (n >>> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >>> 11 : 0) + 64;
}
