// A throwaway Debian root for package tests: debootstrap once, cache the result as a
// tarball keyed by suite + variant + package list, extract it for each test. /proc, /dev
// and /sys are bind-mounted only inside withMounts(), which always unmounts them.
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

export const CACHE_DIR = process.env.LOOPSHIP_DEB_TEST_CACHE ?? '/var/cache/loopship/deb-test';

/**
 * The Debian mirror this host already uses, from its apt sources (deb822 .sources files or
 * one-line sources.list), for the given suite. Never hard-coded: the test runs against
 * whatever mirror the machine is configured with.
 */
export async function hostMirror(suite: string, etcApt = '/etc/apt'): Promise<string> {
  const candidates: string[] = [];
  const files = [join(etcApt, 'sources.list')];
  for (const f of await readdir(join(etcApt, 'sources.list.d')).catch(() => [] as string[])) files.push(join(etcApt, 'sources.list.d', f));
  for (const file of files) {
    const text = await readFile(file, 'utf8').catch(() => '');
    if (file.endsWith('.sources')) {
      for (const para of text.split(/\n\s*\n/)) {
        const field = (name: string) => new RegExp(`^${name}:\\s*(.+)$`, 'mi').exec(para)?.[1].trim().split(/\s+/) ?? [];
        if (!field('Types').includes('deb') || !field('Suites').includes(suite)) continue;
        candidates.push(...field('URIs'));
      }
    } else {
      for (const line of text.split('\n')) {
        const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
        if (m && m[2] === suite) candidates.push(m[1]);
      }
    }
  }
  const mirror = candidates.find((u) => /^https?:\/\//.test(u));
  if (!mirror) throw new Error(`no apt source for suite ${suite} in ${etcApt}: cannot debootstrap`);
  return mirror;
}

export interface DebRootSpec {
  suite: string;
  variant: 'minbase';
  include: string[];
}

export function cacheKey(spec: DebRootSpec): string {
  const canon = JSON.stringify({ suite: spec.suite, variant: spec.variant, include: [...spec.include].sort(), arch: 'amd64' });
  return `${spec.suite}-${spec.variant}-${createHash('sha256').update(canon).digest('hex').slice(0, 16)}`;
}

const pending = new Map<string, Promise<{ tarball: string; cold: boolean }>>();

/** The cached tarball for spec, debootstrapping it first when there is none (single flight). */
export async function debRootTarball(spec: DebRootSpec, log: (s: string) => void = () => {}): Promise<{ tarball: string; cold: boolean }> {
  const key = cacheKey(spec);
  let p = pending.get(key);
  if (p) return { tarball: (await p).tarball, cold: false }; // built by an earlier caller
  {
    p = (async () => {
      const tarball = join(CACHE_DIR, `${key}.tar.zst`);
      if (await stat(tarball).then(() => true, () => false)) return { tarball, cold: false };
      await mkdir(CACHE_DIR, { recursive: true });
      const work = join(CACHE_DIR, `${key}.tmp-${process.pid}`);
      await rm(work, { recursive: true, force: true });
      try {
        const mirror = await hostMirror(spec.suite);
        log(`debootstrap ${spec.suite} ${spec.variant} +${spec.include.join(',')} from the host's mirror`);
        await execa('debootstrap', [`--variant=${spec.variant}`, `--include=${spec.include.join(',')}`, spec.suite, work, mirror], { all: true });
        await execa('tar', ['--zstd', '-C', work, '--numeric-owner', '--xattrs', '-cf', `${tarball}.tmp`, '.']);
        await rename(`${tarball}.tmp`, tarball); // atomic: a half-written cache is never used
      } finally {
        await rm(work, { recursive: true, force: true });
        await rm(`${tarball}.tmp`, { force: true });
      }
      return { tarball, cold: true };
    })();
    pending.set(key, p);
    p.catch(() => pending.delete(key));
  }
  return await p;
}

export async function extractRoot(tarball: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await execa('tar', ['--zstd', '-C', dir, '--numeric-owner', '--xattrs', '-xf', tarball]);
}

async function mountedUnder(dir: string): Promise<string[]> {
  const mounts = await readFile('/proc/self/mounts', 'utf8');
  return mounts
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m): m is string => Boolean(m) && (m === dir || m.startsWith(dir + '/')));
}

/** Runs fn with /proc, /dev, /sys bound into root; always unmounts, deepest first. */
export async function withMounts<T>(root: string, fn: () => Promise<T>): Promise<T> {
  try {
    for (const d of ['proc', 'dev', 'sys']) {
      await mkdir(join(root, d), { recursive: true });
      await execa('mount', ['--rbind', `/${d}`, join(root, d)]);
      await execa('mount', ['--make-rslave', join(root, d)]);
    }
    return await fn();
  } finally {
    await unmountAll(root);
  }
}

export async function unmountAll(root: string): Promise<void> {
  for (const m of (await mountedUnder(root)).sort((a, b) => b.length - a.length)) {
    await execa('umount', [m]).catch(() => execa('umount', ['-l', m]));
  }
  const left = await mountedUnder(root);
  if (left.length) throw new Error(`still mounted under ${root}: ${left.join(', ')}`);
}

/** Removes a test root, refusing while anything is mounted below it. */
export async function removeRoot(root: string): Promise<void> {
  await unmountAll(root);
  await rm(root, { recursive: true, force: true });
}

export function inRoot(root: string, cmd: string[], opts: { env?: Record<string, string>; input?: string } = {}) {
  return execa('chroot', [root, ...cmd], {
    reject: false,
    all: true,
    input: opts.input,
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive', ...opts.env },
    extendEnv: false,
  });
}
