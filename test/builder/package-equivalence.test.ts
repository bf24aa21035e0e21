// The chunk boundaries are the format: the faster chunker (word-view fingerprint, memcmp
// zero test, views instead of copies) and createPackage's worker-thread compression must
// give exactly what the first implementation gave. The reference below is that
// implementation, kept verbatim (chunker) and in substance (createPackage's chunk loop).
import test from 'ava';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createCipheriv, createHash } from 'node:crypto';
import { makeRepo, baseManifest, type Fixture } from '../helpers/repo.js';
import { createPackage, compressChunk, decodeChunk, sha256Hex, serialize, ManifestSchema, ChunkStore, IMAGE_CHUNKING, FILE_CHUNKING, DEFAULT_ZSTD_LEVEL, type ChunkerOptions, type Chunk } from '../../format/index.js';

const BLOCK = 4096;

/** Deterministic incompressible bytes (an AES-CTR key stream): fast enough for tens of MiB. */
function seeded(seed: string, n: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

// ---- reference: format/chunker.ts as first written ----
function refFingerprint(buf: Buffer, pos: number, len: number): number {
  let h = 0x811c9dc5;
  const step = Math.max(4, Math.floor(len / 16) & ~3);
  for (let i = 0; i + 4 <= len; i += step) {
    h ^= buf.readUInt32LE(pos + i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
function refIsZero(buf: Buffer, pos: number, len: number): boolean {
  let i = 0;
  for (; i + 8 <= len; i += 8) if (buf.readBigUInt64LE(pos + i) !== 0n) return false;
  for (; i < len; i++) if (buf[pos + i] !== 0) return false;
  return true;
}
async function* refChunkFile(path: string, opts: ChunkerOptions): AsyncGenerator<{ offset: number; data: Buffer }> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    let pending: Buffer[] = [];
    let pendingBlocks = 0;
    let pendingStart = 0;
    const flush = () => {
      if (pendingBlocks === 0) return undefined;
      const chunk = { offset: pendingStart, data: pending.length === 1 ? pending[0] : Buffer.concat(pending) };
      pending = [];
      pendingBlocks = 0;
      return chunk;
    };
    let fileOffset = 0;
    while (fileOffset < size) {
      const want = Math.min(8 * 1024 * 1024, size - fileOffset);
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, fileOffset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      let runStart = 0;
      const take = (end: number) => {
        if (end > runStart) pending.push(Buffer.from(buf.subarray(runStart, end)));
        runStart = end;
      };
      for (let pos = 0; pos < got; pos += BLOCK) {
        const len = Math.min(BLOCK, got - pos);
        if (opts.skipZeroBlocks && refIsZero(buf, pos, len)) {
          take(pos);
          const c = flush();
          if (c) yield c;
          runStart = pos + len;
          continue;
        }
        if (pendingBlocks === 0) pendingStart = fileOffset + pos;
        pendingBlocks++;
        const cut = pendingBlocks >= opts.maxBlocks || (pendingBlocks >= opts.minBlocks && refFingerprint(buf, pos, len) % opts.divisor === 0);
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

// ---- reference: createPackage's chunk loop (sequential, compress in place) ----
async function refBlob(path: string, opts: ChunkerOptions, seen: Map<string, number>, level: number) {
  const chunks: Chunk[] = [];
  let size = 0;
  const whole = createHash('sha256');
  for await (const raw of refChunkFile(path, opts)) {
    const sha = sha256Hex(raw.data);
    whole.update(raw.data);
    let csize = seen.get(sha);
    if (csize === undefined) {
      csize = compressChunk(raw.data, level).length;
      seen.set(sha, csize);
    }
    chunks.push({ offset: raw.offset, length: raw.data.length, sha256: sha, csize });
  }
  size = (await readFile(path)).length;
  return opts.skipZeroBlocks ? { size, chunks } : { size, sha256: whole.digest('hex'), chunks };
}

/**
 * An image that exercises every branch: incompressible and compressible data, zero runs
 * of every length (1 block, a few, many), blocks repeated within the image, a zero run
 * and a chunk crossing the 8 MiB read-buffer boundary, a last partial block in the files.
 * Past 20 MiB, data crossing four more read buffers: createPackage accounts chunks (and
 * hands read buffers back to the chunker) only some batches behind the chunker, so a
 * buffer handed back too early would be read into while its chunks are still in use.
 */
function testImage(): Buffer {
  const size = 60 * 1024 * 1024;
  const buf = seeded('equivalence', size);
  const text = Buffer.from('loopship '.repeat(1000));
  for (let off = 1 * 1024 * 1024; off < 2 * 1024 * 1024; off += text.length) text.copy(buf, off);
  buf.fill(0, 3 * 1024 * 1024, 5 * 1024 * 1024);
  for (let b = 0; b < 200; b++) buf.fill(0, 6 * 1024 * 1024 + b * 7 * BLOCK, 6 * 1024 * 1024 + b * 7 * BLOCK + (1 + (b % 3)) * BLOCK);
  const rep = buf.subarray(10 * 1024 * 1024, 10 * 1024 * 1024 + 64 * BLOCK);
  for (let k = 1; k <= 5; k++) rep.copy(buf, 12 * 1024 * 1024 + k * 300 * BLOCK);
  buf.fill(0, 8 * 1024 * 1024 - 2 * BLOCK, 8 * 1024 * 1024 + 3 * BLOCK);
  buf.fill(0, 16 * 1024 * 1024 - BLOCK, 16 * 1024 * 1024); // a zero block ending a read buffer
  buf.fill(0, 18 * 1024 * 1024, 20 * 1024 * 1024); // a long hole
  buf.fill(0, 58 * 1024 * 1024, size); // the tail: a hole
  return buf;
}

async function setup(t: { teardown(fn: () => Promise<void>): void }): Promise<{ fx: Fixture; paths: { image: string; kernel: string; initrd: string } }> {
  const fx = await makeRepo();
  t.teardown(() => fx.cleanup());
  const paths = { image: join(fx.dir, 'disk.img'), kernel: join(fx.dir, 'vmlinuz'), initrd: join(fx.dir, 'initrd.img') };
  await writeFile(paths.image, testImage());
  await writeFile(paths.kernel, seeded('kernel', 9 * 1024 * 1024 + 1234)); // crosses a read buffer, partial last block
  await writeFile(paths.initrd, Buffer.concat([seeded('initrd', 300_001), Buffer.alloc(5 * BLOCK), seeded('initrd', 70_000)]));
  return { fx, paths };
}

for (const threads of [0, 2]) {
  test(`createPackage (${threads ? `${threads} compression workers` : 'in-thread compression'}) gives the reference implementation's manifest bytes and chunk files`, async (t) => {
    const { fx, paths } = await setup(t);
    const publisherKey = await fx.keystore.privateKey(fx.keystore.find('publisher'));
    const manifest = baseManifest('equiv', '1.0.0');
    const run = () => createPackage({ manifest, imagePath: paths.image, kernelPath: paths.kernel, initrdPath: paths.initrd, publisherKey, out: { repoDir: fx.repoDir }, threads });
    const created = await run();

    const seen = new Map<string, number>();
    const image = await refBlob(paths.image, IMAGE_CHUNKING, seen, DEFAULT_ZSTD_LEVEL);
    const kernel = await refBlob(paths.kernel, FILE_CHUNKING, seen, DEFAULT_ZSTD_LEVEL);
    const initrd = await refBlob(paths.initrd, FILE_CHUNKING, seen, DEFAULT_ZSTD_LEVEL);
    const reference = serialize(ManifestSchema.parse({ ...manifest, image: { ...manifest.image, ...image }, kernel, initrd }));
    t.true(image.chunks.length > 100, `a realistic number of chunks (${image.chunks.length})`);
    t.true(created.manifestBytes.equals(reference), 'manifest bytes identical to the reference implementation');

    // every chunk file is the zstd frame of the reference's raw bytes, at the same level
    const store = new ChunkStore(fx.repoDir);
    for (const c of [...image.chunks, ...kernel.chunks, ...initrd.chunks]) {
      const file = await readFile(store.pathOf(c.sha256));
      t.is(file.length, c.csize);
      decodeChunk(file, c, c.sha256); // throws on a wrong length or digest
    }
    t.is(created.stats.newChunks, seen.size, 'each distinct chunk is new exactly once');
    t.is(created.stats.chunks, image.chunks.length + kernel.chunks.length + initrd.chunks.length);

    // a rebuild finds everything in the store: nothing new, same bytes
    const again = await run();
    t.is(again.stats.newChunks, 0);
    t.is(again.stats.compressed, created.stats.compressed);
    t.true(again.manifestBytes.equals(reference));
  });
}

for (const threads of [0, 2]) {
  test(`a chunk that cannot be written fails createPackage with the cause (${threads} workers)`, async (t) => {
    const { fx, paths } = await setup(t);
    const publisherKey = await fx.keystore.privateKey(fx.keystore.find('publisher'));
    // a directory where the first chunk's file must go: not "already stored", not writable
    let first: Buffer | undefined;
    for await (const c of refChunkFile(paths.image, IMAGE_CHUNKING)) {
      first = c.data;
      break;
    }
    await mkdir(join(new ChunkStore(fx.repoDir).pathOf(sha256Hex(first!)), 'in-the-way'), { recursive: true });
    const err = await t.throwsAsync(
      createPackage({ manifest: baseManifest('equiv', '1.0.0'), imagePath: paths.image, kernelPath: paths.kernel, initrdPath: paths.initrd, publisherKey, out: { repoDir: fx.repoDir }, threads }),
    );
    t.regex(err!.message, /EISDIR|ENOTEMPTY|directory|is not a regular file; not replaced/i);
  });
}
