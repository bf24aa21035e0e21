// The main job end to end, with the real commands: build recipes/tiny, publish over HTTP,
// the agent installs it and the guest boots under QEMU with the injected hostname; an
// upgrade that adds one package fetches only the changed chunks; an upgrade whose guest
// never becomes ready is rolled back and the previous version runs again.
// Slow (real debootstrap builds, real TCG boots): skipped with LOOPSHIP_FAST=1.
import test from 'ava';
import { execa } from 'execa';
import { cp, mkdir, mkdtemp, readFile, readdir, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import net from 'node:net';
import { manifestChunks, type Manifest } from '../../format/index.js';

const FAST = Boolean(process.env.LOOPSHIP_FAST);
const ROOT = process.cwd();
const loopship = (args: string[]) => execa('node', [join(ROOT, 'dist/bin/loopship.js'), ...args], { reject: false });

async function recipeVariant(dir: string, name: string, edit: (r: Record<string, any>) => void): Promise<string> {
  const to = join(dir, name);
  await cp(join(ROOT, 'recipes/tiny'), to, { recursive: true });
  const r = parse(await readFile(join(to, 'recipe.yaml'), 'utf8'));
  edit(r);
  await writeFile(join(to, 'recipe.yaml'), stringify(r));
  return to;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

async function waitFor(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not ready within ${ms} ms`);
}

async function loopDevicesUnder(dir: string): Promise<string[]> {
  const { stdout } = await execa('losetup', ['-nO', 'NAME,BACK-FILE']);
  return stdout.split('\n').filter((l) => l.includes(dir));
}

(FAST ? test.skip : test)('main job: build, publish over HTTP, install + boot under QEMU, delta upgrade, automatic rollback', async (t) => {
  t.timeout(60 * 60_000);
  const work = await mkdtemp('/var/tmp/loopship-e2e-');
  t.teardown(() => rm(work, { recursive: true, force: true }));
  const keys = join(work, 'keys');
  const repo = join(work, 'repo');
  const must = async (p: ReturnType<typeof loopship>, what: string) => {
    const r = await p;
    t.is(r.exitCode, 0, `${what}: ${r.stderr}`);
    if (r.exitCode !== 0) throw new Error(`${what} failed: ${r.stderr}`);
    return r;
  };
  await must(loopship(['keys', 'init', '--dir', keys]), 'keys init');
  await must(loopship(['repo', 'init', '--dir', repo, '--keys', keys]), 'repo init');
  const rootFpr = JSON.parse((await must(loopship(['keys', 'list', '--dir', keys, '--json']), 'keys list')).stdout).keys.find((k: { role: string }) => k.role === 'root').fingerprint;

  // Three versions: the recipe as shipped, one more small package, and one whose ready unit is off.
  const v1 = join(ROOT, 'recipes/tiny');
  const v2 = await recipeVariant(work, 'tiny-v2', (r) => {
    r.version = '1.0.1';
    r.packages.push('less');
  });
  const v3 = await recipeVariant(work, 'tiny-v3', (r) => {
    r.version = '1.0.2';
    r.services ??= {};
    r.services.disable = [...(r.services.disable ?? []), 'loopship-ready.service'];
  });

  const token = 'e2e-publisher-token-0123456789';
  const siteToken = 'e2e-site-token-0123456789abcdef';
  await writeFile(join(work, 'server.yaml'), stringify({ publishers: [{ name: 'e2e', token }], sites: [{ name: 'e2e-site', token: siteToken }] }));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const server = execa('node', [join(ROOT, 'dist/bin/loopship.js'), 'serve', '--repo', repo, '--port', String(port), '--config', join(work, 'server.yaml'), '--keys', keys, '--state-dir', join(work, 'server-state'), '--log-format', 'json'], { reject: false });
  t.teardown(() => void server.kill('SIGTERM'));
  await waitFor(async () => (await fetch(`${url}/index.json`)).ok, 30_000, 'repo server');

  const buildAndPublish = async (recipe: string, out: string, extra: string[] = []) => {
    const b = await must(loopship(['build', recipe, '--keys', keys, '--out', out, '--json', ...extra]), `build ${recipe}`);
    const summary = JSON.parse(b.stdout);
    await must(loopship(['publish', out, '--server', url, '--token', token, '--channel', 'stable', '--json']), `publish ${out}`);
    return summary;
  };

  const host = join(work, 'host');
  await mkdir(host);
  const agentArgs = ['--config', join(host, 'agent.yaml'), '--state-dir', join(host, 'state')];
  const agent = (args: string[]) => execa('node', [join(ROOT, 'dist/bin/loopship-agent.js'), ...agentArgs, ...args], { reject: false });
  const consoleLog = join(host, 'state/log/tiny.console.log');

  // v1: install and boot.
  await buildAndPublish(v1, join(work, 'v1.tar'));
  t.is((await agent(['init', '--repo', url, '--root-fingerprint', rootFpr, '--backend', 'qemu'])).exitCode, 0);
  await writeFile(join(host, 'agent.yaml'), (await readFile(join(host, 'agent.yaml'), 'utf8')) + `health_timeout_s: 420\nreport:\n  url: ${url}\n  site: e2e-site\n  token: ${siteToken}\n`);
  t.teardown(async () => void (await agent(['stop', 'tiny'])));
  const i1 = await agent(['install', 'tiny:stable', '--set', 'hostname=e2e-branch-01', '--json']);
  t.is(i1.exitCode, 0, i1.stderr);
  t.regex(await readFile(consoleLog, 'utf8'), /LOOPSHIP-READY hostname=e2e-branch-01 version=1\.0\.0/);

  // v2 (+ one package): the upgrade fetches exactly the chunks v1 does not have.
  // the image made where --image-dir says (by default /dev/shm when it fits in memory), and gone after
  const imageDir = join(work, 'image-scratch');
  await mkdir(imageDir);
  const b2 = await buildAndPublish(v2, join(work, 'v2.tar'), ['--image-dir', imageDir]);
  t.is(b2.image.made_in, imageDir);
  t.deepEqual(await readdir(imageDir), [], 'the scratch image is deleted after the build');
  const idx = JSON.parse(await readFile(join(repo, 'index.json'), 'utf8'));
  const man = async (v: string): Promise<Manifest> => JSON.parse(await readFile(join(repo, 'manifests', `${idx.images.tiny.versions[v].manifest}.json`), 'utf8'));
  const m1 = await man('1.0.0');
  const m2 = await man('1.0.1');
  const have = new Set(manifestChunks(m1).map((c) => c.sha256));
  const fresh = manifestChunks(m2).filter((c) => !have.has(c.sha256));
  const freshBytes = fresh.reduce((a, c) => a + c.csize, 0);
  const fullBytes = manifestChunks(m2).reduce((a, c) => a + c.csize, 0);
  const u2 = await agent(['upgrade', 'tiny', '--json']);
  t.is(u2.exitCode, 0, u2.stderr);
  t.regex(await readFile(consoleLog, 'utf8'), /LOOPSHIP-READY hostname=e2e-branch-01 version=1\.0\.1/);
  const st2 = JSON.parse((await agent(['status', 'tiny', '--json'])).stdout);
  t.log(`delta: ${fresh.length} of ${manifestChunks(m2).length} chunks, ${(freshBytes / 2 ** 20).toFixed(1)} of ${(fullBytes / 2 ** 20).toFixed(1)} MiB compressed (${((100 * freshBytes) / fullBytes).toFixed(1)}%)`);
  const fetched = JSON.stringify(st2).match(/"fetchedBytes":\s*(\d+)/);
  if (fetched) t.is(Number(fetched[1]), freshBytes, 'upgrade fetched exactly the new chunks');
  t.true(freshBytes < fullBytes / 2, 'a one-package change must not refetch most of the image');

  // v3 never becomes ready: rolled back, v2 runs again.
  await buildAndPublish(v3, join(work, 'v3.tar'));
  const u3 = await agent(['upgrade', 'tiny', '--json']);
  t.not(u3.exitCode, 0, 'a failed upgrade exits non-zero');
  t.regex(u3.stdout + u3.stderr, /rolled-back|roll/);
  const st3 = JSON.parse((await agent(['status', 'tiny', '--json'])).stdout);
  t.regex(JSON.stringify(st3), /"current(_version)?":\s*"1\.0\.1"/);
  const log3 = await readFile(consoleLog, 'utf8');
  t.regex(log3, /LOOPSHIP-READY hostname=e2e-branch-01 version=1\.0\.1/);

  // Stop: nothing of ours left attached.
  t.is((await agent(['stop', 'tiny'])).exitCode, 0);
  t.deepEqual(await loopDevicesUnder(work), []);
  t.false((await readFile('/proc/mounts', 'utf8')).includes(work));
});
