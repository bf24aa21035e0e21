// Steps on the root filesystem tree: bootstrap (or restore from cache), customise in
// the chroot, clean, clamp times, measure. Each step is a function of (root, recipe,
// exec), so the pipeline stays a readable list and tests can drive steps alone.
import { lstatSync, lutimesSync, readdirSync, readlinkSync } from 'node:fs';
import { cp, copyFile, lstat, mkdir, readdir, readFile, rm, writeFile, chmod, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Exec } from './exec.js';
import type { BootstrapCache, BootstrapKey } from './cache.js';
import { withChroot, exists, type Chroot } from './chroot.js';
import { guestFiles } from './guest-files.js';
import { minimalInitrdScript } from './minimal-initrd.js';
import type { Recipe } from './recipe.js';

/** Fills `root` from the cache or by running debootstrap (then stores it). Returns where it came from. */
export async function bootstrapRoot(opts: {
  root: string;
  key: BootstrapKey;
  cache: BootstrapCache | null;
  exec: Exec;
  /** also store into the cache (false with --no-cache: a forced clean build still refreshes nothing) */
  useCache: boolean;
  onLine?: (l: string) => void;
}): Promise<'cache' | 'debootstrap'> {
  const { root, key, cache, exec } = opts;
  await mkdir(root, { recursive: true });
  if (cache && opts.useCache && (await cache.has(key))) {
    try {
      await cache.restore(key, root);
      return 'cache';
    } catch (err) {
      // A damaged entry (truncated by a full disk, bit rot) must not fail every build:
      // drop it and bootstrap afresh, which stores a good one.
      opts.onLine?.(`cache entry unusable, bootstrapping afresh: ${(err as Error).message.split('\n')[0]}`);
      await cache.drop(key);
      await rm(root, { recursive: true, force: true });
      await mkdir(root, { recursive: true });
    }
  }
  await exec(
    'debootstrap',
    // a snapshot's Release is signed by the archive keys as any other: checked, never skipped
    // (the publisher key signs what comes out, so unverified packages would go out as signed)
    [`--variant=${key.variant}`, `--arch=${key.arch}`, `--components=${key.components.join(',')}`, key.suite, root, key.mirror],
    { stage: 'bootstrap', onLine: opts.onLine },
  );
  // debootstrap leaves its .debs in apt's archive: every later install binds the shared
  // .deb cache over it and the cleanup empties it, so they would only be ~10% of every
  // cache entry's bytes, unpacked again by every build.
  const archives = join(root, 'var/cache/apt/archives');
  for (const n of await readdir(archives).catch(() => [] as string[])) if (n.endsWith('.deb')) await rm(join(archives, n), { force: true });
  // Cache only a complete, untouched bootstrap (chroot steps come later, on a copy).
  if (cache) await cache.store(key, root);
  return 'debootstrap';
}

/**
 * The bootstrap plus the recipe's kernel package (and what it pulls in: udev, kmod,
 * initramfs-tools), cached as one entry keyed by the bootstrap key, the kernel package and
 * the recommends setting. The package list is what changes between versions; the kernel
 * rarely does, and unpacking it and building udev's hardware database are the slowest part
 * of the package install. Every build installs in these two steps, from the cache or not,
 * so a cached and an uncached build make the same tree. Returns whether debootstrap ran.
 */
export async function baseRoot(opts: {
  root: string;
  key: BootstrapKey;
  recipe: Recipe;
  cache: BootstrapCache | null;
  exec: Exec;
  useCache: boolean;
  debCache?: string | null;
  onLine?: (l: string) => void;
}): Promise<'cache' | 'debootstrap'> {
  const { root, recipe, cache, exec } = opts;
  const layerKey = kernelLayerKey(opts.key, recipe);
  if (cache && opts.useCache && (await cache.has(layerKey))) {
    try {
      await mkdir(root, { recursive: true });
      await cache.restore(layerKey, root);
      return 'cache';
    } catch (err) {
      opts.onLine?.(`cache entry unusable, rebuilding it: ${(err as Error).message.split('\n')[0]}`);
      await cache.drop(layerKey);
      await rm(root, { recursive: true, force: true });
    }
  }
  const from = await bootstrapRoot({ root, key: opts.key, cache, exec, useCache: opts.useCache, onLine: opts.onLine });
  // the bootstrap's own archive date: the same whichever recipe builds the layer
  const env = { SOURCE_DATE_EPOCH: String((await archiveDate(root)) ?? 0), INITRD: 'No' };
  await withChroot(root, exec, env, (c) => aptInstall(c, { root, exec, arch: recipe.arch, debCache: opts.debCache, packages: [recipe.boot.kernel], recommends: recipe.install_recommends, step: opts.onLine }));
  if (cache) await cache.store(layerKey, root);
  return from;
}

export function kernelLayerKey(key: BootstrapKey, recipe: Pick<Recipe, 'boot' | 'install_recommends'>): BootstrapKey {
  return { ...key, layer: { packages: [recipe.boot.kernel], recommends: recipe.install_recommends } };
}

/** apt-get update + install in an open chroot, with the shared .deb cache bound over apt's archive while it runs. */
async function aptInstall(c: Chroot, o: { root: string; exec: Exec; arch: string; debCache?: string | null; packages: string[]; recommends: boolean; step?: (what: string) => void }): Promise<void> {
  const { root, exec } = o;
  const step = o.step ?? (() => undefined);
  const archives = join(root, 'var/cache/apt/archives');
  if (o.debCache) {
    await mkdir(join(o.debCache, 'partial'), { recursive: true });
    await exec('mount', ['--bind', o.debCache, archives], { stage: 'packages' });
  }
  step('apt-get update');
  await c.run('apt-get', ['-q', ...APT_OPTIONS, 'update'], { stage: 'packages' });
  const pkgs = [...new Set(o.packages)].sort();
  step(`apt-get install (${pkgs.length} packages)`);
  // --force-unsafe-io: no fsync per unpacked file; the tree is scratch until the image exists
  const aptArgs = ['-q', '-y', ...APT_OPTIONS, '-o', 'Dpkg::Options::=--force-confold', '-o', 'Dpkg::Options::=--force-unsafe-io', '-o', 'Dpkg::Use-Pty=0', o.recommends ? '--install-recommends' : '--no-install-recommends', 'install', ...pkgs];
  const placeholders = await placeHostKeys(root);
  const eat = await eatmydata(root, o.arch, exec, c.env);
  const [cmd, ...args] = [...eat.prefix, 'apt-get', ...aptArgs];
  try {
    if (o.debCache) {
      // apt fails at once when another build holds the shared archive's lock: wait our turn
      await exec('flock', ['--timeout', '3600', join(o.debCache, '.loopship.lock'), 'chroot', root, cmd, ...args], {
        stage: 'packages',
        env: c.env,
      });
    } else {
      await c.run(cmd, args, { stage: 'packages' });
    }
  } finally {
    await eat.remove();
    await placeholders.remove();
  }
  // Unmount now: later steps and the cleanup must never touch the shared cache.
  if (o.debCache) await exec('umount', [archives], { stage: 'packages' });
}

// dpkg syncs its database after every step of every package even with --force-unsafe-io
// (~900 fsync and ~1000 sync_file_range calls for tiny's packages), and so do maintainer
// scripts. The tree is scratch until the image is made, so apt runs with the build host's
// libeatmydata (Debian package eatmydata) preloaded when the host has one for the image's
// arch and it loads in the chroot (a host library newer than the chroot's libc would not):
// copied into the chroot's /tmp for the install only, set through env(1) inside the
// chroot so that nothing on the host side preloads it. Without it, apt runs as before.
const MULTIARCH: Record<string, string> = { amd64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu', i386: 'i386-linux-gnu', armhf: 'arm-linux-gnueabihf', ppc64el: 'powerpc64le-linux-gnu', s390x: 's390x-linux-gnu' };
const EATMYDATA_DIR = 'tmp/loopship-eatmydata';
// Node's name for this machine's architecture -> Debian's
const NODE_TO_DEBIAN_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', ia32: 'i386', arm: 'armhf', ppc64: 'ppc64el', s390x: 's390x' };

/** Where Debian's eatmydata package puts libeatmydata for `arch` (default: this machine's); '' for an unknown arch. */
export function eatmydataLib(arch = NODE_TO_DEBIAN_ARCH[process.arch] ?? ''): string {
  return MULTIARCH[arch] ? `/usr/lib/${MULTIARCH[arch]}/libeatmydata.so.1` : '';
}

export async function eatmydata(
  root: string,
  arch: string,
  exec: Exec,
  env: Record<string, string>,
  hostLib = eatmydataLib(arch),
): Promise<{ prefix: string[]; remove(): Promise<void> }> {
  const dir = join(root, EATMYDATA_DIR);
  const remove = () => rm(dir, { recursive: true, force: true });
  const none = { prefix: [] as string[], remove };
  if (!hostLib || !(await exists(hostLib))) return none;
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await copyFile(hostLib, join(dir, 'libeatmydata.so')); // the file, not the host's symlink
  const prefix = ['/usr/bin/env', `LD_PRELOAD=/${EATMYDATA_DIR}/libeatmydata.so`];
  // ld.so only warns (on stderr) about a library it cannot preload: any output means no
  const complaints: string[] = [];
  const ok = await exec('chroot', [root, ...prefix, '/bin/true'], { stage: 'packages (eatmydata probe)', env, onLine: (l) => complaints.push(l) }).then(
    (r) => r.stdout.trim() === '' && complaints.every((l) => !l.trim()),
    () => false,
  );
  if (ok) return { prefix, remove };
  await remove();
  return none;
}

// SSH host keys: openssh-server's postinst makes any that are missing (RSA 3072 alone took
// ~3 s CPU per build), and the cleanup deletes them again: images never ship host keys,
// hosts make their own at first boot. Empty files under those names make the postinst skip
// the generation; they go again right after the install.
const HOST_KEY_TYPES = ['rsa', 'dsa', 'ecdsa', 'ed25519'];

/** Puts empty placeholders where missing SSH host keys would be generated; `remove` undoes exactly that. */
export async function placeHostKeys(root: string): Promise<{ remove(): Promise<void> }> {
  const dir = join(root, 'etc/ssh');
  const madeDir = !(await exists(dir));
  if (madeDir) await mkdir(dir, { recursive: true, mode: 0o755 });
  const made: string[] = [];
  for (const t of HOST_KEY_TYPES) {
    const p = join(dir, `ssh_host_${t}_key`);
    if (await exists(p)) continue;
    await writeFile(p, '', { mode: 0o600, flag: 'wx' });
    made.push(p);
  }
  return {
    async remove() {
      for (const p of made) {
        // only a placeholder still empty is ours (a package may have written a real key over it)
        const st = await lstat(p).catch(() => null);
        if (st?.isFile() && st.size === 0) await rm(p, { force: true });
      }
      if (madeDir && (await readdir(dir).catch(() => ['?'])).length === 0) await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface CustomizeOptions {
  root: string;
  recipe: Recipe;
  overlayDir: string | null;
  exec: Exec;
  sourceDateEpoch: number;
  uuid: string;
  digest: string;
  /** directory of downloaded .debs shared between builds (bind-mounted over apt's archive cache) */
  debCache?: string | null;
  onStep?: (what: string) => void;
}

// apt in the build chroot: no translated descriptions (megabytes fetched on every build,
// and the image's lists are emptied anyway) and no source package cache (a second
// parse of the package lists that nothing here reads).
const APT_OPTIONS = ['-o', 'Acquire::Languages=none', '-o', 'Dir::Cache::srcpkgcache='];

/** Everything that happens inside the chroot, in recipe order. */
export async function customizeRoot(o: CustomizeOptions): Promise<void> {
  const { root, recipe, exec } = o;
  const step = o.onStep ?? (() => undefined);
  // INITRD=No: kernel hooks skip the initramfs; it is made once, at the end, with the
  // final configuration (each generation costs many seconds).
  const env = { SOURCE_DATE_EPOCH: String(o.sourceDateEpoch), INITRD: 'No' };
  await withChroot(root, exec, env, async (c) => {
    await aptInstall(c, { root, exec, arch: recipe.arch, debCache: o.debCache, packages: imagePackages(recipe), recommends: recipe.install_recommends, step });

    if (o.overlayDir) {
      step('overlay');
      // Copy keeping modes and symlinks; ownership is root's (we build as root).
      await cp(o.overlayDir, root, { recursive: true, force: true, verbatimSymlinks: true, preserveTimestamps: false });
    }
    for (const [path, f] of guestFiles(recipe, { uuid: o.uuid, digest: o.digest })) {
      const abs = join(root, path);
      await mkdir(join(abs, '..'), { recursive: true });
      await rm(abs, { force: true });
      if ('link' in f) {
        await symlink(f.link, abs);
        continue;
      }
      // created with its mode, so a 0600 file is never readable meanwhile; chmod: the umask may narrow it
      await writeFile(abs, f.content, { mode: f.mode });
      await chmod(abs, f.mode);
    }

    if (recipe.groups.length) step('groups');
    for (const g of recipe.groups) {
      await c.run('groupadd', ['-f', ...(g.system ? ['--system'] : []), ...(g.gid !== undefined ? ['--gid', String(g.gid)] : []), g.name], { stage: `groups (${g.name})` });
    }
    if (recipe.users.length) step('users');
    for (const u of recipe.users) {
      const args = ['--shell', u.shell, ...(u.system ? ['--system'] : ['--create-home']), ...(u.uid !== undefined ? ['--uid', String(u.uid)] : [])];
      if (u.home) args.push('--home-dir', u.home);
      if (u.groups.length) args.push('--groups', u.groups.join(','));
      // No password: the account is locked until the site provisions keys or a password.
      await c.run('useradd', [...args, u.name], { stage: `users (${u.name})` });
    }

    // (busybox init has no units: its inittab is among the guest files)
    if (recipe.boot.init === 'systemd') {
      step('services');
      const enable = ['loopship-host-config.service', 'loopship-ready.service', ...recipe.services.enable];
      await c.run('systemctl', ['enable', ...enable], { stage: 'services' });
      if (recipe.services.disable.length) await c.run('systemctl', ['disable', ...recipe.services.disable], { stage: 'services' });
    }

    for (const [i, cmd] of recipe.commands.entries()) {
      step(`command ${i + 1}/${recipe.commands.length}`);
      await c.sh(cmd, { stage: `commands[${i}]` });
    }

    // Regenerate the initramfs now that the overlay may have changed its config; with
    // SOURCE_DATE_EPOCH set, initramfs-tools makes it reproducible.
    if (recipe.boot.initrd === 'minimal') {
      step('initrd');
      await c.sh(minimalInitrdScript(), { stage: 'initrd (minimal)' });
    } else if (await exists(join(root, 'usr/sbin/update-initramfs'))) {
      step('initramfs');
      // update-initramfs ends with `sync -f` on the new file: a syncfs of the build host's
      // whole filesystem (the scratch tree's), ~1 s on this shared disk and unbounded on a
      // busy one. The tree is scratch until the image is made (whose chunks publishing
      // syncs), so a no-op `sync` comes first in PATH for this one command (/tmp is emptied
      // by the cleanup).
      await mkdir(join(root, 'tmp/loopship-nosync'), { recursive: true });
      await writeFile(join(root, 'tmp/loopship-nosync/sync'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
      // (PATH set inside the chroot's shell: the one we pass also finds `chroot` on the host)
      await c.sh('rm -f /boot/initrd.img-*; PATH=/tmp/loopship-nosync:$PATH update-initramfs -c -k all', { stage: 'initramfs', env: { INITRD: 'Yes' } });
      await rm(join(root, 'tmp/loopship-nosync'), { recursive: true, force: true });
    }
  });
}

/** What apt installs into the image: the kernel, busybox when it is the init or the initrd's shell, the recipe's packages. */
export function imagePackages(recipe: Pick<Recipe, 'boot' | 'packages'>): string[] {
  const init = (recipe.boot.init === 'busybox' || recipe.boot.initrd === 'minimal') && !recipe.packages.some((p) => /^busybox(-static)?(=|$)/.test(p)) ? ['busybox'] : [];
  return [recipe.boot.kernel, ...init, ...recipe.packages];
}

/** Installed packages with versions, sorted: the manifest's build facts. */
export async function installedPackages(root: string, exec: Exec, arch = 'amd64'): Promise<{ name: string; version: string }[]> {
  const { stdout } = await exec('dpkg-query', [`--admindir=${join(root, 'var/lib/dpkg')}`, '-W', '-f', '${binary:Package}\t${Version}\t${db:Status-Abbrev}\n'], { stage: 'facts' });
  return stdout
    .split('\n')
    .map((l) => l.split('\t'))
    .filter((f) => f.length >= 3 && f[2].startsWith('ii'))
    // Multi-Arch: same packages carry ":<arch>"; keep the qualifier only for foreign ones
    .map(([name, version]) => ({ name: name.endsWith(`:${arch}`) ? name.slice(0, -arch.length - 1) : name, version }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Removes build noise and per-host identity so two builds give the same bytes and no two hosts share secrets. */
export async function cleanRoot(root: string, recipe: Recipe): Promise<void> {
  const del = async (rel: string) => rm(join(root, rel), { recursive: true, force: true });
  const emptyDir = async (rel: string, keep: string[] = []) => {
    const d = join(root, rel);
    for (const n of await readdir(d).catch(() => [] as string[])) if (!keep.includes(n)) await rm(join(d, n), { recursive: true, force: true });
  };
  await emptyDir('var/lib/apt/lists', ['partial']);
  await emptyDir('var/lib/apt/lists/partial');
  await emptyDir('var/cache/apt', ['archives']);
  await emptyDir('var/cache/apt/archives', ['partial']);
  await emptyDir('var/cache/apt/archives/partial');
  await emptyDir('var/cache/debconf', ['config.dat', 'passwords.dat', 'templates.dat']);
  await emptyDir('var/cache/man');
  await del('var/cache/ldconfig/aux-cache');
  for (const f of ['var/lib/dpkg/status-old', 'var/lib/dpkg/diversions-old', 'var/lib/dpkg/statoverride-old', 'etc/passwd-', 'etc/group-', 'etc/shadow-', 'etc/gshadow-', 'etc/subuid-', 'etc/subgid-']) await del(f);
  // logs: empty every log file but keep it, with its owner and mode (daemons such as
  // xrdp cannot create their log in root-owned /var/log); rotated copies and the
  // binary journal go entirely.
  await truncateLogs(join(root, 'var/log'));
  await emptyDir('var/log/journal');
  await emptyDir('tmp');
  await emptyDir('var/tmp');
  // /run is a tmpfs on the booted system: what the build left there is never seen, only
  // noise (blkid run by initramfs hooks wrote the build host's device cache here: one
  // file more or less renumbers every inode after it and changed ~600 chunks of a rebuild)
  await emptyDir('run');
  await del('root/.bash_history');
  await del('var/lib/systemd/random-seed');
  await del('var/lib/systemd/catalog/database');
  // identity: empty machine-id means "first boot" to systemd; host keys are made on the host
  await writeFile(join(root, 'etc/machine-id'), '', { mode: 0o444 });
  await del('var/lib/dbus/machine-id');
  for (const n of await readdir(join(root, 'etc/ssh')).catch(() => [] as string[])) if (/^ssh_host_.*_key(\.pub)?$/.test(n)) await del(`etc/ssh/${n}`);
  // the build host's resolver must not leak into the image
  await rm(join(root, 'etc/resolv.conf'), { force: true });
  await writeFile(join(root, 'etc/resolv.conf'), '', { mode: 0o644 });
  await del('usr/sbin/policy-rc.d');
  if (recipe.cleanup.docs) {
    // keep copyright files: the licences travel with the binaries
    for (const pkg of await readdir(join(root, 'usr/share/doc')).catch(() => [] as string[])) {
      const d = join(root, 'usr/share/doc', pkg);
      const st = await lstat(d);
      if (!st.isDirectory()) continue;
      for (const n of await readdir(d)) if (n !== 'copyright') await rm(join(d, n), { recursive: true, force: true });
    }
    await emptyDir('usr/share/man');
    await emptyDir('usr/share/info');
  }
  if (recipe.cleanup.locales) await emptyDir('usr/share/locale', ['locale.alias']);
}

async function truncateLogs(dir: string): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) await truncateLogs(p);
    else if (e.isFile()) {
      if (/\.(\d+|gz|xz|old)$/.test(e.name)) await rm(p, { force: true });
      else await writeFile(p, '');
    }
  }
}

export interface TreeStats {
  files: number;
  /** bytes the content takes in 4 KiB blocks (what the filesystem must hold) */
  blockBytes: number;
  /** plain sum of file sizes */
  bytes: number;
}

/**
 * Clamps every mtime to `epoch` (and sets atime to it) and measures the tree in the same
 * walk. Sorted traversal, no symlinks followed, nothing outside `root` touched.
 */
export async function clampAndMeasure(root: string, epoch: number): Promise<TreeStats> {
  // Synchronous calls: one walk over thousands of files, nothing else to do meanwhile,
  // and a promise round trip per file cost a second per build.
  const stats: TreeStats = { files: 0, blockBytes: 0, bytes: 0 };
  const blocks = (n: number) => Math.ceil(n / 4096) * 4096;
  const dirs: string[] = [];
  const visit = (p: string): void => {
    const st = lstatSync(p);
    stats.files++;
    if (st.isDirectory()) {
      const names = readdirSync(p).sort();
      stats.blockBytes += blocks(Math.max(4096, names.length * 32));
      for (const n of names) visit(join(p, n));
      dirs.push(p);
      return;
    }
    if (st.isFile()) {
      stats.bytes += st.size;
      stats.blockBytes += blocks(st.size);
    } else if (st.isSymbolicLink()) {
      const target = readlinkSync(p);
      if (target.length >= 60) stats.blockBytes += 4096;
    }
    const m = st.mtimeMs / 1000 > epoch ? epoch : st.mtimeMs / 1000;
    lutimesSync(p, epoch, m);
  };
  visit(root);
  // directories last: touching their entries above changed nothing, but be explicit
  for (const d of dirs) {
    const st = lstatSync(d);
    lutimesSync(d, epoch, Math.min(st.mtimeMs / 1000, epoch));
  }
  return stats;
}

/** The archive's Release date: a build time that follows the packages, not the clock. */
export async function archiveDate(root: string): Promise<number | null> {
  const dir = join(root, 'var/lib/apt/lists');
  for (const n of (await readdir(dir).catch(() => [] as string[])).sort()) {
    if (!/_InRelease$|_Release$/.test(n)) continue;
    const text = await readFile(join(dir, n), 'utf8').catch(() => '');
    const m = /^Date:\s*(.+)$/m.exec(text);
    if (m) {
      const t = Date.parse(m[1]);
      if (!Number.isNaN(t)) return Math.floor(t / 1000);
    }
  }
  return null;
}
