// Builder benchmark (figures, not pass/fail): builds recipes/tiny cold (empty bootstrap
// cache), warm (same recipe again), and warm after a one-package change, all into one
// scratch repository, and prints stage times, image-making throughput and how much of
// each build was new in the repository (the delta a host would fetch).
//
//   node --import tsx bench/build.ts [--keep] [--zstd-level N] [--cache-dir DIR]
//
// Needs root, debootstrap and network access to the build host's Debian mirror.
import { readFileSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Keystore, buildRoot, signRoot } from '../keys/index.js';
import { RepositoryWriter } from '../format/index.js';
import { build, type BuildResult } from '../builder/index.js';
import { report } from './report.js';

const { values: args } = parseArgs({ options: { keep: { type: 'boolean' }, 'zstd-level': { type: 'string' }, 'cache-dir': { type: 'string' } } });
const zstdLevel = args['zstd-level'] ? Number(args['zstd-level']) : undefined;
const TINY = join(import.meta.dirname, '../recipes/tiny');
const dir = await mkdtemp(join(tmpdir(), 'loopship-bench-'));
const cacheDir = args['cache-dir'] ?? join(dir, 'cache');

const keys = await Keystore.init(join(dir, 'keys'));
const signed = await signRoot(await buildRoot(keys, 1), await keys.signingKeys('root'));
const repoDir = join(dir, 'repo');
await RepositoryWriter.init(repoDir, signed, { indexKeys: await keys.signingKeys('index') });
const publisherKey = await keys.privateKey(keys.find('publisher'));
const indexKeys = await keys.signingKeys('index');

// the one-package variant: tiny + htop, as a new version
const plusOne = join(dir, 'tiny-plus-htop');
await cp(TINY, plusOne, { recursive: true });
const yaml = await readFile(join(plusOne, 'recipe.yaml'), 'utf8');
await writeFile(join(plusOne, 'recipe.yaml'), yaml.replace('version: 1.0.0', 'version: 1.0.2').replace('  - jq ', '  - htop\n  - jq '));

// CPU seconds of this process (its threads) and of every program it ran and waited for
// (apt, dpkg, mkfs...: children's times reach their parents when they are reaped). The
// machine is shared: wall times depend on the load, CPU times much less.
function cpuSeconds(): number {
  const f = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
}

async function run(label: string, recipe: string, version?: string): Promise<BuildResult & { label: string; cpu: Record<string, number>; load: number }> {
  let path = recipe;
  if (version) {
    path = join(dir, `${label}-recipe`);
    await cp(recipe, path, { recursive: true });
    const y = await readFile(join(path, 'recipe.yaml'), 'utf8');
    await writeFile(join(path, 'recipe.yaml'), y.replace(/^version: .*$/m, `version: ${version}`));
  }
  process.stderr.write(`-- ${label}\n`);
  const cpu: Record<string, number> = {};
  let cpuAt = 0;
  let stepAt = 0;
  let stepName = '';
  const load = loadavg()[0];
  // a stage's steps (apt-get update, install, initramfs...) with the time each took (the
  // slower ones: debootstrap's output lines are steps too)
  const endStep = () => {
    if (stepName && performance.now() - stepAt >= 300) process.stderr.write(`      ${stepName.slice(0, 60).padEnd(60)} ${((performance.now() - stepAt) / 1000).toFixed(1).padStart(6)} s\n`);
    stepName = '';
  };
  const r = await build({
    recipe: path,
    output: { kind: 'repo', repoDir, publisherKey, indexKeys },
    cacheDir,
    workDir: dir,
    zstdLevel,
    reporter: {
      stageStart: () => {
        cpuAt = cpuSeconds();
      },
      stageStep: (_s, detail) => {
        endStep();
        stepName = detail;
        stepAt = performance.now();
      },
      stageEnd: (s, sec, note) => {
        endStep();
        cpu[s] = cpuSeconds() - cpuAt;
        process.stderr.write(`   ${s.padEnd(10)} ${sec.toFixed(1).padStart(6)} s  ${cpu[s].toFixed(1).padStart(6)} s CPU  ${note ?? ''}\n`);
      },
    },
  });
  return { ...r, label, cpu, load };
}

try {
  const cold = await run('cold', TINY);
  const warm = await run('warm (same recipe, new version)', TINY, '1.0.1');
  const plus = await run('warm + htop', plusOne);
  const builds = [cold, warm, plus];
  const mib = (b: number) => b / 2 ** 20;
  const sec = (r: BuildResult, s: string) => r.stages.find((x) => x.stage === s)?.seconds ?? 0;
  const rows = builds.map((r) => {
    const st = r.stats!;
    const makeSec = sec(r, 'image') + sec(r, 'package');
    return {
      build: r.label,
      bootstrap_s: sec(r, 'bootstrap'),
      customize_s: sec(r, 'customize'),
      cleanup_s: sec(r, 'cleanup'),
      image_s: sec(r, 'image'),
      package_s: sec(r, 'package'),
      publish_s: sec(r, 'publish'),
      wall_s: r.wallSeconds,
      apparent_MiB: mib(r.image.size),
      compressed_MiB: mib(st.compressed),
      chunks: st.chunks,
      new_chunks: st.newChunks,
      new_MiB: mib(st.newCompressed),
      new_pct: (100 * st.newCompressed) / st.compressed,
      'image+package_MBps': mib(r.image.size) / makeSec,
      cpu_s: Object.values(r.cpu).reduce((a, b) => a + b, 0),
      'image+package_cpu_s': (r.cpu.image ?? 0) + (r.cpu.package ?? 0),
      load: r.load,
    };
  });
  await report('build', `loopship build: recipes/tiny cold, warm, +1 package (zstd level ${zstdLevel ?? 'default'}; load average ${loadavg()[0].toFixed(1)})`, rows, {
    warm_package_change_vs_cold_pct: (100 * plus.wallSeconds) / cold.wallSeconds,
    warm_package_change_vs_cold_cpu_pct: (100 * rows[2].cpu_s) / rows[0].cpu_s,
    same_recipe_new_MiB: mib(warm.stats!.newCompressed),
    one_package_new_pct: (100 * plus.stats!.newCompressed) / plus.stats!.compressed,
  });
  console.log(`\nwarm rebuild after a package-list change: ${((100 * plus.wallSeconds) / cold.wallSeconds).toFixed(0)}% of the cold build's wall time, ${((100 * rows[2].cpu_s) / rows[0].cpu_s).toFixed(0)}% of its CPU time (target <= 30%)`);
  console.log(`same recipe rebuilt: ${warm.stats!.newChunks} new chunks (${mib(warm.stats!.newCompressed).toFixed(1)} MiB); one package more: ${mib(plus.stats!.newCompressed).toFixed(1)} MiB new of ${mib(plus.stats!.compressed).toFixed(1)} MiB compressed (target < 10%)`);
} finally {
  if (!args.keep) await rm(dir, { recursive: true, force: true });
  else console.log(`kept ${dir}`);
}
