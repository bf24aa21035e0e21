// The other side of the wire: format/'s verifying RepoClient (what every agent runs)
// fetching from this server: root pinned by fingerprint, index, manifest, every chunk,
// and a resumed (Range) stream of a package file.
import test from 'ava';
import { rm, readFile } from 'node:fs/promises';
import path from 'node:path';
import { createFetcher, RepoClient } from '../../format/index.js';
import { startServer, parseServerConfig, createRepositoryWriter, uploadPackage, promoteRemote } from '../../repo-server/index.js';
import { makeRealRepo, makePackage, sha256hex } from './helpers.js';

const TOKEN = 'verify-publisher-token-0123456789';

test('RepoClient verifies everything it fetches from loopship serve', async (t) => {
  const repo = await makeRealRepo();
  const config = parseServerConfig({ publishers: [{ name: 'team', token: TOKEN }] });
  const srv = await startServer({ repoDir: repo.dir, config, writer: await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir }), stateDir: null });
  t.teardown(async () => {
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work]) await rm(d, { recursive: true, force: true });
  });
  const pkg = await makePackage(repo, 'desktop', '1.0.0');
  await uploadPackage(srv.url, TOKEN, pkg.tarPath);
  await promoteRemote(srv.url, TOKEN, 'desktop', '1.0.0', 'stable');

  const fetcher = createFetcher(srv.url);
  const rootFpr = repo.store.entries({ role: 'root' })[0].fingerprint;
  const trustedRoot = await RepoClient.pin(fetcher, { fingerprint: rootFpr });
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot });
  const { index } = await client.update();
  t.is(index.images.desktop.channels.stable, '1.0.0');
  const resolved = client.resolve('desktop', { channel: 'stable' });
  t.is(resolved.version, '1.0.0');
  const { manifest, sha256 } = await client.manifest('desktop', '1.0.0');
  t.is(sha256, pkg.manifestSha256);
  let bytes = 0;
  for (const c of [...manifest.image.chunks, ...manifest.kernel.chunks]) {
    const raw = await client.chunk(c);
    t.is(sha256hex(raw), c.sha256);
    bytes += raw.length;
  }
  t.true(bytes > 512 * 1024);

  // a resumed download through the fetcher's Range support
  const rel = `manifests/${sha256}.json`;
  const whole = await readFile(path.join(repo.dir, rel));
  const tail = await fetcher.stream(rel, whole.length, { start: 100 });
  const parts: Buffer[] = [];
  for await (const p of tail) parts.push(p as Buffer);
  t.true(Buffer.concat(parts).equals(whole.subarray(100)));
});
