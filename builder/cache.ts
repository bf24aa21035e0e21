// Cache of the debootstrap stage: a tarball of the freshly bootstrapped root, keyed by
// exactly what determines it. Changing packages, overlay or commands reuses it; changing
// suite, mirror, variant, components, snapshot or arch does not. Entries appear only by
// rename after a complete write, so a failed or interrupted build never leaves a
// half-written tarball that a later build would trust.
import { createHash } from 'node:crypto';
import { mkdir, rename, rm, stat, writeFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Exec } from './exec.js';

export interface BootstrapKey {
  suite: string;
  mirror: string;
  variant: string;
  components: string[];
  snapshot: string | null;
  arch: string;
  /** packages installed on top of the bootstrap (see rootfs.ts baseRoot); absent for the plain bootstrap */
  layer?: { packages: string[]; recommends: boolean };
}

/** Bumped when the way we bootstrap changes, so old entries stop matching. */
const CACHE_FORMAT = 1;

export function cacheKey(k: BootstrapKey): string {
  const canonical = JSON.stringify({
    format: CACHE_FORMAT,
    suite: k.suite,
    mirror: k.mirror.replace(/\/+$/, ''),
    variant: k.variant,
    components: [...k.components].sort(),
    snapshot: k.snapshot,
    // snapshot bootstraps skipped the Release signature check once: those entries must not match
    ...(k.snapshot ? { release_checked: true } : {}),
    arch: k.arch,
    // only when present, so plain bootstrap entries keep their keys
    ...(k.layer ? { layer: { packages: [...k.layer.packages].sort(), recommends: k.layer.recommends } } : {}),
  });
  return createHash('sha256').update(canonical).digest('hex');
}

export const DEFAULT_CACHE_DIR = '/var/cache/loopship';

export class BootstrapCache {
  constructor(
    readonly dir: string,
    private readonly exec: Exec,
  ) {}

  entryPath(key: BootstrapKey): string {
    return join(this.dir, 'debootstrap', `${key.suite}-${key.arch}-${key.variant}${key.layer ? '-layer' : ''}-${cacheKey(key).slice(0, 16)}.tar.zst`);
  }

  /** Downloaded packages, shared by builds of one suite and arch (apt verifies each .deb against the index). */
  debDir(key: BootstrapKey): string {
    return join(this.dir, 'debs', `${key.suite}-${key.arch}`);
  }

  async has(key: BootstrapKey): Promise<boolean> {
    return stat(this.entryPath(key)).then((s) => s.isFile() && s.size > 0, () => false);
  }

  /** Unpacks the entry into `root` (which must be empty). */
  async restore(key: BootstrapKey, root: string): Promise<void> {
    await mkdir(root, { recursive: true });
    await this.exec('tar', ['--zstd', '-x', '-p', '--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '-f', this.entryPath(key), '-C', root], { stage: 'bootstrap (cache restore)' });
  }

  /** Stores `root` as the entry for `key`: written to a temporary name, renamed when complete. */
  async store(key: BootstrapKey, root: string): Promise<void> {
    const final = this.entryPath(key);
    await mkdir(join(this.dir, 'debootstrap'), { recursive: true });
    const tmp = `${final}.tmp-${process.pid}`;
    try {
      await this.exec(
        'tar',
        ['--sort=name', '--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '-I', 'zstd -T0 -3', '-c', '-f', tmp, '-C', root, '.'],
        { stage: 'bootstrap (cache store)' },
      );
      await writeFile(`${final}.json`, JSON.stringify({ ...key, key: cacheKey(key), stored: new Date().toISOString() }, null, 2) + '\n');
      await rename(tmp, final);
    } finally {
      await rm(tmp, { force: true });
    }
  }

  async drop(key: BootstrapKey): Promise<void> {
    await rm(this.entryPath(key), { force: true });
    await rm(`${this.entryPath(key)}.json`, { force: true });
  }

  async info(key: BootstrapKey): Promise<unknown> {
    return JSON.parse(await readFile(`${this.entryPath(key)}.json`, 'utf8'));
  }
}
