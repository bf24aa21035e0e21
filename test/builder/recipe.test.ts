import test from 'ava';
import { mkdtemp, mkdir, writeFile, rm, readdir, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseRecipe, loadRecipe, recipeDigest, RecipeError, kernelCmdline, parseSize } from '../../builder/index.js';
import { imageUuid, imageSize } from '../../builder/index.js';

const MINIMAL = `name: demo
version: 1.0.0
base:
  suite: bookworm
boot:
  kernel: linux-image-cloud-amd64
`;

function rejects(t: import('ava').ExecutionContext, yaml: string, ...expected: (string | RegExp)[]) {
  const err = t.throws(() => parseRecipe(yaml, '/recipes/demo/recipe.yaml'), { instanceOf: RecipeError });
  t.is(err?.code, 'RECIPE_INVALID');
  t.true(err!.message.startsWith('/recipes/demo/recipe.yaml: '), `names the file: ${err?.message}`);
  for (const e of expected) t.regex(err!.message, typeof e === 'string' ? new RegExp(e.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : e);
}

test('a minimal recipe gets its defaults', (t) => {
  const r = parseRecipe(MINIMAL, 'x.yaml');
  t.is(r.arch, 'amd64');
  t.is(r.base.variant, 'minbase');
  t.deepEqual(r.base.components, ['main']);
  t.is(r.image.size, 'auto');
  t.is(r.image.fs, 'ext4');
  t.is(r.boot.type, 'pvh');
  t.is(r.boot.ready_marker, 'LOOPSHIP-READY');
  t.is(r.boot.init, 'systemd');
  t.deepEqual(r.xen, { memory: 512, vcpus: 1, network: { nics: 1 } });
  t.deepEqual(r.services, { enable: [], disable: [] });
  t.false(r.install_recommends);
});

test('unknown keys are errors, at the top level and nested, naming the field', (t) => {
  rejects(t, MINIMAL + 'pakages: [vim]\n', 'pakages (line 7)', /unrecognized/i);
  rejects(t, MINIMAL.replace('suite: bookworm', 'suite: bookworm\n  mirrors: http://x'), 'base', 'mirrors');
});

test('wrong types and values name the field path and what was expected', (t) => {
  rejects(t, MINIMAL.replace('version: 1.0.0', 'version: "1 0"'), 'version (line 2)', 'expected a version');
  rejects(t, MINIMAL + 'image:\n  size: 2GB\n', 'image.size (line 8): expected a size such as 512M or 2G');
  rejects(t, MINIMAL + 'boot2: 1\n', 'boot2');
  rejects(t, MINIMAL.replace('  kernel: linux-image-cloud-amd64', '  type: hvm\n  kernel: linux-image-cloud-amd64'), 'boot.type');
  rejects(t, MINIMAL + 'xen:\n  memory: "lots"\n', 'xen.memory', /expected number/i);
  rejects(t, MINIMAL + 'packages: [Vim!]\n', 'packages.0', 'Debian package name');
  rejects(t, MINIMAL + 'settings:\n  hostname: {type: fqdn}\n', 'settings.hostname.type');
  rejects(t, MINIMAL + 'services:\n  enable: [ssh]\n', 'services.enable.0', 'systemd unit');
  rejects(t, MINIMAL + 'base2: {}\n', 'base2');
});

test('missing required fields are named', (t) => {
  rejects(t, 'name: demo\nversion: 1.0.0\nbase: {suite: bookworm}\n', 'boot');
  rejects(t, MINIMAL.replace('  kernel: linux-image-cloud-amd64\n', '  type: pv\n'), 'boot.kernel');
});

test('YAML syntax errors give the line', (t) => {
  rejects(t, 'name: demo\nversion: [1.0\n', /YAML syntax error at line \d+/);
  rejects(t, MINIMAL + 'name: again\n', /YAML syntax error/);
  rejects(t, '- just\n- a list\n', 'expected a YAML mapping');
});

test('cross-field rules: duplicates, enable+disable, escaping overlay, required+default', (t) => {
  rejects(t, MINIMAL + 'services:\n  enable: [a.service]\n  disable: [a.service]\n', 'a.service both enabled and disabled');
  rejects(t, MINIMAL + 'files: ../../etc\n', 'files', 'inside the recipe');
  rejects(t, MINIMAL + '  init: busybox\nservices:\n  disable: [apt-daily.timer]\n', 'services: apt-daily.timer cannot be enabled or disabled with boot.init busybox');
  rejects(t, MINIMAL + '  init: runit\n', 'boot.init');
  t.is(parseRecipe(MINIMAL + '  init: busybox\n', 'x.yaml').boot.init, 'busybox');
  rejects(t, MINIMAL + 'users: [{name: bob}, {name: bob}]\n', 'duplicate user');
  rejects(t, MINIMAL + 'settings:\n  x: {type: string, required: true, default: a}\n', 'settings.x');
});

test('loadRecipe: file or directory, missing overlay and missing recipe are clear errors', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-recipe-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const e1 = await t.throwsAsync(loadRecipe(join(dir, 'nope')), { instanceOf: RecipeError });
  t.regex(e1!.message, /no such recipe/);
  const e2 = await t.throwsAsync(loadRecipe(dir), { instanceOf: RecipeError });
  t.regex(e2!.message, /has no recipe\.yaml/);
  await writeFile(join(dir, 'recipe.yaml'), MINIMAL + 'files: overlay\n');
  const e3 = await t.throwsAsync(loadRecipe(dir), { instanceOf: RecipeError });
  t.regex(e3!.message, /recipe\.yaml: files: overlay directory "overlay" does not exist/);
  await mkdir(join(dir, 'overlay/etc'), { recursive: true });
  await writeFile(join(dir, 'overlay/etc/motd'), 'hello\n');
  const a = await loadRecipe(dir);
  const b = await loadRecipe(join(dir, 'recipe.yaml'));
  t.is(a.digest, b.digest);
  t.is(a.overlayDir, join(dir, 'overlay'));
});

test('recipe digest covers the recipe and every overlay file, in sorted order', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-recipe-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const f = join(dir, 'recipe.yaml');
  await writeFile(f, MINIMAL);
  await mkdir(join(dir, 'overlay/etc'), { recursive: true });
  await writeFile(join(dir, 'overlay/etc/a'), 'a');
  const d0 = await recipeDigest(f, join(dir, 'overlay'));
  t.is(await recipeDigest(f, join(dir, 'overlay')), d0, 'stable');
  await writeFile(join(dir, 'overlay/etc/a'), 'b');
  const d1 = await recipeDigest(f, join(dir, 'overlay'));
  t.not(d1, d0, 'content change');
  await writeFile(join(dir, 'overlay/etc/b'), '');
  const d2 = await recipeDigest(f, join(dir, 'overlay'));
  t.not(d2, d1, 'new empty file');
  await symlink('a', join(dir, 'overlay/etc/c'));
  const d3 = await recipeDigest(f, join(dir, 'overlay'));
  t.not(d3, d2, 'symlink');
  await writeFile(f, MINIMAL + 'packages: [vim]\n');
  t.not(await recipeDigest(f, join(dir, 'overlay')), d3, 'recipe change');
});

test('every shipped recipe validates, and none names a mirror host', async (t) => {
  const recipes = join(import.meta.dirname, '../../recipes');
  const names = (await readdir(recipes, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
  t.true(names.includes('tiny') && names.includes('sbc-desktop'));
  for (const n of names) {
    const l = await loadRecipe(join(recipes, n));
    t.is(l.recipe.base.mirror, undefined, `${n} must not name a mirror`);
    t.truthy(l.recipe.settings.hostname, `${n} accepts a hostname`);
  }
});

test('sizes, UUIDs and the kernel command line', (t) => {
  t.is(parseSize('512M'), 512 * 2 ** 20);
  t.is(parseSize('2G'), 2 * 2 ** 30);
  const u = imageUuid('tiny', 'amd64');
  t.regex(u, /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  t.is(imageUuid('tiny', 'amd64'), u, 'same name, same UUID (every version shares it)');
  t.not(imageUuid('other', 'amd64'), u);
  const r = parseRecipe(MINIMAL + 'image: {size: auto, headroom: 50%}\n', 'x');
  const s = imageSize(r, { files: 1000, blockBytes: 100 * 2 ** 20, bytes: 90 * 2 ** 20 });
  t.true(s >= 150 * 2 ** 20 + 64 * 2 ** 20 && s % (16 * 2 ** 20) === 0, `auto size ${s}`);
  t.is(imageSize(parseRecipe(MINIMAL + 'image: {size: 1G}\n', 'x'), { files: 1, blockBytes: 1, bytes: 1 }), 2 ** 30);
  t.is(kernelCmdline(parseRecipe(MINIMAL.replace('  kernel:', '  cmdline: quiet\n  kernel:'), 'x'), u), `root=UUID=${u} ro quiet`);
});
