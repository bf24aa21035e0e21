// The command line as a user runs it: `loopship serve` as a real process (config file,
// request log, SIGTERM), `loopship publish` / `promote` against it and against a directory.
import test from 'ava';
import { execa, type ResultPromise } from 'execa';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeRealRepo, makePackage, hashTree, rawRequest, sha256hex, tempDir } from './helpers.js';
import { enrolHost, postReport } from './fleet.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin/loopship.ts');
const TOKEN = 'cli-publisher-token-0123456789';
const loopship = (args: string[], opts: { env?: Record<string, string> } = {}) =>
  execa('node', ['--import', 'tsx', BIN, ...args], { cwd: ROOT, reject: false, env: opts.env, timeout: 120_000 });

/** Starts `loopship serve` on a free port and waits for it to say where it listens. */
async function serve(args: string[]): Promise<{ proc: ResultPromise; url: string; stderr: () => string }> {
  const proc = execa('node', ['--import', 'tsx', BIN, 'serve', '--port', '0', '--log-format', 'json', ...args], { cwd: ROOT, reject: false, all: false });
  let err = '';
  const url = await new Promise<string>((resolve, reject) => {
    proc.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(err);
      if (m) resolve(m[1]);
    });
    proc.then((r) => reject(new Error(`serve exited (${r.exitCode}): ${err}`)));
  });
  return { proc, url, stderr: () => err };
}

test('serve + publish + promote over HTTP, then SIGTERM stops it cleanly', async (t) => {
  const repo = await makeRealRepo();
  const state = await tempDir('loopship-state-');
  const cfg = path.join(repo.work, 'server.yaml');
  // the config holds only the token's digest; the index key comes from the key store
  await writeFile(cfg, `publishers:\n  - name: team\n    token_sha256: ${sha256hex(TOKEN)}\nsites: []\nlimits:\n  max_upload_bytes: 100000000\n`);
  const { proc, url, stderr } = await serve(['--repo', repo.dir, '--config', cfg, '--state-dir', state, '--keys', repo.keysDir]);
  t.teardown(async () => {
    proc.kill('SIGKILL');
    for (const d of [repo.dir, repo.keysDir, repo.work, state]) await rm(d, { recursive: true, force: true });
  });
  const pkg = await makePackage(repo, 'desktop', '1.0.0');

  const ok = await loopship(['publish', pkg.tarPath, '--server', url, '--token', TOKEN, '--channel', 'testing', '--json']);
  t.is(ok.exitCode, 0, ok.stderr);
  const result = JSON.parse(ok.stdout);
  t.like(result, { name: 'desktop', version: '1.0.0', manifest_sha256: pkg.manifestSha256, channel: 'testing', unchanged: false });

  const before = await hashTree(repo.dir);
  const denied = await loopship(['publish', pkg.tarPath, '--server', url, '--token', 'wrong-token-wrong-token']);
  t.is(denied.exitCode, 2);
  t.regex(denied.stderr, /401/);
  t.is(await hashTree(repo.dir), before);

  const env = { LOOPSHIP_TOKEN: TOKEN };
  const promoted = await loopship(['promote', 'desktop', '1.0.0', '--channel', 'stable', '--server', url], { env });
  t.is(promoted.exitCode, 0, promoted.stderr);
  t.regex(promoted.stdout, /desktop: channel stable -> 1\.0\.0/);
  const idx = JSON.parse((await rawRequest(url, { path: '/index.json' })).body.toString());
  t.deepEqual(idx.images.desktop.channels, { testing: '1.0.0', stable: '1.0.0' });

  const missing = await loopship(['promote', 'desktop', '7.0', '--channel', 'stable', '--server', url, '--json'], { env });
  t.not(missing.exitCode, 0);
  t.is(JSON.parse(missing.stdout).code, 'NOT_FOUND');

  // every request is logged, one JSON line each
  t.regex(stderr(), /"method":"POST","url":"\/api\/v1\/packages\?channel=testing","status":201/);
  t.regex(stderr(), /"url":"\/index.json","status":200/);

  proc.kill('SIGTERM');
  const done = await proc;
  t.is(done.exitCode, 0);
  t.regex(stderr(), /SIGTERM: finishing running requests/);
  t.regex(stderr(), /"msg":"stopped"/);
});

test('publish and promote straight into a repository directory', async (t) => {
  const repo = await makeRealRepo();
  t.teardown(async () => {
    for (const d of [repo.dir, repo.keysDir, repo.work]) await rm(d, { recursive: true, force: true });
  });
  const pkg = await makePackage(repo, 'terminal', '3.1');
  const r = await loopship(['publish', pkg.tarPath, '--repo', repo.dir, '--keys', repo.keysDir]);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, /published terminal 3\.1 \(amd64\)/);
  const p = await loopship(['promote', 'terminal', '3.1', '--channel', 'stable', '--repo', repo.dir, '--keys', repo.keysDir, '--json']);
  t.is(p.exitCode, 0, p.stderr);
  t.like(JSON.parse(p.stdout), { name: 'terminal', channel: 'stable', version: '3.1' });
  const idx = JSON.parse(await readFile(path.join(repo.dir, 'index.json'), 'utf8'));
  t.is(idx.images.terminal.channels.stable, '3.1');
});

test('usage errors: no target, both targets, bad config', async (t) => {
  const dir = await tempDir();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const none = await loopship(['publish', '/nonexistent.tar']);
  t.is(none.exitCode, 2);
  t.regex(none.stderr, /--server URL --token TOKEN, or --repo DIR --keys KEYDIR/);
  const both = await loopship(['publish', '/nonexistent.tar', '--server', 'http://127.0.0.1:9', '--repo', dir]);
  t.is(both.exitCode, 2);
  await writeFile(path.join(dir, 'bad.yaml'), 'publishers:\n  - name: team\n    tokn: abc\n');
  const bad = await loopship(['serve', '--repo', dir, '--config', path.join(dir, 'bad.yaml'), '--port', '0']);
  t.is(bad.exitCode, 2);
  t.regex(bad.stderr, /bad\.yaml: invalid server config: publishers\.0/);
});

test('serve --workers 2: enrolments and reports stored by either worker are seen by both; SIGTERM stops all', async (t) => {
  const repoDir = await tempDir('loopship-repo-');
  const state = await tempDir('loopship-state-');
  const cfg = path.join(state, 'server.yaml');
  const SITE = 'workers-site-token-0123456789';
  await writeFile(cfg, `publishers:\n  - {name: team, token: ${TOKEN}}\nsites:\n  - {name: north, token: ${SITE}}\n`);
  const proc = execa('node', ['--import', 'tsx', BIN, 'serve', '--workers', '2', '--port', '0', '--log-format', 'json', '--repo', repoDir, '--config', cfg, '--state-dir', path.join(state, 'st')], { cwd: ROOT, reject: false });
  t.teardown(async () => {
    proc.kill('SIGKILL');
    await rm(repoDir, { recursive: true, force: true });
    await rm(state, { recursive: true, force: true });
  });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  // both workers log where they listen (the same port)
  const deadline = Date.now() + 90_000;
  while ((err.match(/"msg":"serving /g) ?? []).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  const url = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(err)?.[1];
  t.truthy(url, err);
  const children = (await readFile(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8')).trim().split(/\s+/).map(Number);
  t.is(children.length, 2);

  // each request may land on either worker: the host token enrolled by one works on the other
  for (let i = 0; i < 10; i++) {
    const token = await enrolHost(url!, SITE, `h${i}`);
    for (let j = 0; j < 2; j++) {
      const r = await postReport(url!, { host: `h${i}`, agent_version: '1', appliances: [], last_error: null }, token);
      t.is(r.status, 201, r.body.toString());
    }
  }
  await new Promise((r) => setTimeout(r, 4500)); // each worker re-reads the store every 2 s
  for (let i = 0; i < 6; i++) {
    const list = await rawRequest(url!, { path: '/api/v1/reports', headers: { Authorization: `Bearer ${TOKEN}` } });
    t.is(JSON.parse(list.body.toString()).reports.length, 10);
  }

  proc.kill('SIGTERM');
  const done = await proc;
  t.is(done.exitCode, 0, err);
  for (const pid of children) {
    const alive = await readFile(`/proc/${pid}/status`, 'utf8').then(
      (s) => !/State:\s+Z/.test(s),
      () => false,
    );
    t.false(alive, `worker ${pid} is gone`);
  }
});
