// Builder benchmark (figures, not pass/fail): builds recipes/tiny cold (empty bootstrap
// cache), warm (same recipe again), and warm after a one-package change, all into one
// scratch repository, and prints stage times, image-making throughput and how much of
// each build was new in the repository (the delta a host would fetch).
//
//   node --import tsx bench/build.ts [--keep] [--zstd-level N] [--cache-dir DIR]
//
// Needs root, debootstrap and network access to the build host's Debian mirror.
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Keystore, buildRoot, signRoot } from '../keys/index.js';
import { RepositoryWriter } from '../format/index.js';
import { build, type BuildResult } from '../builder/index.js';

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

async function run(label: string, recipe: string, version?: string): Promise<BuildResult & { label: string }> {
  let path = recipe;
  if (version) {
    path = join(dir, `${label}-recipe`);
    await cp(recipe, path, { recursive: true });
    const y = await readFile(join(path, 'recipe.yaml'), 'utf8');
    await writeFile(join(path, 'recipe.yaml'), y.replace(/^version: .*$/m, `version: ${version}`));
  }
  process.stderr.write(`-- ${label}\n`);
  const r = await build({
    recipe: path,
    output: { kind: 'repo', repoDir, publisherKey, indexKeys },
    cacheDir,
    workDir: dir,
    zstdLevel,
    reporter: {
      stageStart: () => undefined,
      stageEnd: (s, sec, note) => process.stderr.write(`   ${s.padEnd(10)} ${sec.toFixed(1).padStart(6)} s  ${note ?? ''}\n`),
    },
  });
  return { ...r, label };
}

try {
  const cold = await run('cold', TINY);
  const warm = await run('warm (same recipe, new version)', TINY, '1.0.1');
  const plus = await run('warm + htop', plusOne);
  const rows = [cold, warm, plus];
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  const stageNames = ['bootstrap', 'customize', 'cleanup', 'image', 'package', 'publish'] as const;
  const sec = (r: BuildResult, s: string) => r.stages.find((x) => x.stage === s)?.seconds ?? 0;
  console.log(`\nloopship build benchmark: recipes/tiny, zstd level ${zstdLevel ?? 'default'}, ${new Date().toISOString()}`);
  console.log(['build'.padEnd(34), ...stageNames.map((s) => s.padStart(9)), 'wall'.padStart(8)].join(' '));
  for (const r of rows) console.log([r.label.padEnd(34), ...stageNames.map((s) => sec(r, s).toFixed(1).padStart(9)), r.wallSeconds.toFixed(1).padStart(8)].join(' '));
  console.log('');
  for (const r of rows) {
    const st = r.stats!;
    const makeSec = sec(r, 'image') + sec(r, 'package');
    console.log(
      `${r.label.padEnd(34)} image ${mib(r.image.size)} MiB apparent, ${mib(r.image.fsBytes)} MiB content; ${st.chunks} chunks, ${st.newChunks} new; ` +
        `${mib(st.compressed)} MiB compressed, ${mib(st.newCompressed)} MiB new (${((100 * st.newCompressed) / st.compressed).toFixed(1)}%); ` +
        `image+package ${(r.image.size / 2 ** 20 / makeSec).toFixed(0)} MB/s apparent`,
    );
  }
  console.log(`\nwarm rebuild after a package-list change: ${((100 * plus.wallSeconds) / cold.wallSeconds).toFixed(0)}% of the cold build (target <= 30%)`);
  console.log(`same recipe rebuilt: ${warm.stats!.newChunks} new chunks (${mib(warm.stats!.newCompressed)} MiB); one package more: ${mib(plus.stats!.newCompressed)} MiB new of ${mib(plus.stats!.compressed)} MiB compressed`);
} finally {
  if (!args.keep) await rm(dir, { recursive: true, force: true });
  else console.log(`kept ${dir}`);
}
