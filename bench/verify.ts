// Verification cost (figures, not pass/fail): how long the client's metadata checks take
// (root chain, index, manifest signatures) and how fast chunks are decoded and hashed,
// against coreutils sha256sum over the same raw bytes.
//
//   node --import tsx bench/verify.ts [--size-mib 512]
import { execa } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Keystore, buildRoot, signRoot } from '../keys/index.js';
import { RepositoryWriter, RepoClient, createFetcher, createPackage, decodeChunk, compressChunk, sha256Hex } from '../format/index.js';
import { report, mibps } from './report.js';

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const SIZE = arg('size-mib', 512) * 2 ** 20;

const work = await mkdtemp(path.join(os.tmpdir(), 'loopship-bench-verify-'));
try {
  const keys = await Keystore.init(path.join(work, 'keys'));
  const root = await signRoot(await buildRoot(keys, 1), await keys.signingKeys('root'));
  const repo = path.join(work, 'repo');
  const writer = await RepositoryWriter.init(repo, root, { indexKeys: await keys.signingKeys('index') });
  // A compressible, non-trivial image: text-like lines with varying numbers.
  const img = path.join(work, 'disk.img');
  const block = Buffer.alloc(SIZE);
  for (let off = 0, i = 0; off < SIZE; i++) off += block.write(`line ${i} ${(i * 2654435761) % 1000003} lorem ipsum dolor sit amet\n`, off);
  await writeFile(img, block);
  await writeFile(path.join(work, 'k'), block.subarray(0, 1 << 20));
  const manifestBase = {
    type: 'loopship/manifest' as const, spec_version: 1 as const, name: 'bench', version: '1', arch: 'amd64' as const,
    build: { recipe_digest: 'a'.repeat(64), suite: 'bookworm', packages: [], built_at: new Date().toISOString(), builder: 'bench' },
    image: { fs: 'ext4' as const }, boot: { type: 'pvh' as const, cmdline: 'ro', ready_marker: 'X' }, xen: { memory: 256, vcpus: 1, network: { nics: 1 } }, settings: {},
  };
  const t0 = performance.now();
  const { manifest } = await createPackage({ manifest: manifestBase, imagePath: img, kernelPath: path.join(work, 'k'), initrdPath: null, publisherKey: await keys.privateKey(keys.find('publisher')), out: { tarPath: path.join(work, 'p.tar') } });
  const packMs = performance.now() - t0;
  await writer.addPackage(createReadStream(path.join(work, 'p.tar')));

  // Metadata: pin + root chain + index + manifest, repeated for a stable figure.
  const fetcher = createFetcher(repo);
  const pinned = await RepoClient.pin(fetcher, { keyArmored: (await keys.publicKey(keys.find('root'))).armored });
  const N = 20;
  const m0 = performance.now();
  for (let i = 0; i < N; i++) {
    const c = new RepoClient({ fetchers: [fetcher], trustedRoot: pinned });
    await c.update();
    await c.manifest('bench', '1');
  }
  const metaMs = (performance.now() - m0) / N;

  // Chunks: decode (zstd) + sha256 in-process, and sha256 alone, vs sha256sum.
  const compressed = manifest.image.chunks.map((c) => ({ c, z: compressChunk(block.subarray(c.offset, c.offset + c.length)) }));
  const raw = manifest.image.chunks.reduce((a, c) => a + c.length, 0);
  const d0 = performance.now();
  for (const { c, z } of compressed) decodeChunk(z, c, 'bench');
  const decodeMs = performance.now() - d0;
  const h0 = performance.now();
  for (const { c } of compressed) sha256Hex(block.subarray(c.offset, c.offset + c.length));
  const hashMs = performance.now() - h0;
  const s0 = performance.now();
  await execa('sha256sum', [img]);
  const sumMs = performance.now() - s0;

  await report('verify', 'Verification cost', [
    { what: 'metadata: root chain + index + manifest (ms per update)', loopship: metaMs, peer: '-', ratio: '-' },
    { what: 'chunk sha256 only (MiB/s)', loopship: mibps(raw, hashMs), peer: mibps(SIZE, sumMs), ratio: mibps(raw, hashMs) / mibps(SIZE, sumMs) },
    { what: 'chunk zstd decode + sha256 (MiB/s)', loopship: mibps(raw, decodeMs), peer: mibps(SIZE, sumMs), ratio: mibps(raw, decodeMs) / mibps(SIZE, sumMs) },
    { what: 'package: chunk + zstd + hash + sign (MiB/s of image)', loopship: mibps(SIZE, packMs), peer: '-', ratio: '-' },
  ], { chunks: manifest.image.chunks.length, imageMiB: SIZE / 2 ** 20, peer: 'coreutils sha256sum' });
} finally {
  await rm(work, { recursive: true, force: true });
}
