// A hostile guest filesystem, as dom0 sees it when the agent loop-mounts a boot disk to write
// the host settings into it. The disk is the publisher's image at first, and after a boot
// the guest's own: a guest (or whoever took it over) writes every byte of it, superblock
// included. Whatever it says there must not decide how dom0's kernel treats the mount.
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, basename } from 'node:path';
import { execa } from 'execa';
import { StateDir } from '../../client-agent/state.js';
import { withMountedImage, loopsFor } from '../../client-agent/mount.js';
import { defaultExec } from '../../client-agent/exec.js';

async function image(t: import('ava').ExecutionContext, tune: string[][]): Promise<{ image: string; state: StateDir }> {
  const dir = await mkdtemp(join(tmpdir(), 'hostile-guestfs-'));
  const state = new StateDir(join(dir, 'state'));
  await state.init();
  const img = join(state.root, 'disk.img');
  await execa('mkfs.ext4', ['-q', '-F', img, '8M']);
  for (const args of tune) await execa('tune2fs', [...args, img]);
  t.teardown(async () => {
    for (const dev of await loopsFor(defaultExec, img).catch(() => [])) await execa('losetup', ['-d', dev]).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });
  return { image: img, state };
}

/** The options dom0's ext4 applies to the mount at `mp` (all of them, defaults included). */
async function ext4Options(mp: string): Promise<string[]> {
  const line = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mp)!;
  const device = line.split(' - ')[1].split(' ')[1];
  return (await readFile(`/proc/fs/ext4/${basename(device)}/options`, 'utf8')).split('\n').filter(Boolean);
}

// errors=panic from the superblock (tune2fs -e panic, or "errors=panic" in its stored mount
// options) makes the first ext4 error found while the agent writes the settings panic dom0,
// taking every guest of the host down with it; a guest can corrupt its own disk at will.
for (const [what, tune] of [
  ['the superblock\'s error behaviour (tune2fs -e panic)', [['-e', 'panic']]],
  ['the superblock\'s stored mount options (tune2fs -E mount_opts=errors=panic)', [['-E', 'mount_opts=errors=panic']]],
] as const) {
  test.serial(`a boot disk where ${what} says panic is mounted with errors=remount-ro: an error in it cannot panic dom0`, async (t) => {
    const { image: img, state } = await image(t, tune.map((a) => [...a]));
    const opts = await withMountedImage({ exec: defaultExec, state }, img, 'sbc', (mp) => ext4Options(mp));
    t.true(opts.includes('errors=remount-ro'), opts.join(','));
    t.false(opts.includes('errors=panic'), opts.join(','));
  });
}

// The settings writer refuses a symlink on each path it writes (configure.ts), but any read or
// write through the mount that a later change adds would follow an image's /etc -> /, as root,
// into dom0: mounted nosymfollow, the kernel follows no symlink of the image at all.
test.serial('a boot disk is mounted nosymfollow: an image\'s /etc -> a dom0 directory leads nowhere, whatever opens a path through it', async (t) => {
  const { mkdtemp: mkd, writeFile: wf, symlink, mkdir } = await import('node:fs/promises');
  const outside = await mkd(join(tmpdir(), 'hostile-dom0-'));
  t.teardown(() => rm(outside, { recursive: true, force: true }));
  await wf(join(outside, 'hosts'), 'dom0 secret\n');
  const tree = await mkd(join(tmpdir(), 'hostile-tree-'));
  t.teardown(() => rm(tree, { recursive: true, force: true }));
  await symlink(outside, join(tree, 'etc'));
  await mkdir(join(tree, 'root'));
  await symlink('/root/.ssh/authorized_keys', join(tree, 'root', 'keys'));
  const dir = await mkd(join(tmpdir(), 'hostile-guestfs-'));
  const state = new StateDir(join(dir, 'state'));
  await state.init();
  const img = join(state.root, 'disk.img');
  await execa('mkfs.ext4', ['-q', '-F', '-d', tree, img, '8M']);
  t.teardown(async () => {
    for (const dev of await loopsFor(defaultExec, img).catch(() => [])) await execa('losetup', ['-d', dev]).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });
  await withMountedImage({ exec: defaultExec, state }, img, 'sbc', async (mp) => {
    await t.throwsAsync(readFile(join(mp, 'etc', 'hosts'), 'utf8'), { code: 'ELOOP' });
    await t.throwsAsync(readFile(join(mp, 'root', 'keys'), 'utf8'), { code: 'ELOOP' });
    t.true(await ext4Options(mp).then((o) => o.length > 0));
  });
});
