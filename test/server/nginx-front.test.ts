// The documented deployment with nginx in front (repo-server/nginx.example.conf): nginx
// serves the static tree, loopship serve the API and dashboard. Run for real: nginx as a
// child process with the example config, publishing and verifying through it.
import test from 'ava';
import { execa } from 'execa';
import { chmod, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { createFetcher, RepoClient } from '../../format/index.js';
import { startServer, parseServerConfig, createRepositoryWriter, uploadPackage, promoteRemote } from '../../repo-server/index.js';
import { makeRealRepo, makePackage, rawRequest, sha256hex, tempDir } from './helpers.js';

const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../repo-server/nginx.example.conf');
const TOKEN = 'nginx-front-publisher-token-0123';
const VIEWER = 'nginx-front-viewer-token-0123456';

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

test('nginx.example.conf: nginx serves the tree, loopship the API; clients verify through it', async (t) => {
  const repo = await makeRealRepo();
  await chmod(repo.dir, 0o755); // nginx's workers run unprivileged
  const config = parseServerConfig({ publishers: [{ name: 'team', token: TOKEN }], viewers: [{ name: 'ops', token: VIEWER }] });
  const srv = await startServer({ repoDir: repo.dir, config, writer: await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir }), stateDir: null });
  const ndir = await tempDir('loopship-nginx-');
  const port = await freePort();
  const site = (await readFile(EXAMPLE, 'utf8')).replaceAll('@LISTEN@', `127.0.0.1:${port}`).replaceAll('@REPO@', repo.dir).replaceAll('@UPSTREAM@', srv.url.replace('http://', ''));
  await writeFile(path.join(ndir, 'site.conf'), site);
  await writeFile(
    path.join(ndir, 'nginx.conf'),
    `worker_processes 1;\ndaemon off;\npid ${ndir}/nginx.pid;\nerror_log ${ndir}/error.log warn;\nevents { worker_connections 256; }\nhttp {\n  access_log off;\n  client_body_temp_path ${ndir}/body;\n  proxy_temp_path ${ndir}/proxy;\n  include ${ndir}/site.conf;\n}\n`,
  );
  const nginx = execa('nginx', ['-c', path.join(ndir, 'nginx.conf'), '-p', ndir], { reject: false });
  t.teardown(async () => {
    nginx.kill('SIGTERM');
    await nginx;
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work, ndir]) await rm(d, { recursive: true, force: true });
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    const up = await rawRequest(url, { path: '/index.json' }).catch(() => null);
    if (up) break;
    if (nginx.exitCode !== null && nginx.exitCode !== undefined) t.fail(`nginx exited: ${(await nginx).stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }

  // publish and promote through nginx (the upload streams through the proxy)
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  const res = await uploadPackage(url, TOKEN, pkg.tarPath, undefined, { channel: 'testing' });
  t.is(res.manifest_sha256, pkg.manifestSha256);
  await promoteRemote(url, TOKEN, 'desktop', '1.0.0', 'stable');
  t.is((await rawRequest(url, { method: 'POST', path: '/api/v1/packages', body: 'x' })).status, 401);

  // static files come from nginx, with the same caching rules
  const idx = await rawRequest(url, { path: '/index.json' });
  t.is(idx.status, 200);
  t.is(idx.headers['cache-control'], 'no-cache');
  t.is(idx.headers['content-type'], 'application/json');
  t.is(idx.headers['server'], 'nginx');
  t.is((await rawRequest(url, { path: '/index.json', headers: { 'If-None-Match': idx.headers['etag']! } })).status, 304);
  const manifest = JSON.parse((await rawRequest(url, { path: `/manifests/${pkg.manifestSha256}.json` })).body.toString());
  const c = manifest.image.chunks[0];
  const chunk = await rawRequest(url, { path: `/chunks/${c.sha256.slice(0, 2)}/${c.sha256}`, headers: { Range: 'bytes=1-10' } });
  t.is(chunk.status, 206);
  t.is(chunk.headers['cache-control'], 'public, max-age=31536000, immutable');
  t.is(chunk.headers['content-type'], 'application/zstd');
  t.is(chunk.body.length, 10);

  // the agent's verifier, through nginx
  const fetcher = createFetcher(url);
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { fingerprint: repo.store.entries({ role: 'root' })[0].fingerprint }) });
  await client.update();
  t.is(client.resolve('desktop', { channel: 'stable' }).version, '1.0.0');
  const m = await client.manifest('desktop', '1.0.0');
  for (const ch of m.manifest.kernel.chunks) t.is(sha256hex(await client.chunk(ch)), ch.sha256);

  // the dashboard and the refusals come from loopship
  t.is((await rawRequest(url, { path: '/' })).status, 401, 'the dashboard is private by default');
  const dash = await rawRequest(url, { path: '/', headers: { Authorization: `Bearer ${VIEWER}` } });
  t.is(dash.status, 200);
  t.regex(dash.body.toString(), /desktop/);
  // ("/chunks/../index.json" is normalised by nginx to /index.json: inside the tree, fine)
  for (const p of ['/.loopship/lock', '/%2e%2e/etc/passwd', '/../etc/passwd', '/package.json', '/.secret']) {
    const r = await rawRequest(url, { path: p });
    t.true(r.status === 404 || r.status === 400, `${p}: ${r.status}`);
  }
  t.true([403, 405].includes((await rawRequest(url, { path: '/index.json', method: 'PUT', body: 'x' })).status));
  // a symlink in the tree is refused by nginx too
  const outside = await tempDir('loopship-outside-');
  t.teardown(() => rm(outside, { recursive: true, force: true }));
  await writeFile(path.join(outside, 'secret'), 'outside the tree');
  await mkdir(path.join(repo.dir, 'chunks', 'ff'), { recursive: true });
  await symlink(path.join(outside, 'secret'), path.join(repo.dir, 'chunks', 'ff', 'ff' + '1'.repeat(62)));
  const sl = await rawRequest(url, { path: '/chunks/ff/ff' + '1'.repeat(62) });
  t.true(sl.status === 403 || sl.status === 404, String(sl.status));
  t.false(sl.body.toString().includes('outside the tree'));
});
