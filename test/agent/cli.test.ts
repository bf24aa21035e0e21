// The loopship-agent command line as a real process: exit codes, --json, error lines. Run
// twice: from the sources, and as the .deb ships it (one bundled file, packaging/bundle-agent.mjs,
// beside the zstd binding: a package the bundling lost or a dynamic require shows up here).
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { writeFile, mkdtemp, mkdir, open, readFile, rm, symlink } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeRepo } from '../helpers/repo.js';
import { publishExt4 } from './ext4.js';

const top = process.cwd();
const SOURCE = ['--import', 'tsx', join(top, 'bin', 'loopship-agent.ts')];

let bundleDir = '';
// what build-deb.sh stamps into the bundle: its Debian version
const BUNDLE_VERSION = '0.1.0-7+test';
const SOURCE_VERSION = (JSON.parse(readFileSync(join(top, 'package.json'), 'utf8')) as { version: string }).version;
test.before(async () => {
  if (!existsSync(join(top, 'dist/bin/loopship-agent.js'))) return; // npm test builds first
  bundleDir = await mkdtemp(join(tmpdir(), 'loopship-bundle-'));
  await execa('node', [join(top, 'packaging/bundle-agent.mjs'), bundleDir], { cwd: top, env: { LOOPSHIP_PACKAGE_VERSION: BUNDLE_VERSION } });
  await mkdir(join(bundleDir, 'node_modules'));
  await symlink(join(top, 'node_modules/zstd-napi'), join(bundleDir, 'node_modules/zstd-napi'));
});
test.after.always(async () => {
  if (bundleDir) await rm(bundleDir, { recursive: true, force: true });
});

test('init, install, status, verify and their exit codes, as a user runs them (sources)', (t) => cliSession(t, SOURCE, SOURCE_VERSION));
test('the same as the .deb ships it: one bundled file', async (t) => {
  if (!bundleDir) return t.fail('no dist/: run npm run build first');
  await cliSession(t, [join(bundleDir, 'loopship-agent.js')], BUNDLE_VERSION);
});

async function cliSession(t: ExecutionContext, BIN: string[], version: string) {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  const dir = await mkdtemp(join(fx.dir, 'cli-'));
  const keyFile = join(dir, 'root.asc');
  await writeFile(keyFile, fx.rootKeyArmored);
  const g = ['--config', join(dir, 'agent.yaml'), '--state-dir', join(dir, 'state')];
  const agent = (args: string[], extra: string[] = g) => execa('node', [...BIN, ...extra, ...args], { reject: false });

  const v = await agent(['--version']);
  t.is(v.stdout.trim(), version, '--version');
  const help = await agent(['--help']);
  t.is(help.exitCode, 0);
  for (const c of ['init', 'update', 'install', 'configure', 'start', 'stop', 'restart', 'status', 'upgrade', 'rollback', 'remove', 'gc', 'verify', 'import', 'daemon']) t.regex(help.stdout, new RegExp(`\\n  ${c}\\b`));

  const init = await agent(['init', '--repo', fx.repoDir, '--root-key', keyFile, '--backend', 'qemu', '--json']);
  t.is(init.exitCode, 0, init.stderr);
  t.is(JSON.parse(init.stdout).root_version, 1);

  const bad = await agent(['install', 'sbc', '--set', 'hostnme=x', '--no-start']);
  t.is(bad.exitCode, 2);
  t.regex(bad.stderr, /^loopship-agent: error: setting hostnme: unknown setting "hostnme"; sbc 1\.0\.0 accepts broker\.url, hostname, ssh\.authorized_keys$/);

  const inst = await agent(['install', 'sbc:stable', '--set', 'hostname=cli-host', '--no-start', '--json']);
  t.is(inst.exitCode, 0, inst.stderr);
  t.like(JSON.parse(inst.stdout), { current: '1.0.0', started: false, install: { version: '1.0.0', alreadyInstalled: false } });

  const status = await agent(['status', '--json']);
  t.is(status.exitCode, 0);
  t.like(JSON.parse(status.stdout)[0], { name: 'sbc', current: '1.0.0', running: false, installed: ['1.0.0'] });

  t.is((await agent(['verify'])).exitCode, 0);
  // bit rot in the verified image: reported, exit 3
  const img = join(dir, 'state', 'appliances', 'sbc', '1.0.0', 'verified.img');
  const m = JSON.parse(await readFile(join(dir, 'state', 'appliances', 'sbc', '1.0.0', 'manifest.json'), 'utf8'));
  const fh = await open(img, 'r+');
  await fh.write(Buffer.from('X'), 0, 1, m.image.chunks[2].offset);
  await fh.close();
  const ver = await agent(['verify', 'sbc']);
  t.is(ver.exitCode, 3);
  t.regex(ver.stdout, /sbc 1\.0\.0: FAILED\n  .*verified\.img: chunk at offset \d+/);
  t.regex(ver.stderr, /1 installed version\(s\) differ from their signed manifests: sbc 1\.0\.0/);

  // an upgrade whose new version does not boot (here: qemu refuses the kernel): rolled back, exit 1, one JSON document
  await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two' });
  const up = await agent(['upgrade', 'sbc', '--json']);
  t.is(up.exitCode, 1, up.stderr);
  const doc = JSON.parse(up.stdout);
  t.like(doc.results[0], { name: 'sbc', from: '1.0.0', to: '2.0.0', status: 'rolled-back' });
  t.regex(doc.error.message, /sbc 2\.0\.0: health check failed .*rolled back to 1\.0\.0/);
  t.like(JSON.parse((await agent(['status', 'sbc', '--json'])).stdout)[0], { current: '1.0.0', failed_versions: ['2.0.0'], pending_upgrade: null });

  // another agent holds the lock: exit 5, nothing done
  const sleeper = execa('sleep', ['30']);
  sleeper.catch(() => {});
  t.teardown(() => void sleeper.kill());
  await writeFile(join(dir, 'state', 'lock'), `${sleeper.pid}\n`);
  const locked = await agent(['gc']);
  t.is(locked.exitCode, 5);
  t.regex(locked.stderr, new RegExp(`another loopship-agent \\(pid ${sleeper.pid}\\) is running`));

  // a broken config: exit 2 naming the file and field
  await writeFile(join(dir, 'bad.yaml'), 'repos: [http://127.0.0.1:1/]\ntrust: {root_fingerprint: "12ab"}\n');
  const cfg = await agent(['update', '--json'], ['--config', join(dir, 'bad.yaml'), '--state-dir', join(dir, 'state2')]);
  t.is(cfg.exitCode, 2);
  t.like(JSON.parse(cfg.stdout), { code: 'CONFIG_INVALID' });
  t.regex(cfg.stderr, /bad\.yaml: trust\.root_fingerprint: expected a 40- or 64-hex-digit OpenPGP fingerprint/);

  // a bad appliance spec
  const spec = await agent(['install', 'Sbc@@1']);
  t.is(spec.exitCode, 2);
  t.regex(spec.stderr, /appliance: expected NAME, NAME@VERSION or NAME:CHANNEL/);
}
