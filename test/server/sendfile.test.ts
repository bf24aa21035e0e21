// File bodies through the sendfile addon (repo-server/native, repo-server/sendfile.ts):
// byte-identical bodies and headers identical to the JS path, many clients at once, and
// every way a transfer can end early (client gone, file cut short, client stalled past the
// idle timeout, server shut down) without a leaked descriptor: the addon dup()s the
// socket, so a leak would show in /proc/self/fd (the server runs in this process). Also
// the fallback: LOOPSHIP_NO_SENDFILE=1 or an addon that does not load gives the JS path.
import test from 'ava';
import { readdirSync, readlinkSync } from 'node:fs';
import { mkdir, rm, truncate, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { startServer, parseServerConfig, BufferPool, type RunningServer } from '../../repo-server/index.js';
import { loadSendfile, type SendfileAddon, type SendfileHandle } from '../../repo-server/sendfile.js';
import { rawRequest, sha256hex, tempDir, openCount, settled, rangedDownloads, type RawResponse } from './helpers.js';

const PACK = `packs/${'7'.repeat(64)}.pack`;
const BIG = `packs/${'6'.repeat(64)}.pack`;
const CHUNK = `chunks/ab/ab${'c'.repeat(62)}`;
const SIZE = 3 * 1024 * 1024 + 4321;
const BIG_SIZE = 48 * 1024 * 1024; // more than loopback socket buffers hold: the poll path runs
const native = loadSendfile().addon;

let dir: string;
let data: Buffer;
let big: Buffer;
let small: Buffer;

/** The real addon, counting what the server asks of it. */
const calls = { starts: 0, handles: 0, cancels: 0, errors: 0 };
const spy: SendfileAddon | null = native && {
  start(s, f, o, l, cb) {
    calls.starts++;
    const r = native.start(s, f, o, l, (err, sent) => {
      if (err) calls.errors++;
      cb(err, sent);
    });
    if (typeof r !== 'number') calls.handles++;
    return r;
  },
  cancel(h: SendfileHandle) {
    calls.cancels++;
    native.cancel(h);
  },
  sent: (h) => native.sent(h),
};

/** a log that keeps its lines */
function memoryLog(): { log: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

let srv: RunningServer; // sendfile for bodies of 4 KiB and more (the default split)
let every: RunningServer; // sendfile for every body, small ones too
let js: RunningServer; // the JS path
let srvLog: ReturnType<typeof memoryLog>;
const jsPool = new BufferPool(64 * 1024, 4);
const unusedPool = new BufferPool(64 * 1024, 4);

test.before(async () => {
  dir = await tempDir('loopship-sendfile-');
  await mkdir(path.join(dir, 'packs'));
  await mkdir(path.join(dir, 'chunks', 'ab'), { recursive: true });
  data = randomBytes(SIZE);
  big = randomBytes(BIG_SIZE);
  small = randomBytes(30 * 1024 + 7);
  await writeFile(path.join(dir, PACK), data);
  await writeFile(path.join(dir, BIG), big);
  await writeFile(path.join(dir, CHUNK), small);
  srvLog = memoryLog();
  const config = parseServerConfig({});
  srv = await startServer({ repoDir: dir, config, stateDir: null, log: srvLog.log, static: { sendfile: spy, pool: unusedPool } });
  every = await startServer({ repoDir: dir, config, stateDir: null, static: { sendfile: spy, sendfileMinBytes: 1, pool: unusedPool } });
  js = await startServer({ repoDir: dir, config, stateDir: null, static: { sendfile: null, pool: jsPool } });
});

test.after.always(async () => {
  await Promise.all([srv?.close(100), every?.close(100), js?.close(100)]);
  await rm(dir, { recursive: true, force: true });
});

const fdCount = () => readdirSync('/proc/self/fd').length;

/**
 * The server's end of its next connection: the socket's /proc link ("socket:[inode]"), the
 * same for any dup of it, and when Node closed it.
 */
function nextServerSocket(server: http.Server): Promise<{ link: string; closed: Promise<void> }> {
  return new Promise((resolve) =>
    server.once('connection', (sock) => {
      const fd = (sock as unknown as { _handle: { fd: number } })._handle.fd;
      resolve({ link: readlinkSync(`/proc/self/fd/${fd}`), closed: new Promise((r) => sock.once('close', () => r())) });
    }),
  );
}

/** A download whose client does `onFirst` with the response after its first bytes; resolves when the connection is over. */
function download(url: string, onFirst: (res: http.IncomingMessage, req: http.ClientRequest) => void): Promise<{ status: number; got: number; complete: boolean }> {
  return new Promise((resolve) => {
    let got = 0;
    const req = http.get(url, { agent: false }, (res) => {
      res.once('data', () => onFirst(res, req));
      res.on('data', (d: Buffer) => (got += d.length));
      res.on('close', () => resolve({ status: res.statusCode ?? 0, got, complete: res.complete }));
      res.on('error', () => {});
    });
    req.on('error', () => resolve({ status: 0, got, complete: false }));
  });
}

test.serial('the addon is built and loads here (npm run build:native)', (t) => {
  t.truthy(native, loadSendfile().why);
  t.is(loadSendfile().why, 'sendfile (zero-copy addon)');
});

test.serial('whole files and ranges through sendfile are byte-identical; the JS pool is never touched', async (t) => {
  const before = { ...calls };
  const cases: [string, string | undefined, Buffer][] = [
    [PACK, undefined, data],
    [PACK, 'bytes=1000-1100999', data.subarray(1000, 1101000)],
    [PACK, `bytes=-70000`, data.subarray(SIZE - 70000)],
    [PACK, 'bytes=5-', data.subarray(5)],
    [BIG, undefined, big],
    [BIG, 'bytes=8388608-16777215', big.subarray(8388608, 16777216)],
  ];
  for (const [p, range, want] of cases) {
    const r = await rawRequest(srv.url, { path: '/' + p, headers: range ? { Range: range } : {} });
    t.is(r.status, range ? 206 : 200, `${p} ${range}`);
    t.is(Number(r.headers['content-length']), want.length);
    t.is(sha256hex(r.body), sha256hex(want), `${p} ${range}: same bytes`);
  }
  t.is(calls.starts - before.starts, cases.length, 'every body went through sendfile');
  t.true(calls.handles > before.handles, 'the big ones waited for the socket (the poll path ran)');
  t.is(unusedPool.stats().allocated, 0, 'no JS read buffer');
  // below 4 KiB the body leaves with its headers in one write
  const tiny = await rawRequest(srv.url, { path: '/' + CHUNK, headers: { Range: 'bytes=0-4094' } });
  t.true(tiny.body.equals(small.subarray(0, 4095)));
  t.is(calls.starts - before.starts, cases.length, 'a body under 4 KiB: no sendfile');
  // small bodies through sendfile (sendfileMinBytes: 1), whole and ranged, and a 1-byte range
  for (const [range, want] of [[undefined, small], ['bytes=100-20099', small.subarray(100, 20100)], ['bytes=0-0', small.subarray(0, 1)]] as const) {
    const r = await rawRequest(every.url, { path: '/' + CHUNK, headers: range ? { Range: range } : {} });
    t.is(r.status, range ? 206 : 200);
    t.true(r.body.equals(want), `chunk ${range}`);
  }
  await settled(() => openCount(path.join(dir, PACK)) + openCount(path.join(dir, BIG)) + openCount(path.join(dir, CHUNK)) === 0, 'files closed');
});

test.serial('status and headers are the same as the JS path gives (200, 206, 304, 416, If-Range, HEAD)', async (t) => {
  const etag = (await rawRequest(js.url, { path: '/' + PACK, method: 'HEAD' })).headers['etag']!;
  const requests: { path: string; method?: string; headers?: Record<string, string> }[] = [
    { path: '/' + PACK },
    { path: '/' + PACK, headers: { Range: 'bytes=10-2000009' } },
    { path: '/' + PACK, headers: { Range: `bytes=${SIZE}-` } },
    { path: '/' + PACK, headers: { 'If-None-Match': etag } },
    { path: '/' + PACK, headers: { Range: 'bytes=0-999999', 'If-Range': '"stale"' } },
    { path: '/' + PACK, headers: { Range: 'bytes=0-999999', 'If-Range': etag } },
    { path: '/' + PACK, method: 'HEAD', headers: { Range: 'bytes=0-99' } },
    { path: '/' + CHUNK, headers: { Range: 'bytes=7-' } },
  ];
  const comparable = (r: RawResponse) => {
    const { date: _date, ...headers } = r.headers;
    return { status: r.status, headers, body: sha256hex(r.body) };
  };
  for (const req of requests) {
    const [a, b] = await Promise.all([rawRequest(every.url, req), rawRequest(js.url, req)]);
    t.deepEqual(comparable(a), comparable(b), JSON.stringify(req));
  }
});

test.serial('30 clients x 4 ranges in flight each: every byte right, no descriptor left', async (t) => {
  const fds = fdCount();
  const bodies = await rangedDownloads(`${srv.url}/${PACK}`, SIZE, 30, 1024 * 1024);
  const want = sha256hex(data);
  t.true(bodies.every((b) => sha256hex(b) === want));
  await settled(() => fdCount() <= fds, `descriptors back to ${fds} (now ${fdCount()})`);
  t.is(openCount(path.join(dir, PACK)), 0);
});

test.serial('clients that go away mid-body: transfers cancelled, socket dups and files closed', async (t) => {
  const fds = fdCount();
  const before = { ...calls };
  const outcomes = await Promise.all(
    Array.from({ length: 12 }, (_, i) =>
      download(`${srv.url}/${BIG}`, (res, req) => {
        // half of them pause first, so the server is waiting for room when they go
        if (i % 2) {
          res.pause();
          setTimeout(() => req.destroy(), 50);
        } else req.destroy();
      }),
    ),
  );
  t.true(outcomes.every((o) => !o.complete && o.got < BIG_SIZE));
  await settled(() => fdCount() <= fds, `descriptors back to ${fds} (now ${fdCount()})`);
  t.is(openCount(path.join(dir, BIG)), 0);
  t.true(calls.cancels + calls.errors - before.cancels - before.errors >= 1, 'some transfers were running when their client went');
  // and the server still serves
  const r = await rawRequest(srv.url, { path: '/' + BIG, headers: { Range: 'bytes=0-999999' } });
  t.true(r.body.equals(big.subarray(0, 1000000)));
});

test.serial('a file cut short while it is sent: the connection ends early (never padded), logged, the server goes on', async (t) => {
  const rel = `packs/${'8'.repeat(64)}.pack`;
  const size = 64 * 1024 * 1024;
  await writeFile(path.join(dir, rel), Buffer.alloc(size, 1));
  const fds = fdCount();
  const outcome = await download(`${srv.url}/${rel}`, (res) => {
    res.pause();
    void truncate(path.join(dir, rel), 1024).then(() => res.resume());
  });
  t.is(outcome.status, 200);
  t.false(outcome.complete, 'the client can tell the body is incomplete');
  t.true(outcome.got < size);
  await settled(() => fdCount() <= fds, 'released after the failure');
  t.true(
    srvLog.lines.some((l) => l.includes('ESHRANK')),
    'the failure is logged',
  );
  const r = await rawRequest(srv.url, { path: '/' + PACK, headers: { Range: 'bytes=0-9' } });
  t.true(r.body.equals(data.subarray(0, 10)));
});

test.serial('idle timeout: a slow but steady client is not cut, a stalled one is, and nothing leaks', async (t) => {
  const s = await startServer({ repoDir: dir, config: parseServerConfig({}), stateDir: null, static: { sendfile: spy } });
  s.server.setTimeout(400); // new connections: idle for 400 ms means gone
  try {
    const fds = fdCount();
    // slow: pauses 150 ms after every 2 MiB, so the body takes several timeouts' worth
    const t0 = Date.now();
    const slow = await new Promise<{ got: number; complete: boolean }>((resolve) => {
      let got = 0;
      let since = 0;
      http
        .get(`${s.url}/${BIG}`, { agent: false }, (res) => {
          res.on('data', (d: Buffer) => {
            got += d.length;
            since += d.length;
            if (since >= 2 * 1024 * 1024) {
              since = 0;
              res.pause();
              setTimeout(() => res.resume(), 150);
            }
          });
          res.on('close', () => resolve({ got, complete: res.complete }));
          res.on('error', () => {});
        })
        .on('error', () => resolve({ got: -1, complete: false }));
    });
    t.true(Date.now() - t0 > 1000, 'the download outlasted the idle timeout');
    t.true(slow.complete, 'the slow client got everything');
    t.is(slow.got, BIG_SIZE);
    // stalled: reads the first bytes, then nothing; the server's end of it must close,
    // dup included (the paused client notices only once it reads again)
    const serverSide = nextServerSocket(s.server);
    const t1 = Date.now();
    const stalled = download(`${s.url}/${BIG}`, (res) => {
      res.pause();
      void serverSide.then(async ({ link, closed }) => {
        await closed;
        await settled(() => openCount(link) === 0, 'the dup closed', 2000).catch(() => {});
        res.resume();
      });
    });
    const { link, closed } = await serverSide;
    await closed;
    t.true(Date.now() - t1 < 4000, `the stalled client was cut after about the timeout (${Date.now() - t1} ms)`);
    await settled(() => openCount(link) === 0, `no dup of the server's socket left`, 2000);
    t.false((await stalled).complete);
    await settled(() => fdCount() <= fds, `descriptors back to ${fds} (now ${fdCount()})`);
  } finally {
    await s.close(100);
  }
});

test.serial('server shut down mid-body: the transfer is cancelled, close() finishes, nothing leaks', async (t) => {
  const fds = fdCount();
  const s = await startServer({ repoDir: dir, config: parseServerConfig({}), stateDir: null, static: { sendfile: spy } });
  let closed: Promise<void> | undefined;
  let released = false;
  const serverSide = nextServerSocket(s.server);
  const outcome = await download(`${s.url}/${BIG}`, (res) => {
    res.pause();
    closed = s.close(100); // grace over, open connections are cut
    // before the paused client reads again (and would notice the end): no dup of the
    // server's socket is left
    void Promise.all([closed, serverSide])
      .then(([, { link }]) => settled(() => openCount(link) === 0, 'the dup closed', 2000))
      .then(
        () => (released = true),
        () => {},
      )
      .then(() => res.resume());
  });
  await closed;
  t.true(released, 'the transfer was cancelled when its socket closed');
  t.false(outcome.complete);
  await settled(() => fdCount() <= fds, `descriptors back to ${fds} (now ${fdCount()})`);
  t.is(openCount(path.join(dir, BIG)), 0);
});

test.serial('LOOPSHIP_NO_SENDFILE=1: the JS path serves, and the log says which path', async (t) => {
  t.deepEqual(loadSendfile({ LOOPSHIP_NO_SENDFILE: '1' }), { addon: null, why: 'JS copy (LOOPSHIP_NO_SENDFILE=1)' });
  const pool = new BufferPool(64 * 1024, 2);
  const { log, lines } = memoryLog();
  process.env.LOOPSHIP_NO_SENDFILE = '1';
  let s: RunningServer;
  try {
    s = await startServer({ repoDir: dir, config: parseServerConfig({}), stateDir: null, log, static: { pool } });
  } finally {
    delete process.env.LOOPSHIP_NO_SENDFILE;
  }
  try {
    const r = await rawRequest(s.url, { path: '/' + PACK, headers: { Range: 'bytes=3-2000002' } });
    t.is(r.status, 206);
    t.true(r.body.equals(data.subarray(3, 2000003)));
    t.true(pool.stats().allocated >= 1, 'the body went through the JS read buffers');
    t.true(lines.some((l) => l.includes('file bodies: JS copy (LOOPSHIP_NO_SENDFILE=1)')));
  } finally {
    await s.close(100);
  }
  // and by default the log names the addon
  t.true(srvLog.lines.some((l) => l.includes('file bodies: sendfile')));
});

test.serial('an addon that is missing or does not load: the JS path, with the reason', async (t) => {
  const missing = loadSendfile({}, ['./native/build/Release/nothing-here.node']);
  t.is(missing.addon, null);
  t.regex(missing.why, /^JS copy \(sendfile addon not built/);
  const bogus = path.join(dir, 'bogus.node');
  await writeFile(bogus, 'not an ELF object');
  const broken = loadSendfile({}, [pathToFileURL(bogus).href]);
  t.is(broken.addon, null);
  t.regex(broken.why, /^JS copy \(sendfile addon cannot load/);
});
