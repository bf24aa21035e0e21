// Serving packs (packs/<manifest-sha256>.pack) the way agents fetch them: Range requests of
// up to 8 MiB, several at once per client, through the server's bounded pool of read
// buffers. A tiny pool here makes nearly every response wait for a buffer, so lost or
// leaked buffers, short or mixed-up bodies and left-open files would all show. This is the
// JS path (sendfile: null), used when the sendfile addon is absent; sendfile.test.ts runs
// the same kinds of downloads through the addon.
import test from 'ava';
import { mkdir, rm, truncate, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { startServer, parseServerConfig, BufferPool, type RunningServer } from '../../repo-server/index.js';
import { CACHE_IMMUTABLE } from '../../repo-server/static.js';
import { rawRequest, sha256hex, tempDir, openCount, settled, rangedDownloads } from './helpers.js';

const PACK = `packs/${'7'.repeat(64)}.pack`;
const SIZE = 3 * 1024 * 1024 + 4321;
let dir: string;
let data: Buffer;
let srv: RunningServer;
// 2 buffers of 16 KiB: a 1 MiB range takes 64 steps, and 2 responses at most read at once
const pool = new BufferPool(16 * 1024, 2);

test.before(async () => {
  dir = await tempDir('loopship-packs-');
  await mkdir(path.join(dir, 'packs'));
  data = randomBytes(SIZE);
  await writeFile(path.join(dir, PACK), data);
  srv = await startServer({ repoDir: dir, config: parseServerConfig({}), stateDir: null, static: { pool, sendfile: null } });
});

test.after.always(async () => {
  await srv?.close(100);
  await rm(dir, { recursive: true, force: true });
});

test.serial('a Range on a pack: 206, exact bytes and Content-Range, immutable caching, octet-stream', async (t) => {
  const r = await rawRequest(srv.url, { path: '/' + PACK, headers: { Range: 'bytes=1000-1100999' } });
  t.is(r.status, 206);
  t.is(r.headers['content-range'], `bytes 1000-1100999/${SIZE}`);
  t.is(r.headers['content-length'], '1100000');
  t.true(r.body.equals(data.subarray(1000, 1101000)));
  t.is(r.headers['cache-control'], CACHE_IMMUTABLE);
  t.is(r.headers['content-type'], 'application/octet-stream');
  t.is(r.headers['accept-ranges'], 'bytes');
  const etag = r.headers['etag']!;
  t.regex(etag, /^"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"$/, 'a pack is named after its manifest, not its bytes: inode-size-mtime validator');

  const head = await rawRequest(srv.url, { method: 'HEAD', path: '/' + PACK, headers: { Range: 'bytes=0-99' } });
  t.is(head.status, 206);
  t.is(head.headers['content-length'], '100');
  t.is(head.body.length, 0);

  const resumed = await rawRequest(srv.url, { path: '/' + PACK, headers: { Range: `bytes=${SIZE - 70000}-`, 'If-Range': etag } });
  t.is(resumed.status, 206);
  t.true(resumed.body.equals(data.subarray(SIZE - 70000)));
  const whole = await rawRequest(srv.url, { path: '/' + PACK });
  t.is(whole.status, 200);
  t.is(sha256hex(whole.body), sha256hex(data));
  const s = pool.stats();
  t.true(s.allocated >= 1 && s.allocated <= 2);
  t.is(s.free, s.allocated, 'every buffer back');
  t.is(s.waiting, 0);
});

test.serial('30 clients x 4 ranges in flight each, all through 2 read buffers: every byte right, nothing held after', async (t) => {
  // ranges of at most 1 MiB, cut like a client's plan
  const bodies = await rangedDownloads(`${srv.url}/${PACK}`, SIZE, 30, 1024 * 1024);
  const want = sha256hex(data);
  t.true(bodies.every((b) => sha256hex(b) === want));
  await settled(() => openCount(path.join(dir, PACK)) === 0 && pool.stats().free === pool.stats().allocated, 'pack descriptors closed, buffers back');
  const s = pool.stats();
  t.true(s.allocated <= 2, 'never more than 2 counted buffers');
  t.is(s.free, s.allocated, 'every buffer back (lent ones adopted)');
  t.is(s.waiting, 0);
  t.is(openCount(path.join(dir, PACK)), 0);
});

test.serial('clients that go away mid-range (reading, or waiting for a buffer) give back their buffers and files', async (t) => {
  const file = path.join(dir, PACK);
  // 12 downloads of the whole pack, each cut off after its first bytes; with 2 buffers,
  // most are still waiting for one when they go
  await Promise.all(
    Array.from(
      { length: 12 },
      (_, i) =>
        new Promise<void>((resolve) => {
          const req = http.get(`${srv.url}/${PACK}`, { agent: false, headers: i % 2 ? { Range: 'bytes=5-' } : {} }, (res) => {
            res.once('data', () => req.destroy());
            res.on('error', () => {});
          });
          req.on('error', () => {});
          req.on('close', () => resolve());
        }),
    ),
  );
  await settled(() => openCount(file) === 0 && pool.stats().waiting === 0 && pool.stats().free === pool.stats().allocated, 'cut-off downloads released');
  const s = pool.stats();
  t.is(s.waiting, 0);
  t.is(s.free, s.allocated, 'no buffer still lent out');
  t.true(s.allocated <= 2);
  t.is(openCount(file), 0);
  // and the pool still works: with a lost buffer this would wait forever
  const r = await rawRequest(srv.url, { path: '/' + PACK, headers: { Range: 'bytes=0-999999' } });
  t.is(r.status, 206);
  t.true(r.body.equals(data.subarray(0, 1000000)));
});

test.serial('a pack cut short while it is sent: the body ends early (never padded or a lie), the server goes on', async (t) => {
  const rel = `packs/${'8'.repeat(64)}.pack`;
  const big = 64 * 1024 * 1024; // more than loopback socket buffers hold, so most is read after the cut
  await writeFile(path.join(dir, rel), Buffer.alloc(big, 1));
  const outcome = await new Promise<{ status: number; got: number; complete: boolean }>((resolve) => {
    const req = http.get(`${srv.url}/${rel}`, { agent: false }, (res) => {
      let got = 0;
      res.once('data', (d: Buffer) => {
        got += d.length;
        res.pause();
        void truncate(path.join(dir, rel), 1024).then(() => {
          res.on('data', (x: Buffer) => (got += x.length));
          res.resume();
        });
      });
      res.on('close', () => resolve({ status: res.statusCode ?? 0, got, complete: res.complete }));
      res.on('error', () => {});
    });
    req.on('error', () => {});
  });
  t.is(outcome.status, 200);
  t.false(outcome.complete, 'the client can tell the body is incomplete');
  t.true(outcome.got < big);
  await settled(() => openCount(path.join(dir, rel)) === 0 && pool.stats().free === pool.stats().allocated, 'released after the failure');
  const r = await rawRequest(srv.url, { path: '/' + PACK, headers: { Range: 'bytes=0-9' } });
  t.is(r.status, 206);
  t.true(r.body.equals(data.subarray(0, 10)));
});

test.serial('a client that stops reading does not hold up the others: its pending write is lent out of the pool', async (t) => {
  const one = new BufferPool(64 * 1024, 1);
  const s2 = await startServer({ repoDir: dir, config: parseServerConfig({}), stateDir: null, static: { pool: one, sendfile: null } });
  const rel = `packs/${'9'.repeat(64)}.pack`;
  await writeFile(path.join(dir, rel), randomBytes(32 * 1024 * 1024)); // more than the socket buffers hold
  try {
    // a stalled client: reads the first bytes, then nothing
    let stalled: http.ClientRequest | undefined;
    await new Promise<void>((resolve) => {
      stalled = http.get(`${s2.url}/${rel}`, { agent: false }, (res) => {
        res.once('data', () => {
          res.pause();
          resolve();
        });
      });
    });
    // let the server fill the socket until a write is pending
    await settled(() => one.stats().allocated === 0, 'the stalled write lent out');
    const r = await Promise.race([
      rawRequest(s2.url, { path: '/' + PACK, headers: { Range: 'bytes=0-999999' } }),
      new Promise<null>((resolve) => setTimeout(() => resolve(null), 10_000)),
    ]);
    t.truthy(r, 'a second client is served while the first one stalls');
    t.is(r!.status, 206);
    t.true(r!.body.equals(data.subarray(0, 1000000)));
    stalled!.destroy();
    await settled(() => openCount(path.join(dir, rel)) === 0, 'the stalled download closed');
  } finally {
    await s2.close(100);
  }
});
