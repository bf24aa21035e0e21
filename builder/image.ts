// The root tree -> one ext4 filesystem in a sparse file, with `mkfs.ext4 -d` (no loop
// mount). Same tree + same recipe name => same bytes: fixed UUID and directory hash
// seed, E2FSPROGS_FAKE_TIME for the superblock times, and a debugfs pass that sets the
// access and change times mkfs copies from the (noisy) source tree.
import { createHash } from 'node:crypto';
import { copyFile, readdir, rm, writeFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Exec } from './exec.js';
import { parseSize, type Recipe, RecipeError } from './recipe.js';
import { eatmydataLib, type TreeStats } from './rootfs.js';
import { LoopshipError } from '../format/errors.js';

const MiB = 1024 * 1024;

// mke2fs and debugfs fsync the image file when they close it. The image is scratch: the
// package stage reads it once (from the page cache) and it is deleted; what must reach the
// disk are the chunks made from it, and those are synced when published. So both run with
// the host's libeatmydata preloaded when there is one (Debian package eatmydata): the sync
// of ~300 MiB was most of the wall time between mkfs's ~1 s of CPU and its end.
export function noSyncEnv(lib = eatmydataLib()): Record<string, string> {
  return lib && existsSync(lib) ? { LD_PRELOAD: lib } : {};
}

/**
 * The filesystem UUID: derived from the image's name and arch, not from its version, so
 * that every version of an appliance shares it. ext4 seeds its metadata checksums with
 * the UUID: a per-version UUID would change every inode, bitmap and directory block and
 * destroy chunk reuse between versions. Formatted as an RFC 9562 version-8 UUID.
 */
export function imageUuid(name: string, arch: string): string {
  const h = createHash('sha256').update(`loopship/fs-uuid\0${name}\0${arch}`).digest();
  h[6] = (h[6] & 0x0f) | 0x80;
  h[8] = (h[8] & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** Image size in bytes: fixed from the recipe, or measured content plus headroom and filesystem overhead. */
export function imageSize(recipe: Recipe, tree: TreeStats): number {
  const img = recipe.image;
  if (img.size !== 'auto') return parseSize(img.size);
  const content = tree.blockBytes;
  const room = img.headroom.endsWith('%') ? (content * Number(img.headroom.slice(0, -1))) / 100 : parseSize(img.headroom);
  // journal (mke2fs picks <= 64 MiB below 128 GiB), bitmaps/descriptors, inode tables
  const base = content + room + 64 * MiB + 16 * MiB;
  const withInodes = base / (1 - 256 / img.inode_ratio);
  return Math.ceil(withInodes / (16 * MiB)) * 16 * MiB;
}

/** Inode count: the ratio's share, but never fewer than the tree needs plus room to grow. */
export function inodeCount(size: number, recipe: Recipe, tree: TreeStats): number {
  return Math.max(Math.floor(size / recipe.image.inode_ratio), Math.ceil(tree.files * 1.25) + 4096);
}

export interface MakeImageOptions {
  root: string;
  out: string;
  recipe: Recipe;
  tree: TreeStats;
  uuid: string;
  sourceDateEpoch: number;
  exec: Exec;
}

export async function makeImage(o: MakeImageOptions): Promise<{ size: number }> {
  const size = imageSize(o.recipe, o.tree);
  const inodes = inodeCount(size, o.recipe, o.tree);
  if (o.recipe.image.size !== 'auto' && size < o.tree.blockBytes) {
    throw new RecipeError(`image.size ${o.recipe.image.size} is smaller than the root filesystem's content (${Math.ceil(o.tree.blockBytes / MiB)} MiB); use "auto" or a larger size`, { where: 'stage image' });
  }
  await rm(o.out, { force: true });
  const noSync = noSyncEnv();
  const env = { E2FSPROGS_FAKE_TIME: String(o.sourceDateEpoch), MKE2FS_DEVICE_SECTSIZE: '512', ...noSync };
  await o.exec(
    'mkfs.ext4',
    [
      '-q', '-F',
      '-t', 'ext4',
      '-b', '4096',
      '-I', '256',
      '-N', String(inodes),
      '-m', '0',
      '-L', o.recipe.name.slice(0, 16),
      '-U', o.uuid,
      // no lazy init: the kernel would otherwise zero inode tables after the first mount,
      // writing into a "finished" image on every host
      '-E', `hash_seed=${o.uuid},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,nodiscard`,
      '-d', o.root,
      o.out,
      `${Math.floor(size / 1024)}k`,
    ],
    { stage: 'image (mkfs.ext4)', env },
  );
  await fixInodeTimes(o.out, o.sourceDateEpoch, o.exec, noSync);
  return { size };
}

/**
 * mkfs -d copies atime and ctime from the source tree, and those cannot be set from user
 * space (ctime is always "now"). Set them to the build epoch with debugfs. mkfs -d
 * allocates inodes in order, so the used ones are 1..(count - free) (checked by fsck in tests).
 */
async function fixInodeTimes(image: string, epoch: number, exec: Exec, noSync: Record<string, string>): Promise<void> {
  const { stdout } = await exec('dumpe2fs', ['-h', image], { stage: 'image (times)' });
  const num = (label: string) => {
    const m = new RegExp(`^${label}:\\s+(\\d+)`, 'm').exec(stdout);
    if (!m) throw new LoopshipError('INTERNAL', `dumpe2fs printed no "${label}"`, { where: image });
    return Number(m[1]);
  };
  const used = num('Inode count') - num('Free inodes');
  const first = num('First inode');
  const cmds: string[] = [];
  const set = (n: number) => cmds.push(`sif <${n}> atime @${epoch}`, `sif <${n}> ctime @${epoch}`);
  for (const n of [2, 7, 8]) set(n);
  for (let n = first; n <= used; n++) set(n);
  const cmdFile = `${image}.debugfs`;
  await writeFile(cmdFile, cmds.join('\n') + '\n');
  try {
    await exec('debugfs', ['-w', '-f', cmdFile, image], { stage: 'image (times)', env: { E2FSPROGS_FAKE_TIME: String(epoch), ...noSync } });
  } finally {
    await rm(cmdFile, { force: true });
  }
}

/** The kernel and initrd the image boots with, taken from its /boot (highest version if several). */
export async function extractBootFiles(root: string, outDir: string): Promise<{ kernel: string; initrd: string | null; kernelVersion: string }> {
  const boot = join(root, 'boot');
  const names = await readdir(boot).catch(() => [] as string[]);
  const versions = names.filter((n) => n.startsWith('vmlinuz-')).map((n) => n.slice('vmlinuz-'.length));
  if (!versions.length) throw new LoopshipError('EXEC_FAILED', 'no kernel (vmlinuz-*) in the image\'s /boot: is boot.kernel a kernel image package?', { where: 'stage boot files' });
  versions.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const v = versions.at(-1)!;
  const kernel = join(outDir, 'vmlinuz');
  await copyFile(join(boot, `vmlinuz-${v}`), kernel);
  const initrdSrc = join(boot, `initrd.img-${v}`);
  let initrd: string | null = null;
  if (await stat(initrdSrc).then(() => true, () => false)) {
    initrd = join(outDir, 'initrd.img');
    await copyFile(initrdSrc, initrd);
  }
  return { kernel, initrd, kernelVersion: v };
}
