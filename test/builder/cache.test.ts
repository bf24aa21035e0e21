import test from 'ava';
import { mkdtemp, mkdir, writeFile, rm, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BootstrapCache, cacheKey, type BootstrapKey, type Exec } from '../../builder/index.js';
import { bootstrapRoot, baseRoot, kernelLayerKey } from '../../builder/rootfs.js';
import { defaultExec } from '../../builder/exec.js';
import { ExecError } from '../../format/index.js';

const KEY: BootstrapKey = { suite: 'bookworm', mirror: 'http://mirror.example/debian', variant: 'minbase', components: ['main'], snapshot: null, arch: 'amd64' };

test('the cache key changes with each input that determines the bootstrap, and only with those', (t) => {
  const k = cacheKey(KEY);
  t.is(cacheKey({ ...KEY }), k);
  t.is(cacheKey({ ...KEY, mirror: 'http://mirror.example/debian/' }), k, 'trailing slash is the same mirror');
  t.is(cacheKey({ ...KEY, components: ['contrib', 'main'] }), cacheKey({ ...KEY, components: ['main', 'contrib'] }), 'component order does not matter');
  const variants = [
    { ...KEY, suite: 'trixie' },
    { ...KEY, mirror: 'http://other.example/debian' },
    { ...KEY, variant: 'buildd' },
    { ...KEY, components: ['main', 'contrib'] },
    { ...KEY, snapshot: '20250520T000000Z' },
    { ...KEY, arch: 'arm64' },
  ];
  const keys = new Set([k, ...variants.map(cacheKey)]);
  t.is(keys.size, variants.length + 1);
});

/** A fake outside world: records every program run; debootstrap and tar do just enough. */
function fakeExec(opts: { failDebootstrap?: boolean; failTarCreate?: boolean; failTarExtract?: boolean } = {}) {
  const calls: string[] = [];
  const exec: Exec = async (file, args, o) => {
    calls.push(file);
    if (file === 'debootstrap') {
      if (opts.failDebootstrap) throw new ExecError('debootstrap: exited with status 1\n  E: Couldn\'t find these debs: nosuchpkg', { where: `stage ${o?.stage}` });
      const root = args.at(-2)!;
      await mkdir(join(root, 'etc'), { recursive: true });
      await writeFile(join(root, 'etc/debian_version'), '12\n');
      await mkdir(join(root, 'var/cache/apt/archives/partial'), { recursive: true });
      await writeFile(join(root, 'var/cache/apt/archives/base-files_12.4_amd64.deb'), 'deb');
      return { stdout: '' };
    }
    if (file === 'tar' && args.includes('-c')) {
      const out = args[args.indexOf('-f') + 1];
      await writeFile(out, 'partial');
      if (opts.failTarCreate) throw new ExecError('tar: No space left on device', { where: `stage ${o?.stage}` });
      return { stdout: '' };
    }
    if (file === 'tar' && args.includes('-x')) {
      const root = args[args.indexOf('-C') + 1];
      if (opts.failTarExtract) {
        await writeFile(join(root, 'half-extracted'), '');
        throw new ExecError('tar: Unexpected EOF in archive', { where: `stage ${o?.stage}` });
      }
      await writeFile(join(root, 'restored'), '');
      return { stdout: '' };
    }
    return defaultExec(file, args, o);
  };
  return { exec, calls };
}

async function tmp(t: import('ava').ExecutionContext): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'loopship-cache-'));
  t.teardown(() => rm(d, { recursive: true, force: true }));
  return d;
}

test('first build debootstraps and stores; the next restores without debootstrap; --no-cache ignores the entry', async (t) => {
  const dir = await tmp(t);
  const { exec, calls } = fakeExec();
  const cache = new BootstrapCache(join(dir, 'cache'), exec);
  t.is(await bootstrapRoot({ root: join(dir, 'r1'), key: KEY, cache, exec, useCache: true }), 'debootstrap');
  t.deepEqual(calls, ['debootstrap', 'tar']);
  t.true(await cache.has(KEY));
  t.deepEqual(await readdir(join(dir, 'r1/var/cache/apt/archives')), ['partial'], "debootstrap's .debs are not cached");
  t.deepEqual(await readdir(join(dir, 'cache/debootstrap')).then((n) => n.filter((x) => x.includes('.tmp-'))), [], 'no temporary left');
  calls.length = 0;
  t.is(await bootstrapRoot({ root: join(dir, 'r2'), key: KEY, cache, exec, useCache: true }), 'cache');
  t.deepEqual(calls, ['tar']);
  t.deepEqual(await readdir(join(dir, 'r2')), ['restored']);
  calls.length = 0;
  t.is(await bootstrapRoot({ root: join(dir, 'r3'), key: KEY, cache: null, exec, useCache: false }), 'debootstrap');
  t.deepEqual(calls, ['debootstrap'], '--no-cache: no restore, no store');
  calls.length = 0;
  t.is(await bootstrapRoot({ root: join(dir, 'r4'), key: { ...KEY, suite: 'trixie' }, cache, exec, useCache: true }), 'debootstrap', 'another key misses');
});

test('a failed debootstrap stores nothing; a failed store leaves no entry and no temporary', async (t) => {
  const dir = await tmp(t);
  const bad = fakeExec({ failDebootstrap: true });
  const cache = new BootstrapCache(join(dir, 'cache'), bad.exec);
  const err = await t.throwsAsync(bootstrapRoot({ root: join(dir, 'r1'), key: KEY, cache, exec: bad.exec, useCache: true }), { instanceOf: ExecError });
  t.regex(err!.message, /stage bootstrap.*nosuchpkg/s);
  t.false(await cache.has(KEY));

  const full = fakeExec({ failTarCreate: true });
  const cache2 = new BootstrapCache(join(dir, 'cache2'), full.exec);
  const err2 = await t.throwsAsync(bootstrapRoot({ root: join(dir, 'r2'), key: KEY, cache: cache2, exec: full.exec, useCache: true }), { instanceOf: ExecError });
  t.regex(err2!.message, /No space left/);
  t.false(await cache2.has(KEY), 'the half-written tarball is not an entry');
  t.deepEqual(await readdir(join(dir, 'cache2/debootstrap')), [], 'and the temporary is gone');
});

test('store and restore keep ownership, modes, symlinks and xattr-free trees (real tar + zstd)', async (t) => {
  const dir = await tmp(t);
  const root = join(dir, 'root');
  await mkdir(join(root, 'etc'), { recursive: true });
  await writeFile(join(root, 'etc/shadow'), 'root:*:1::::::\n', { mode: 0o640 });
  const cache = new BootstrapCache(join(dir, 'cache'), defaultExec);
  await cache.store(KEY, root);
  const info = (await cache.info(KEY)) as { key: string };
  t.is(info.key, cacheKey(KEY));
  await cache.restore(KEY, join(dir, 'back'));
  t.is(await readFile(join(dir, 'back/etc/shadow'), 'utf8'), 'root:*:1::::::\n');
  const { stat } = await import('node:fs/promises');
  t.is((await stat(join(dir, 'back/etc/shadow'))).mode & 0o777, 0o640);
});

test('preflight names every missing host program and the package to install', async (t) => {
  const { preflight } = await import('../../builder/index.js');
  await t.notThrowsAsync(preflight({ PATH: process.env.PATH }, ['sh', 'tar']));
  const err = await t.throwsAsync(preflight({ PATH: '/nonexistent' }, ['debootstrap', 'mkfs.ext4', 'tar']));
  t.regex(err!.message, /^stage preflight: missing on this build host: debootstrap, mkfs\.ext4, tar \(apt-get install debootstrap e2fsprogs tar\)/);
});

test('a damaged cache entry is dropped and replaced by a fresh bootstrap', async (t) => {
  const dir = await tmp(t);
  const good = fakeExec();
  const cache = new BootstrapCache(join(dir, 'cache'), good.exec);
  await bootstrapRoot({ root: join(dir, 'r1'), key: KEY, cache, exec: good.exec, useCache: true });
  const bad = fakeExec({ failTarExtract: true });
  const cacheBad = new BootstrapCache(join(dir, 'cache'), bad.exec);
  const lines: string[] = [];
  t.is(await bootstrapRoot({ root: join(dir, 'r2'), key: KEY, cache: cacheBad, exec: bad.exec, useCache: true, onLine: (l) => lines.push(l) }), 'debootstrap');
  t.deepEqual(bad.calls, ['tar', 'debootstrap', 'tar']);
  t.regex(lines.join('\n'), /cache entry unusable, bootstrapping afresh: stage bootstrap \(cache restore\): tar: Unexpected EOF/);
  t.deepEqual((await readdir(join(dir, 'r2'))).sort(), ['etc', 'var'], 'nothing of the half-extracted entry left');
  t.true(await cacheBad.has(KEY), 'a good entry stored again');
});

/** fakeExec plus a fake chroot: mounts, apt and flock are recorded, never run. */
function fakeChrootExec(opts: { failInstall?: boolean } = {}) {
  const base = fakeExec();
  const calls: string[] = [];
  const exec: Exec = async (file, args, o) => {
    if (file === 'debootstrap' || (file === 'tar' && args.includes('-x'))) {
      const root = file === 'tar' ? args[args.indexOf('-C') + 1] : args.at(-2)!;
      await mkdir(join(root, 'usr/sbin'), { recursive: true });
      await mkdir(join(root, 'var/cache/apt/archives'), { recursive: true });
      await mkdir(join(root, 'etc'), { recursive: true });
    }
    if (file === 'mount' || file === 'umount') return { stdout: '' };
    if (file === 'chroot' && !args.includes('apt-get')) return { stdout: '' }; // the eatmydata probe (/bin/true), when the host has the library
    if (file === 'chroot' || file === 'flock') {
      const apt = args.slice(args.indexOf('apt-get'));
      calls.push(`${file === 'flock' ? 'flock ' : ''}apt-get ${apt.includes('update') ? 'update' : `install ${apt.filter((a) => /^linux-|^[a-z]+$/.test(a) && a !== 'install' && a !== 'apt-get').join(' ')}`}`);
      if (opts.failInstall && apt.includes('install')) throw new ExecError('apt-get: E: Unable to locate package linux-image-nosuch', { where: `stage ${o?.stage}` });
      return { stdout: '' };
    }
    calls.push(file);
    return base.exec(file, args, o);
  };
  return { exec, calls };
}

test('the kernel layer: installed on the bootstrap and cached under its own key; the next build restores it without apt', async (t) => {
  const dir = await tmp(t);
  const { exec, calls } = fakeChrootExec();
  const cache = new BootstrapCache(join(dir, 'cache'), exec);
  const recipe = { boot: { kernel: 'linux-image-cloud-amd64' }, install_recommends: false } as Parameters<typeof kernelLayerKey>[1];
  const debCache = join(dir, 'debs');
  const r1 = join(dir, 'r1');
  t.is(await baseRoot({ root: r1, key: KEY, recipe: recipe as never, cache, exec, useCache: true, debCache }), 'debootstrap');
  t.deepEqual(calls, ['debootstrap', 'tar', 'apt-get update', 'flock apt-get install linux-image-cloud-amd64', 'tar'], 'bootstrap stored, kernel installed, layer stored');
  t.true(await cache.has(KEY));
  t.true(await cache.has(kernelLayerKey(KEY, recipe)));
  t.regex(cache.entryPath(kernelLayerKey(KEY, recipe)), /bookworm-amd64-minbase-layer-[0-9a-f]{16}\.tar\.zst$/);
  t.deepEqual(await readdir(join(r1, 'usr/sbin')), [], 'policy-rc.d removed after the chroot');

  calls.length = 0;
  t.is(await baseRoot({ root: join(dir, 'r2'), key: KEY, recipe: recipe as never, cache, exec, useCache: true, debCache }), 'cache');
  t.deepEqual(calls, ['tar'], 'one restore, no apt');

  // another kernel (or recommends) is another layer on the same cached bootstrap
  calls.length = 0;
  const other = { ...recipe, boot: { kernel: 'linux-image-amd64' } } as typeof recipe;
  t.not(cacheKey(kernelLayerKey(KEY, other)), cacheKey(kernelLayerKey(KEY, recipe)));
  t.not(cacheKey(kernelLayerKey(KEY, { ...recipe, install_recommends: true })), cacheKey(kernelLayerKey(KEY, recipe)));
  t.is(cacheKey(KEY), cacheKey({ ...KEY, layer: undefined }), 'plain bootstrap keys are unchanged');
  t.is(await baseRoot({ root: join(dir, 'r3'), key: KEY, recipe: other as never, cache, exec, useCache: true, debCache }), 'cache');
  t.deepEqual(calls, ['tar', 'apt-get update', 'flock apt-get install linux-image-amd64', 'tar']);
});

test('a failed kernel install stores no layer (the bootstrap entry stays good)', async (t) => {
  const dir = await tmp(t);
  const { exec } = fakeChrootExec({ failInstall: true });
  const cache = new BootstrapCache(join(dir, 'cache'), exec);
  const recipe = { boot: { kernel: 'linux-image-nosuch' }, install_recommends: false } as Parameters<typeof kernelLayerKey>[1];
  const err = await t.throwsAsync(baseRoot({ root: join(dir, 'r1'), key: KEY, recipe: recipe as never, cache, exec, useCache: true }), { instanceOf: ExecError });
  t.regex(err!.message, /stage packages.*Unable to locate package linux-image-nosuch/s);
  t.false(await cache.has(kernelLayerKey(KEY, recipe)));
  t.true(await cache.has(KEY));
});
