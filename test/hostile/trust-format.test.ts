// The trust boundary at the format level: signatures judged at the verifier's clock, a
// root's keys, what mirrors store, repository ids. Each test failed on the code before its
// fix. RepoClient against real signed repository directories; no host (trust-boundary.test.ts
// has those), so this file is fast enough for a mutation run (npm run mutation).
import test, { type ExecutionContext } from 'ava';
import { writeFile, readFile, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import type * as OpenPGP from 'openpgp';
import { makeRepo, type Fixture } from '../helpers/repo.js';
import { publishRootFromKeystore } from '../../keys/cli.js';
import { RepoClient, createFetcher, serialize, sigPath, rootHistoryPath, mirrorRepository, readPackage, type Root, type Index } from '../../format/index.js';
import tar from 'tar-stream';
import { readPublicKey, fingerprintOf, signRoot, buildRoot, generateKey } from '../../keys/index.js';
import { hostileServer } from './harness.js';

const openpgp = (): Promise<typeof OpenPGP> => import('openpgp');
const DAY = 86_400_000;

async function rejects(t: ExecutionContext, p: Promise<unknown>, code: string, message: RegExp) {
  const err = (await t.throwsAsync(p)) as Error & { code?: string };
  t.is(err?.code, code, err?.message);
  t.regex(err?.message ?? '', message);
  return err;
}

// ---------- signatures judged at the verifier's clock ----------

/** A repository whose root version 2 adds `key` as an index key (threshold 1): what a rotation that kept an old key looks like. */
async function repoWithIndexKey(publicArmored: string): Promise<{ fx: Fixture; client: () => Promise<RepoClient> }> {
  const fx = await makeRepo();
  const root1 = await fx.writer.readRoot();
  const fpr = fingerprintOf(await readPublicKey(publicArmored));
  const root2: Root = {
    ...root1,
    version: 2,
    keys: { ...root1.keys, [fpr]: { name: 'index:old', public_key: publicArmored } },
    roles: { ...root1.roles, index: { keys: [...root1.roles.index.keys, fpr], threshold: 1 } },
  };
  const signed = await signRoot(root2, await fx.keystore.signingKeys('root'));
  await fx.writer.addRoot(signed.bytes, signed.signature);
  const client = async () => {
    const f = createFetcher(fx.repoDir);
    return new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }) });
  };
  return { fx, client };
}

/** index.json one version up, signed by `key` with the creation time `date` (the signer's word). */
async function indexSignedAt(fx: Fixture, key: OpenPGP.PrivateKey, date: Date): Promise<void> {
  const pgp = await openpgp();
  const index = await fx.writer.readIndex();
  const bytes = serialize({ ...index, version: index.version + 1 });
  const signature = await pgp.sign({ message: await pgp.createMessage({ binary: bytes }), signingKeys: key, detached: true, date, format: 'armored' });
  await writeFile(join(fx.repoDir, 'index.json'), bytes);
  await writeFile(join(fx.repoDir, 'index.json.asc'), signature as string);
}

test('an index key that expired does not verify a signature backdated into its validity', async (t) => {
  const pgp = await openpgp();
  const created = new Date(Date.now() - 10 * DAY);
  const { privateKey, publicKey } = await pgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [{ name: 'old index' }], date: created, keyExpirationTime: DAY / 1000, format: 'object' });
  const { fx, client } = await repoWithIndexKey(publicKey.armor());
  t.teardown(fx.cleanup);
  await indexSignedAt(fx, privateKey, new Date(created.getTime() + 3600_000));
  await rejects(t, (await client()).update(), 'UNKNOWN_KEY', /index\.json: no valid signature by any index key .*is not valid at/);
});

test('an index key revoked as "superseded" does not verify a signature dated before the revocation', async (t) => {
  const pgp = await openpgp();
  const created = new Date(Date.now() - 10 * DAY);
  const { privateKey } = await pgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [{ name: 'old index' }], date: created, format: 'object' });
  const { publicKey: revoked } = await pgp.revokeKey({ key: privateKey, reasonForRevocation: { flag: pgp.enums.reasonForRevocation.keySuperseded }, date: new Date(Date.now() - DAY), format: 'object' });
  const { fx, client } = await repoWithIndexKey(revoked.armor());
  t.teardown(fx.cleanup);
  await indexSignedAt(fx, privateKey, new Date(Date.now() - 5 * DAY));
  await rejects(t, (await client()).update(), 'UNKNOWN_KEY', /index\.json: no valid signature by any index key .*revoked/i);
});

test('a signature created in the future (beyond the clock skew) is refused; within the skew it verifies', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const [key] = await fx.keystore.signingKeys('index');
  const client = async () => {
    const f = createFetcher(fx.repoDir);
    return new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }) });
  };
  await indexSignedAt(fx, key, new Date(Date.now() + DAY));
  await rejects(t, (await client()).update(), 'UNKNOWN_KEY', /index\.json: .*creation time is in the future/i);
  await indexSignedAt(fx, key, new Date(Date.now() + 2 * 60_000));
  t.is((await (await client()).update()).index.version, (await fx.writer.readIndex()).version);
});

// ---------- a root's keys, named where they are listed ----------

test('a root listing one key under two fingerprints is refused, naming root/2.json', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const root1 = await fx.writer.readRoot();
  const other = fingerprintOf(await readPublicKey((await generateKey('other')).publicArmored));
  const rootKey = root1.roles.root.keys[0];
  // the root key's public key listed again under another fingerprint, used by the index role
  const root2: Root = {
    ...root1, version: 2,
    keys: { ...root1.keys, [other]: { name: 'index:twin', public_key: root1.keys[rootKey].public_key } },
    roles: { ...root1.roles, index: { keys: [...root1.roles.index.keys, other], threshold: 1 } },
  };
  const signed = await signRoot(root2, await fx.keystore.signingKeys('root'));
  for (const [f, data] of [[rootHistoryPath(2), signed.bytes], [sigPath(rootHistoryPath(2)), signed.signature], ['root.json', signed.bytes], ['root.json.asc', signed.signature]] as const) {
    await writeFile(join(fx.repoDir, f), data);
  }
  const f = createFetcher(fx.repoDir);
  const c = new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }) });
  await rejects(t, c.update(), 'METADATA_INVALID', new RegExp(`root/2\\.json: key listed as ${other} has fingerprint ${rootKey}`));
});

// ---------- mirrors and exports write what they verified, not a second download ----------

test('a mirror writes the root files it verified: an origin that answers a second fetch with other bytes gets nothing stored', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const root1 = await fx.writer.readRoot();
  const signed = await signRoot({ ...root1, version: 2 }, await fx.keystore.signingKeys('root'));
  await fx.writer.addRoot(signed.bytes, signed.signature);
  // the first answer for root/2.json is genuine, every later one is another (validly formed, unsigned) root
  const evil = serialize({ ...root1, version: 2, expires: '2099-01-01T00:00:00Z' });
  let asked = 0;
  const server = await hostileServer(fx.repoDir, (_req, res, path) => {
    if (path !== rootHistoryPath(2) || asked++ === 0) return false;
    res.writeHead(200, { 'content-length': evil.length }).end(evil);
    return true;
  });
  t.teardown(server.close);
  const to = join(fx.dir, 'mirror');
  await mirrorRepository({ from: createFetcher(server.url), to, pin: { keyArmored: fx.rootKeyArmored } });
  t.deepEqual(await readFile(join(to, rootHistoryPath(2))), signed.bytes, 'root/2.json as verified');
  t.deepEqual(await readFile(join(to, 'root.json')), signed.bytes);
  t.is(asked, 1, 'root/2.json fetched once');
  // the next run keeps the roots it stored: not fetched again (the origin's other answer never matters)
  await mirrorRepository({ from: createFetcher(server.url), to });
  t.is(asked, 1, 'root/2.json not fetched by the second run');
  t.deepEqual(await readFile(join(to, rootHistoryPath(2))), signed.bytes);
});

test('a mirror checks the roots before its pin too: another repository\'s root 1 is refused, nothing written', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const root1 = await fx.writer.readRoot();
  // root key A rotated out for B in root 2; the mirror is pinned to B, so root 1 is not walked
  const keyA = await fx.keystore.signingKeys('root');
  const a = fx.keystore.find('root');
  const b = await fx.keystore.generate('root', 'root-b');
  await fx.keystore.retire(a.fingerprint);
  await publishRootFromKeystore(fx.keystore, fx.repoDir, undefined, keyA);
  // root/1.json swapped for another repository's root 1 (same key A, another id), validly signed
  const other = await signRoot({ ...root1, repository: 'f'.repeat(32) }, keyA);
  await writeFile(join(fx.repoDir, rootHistoryPath(1)), other.bytes);
  await writeFile(join(fx.repoDir, sigPath(rootHistoryPath(1))), other.signature);
  const to = join(fx.dir, 'mirror');
  const err = (await t.throwsAsync(mirrorRepository({ from: createFetcher(fx.repoDir), to, pin: { keyArmored: (await fx.keystore.publicKey(b)).armored } }))) as Error & { code?: string };
  t.is(err.code, 'WRONG_REPOSITORY', err.message);
  t.regex(err.message, /root\/1\.json: root version 1 belongs to repository f{32}, not to the trusted repository [0-9a-f]{32}/);
  t.false(await readFile(join(to, 'index.json')).then(() => true, () => false), 'no index written');
  t.false(await readFile(join(to, rootHistoryPath(1))).then(() => true, () => false), 'the foreign root not stored');
});

// ---------- root keys: judged as of their signature, revocation never tolerated ----------

/**
 * A repository directory written by hand: root 1 with root key E (made 10 days ago, valid
 * for one day), root 2 rotating to F signed by E (while valid) and F, an index signed by F's
 * root's index key. What a host that slept through E's expiry meets.
 */
async function expiredRootKeyRepo(t: ExecutionContext, revokeE: boolean) {
  const pgp = await openpgp();
  const dir = join((await makeRepo()).dir, 'hand-made');
  await mkdir(join(dir, 'root'), { recursive: true });
  await mkdir(join(dir, 'index'), { recursive: true });
  t.teardown(() => execa('rm', ['-rf', join(dir, '..')]));
  const created = new Date(Date.now() - 10 * DAY);
  const gen = async (name: string, o: { date?: Date; keyExpirationTime?: number } = {}) =>
    pgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [{ name }], format: 'object', ...o });
  const e = await gen('root E', { date: created, keyExpirationTime: DAY / 1000 });
  const f = await gen('root F');
  const idx = await gen('index');
  const pub = revokeE
    ? (await pgp.revokeKey({ key: e.privateKey, reasonForRevocation: { flag: pgp.enums.reasonForRevocation.keyCompromised }, date: new Date(created.getTime() + 3 * 3600_000), format: 'object' })).publicKey
    : e.publicKey;
  const fp = (k: OpenPGP.Key) => k.getFingerprint().toLowerCase();
  const repository = 'a'.repeat(32);
  const entry = (k: OpenPGP.Key, name: string) => ({ name, public_key: k.armor() });
  const root = (v: number, rootKey: OpenPGP.Key): Root => ({
    type: 'loopship/root', spec_version: 1, version: v, repository, expires: new Date(Date.now() + 300 * DAY).toISOString().replace(/\.\d{3}Z$/, 'Z'),
    keys: { [fp(rootKey)]: entry(rootKey, 'root'), [fp(idx.publicKey)]: entry(idx.publicKey, 'index') },
    roles: { root: { keys: [fp(rootKey)], threshold: 1 }, index: { keys: [fp(idx.publicKey)], threshold: 1 }, publisher: { keys: [fp(idx.publicKey)], threshold: 1 } },
  });
  const sign = async (bytes: Buffer, keys: OpenPGP.PrivateKey[], date?: Date) =>
    (await pgp.sign({ message: await pgp.createMessage({ binary: bytes }), signingKeys: keys, detached: true, format: 'armored', ...(date ? { date } : {}) })) as string;
  // root 1 lists E as published (with its revocation when revoked since: a root's copy of a key is what the host has)
  const r1 = serialize(root(1, pub));
  const r2 = serialize(root(2, f.publicKey));
  const files: [string, Buffer | string][] = [
    [rootHistoryPath(1), r1], [sigPath(rootHistoryPath(1)), await sign(r1, [e.privateKey], new Date(created.getTime() + 3600_000))],
    [rootHistoryPath(2), r2],
    // E signs while still valid, F signs now
    [sigPath(rootHistoryPath(2)), (await sign(r2, [e.privateKey], new Date(created.getTime() + 2 * 3600_000))).trim() + '\n'],
    ['root.json', r2],
  ];
  const i = serialize({ type: 'loopship/index', spec_version: 1, version: 1, repository, expires: new Date(Date.now() + 30 * DAY).toISOString().replace(/\.\d{3}Z$/, 'Z'), root_version: 2, images: {} });
  files.push(['index.json', i], ['index.json.asc', await sign(i, [idx.privateKey])]);
  for (const [rel, data] of files) await writeFile(join(dir, rel), data);
  // root 2's signature holds E's (backdated to when E was valid) and F's packets
  const both = await pgp.readSignature({ armoredSignature: files[3][1] as string });
  const byF = await pgp.readSignature({ armoredSignature: await sign(r2, [f.privateKey]) });
  both.packets.push(...byF.packets);
  await writeFile(join(dir, sigPath(rootHistoryPath(2))), both.armor());
  const fetcher = createFetcher(dir);
  const pinned = await RepoClient.pin(fetcher, { keyArmored: pub.armor() }).catch((err: Error) => err);
  return { pinned, fetcher };
}

test('a root key that expired since it signed still carries a host along the chain (it slept through the expiry)', async (t) => {
  const { pinned, fetcher } = await expiredRootKeyRepo(t, false);
  if (pinned instanceof Error) return t.fail(`pin: ${pinned.message}`);
  t.is(pinned.version, 1);
  const up = await new RepoClient({ fetchers: [fetcher], trustedRoot: pinned }).update();
  t.deepEqual(up.rootsAccepted, [2]);
});

test('a revoked root key carries nothing, whatever time its signature claims', async (t) => {
  const { pinned } = await expiredRootKeyRepo(t, true);
  t.true(pinned instanceof Error, 'the pin is refused');
  t.regex((pinned as Error).message, /root\/1\.json: no valid signature by any pinned root key .*revoked/);
});

// ---------- repositories from before ids get one through a rotation ----------

test('a repository from before ids: a rotation gives it one, hosts adopt it, and from then on an index without it is refused', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  // make it what an old repository looks like: root 1 and the index name no repository
  const old = await fx.writer.readRoot();
  delete (old as Partial<Root>).repository;
  const r1 = await signRoot(old, await fx.keystore.signingKeys('root'));
  for (const [f, d] of [[rootHistoryPath(1), r1.bytes], [sigPath(rootHistoryPath(1)), r1.signature], ['root.json', r1.bytes], ['root.json.asc', r1.signature]] as const) await writeFile(join(fx.repoDir, f), d);
  const writeIndex = async (f: (i: Index) => void) => {
    const i = await fx.writer.readIndex();
    f(i);
    const bytes = serialize(i);
    await writeFile(join(fx.repoDir, 'index.json'), bytes);
    await writeFile(join(fx.repoDir, 'index.json.asc'), await (await import('../../keys/index.js')).signDetached(bytes, await fx.keystore.signingKeys('index')));
  };
  await writeIndex((i) => { delete (i as Partial<Index>).repository; i.version += 1; });
  const f = createFetcher(fx.repoDir);
  const host = new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }) });
  t.is((await host.update()).root.repository, undefined, 'an old repository still verifies');

  // keys rotate: root 2 gets a fresh id, the writer's next index names it
  await publishRootFromKeystore(fx.keystore, fx.repoDir, undefined, await fx.keystore.signingKeys('root'));
  const up = await host.update();
  t.deepEqual(up.rootsAccepted, [2]);
  t.regex(up.root.repository ?? '', /^[0-9a-f]{32}$/);
  t.is(up.index.repository, up.root.repository);

  // now an index that names no repository (or another) is not this repository's
  await writeIndex((i) => { delete (i as Partial<Index>).repository; i.version += 1; });
  await rejects(t, host.update(), 'WRONG_REPOSITORY', /index\.json: index version \d+ belongs to repository \(none named\), not to the trusted repository [0-9a-f]{32}/);
});

// ---------- edges a mutation run found unguarded ----------

test('a root key revoked as "superseded" carries nothing either, though its signature predates the revocation', async (t) => {
  // soft revocations do not reach back in openpgp.js; for root keys the agent refuses them itself
  const pgp = await openpgp();
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const root1 = await fx.writer.readRoot();
  const created = new Date(Date.now() - 10 * DAY);
  const { privateKey } = await pgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [{ name: 'root S' }], date: created, format: 'object' });
  const { publicKey: revoked } = await pgp.revokeKey({ key: privateKey, reasonForRevocation: { flag: pgp.enums.reasonForRevocation.keySuperseded }, date: new Date(Date.now() - DAY), format: 'object' });
  const fpr = revoked.getFingerprint().toLowerCase();
  const r: Root = { ...root1, keys: { ...root1.keys, [fpr]: { name: 'root:s', public_key: revoked.armor() } }, roles: { ...root1.roles, root: { keys: [fpr], threshold: 1 } } };
  const bytes = serialize(r);
  const sig = (await pgp.sign({ message: await pgp.createMessage({ binary: bytes }), signingKeys: privateKey, detached: true, date: new Date(Date.now() - 5 * DAY), format: 'armored' })) as string;
  for (const [f, d] of [[rootHistoryPath(1), bytes], [sigPath(rootHistoryPath(1)), sig]] as const) await writeFile(join(fx.repoDir, f), d);
  await rejects(t, RepoClient.pin(createFetcher(fx.repoDir), { keyArmored: revoked.armor() }), 'UNKNOWN_KEY', /root\/1\.json: no valid signature by any pinned root key .*is not valid at .*the key is revoked/);
});

test('an index is judged at the client\'s clock, not the machine\'s: expiry exactly at now is expired, a key valid at the client\'s time counts', async (t) => {
  const pgp = await openpgp();
  // an index key that expires in two days; the client's clock three days ahead: refused, one day ahead: counted
  const { privateKey, publicKey } = await pgp.generateKey({ type: 'ecc', curve: 'ed25519Legacy', userIDs: [{ name: 'short index' }], keyExpirationTime: (2 * DAY) / 1000, format: 'object' });
  const { fx } = await repoWithIndexKey(publicKey.armor());
  t.teardown(fx.cleanup);
  await indexSignedAt(fx, privateKey, new Date());
  const at = async (ms: number) => {
    const f = createFetcher(fx.repoDir);
    return new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }), now: () => new Date(Date.now() + ms) });
  };
  t.is((await (await at(DAY)).update()).index.version, (await fx.writer.readIndex()).version);
  await rejects(t, (await at(3 * DAY)).update(), 'UNKNOWN_KEY', /index\.json: .*is not valid at/);
  // expiry exactly at the client's clock: expired
  const { checkNotExpired } = await import('../../format/index.js');
  const now = new Date('2027-01-01T00:00:00Z');
  t.throws(() => checkNotExpired('index', '2027-01-01T00:00:00Z', now, 'index.json'), { message: /index\.json: index expired at 2027-01-01T00:00:00Z/ });
  t.notThrows(() => checkNotExpired('index', '2027-01-01T00:00:01Z', now, 'index.json'));
});

test('a root whose key entry is not an OpenPGP key, and a signature that is not armor, are refused naming the file', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const root1 = await fx.writer.readRoot();
  const other = fingerprintOf(await readPublicKey((await generateKey('other')).publicArmored));
  const r2: Root = { ...root1, version: 2, keys: { ...root1.keys, [other]: { name: 'publisher:junk', public_key: 'not a key' } }, roles: { ...root1.roles, publisher: { keys: [...root1.roles.publisher.keys, other], threshold: 1 } } };
  const signed = await signRoot(r2, await fx.keystore.signingKeys('root'));
  await writeFile(join(fx.repoDir, rootHistoryPath(2)), signed.bytes);
  await writeFile(join(fx.repoDir, sigPath(rootHistoryPath(2))), signed.signature);
  const f = createFetcher(fx.repoDir);
  const c = new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }) });
  await rejects(t, c.update(), 'KEY_INVALID', new RegExp(`root/2\\.json: keys\\.${other}: not an OpenPGP public key`));
  await writeFile(join(fx.repoDir, sigPath(rootHistoryPath(2))), 'garbage, not armor\n');
  await rm(join(fx.repoDir, rootHistoryPath(2)));
  await writeFile(join(fx.repoDir, 'index.json.asc'), 'garbage, not armor\n');
  await rejects(t, new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }) }).update(), 'SIGNATURE_INVALID', /index\.json\.asc: not an armored OpenPGP signature \(/);
});

// ---------- what an unverified file says goes into messages harmlessly ----------

// A root file is parsed before its signatures can be checked (they are checked against the
// keys it lists): anyone serving a mirror, or in the middle of an http:// one, writes it. Its
// keys came into the error as they were: escape sequences to the admin's terminal, line
// breaks forging lines in the agent's log (and state.json's last_error), any length.
const EVIL = '\u001b]0;owned\u0007\u001b[2J\nloopship-agent: upgraded sbc 1.0.0 -> 9.9.9 \u202e\u0085';
for (const [where, plant] of [
  ['an unknown top-level key', (r: Record<string, unknown>) => { r[EVIL + 'x'.repeat(100_000)] = 1; }],
  ['a key of its keys record', (r: Record<string, unknown>) => { (r.keys as Record<string, unknown>)[EVIL] = { name: 'x', public_key: 'y' }; }],
  ['a key of a key entry', (r: Record<string, unknown>) => { const k = r.keys as Record<string, Record<string, unknown>>; k[Object.keys(k)[0]][EVIL] = 1; }],
  ['what is not JSON (V8 quotes it)', 'not JSON' as const],
] as const) {
  test(`a root/2.json from a hostile mirror with control characters in ${where}: refused with an error of printable text, bounded`, async (t) => {
    const fx = await makeRepo();
    t.teardown(fx.cleanup);
    const root2 = { ...(await fx.writer.readRoot()), version: 2 } as unknown as Record<string, unknown>;
    root2.keys = { ...(root2.keys as object) };
    const bytes = plant === 'not JSON' ? `${EVIL} {` : (plant(root2), JSON.stringify(root2));
    for (const [f, data] of [[rootHistoryPath(2), bytes], [sigPath(rootHistoryPath(2)), 'x'], ['root.json', bytes], ['root.json.asc', 'x']] as const) await writeFile(join(fx.repoDir, f), data);
    const f = createFetcher(fx.repoDir);
    const c = new RepoClient({ fetchers: [f], trustedRoot: await RepoClient.pin(f, { keyArmored: fx.rootKeyArmored }) });
    const err = await rejects(t, c.update(), 'METADATA_INVALID', /root\/2\.json: (invalid root metadata|not valid JSON)/);
    t.notRegex(err.message, /[^\x20-\x7e]/, 'printable ASCII only');
    t.true(err.message.length < 2000, `${err.message.length} characters`);
    t.regex(err.message, /\\u001b/, 'the key is still shown, escaped');
  });
}

test('a package (an offline import, an upload) whose entry name holds control characters: refused naming it as printable text', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const pack = tar.pack();
  pack.entry({ name: EVIL, size: 1 }, Buffer.from('x'));
  pack.finalize();
  const err = (await t.throwsAsync(readPackage(pack, { root: await fx.writer.readRoot(), onChunk: async () => {}, where: 'pkg.tar' }))) as Error & { code?: string };
  t.is(err.code, 'PACKAGE_INVALID', err.message);
  t.regex(err.message, /^pkg\.tar: \\u001b\]0;owned/);
  t.notRegex(err.message, /[^\x20-\x7e]/);
});
