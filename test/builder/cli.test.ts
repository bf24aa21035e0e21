import test from 'ava';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

const ROOT = join(import.meta.dirname, '../..');
const loopship = (...args: string[]) => execa('node', ['--import', 'tsx', join(ROOT, 'bin/loopship.ts'), ...args], { reject: false, cwd: ROOT, env: { LOOPSHIP_PASSPHRASE: '' } });

test('build --help documents outputs, keys, cache and --json', async (t) => {
  const r = await loopship('build', '--help');
  t.is(r.exitCode, 0);
  for (const opt of ['--out', '--repo', '--image-only', '--keys', '--publisher-key', '--mirror', '--cache-dir', '--no-cache', '--work-dir', '--json', 'Exit codes']) t.true(r.stdout.includes(opt), opt);
});

test('usage errors exit 2 before any work', async (t) => {
  const none = await loopship('build', 'recipes/tiny');
  t.is(none.exitCode, 2);
  t.regex(none.stderr, /give exactly one of --out FILE\.tar, --repo DIR or --image-only/);
  const nokey = await loopship('build', 'recipes/tiny', '--out', join(tmpdir(), 'never.tar'));
  t.is(nokey.exitCode, 2);
  t.regex(nokey.stderr, /needs --keys KEYDIR .* or --publisher-key FILE/);
  const level = await loopship('build', 'recipes/tiny', '--image-only', '--zstd-level', '99');
  t.is(level.exitCode, 2);
});

test('an invalid recipe exits 2 naming file, field and line; --json gives the error as JSON', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'recipe.yaml'), 'name: demo\nversion: 1.0.0\nbase: {suite: bookworm}\nboot: {kernel: linux-image-amd64}\nimage: {size: huge}\n');
  const r = await loopship('build', dir, '--image-only', '--json');
  t.is(r.exitCode, 2);
  const err = JSON.parse(r.stdout);
  t.is(err.code, 'RECIPE_INVALID');
  t.is(err.where, join(dir, 'recipe.yaml'));
  t.regex(err.message, /image\.size \(line 5\): expected a size/);
});
