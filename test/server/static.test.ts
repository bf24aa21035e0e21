// Serving the repository tree over real HTTP on 127.0.0.1: headers, conditional GET,
// Range (including many clients resuming mid-file), cache policy, and refusals.
import test from 'ava';
import { rename, symlink, writeFile, mkdir, rm, readdir } from 'node:fs/promises';
import path from 'node:path';
import { startServer, parseServerConfig, type RunningServer } from '../../repo-server/index.js';
import { makeFixtureRepo, rawRequest, sha256hex, tempDir, type FixtureRepo } from './helpers.js';

let repo: FixtureRepo;
let srv: RunningServer;
let outside: string;
// chunk names for the planted links, under prefixes the fixture's own chunks do not use
let viaDirName: string;
let insideName: string;

test.before(async () => {
  repo = await makeFixtureRepo();
  outside = await tempDir('loopship-outside-');
  await writeFile(path.join(outside, 'secret'), 'outside the tree');
  // symlinks: one leaving the tree (file), one leaving via a directory, one staying inside
  const used = new Set(await readdir(path.join(repo.dir, 'chunks')));
  const free = [...Array(256).keys()].map((i) => i.toString(16).padStart(2, '0')).filter((p) => !used.has(p));
  const [viaPrefix, insidePrefix] = free;
  const fake = 'ab' + 'c'.repeat(62);
  await mkdir(path.join(repo.dir, 'chunks', 'ab'), { recursive: true });
  await symlink(path.join(outside, 'secret'), path.join(repo.dir, 'chunks', 'ab', fake));
  viaDirName = viaPrefix + 'e'.repeat(62);
  await symlink(outside, path.join(repo.dir, 'chunks', viaPrefix));
  await symlink(path.join(outside, 'secret'), path.join(outside, viaDirName));
  insideName = insidePrefix + '0'.repeat(62);
  await mkdir(path.join(repo.dir, 'chunks', insidePrefix));
  await symlink(path.join(repo.dir, repo.chunk.rel), path.join(repo.dir, 'chunks', insidePrefix, insideName));
  srv = await startServer({ repoDir: repo.dir, config: parseServerConfig({}), stateDir: null });
});

test.after.always(async () => {
  await srv?.close(100);
  await rm(repo.dir, { recursive: true, force: true });
  await rm(outside, { recursive: true, force: true });
});

const get = (p: string, headers: Record<string, string> = {}, method = 'GET') => rawRequest(srv.url, { path: p, headers, method });

test('GET a chunk: full body, length, strong content ETag, immutable caching', async (t) => {
  const r = await get('/' + repo.chunk.rel);
  t.is(r.status, 200);
  t.true(r.body.equals(repo.chunk.bytes));
  t.is(r.headers['content-length'], String(repo.chunk.bytes.length));
  t.is(r.headers['etag'], `"${repo.chunk.sha}"`);
  t.is(r.headers['cache-control'], 'public, max-age=31536000, immutable');
  t.is(r.headers['accept-ranges'], 'bytes');
  t.is(r.headers['content-type'], 'application/zstd');
  t.truthy(r.headers['last-modified']);
  t.false(Number.isNaN(Date.parse(r.headers['last-modified']!)));
});

test('HEAD gives the same headers and no body', async (t) => {
  const r = await get('/' + repo.chunk.rel, {}, 'HEAD');
  t.is(r.status, 200);
  t.is(r.body.length, 0);
  t.is(r.headers['content-length'], String(repo.chunk.bytes.length));
  t.is(r.headers['etag'], `"${repo.chunk.sha}"`);
});

test('index.json and root.json must be revalidated; manifests and root history are immutable', async (t) => {
  for (const p of ['index.json', 'index.json.asc', 'root.json', 'root.json.asc']) {
    const r = await get('/' + p);
    t.is(r.status, 200, p);
    t.is(r.headers['cache-control'], 'no-cache', p);
    t.regex(r.headers['etag'] ?? '', /^"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"$/, `${p}: strong ETag`);
    t.true(r.body.equals(repo.files[p]), p);
  }
  t.is((await get('/index.json')).headers['content-type'], 'application/json');
  t.is((await get('/index.json.asc')).headers['content-type'], 'application/pgp-signature');
  const manifest = Object.keys(repo.files).find((k) => k.startsWith('manifests/'))!;
  const m = await get('/' + manifest);
  t.is(m.headers['cache-control'], 'public, max-age=31536000, immutable');
  t.is(m.headers['etag'], `"${manifest.slice(10, 74)}"`);
  t.is((await get('/root/1.json')).headers['cache-control'], 'public, max-age=31536000, immutable');
  const pkg = await get('/packages/demo_1.0_amd64.tar');
  t.is(pkg.status, 200);
  t.true(pkg.body.equals(repo.files['packages/demo_1.0_amd64.tar']));
});

test('conditional GET: If-None-Match and If-Modified-Since answer 304 without a body', async (t) => {
  const first = await get('/index.json');
  const etag = first.headers['etag']!;
  const inm = await get('/index.json', { 'If-None-Match': etag });
  t.is(inm.status, 304);
  t.is(inm.body.length, 0);
  t.is(inm.headers['etag'], etag);
  const ims = await get('/index.json', { 'If-Modified-Since': first.headers['last-modified']! });
  t.is(ims.status, 304);
  const other = await get('/index.json', { 'If-None-Match': '"something-else"' });
  t.is(other.status, 200);
  t.is((await get('/' + repo.chunk.rel, { 'If-None-Match': `"${repo.chunk.sha}"` })).status, 304);
  const old = await get('/index.json', { 'If-Modified-Since': new Date(0).toUTCString() });
  t.is(old.status, 200);
});

test('index.json replaced by rename: new ETag, old validator no longer matches', async (t) => {
  const dir = await tempDir();
  await writeFile(path.join(dir, 'index.json'), 'v1\n');
  const s = await startServer({ repoDir: dir, config: parseServerConfig({}), stateDir: null });
  t.teardown(async () => {
    await s.close(100);
    await rm(dir, { recursive: true, force: true });
  });
  const a = await rawRequest(s.url, { path: '/index.json' });
  await writeFile(path.join(dir, 'index.json.tmp'), 'v2\n');
  await rename(path.join(dir, 'index.json.tmp'), path.join(dir, 'index.json'));
  const b = await rawRequest(s.url, { path: '/index.json', headers: { 'If-None-Match': a.headers['etag']! } });
  t.is(b.status, 200);
  t.is(b.body.toString(), 'v2\n');
  t.not(b.headers['etag'], a.headers['etag']);
});

test('Range: single ranges give 206 with Content-Range; suffix and open-ended ranges', async (t) => {
  const size = repo.chunk.bytes.length;
  const r = await get('/' + repo.chunk.rel, { Range: 'bytes=100-199' });
  t.is(r.status, 206);
  t.is(r.headers['content-range'], `bytes 100-199/${size}`);
  t.is(r.headers['content-length'], '100');
  t.true(r.body.equals(repo.chunk.bytes.subarray(100, 200)));
  const suffix = await get('/' + repo.chunk.rel, { Range: 'bytes=-10' });
  t.is(suffix.status, 206);
  t.true(suffix.body.equals(repo.chunk.bytes.subarray(size - 10)));
  const open = await get('/' + repo.chunk.rel, { Range: `bytes=${size - 5000}-` });
  t.is(open.status, 206);
  t.is(open.headers['content-range'], `bytes ${size - 5000}-${size - 1}/${size}`);
  t.true(open.body.equals(repo.chunk.bytes.subarray(size - 5000)));
});

test('Range past the end: 416 with Content-Range bytes */size', async (t) => {
  const size = repo.chunk.bytes.length;
  const r = await get('/' + repo.chunk.rel, { Range: `bytes=${size}-` });
  t.is(r.status, 416);
  t.is(r.headers['content-range'], `bytes */${size}`);
  t.is(JSON.parse(r.body.toString()).code, 'RANGE_NOT_SATISFIABLE');
  t.is(r.headers['cache-control'], undefined, 'an error is not cached as immutable');
});

test('If-Range: a matching validator gets the range, a stale one the whole file', async (t) => {
  const fresh = await get('/' + repo.chunk.rel, { Range: 'bytes=0-9', 'If-Range': `"${repo.chunk.sha}"` });
  t.is(fresh.status, 206);
  t.is(fresh.body.length, 10);
  const stale = await get('/' + repo.chunk.rel, { Range: 'bytes=0-9', 'If-Range': '"0000"' });
  t.is(stale.status, 200);
  t.is(stale.body.length, repo.chunk.bytes.length);
});

test('many clients resuming mid-file at different offsets all get the right bytes', async (t) => {
  const size = repo.chunk.bytes.length;
  const clients = 40;
  const results = await Promise.all(
    Array.from({ length: clients }, async (_, i) => {
      // each client "already has" a prefix and resumes from there
      const from = Math.floor((size * i) / clients) + i;
      const r = await get('/' + repo.chunk.rel, { Range: `bytes=${from}-` });
      return { from, r };
    }),
  );
  for (const { from, r } of results) {
    t.is(r.status, 206);
    t.is(r.headers['content-range'], `bytes ${from}-${size - 1}/${size}`);
    t.is(sha256hex(r.body), sha256hex(repo.chunk.bytes.subarray(from)));
  }
});

test('path traversal, encoded traversal and odd paths are refused', async (t) => {
  const attempts = [
    '/../etc/passwd',
    '/%2e%2e/%2e%2e/etc/passwd',
    '/chunks/../root.json',
    '/chunks/%2e%2e/root.json',
    '/chunks%2f..%2froot.json',
    '/..%2f..%2fetc%2fpasswd',
    '//etc/passwd',
    '/index.json/',
    '/./index.json',
    '/chunks/' + repo.chunk.sha.slice(0, 2) + '/' + repo.chunk.sha + '/..',
    '/chunks\\..\\root.json',
    '/index.json%00',
    '/root/0.json',
    '/manifests/../../etc/passwd',
    '/etc/passwd',
    '/package.json',
  ];
  for (const p of attempts) {
    const r = await get(p);
    t.true(r.status === 404 || r.status === 400, `${p} -> ${r.status}`);
    t.false(r.body.toString().includes('root:'), p);
  }
  t.is((await get('/%E0%A4%A')).status, 400, 'malformed escape');
});

test('dot-files are never served', async (t) => {
  for (const p of ['/.secret', '/chunks/.hidden', '/.git/config', '/%2esecret']) {
    const r = await get(p);
    t.is(r.status, 404, p);
    t.false(r.body.toString().includes('dot file'), p);
  }
});

test('symlinks leaving the tree are refused, a symlink inside it is served', async (t) => {
  const out = await get('/chunks/ab/ab' + 'c'.repeat(62));
  t.is(out.status, 404);
  t.false(out.body.toString().includes('outside'));
  const viaDir = await get(`/chunks/${viaDirName.slice(0, 2)}/${viaDirName}`);
  t.is(viaDir.status, 404);
  t.false(viaDir.body.toString().includes('outside'));
  const inside = await get(`/chunks/${insideName.slice(0, 2)}/${insideName}`);
  t.is(inside.status, 200);
  t.true(inside.body.equals(repo.chunk.bytes));
});

test('a missing file is a JSON 404; a directory is not a file', async (t) => {
  const r = await get('/chunks/00/00' + '1'.repeat(62));
  t.is(r.status, 404);
  t.like(JSON.parse(r.body.toString()), { code: 'NOT_FOUND' });
  await mkdir(path.join(repo.dir, 'root', '7.json'), { recursive: true });
  t.is((await get('/root/7.json')).status, 404);
});

test('methods other than GET and HEAD are refused with 405 and Allow', async (t) => {
  for (const method of ['PUT', 'DELETE', 'POST', 'PATCH', 'PROPFIND', 'OPTIONS']) {
    for (const p of ['/index.json', '/' + repo.chunk.rel, '/nothing-here']) {
      const r = await get(p, {}, method);
      t.is(r.status, 405, `${method} ${p}`);
      t.is(r.headers['allow'], 'GET, HEAD', `${method} ${p}`);
    }
  }
  t.true((await get('/index.json')).body.equals(repo.files['index.json']), 'unchanged');
});
