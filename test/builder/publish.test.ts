// The builder's --repo output: createPackage writes chunks straight into the repository's
// store (unsynced), then RepositoryWriter.addManifest re-verifies and syncs every chunk
// before the index may name the version. Those checks run several chunks at a time; a bad
// or missing chunk anywhere must still stop the publish with nothing indexed.
import test from 'ava';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createPackage, chunkPath, compressChunk, manifestChunks, packPath, writePack, ChunkStore, type Manifest } from '../../format/index.js';
import { makeRepo, makeImage, baseManifest, type Fixture } from '../helpers/repo.js';

async function built(t: import('ava').ExecutionContext, version: string): Promise<{ fx: Fixture; manifest: Manifest; manifestBytes: Buffer; signature: string }> {
  const fx = await makeRepo();
  t.teardown(() => fx.cleanup());
  const imagePath = join(fx.dir, 'disk.img');
  await makeImage(imagePath, { seed: version, size: 3 * 1024 * 1024 });
  const kernelPath = join(fx.dir, 'vmlinuz');
  await writeFile(kernelPath, Buffer.alloc(64 * 1024, 7));
  const created = await createPackage({
    manifest: baseManifest('tiny', version),
    imagePath,
    kernelPath,
    initrdPath: null,
    publisherKey: await fx.keystore.privateKey(fx.keystore.find('publisher')),
    out: { repoDir: fx.repoDir },
    zstdLevel: 1,
  });
  return { fx, ...created };
}

test('a build published into the repository: every chunk verified, the version indexed', async (t) => {
  const { fx, manifest, manifestBytes, signature } = await built(t, '1.0.0');
  t.true(manifestChunks(manifest).length > 20, 'enough chunks for several at a time');
  const r = await fx.writer.addManifest(manifestBytes, signature);
  t.is(r.version, '1.0.0');
  t.is((await fx.writer.readIndex()).images.tiny.versions['1.0.0'].manifest, r.manifestSha256);
  // the pack, built while the chunks were verified, is byte for byte what writePack makes of them
  t.true(r.pack);
  const ref = join(fx.dir, 'ref.pack');
  t.true(await writePack(ref, manifest, (c) => new ChunkStore(fx.repoDir).pathOf(c)));
  t.deepEqual(await readFile(join(fx.repoDir, packPath(r.manifestSha256))), await readFile(ref));
  t.false((await readdir(join(fx.repoDir, '.loopship'))).some((n) => n.startsWith('staging-')), 'no staging left');
});

test('a stored frame of the right content but another size: published, without a pack', async (t) => {
  const { fx, manifest, manifestBytes, signature } = await built(t, '1.0.0');
  const c = manifestChunks(manifest).find((x) => x.length > 8192)!;
  const raw = await readFile(join(fx.repoDir, chunkPath(c.sha256)));
  // the same bytes recompressed at another level: verifies, but the pack layout would be wrong
  const { decodeChunk } = await import('../../format/codec.js');
  const other = [19, 9, 5].map((l) => compressChunk(decodeChunk(raw, c, 'x'), l)).find((f) => f.length !== raw.length);
  if (!other) return t.pass('no level gives another size');
  await writeFile(join(fx.repoDir, chunkPath(c.sha256)), other);
  const r = await fx.writer.addManifest(manifestBytes, signature);
  t.false(r.pack);
  await t.throwsAsync(readFile(join(fx.repoDir, packPath(r.manifestSha256))));
  t.is((await fx.writer.readIndex()).images.tiny.versions['1.0.0'].manifest, r.manifestSha256);
});

test('a damaged chunk late in the list stops the publish; nothing is indexed', async (t) => {
  const { fx, manifest, manifestBytes, signature } = await built(t, '1.0.0');
  const chunks = manifestChunks(manifest);
  const bad = chunks[chunks.length - 2];
  // a valid zstd frame of the right length, wrong content: only the sha256 can tell
  await writeFile(join(fx.repoDir, chunkPath(bad.sha256)), compressChunk(Buffer.alloc(bad.length, 1), 1));
  const before = await readFile(join(fx.repoDir, 'index.json'));
  const err = await t.throwsAsync(fx.writer.addManifest(manifestBytes, signature));
  t.is((err as { code?: string }).code, 'DIGEST_MISMATCH');
  t.true(err!.message.includes(bad.sha256) || String((err as { where?: string }).where).includes(bad.sha256), err!.message);
  t.deepEqual(await readFile(join(fx.repoDir, 'index.json')), before);
  t.deepEqual(await readdir(join(fx.repoDir, 'packs')).catch(() => []), [], 'no pack of a refused version');
  t.false((await readdir(join(fx.repoDir, '.loopship'))).some((n) => n.startsWith('staging-')), 'no staging left');
});

test('a missing chunk stops the publish with the chunk named', async (t) => {
  const { fx, manifest, manifestBytes, signature } = await built(t, '1.0.0');
  const chunks = manifestChunks(manifest);
  const gone = chunks[Math.floor(chunks.length / 2)];
  await rm(join(fx.repoDir, chunkPath(gone.sha256)));
  const err = await t.throwsAsync(fx.writer.addManifest(manifestBytes, signature));
  t.is((err as { code?: string }).code, 'PACKAGE_INVALID');
  t.regex(String((err as { where?: string }).where), new RegExp(gone.sha256));
  t.deepEqual((await fx.writer.readIndex()).images, {});
});
