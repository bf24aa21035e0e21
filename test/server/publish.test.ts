// Publishing and promoting through the HTTP API with the real repository writer:
// tokens, verification before visibility, limits, concurrency. Every rejection is
// checked against a hash of the whole tree taken before the request.
import test, { type ExecutionContext } from 'ava';
import { readFile, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { startServer, parseServerConfig, createRepositoryWriter, uploadPackage, promoteRemote, type RunningServer } from '../../repo-server/index.js';
import { LoopshipError, VerificationError, UsageError } from '../../format/index.js';
import { makeRealRepo, makePackage, strangerKey, hashTree, rawRequest, type RealRepo } from './helpers.js';

const PUBLISHER_TOKEN = 'publisher-token-0123456789abcdef';
const SITE_TOKEN = 'site-a-token-0123456789abcdef';

async function setup(t: ExecutionContext, limits: Record<string, number> = {}): Promise<{ repo: RealRepo; srv: RunningServer }> {
  const repo = await makeRealRepo();
  const config = parseServerConfig({
    publishers: [{ name: 'team', token: PUBLISHER_TOKEN }],
    sites: [{ name: 'site-a', token: SITE_TOKEN }],
    limits,
  });
  const writer = await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir });
  const srv = await startServer({ repoDir: repo.dir, config, writer, stateDir: null });
  t.teardown(async () => {
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work]) await rm(d, { recursive: true, force: true });
  });
  return { repo, srv };
}

const index = async (repo: RealRepo) => JSON.parse(await readFile(path.join(repo.dir, 'index.json'), 'utf8'));

test('a signed package is published: index re-signed, manifest and chunks served', async (t) => {
  const { repo, srv } = await setup(t);
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const seen: number[] = [];
  const res = await uploadPackage(srv.url, PUBLISHER_TOKEN, pkg.tarPath, (sent) => seen.push(sent));
  t.like(res, { name: 'desktop', version: '1.0.0', manifest_sha256: pkg.manifestSha256, unchanged: false, index_version: 2 });
  t.true(res.new_chunks > 0);
  t.is(seen.at(-1), (await stat(pkg.tarPath)).size, 'progress reaches the file size');
  const idx = await index(repo);
  t.is(idx.images.desktop.versions['1.0.0'].manifest, pkg.manifestSha256);
  const served = await rawRequest(srv.url, { path: `/manifests/${pkg.manifestSha256}.json` });
  t.is(served.status, 200);
  const manifest = JSON.parse(served.body.toString());
  for (const c of manifest.image.chunks) {
    const r = await rawRequest(srv.url, { path: `/chunks/${c.sha256.slice(0, 2)}/${c.sha256}`, method: 'HEAD' });
    t.is(r.status, 200);
    t.is(Number(r.headers['content-length']), c.csize);
  }
  t.is((await rawRequest(srv.url, { path: '/index.json.asc' })).status, 200);
  // the same package again: accepted, nothing new
  const again = await uploadPackage(srv.url, PUBLISHER_TOKEN, pkg.tarPath);
  t.true(again.unchanged);
  t.is((await index(repo)).version, 2);
});

test('publishing with ?channel= points the channel at the new version', async (t) => {
  const { repo, srv } = await setup(t);
  const pkg = await makePackage(repo, 'desktop', '2.0');
  await uploadPackage(srv.url, PUBLISHER_TOKEN, pkg.tarPath, undefined, { channel: 'testing' });
  t.is((await index(repo)).images.desktop.channels.testing, '2.0');
});

test('no token or a wrong token: 401 and the tree is byte-for-byte unchanged', async (t) => {
  const { repo, srv } = await setup(t);
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const before = await hashTree(repo.dir);
  const body = await readFile(pkg.tarPath);
  for (const auth of [undefined, 'Bearer wrong-token-wrong-token', `Bearer ${PUBLISHER_TOKEN}x`, `Bearer ${SITE_TOKEN}`, PUBLISHER_TOKEN, `Basic ${PUBLISHER_TOKEN}`]) {
    const headers: Record<string, string> = { 'Content-Type': 'application/x-tar' };
    if (auth) headers.Authorization = auth;
    const r = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/packages', headers, body });
    t.is(r.status, 401, String(auth));
    t.is(JSON.parse(r.body.toString()).code, 'UNAUTHORIZED');
    t.regex(String(r.headers['www-authenticate']), /^Bearer /);
  }
  const promote = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/channels/stable/promote', headers: { 'Content-Type': 'application/json' }, body: '{"name":"desktop","version":"1.0.0"}' });
  t.is(promote.status, 401);
  t.is(await hashTree(repo.dir), before);
  const err = await t.throwsAsync(uploadPackage(srv.url, 'not-the-token-at-all', pkg.tarPath));
  t.true(err instanceof UsageError);
  t.regex(err!.message, /401/);
  t.is(await hashTree(repo.dir), before);
});

test('a package signed by a key the root does not allow is rejected; tree unchanged', async (t) => {
  const { repo, srv } = await setup(t);
  await uploadPackage(srv.url, PUBLISHER_TOKEN, (await makePackage(repo, 'desktop', '1.0.0')).tarPath);
  const bad = await makePackage(repo, 'desktop', '1.1.0', { key: await strangerKey() });
  const before = await hashTree(repo.dir);
  const err = await t.throwsAsync(uploadPackage(srv.url, PUBLISHER_TOKEN, bad.tarPath));
  t.true(err instanceof VerificationError, String(err));
  t.regex(err!.message, /422/);
  t.regex(err!.message, /UNKNOWN_KEY|SIGNATURE/);
  t.is(await hashTree(repo.dir), before);
  t.falsy((await index(repo)).images.desktop.versions['1.1.0']);
});

test('a tampered chunk, a truncated tar and garbage are rejected; tree unchanged', async (t) => {
  const { repo, srv } = await setup(t);
  await uploadPackage(srv.url, PUBLISHER_TOKEN, (await makePackage(repo, 'desktop', '1.0.0')).tarPath);
  const pkg = await makePackage(repo, 'desktop', '1.1.0');
  const good = await readFile(pkg.tarPath);
  const tampered = Buffer.from(good);
  tampered[tampered.length - 2048 - 700] ^= 0xff; // inside the last chunk's data
  const variants: Record<string, Buffer> = {
    tampered,
    truncated: good.subarray(0, Math.floor(good.length / 2)),
    garbage: Buffer.from('this is not a tar archive at all '.repeat(100)),
    empty: Buffer.alloc(0),
  };
  const before = await hashTree(repo.dir);
  for (const [what, body] of Object.entries(variants)) {
    const r = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/packages', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}`, 'Content-Type': 'application/x-tar' }, body });
    t.is(r.status, 422, `${what}: ${r.body}`);
    const e = JSON.parse(r.body.toString());
    t.truthy(e.code && e.message, what);
    t.is(await hashTree(repo.dir), before, what);
  }
  t.falsy((await index(repo)).images.desktop.versions['1.1.0']);
});

test('an upload over the size limit: 413 whether declared or streamed; tree unchanged', async (t) => {
  const { repo, srv } = await setup(t, { max_upload_bytes: 100_000 });
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const before = await hashTree(repo.dir);
  const err = await t.throwsAsync(uploadPackage(srv.url, PUBLISHER_TOKEN, pkg.tarPath));
  t.regex(err!.message, /413.*PAYLOAD_TOO_LARGE/);
  // chunked transfer: no Content-Length to refuse up front, the byte count trips
  const u = new URL(srv.url);
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: '/api/v1/packages', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}`, 'Content-Type': 'application/x-tar', 'Transfer-Encoding': 'chunked' } }, (res) => {
      res.resume();
      resolve(res.statusCode!);
    });
    req.on('error', reject);
    readFile(pkg.tarPath).then((b) => {
      for (let i = 0; i < b.length; i += 16384) req.write(b.subarray(i, i + 16384));
      req.end();
    });
  });
  t.is(status, 413);
  t.is(await hashTree(repo.dir), before);
});

test('a stalled upload times out with 408; tree unchanged', async (t) => {
  const { repo, srv } = await setup(t, { upload_idle_timeout_s: 1 });
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const before = await hashTree(repo.dir);
  const body = await readFile(pkg.tarPath);
  const u = new URL(srv.url);
  const started = Date.now();
  const r = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: '/api/v1/packages', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}`, 'Content-Type': 'application/x-tar', 'Content-Length': body.length } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode!, text }));
    });
    req.on('error', reject);
    req.write(body.subarray(0, 30_000)); // then nothing more
  });
  t.is(r.status, 408);
  t.is(JSON.parse(r.text).code, 'REQUEST_TIMEOUT');
  t.true(Date.now() - started < 10_000);
  t.is(await hashTree(repo.dir), before);
});

test('concurrent publishes are serialised and all land', async (t) => {
  const { repo, srv } = await setup(t);
  const versions = ['1.0.0', '1.0.1', '1.0.2', '1.1.0', '2.0.0', '2.0.1'];
  const pkgs = await Promise.all(versions.map((v) => makePackage(repo, 'desktop', v)));
  const other = await makePackage(repo, 'terminal', '0.9');
  const results = await Promise.all([...pkgs, other].map((p) => uploadPackage(srv.url, PUBLISHER_TOKEN, p.tarPath)));
  t.is(new Set(results.map((r) => r.index_version)).size, results.length, 'each publish made its own index version');
  const idx = await index(repo);
  t.deepEqual(Object.keys(idx.images.desktop.versions).sort(), versions);
  t.truthy(idx.images.terminal.versions['0.9']);
  t.is(idx.version, 1 + results.length);
});

test('promote moves a channel (JSON body and path form); bad requests change nothing', async (t) => {
  const { repo, srv } = await setup(t);
  await uploadPackage(srv.url, PUBLISHER_TOKEN, (await makePackage(repo, 'desktop', '1.0.0')).tarPath);
  await uploadPackage(srv.url, PUBLISHER_TOKEN, (await makePackage(repo, 'desktop', '1.1.0')).tarPath);
  const r = await promoteRemote(srv.url, PUBLISHER_TOKEN, 'desktop', '1.0.0', 'stable');
  t.like(r, { name: 'desktop', channel: 'stable', version: '1.0.0' });
  t.is((await index(repo)).images.desktop.channels.stable, '1.0.0');
  const p = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/channels/stable/promote/desktop/1.1.0', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}` } });
  t.is(p.status, 200, p.body.toString());
  t.is((await index(repo)).images.desktop.channels.stable, '1.1.0');

  const before = await hashTree(repo.dir);
  const missing = await t.throwsAsync(promoteRemote(srv.url, PUBLISHER_TOKEN, 'desktop', '9.9', 'stable'));
  t.true(missing instanceof LoopshipError && missing.code === 'NOT_FOUND', String(missing));
  const badChannel = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/channels/Not!A!Channel/promote', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}`, 'Content-Type': 'application/json' }, body: '{"name":"desktop","version":"1.0.0"}' });
  t.is(badChannel.status, 400);
  const badJson = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/channels/stable/promote', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}`, 'Content-Type': 'application/json' }, body: '{"name":' });
  t.is(badJson.status, 400);
  t.is(JSON.parse(badJson.body.toString()).code, 'BAD_REQUEST');
  const extra = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/channels/stable/promote', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}`, 'Content-Type': 'application/json' }, body: '{"name":"desktop","version":"1.0.0","force":true}' });
  t.is(extra.status, 400);
  const notJson = await rawRequest(srv.url, { method: 'POST', path: '/api/v1/channels/stable/promote', headers: { Authorization: `Bearer ${PUBLISHER_TOKEN}`, 'Content-Type': 'text/plain' }, body: 'desktop 1.0.0' });
  t.is(notJson.status, 415);
  t.is(await hashTree(repo.dir), before);
});

test('a server without index keys refuses to publish with 503', async (t) => {
  const repo = await makeRealRepo();
  const config = parseServerConfig({ publishers: [{ name: 'team', token: PUBLISHER_TOKEN }] });
  const srv = await startServer({ repoDir: repo.dir, config, stateDir: null });
  t.teardown(async () => {
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work]) await rm(d, { recursive: true, force: true });
  });
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const before = await hashTree(repo.dir);
  const err = await t.throwsAsync(uploadPackage(srv.url, PUBLISHER_TOKEN, pkg.tarPath));
  t.regex(err!.message, /503.*NOT_CONFIGURED/);
  t.is(await hashTree(repo.dir), before);
});

test('wrong methods on API endpoints: 405; unknown endpoints: 404', async (t) => {
  const { srv } = await setup(t);
  const r = await rawRequest(srv.url, { path: '/api/v1/packages' });
  t.is(r.status, 405);
  t.is(r.headers['allow'], 'POST');
  t.is((await rawRequest(srv.url, { path: '/api/v1/reports', method: 'DELETE' })).status, 405);
  t.is((await rawRequest(srv.url, { path: '/api/v1/nothing' })).status, 404);
});

test('an unauthorized upload is answered 401 and the connection closed, not drained', async (t) => {
  t.timeout(30_000);
  const { srv } = await setup(t);
  const net = await import('node:net');
  const u = new URL(srv.url);
  const sock = net.connect(Number(u.port), u.hostname);
  let answer = '';
  const closed = new Promise<void>((resolve) => sock.on('close', () => resolve()));
  sock.on('data', (d) => (answer += d.toString()));
  sock.on('error', () => {});
  sock.write(`POST /api/v1/packages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\nContent-Length: ${2 ** 30}\r\n\r\n`);
  sock.write(Buffer.alloc(64 * 1024));
  await closed; // the server hangs up although 1 GiB was announced and 64 KiB sent
  t.regex(answer, /^HTTP\/1\.1 401/);
  t.regex(answer, /Connection: close/i);
});
