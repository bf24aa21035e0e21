// Writes host settings into a mounted image. Pure planning (settings -> files) is kept
// apart from writing, which never follows a symlink out of the image: the image is
// signed, but a path like /etc -> /host/etc must still never reach the host's files.
import { lstat, mkdir, open, readFile, rename, rm, chown, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { LoopshipError } from '../format/index.js';
import type { Manifest } from '../format/index.js';
import type { Settings } from './settings.js';
import { tmpName } from './fsutil.js';
import { pauseAt } from './pause.js';

export interface PlannedFile {
  path: string; // absolute inside the image
  content: string;
  mode: number;
  dirMode?: number;
}

/** Well-known setting names (the recipes declare the ones their image accepts). */
export const SETTING = {
  hostname: 'hostname',
  address: 'network.address', // cidr; absent => DHCP
  gateway: 'network.gateway', // ip
  dns: 'network.dns', // ip-list
} as const;

export interface ImageFacts {
  /** existing /etc/hosts content, if any */
  hosts: string | null;
  hasIfupdown: boolean;
}

/** What to write for these settings: a pure function, tested without any image. */
export function planHostFiles(manifest: Manifest, settings: Settings, facts: ImageFacts, meta: { host: string; configuredAt: string }): PlannedFile[] {
  const files: PlannedFile[] = [];
  const hostname = settings[SETTING.hostname];
  if (hostname) {
    files.push({ path: '/etc/hostname', content: hostname + '\n', mode: 0o644 });
    const short = hostname.split('.')[0];
    const names = short === hostname ? hostname : `${hostname} ${short}`;
    const lines = (facts.hosts ?? '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n').split('\n').filter((l) => !/^127\.0\.1\.1\s/.test(l));
    while (lines.length && lines.at(-1) === '') lines.pop();
    lines.splice(1, 0, `127.0.1.1\t${names}`);
    files.push({ path: '/etc/hosts', content: lines.join('\n') + '\n', mode: 0o644 });
  }

  const declaresNetwork = [SETTING.address, SETTING.gateway, SETTING.dns].some((k) => manifest.settings[k]);
  if (declaresNetwork) {
    const address = settings[SETTING.address];
    const gateway = settings[SETTING.gateway];
    const dns = settings[SETTING.dns]?.split(',').filter(Boolean) ?? [];
    const nd = ['# written by loopship-agent from the host settings', '[Match]', 'Name=eth* en*', '', '[Network]'];
    if (address) {
      nd.push(`Address=${address}`);
      if (gateway) nd.push(`Gateway=${gateway}`);
    } else {
      nd.push('DHCP=yes');
    }
    for (const d of dns) nd.push(`DNS=${d}`);
    files.push({ path: '/etc/systemd/network/10-loopship.network', content: nd.join('\n') + '\n', mode: 0o644 });
    if (facts.hasIfupdown) {
      const ifu = ['# written by loopship-agent from the host settings', 'auto eth0'];
      if (address) {
        ifu.push(`iface eth0 ${address.includes(':') ? 'inet6' : 'inet'} static`, `\taddress ${address}`);
        if (gateway) ifu.push(`\tgateway ${gateway}`);
      } else {
        ifu.push('iface eth0 inet dhcp');
      }
      if (dns.length) ifu.push(`\tdns-nameservers ${dns.join(' ')}`);
      files.push({ path: '/etc/network/interfaces.d/loopship', content: ifu.join('\n') + '\n', mode: 0o644 });
    }
  }

  const keys = Object.entries(manifest.settings)
    .filter(([k, d]) => d.type === 'ssh-keys' && settings[k])
    .map(([k]) => settings[k]);
  if (keys.length) {
    files.push({ path: '/root/.ssh/authorized_keys', content: keys.join('\n') + '\n', mode: 0o600, dirMode: 0o700 });
  }

  files.push({
    path: '/etc/loopship/host.json',
    content: JSON.stringify({ appliance: manifest.name, version: manifest.version, host: meta.host, configured_at: meta.configuredAt, settings }, null, 2) + '\n',
    mode: 0o600,
  });
  return files;
}

/** Makes the directories of `rel` under `root`, refusing symlinks and non-directories. */
async function safeParent(root: string, rel: string, dirMode: number): Promise<string> {
  const parts = rel.split('/').filter(Boolean);
  parts.pop();
  let cur = root;
  for (const p of parts) {
    if (p === '..' || p === '.') throw new LoopshipError('IO', `refusing path component "${p}"`, { where: rel });
    cur = join(cur, p);
    let st;
    try {
      st = await lstat(cur);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await mkdir(cur, { mode: dirMode });
      await chown(cur, 0, 0).catch(() => {});
      continue;
    }
    if (st.isSymbolicLink()) throw new LoopshipError('IO', `refusing to write through the symlink ${cur.slice(root.length)} in the image`, { where: rel });
    if (!st.isDirectory()) throw new LoopshipError('IO', `${cur.slice(root.length)} in the image is not a directory`, { where: rel });
  }
  return cur;
}

/**
 * A write error inside the image, said plainly. ENOSPC while the image still has room means
 * the disk under the (sparse) image file is full: the loop device could not allocate there.
 */
async function imageWriteError(root: string, what: string, err: unknown, where: string): Promise<LoopshipError> {
  const e = err as NodeJS.ErrnoException;
  let hint = '';
  if (e.code === 'ENOSPC') {
    const fs = await statfs(root).catch(() => null);
    const free = fs ? fs.bavail * fs.bsize : 0;
    hint = free >= 1024 * 1024 ? ` (the image has ${(free / 1048576).toFixed(1)} MiB free: the disk holding the image file is full)` : ' (image full)';
  }
  return new LoopshipError('IO', `${what}: ${e.code ?? e.message}${hint}`, { where, cause: err });
}

/** Writes one file into the mounted image: tmp + fsync + rename, owned by root. `image` (the image file) is for messages. */
export async function writeIntoImage(root: string, f: PlannedFile, image?: string): Promise<void> {
  const parent = await safeParent(root, f.path, f.dirMode ?? 0o755);
  const target = join(parent, f.path.split('/').pop()!);
  const st = await lstat(target).catch(() => null);
  if (st?.isDirectory()) throw new LoopshipError('IO', `${f.path} in the image is a directory`, { where: f.path });
  const tmp = tmpName(target);
  try {
    const fh = await open(tmp, 'wx', f.mode);
    try {
      await fh.writeFile(f.content);
      await fh.chmod(f.mode);
      await fh.chown(0, 0).catch(() => {});
      await fh.sync();
    } finally {
      await fh.close();
    }
    // rename replaces a symlink itself, never what it points to
    await rename(tmp, target);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {});
    if (err instanceof LoopshipError) throw err;
    throw await imageWriteError(root, `cannot write ${f.path} into the image`, err, image ?? f.path);
  }
}

/** Reads what planning needs from the mounted image (never following symlinks out). */
export async function imageFacts(root: string): Promise<ImageFacts> {
  let hosts: string | null = null;
  const hostsPath = join(root, 'etc/hosts');
  const st = await lstat(hostsPath).catch(() => null);
  if (st?.isFile() && st.size < 1024 * 1024) hosts = await readFile(hostsPath, 'utf8');
  const ifu = await lstat(join(root, 'etc/network/interfaces')).catch(() => null);
  return { hosts, hasIfupdown: Boolean(ifu?.isFile()) };
}

/** Plans and writes the host files into an image mounted at `root`. Returns the paths written. `meta.image` (the image file) is for messages. */
export async function writeHostSettings(root: string, manifest: Manifest, settings: Settings, meta: { host: string; configuredAt: string; image?: string }): Promise<string[]> {
  const files = planHostFiles(manifest, settings, await imageFacts(root), meta);
  for (const f of files) {
    await writeIntoImage(root, f, meta.image);
    if (f === files[0]) await pauseAt('configure');
  }
  // one sync of the filesystem so nothing is lost if the host dies before umount
  const fh = await open(root, 'r');
  try {
    await fh.sync();
  } catch (err) {
    throw await imageWriteError(root, 'cannot sync the image', err, meta.image ?? root);
  } finally {
    await fh.close();
  }
  return files.map((f) => f.path);
}
