// Peer benchmark (figures, not pass/fail): loopship against casync and xen-tools, all in
// one run on the same machine and the same Debian mirror.
//
//   node --import tsx bench/peers.ts [--keep] [--casync-chunk-sizes 64K,16K] [--xen-size 2G]
//
// 1. loopship builds recipes/tiny cold (empty bootstrap and .deb cache, a scratch cache dir,
//    not /var/cache/loopship), warm (same recipe, new version), and warm + htop (a one-package
//    change), into one scratch repository, keeping the two ext4 images (tiny, tiny + htop).
// 2. Delta: what an update from tiny to tiny + htop costs. loopship: the compressed chunk
//    bytes the +htop build added to the repository and the new manifest (what an agent
//    fetches). casync: `casync
//    make` of the first image into a store, of the second into another; the second's chunks
//    missing from the first store are what a casync client fetches (plus the .caibx index).
//    Confirmed by `casync extract --seed=<first image>` of the second index over HTTP from
//    a local server that counts the bytes it sends, and by comparing the result.
// 3. Build: `xen-create-image` (xen-tools) for bookworm minbase with recipes/tiny's packages
//    and kernel (a role script runs apt-get install in the guest), into an ext4 image file
//    (no Xen needed: --dir, --noswap, --nopygrub, --nohosts, --dhcp, --force), cold (empty
//    --cachedir) then warm (the same --cachedir, now holding the debootstrap .debs: that is
//    xen-tools' cache; it does not keep the packages its roles install). Both builders start
//    with empty caches and reuse only what they cached themselves. Image sizes: each whole
//    image file through `zstd -19`, beside loopship's own form (zstd per chunk).
//
// Every row gives the load average when it was measured: the machine may be shared, and
// CPU seconds (this process and every program it waited for) depend on it less than wall
// time does.
//
// Needs root, debootstrap, network access to this host's Debian mirror (read from its apt
// sources) and the peers: apt-get install casync xen-tools
import { execa } from 'execa';
import { createReadStream, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile, chmod } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join, normalize, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { Keystore, buildRoot, signRoot } from '../keys/index.js';
import { RepositoryWriter } from '../format/index.js';
import { build, loadRecipe, resolveMirror, type BuildResult } from '../builder/index.js';
import { report, type Row } from './report.js';

const { values: args } = parseArgs({
  options: { keep: { type: 'boolean' }, 'casync-chunk-sizes': { type: 'string' }, 'xen-size': { type: 'string' } },
});
const CASYNC_SIZES = (args['casync-chunk-sizes'] ?? '64K,16K').split(',').filter(Boolean);
const XEN_SIZE = args['xen-size'] ?? '2G';
const TINY = join(import.meta.dirname, '../recipes/tiny');
const dir = await mkdtemp(join('/var/tmp', 'loopship-peers-'));
const cacheDir = join(dir, 'cache');
const mib = (b: number) => b / 2 ** 20;
const load = () => loadavg().map((l) => l.toFixed(1)).join(' ');
const say = (s: string) => process.stderr.write(`${s}\n`);

// CPU seconds of this process and of every program it ran and waited for (as bench/build.ts)
function cpuSeconds(): number {
  const f = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
}

/** Runs fn and returns its wall and CPU seconds and the load average it started at. */
async function timed<T>(fn: () => Promise<T>): Promise<{ r: T; wall: number; cpu: number; load: string }> {
  const l = load();
  const c = cpuSeconds();
  const t = performance.now();
  const r = await fn();
  return { r, wall: (performance.now() - t) / 1000, cpu: cpuSeconds() - c, load: l };
}

async function filesUnder(d: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const e of await readdir(d, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) {
      const p = join(e.parentPath, e.name);
      out.set(relative(d, p), (await stat(p)).size);
    }
  }
  return out;
}
const sum = (m: Iterable<number>) => [...m].reduce((a, b) => a + b, 0);

async function zstd19(file: string): Promise<number> {
  const out = `${file}.zst`;
  await execa('zstd', ['-19', '-T0', '-q', '-f', '-o', out, file]);
  const size = (await stat(out)).size;
  await rm(out);
  return size;
}

/** Static file server over `root` that counts what it sends (a casync HTTP store). */
async function countingServer(root: string): Promise<{ server: Server; port: number; sent: { requests: number; bytes: number; missing: number } }> {
  const sent = { requests: 0, bytes: 0, missing: 0 };
  const server = createServer((req, res) => {
    sent.requests++;
    const rel = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(/^\/+/, '');
    const file = join(root, rel);
    if (rel.startsWith('..')) return void res.writeHead(400).end();
    stat(file).then(
      (s) => {
        if (!s.isFile()) throw new Error('not a file');
        res.writeHead(200, { 'content-length': s.size });
        if (req.method === 'HEAD') return void res.end();
        sent.bytes += s.size;
        createReadStream(file).pipe(res);
      },
      () => {
        sent.missing++;
        res.writeHead(404).end();
      },
    );
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const addr = server.address();
  return { server, port: typeof addr === 'object' && addr ? addr.port : 0, sent };
}

/** Packages fully installed in an ext4 image (dpkg's status file alone lags: it has journal updates). */
async function packagesInImage(img: string): Promise<string[]> {
  const mnt = await mkdtemp(join(tmpdir(), 'loopship-peers-mnt-'));
  await execa('mount', ['-o', 'loop,ro', img, mnt]);
  try {
    const { stdout } = await execa('dpkg-query', [`--admindir=${join(mnt, 'var/lib/dpkg')}`, '-W', '-f', '${db:Status-Abbrev} ${Package}\n']);
    return stdout.split('\n').filter((l) => l.startsWith('ii ')).map((l) => l.split(/\s+/)[1]);
  } finally {
    await execa('umount', [mnt]);
    await rm(mnt, { recursive: true });
  }
}

// ---- 1. loopship builds -------------------------------------------------------------------
const keys = await Keystore.init(join(dir, 'keys'));
const signed = await signRoot(await buildRoot(keys, 1), await keys.signingKeys('root'));
const repoDir = join(dir, 'repo');
await RepositoryWriter.init(repoDir, signed, { indexKeys: await keys.signingKeys('index') });
const publisherKey = await keys.privateKey(keys.find('publisher'));
const indexKeys = await keys.signingKeys('index');

async function recipeVariant(label: string, edit: (y: string) => string): Promise<string> {
  const p = join(dir, `recipe-${label}`);
  await cp(TINY, p, { recursive: true });
  await writeFile(join(p, 'recipe.yaml'), edit(await readFile(join(p, 'recipe.yaml'), 'utf8')));
  return p;
}
const warmRecipe = await recipeVariant('warm', (y) => y.replace(/^version: .*$/m, 'version: 1.0.1'));
const plusRecipe = await recipeVariant('htop', (y) => y.replace(/^version: .*$/m, 'version: 1.0.2').replace('  - jq ', '  - htop\n  - jq '));

async function loopship(label: string, recipe: string, keepWork: boolean) {
  say(`-- loopship ${label} (load ${load()})`);
  const t = await timed(() => build({ recipe, output: { kind: 'repo', repoDir, publisherKey, indexKeys }, cacheDir, workDir: dir, keepWork }));
  const toImage = t.r.stages.filter((s) => ['recipe', 'bootstrap', 'customize', 'cleanup', 'image'].includes(s.stage)).reduce((a, s) => a + s.seconds, 0);
  say(`   ${t.wall.toFixed(0)} s wall, ${t.cpu.toFixed(0)} s CPU, ${toImage.toFixed(0)} s to the ext4 image`);
  return { ...t, toImage };
}

const rows: Row[] = [];
const figures: Record<string, unknown> = {};
try {
  const cold = await loopship('cold', TINY, true);
  const warm = await loopship('warm', warmRecipe, false);
  const plus = await loopship('warm + htop', plusRecipe, true);
  const img1 = cold.r.image.path!;
  const img2 = plus.r.image.path!;
  const lsFull = plus.r.stats!.compressed;
  // what a host fetches for the update: the new chunks and the new version's manifest (as
  // casync's row counts its index), plus its signature
  const manifestFile = join(repoDir, 'manifests', `${plus.r.manifestSha256}.json`);
  const lsManifest = (await stat(manifestFile)).size + (await stat(`${manifestFile}.asc`)).size;
  const lsNew = plus.r.stats!.newCompressed + lsManifest;

  // ---- 2. delta: loopship vs casync on the same two images --------------------------------
  rows.push({
    what: 'delta tiny -> tiny+htop',
    tool: 'loopship (zstd per chunk, + manifest)',
    full_MiB: mib(lsFull),
    new_MiB: mib(lsNew),
    new_pct: (100 * lsNew) / lsFull,
    new_chunks: plus.r.stats!.newChunks,
    wall_s: 0,
    cpu_s: 0,
    load: plus.load,
  });
  const casyncRows: Record<string, unknown>[] = [];
  for (const size of CASYNC_SIZES) {
    const s1 = join(dir, `casync-${size}-a`);
    const s2 = join(dir, `casync-${size}-b`);
    const idx1 = join(dir, `tiny-${size}.caibx`);
    const idx2 = join(dir, `tiny-htop-${size}.caibx`);
    say(`-- casync make, --chunk-size=${size} (load ${load()})`);
    const m1 = await timed(() => execa('casync', ['make', `--store=${s1}`, `--chunk-size=${size}`, idx1, img1]));
    const m2 = await timed(() => execa('casync', ['make', `--store=${s2}`, `--chunk-size=${size}`, idx2, img2]));
    const a = await filesUnder(s1);
    const b = await filesUnder(s2);
    const fresh = [...b].filter(([p]) => !a.has(p));
    const newBytes = sum(fresh.map(([, n]) => n));
    const full = sum(b.values());
    const index = (await stat(idx2)).size;
    const row = {
      what: 'delta tiny -> tiny+htop',
      tool: `casync --chunk-size=${size} (zstd)`,
      full_MiB: mib(full),
      new_MiB: mib(newBytes + index),
      new_pct: (100 * (newBytes + index)) / full,
      new_chunks: fresh.length,
      wall_s: m2.wall,
      cpu_s: m2.cpu,
      load: m2.load,
    };
    rows.push(row);
    const entry: Record<string, unknown> = { chunk_size: size, chunks_a: a.size, chunks_b: b.size, store_a_bytes: sum(a.values()), store_b_bytes: full, new_chunk_bytes: newBytes, index_bytes: index, make_a: { wall_s: m1.wall, cpu_s: m1.cpu, load: m1.load }, make_b: { wall_s: m2.wall, cpu_s: m2.cpu, load: m2.load } };
    if (size === CASYNC_SIZES[0]) {
      // what a casync client really fetches: extract over HTTP with the old image as seed
      const srv = await countingServer(s2);
      const out = join(dir, `casync-extract-${size}.img`);
      say(`-- casync extract --seed (load ${load()})`);
      try {
        const x = await timed(() => execa('casync', ['extract', `--store=http://127.0.0.1:${srv.port}/`, `--seed=${img1}`, '--seed-output=no', idx2, out]));
        const same = (await execa('cmp', [out, img2], { reject: false })).exitCode === 0;
        entry.extract = { ...srv.sent, identical: same, wall_s: x.wall, cpu_s: x.cpu, load: x.load };
        say(`   fetched ${srv.sent.requests} requests, ${mib(srv.sent.bytes).toFixed(2)} MiB; result ${same ? 'identical to' : 'DIFFERS from'} the +htop image`);
      } finally {
        srv.server.close();
        await rm(out, { force: true });
      }
    }
    casyncRows.push(entry);
    await rm(s1, { recursive: true, force: true });
    await rm(s2, { recursive: true, force: true });
  }
  figures.casync = casyncRows;
  figures.loopship_delta = { full_bytes: lsFull, new_bytes: lsNew, new_chunk_bytes: plus.r.stats!.newCompressed, manifest_bytes: lsManifest, new_chunks: plus.r.stats!.newChunks, chunks: plus.r.stats!.chunks };

  // ---- 3. build: loopship vs xen-create-image -------------------------------------------
  say(`-- zstd -19 of loopship's image (load ${load()})`);
  const lsZstd = await timed(() => zstd19(img1));
  const lsPackages = cold.r.packages.length;
  for (const [label, t] of [['cold', cold], ['warm', warm]] as const) {
    rows.push({
      what: `build tiny ${label}`,
      tool: 'loopship',
      to_image_s: t.toImage,
      wall_s: t.wall,
      cpu_s: t.cpu,
      apparent_MiB: mib(t.r.image.size),
      zstd19_MiB: label === 'cold' ? mib(lsZstd.r) : '',
      shipped_MiB: mib(t.r.stats!.compressed),
      packages: t.r.packages.length,
      load: t.load,
    });
  }
  await rm(plus.r.workDir!, { recursive: true, force: true });

  const { recipe } = await loadRecipe(TINY);
  const mirror = await resolveMirror({ suite: recipe.base.suite });
  const roleDir = join(dir, 'xen-roles');
  await mkdir(roleDir);
  // recipes/tiny's package list and kernel, installed the way xen-tools' own roles do. For the
  // same package set: xen-tools' bookworm entry forces pygrub, whose hooks install the generic
  // kernel (linux-image-amd64, ~4x the cloud one) and grub-legacy (whose kernel hook fails in
  // a chroot, so no other kernel installs after it): purge both first (grub-legacy alone, so
  // its hook is gone before a kernel is removed), install the recipe's packages and kernel,
  // clean apt's cache (xen-tools' own 99-clean-image hook runs before roles), and fstrim the
  // loop-mounted image so the freed blocks read as zeros like the rest of its sparse file.
  const wanted = [...recipe.packages, recipe.boot.kernel];
  await writeFile(
    join(roleDir, 'loopship-tiny'),
    [
      '#!/bin/sh',
      'prefix=$1',
      '. /usr/share/xen-tools/common.sh',
      'export DEBIAN_FRONTEND=noninteractive',
      'chroot ${prefix} apt-get -y purge grub-legacy',
      `generic=$(chroot \${prefix} dpkg-query -W -f '\${db:Status-Abbrev} \${Package}\\n' 'linux-image-*' | awk '$1 == "ii" && !/cloud/ { print $2 }')`,
      'chroot ${prefix} apt-get -y purge --autoremove $generic',
      `installDebianPackage \${prefix} ${wanted.join(' ')}`,
      'chroot ${prefix} apt-get clean',
      'fstrim ${prefix}',
      '',
    ].join('\n'),
  );
  await chmod(join(roleDir, 'loopship-tiny'), 0o755);
  const xenDir = join(dir, 'xen');
  const debCache = join(dir, 'xen-debs');
  await mkdir(join(xenDir, 'cfg'), { recursive: true });
  await mkdir(debCache);
  const hosts: string[] = [];
  const xen = async (label: string) => {
    const host = `loopship-peer-${label}`;
    hosts.push(host);
    say(`-- xen-create-image ${label} (load ${load()})`);
    const t = await timed(() =>
      execa(
        'xen-create-image',
        [
          `--hostname=${host}`, `--dir=${xenDir}`, `--output=${join(xenDir, 'cfg')}`, `--dist=${recipe.base.suite}`, `--arch=${recipe.arch}`, `--mirror=${mirror}`,
          '--install-method=debootstrap', `--debootstrap-cmd=/usr/sbin/debootstrap --variant=${recipe.base.variant}`, `--cachedir=${debCache}`,
          `--size=${XEN_SIZE}`, '--noswap', '--fs=ext4', '--nohosts', '--nopygrub', '--dhcp', '--genpass=0', '--password=loopship', `--roledir=${roleDir}`, '--role=loopship-tiny', '--force',
        ],
        { all: true, reject: false },
      ),
    );
    if (t.r.exitCode !== 0 || /Script .* failed|Role script failed/i.test(t.r.all ?? '')) {
      const tail = (t.r.all ?? '').split('\n').slice(-20).join('\n').replace(/https?:\/\/[^\s/]+/g, '<mirror>');
      throw new Error(`xen-create-image ${label} failed (exit ${t.r.exitCode}):\n${tail}`);
    }
    const img = join(xenDir, 'domains', host, 'disk.img');
    say(`   ${t.wall.toFixed(0)} s wall, ${t.cpu.toFixed(0)} s CPU`);
    // the role's apt-get output goes through a pipe: check its work in the image itself
    const installed = await packagesInImage(img);
    const missing = wanted.filter((p) => !installed.includes(p));
    const generic = installed.filter((p) => /^linux-image-/.test(p) && !/cloud/.test(p));
    if (missing.length || generic.length) throw new Error(`xen-create-image ${label}: image lacks ${missing.join(' ') || '-'}, still has ${generic.join(' ') || '-'}`);
    return { ...t, img, packages: installed.length, apparent: (await stat(img)).size };
  };
  let xcold: Awaited<ReturnType<typeof xen>> | undefined;
  let xwarm: typeof xcold;
  let xZstd: Awaited<ReturnType<typeof timed<number>>> | undefined;
  try {
    xcold = await xen('cold');
    xwarm = await xen('warm');
    const img = xwarm.img;
    say(`-- zstd -19 of xen-create-image's image (load ${load()})`);
    xZstd = await timed(() => zstd19(img));
  } catch (err) {
    // keep the figures measured so far
    figures.xen_error = (err as Error).message;
    say(String((err as Error).message));
  }
  if (xcold && xwarm && xZstd) for (const [label, t] of [['cold', xcold], ['warm', xwarm]] as const) {
    rows.push({
      what: `build tiny ${label}`,
      tool: 'xen-create-image',
      to_image_s: t.wall,
      wall_s: t.wall,
      cpu_s: t.cpu,
      apparent_MiB: mib(t.apparent),
      zstd19_MiB: label === 'warm' ? mib(xZstd.r) : '',
      shipped_MiB: '',
      packages: t.packages,
      load: t.load,
    });
  }
  for (const h of hosts) await rm(`/var/log/xen-tools/${h}.log`, { force: true });
  if (xcold && xwarm && xZstd) figures.build = {
    loopship: { cold_s: cold.wall, warm_s: warm.wall, cold_to_image_s: cold.toImage, warm_to_image_s: warm.toImage, zstd19_bytes: lsZstd.r, zstd19_load: lsZstd.load, packages: lsPackages },
    xen_tools: { cold_s: xcold.wall, warm_s: xwarm.wall, zstd19_bytes: xZstd.r, zstd19_load: xZstd.load, packages: xwarm.packages, size: XEN_SIZE },
    warm_ratio: warm.toImage / xwarm.wall,
    image_ratio: lsZstd.r / xZstd.r,
  };
  // the two kinds of rows have different columns: one table each
  const delta = rows.filter((r) => String(r.what).startsWith('delta'));
  const builds = rows.filter((r) => String(r.what).startsWith('build'));
  await report('peers', `loopship vs casync (delta) and xen-create-image (build): load average now ${load()}`, delta, { builds, ...figures });
  process.stdout.write(`\n${(await import('./report.js')).table(builds)}\n`);
  const c0 = delta[1];
  console.log(`\ndelta tiny -> +htop: loopship ${mib(lsNew).toFixed(1)} MiB (${((100 * lsNew) / lsFull).toFixed(1)}%), casync ${c0 ? `${Number(c0.new_MiB).toFixed(1)} MiB (${Number(c0.new_pct).toFixed(1)}%)` : '-'}`);
  if (xwarm && xZstd) console.log(`build warm to image: loopship ${warm.toImage.toFixed(0)} s, xen-create-image ${xwarm.wall.toFixed(0)} s; image zstd -19: loopship ${mib(lsZstd.r).toFixed(0)} MiB, xen-tools ${mib(xZstd.r).toFixed(0)} MiB`);
  if (figures.xen_error) process.exitCode = 1;
} finally {
  if (!args.keep) await rm(dir, { recursive: true, force: true });
  else console.log(`kept ${dir}`);
}
