// The HTTP fetcher and mirror failover against misbehaving servers on 127.0.0.1.
import test from 'ava';
import { makeRepo, makePackage, publish, serveDir } from '../helpers/repo.js';
import { HttpFetcher, RepoClient, createFetcher } from '../../format/index.js';

test('limits: Content-Length over the limit, endless bodies, slow drips, redirects and error pages are refused', async (t) => {
  const server = await serveDir('/nonexistent', async (req, res) => {
    switch (req.url) {
      case '/big':
        res.writeHead(200, { 'content-length': String(10 * 1024 * 1024) });
        res.end();
        return true;
      case '/endless': {
        res.writeHead(200); // chunked, no length: would go on forever
        const pump = () => {
          if (!res.destroyed && res.write(Buffer.alloc(64 * 1024))) setImmediate(pump);
          else if (!res.destroyed) res.once('drain', pump);
        };
        pump();
        return true;
      }
      case '/slow': {
        res.writeHead(200);
        const timer = setInterval(() => (res.destroyed ? clearInterval(timer) : res.write('x')), 200);
        res.on('close', () => clearInterval(timer));
        return true;
      }
      case '/redirect':
        res.writeHead(302, { location: 'http://127.0.0.2:1/evil' }).end();
        return true;
      case '/html':
        res.writeHead(503, { 'content-type': 'text/html' }).end('<html>Service Unavailable</html>');
        return true;
      case '/short':
        res.writeHead(200, { 'content-length': '1000' });
        res.end(Buffer.alloc(10)); // the server lies: fewer bytes than promised
        setImmediate(() => req.socket.destroy());
        return true;
    }
    return false;
  });
  t.teardown(server.close);
  const f = new HttpFetcher(server.url, { baseTimeoutMs: 1500, idleTimeoutMs: 1000, minBytesPerSecond: 1e9 });
  await t.throwsAsync(f.get('big', 1024 * 1024), { message: /Content-Length 10485760 exceeds the 1048576-byte limit/ });
  await t.throwsAsync(f.get('endless', 1024 * 1024), { message: /more than 1048576 bytes/ });
  const slow = await t.throwsAsync(f.get('slow', 1024));
  t.regex(slow!.message, /slow: took longer than 2 s|no data/);
  await t.throwsAsync(f.get('redirect', 1024), { message: /redirect\/?: ?HTTP 302 redirect to http:\/\/127\.0\.0\.2:1\/evil refused|302 redirect/ });
  await t.throwsAsync(f.get('html', 1024), { message: /html: HTTP 503/ });
  await t.throwsAsync(f.get('short', 2000), { message: /short/ });
  const nf = await t.throwsAsync(f.get('missing', 10));
  t.is((nf as { code?: string }).code, 'NOT_FOUND');
  await t.throwsAsync(f.get('../etc/passwd', 10), { message: /outside the repository/ });
  f.close();
});

test('a slow drip with a small Content-Length is cut off by a deadline for that length, not for the size limit', async (t) => {
  const server = await serveDir('/nonexistent', async (_req, res) => {
    res.writeHead(200, { 'content-length': '100' });
    const timer = setInterval(() => (res.destroyed ? clearInterval(timer) : res.write('x')), 200);
    res.on('close', () => clearInterval(timer));
    return true;
  });
  t.teardown(server.close);
  // limit 16 MiB at 1000 B/s would allow ~4.7 hours; 100 bytes at 1000 B/s: base + 0.1 s
  const f = new HttpFetcher(server.url, { baseTimeoutMs: 1000, idleTimeoutMs: 10_000, minBytesPerSecond: 1000 });
  const t0 = Date.now();
  const err = await t.throwsAsync(f.get('index.json', 16 * 1024 * 1024));
  t.regex(err!.message, /took longer than 1 s/);
  t.true(Date.now() - t0 < 5000, `${Date.now() - t0} ms`);
  f.close();
});

test('mirror failover: a dead mirror and a stale mirror are skipped for a good one', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const pkg = await makePackage(fx);
  await publish(fx, pkg.tarPath, 'stable');
  // Snapshot the repository as a "stale" mirror would have it, then publish more.
  const { cp } = await import('node:fs/promises');
  const staleDir = fx.dir + '/stale';
  await cp(fx.repoDir, staleDir, { recursive: true });
  await fx.writer.promote('tiny', 'testing', '1.0.0');

  const good = await serveDir(fx.repoDir);
  const stale = await serveDir(staleDir);
  t.teardown(good.close);
  t.teardown(stale.close);
  const dead = 'http://127.0.0.1:9'; // discard port: connection refused

  const pinFetcher = createFetcher(good.url);
  const root = await RepoClient.pin(pinFetcher, { keyArmored: fx.rootKeyArmored });
  // This host already saw index version 3.
  const c = new RepoClient({ fetchers: [createFetcher(dead), createFetcher(stale.url), createFetcher(good.url)], trustedRoot: root, lastIndexVersion: 3 });
  const up = await c.update();
  t.is(up.source, good.url);
  t.is(up.index.version, 3);
  const { manifest } = await c.manifest('tiny', '1.0.0');
  const before = good.requests.length;
  await c.chunk(manifest.image.chunks[0]);
  t.is(good.requests.length, before + 1, 'chunks come from the mirror that verified');

  // With only the bad mirrors, the error names both and says why.
  const bad = new RepoClient({ fetchers: [createFetcher(dead), createFetcher(stale.url)], trustedRoot: root, lastIndexVersion: 3 });
  const err = (await t.throwsAsync(bad.update())) as Error & { code?: string };
  t.is(err.code, 'ROLLBACK');
  t.regex(err.message, /every mirror failed: http:\/\/127\.0\.0\.1:9\/root\/2\.json: request failed.*index\.json: index version 2 is older than version 3/);
});

test('a kept-alive socket closed by the server as it is reused is retried once on a fresh one', async (t) => {
  const perSocket = new WeakMap<object, number>();
  let dropped = 0;
  const server = await serveDir('/nonexistent', async (req, res) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, n);
    if (n === 2) {
      dropped++;
      req.socket.destroy(); // the race: the server closes an idle connection as the client reuses it
      return true;
    }
    res.writeHead(200, { 'content-length': '2' }).end('ok');
    return true;
  });
  t.teardown(server.close);
  const f = new HttpFetcher(server.url, { maxSockets: 1 });
  t.is((await f.get('a', 10)).toString(), 'ok');
  t.is((await f.get('b', 10)).toString(), 'ok', 'second request retried on a new socket');
  t.is(dropped, 1);
  f.close();
});

test('a TLS failure is one readable line: the reason and Node\'s code, no OpenSSL source path', async (t) => {
  // an https URL on a port that speaks plain HTTP: OpenSSL's "wrong version number" (or "packet length too long")
  const plain = await serveDir('/nonexistent');
  t.teardown(() => plain.close());
  const fetcher = new HttpFetcher(plain.url.replace(/^http:/, 'https:'));
  const err = (await t.throwsAsync(fetcher.get('index.json', 1024))) as Error & { code?: string };
  t.is(err.code, 'FETCH_FAILED');
  t.regex(err.message, /^https:\/\/127\.0\.0\.1:\d+\/index\.json: request failed \([^)]*EPROTO[^)]*(wrong version number|packet length too long)\)$/);
  t.false(err.message.includes('\n'), err.message);
  t.false(/deps\/openssl|[0-9A-F]{8,}:error:/.test(err.message), err.message);
});
