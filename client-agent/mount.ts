// Loop-mounting an image: losetup + mount, then unmount and detach ALWAYS. Every attach is
// first recorded in mnt/<id>.json, so whatever a crash (kill -9) leaves behind is found and
// cleaned by the next run (cleanStale) — and only what is ours: loop devices of a running
// domU (xl's block script attaches loops too) are never touched. A record names what it
// unmounts and detaches, so one that is not ours (planted, or naming a mount outside mnt/)
// is an error, never acted on.
import { mkdir, readFile, readdir, rm, rmdir } from 'node:fs/promises';
import { join, resolve, dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import * as z from 'zod';
import { LoopshipError } from '../format/index.js';
import type { StateDir } from './state.js';
import { ourProcessAlive } from './state.js';
import { type Exec, run } from './exec.js';
import { writeFileAtomic, readOwnFile, ownFileOrNull, unsafeEntry } from './fsutil.js';
import { pauseAt } from './pause.js';

const recordSchema = z.object({ pid: z.number().int(), image: z.string(), mountPoint: z.string(), device: z.string().nullable() });
type MountRecord = z.infer<typeof recordSchema>;

export interface MountDeps {
  exec: Exec;
  state: StateDir;
  /** /proc/self/mountinfo: injectable for tests */
  mountinfo?: string;
}

/** Mount points (decoded) listed in mountinfo. */
export async function listMounts(mountinfo = '/proc/self/mountinfo'): Promise<string[]> {
  const text = await readFile(mountinfo, 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

/** Loop devices whose backing file is `image` (resolved path). */
export async function loopsFor(exec: Exec, image: string): Promise<string[]> {
  const out = await run(exec, 'losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE']);
  const want = resolve(image);
  return out
    .split('\n')
    .map((l) => l.trim().split(' '))
    .filter(([dev, file]) => dev && file && file.replace(/\\x20/g, ' ').replace(/ \(deleted\)$/, '') === want)
    .map(([dev]) => dev);
}

async function umountIfMounted(deps: MountDeps, mountPoint: string): Promise<void> {
  const mounts = await listMounts(deps.mountinfo);
  // stacked mounts are unmounted one by one
  for (let n = mounts.filter((m) => m === mountPoint).length; n > 0; n--) {
    const r = await deps.exec('umount', [mountPoint]);
    if (r.exitCode !== 0) {
      // busy: detach it from the tree now; the kernel frees it when the last user goes
      await run(deps.exec, 'umount', ['--lazy', mountPoint]);
    }
  }
}

async function detachLoops(deps: MountDeps, rec: MountRecord): Promise<void> {
  const devices = rec.device ? [rec.device] : await loopsFor(deps.exec, rec.image);
  for (const dev of devices) {
    const r = await deps.exec('losetup', ['--detach', dev]);
    // already gone is fine; anything else is reported
    if (r.exitCode !== 0 && !/No such device|not a loop|No such file/i.test(r.stderr)) {
      throw new LoopshipError('EXEC_FAILED', `losetup --detach ${dev}: ${r.stderr.trim()}`, { where: rec.image });
    }
  }
  // a device still busy for a moment (udev probing it after the umount) is only marked to go
  // when free (autoclear): wait for it, so that the boot that follows finds the image unattached
  for (let waited = 0; waited < 5000 && devices.length; waited += 100) {
    const left = await loopsFor(deps.exec, rec.image);
    if (!devices.some((d) => left.includes(d))) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function releaseRecord(deps: MountDeps, recPath: string, rec: MountRecord): Promise<void> {
  await umountIfMounted(deps, rec.mountPoint);
  await pauseAt('unmount');
  await detachLoops(deps, rec);
  await rmdir(rec.mountPoint).catch(() => {});
  await rm(recPath, { force: true });
}

/** What cleanStale may act on: a mount point directly in mnt/, a loop device or none. */
function assertOurRecord(state: StateDir, recPath: string, rec: MountRecord): void {
  const mntDir = resolve(state.mntDir);
  // resolved first: "mnt/.." has mnt as its dirname
  if (typeof rec.mountPoint !== 'string' || dirname(resolve(rec.mountPoint)) !== mntDir || resolve(rec.mountPoint) !== rec.mountPoint) throw unsafeEntry(recPath, `names the mount point ${rec.mountPoint}, outside ${mntDir}`);
  if (rec.device !== null && !/^\/dev\/loop\d+$/.test(rec.device)) throw unsafeEntry(recPath, `names ${rec.device}, not a loop device`);
  // without a device, cleaning detaches every loop on the image: only an image of the state dir
  if (typeof rec.image !== 'string' || resolve(rec.image) !== rec.image || !rec.image.startsWith(resolve(state.root) + '/') || !rec.image.endsWith('.img')) {
    throw unsafeEntry(recPath, `names the image ${rec.image}, not one in ${resolve(state.root)}`);
  }
}

/**
 * Finds and cleans what an earlier, killed agent left: mounts under mnt/ and loop
 * devices it recorded. Returns what was cleaned.
 */
export async function cleanStale(deps: MountDeps): Promise<string[]> {
  const dir = deps.state.mntDir;
  const cleaned: string[] = [];
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return cleaned;
  }
  const live = new Set<string>();
  for (const e of entries.filter((e) => e.endsWith('.json'))) {
    const recPath = join(dir, e);
    let rec: MountRecord;
    try {
      rec = recordSchema.parse(JSON.parse((await readOwnFile(recPath)).toString('utf8')));
    } catch (err) {
      if (err instanceof LoopshipError) throw err;
      await rm(recPath, { force: true }); // torn or damaged: a record we wrote, of no use now
      continue;
    }
    assertOurRecord(deps.state, recPath, rec);
    if (rec.pid !== process.pid && ourProcessAlive(rec.pid)) {
      live.add(rec.mountPoint);
      continue;
    }
    await releaseRecord(deps, recPath, rec);
    cleaned.push(rec.mountPoint);
  }
  // mounts under mnt/ with no record at all (record lost): still ours
  const prefix = resolve(dir) + '/';
  for (const mp of (await listMounts(deps.mountinfo)).filter((m) => m.startsWith(prefix) && !live.has(m)).reverse()) {
    await umountIfMounted(deps, mp);
    cleaned.push(mp);
  }
  for (const e of await readdir(dir).catch(() => [] as string[])) {
    if (!e.endsWith('.json') && !live.has(join(dir, e))) await rmdir(join(dir, e)).catch(() => {});
  }
  return [...new Set(cleaned)];
}

/**
 * How dom0 mounts a boot disk. nodev, nosuid, noexec: a signed image may hold device nodes and
 * setuid programs. nosymfollow (Linux 5.10, util-linux 2.36): no symlink of the image is
 * followed by anything opening a path through the mount (configure.ts refuses them on the
 * paths it writes; this holds for every path). errors=remount-ro: the superblock's own error
 * behaviour (tune2fs -e, or its stored mount options) would otherwise apply, and a disk the
 * guest wrote may say panic, so that the first ext4 error found while configuring panics dom0.
 * Options given here win over both.
 */
export const MOUNT_OPTIONS = 'nodev,nosuid,noexec,nosymfollow,errors=remount-ro';

/**
 * Attaches `image` to a loop device, mounts it (MOUNT_OPTIONS), runs `f` with the mount
 * point, then unmounts and detaches whatever happened in `f`.
 */
export async function withMountedImage<T>(deps: MountDeps, image: string, label: string, f: (mountPoint: string) => Promise<T>): Promise<T> {
  const id = `${label}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const recPath = join(deps.state.mntDir, `${id}.json`);
  const rec: MountRecord = { pid: process.pid, image: resolve(image), mountPoint: join(resolve(deps.state.mntDir), id), device: null };
  // root mounts it and writes into it: a symlink to a host disk must never get that far
  await ownFileOrNull(image);
  await mkdir(rec.mountPoint, { recursive: true, mode: 0o700 });
  // the record first: a crash between attach and record must not leak an unknown loop
  await writeFileAtomic(recPath, JSON.stringify(rec), { mode: 0o600 });
  let result: T;
  try {
    rec.device = (await run(deps.exec, 'losetup', ['--find', '--show', rec.image])).trim();
    await writeFileAtomic(recPath, JSON.stringify(rec), { mode: 0o600 });
    await run(deps.exec, 'mount', ['-t', 'ext4', '-o', MOUNT_OPTIONS, rec.device, rec.mountPoint]);
    await pauseAt('mount');
    result = await f(rec.mountPoint);
  } catch (err) {
    await releaseRecord(deps, recPath, rec).catch(() => {}); // the first error is the one to report
    throw err;
  }
  await releaseRecord(deps, recPath, rec);
  return result;
}
