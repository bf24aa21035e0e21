import test from 'ava';
import { mkdtemp, mkdir, writeFile, rm, readFile, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { makeImage, imageUuid, noSyncEnv } from '../../builder/image.js';
import type { Exec } from '../../builder/exec.js';
import { clampAndMeasure } from '../../builder/rootfs.js';
import { parseRecipe, defaultExec } from '../../builder/index.js';

const RECIPE = parseRecipe('name: imgtest\nversion: 1.0.0\nbase: {suite: bookworm}\nboot: {kernel: k}\nimage: {size: 64M}\n', 'r');

async function sampleTree(dir: string): Promise<string> {
  const root = join(dir, 'root');
  for (let i = 0; i < 50; i++) {
    await mkdir(join(root, `d${i % 7}`), { recursive: true });
    await writeFile(join(root, `d${i % 7}`, `f${i}`), `file ${i}\n`.repeat(i * 40));
  }
  return root;
}

/** A scratch directory with the sample tree, clamped to the epoch, and what makeImage needs besides. */
async function imageInputs(t: import('ava').ExecutionContext) {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-image-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const root = await sampleTree(dir);
  const epoch = 1_700_000_000;
  const tree = await clampAndMeasure(root, epoch);
  return { dir, root, epoch, tree, uuid: imageUuid('imgtest', 'amd64') };
}

test('the same tree gives the same image bytes, whatever the source atimes/ctimes; fsck-clean with the fixed UUID', async (t) => {
  const { dir, root, epoch, tree, uuid } = await imageInputs(t);
  await makeImage({ root, out: join(dir, 'a.img'), recipe: RECIPE, tree, uuid, sourceDateEpoch: epoch, exec: defaultExec });
  // touch the sources: new access times and (unavoidably) new change times
  await new Promise((r) => setTimeout(r, 1100));
  await utimes(join(root, 'd1', 'f1'), Date.now() / 1000, epoch);
  await readFile(join(root, 'd2', 'f2'));
  await makeImage({ root, out: join(dir, 'b.img'), recipe: RECIPE, tree, uuid, sourceDateEpoch: epoch, exec: defaultExec });
  const [a, b] = await Promise.all([readFile(join(dir, 'a.img')), readFile(join(dir, 'b.img'))]);
  t.is(a.length, 64 * 2 ** 20);
  t.true(a.equals(b), 'bit-identical images');
  const fsck = await execa('e2fsck', ['-fn', join(dir, 'a.img')], { reject: false });
  t.is(fsck.exitCode, 0, fsck.stdout);
  const sb = (await execa('dumpe2fs', ['-h', join(dir, 'a.img')])).stdout;
  t.regex(sb, new RegExp(`Filesystem UUID:\\s+${uuid}`));
  t.regex(sb, /Filesystem volume name:\s+imgtest/);
  const st = (await execa('debugfs', ['-R', 'stat /d1/f1', join(dir, 'a.img')])).stdout;
  for (const f of ['ctime', 'atime', 'mtime']) t.regex(st, new RegExp(`${f}: 0x${epoch.toString(16)}`), f);
});

test('mkfs and debugfs run with libeatmydata preloaded (no sync of the scratch image) and make the same bytes as without', async (t) => {
  const { dir, root, epoch, tree, uuid } = await imageInputs(t);
  t.truthy(noSyncEnv().LD_PRELOAD, 'the build host has libeatmydata (scripts/setup.sh installs eatmydata)');
  t.deepEqual(noSyncEnv('/nonexistent/libeatmydata.so.1'), {});
  const preloads: string[] = [];
  const recording: Exec = (cmd, args, opts) => {
    preloads.push(`${cmd}:${opts?.env?.LD_PRELOAD ?? ''}`);
    return defaultExec(cmd, args, opts);
  };
  const stripping: Exec = (cmd, args, opts) => defaultExec(cmd, args, { ...opts, env: { ...opts?.env, LD_PRELOAD: undefined } });
  await makeImage({ root, out: join(dir, 'nosync.img'), recipe: RECIPE, tree, uuid, sourceDateEpoch: epoch, exec: recording });
  await makeImage({ root, out: join(dir, 'sync.img'), recipe: RECIPE, tree, uuid, sourceDateEpoch: epoch, exec: stripping });
  const lib = noSyncEnv().LD_PRELOAD;
  t.true(preloads.includes(`mkfs.ext4:${lib}`) && preloads.includes(`debugfs:${lib}`), preloads.join(', '));
  const [a, b] = await Promise.all([readFile(join(dir, 'nosync.img')), readFile(join(dir, 'sync.img'))]);
  t.true(a.equals(b), 'same image bytes with and without syncs');
});

test('a fixed size smaller than the content is a recipe error, before mkfs', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-image-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const small = parseRecipe('name: imgtest\nversion: 1.0.0\nbase: {suite: bookworm}\nboot: {kernel: k}\nimage: {size: 1M}\n', 'r');
  const err = await t.throwsAsync(makeImage({ root: dir, out: join(dir, 'x.img'), recipe: small, tree: { files: 10, blockBytes: 8 * 2 ** 20, bytes: 8 * 2 ** 20 }, uuid: imageUuid('imgtest', 'amd64'), sourceDateEpoch: 0, exec: defaultExec }));
  t.is((err as { code?: string }).code, 'RECIPE_INVALID');
  t.regex(err!.message, /image\.size 1M is smaller than the root filesystem's content \(8 MiB\)/);
});
