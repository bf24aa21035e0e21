// Publishing processes at once on one repository directory: real `node dist/bin/loopship.js
// publish --repo DIR` processes. The writer's lock (.loopship/lock, format/writer.ts) must
// serialise them across processes: each one succeeds (or, having waited its fill, fails with
// exit 5 "locked"), no index entry is lost, and `loopship verify` is clean afterwards.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import lockfile from 'proper-lockfile';
import { makeRealRepo, makePackage, type RealRepo } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'dist/bin/loopship.js');

const loopship = (args: string[]) => execa('node', [BIN, ...args], { cwd: ROOT, reject: false, timeout: 240_000 });

async function setup(t: ExecutionContext): Promise<{ repo: RealRepo; rootKey: string }> {
  if (!existsSync(BIN)) t.fail(`${BIN} is missing: run npm run build first`);
  const repo = await makeRealRepo();
  const rootKey = path.join(repo.work, 'root.asc');
  await writeFile(rootKey, (await repo.store.publicKey(repo.store.find('root'))).armored);
  t.teardown(async () => {
    for (const d of [repo.dir, repo.keysDir, repo.work]) await rm(d, { recursive: true, force: true });
  });
  return { repo, rootKey };
}

const index = async (repo: RealRepo) => JSON.parse(await readFile(path.join(repo.dir, 'index.json'), 'utf8'));

async function verifyClean(t: ExecutionContext, repo: RealRepo, rootKey: string, versions: string[]): Promise<void> {
  const v = await loopship(['verify', '--repo', repo.dir, '--root-key', rootKey, '--json']);
  t.is(v.exitCode, 0, `verify: ${v.stdout}\n${v.stderr}`);
  const out = JSON.parse(v.stdout) as { ok: boolean; indexVersion: number; images: { name: string; version: string; chunksVerified: number }[] };
  t.true(out.ok);
  t.deepEqual(out.images.map((i) => i.version).sort(), [...versions].sort(), 'verify covered exactly the published versions');
  for (const i of out.images) t.true(i.chunksVerified > 0, `${i.name} ${i.version}: chunks hash-verified`);
}

test('three `loopship publish --repo` processes at once: each succeeds or fails with exit 5 "locked", no index entry lost, verify clean', async (t) => {
  const { repo, rootKey } = await setup(t);
  const versions = ['1.0.0', '1.1.0', '2.0.0'];
  const pkgs = await Promise.all(versions.map((v) => makePackage(repo, 'desktop', v)));
  const runs = await Promise.all(pkgs.map((p) => loopship(['publish', p.tarPath, '--repo', repo.dir, '--keys', repo.keysDir, '--json'])));
  const ok: string[] = [];
  for (const [i, r] of runs.entries()) {
    if (r.exitCode === 0) {
      t.like(JSON.parse(r.stdout), { name: 'desktop', version: versions[i], unchanged: false });
      ok.push(versions[i]);
    } else {
      t.is(r.exitCode, 5, `${versions[i]}: exit ${r.exitCode}: ${r.stderr}`);
      t.regex(r.stderr, /locked/);
      t.is(JSON.parse(r.stdout).code, 'LOCKED');
    }
  }
  t.true(ok.length >= 1, 'at least one publish went through');
  const idx = await index(repo);
  t.deepEqual(Object.keys(idx.images.desktop.versions).sort(), ok.sort(), 'every successful publish is in the index');
  t.is(idx.version, 1 + ok.length, 'one index version per publish');
  const indexVersions = runs.filter((r) => r.exitCode === 0).map((r) => JSON.parse(r.stdout).index_version).sort();
  t.deepEqual(indexVersions, ok.map((_, i) => 2 + i), 'each publish made its own index version');
  t.deepEqual((await readdir(path.join(repo.dir, 'index'))).filter((f) => f.endsWith('.json')).sort(), Array.from({ length: idx.version }, (_, i) => `${i + 1}.json`).sort());
  await verifyClean(t, repo, rootKey, ok);
  t.deepEqual((await readdir(path.join(repo.dir, '.loopship'))).filter((n) => n !== 'lock'), [], 'no staging left behind');
});

test('a publish process waits while another writer holds the lock, then lands; verify clean', async (t) => {
  const { repo, rootKey } = await setup(t);
  const first = await makePackage(repo, 'desktop', '1.0.0');
  t.is((await loopship(['publish', first.tarPath, '--repo', repo.dir, '--keys', repo.keysDir])).exitCode, 0);
  const second = await makePackage(repo, 'desktop', '1.1.0');
  const before = await readFile(path.join(repo.dir, 'index.json'));
  // another writer (this test) holds the repository lock as RepositoryWriter takes it
  const release = await lockfile.lock(repo.dir, { lockfilePath: path.join(repo.dir, '.loopship', 'lock'), stale: 30_000 });
  let released = false;
  t.teardown(async () => {
    if (!released) await release();
  });
  const proc = loopship(['publish', second.tarPath, '--repo', repo.dir, '--keys', repo.keysDir, '--json']);
  let exited = false;
  void proc.finally(() => (exited = true));
  // the process verifies the whole package into its staging dir (outside the lock), then waits
  const staged = async () => {
    const dirs = (await readdir(path.join(repo.dir, '.loopship'))).filter((n) => n.startsWith('staging-'));
    let n = 0;
    for (const d of dirs) {
      const chunks = path.join(repo.dir, '.loopship', d, 'chunks');
      for (const aa of await readdir(chunks).catch(() => [] as string[])) n += (await readdir(path.join(chunks, aa))).filter((f) => /^[0-9a-f]{64}$/.test(f)).length;
    }
    return n;
  };
  let last = -1;
  let stableFor = 0;
  for (let i = 0; i < 600 && !exited && stableFor < 20; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const n = await staged();
    stableFor = n > 0 && n === last ? stableFor + 1 : 0;
    last = n;
  }
  // staging stopped growing for 2 s (the package is read) and the lock is still ours
  await new Promise((r) => setTimeout(r, 1000));
  t.false(exited, `the publisher did not wait for the lock: ${exited ? (await proc).stderr : ''}`);
  t.deepEqual(await readFile(path.join(repo.dir, 'index.json')), before, 'index.json unchanged while another writer holds the lock');
  t.false(existsSync(path.join(repo.dir, 'index', '3.json')));
  released = true;
  await release();
  const r = await proc;
  t.is(r.exitCode, 0, r.stderr);
  t.like(JSON.parse(r.stdout), { name: 'desktop', version: '1.1.0', index_version: 3, unchanged: false });
  const idx = await index(repo);
  t.deepEqual(Object.keys(idx.images.desktop.versions).sort(), ['1.0.0', '1.1.0']);
  await verifyClean(t, repo, rootKey, ['1.0.0', '1.1.0']);
});

test('`loopship serve --workers 2` with four concurrent uploads: all land (either worker), none lost, verify clean', async (t) => {
  const { repo, rootKey } = await setup(t);
  const TOKEN = 'concurrent-publisher-token-0123456789';
  const cfg = path.join(repo.work, 'server.yaml');
  await writeFile(cfg, `publishers:\n  - {name: team, token: ${TOKEN}}\nsites: []\n`);
  const versions = ['1.0.0', '1.0.1', '1.1.0', '2.0.0'];
  const pkgs = await Promise.all(versions.map((v) => makePackage(repo, 'desktop', v)));
  const proc = execa('node', [BIN, 'serve', '--workers', '2', '--port', '0', '--host', '127.0.0.1', '--log-format', 'json', '--repo', repo.dir, '--config', cfg, '--keys', repo.keysDir, '--state-dir', path.join(repo.work, 'state')], { cwd: ROOT, reject: false });
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) {
      proc.kill('SIGKILL');
      await proc;
    }
  });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const deadline = Date.now() + 90_000;
  while ((err.match(/"msg":"serving /g) ?? []).length < 2 && Date.now() < deadline && proc.exitCode === null) await new Promise((r) => setTimeout(r, 200));
  const url = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(err)?.[1];
  if (!url) return t.fail(`serve did not start: ${err}`);
  t.is((err.match(/"msg":"serving /g) ?? []).length, 2, 'two workers (node:cluster hands connections round-robin: the uploads reach both)');
  const { uploadPackage } = await import('../../repo-server/index.js');
  const results = await Promise.all(pkgs.map((p) => uploadPackage(url, TOKEN, p.tarPath)));
  t.deepEqual(results.map((r) => r.version), versions);
  t.deepEqual(results.map((r) => r.index_version).sort(), [2, 3, 4, 5], 'each upload made its own index version');
  const idx = await index(repo);
  t.deepEqual(Object.keys(idx.images.desktop.versions).sort(), versions, 'no index entry lost');
  t.is(idx.version, 5);
  proc.kill('SIGTERM');
  stopped = true;
  t.is((await proc).exitCode, 0, err);
  await verifyClean(t, repo, rootKey, versions);
});
