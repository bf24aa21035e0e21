// The builder's --repo output: createPackage writes chunks straight into the repository's
// store (unsynced), then RepositoryWriter.addManifest re-verifies and syncs every chunk
// before the index may name the version. Those checks run several chunks at a time; a bad
// or missing chunk anywhere must still stop the publish with nothing indexed.
import test from 'ava';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createPackage, chunkPath, compressChunk, manifestChunks, type Manifest } from '../../format/index.js';
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
