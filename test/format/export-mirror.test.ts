import test from 'ava';
import { createReadStream } from 'node:fs';
import { readFile, writeFile, cp } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRepo, makePackage, publish, serveDir } from '../helpers/repo.js';
import { exportPackage, mirrorRepository, readPackage, createFetcher, RepoClient, manifestChunks, RootChainError, packPath } from '../../format/index.js';
import { publishRootFromKeystore } from '../../keys/cli.js';

test('export with metadata: an offline receiver on an old root verifies the package and advances its trust', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const pkg = await makePackage(fx);
  await publish(fx, pkg.tarPath, 'stable');
  const fetcher = createFetcher(fx.repoDir);
  const oldRoot = await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored });
  // Rotate the publisher key after the receiver pinned root 1: it can only learn of it from the package.
  const signers = await fx.keystore.signingKeys('root');
  await fx.keystore.generate('publisher', 'second');
  await fx.keystore.retire(fx.keystore.find('publisher', 'default').fingerprint);
  await publishRootFromKeystore(fx.keystore, fx.repoDir, undefined, signers);
  const v2 = await makePackage(fx, { version: '2.0.0', publisher: 'second', seed: 'v2' });
  await publish(fx, v2.tarPath, 'stable');

  const out = join(fx.dir, 'export.tar');
  const server = await serveDir(fx.repoDir);
  t.teardown(server.close);
  const r = await exportPackage({ fetcher: createFetcher(server.url), pin: { keyArmored: fx.rootKeyArmored }, name: 'tiny', channel: 'stable', out, withMetadata: true });
  t.is(r.version, '2.0.0');

  const chunks: string[] = [];
  const res = await readPackage(createReadStream(out), { root: oldRoot, onChunk: async (sha) => void chunks.push(sha), lastIndexVersion: 2 });
  t.is(res.root.version, 2, 'trust advanced through the chain carried in the package');
  t.is(res.roots.length, 1);
  t.is(res.manifest.version, '2.0.0');
  t.is(chunks.length, manifestChunks(res.manifest).length);

  // Without the metadata, root 1 does not know the new publisher key: refused.
  const bare = join(fx.dir, 'bare.tar');
  await exportPackage({ fetcher, pin: { keyArmored: fx.rootKeyArmored }, name: 'tiny', version: '2.0.0', out: bare });
  await t.throwsAsync(readPackage(createReadStream(bare), { root: oldRoot, onChunk: async () => {} }), { message: /manifest\.json: no valid signature by any publisher key/ });
  // A receiver that saw a newer index refuses the package's older one.
  await t.throwsAsync(readPackage(createReadStream(out), { root: oldRoot, onChunk: async () => {}, lastIndexVersion: 99 }), { message: /index version \d+ is older than version 99/ });
});

test('mirror: copies and verifies, fetches only new chunks the second time, refuses a stale source', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const a = await makePackage(fx, { version: '1.0.0' });
  await publish(fx, a.tarPath, 'stable');
  const stale = join(fx.dir, 'stale');
  await cp(fx.repoDir, stale, { recursive: true });
  const server = await serveDir(fx.repoDir);
  t.teardown(server.close);
  const to = join(fx.dir, 'mirror');

  await t.throwsAsync(mirrorRepository({ from: createFetcher(server.url), to }), { message: /not a mirror yet/ });
  const first = await mirrorRepository({ from: createFetcher(server.url), to, pin: { keyArmored: fx.rootKeyArmored } });
  t.is(first.newChunks, first.chunks);

  const b = await makePackage(fx, { version: '1.0.1', patch: { offset: 40960, data: Buffer.alloc(4096, 9) } });
  await publish(fx, b.tarPath, 'stable');
  const second = await mirrorRepository({ from: createFetcher(server.url), to });
  t.is(second.indexVersion, 3);
  t.true(second.newChunks >= 1 && second.newChunks <= 2, `${second.newChunks} new chunks`);
  // packs are rebuilt on the mirror from the verified chunks: identical to the source's
  t.is(first.packs, 1);
  t.is(second.packs, 1);
  for (const v of Object.values((await fx.writer.readIndex()).images.tiny.versions)) {
    t.true((await readFile(join(to, packPath(v.manifest)))).equals(await readFile(join(fx.repoDir, packPath(v.manifest)))));
  }

  // The mirror itself is a valid repository for clients.
  const mf = createFetcher(to);
  const c = new RepoClient({ fetchers: [mf], trustedRoot: await RepoClient.pin(mf, { keyArmored: fx.rootKeyArmored }) });
  await c.update();
  const { manifest } = await c.manifest('tiny', '1.0.1');
  for (const ch of manifest.image.chunks) await c.chunk(ch);

  // A source that went backwards (index version 2 < 3 already mirrored) is refused; the mirror is unchanged.
  const before = await readFile(join(to, 'index.json'));
  await t.throwsAsync(mirrorRepository({ from: createFetcher(stale), to }), { code: 'ROLLBACK' } as never);
  t.true((await readFile(join(to, 'index.json'))).equals(before));
  void writeFile;
  void RootChainError;
});
