// The build pipeline: recipe -> root tree -> ext4 image + kernel + initrd -> signed
// package (tar, or chunks straight into a repository). A list of stages, each timed and
// reported; the outside world (programs, clock, environment, key material) comes in
// through the options so tests can drive every failure path.
import { access, constants, mkdtemp, mkdir, rm, stat } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createPackage, RepositoryWriter, SPEC_VERSION, LoopshipError, sha256Hex, type Manifest, type PackageStats, type PublishResult } from '../format/index.js';
import { packageVersion } from '../format/version.js';
import type { SigningKey } from '../keys/index.js';
import { BootstrapCache, DEFAULT_CACHE_DIR, type BootstrapKey } from './cache.js';
import { defaultExec, type Exec } from './exec.js';
import { guardDirectory, mountsUnder, unmountAll } from './chroot.js';
import { resolveMirror } from './apt-sources.js';
import { loadRecipe, kernelCmdline, type LoadedRecipe } from './recipe.js';
import { baseRoot, customizeRoot, cleanRoot, clampAndMeasure, installedPackages, archiveDate } from './rootfs.js';
import { makeImage, extractBootFiles, imageUuid, imageSize } from './image.js';
import { DEFAULT_MEMORY_DIR, fitsInMemory, memoryFacts } from './image-scratch.js';

export type StageName = 'recipe' | 'bootstrap' | 'customize' | 'cleanup' | 'image' | 'package' | 'publish';

/** What the CLI (or a test) sees of a running build. */
export interface BuildReporter {
  stageStart(stage: StageName): void;
  stageStep?(stage: StageName, detail: string): void;
  stageProgress?(stage: StageName, done: number, total: number): void;
  stageEnd(stage: StageName, seconds: number, note?: string): void;
}

export type BuildOutput =
  | { kind: 'image' }
  | { kind: 'tar'; tarPath: string; publisherKey: SigningKey }
  | { kind: 'repo'; repoDir: string; publisherKey: SigningKey; indexKeys: SigningKey[]; channel?: string };

export interface BuildOptions {
  recipe: string;
  output: BuildOutput;
  /** parent directory for the build's scratch directory (default /var/tmp) */
  workDir?: string;
  /** keep the scratch directory (root tree and image) instead of deleting it */
  keepWork?: boolean;
  /**
   * where the image file is made when the work directory is not kept (with keepWork it
   * stays in the work directory): default /dev/shm when the image fits in memory
   * (image-scratch.ts), else the work directory
   */
  imageDir?: string;
  cacheDir?: string;
  noCache?: boolean;
  mirror?: string;
  exec?: Exec;
  env?: NodeJS.ProcessEnv;
  now?: () => Date;
  /** root of the apt configuration to read the default mirror from (tests) */
  aptRoot?: string;
  reporter?: BuildReporter;
  /** passed to createPackage (tests use fast levels) */
  zstdLevel?: number;
}

export interface BuildResult {
  name: string;
  version: string;
  recipeDigest: string;
  mirror: string;
  uuid: string;
  sourceDateEpoch: number;
  bootstrap: 'cache' | 'debootstrap';
  workDir: string | null;
  /** madeIn: the directory mkfs wrote the image in (memory or the work directory) */
  image: { path: string | null; size: number; fsBytes: number; files: number; madeIn: string };
  kernel: { path: string | null; version: string };
  initrd: { path: string | null };
  packages: { name: string; version: string }[];
  cmdline: string;
  stages: { stage: StageName; seconds: number }[];
  wallSeconds: number;
  manifest?: Manifest;
  manifestSha256?: string;
  stats?: PackageStats;
  tarPath?: string;
  published?: PublishResult;
}

const silent: BuildReporter = { stageStart: () => undefined, stageEnd: () => undefined };

export async function builderVersion(): Promise<string> {
  return `loopship/${packageVersion()}`;
}


/** SOURCE_DATE_EPOCH from the environment, the recipe, the snapshot, else the archive's Release date. */
export function chooseEpoch(env: NodeJS.ProcessEnv, loaded: LoadedRecipe, archive: number | null): number {
  const fromEnv = env.SOURCE_DATE_EPOCH;
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!/^[0-9]{1,12}$/.test(fromEnv)) throw new LoopshipError('USAGE', `SOURCE_DATE_EPOCH must be a number of seconds, got ${JSON.stringify(fromEnv)}`);
    return Number(fromEnv);
  }
  if (loaded.recipe.source_date_epoch !== undefined) return loaded.recipe.source_date_epoch;
  const snap = loaded.recipe.base.snapshot;
  if (snap) {
    const iso = `${snap.slice(0, 4)}-${snap.slice(4, 6)}-${snap.slice(6, 8)}T${snap.slice(9, 11)}:${snap.slice(11, 13)}:${snap.slice(13, 15)}Z`;
    return Math.floor(Date.parse(iso) / 1000);
  }
  return archive ?? 0;
}

/** Mirror URL with the snapshot applied: a "{snapshot}" placeholder in the mirror is replaced by the timestamp. */
export function snapshotMirror(mirror: string, snapshot: string | undefined): string {
  if (!snapshot) return mirror;
  if (!mirror.includes('{snapshot}')) {
    throw new LoopshipError('CONFIG_INVALID', `base.snapshot is set but the mirror ${mirror} has no {snapshot} placeholder; pass --mirror with one (e.g. .../archive/debian/{snapshot})`);
  }
  return mirror.replace('{snapshot}', snapshot);
}

export async function build(opts: BuildOptions): Promise<BuildResult> {
  const exec = opts.exec ?? defaultExec;
  const env = opts.env ?? process.env;
  const now = opts.now ?? (() => new Date());
  const rep = opts.reporter ?? silent;
  const stages: BuildResult['stages'] = [];
  const t0 = performance.now();
  const stage = async <T>(name: StageName, fn: () => Promise<T>, note?: (r: T) => string | undefined): Promise<T> => {
    rep.stageStart(name);
    const s = performance.now();
    let r: T;
    try {
      r = await fn();
    } catch (err) {
      // Our errors already name their stage; anything else (ENOSPC, EACCES...) gets it here.
      if (err instanceof LoopshipError) throw err;
      throw new LoopshipError('IO', `${(err as Error)?.message ?? String(err)}`, { where: `stage ${name}`, cause: err });
    }
    const seconds = (performance.now() - s) / 1000;
    stages.push({ stage: name, seconds });
    rep.stageEnd(name, seconds, note?.(r));
    return r;
  };

  const loaded = await stage('recipe', () => loadRecipe(opts.recipe), (l) => `${l.recipe.name} ${l.recipe.version} (${l.digest.slice(0, 12)})`);
  if (!opts.exec) await preflight(env);
  const { recipe } = loaded;
  const mirrorBase = await resolveMirror({ explicit: opts.mirror, recipeMirror: recipe.base.mirror, suite: recipe.base.suite, rootDir: opts.aptRoot });
  const mirror = snapshotMirror(mirrorBase, recipe.base.snapshot);
  const key: BootstrapKey = { suite: recipe.base.suite, mirror, variant: recipe.base.variant, components: recipe.base.components, snapshot: recipe.base.snapshot ?? null, arch: recipe.arch };
  const uuid = imageUuid(recipe.name, recipe.arch);
  if (opts.output.kind === 'repo') await assertRepository(opts.output.repoDir);
  const cache = opts.noCache ? null : new BootstrapCache(opts.cacheDir ?? DEFAULT_CACHE_DIR, exec);

  const parent = resolve(opts.workDir ?? '/var/tmp');
  await mkdir(parent, { recursive: true });
  const work = await mkdtemp(join(parent, `loopship-build-${recipe.name}-`));
  const root = join(work, 'root');
  const outDir = join(work, 'out');
  await mkdir(outDir);
  let keepWork = !!opts.keepWork || opts.output.kind === 'image';
  const unguard = guardDirectory(work, exec);
  let rootRemoval: Promise<void> | undefined;
  // a scratch image outside the work directory (in memory): removed in finally, or at
  // exit when a signal ends the build (its memory is the host's, not a disk's)
  let imageScratch: string | null = null;
  const dropImageScratch = () => {
    if (imageScratch) rmSync(imageScratch, { recursive: true, force: true });
  };
  try {
    const from = await stage(
      'bootstrap',
      () => baseRoot({ root, key, recipe, cache, exec, useCache: !opts.noCache, debCache: cache?.debDir(key), onLine: (l) => rep.stageStep?.('bootstrap', l) }),
      (f) => (f === 'cache' ? 'from cache' : 'debootstrap'),
    );
    const epoch = chooseEpoch(env, loaded, await archiveDate(root));

    await stage('customize', () =>
      customizeRoot({ root, recipe, overlayDir: loaded.overlayDir, exec, debCache: cache?.debDir(key), sourceDateEpoch: epoch, uuid, digest: loaded.digest, onStep: (d) => rep.stageStep?.('customize', d) }),
    );
    const { packages, tree } = await stage('cleanup', async () => {
      const packages = await installedPackages(root, exec, recipe.arch);
      await cleanRoot(root, recipe);
      const tree = await clampAndMeasure(root, epoch);
      return { packages, tree };
    }, (r) => `${r.packages.length} packages, ${r.tree.files} files, ${(r.tree.bytes / 2 ** 20).toFixed(0)} MiB`);

    let imagePath = join(outDir, 'disk.img');
    const { img, boot } = await stage('image', async () => {
      const boot = await extractBootFiles(root, outDir);
      if (!keepWork) {
        const dir = opts.imageDir ?? (fitsInMemory(imageSize(recipe, tree), await memoryFacts()) ? DEFAULT_MEMORY_DIR : null);
        if (dir) {
          process.on('exit', dropImageScratch);
          imageScratch = await mkdtemp(join(resolve(dir), `loopship-image-${recipe.name}-`));
          imagePath = join(imageScratch, 'disk.img');
        }
      }
      const img = await makeImage({ root, out: imagePath, recipe, tree, uuid, sourceDateEpoch: epoch, exec });
      return { img, boot };
    }, (r) => `${(r.img.size / 2 ** 20).toFixed(0)} MiB ext4${imageScratch ? ` (made in ${dirname(imageScratch)})` : ''}, kernel ${r.boot.kernelVersion}`);
    // The root tree is big and no longer needed once the image exists. Deleting thousands of
    // files waits on the disk (seconds on a busy one), so it runs while the package is made
    // (CPU-bound) and is awaited before the build returns.
    rootRemoval = removeTree(root, exec);
    rootRemoval.catch(() => undefined); // the error surfaces where it is awaited

    const cmdline = kernelCmdline(recipe, uuid);
    const result: BuildResult = {
      name: recipe.name,
      version: recipe.version,
      recipeDigest: loaded.digest,
      mirror,
      uuid,
      sourceDateEpoch: epoch,
      bootstrap: from,
      workDir: work,
      image: { path: imagePath, size: img.size, fsBytes: tree.blockBytes, files: tree.files, madeIn: imageScratch ? dirname(imageScratch) : outDir },
      kernel: { path: boot.kernel, version: boot.kernelVersion },
      initrd: { path: boot.initrd },
      packages,
      cmdline,
      stages,
      wallSeconds: 0,
    };

    if (opts.output.kind !== 'image') {
      const out = opts.output;
      const builtAt = env.SOURCE_DATE_EPOCH ? new Date(epoch * 1000) : now();
      const manifest: Parameters<typeof createPackage>[0]['manifest'] = {
        type: 'loopship/manifest',
        spec_version: SPEC_VERSION,
        name: recipe.name,
        version: recipe.version,
        arch: recipe.arch,
        build: { recipe_digest: loaded.digest, suite: recipe.base.suite, packages, built_at: builtAt.toISOString(), source_date_epoch: epoch, builder: await builderVersion() },
        image: { fs: 'ext4', uuid },
        boot: { type: recipe.boot.type, cmdline, ready_marker: recipe.boot.ready_marker },
        xen: { memory: recipe.xen.memory, vcpus: recipe.xen.vcpus, network: { ...(recipe.xen.network.bridge ? { bridge: recipe.xen.network.bridge } : {}), nics: recipe.xen.network.nics } },
        settings: recipe.settings,
      };
      const pkgOut = out.kind === 'tar' ? { tarPath: resolve(out.tarPath) } : { repoDir: resolve(out.repoDir) };
      const created = await stage('package', () =>
        createPackage({
          manifest,
          imagePath,
          kernelPath: boot.kernel,
          initrdPath: boot.initrd,
          publisherKey: out.publisherKey,
          out: pkgOut,
          zstdLevel: opts.zstdLevel,
          onProgress: (d, t) => rep.stageProgress?.('package', d, t),
        }),
        (c) => `${c.stats.chunks} chunks, ${c.stats.newChunks} new, ${(c.stats.compressed / 2 ** 20).toFixed(1)} MiB compressed`,
      );
      // the image is chunked: its memory goes back to the host before the publish stage
      if (imageScratch) await rm(imageScratch, { recursive: true, force: true });
      result.manifest = created.manifest;
      result.manifestSha256 = sha256Hex(created.manifestBytes);
      result.stats = created.stats;
      if (out.kind === 'tar') result.tarPath = pkgOut.tarPath as string;
      if (out.kind === 'repo') {
        const writer = new RepositoryWriter(resolve(out.repoDir), { indexKeys: out.indexKeys, now });
        result.published = await stage('publish', () => writer.addManifest(created.manifestBytes, created.signature, { channel: out.channel }), (p) => `index version ${p.indexVersion}`);
      }
    }
    if (!keepWork) {
      result.workDir = null;
      result.image.path = null;
      result.kernel.path = null;
      result.initrd.path = null;
    }
    await rootRemoval;
    result.wallSeconds = (performance.now() - t0) / 1000;
    return result;
  } catch (err) {
    keepWork = !!opts.keepWork;
    throw err;
  } finally {
    try {
      await rootRemoval?.catch(() => undefined); // never two deletions of one tree at once
      process.off('exit', dropImageScratch);
      if (imageScratch) await rm(imageScratch, { recursive: true, force: true });
      if (!keepWork) await removeTree(work, exec);
      else await unmountAll(work, exec);
    } finally {
      unguard();
    }
  }
}

/** Programs the build runs on the host (everything else runs inside the chroot). */
export const REQUIRED_TOOLS = ['debootstrap', 'chroot', 'mount', 'umount', 'flock', 'tar', 'zstd', 'mkfs.ext4', 'debugfs', 'dumpe2fs', 'dpkg-query'];

/** Fails before any work when a host program is missing, naming all of them and the package to install. */
export async function preflight(env: NodeJS.ProcessEnv = process.env, tools = REQUIRED_TOOLS): Promise<void> {
  const dirs = (env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').filter(Boolean);
  const missing: string[] = [];
  for (const tool of tools) {
    let found = false;
    for (const d of dirs) {
      if (await access(join(d, tool), constants.X_OK).then(() => true, () => false)) {
        found = true;
        break;
      }
    }
    if (!found) missing.push(tool);
  }
  if (missing.length) {
    const pkgs: Record<string, string> = { debootstrap: 'debootstrap', 'mkfs.ext4': 'e2fsprogs', debugfs: 'e2fsprogs', dumpe2fs: 'e2fsprogs', flock: 'util-linux', zstd: 'zstd', tar: 'tar', 'dpkg-query': 'dpkg' };
    const hint = [...new Set(missing.map((m) => pkgs[m]).filter(Boolean))];
    throw new LoopshipError('EXEC_FAILED', `missing on this build host: ${missing.join(', ')}${hint.length ? ` (apt-get install ${hint.join(' ')})` : ''}`, { where: 'stage preflight' });
  }
}

/** Deletes a scratch tree, but never while anything is mounted below it. */
async function removeTree(dir: string, exec: Exec): Promise<void> {
  await unmountAll(dir, exec);
  const left = await mountsUnder(dir);
  if (left.length) throw new LoopshipError('IO', `refusing to delete ${dir}: still mounted: ${left.join(', ')}`);
  // rm(1), not fs.rm: Node deletes a tree as one thread-pool job per file, and the
  // package stage's reads queued behind thousands of them (warm package stage ~1 s slower
  // while the root was being deleted)
  await exec('rm', ['-rf', '--one-file-system', '--', dir], { stage: 'cleanup (scratch tree)' });
}

async function assertRepository(dir: string): Promise<void> {
  const ok = await stat(join(dir, 'root.json')).then((s) => s.isFile(), () => false);
  if (!ok) throw new LoopshipError('USAGE', 'not a loopship repository (no root.json); create one first', { where: dir });
}
