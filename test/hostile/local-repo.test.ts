// A repository on a local directory (a USB stick, an NFS share) is as hostile as one over
// HTTP, plus what a file system can hold that HTTP cannot: symlinks, FIFOs, device nodes.
import test from 'ava';
import { mkdir, symlink, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { createFetcher } from '../../format/index.js';
import { tempDir } from '../helpers/repo.js';

async function repoDir(t: import('ava').ExecutionContext): Promise<string> {
  const dir = await tempDir();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'repo'));
  await writeFile(join(dir, 'secret'), 'outside the repository\n');
  return dir;
}

async function refused(t: import('ava').ExecutionContext, p: Promise<unknown>, message: RegExp, where: RegExp) {
  const err = (await t.throwsAsync(p)) as Error & { code?: string };
  t.is(err?.code, 'FETCH_FAILED', err?.message);
  t.regex(err?.message ?? '', message);
  t.regex(err?.message ?? '', where);
}

test('a symlink leading outside the repository directory is refused, naming the file', async (t) => {
  const dir = await repoDir(t);
  await symlink(join(dir, 'secret'), join(dir, 'repo', 'index.json'));
  await symlink('../secret', join(dir, 'repo', 'root.json'));
  const f = createFetcher(join(dir, 'repo'));
  await refused(t, f.get('index.json', 1 << 20), /symlink leads outside the repository/, /repo\/index\.json/);
  await refused(t, f.get('root.json', 1 << 20), /symlink leads outside the repository/, /repo\/root\.json/);
  await refused(t, f.stream('root.json', 1 << 20), /symlink leads outside the repository/, /repo\/root\.json/);
});

test('a FIFO planted as index.json is refused at once instead of hanging the agent', async (t) => {
  const dir = await repoDir(t);
  await execa('mkfifo', [join(dir, 'repo', 'index.json')]);
  const f = createFetcher(join(dir, 'repo'));
  const started = Date.now();
  await refused(t, f.get('index.json', 1 << 20), /not a regular file/, /repo\/index\.json/);
  await refused(t, f.stream('index.json', 1 << 20), /not a regular file/, /repo\/index\.json/);
  t.true(Date.now() - started < 2000, 'no wait for a writer');
});

test('a character device planted as a chunk (an endless /dev/zero) is refused, not read', async (t) => {
  const dir = await repoDir(t);
  await mkdir(join(dir, 'repo', 'chunks', 'ab'), { recursive: true });
  const node = join(dir, 'repo', 'chunks', 'ab', 'ab'.padEnd(64, '0'));
  const r = await execa('mknod', [node, 'c', '1', '5'], { reject: false }); // /dev/zero's numbers
  if (r.exitCode !== 0) return t.log(`mknod not possible here: ${r.stderr}`), t.pass();
  const f = createFetcher(join(dir, 'repo'));
  await refused(t, f.get(`chunks/ab/${'ab'.padEnd(64, '0')}`, 1 << 20), /not a regular file/, /chunks\/ab\//);
});
