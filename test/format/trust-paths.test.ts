// The trust paths a mutation run found unguarded: each test crafts the one file a
// hostile or broken repository would serve and asserts the error's code and that its
// message names that file, so that deleting or weakening the check fails the test.
// Every test that expects a refusal also shows (where cheap) that the same fixture is
// accepted once the one fault is removed, so it cannot pass for another reason.
import test, { type ExecutionContext } from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { makeRepo, makePackage, publish, baseManifest, serveDir, type Fixture } from '../helpers/repo.js';
import {
  RepoClient, HttpFetcher, createFetcher, serialize, parseMetadata, verifyRootTransition, sha256Hex, manifestPath,
  type Index, type Root, type Manifest,
} from '../../format/index.js';
import { Keystore, buildRoot, signRoot, signDetached, generateKey, type PrivateKey } from '../../keys/index.js';

const DAY = 86_400_000;

async function rejects(t: ExecutionContext, p: Promise<unknown>, code: string, file: RegExp) {
  const err = (await t.throwsAsync(p)) as Error & { code?: string };
  t.is(err?.code, code, err?.message);
  t.regex(err?.message ?? '', file);
  return err;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

async function client(fx: Fixture, opts: { now?: () => Date; lastIndexVersion?: number } = {}) {
  const fetcher = createFetcher(fx.repoDir);
  const root = await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored });
  return new RepoClient({ fetchers: [fetcher], trustedRoot: root, ...opts });
}

async function writeSigned(fx: Fixture, path: string, bytes: Buffer, signature: string) {
  await writeFile(join(fx.repoDir, path), bytes);
  await writeFile(join(fx.repoDir, path + '.asc'), signature);
}

/** Writes root/<v>.json (and root.json) signed by `keys`. */
async function writeRoot(fx: Fixture, root: Root, keys: PrivateKey[], opts: { alsoRootJson?: boolean } = {}) {
  const s = await signRoot(root, keys);
  await writeSigned(fx, `root/${root.version}.json`, s.bytes, s.signature);
  if (opts.alsoRootJson ?? true) await writeSigned(fx, 'root.json', s.bytes, s.signature);
  return s;
}

async function readIndex(fx: Fixture): Promise<Index> {
  return JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8')) as Index;
}

async function signIndex(fx: Fixture, index: Index) {
  const bytes = serialize(index);
  await writeSigned(fx, 'index.json', bytes, await signDetached(bytes, await fx.keystore.signingKeys('index')));
}

const otherRepository = (than: string) => {
  let id = randomBytes(16).toString('hex');
  while (id === than) id = randomBytes(16).toString('hex');
  return id;
};

// ---------- 1. pin: the pinned key itself must have signed ----------

test('pin refuses a root that lists the pinned key but is signed only by another root key (key file and fingerprint)', async (t) => {
  const fx = await makeRepo({ rootKeys: 2, rootThreshold: 1 });
  t.teardown(fx.cleanup);
  const [a, b] = fx.keystore.entries({ role: 'root' });
  const keyB = await fx.keystore.privateKey(b);
  const armoredA = (await fx.keystore.publicKey(a)).armored;
  const fetcher = createFetcher(fx.repoDir);
  // control: signed by both (as makeRepo does), A's pin is accepted
  t.is((await RepoClient.pin(fetcher, { keyArmored: armoredA })).version, 1);

  // root/1.json signed by B only: the root role's threshold (1) is met, but A never agreed
  const bytes = await readFile(join(fx.repoDir, 'root/1.json'));
  await writeFile(join(fx.repoDir, 'root/1.json.asc'), await signDetached(bytes, [keyB]));
  await rejects(t, RepoClient.pin(fetcher, { keyArmored: armoredA }), 'UNKNOWN_KEY', /root\/1\.json: no valid signature by any pinned root key/);
  await rejects(t, RepoClient.pin(fetcher, { fingerprint: a.fingerprint }), 'UNKNOWN_KEY', /root\/1\.json: no valid signature by any pinned root key/);
  // B's own pin is fine: the refusal is about who signed, not about the file
  t.is((await RepoClient.pin(fetcher, { fingerprint: b.fingerprint })).version, 1);
});

test('pin refuses a root that the pinned key signed but that misses the root threshold', async (t) => {
  const fx = await makeRepo({ rootKeys: 2, rootThreshold: 2 });
  t.teardown(fx.cleanup);
  const [a] = fx.keystore.entries({ role: 'root' });
  const bytes = await readFile(join(fx.repoDir, 'root/1.json'));
  await writeFile(join(fx.repoDir, 'root/1.json.asc'), await signDetached(bytes, [await fx.keystore.privateKey(a)]));
  await rejects(t, RepoClient.pin(createFetcher(fx.repoDir), { fingerprint: a.fingerprint }), 'SIGNATURE_THRESHOLD', /root\/1\.json: only 1 valid root signature\(s\), threshold is 2/);
});

// ---------- 2. rotation: old AND new root keys ----------

test('a rotation signed by the old root keys only, or by the new root keys only, is refused; by both it is accepted', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const c = await client(fx);
  await c.update();
  const repository = c.trustedRoot.repository;
  const oldKeys = await fx.keystore.signingKeys('root');
  const old = fx.keystore.find('root');
  await fx.keystore.generate('root', 'root-2');
  await fx.keystore.retire(old.fingerprint);
  const newKeys = await fx.keystore.signingKeys('root');
  const root2 = await buildRoot(fx.keystore, 2, { repository });
  t.false(root2.roles.root.keys.includes(old.fingerprint));

  await writeRoot(fx, root2, oldKeys);
  await rejects(t, c.update(), 'UNKNOWN_KEY', /root\/2\.json: root version 2 is not signed by the root keys of versions 1 and 2: no valid signature by any root key/);
  t.is(c.trustedRoot.version, 1);

  await writeRoot(fx, root2, newKeys);
  await rejects(t, c.update(), 'UNKNOWN_KEY', /root\/2\.json: root version 2 is not signed by the root keys of versions 1 and 2: no valid signature by any root key/);
  t.is(c.trustedRoot.version, 1);

  await writeRoot(fx, root2, [...oldKeys, ...newKeys]);
  const up = await c.update();
  t.deepEqual(up.rootsAccepted, [2]);
});

// ---------- 3. a key entry that holds another key ----------

test('a root whose key entry under fingerprint F holds another key is refused, naming that root file', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const c = await client(fx);
  await c.update();
  const repository = c.trustedRoot.repository;
  const publisher = fx.keystore.find('publisher');
  const stranger = await generateKey('stranger');
  // The publisher entry is the one no update() step reads: only the acceptance check can see it.
  const root2 = await buildRoot(fx.keystore, 2, { repository });
  root2.keys[publisher.fingerprint].public_key = stranger.publicArmored;
  await writeRoot(fx, root2, await fx.keystore.signingKeys('root'));
  await rejects(t, c.update(), 'METADATA_INVALID', new RegExp(`root/2\\.json: key listed as ${publisher.fingerprint} has fingerprint ${stranger.fingerprint.toLowerCase()}`));
  t.is(c.trustedRoot.version, 1);
});

test('pin refuses a root whose key entry under F holds another key (the pinned root and any other role)', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const root1 = parseMetadata('root', await readFile(join(fx.repoDir, 'root/1.json')), 'root/1.json');
  const publisher = fx.keystore.find('publisher');
  const index = fx.keystore.find('index');
  const rootKey = fx.keystore.find('root');
  const stranger = await generateKey('stranger');
  const fetcher = createFetcher(fx.repoDir);
  const rootKeys = await fx.keystore.signingKeys('root');

  // another role's entry (publisher) is wrong: the pin checks every key of the root it accepts
  const bad = structuredClone(root1);
  bad.keys[publisher.fingerprint].public_key = stranger.publicArmored;
  await writeRoot(fx, bad, rootKeys, { alsoRootJson: false });
  await rejects(t, RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored }), 'METADATA_INVALID', new RegExp(`root/1\\.json: key listed as ${publisher.fingerprint} has fingerprint ${stranger.fingerprint.toLowerCase()}`));

  // the pinned fingerprint's own entry holds the index key: a fingerprint pin must not take it
  const bad2 = structuredClone(root1);
  bad2.keys[rootKey.fingerprint].public_key = (await fx.keystore.publicKey(index)).armored;
  await writeRoot(fx, bad2, rootKeys, { alsoRootJson: false });
  await rejects(t, RepoClient.pin(fetcher, { fingerprint: rootKey.fingerprint }), 'METADATA_INVALID', new RegExp(`root/1\\.json: key listed as ${rootKey.fingerprint} has fingerprint ${index.fingerprint}`));

  // control: the untouched root pins
  await writeRoot(fx, root1, rootKeys, { alsoRootJson: false });
  t.is((await RepoClient.pin(fetcher, { fingerprint: rootKey.fingerprint })).version, 1);
});

// ---------- 4. root expiry ----------

test('an expired root with no newer one is refused (EXPIRED); a newer root in force takes over', async (t) => {
  const fx = await makeRepo({ expiresDays: 3650 }); // the index outlives the root (1 year)
  t.teardown(fx.cleanup);
  const root1 = parseMetadata('root', await readFile(join(fx.repoDir, 'root.json')), 'root.json');
  const later = new Date(new Date(root1.expires).getTime() + DAY);
  const c = await client(fx, { now: () => later });
  await rejects(t, c.update(), 'EXPIRED', new RegExp(`root\\.json: root expired at ${esc(root1.expires)}`));
  // a client whose clock is before the expiry is fine
  await t.notThrowsAsync((await client(fx, { now: () => new Date(new Date(root1.expires).getTime() - DAY) })).update());

  // root 2, in force at `later`: the walk leaves the expired root behind
  const root2 = await buildRoot(fx.keystore, 2, { repository: root1.repository, now: later });
  await writeRoot(fx, root2, await fx.keystore.signingKeys('root'));
  const up = await c.update();
  t.is(up.root.version, 2);

  // ...and once root 2 has expired too, trust ends on an expired root: refused, naming root/2.json
  const later2 = new Date(new Date(root2.expires).getTime() + DAY);
  const c2 = await client(fx, { now: () => later2 });
  await rejects(t, c2.update(), 'EXPIRED', new RegExp(`root/2\\.json: root expired at ${esc(root2.expires)}`));
});

// ---------- 5. index from a newer root ----------

test('an index signed under a newer root version than the trusted one is refused (ROOT_CHAIN)', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const c = await client(fx);
  const idx = await readIndex(fx);
  idx.version++;
  idx.root_version = c.trustedRoot.version + 1;
  await signIndex(fx, idx);
  await rejects(t, c.update(), 'ROOT_CHAIN', new RegExp(`index\\.json: index was signed under root version ${idx.root_version}, newer than the trusted root ${c.trustedRoot.version}`));
  // control: the same index under the trusted root version
  idx.root_version = c.trustedRoot.version;
  await signIndex(fx, idx);
  t.is((await c.update()).index.version, idx.version);
});

// ---------- 6. mix-and-match: version and arch ----------

test('a manifest of another version or arch than the index entry (mix-and-match) is refused', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const pkg = await makePackage(fx);
  await publish(fx, pkg.tarPath, 'stable');
  const idx = await readIndex(fx);
  const entry = idx.images.tiny.versions['1.0.0'];
  // 2.0.0 names 1.0.0's (validly signed) manifest; 1.0.0 claims another arch
  idx.images.tiny.versions['2.0.0'] = { ...entry };
  idx.images.tiny.versions['1.0.0'] = { ...entry, arch: 'arm64' };
  idx.version++;
  await signIndex(fx, idx);
  const c = await client(fx);
  await c.update();
  const where = esc(manifestPath(entry.manifest));
  await rejects(t, c.manifest('tiny', '2.0.0'), 'MIX_AND_MATCH', new RegExp(`${where}: manifest is for tiny 1\\.0\\.0 \\(amd64\\), the index entry is tiny 2\\.0\\.0 \\(amd64\\)`));
  await rejects(t, c.manifest('tiny', '1.0.0'), 'MIX_AND_MATCH', new RegExp(`${where}: manifest is for tiny 1\\.0\\.0 \\(amd64\\), the index entry is tiny 1\\.0\\.0 \\(arm64\\)`));
  // control: the entry as published verifies
  idx.images.tiny.versions['1.0.0'] = entry;
  idx.version++;
  await signIndex(fx, idx);
  await c.update();
  t.is((await c.manifest('tiny', '1.0.0')).manifest.version, '1.0.0');
});

// ---------- 7. manifest chunks in the schema; a root link holding another version ----------

function manifestWith(image: { size: number; chunks: { offset: number; length: number }[] }, kernel: { size: number; chunks: { offset: number; length: number }[] }): Manifest {
  const chunk = (c: { offset: number; length: number }, i: number) => ({ ...c, sha256: sha256Hex(Buffer.from(`chunk ${i}`)), csize: 100 });
  const base = baseManifest() as unknown as Record<string, unknown>;
  return {
    ...base,
    image: { fs: 'ext4', size: image.size, chunks: image.chunks.map(chunk) },
    kernel: { size: kernel.size, sha256: sha256Hex(Buffer.from('kernel')), chunks: kernel.chunks.map(chunk) },
    initrd: null,
  } as unknown as Manifest;
}

test('the manifest schema refuses overlapping chunks and a chunk past the blob end', (t) => {
  const where = 'manifests/' + 'f'.repeat(64) + '.json';
  const ok = manifestWith({ size: 16384, chunks: [{ offset: 0, length: 8192 }, { offset: 8192, length: 8192 }] }, { size: 1000, chunks: [{ offset: 0, length: 600 }, { offset: 600, length: 400 }] });
  t.is(parseMetadata('manifest', serialize(ok), where).image.chunks.length, 2); // control
  const cases: [string, Manifest, RegExp][] = [
    ['image overlap', manifestWith({ size: 16384, chunks: [{ offset: 0, length: 8192 }, { offset: 4096, length: 8192 }] }, { size: 1000, chunks: [] }), /image\.chunks\.1\.offset: chunk overlaps the previous one \(offset 4096 < 8192\)/],
    ['image past end', manifestWith({ size: 12288, chunks: [{ offset: 0, length: 4096 }, { offset: 8192, length: 8192 }] }, { size: 1000, chunks: [] }), /image\.chunks\.1: chunk runs past the end \(8192\+8192 > 12288\)/],
    ['kernel overlap', manifestWith({ size: 4096, chunks: [] }, { size: 1000, chunks: [{ offset: 0, length: 600 }, { offset: 599, length: 401 }] }), /kernel\.chunks\.1\.offset: chunk overlaps the previous one \(offset 599 < 600\)/],
    ['kernel past end', manifestWith({ size: 4096, chunks: [] }, { size: 1000, chunks: [{ offset: 0, length: 1001 }] }), /kernel\.chunks\.0: chunk runs past the end \(0\+1001 > 1000\)/],
  ];
  for (const [what, m, issue] of cases) {
    const err = t.throws(() => parseMetadata('manifest', serialize(m), where), undefined, what) as Error & { code?: string };
    t.is(err?.code, 'METADATA_INVALID', what);
    t.regex(err?.message ?? '', new RegExp(`^${esc(where)}: invalid manifest metadata`), what);
    t.regex(err?.message ?? '', issue, what);
  }
});

test('a root link (root/N.json) holding another version is refused (ROOT_CHAIN), in the walk and in the pin', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const c = await client(fx);
  await c.update();
  const repository = c.trustedRoot.repository;
  const rootKeys = await fx.keystore.signingKeys('root');
  // root/2.json holds a validly signed root version 3
  const s3 = await signRoot(await buildRoot(fx.keystore, 3, { repository }), rootKeys);
  await writeSigned(fx, 'root/2.json', s3.bytes, s3.signature);
  await rejects(t, c.update(), 'ROOT_CHAIN', /root\/2\.json: file holds root version 3, expected 2/);
  t.is(c.trustedRoot.version, 1);

  // the transition itself refuses a version that does not follow, whoever fetched it
  const r3 = parseMetadata('root', s3.bytes, 'root/3.json');
  await rejects(t, verifyRootTransition(c.trustedRoot, r3, s3.bytes, s3.signature, 'root/3.json'), 'ROOT_CHAIN', /root\/3\.json: root version 3 does not follow the trusted version 1/);

  // a fresh host: root/1.json holding a version 2 (signed by the pinned key) is no version 1
  const s2 = await signRoot(await buildRoot(fx.keystore, 2, { repository }), rootKeys);
  await writeSigned(fx, 'root/1.json', s2.bytes, s2.signature);
  await rejects(t, RepoClient.pin(createFetcher(fx.repoDir), { keyArmored: fx.rootKeyArmored }), 'ROOT_CHAIN', /root\/1\.json: file holds root version 2, expected 1/);
});

// ---------- 8. repository ids ----------

test('an index of another repository (same keys) is refused (WRONG_REPOSITORY)', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const c = await client(fx);
  const idx = await readIndex(fx);
  const theirs = otherRepository(c.trustedRoot.repository);
  idx.repository = theirs;
  idx.version++;
  await signIndex(fx, idx);
  await rejects(t, c.update(), 'WRONG_REPOSITORY', new RegExp(`index\\.json: index version ${idx.version} belongs to repository ${theirs}, not to the trusted repository ${c.trustedRoot.repository}`));
});

test('a root N+1 of another repository (same keys) is refused (WRONG_REPOSITORY), naming root/2.json', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const c = await client(fx);
  await c.update();
  const ours = c.trustedRoot.repository;
  const theirs = otherRepository(ours);
  await writeRoot(fx, await buildRoot(fx.keystore, 2, { repository: theirs }), await fx.keystore.signingKeys('root'));
  await rejects(t, c.update(), 'WRONG_REPOSITORY', new RegExp(`root/2\\.json: root version 2 belongs to repository ${theirs}, not to the trusted repository ${ours}`));
  t.is(c.trustedRoot.version, 1);
  // control: the same root with our id is accepted
  await writeRoot(fx, await buildRoot(fx.keystore, 2, { repository: ours }), await fx.keystore.signingKeys('root'));
  t.is((await c.update()).root.version, 2);
});

test('a root of another repository is refused even by a second store with the same id: keys decide, ids do not', async (t) => {
  // guards the order of checks: a foreign store's root with OUR id fails on signatures
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const c = await client(fx);
  await c.update();
  const fresh = await Keystore.init(join(fx.dir, 'other-keys'));
  await writeRoot(fx, await buildRoot(fresh, 2, { repository: c.trustedRoot.repository }), await fresh.signingKeys('root'));
  await rejects(t, c.update(), 'UNKNOWN_KEY', /root\/2\.json: root version 2 is not signed by the root keys of versions 1 and 2/);
});

// ---------- 9. the HTTP fetcher's Range answers ----------

test('the HTTP fetcher refuses a 206 whose Content-Range is not the range asked for', async (t) => {
  const body = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  const server = await serveDir('/nonexistent', async (req, res) => {
    const m = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
    if (!m) return res.writeHead(400).end(), true;
    let [s, e] = [Number(m[1]), m[2] ? Number(m[2]) : body.length - 1];
    if (req.url === '/wrong-start') s -= 10; // the right end, an earlier start: every byte shifted
    if (req.url === '/wrong-end') e += 1;
    if (req.url === '/no-range') return res.writeHead(206, { 'content-length': String(e - s + 1) }).end(body.subarray(s, e + 1)), true;
    if (req.url === '/whole') return res.writeHead(200, { 'content-length': String(body.length) }).end(body), true;
    res.writeHead(206, { 'content-range': `bytes ${s}-${e}/${body.length}`, 'content-length': String(e - s + 1) }).end(body.subarray(s, e + 1));
    return true;
  });
  t.teardown(server.close);
  const f = new HttpFetcher(server.url, { baseTimeoutMs: 1500, idleTimeoutMs: 1000 });
  t.teardown(() => f.close());
  // the limit is generous (the whole file fits), so only the Content-Range check can refuse
  const read = async (path: string, range: { start: number; end?: number } = { start: 20, end: 30 }) => {
    const chunks: Buffer[] = [];
    for await (const part of await f.stream(path, body.length, range)) chunks.push(part as Buffer);
    return Buffer.concat(chunks);
  };
  // controls: an honest server, closed and open-ended ranges
  t.deepEqual(await read('good'), body.subarray(20, 30));
  t.deepEqual(await read('good', { start: 20 }), body.subarray(20));
  const url = esc(server.url);
  await rejects(t, read('wrong-start'), 'FETCH_FAILED', new RegExp(`^${url}/wrong-start: Content-Range "bytes 10-29/100" does not answer bytes=20-29$`));
  await rejects(t, read('wrong-start', { start: 20 }), 'FETCH_FAILED', new RegExp(`^${url}/wrong-start: Content-Range "bytes 10-99/100" does not answer bytes=20-$`));
  await rejects(t, read('wrong-end'), 'FETCH_FAILED', new RegExp(`^${url}/wrong-end: Content-Range "bytes 20-30/100" does not answer bytes=20-29$`));
  await rejects(t, read('no-range'), 'FETCH_FAILED', new RegExp(`^${url}/no-range: Content-Range null does not answer bytes=20-29$`));
  await rejects(t, read('whole'), 'FETCH_FAILED', new RegExp(`^${url}/whole: HTTP 200 \\(expected 206\\)$`));
});

void ({} as Root);
