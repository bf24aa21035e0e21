// Checks on the trust paths that a mutation run found no test would miss if deleted. Each
// test here fails when its check is removed: it asserts the error code and a message naming
// what is wrong and where, and (for the writer and the server) that nothing in the
// repository tree changed. The servers are real, on 127.0.0.1.
import test, { type ExecutionContext } from 'ava';
import { createReadStream, createWriteStream } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { RepositoryWriter, LoopshipError, readPackage, exportPackage, createFetcher, RepoClient, manifestChunks, parseMetadata, LIMITS } from '../../format/index.js';
import { zstdCompressBound } from '../../format/limits.js';
import { startServer, parseServerConfig, createRepositoryWriter, type RunningServer } from '../../repo-server/index.js';
import { Keystore } from '../../keys/index.js';
import { makeRealRepo, makePackage, strangerKey, hashTree, tempDir, type RealRepo } from '../server/helpers.js';
import { enrolHost, enrolRequest, postReport, json } from '../server/fleet.js';

const PUBLISHER = 'missing-checks-publisher-token-0123';
const SITE_A = 'missing-checks-site-a-token-01234';

async function cleanupRepo(t: ExecutionContext, repo: RealRepo): Promise<void> {
  t.teardown(async () => {
    for (const d of [repo.dir, repo.keysDir, repo.work]) await rm(d, { recursive: true, force: true });
  });
}

const indexOf = async (repo: RealRepo) => JSON.parse(await readFile(path.join(repo.dir, 'index.json'), 'utf8'));

/** The entries of a (small) tar, in order, with their bytes. */
async function tarEntries(file: string): Promise<{ name: string; data: Buffer }[]> {
  const out: { name: string; data: Buffer }[] = [];
  const extract = tar.extract();
  const done = pipeline(createReadStream(file), extract);
  for await (const entry of extract) {
    const parts: Buffer[] = [];
    for await (const p of entry) parts.push(p as Buffer);
    out.push({ name: entry.header.name, data: Buffer.concat(parts) });
  }
  await done;
  return out;
}

async function writeTar(file: string, entries: { name: string; data: Buffer }[]): Promise<void> {
  const pack = tar.pack();
  const done = pipeline(pack, createWriteStream(file));
  for (const e of entries) {
    await new Promise<void>((res, rej) => pack.entry({ name: e.name, size: e.data.length, mode: 0o644, mtime: new Date(0) }, e.data, (err) => (err ? rej(err) : res())));
  }
  pack.finalize();
  await done;
}

// ---------- 2. a writer holding an index key the root does not list ----------

test('a writer whose index key the root does not list: resign and promote are refused, the tree unchanged', async (t) => {
  const repo = await makeRealRepo();
  await cleanupRepo(t, repo);
  const published = await makePackage(repo, 'desktop', '1.0.0');
  await repo.writer.addPackage(createReadStream(published.tarPath));
  const rogue = new RepositoryWriter(repo.dir, { indexKeys: [await strangerKey()] });
  const before = await hashTree(repo.dir);

  const resign = await t.throwsAsync(rogue.resign());
  t.true(resign instanceof LoopshipError, String(resign));
  t.is((resign as LoopshipError).code, 'UNKNOWN_KEY', String(resign));
  t.is((resign as LoopshipError).where, 'new index', 'the error names the index being signed');
  t.regex(resign!.message, /^new index: the index keys this writer holds \([0-9a-f]{40}\) are 0 of root version 1's index keys, threshold 1: nothing was written$/);
  t.is(await hashTree(repo.dir), before, 'resign: nothing written');

  const promote = await t.throwsAsync(rogue.promote('desktop', 'stable', '1.0.0'));
  t.is((promote as LoopshipError).code, (resign as LoopshipError).code);
  t.is((promote as LoopshipError).where, 'new index');
  t.is(await hashTree(repo.dir), before, 'promote: nothing written');
  t.is((await indexOf(repo)).images.desktop.channels.stable, undefined);
});

// The writer checks its index keys against the root before it stages anything (it used to
// move chunks and write the pack and manifest, then fail at the index: unreferenced files,
// where FORMAT.md "Publishing" promises a rejected package leaves the tree as it was).
test('a writer whose index key the root does not list: publishing is refused before anything is written, the tree unchanged', async (t) => {
  const repo = await makeRealRepo();
  await cleanupRepo(t, repo);
  await repo.writer.addPackage(createReadStream((await makePackage(repo, 'desktop', '1.0.0')).tarPath));
  const pkg = await makePackage(repo, 'desktop', '1.1.0');
  const rogue = new RepositoryWriter(repo.dir, { indexKeys: [await strangerKey()] });
  const before = await hashTree(repo.dir);
  const err = await t.throwsAsync(rogue.addPackage(createReadStream(pkg.tarPath), { where: pkg.tarPath }));
  t.true(err instanceof LoopshipError, String(err));
  t.is((err as LoopshipError).where, 'new index');
  t.falsy((await indexOf(repo)).images.desktop.versions['1.1.0'], 'the version is not published');
  t.is(await hashTree(repo.dir), before, 'publish: nothing in the tree changed');
});

test('a writer whose index key the root does not list: publishing is refused, the index untouched', async (t) => {
  const repo = await makeRealRepo();
  await cleanupRepo(t, repo);
  await repo.writer.addPackage(createReadStream((await makePackage(repo, 'desktop', '1.0.0')).tarPath));
  const pkg = await makePackage(repo, 'desktop', '1.1.0');
  const rogue = new RepositoryWriter(repo.dir, { indexKeys: [await strangerKey()] });
  const indexBefore = await readFile(path.join(repo.dir, 'index.json'));
  const sigBefore = await readFile(path.join(repo.dir, 'index.json.asc'));
  const err = await t.throwsAsync(rogue.addPackage(createReadStream(pkg.tarPath), { where: pkg.tarPath }));
  t.true(err instanceof LoopshipError, String(err));
  t.is((err as LoopshipError).code, 'UNKNOWN_KEY', String(err));
  t.regex(err!.message, /^new index: the index keys this writer holds \([0-9a-f]{40}\) are 0 of root version 1's index keys, threshold 1: nothing was written$/);
  t.deepEqual(await readFile(path.join(repo.dir, 'index.json')), indexBefore);
  t.deepEqual(await readFile(path.join(repo.dir, 'index.json.asc')), sigBefore);
  const idx = await indexOf(repo);
  t.falsy(idx.images.desktop.versions['1.1.0']);
  await t.throwsAsync(readFile(path.join(repo.dir, 'index', `${idx.version + 1}.json`)), { code: 'ENOENT' }, 'no index history file for the refused version');
});

// ---------- 3. the server buffering oversized tar entries ----------

async function publishServer(t: ExecutionContext): Promise<{ repo: RealRepo; srv: RunningServer }> {
  const repo = await makeRealRepo();
  const config = parseServerConfig({ publishers: [{ name: 'team', token: PUBLISHER }] });
  const writer = await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir });
  const srv = await startServer({ repoDir: repo.dir, config, writer, stateDir: null, host: '127.0.0.1' });
  t.teardown(async () => {
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work]) await rm(d, { recursive: true, force: true });
  });
  return { repo, srv };
}

/**
 * Streams a tar to the publish API (chunked: no Content-Length to refuse up front): the
 * `whole` entries, then a header declaring `declared` bytes for `big`, then only `send` bytes
 * of it, and never the rest: the request stays open. Resolves with the server's answer, and
 * whether it came while the request was still unfinished.
 */
function uploadOversized(url: string, whole: { name: string; data: Buffer }[], big: { name: string; declared: number; send: number }): Promise<{ status: number; body: Record<string, unknown>; answeredEarly: boolean; sent: number }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    let sent = 0;
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`no answer within 20 s after sending ${sent} bytes: the server is buffering the oversized entry`));
    }, 20_000);
    const req = http.request(
      { host: u.hostname, port: u.port, method: 'POST', path: '/api/v1/packages', agent: false, headers: { Authorization: `Bearer ${PUBLISHER}`, 'Content-Type': 'application/x-tar', 'Transfer-Encoding': 'chunked' } },
      (res) => {
        const answeredEarly = sent < big.declared; // the entry was never finished
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          clearTimeout(timer);
          req.destroy();
          resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(parts).toString()), answeredEarly, sent });
        });
        res.on('error', reject);
      },
    );
    req.on('error', (e) => {
      // the server closes the connection after answering: an EPIPE/ECONNRESET on our side is expected then
      if (!(e as NodeJS.ErrnoException).code?.match(/EPIPE|ECONNRESET/)) reject(e);
    });
    const pack = tar.pack();
    pack.on('data', (d: unknown) => {
      sent += (d as Buffer).length;
      if (!req.destroyed) req.write(d as Buffer);
    });
    (async () => {
      for (const e of whole) await new Promise<void>((res, rej) => pack.entry({ name: e.name, size: e.data.length, mode: 0o644, mtime: new Date(0) }, e.data, (err) => (err ? rej(err) : res())));
      const entry = pack.entry({ name: big.name, size: big.declared, mode: 0o644, mtime: new Date(0) });
      const block = Buffer.alloc(64 * 1024, 0x41);
      for (let n = 0; n < big.send; n += block.length) entry.write(block.subarray(0, Math.min(block.length, big.send - n)));
      // and then nothing: the entry (and the request) stays unfinished
    })().catch(reject);
  });
}

test('upload whose manifest signature entry is over 64 KiB: 422 PACKAGE_INVALID naming the entry, answered before the entry is sent, tree unchanged', async (t) => {
  const { repo, srv } = await publishServer(t);
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const [manifest] = await tarEntries(pkg.tarPath);
  t.is(manifest.name, 'manifest.json');
  const before = await hashTree(repo.dir);
  const declared = 64 * 1024 * 1024;
  const r = await uploadOversized(srv.url, [manifest], { name: 'manifest.json.asc', declared, send: 512 * 1024 });
  t.is(r.status, 422, JSON.stringify(r.body));
  t.is(r.body.code, 'PACKAGE_INVALID');
  t.is(r.body.where, 'upload: manifest.json.asc');
  t.is(r.body.message, `upload: manifest.json.asc: entry is larger than ${LIMITS.signatureBytes} bytes`);
  t.true(r.answeredEarly, 'answered while the upload was unfinished');
  t.true(r.sent < declared / 4, `only ${r.sent} of the entry's ${declared} bytes were sent`);
  t.is(await hashTree(repo.dir), before);
});

test('upload whose chunk entry is larger than zstd\'s compress bound of the chunk: 422 PACKAGE_INVALID naming the chunk, answered early, tree unchanged', async (t) => {
  const { repo, srv } = await publishServer(t);
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const entries = await tarEntries(pkg.tarPath);
  const [m, sig] = entries;
  t.deepEqual([m.name, sig.name], ['manifest.json', 'manifest.json.asc']);
  const manifest = parseMetadata('manifest', m.data, 'test');
  const chunk = manifestChunks(manifest)[0];
  const bound = zstdCompressBound(chunk.length);
  const name = `chunks/${chunk.sha256.slice(0, 2)}/${chunk.sha256}`;
  const before = await hashTree(repo.dir);
  const declared = 256 * 1024 * 1024;
  const r = await uploadOversized(srv.url, [m, sig], { name, declared, send: bound + 256 * 1024 });
  t.is(r.status, 422, JSON.stringify(r.body));
  t.is(r.body.code, 'PACKAGE_INVALID');
  t.is(r.body.where, `upload: ${name}`);
  t.is(r.body.message, `upload: ${name}: entry is larger than ${bound} bytes`);
  t.true(r.answeredEarly, 'answered while the upload was unfinished');
  t.true(r.sent < declared / 4, `only ${r.sent} of the entry's ${declared} bytes were sent`);
  t.is(await hashTree(repo.dir), before);
  t.deepEqual((await indexOf(repo)).images, {});
});

// ---------- 4. an export whose index names another manifest for the same name and version ----------

test('a package with metadata whose genuine index names another manifest for the same name and version: MIX_AND_MATCH naming the manifest', async (t) => {
  const repo = await makeRealRepo();
  await cleanupRepo(t, repo);
  await repo.writer.addPackage(createReadStream((await makePackage(repo, 'desktop', '1.0.0')).tarPath));
  const rootKeyArmored = (await repo.store.publicKey(repo.store.find('root'))).armored;
  const exported = path.join(repo.work, 'desktop-export.tar');
  await exportPackage({ fetcher: createFetcher(repo.dir), pin: { keyArmored: rootKeyArmored }, name: 'desktop', version: '1.0.0', out: exported, withMetadata: true });
  const root = await RepoClient.pin(createFetcher(repo.dir), { keyArmored: rootKeyArmored });
  // the genuine export reads (so the refusal below is the mix, nothing else)
  const genuine = await readPackage(createReadStream(exported), { root, where: exported, onChunk: async () => {} });
  t.truthy(genuine.index);

  // another desktop 1.0.0, properly signed by the publisher, never published
  const other = await makePackage(repo, 'desktop', '1.0.0');
  t.not(other.manifestSha256, genuine.manifestSha256);
  const meta = (await tarEntries(exported)).filter((e) => e.name.startsWith('root/') || e.name.startsWith('index.json'));
  t.deepEqual(meta.map((e) => e.name).slice(-2), ['index.json', 'index.json.asc']);
  const mixed = path.join(repo.work, 'mixed.tar');
  await writeTar(mixed, [...meta, ...(await tarEntries(other.tarPath))]);

  let chunks = 0;
  const err = await t.throwsAsync(readPackage(createReadStream(mixed), { root, where: mixed, onChunk: async () => void chunks++ }));
  t.true(err instanceof LoopshipError, String(err));
  t.is((err as LoopshipError).code, 'MIX_AND_MATCH');
  t.is((err as LoopshipError).where, `${mixed}: manifest.json`);
  t.is(err!.message, `${mixed}: manifest.json: the package's index does not list this manifest for desktop 1.0.0`);
  t.is(chunks, 0, 'no chunk accepted');

  // and the repository's writer refuses it the same way, leaving the tree as it was
  const before = await hashTree(repo.dir);
  const viaWriter = await t.throwsAsync(repo.writer.addPackage(createReadStream(mixed), { where: 'mixed' }));
  t.is((viaWriter as LoopshipError).code, 'MIX_AND_MATCH');
  t.is((viaWriter as LoopshipError).where, 'mixed: manifest.json');
  t.is(await hashTree(repo.dir), before);
});

// ---------- 5. a report host name of valid DNS labels, over 253 characters ----------

test('a report (and an enrolment) naming a host of valid DNS labels but over 253 characters: 400 naming the host field, nothing stored', async (t) => {
  const repoDir = await tempDir('loopship-repo-');
  const stateDir = await tempDir('loopship-state-');
  const config = parseServerConfig({ sites: [{ name: 'site-a', token: SITE_A }], publishers: [{ name: 'team', token: PUBLISHER }] });
  const srv = await startServer({ repoDir, config, stateDir, host: '127.0.0.1' });
  t.teardown(async () => {
    await srv.close(100);
    await rm(repoDir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });
  const label = 'a'.repeat(63);
  const long = [label, label, label, label].join('.'); // 4 valid labels, 255 characters
  t.is(long.length, 255);
  t.regex(long, /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/, 'every label is valid');
  const longer254 = long.slice(0, 253) + 'b'; // still labels of at most 63, 254 characters
  t.is(longer254.length, 254);

  const token = await enrolHost(srv.url, SITE_A, 'xen-a');
  const before = await hashTree(stateDir);
  for (const host of [long, longer254]) {
    const r = await postReport(srv.url, { host, agent_version: '0.1.0', appliances: [], last_error: null }, token);
    t.is(r.status, 400, `${host.length}: ${r.body}`);
    t.is(json(r).code, 'BAD_REQUEST');
    t.regex(json(r).message as string, /^invalid report: host: .*253/, String(json(r).message));
    const e = await enrolRequest(srv.url, SITE_A, { host });
    t.is(e.status, 400, `${host.length}: ${e.body}`);
    t.is(json(e).code, 'BAD_REQUEST');
    t.regex(json(e).message as string, /^invalid enrolment: host: .*253/, String(json(e).message));
  }
  t.is(await hashTree(stateDir), before, 'nothing stored');
});

// A host name the schema accepts (253 characters, valid labels) was stored as <host>.json,
// 258 bytes > NAME_MAX: enrolment answered 500 with the server's path. Long names are now
// kept under a prefix and a digest (reports.ts hostFileStem).
test('a host name of exactly 253 characters (the schema\'s maximum) enrols and reports', async (t) => {
  const repoDir = await tempDir('loopship-repo-');
  const stateDir = await tempDir('loopship-state-');
  const config = parseServerConfig({ sites: [{ name: 'site-a', token: SITE_A }] });
  const srv = await startServer({ repoDir, config, stateDir, host: '127.0.0.1' });
  t.teardown(async () => {
    await srv.close(100);
    await rm(repoDir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });
  const l = 'a'.repeat(63);
  const host = [l, l, l, 'b'.repeat(61)].join('.');
  t.is(host.length, 253);
  const e = await enrolRequest(srv.url, SITE_A, { host });
  t.false(e.body.toString().includes(stateDir), 'no server path in the answer');
  t.is(e.status, 201, e.body.toString().slice(0, 200));
  const r = await postReport(srv.url, { host, agent_version: '0.1.0', appliances: [], last_error: null }, json(e).token as string);
  t.is(r.status, 201);
});

// A server given another key store's index key used to start and fail at every publish.
test('a server whose index key the root does not list refuses to start', async (t) => {
  const repo = await makeRealRepo();
  await cleanupRepo(t, repo);
  const otherKeys = await tempDir('loopship-keys-');
  t.teardown(() => rm(otherKeys, { recursive: true, force: true }));
  await Keystore.init(otherKeys);
  const config = parseServerConfig({ publishers: [{ name: 'team', token: PUBLISHER }] });
  const err = await t.throwsAsync(createRepositoryWriter(repo.dir, config, { keysDir: otherKeys }));
  t.true(err instanceof LoopshipError, String(err));
  t.regex(err!.message, /index/);
});
