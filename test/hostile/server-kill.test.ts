// (The kill is sent when the step's first file event is seen; the log of each test says
// how far the server got: the later steps are short, so it often finished them.)
// `loopship serve` killed with SIGKILL in the middle of a publish, at each step of the
// writer's order (upload being verified in staging; chunks renamed into the tree; the
// pack; the manifest; the versioned index; index.json.asc), one repository per step:
//  - the tree a reader sees stays consistent: the index verifies (directly or through
//    index/<N>.json.asc), every manifest it names verifies and every chunk of those
//    manifests is there and decodes; a pack of an indexed version is complete;
//  - anything the killed process left (temp files, staging, the lock) is nothing a
//    client can request (not a repository path);
//  - a restarted server takes over the stale lock and the same publish succeeds; the
//    repository then verifies with the new version in it.
import test, { type ExecutionContext } from 'ava';
import { execa, type ResultPromise } from 'execa';
import { watch, existsSync, createReadStream } from 'node:fs';
import { readdir, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { RepoClient, createFetcher, isRepositoryPath, packLayout, packPath, type Index } from '../../format/index.js';
import { makeRealRepo, makePackage, sha256hex, type RealRepo } from '../server/helpers.js';

const BIN = path.join(process.cwd(), 'dist', 'bin', 'loopship.js');
const TOKEN = 'kill-test-publisher-token-0123456789';

async function serve(repo: RealRepo, cfg: string): Promise<{ proc: ResultPromise; url: string }> {
  const proc = execa('node', [BIN, 'serve', '--port', '0', '--log-format', 'json', '--repo', repo.dir, '--config', cfg, '--state-dir', path.join(repo.work, 'state'), '--keys', repo.keysDir], { reject: false });
  let err = '';
  const url = await new Promise<string>((resolve, reject) => {
    proc.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(err);
      if (m) resolve(m[1]);
    });
    void proc.then((r) => reject(new Error(`serve exited (${r.exitCode}): ${err}`)));
  });
  return { proc, url };
}

/** POSTs the tar; `onSent(bytes)` is called as the body goes out. Resolves with the status, or the error. */
function upload(url: string, tarPath: string, onSent?: (bytes: number, total: number) => void): Promise<number | Error> {
  return new Promise((resolve) => {
    void stat(tarPath).then((st) => {
      const req = http.request(`${url}/api/v1/packages?channel=stable`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/x-tar', 'content-length': st.size },
      }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', resolve);
      });
      req.on('error', resolve);
      let sent = 0;
      const src = createReadStream(tarPath, { highWaterMark: 256 * 1024 });
      src.on('data', (d) => {
        sent += d.length;
        onSent?.(sent, st.size);
      });
      src.pipe(req);
    });
  });
}

/** What a client sees: everything the index names verifies. Returns the index. */
async function consistent(t: ExecutionContext, repo: RealRepo, rootKey: string, label: string): Promise<Index> {
  const fetcher = createFetcher(repo.dir);
  const root = await RepoClient.pin(fetcher, { keyArmored: rootKey });
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: root });
  const { index } = await client.update();
  for (const [name, image] of Object.entries(index.images)) {
    for (const version of Object.keys(image.versions)) {
      const { manifest, sha256 } = await client.manifest(name, version);
      for (const blob of [manifest.image, manifest.kernel, manifest.initrd]) for (const c of blob?.chunks ?? []) await client.chunk(c);
      const pack = path.join(repo.dir, packPath(sha256));
      if (existsSync(pack)) t.is((await stat(pack)).size, packLayout(manifest).size, `${label}: the pack of ${name} ${version} is complete`);
    }
  }
  return index;
}

/** Files under the tree that are not part of the repository (temp files, the writer's work dir). */
async function leftovers(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) {
      if (['root', 'index', 'manifests', 'chunks', 'packs', 'packages'].includes(r) || /^chunks\/[0-9a-f]{2}$/.test(r)) out.push(...(await leftovers(dir, r)));
      else out.push(`${r}/`);
    } else if (!isRepositoryPath(r)) out.push(r);
  }
  return out;
}

interface Step {
  name: string;
  /** also in the fast subset (LOOPSHIP_FAST) */
  fast?: boolean;
  /** kill when a file event in `dir` (relative to the tree) matches (path relative to the tree) */
  event?: RegExp;
  dir?: string;
  /** kill once this share of the upload is sent */
  sentShare?: number;
}

const steps: Step[] = [
  { name: 'upload half sent, chunks being verified in staging', sentShare: 0.5, fast: true },
  { name: 'chunks being renamed into the tree', dir: 'chunks', event: /^chunks\/[0-9a-f]{2}(\/|$)/, fast: true },
  { name: 'the pack being written', dir: 'packs', event: /^packs\// },
  { name: 'the manifest being written', dir: 'manifests', event: /^manifests\// },
  { name: 'the versioned index being written', dir: 'index', event: /^index\/\d+\.json/ },
  { name: 'index.json.asc replaced, index.json not yet', event: /^index\.json\.asc$/ },
];

for (const step of steps) {
  (process.env.LOOPSHIP_FAST && !step.fast ? test.skip : test)(`repo server killed: ${step.name}`, async (t) => {
    const repo = await makeRealRepo();
    t.teardown(() => Promise.all([repo.dir, repo.keysDir, repo.work].map((d) => rm(d, { recursive: true, force: true }))));
    const rootKey = (await repo.store.publicKey(repo.store.find('root'))).armored;
    const cfg = path.join(repo.work, 'server.yaml');
    await writeFile(cfg, `publishers:\n  - name: team\n    token_sha256: ${sha256hex(TOKEN)}\nsites: []\n`);
    // one version already published: what must survive
    const first = await makePackage(repo, 'desktop', '1.0.0');
    let server = await serve(repo, cfg);
    t.teardown(() => { server.proc.kill('SIGKILL'); });
    t.is(await upload(server.url, first.tarPath), 201);
    const before = await consistent(t, repo, rootKey, 'before');

    // a big second version (many chunks: the commit takes long enough to be hit)
    const second = await makePackage(repo, 'desktop', '2.0.0', { imageBytes: 24 * 1024 * 1024 });
    const pid = server.proc.pid!;
    let killedAt = '';
    const kill = (why: string) => {
      if (killedAt) return;
      killedAt = why;
      process.kill(pid, 'SIGKILL');
    };
    // one non-recursive watch of the step's directory: Node 20's recursive watch re-walks the
    // tree on events and, with thousands of chunk files, delivered them after the publish ended
    const dir = step.dir ?? '';
    const watcher = step.event ? watch(path.join(repo.dir, dir), (_e, f) => { const rel = dir ? `${dir}/${String(f)}` : String(f); if (f && step.event!.test(rel)) kill(rel); }) : undefined;
    const result = await upload(server.url, second.tarPath, (sent, total) => { if (step.sentShare && sent >= total * step.sentShare) kill(`${sent} of ${total} bytes sent`); });
    watcher?.close();
    await server.proc;
    t.truthy(killedAt, `the server was killed (publish answered ${String(result)})`);
    t.true(result instanceof Error, `the publish did not complete: ${String(result)}`);

    // what a reader sees right now
    const after = await consistent(t, repo, rootKey, 'after the kill');
    const landed = {
      kill_sent_at: killedAt,
      index_has_2_0_0: Boolean(after.images.desktop?.versions['2.0.0']),
      manifest: existsSync(path.join(repo.dir, 'manifests', `${second.manifestSha256}.json`)),
      pack: existsSync(path.join(repo.dir, packPath(second.manifestSha256))),
      lock: existsSync(path.join(repo.dir, '.loopship', 'lock')),
    };
    t.log(JSON.stringify(landed));
    t.deepEqual(after.images.desktop.versions['1.0.0'], before.images.desktop.versions['1.0.0'], '1.0.0 untouched');
    const left = await leftovers(repo.dir);
    t.log(`left behind: ${left.join(', ') || 'nothing'}`);
    t.true(left.every((f) => f.startsWith('.loopship/') || /\.tmp-\d+-[0-9a-f]{8}$/.test(f)), left.join(', '));

    // restart: the same publish goes through (taking over a stale lock if one was left)
    server = await serve(repo, cfg);
    const t0 = Date.now();
    const again = await upload(server.url, second.tarPath);
    t.log(`re-publish after restart: HTTP ${String(again)} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    t.true(again === 201 || (landed.index_has_2_0_0 && again === 200), `re-publish answered ${String(again)}`);
    const final = await consistent(t, repo, rootKey, 'after the re-publish');
    t.is(final.images.desktop.versions['2.0.0']?.manifest, second.manifestSha256);
    t.is(final.images.desktop.channels.stable, '2.0.0');
    t.false(existsSync(path.join(repo.dir, '.loopship', 'lock')) && !(await isLockFresh(repo.dir)), 'no stale lock after the re-publish');
    // the next writer swept what the killed one left (temp files outside chunks/, its upload staging)
    const swept = (await leftovers(repo.dir)).filter((f) => (f.startsWith('.loopship/staging-') || /\.tmp-\d+-[0-9a-f]{8}$/.test(f)) && !f.startsWith('chunks/'));
    t.deepEqual(swept, [], 'leftovers of the killed writer after the re-publish');
    t.log(`the writer's work dir after the re-publish: ${(await readdir(path.join(repo.dir, '.loopship'))).join(', ') || 'empty'}; temp files in the tree: ${(await leftovers(repo.dir)).filter((f) => !f.startsWith('.loopship')).join(', ') || 'none'}`);
    // over HTTP too: the restarted server serves what the index names
    const idx = JSON.parse(await (await fetch(`${server.url}/index.json`)).text()) as Index;
    t.is(idx.version, final.version);
    t.is((await fetch(`${server.url}/manifests/${second.manifestSha256}.json`)).status, 200);
    server.proc.kill('SIGTERM');
    await server.proc;
  });
}

/** proper-lockfile keeps a held lock's mtime fresh; a released one is gone. */
async function isLockFresh(dir: string): Promise<boolean> {
  const st = await stat(path.join(dir, '.loopship', 'lock')).catch(() => null);
  return Boolean(st && Date.now() - st.mtimeMs < 30_000);
}


