import test from 'ava';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRepo, makePackage, publish, serveDir } from '../helpers/repo.js';
import { RepoClient, createFetcher, manifestChunks, IMAGE_CHUNKING, BLOCK_SIZE, type Fetcher } from '../../format/index.js';

async function verifyAll(fetcher: Fetcher, rootKeyArmored: string) {
  const root = await RepoClient.pin(fetcher, { keyArmored: rootKeyArmored });
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: root });
  const { index } = await client.update();
  const { version } = client.resolve('tiny');
  const { manifest } = await client.manifest('tiny', version);
  const image = Buffer.alloc(manifest.image.size);
  for (const c of manifest.image.chunks) (await client.chunk(c)).copy(image, c.offset);
  return { index, manifest, image };
}

test('a package written, published and read back verifies and reproduces the image byte for byte', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const pkg = await makePackage(fx);
  const res = await publish(fx, pkg.tarPath, 'stable');
  t.is(res.name, 'tiny');
  t.is(res.indexVersion, 2);
  t.true(res.newChunks > 0);

  const original = await readFile(pkg.imagePath);
  for (const fetcher of [createFetcher(fx.repoDir)]) {
    const { index, manifest, image } = await verifyAll(fetcher, fx.rootKeyArmored);
    t.is(index.images.tiny.channels.stable, '1.0.0');
    t.true(image.equals(original));
    // The zero hole in the middle third is not stored.
    const stored = manifest.image.chunks.reduce((a, c) => a + c.length, 0);
    t.true(stored <= (2 * original.length) / 3 + BLOCK_SIZE, `stored ${stored} of ${original.length}`);
    for (const c of manifest.image.chunks) {
      t.is(c.offset % BLOCK_SIZE, 0);
      t.true(c.length <= IMAGE_CHUNKING.maxBlocks * BLOCK_SIZE);
    }
  }
  const server = await serveDir(fx.repoDir);
  t.teardown(server.close);
  const { image } = await verifyAll(createFetcher(server.url), fx.rootKeyArmored);
  t.true(image.equals(original));
});

test('publishing the same package twice is idempotent; a different manifest for the same version is refused', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const a = await makePackage(fx);
  await publish(fx, a.tarPath);
  const again = await publish(fx, a.tarPath);
  t.true(again.unchanged);
  const b = await makePackage(fx, { seed: 'other' });
  const err = await t.throwsAsync(publish(fx, b.tarPath));
  t.is((err as { code?: string }).code, 'CONFLICT');
  t.regex(err!.message, /already published/);
});

test('a one-block change in a second version shares almost every chunk with the first', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const v1 = await makePackage(fx, { version: '1.0.0' });
  const v2 = await makePackage(fx, { version: '1.0.1', patch: { offset: 100 * BLOCK_SIZE, data: Buffer.alloc(BLOCK_SIZE, 0xab) } });
  await publish(fx, v1.tarPath);
  const r2 = await publish(fx, v2.tarPath);
  const c1 = new Set(manifestChunks(v1.manifest).map((c) => c.sha256));
  const c2 = manifestChunks(v2.manifest);
  const fresh = c2.filter((c) => !c1.has(c.sha256));
  t.true(fresh.length >= 1 && fresh.length <= 2, `${fresh.length} new chunks`);
  t.is(r2.newChunks, fresh.length);
});

test('concurrent publishers both land and the index names every manifest', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const pkgs = await Promise.all(['1.0.0', '1.1.0', '1.2.0'].map((version, i) => makePackage(fx, { version, seed: `s${i}` })));
  // A second writer object on the same directory, as a second process would have.
  const { RepositoryWriter } = await import('../../format/index.js');
  const other = new RepositoryWriter(fx.repoDir, { indexKeys: await fx.keystore.signingKeys('index') });
  const { createReadStream } = await import('node:fs');
  await Promise.all([publish(fx, pkgs[0].tarPath), other.addPackage(createReadStream(pkgs[1].tarPath)), publish(fx, pkgs[2].tarPath)]);
  const index = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8'));
  t.deepEqual(Object.keys(index.images.tiny.versions).sort(), ['1.0.0', '1.1.0', '1.2.0']);
  t.is(index.version, 4);
  for (const v of Object.values(index.images.tiny.versions) as { manifest: string }[]) {
    await t.notThrowsAsync(stat(join(fx.repoDir, 'manifests', `${v.manifest}.json`)));
  }
});
