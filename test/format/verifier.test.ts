// Each way the verifier must refuse a repository: the error's code, and that its
// message names the file at fault.
import test, { type ExecutionContext } from 'ava';
import { readFile, writeFile, rm, truncate, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRepo, makePackage, publish, type Fixture } from '../helpers/repo.js';
import { RepoClient, createFetcher, serialize, chunkPath, manifestPath, RepositoryWriter, LIMITS, type Index, type Root } from '../../format/index.js';
import { Keystore, buildRoot, signRoot, signDetached, generateKey, readPrivateKey } from '../../keys/index.js';
import { publishRootFromKeystore } from '../../keys/cli.js';

async function published(opts: Parameters<typeof makeRepo>[0] = {}) {
  const fx = await makeRepo(opts);
  const pkg = await makePackage(fx);
  await publish(fx, pkg.tarPath, 'stable');
  return { fx, pkg };
}

async function client(fx: Fixture, opts: { lastIndexVersion?: number; now?: () => Date } = {}) {
  const fetcher = createFetcher(fx.repoDir);
  const root = await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored });
  return new RepoClient({ fetchers: [fetcher], trustedRoot: root, ...opts });
}

/** update + manifest + every chunk, as an install would. */
async function fullVerify(fx: Fixture, opts: Parameters<typeof client>[1] = {}) {
  const c = await client(fx, opts);
  await c.update();
  const { version } = c.resolve('tiny');
  const { manifest } = await c.manifest('tiny', version);
  for (const ch of manifest.image.chunks) await c.chunk(ch);
  return manifest;
}

async function rejects(t: ExecutionContext, p: Promise<unknown>, code: string, file: RegExp) {
  const err = (await t.throwsAsync(p)) as Error & { code?: string };
  t.is(err?.code, code, err?.message);
  t.regex(err?.message ?? '', file);
  return err;
}

async function signIndex(fx: Fixture, index: Index) {
  const bytes = serialize(index);
  await writeFile(join(fx.repoDir, 'index.json'), bytes);
  await writeFile(join(fx.repoDir, 'index.json.asc'), await signDetached(bytes, await fx.keystore.signingKeys('index')));
}

test('an untouched repository verifies', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const m = await fullVerify(fx);
  t.is(m.name, 'tiny');
});

test('tampered index: signature no longer matches', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const p = join(fx.repoDir, 'index.json');
  const before = await readFile(p, 'utf8');
  const after = before.replace(/"stable": ?"1\.0\.0"/, '"stable":  "1.0.0"'); // same JSON meaning, other bytes
  t.not(after, before);
  await writeFile(p, after);
  await rejects(t, fullVerify(fx), 'UNKNOWN_KEY', /index\.json/);
});

test('tampered manifest: digest differs from the index entry', async (t) => {
  const { fx, pkg } = await published();
  t.teardown(fx.cleanup);
  const idx = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8'));
  const p = join(fx.repoDir, manifestPath(idx.images.tiny.versions['1.0.0'].manifest));
  const text = await readFile(p, 'utf8');
  await writeFile(p, text.replace('"memory": 256', '"memory": 999'));
  await rejects(t, fullVerify(fx), 'DIGEST_MISMATCH', /manifests\/[0-9a-f]{64}\.json/);
  void pkg;
});

test('tampered chunk: sha256 of the decompressed bytes differs', async (t) => {
  const { fx, pkg } = await published();
  t.teardown(fx.cleanup);
  const { compressChunk } = await import('../../format/index.js');
  const c = pkg.manifest.image.chunks[1];
  await writeFile(join(fx.repoDir, chunkPath(c.sha256)), compressChunk(Buffer.alloc(c.length, 1)));
  await rejects(t, fullVerify(fx), 'DIGEST_MISMATCH', new RegExp(`chunks/${c.sha256.slice(0, 2)}/${c.sha256}`));
});

test('truncated chunk and truncated manifest are refused', async (t) => {
  const { fx, pkg } = await published();
  t.teardown(fx.cleanup);
  const c = pkg.manifest.image.chunks[0];
  await truncate(join(fx.repoDir, chunkPath(c.sha256)), 10);
  await rejects(t, fullVerify(fx), 'CHUNK_INVALID', new RegExp(c.sha256));
  const idx = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8'));
  await truncate(join(fx.repoDir, manifestPath(idx.images.tiny.versions['1.0.0'].manifest)), 100);
  await rejects(t, fullVerify(fx), 'SIZE_MISMATCH', /manifests\//);
});

test('index signed by a key the root does not know', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const stranger = await generateKey('stranger');
  const key = await readPrivateKey(stranger.privateArmored, undefined);
  const idx = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8'));
  idx.version += 10;
  const bytes = serialize(idx);
  await writeFile(join(fx.repoDir, 'index.json'), bytes);
  await writeFile(join(fx.repoDir, 'index.json.asc'), await signDetached(bytes, [key]));
  await rejects(t, fullVerify(fx), 'UNKNOWN_KEY', /index\.json.*no valid signature by any index key/);
});

test('manifest signed by a key that is not a publisher (the index key) is refused', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const idx = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8'));
  const p = join(fx.repoDir, manifestPath(idx.images.tiny.versions['1.0.0'].manifest));
  await writeFile(p + '.asc', await signDetached(await readFile(p), await fx.keystore.signingKeys('index')));
  await rejects(t, fullVerify(fx), 'UNKNOWN_KEY', /manifests\/.*publisher/);
});

test('expired index (freeze attack) is refused', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  // The index is signed now, valid for a week; a mirror keeps serving it.
  await new RepositoryWriter(fx.repoDir, { indexKeys: await fx.keystore.signingKeys('index'), expiresDays: 7 }).resign();
  const day = 86_400_000;
  await rejects(t, fullVerify(fx, { now: () => new Date(Date.now() + 8 * day) }), 'EXPIRED', /index\.json: index expired at/);
  // The same repository is fine for a client whose clock is inside the week.
  await t.notThrowsAsync(fullVerify(fx, { now: () => new Date(Date.now() + 6 * day) }));
});

test('an index older than the last one seen (rollback / replay) is refused', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  await rejects(t, fullVerify(fx, { lastIndexVersion: 5 }), 'ROLLBACK', /index\.json: index version 2 is older than version 5/);
  // An old but validly signed index replayed after a newer one was seen.
  const old = await readFile(join(fx.repoDir, 'index.json'));
  const oldSig = await readFile(join(fx.repoDir, 'index.json.asc'));
  const c = await client(fx);
  await c.update();
  await fx.writer.promote('tiny', 'testing', '1.0.0');
  await c.update();
  await writeFile(join(fx.repoDir, 'index.json'), old);
  await writeFile(join(fx.repoDir, 'index.json.asc'), oldSig);
  await rejects(t, c.update(), 'ROLLBACK', /index version 2 is older than version 3/);
});

test('manifest of another image under this image name (mix-and-match) is refused', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const other = await makePackage(fx, { name: 'other', version: '1.0.0', seed: 'o' });
  await publish(fx, other.tarPath);
  const idx = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8')) as Index;
  idx.images.tiny.versions['1.0.0'] = idx.images.other.versions['1.0.0'];
  idx.version++;
  await signIndex(fx, idx); // even a validly signed index cannot make one image pass for another
  await rejects(t, fullVerify(fx), 'MIX_AND_MATCH', /manifest is for other 1\.0\.0/);
});

test('oversized metadata is refused without reading it all', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  await appendFile(join(fx.repoDir, 'index.json'), Buffer.alloc(LIMITS.indexBytes + 1, 0x20));
  await rejects(t, fullVerify(fx), 'TOO_LARGE', /index\.json/);
});

test('malformed JSON, wrong types and unknown fields in signed metadata are named', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const idx = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8'));
  idx.version++;
  idx.surprise = true;
  idx.images.tiny.versions['1.0.0'].size = 'big';
  await signIndex(fx, idx);
  const err = await rejects(t, fullVerify(fx), 'METADATA_INVALID', /index\.json/);
  t.regex(err.message, /images\.tiny\.versions\.1\.0\.0\.size/);
  t.regex(err.message, /surprise/);
});

test('root rotation: accepted through the chain; refused with a missing link or wrong signers', async (t) => {
  const fx = await makeRepo({ rootKeys: 2, rootThreshold: 2 });
  t.teardown(fx.cleanup);
  const pkg = await makePackage(fx);
  await publish(fx, pkg.tarPath, 'stable');
  // Pin root v1 before the rotations, as an installed host would have.
  const c = await client(fx);
  await c.update();

  // v2: index key rotated, signed by both old root keys (which are still the root keys).
  const oldRoot = await fx.keystore.signingKeys('root');
  const oldIndex = fx.keystore.find('index');
  await fx.keystore.generate('index', 'index-2');
  await fx.keystore.retire(oldIndex.fingerprint);
  await publishRootFromKeystore(fx.keystore, fx.repoDir, undefined, oldRoot);
  const up = await c.update();
  t.is(up.root.version, 2);
  t.deepEqual(up.rootsAccepted, [2]);

  // v3 signed by only one of the two root keys: below threshold.
  const repository = (await fx.writer.readRoot()).repository;
  const root3 = await buildRoot(fx.keystore, 3, { repository });
  const one = (await fx.keystore.signingKeys('root')).slice(0, 1);
  const s3 = await signRoot(root3, one);
  await writeFile(join(fx.repoDir, 'root/3.json'), s3.bytes);
  await writeFile(join(fx.repoDir, 'root/3.json.asc'), s3.signature);
  await rejects(t, c.update(), 'SIGNATURE_THRESHOLD', /root\/3\.json.*only 1 valid root signature/);

  // v3 whose root keys are all new, signed only by the new keys: the old root never agreed.
  const fresh = await Keystore.init(join(fx.dir, 'evil-keys'), { rootKeys: 1 });
  const evil = await buildRoot(fresh, 3, { repository });
  const se = await signRoot(evil, await fresh.signingKeys('root'));
  await writeFile(join(fx.repoDir, 'root/3.json'), se.bytes);
  await writeFile(join(fx.repoDir, 'root/3.json.asc'), se.signature);
  await rejects(t, c.update(), 'UNKNOWN_KEY', /root\/3\.json.*not signed by the root keys of versions 2 and 3/);

  // A missing link: root/3 gone while root.json claims version 4.
  await rm(join(fx.repoDir, 'root/3.json'));
  await rm(join(fx.repoDir, 'root/3.json.asc'));
  const r4 = await buildRoot(fx.keystore, 4, { repository });
  const s4 = await signRoot(r4, await fx.keystore.signingKeys('root'));
  await writeFile(join(fx.repoDir, 'root/4.json'), s4.bytes);
  await writeFile(join(fx.repoDir, 'root/4.json.asc'), s4.signature);
  await writeFile(join(fx.repoDir, 'root.json'), s4.bytes);
  await rejects(t, c.update(), 'ROOT_CHAIN', /root\/3\.json is missing/);
});

test('a fresh host pinning only the fingerprint finds the root and walks the rotated chain', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const oldRoot = await fx.keystore.signingKeys('root');
  const old = fx.keystore.find('root');
  await fx.keystore.generate('root', 'root-2');
  await fx.keystore.retire(old.fingerprint);
  await publishRootFromKeystore(fx.keystore, fx.repoDir, undefined, oldRoot);
  const fetcher = createFetcher(fx.repoDir);
  const pinned = await RepoClient.pin(fetcher, { fingerprint: old.fingerprint.toUpperCase() });
  t.is(pinned.version, 1);
  const c = new RepoClient({ fetchers: [fetcher], trustedRoot: pinned });
  const up = await c.update();
  t.is(up.root.version, 2);
  t.false(up.root.roles.root.keys.includes(old.fingerprint));
  // And a host whose install media carries only the new key starts at version 2.
  const newKey = (await fx.keystore.publicKey(fx.keystore.find('root'))).armored;
  t.is((await RepoClient.pin(fetcher, { keyArmored: newKey })).version, 2);
  // A key that is no root key anywhere is refused.
  await t.throwsAsync(RepoClient.pin(fetcher, { keyArmored: (await generateKey('x')).publicArmored }), { message: /no root version lists the pinned key/ });
});

test('a reader racing a publish (new index.json, old .asc) verifies through the versioned copy', async (t) => {
  const { fx } = await published();
  t.teardown(fx.cleanup);
  const oldSig = await readFile(join(fx.repoDir, 'index.json.asc'));
  await fx.writer.promote('tiny', 'testing', '1.0.0');
  await writeFile(join(fx.repoDir, 'index.json.asc'), oldSig);
  const c = await client(fx);
  const up = await c.update();
  t.is(up.index.version, 3);
});

void RepositoryWriter;
void ({} as Root);
