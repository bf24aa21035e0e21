// Running steps inside the build root with /proc, /sys and /dev available, and the
// guarantee that every mount is gone afterwards: on success, on failure and on Ctrl-C.
// A forgotten bind of /dev under a work directory turns the next `rm -rf` into a
// disaster, so unmounting is driven by what /proc/self/mountinfo says is mounted
// under the root, not by what we remember mounting.
import { readFile, writeFile, rm, mkdir, copyFile, lstat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { killRunning, type Exec } from './exec.js';

/** Mount points at or under `root`, deepest first (the order to unmount them in). */
export async function mountsUnder(root: string, mountinfo = '/proc/self/mountinfo'): Promise<string[]> {
  const abs = resolve(root);
  const text = await readFile(mountinfo, 'utf8');
  const points = text
    .split('\n')
    .filter(Boolean)
    .map((line) => unescapeMount(line.split(' ')[4]))
    .filter((p) => p === abs || p.startsWith(abs + '/'));
  return [...new Set(points)].sort((a, b) => b.length - a.length || (a < b ? 1 : -1));
}

// mountinfo escapes space, tab, newline and backslash as octal
const unescapeMount = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Unmounts everything under `root`; lazily if a mount is busy. Throws only if something stays mounted. */
export async function unmountAll(root: string, exec: Exec): Promise<void> {
  for (let pass = 0; pass < 3; pass++) {
    const points = await mountsUnder(root);
    if (!points.length) return;
    for (const p of points) {
      await exec('umount', [p], { stage: 'unmount' }).catch(() => exec('umount', ['--lazy', p], { stage: 'unmount' }).catch(() => undefined));
    }
  }
  const left = await mountsUnder(root);
  if (left.length) throw new Error(`still mounted after cleanup: ${left.join(', ')}`);
}

// Interrupt handling: while any chroot session (or guarded build directory) is open,
// SIGINT/SIGTERM first stop running programs and unmount everything below it, then exit
// with the conventional status.
const openRoots = new Map<string, Exec>();
let handlersInstalled = false;
/** set once a signal is being handled: the handler unmounts and exits, nothing else may end the process first */
let signalled: NodeJS.Signals | null = null;
function onSignal(signal: NodeJS.Signals): void {
  signalled = signal;
  const roots = [...openRoots.entries()];
  killRunning('SIGTERM');
  void Promise.allSettled(roots.map(([r, exec]) => unmountAll(r, exec))).finally(() => {
    process.stderr.write(`loopship: ${signal}: unmounted ${roots.length ? roots.map(([r]) => r).join(', ') : 'nothing'}; exiting\n`);
    process.exit(signal === 'SIGINT' ? 130 : 143);
  });
}
/**
 * Guards a whole build directory for the duration of a build: on SIGINT/SIGTERM,
 * whatever is mounted below it (by us, or by debootstrap) is unmounted before exit.
 * Returns the function that ends the guard.
 */
export function guardDirectory(dir: string, exec: Exec): () => void {
  return trackRoot(resolve(dir), exec);
}

function trackRoot(root: string, exec: Exec): () => void {
  openRoots.set(root, exec);
  if (!handlersInstalled) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('SIGHUP', onSignal);
    handlersInstalled = true;
  }
  return () => {
    openRoots.delete(root);
    if (!openRoots.size && handlersInstalled) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('SIGHUP', onSignal);
      handlersInstalled = false;
    }
  };
}

const POLICY_RC_D = '#!/bin/sh\n# loopship: no daemon starts inside the build chroot\nexit 101\n';

export interface Chroot {
  root: string;
  /** the environment commands in the chroot get */
  env: Record<string, string>;
  /** runs a program inside the root */
  run(file: string, args: readonly string[], opts?: { stage?: string; env?: Record<string, string>; input?: string }): Promise<string>;
  /** runs a shell snippet inside the root with `sh -ec` */
  sh(script: string, opts?: { stage?: string; env?: Record<string, string> }): Promise<string>;
}

/**
 * Opens a chroot session on `root`: binds /dev, /dev/pts, mounts /proc and /sys, installs
 * a policy-rc.d that forbids daemon starts and the host's resolv.conf for apt, runs `fn`,
 * then undoes all of it whatever happened.
 */
export async function withChroot<T>(root: string, exec: Exec, env: Record<string, string>, fn: (c: Chroot) => Promise<T>): Promise<T> {
  root = resolve(root);
  const untrack = trackRoot(root, exec);
  const policy = join(root, 'usr/sbin/policy-rc.d');
  const resolv = join(root, 'etc/resolv.conf');
  let resolvBackup: Buffer | null | undefined;
  try {
    for (const d of ['proc', 'sys', 'dev', 'dev/pts']) await mkdir(join(root, d), { recursive: true });
    await exec('mount', ['-t', 'proc', 'proc', join(root, 'proc')], { stage: 'chroot mounts' });
    await exec('mount', ['-t', 'sysfs', 'sysfs', join(root, 'sys')], { stage: 'chroot mounts' });
    await exec('mount', ['--bind', '/dev', join(root, 'dev')], { stage: 'chroot mounts' });
    await exec('mount', ['--bind', '/dev/pts', join(root, 'dev/pts')], { stage: 'chroot mounts' });
    await writeFile(policy, POLICY_RC_D, { mode: 0o755 });
    resolvBackup = await readFile(resolv).catch(() => null);
    await rm(resolv, { force: true });
    await copyFile('/etc/resolv.conf', resolv).catch(() => writeFile(resolv, ''));
    const baseEnv: Record<string, string> = {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: '/root',
      DEBIAN_FRONTEND: 'noninteractive',
      DEBCONF_NONINTERACTIVE_SEEN: 'true',
      LC_ALL: 'C.UTF-8',
      LANG: 'C.UTF-8',
      ...env,
    };
    const c: Chroot = {
      root,
      env: baseEnv,
      run: async (file, args, opts = {}) => (await exec('chroot', [root, file, ...args], { stage: opts.stage, env: { ...baseEnv, ...opts.env }, input: opts.input })).stdout,
      sh: async (script, opts = {}) => (await exec('chroot', [root, '/bin/sh', '-ec', script], { stage: opts.stage, env: { ...baseEnv, ...opts.env } })).stdout,
    };
    try {
      return await fn(c);
    } catch (err) {
      // a step killed by the signal handler (killRunning): the handler unmounts this root and
      // exits with the signal's status; an error thrown on from here would race it to exit 1
      if (signalled) await new Promise<never>(() => {});
      throw err;
    }
  } finally {
    try {
      await unmountAll(root, exec);
    } finally {
      untrack();
      await rm(policy, { force: true }).catch(() => undefined);
      if (resolvBackup !== undefined) {
        await rm(resolv, { force: true }).catch(() => undefined);
        if (resolvBackup !== null) await writeFile(resolv, resolvBackup).catch(() => undefined);
      }
    }
  }
}

/** True if the path exists (without following a final symlink). */
export const exists = (p: string) => lstat(p).then(() => true, () => false);
