// The serving rules as pure functions, plus the corners the end-to-end file does not
// reach: several ranges, If-Match, small-file ranges, the express-only app (supertest),
// and a directory swapped for a symlink out of the tree while the server runs.
import test from 'ava';
import request from 'supertest';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseRange, isNotModified, etagFor, repositoryPathOf, cacheControlFor } from '../../repo-server/static.js';
import { createApp, startServer, parseServerConfig } from '../../repo-server/index.js';
import { makeFixtureRepo, rawRequest, tempDir } from './helpers.js';

test('parseRange follows RFC 9110 for single ranges and ignores the rest', (t) => {
  t.deepEqual(parseRange(1000, 'bytes=0-99'), { start: 0, end: 99 });
  t.deepEqual(parseRange(1000, 'bytes=900-'), { start: 900, end: 999 });
  t.deepEqual(parseRange(1000, 'bytes=-100'), { start: 900, end: 999 });
  t.deepEqual(parseRange(1000, 'bytes=-5000'), { start: 0, end: 999 });
  t.deepEqual(parseRange(1000, 'bytes=990-5000'), { start: 990, end: 999 }, 'end clamped to the file');
  t.is(parseRange(1000, 'bytes=1000-'), 'unsatisfiable');
  t.is(parseRange(1000, 'bytes=-0'), 'unsatisfiable');
  t.is(parseRange(0, 'bytes=0-'), 'unsatisfiable');
  t.is(parseRange(1000, undefined), null);
  t.is(parseRange(1000, 'bytes=5-1'), null, 'inverted: ignored');
  t.is(parseRange(1000, 'bytes=0-1,5-6'), null, 'several ranges: whole file');
  t.is(parseRange(1000, 'items=0-1'), null);
  t.is(parseRange(1000, 'bytes=-'), null);
  t.is(parseRange(1000, 'bytes=abc-'), null);
});

test('conditional GET helpers', (t) => {
  const etag = '"abc"';
  const mtime = Date.parse('2026-01-01T00:00:00.500Z');
  t.true(isNotModified({ 'if-none-match': '"abc"' }, etag, mtime));
  t.true(isNotModified({ 'if-none-match': 'W/"abc"' }, etag, mtime), 'weak comparison for If-None-Match');
  t.true(isNotModified({ 'if-none-match': '"x", "abc"' }, etag, mtime));
  t.true(isNotModified({ 'if-none-match': '*' }, etag, mtime));
  t.false(isNotModified({ 'if-none-match': '"x"' }, etag, mtime));
  t.false(isNotModified({ 'if-none-match': '"x"', 'if-modified-since': new Date(mtime + 10_000).toUTCString() }, etag, mtime), 'If-None-Match wins');
  t.true(isNotModified({ 'if-modified-since': 'Thu, 01 Jan 2026 00:00:00 GMT' }, etag, mtime), 'second precision');
  t.false(isNotModified({ 'if-modified-since': 'Wed, 31 Dec 2025 23:59:59 GMT' }, etag, mtime));
  t.false(isNotModified({ 'if-modified-since': 'garbage' }, etag, mtime));
  t.false(isNotModified({}, etag, mtime));
});

test('paths, validators and cache policy', (t) => {
  const sha = 'ab' + '0'.repeat(62);
  t.is(repositoryPathOf(`/chunks/ab/${sha}?x=1`), `chunks/ab/${sha}`);
  t.is(repositoryPathOf('/index.json'), 'index.json');
  t.is(repositoryPathOf('/%69ndex.json'), 'index.json', 'escapes are decoded once');
  t.is(repositoryPathOf('/%2e%2e/index.json'), null);
  t.is(repositoryPathOf('/%zz'), 'malformed');
  t.is(repositoryPathOf('/'), null);
  t.is(repositoryPathOf('index.json'), null);
  t.is(etagFor(`chunks/ab/${sha}`, { ino: 1, size: 2, mtimeMs: 3 }), `"${sha}"`);
  t.is(etagFor(`manifests/${sha}.json`, { ino: 1, size: 2, mtimeMs: 3 }), `"${sha}"`);
  t.not(etagFor(`manifests/${sha}.json.asc`, { ino: 1, size: 2, mtimeMs: 3 }), `"${sha}"`, 'a signature is not the manifest');
  t.not(etagFor('index.json', { ino: 1, size: 2, mtimeMs: 3 }), etagFor('index.json', { ino: 1, size: 2, mtimeMs: 3.001 }), 'sub-millisecond mtimes differ');
  t.is(cacheControlFor('index.json'), 'no-cache');
  t.is(cacheControlFor('index/7.json'), 'public, max-age=31536000, immutable');
  t.is(cacheControlFor(`chunks/ab/${sha}`), 'public, max-age=31536000, immutable');
});

test('over HTTP: several ranges get the whole file; If-Match mismatch is 412; small files take ranges', async (t) => {
  const repo = await makeFixtureRepo();
  const srv = await startServer({ repoDir: repo.dir, config: parseServerConfig({}), stateDir: null });
  t.teardown(async () => {
    await srv.close(100);
    await rm(repo.dir, { recursive: true, force: true });
  });
  const multi = await rawRequest(srv.url, { path: '/' + repo.chunk.rel, headers: { Range: 'bytes=0-9,20-29' } });
  t.is(multi.status, 200);
  t.is(multi.body.length, repo.chunk.bytes.length);
  const im = await rawRequest(srv.url, { path: '/index.json', headers: { 'If-Match': '"nope"' } });
  t.is(im.status, 412);
  const small = await rawRequest(srv.url, { path: '/index.json', headers: { Range: 'bytes=2-5' } });
  t.is(small.status, 206);
  t.is(small.body.toString(), repo.files['index.json'].subarray(2, 6).toString());
  t.is(small.headers['content-range'], `bytes 2-5/${repo.files['index.json'].length}`);
  const head = await rawRequest(srv.url, { path: '/index.json', method: 'HEAD', headers: { Range: 'bytes=2-5' } });
  t.is(head.status, 206);
  t.is(head.headers['content-length'], '4');
  t.is(head.body.length, 0);
});

test('a directory replaced by a symlink out of the tree is refused once the cache expires', async (t) => {
  const repo = await makeFixtureRepo();
  const outside = await tempDir('loopship-outside-');
  const srv = await startServer({ repoDir: repo.dir, config: parseServerConfig({}), stateDir: null, static: { dirCacheMs: 50 } });
  t.teardown(async () => {
    await srv.close(100);
    await rm(repo.dir, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  });
  t.is((await rawRequest(srv.url, { path: '/' + repo.chunk.rel })).status, 200);
  const dir = path.dirname(path.join(repo.dir, repo.chunk.rel));
  await mkdir(path.join(outside, 'moved'));
  await rename(dir, path.join(outside, 'moved', 'x'));
  await symlink(path.join(outside, 'moved', 'x'), dir);
  await new Promise((r) => setTimeout(r, 100));
  const r = await rawRequest(srv.url, { path: '/' + repo.chunk.rel });
  t.is(r.status, 404);
  t.is(r.body.length < 1000, true);
});

test('createApp alone (no startServer) serves the same tree: supertest', async (t) => {
  const repo = await makeFixtureRepo();
  t.teardown(() => rm(repo.dir, { recursive: true, force: true }));
  // the dashboard is private by default (dashboard.public: false); this test is about the tree
  const app = createApp({ repoDir: repo.dir, config: parseServerConfig({ dashboard: { public: true } }) });
  t.is((await request(createApp({ repoDir: repo.dir, config: parseServerConfig({}) })).get('/')).status, 401, 'private by default');
  const r = await request(app).get('/' + repo.chunk.rel).buffer(true).parse((res, cb) => {
    const parts: Buffer[] = [];
    res.on('data', (d: Buffer) => parts.push(d));
    res.on('end', () => cb(null, Buffer.concat(parts)));
  });
  t.is(r.status, 200);
  t.true((r.body as Buffer).equals(repo.chunk.bytes));
  t.is(r.headers['etag'], `"${repo.chunk.sha}"`);
  t.is((await request(app).get('/.secret')).status, 404);
  t.is((await request(app).delete('/index.json')).status, 405);
  t.is((await request(app).get('/')).status, 200);
  t.regex((await request(app).get('/')).text, /<title>loopship repository<\/title>/);
  await writeFile(path.join(repo.dir, 'index.json'), 'not json');
  t.regex((await request(app).get('/')).text, /not valid JSON/, 'a broken index is shown, not a crash');
});
