// The agent's .deb in a debootstrapped Debian root (bookworm minbase + systemd): install,
// --help, unattended upgrades (no terminal: an upgrade that asks anything fails), purge; the
// upgrade from the last package that shipped /etc/loopship/agent.yaml as a conffile, with the
// file written by init; the unit file through systemd-analyze verify; and the preseed
// late_command example run with /target = that root. Slow (a cold debootstrap, three package
// builds): skipped with LOOPSHIP_FAST=1 or when not root.
import test from 'ava';
import { execa } from 'execa';
import { copyFile, lstat, mkdir, mkdtemp, readFile, readlink, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { debRootTarball, extractRoot, hostMirror, inRoot, removeRoot, withMounts, type DebRootSpec } from './debroot.js';
import { lateCommand } from './preseed.js';
import { makeRepo, serveDir } from '../helpers/repo.js';
import { publishExt4 } from '../agent/ext4.js';

const top = fileURLToPath(new URL('../..', import.meta.url));
const have = async (tool: string) => (await execa('sh', ['-c', `command -v ${tool}`], { reject: false })).exitCode === 0;
const slow = !process.env.LOOPSHIP_FAST && process.getuid?.() === 0 && (await have('debootstrap')) && (await have('dpkg-deb')) && (await have('dh_gencontrol')) && existsSync(join(top, 'dist/bin/loopship-agent.js'));
const maybe = slow ? test.serial : test.serial.skip;
// trixie (its test is below): found out here, before any test is declared (ava takes only tests declared synchronously)
const TRIXIE: DebRootSpec = { suite: 'trixie', variant: 'minbase', include: ['systemd', 'init-system-helpers', 'ca-certificates'] };
const haveTrixie = slow && (await hostMirror('trixie').then(() => true, () => false));
// The last commit whose package shipped /etc/loopship/agent.yaml as a conffile (0.1.0-1): its
// packaging/ builds the package hosts have installed. Needs the project's git history.
const LEGACY = '6858ab9';
const haveLegacy = slow && (await execa('git', ['-C', top, 'cat-file', '-e', `${LEGACY}^{commit}`], { reject: false })).exitCode === 0;
const maybeLegacy = haveLegacy ? test.serial : test.serial.skip;

// bookworm: Debian's nodejs is 18 there, so the packages carry the build host's node
const SPEC: DebRootSpec = { suite: 'bookworm', variant: 'minbase', include: ['systemd', 'init-system-helpers', 'man-db'] }; // man-db: systemd-analyze verify runs man for Documentation=man:
const UNIT = 'loopship-agent.service';
const WANTS = `etc/systemd/system/multi-user.target.wants/${UNIT}`;
const CONF = 'etc/loopship/agent.yaml';
const EXAMPLE = 'usr/share/loopship-agent/agent.yaml';
const NODE = `+node${process.versions.node.split('.')[0]}`;

let work = '';
/** 0.1.0-2 and 0.1.0-3 (the same, with a changed example), and the legacy 0.1.0-1 */
const debs: { v2: string; v3: string; legacy: string | null; legacy2: string | null } = { v2: '', v3: '', legacy: null, legacy2: null };
const CHANGED = '# a line the next package added to the example\n';

async function build(t: { log: (...s: string[]) => void }, script: string, version: string, cwd = top): Promise<string> {
  const started = Date.now();
  const r = await execa('bash', [script, '--no-build', '--bundle-node', '--compress', 'zstd', '--version', version, '--out', join(work, 'out', version)], { all: true, cwd });
  const deb = r.stdout.trim().split('\n').pop()!;
  t.log(`built ${basename(deb)}: ${((await stat(deb)).size / 1048576).toFixed(1)} MiB in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  return deb;
}

/** deb as another version whose example agent.yaml changed: what a later release looks like to dpkg. */
async function withChangedExample(deb: string, version: string, example = EXAMPLE): Promise<string> {
  const tree = join(work, `tree-${version}`);
  await execa('dpkg-deb', ['-R', deb, tree]);
  await writeFile(join(tree, example), (await readFile(join(tree, example), 'utf8')) + CHANGED);
  const control = join(tree, 'DEBIAN/control');
  await writeFile(control, (await readFile(control, 'utf8')).replace(/^Version: .*$/m, `Version: ${version}`));
  await execa('sh', ['-c', `cd '${tree}' && find . -path ./DEBIAN -prune -o -type f -print | sed 's#^\\./##' | LC_ALL=C sort | xargs -d '\\n' md5sum > DEBIAN/md5sums`]);
  const out = join(work, 'out', `loopship-agent_${version}_amd64.deb`);
  await execa('dpkg-deb', ['--root-owner-group', '-Zzstd', '--build', tree, out]);
  await rm(tree, { recursive: true, force: true });
  return out;
}

test.before(async (t) => {
  if (!slow) return;
  work = await mkdtemp('/tmp/loopship-deb-test-');
  debs.v2 = await build(t, join(top, 'packaging/build-deb.sh'), '0.1.0-2');
  debs.v3 = await withChangedExample(debs.v2, `0.1.0-3${NODE}`);
  if (haveLegacy) {
    // the old packaging beside this tree's dist/ and node_modules/ (what it bundles)
    const legacy = join(work, 'legacy');
    await mkdir(legacy);
    await execa('sh', ['-c', `git -C '${top}' archive ${LEGACY} packaging client-agent/loopship-agent.service docs/remote-sites.md package.json | tar -x -C '${legacy}'`]);
    for (const d of ['dist', 'node_modules']) await symlink(join(top, d), join(legacy, d));
    debs.legacy = await build(t, join(legacy, 'packaging/build-deb.sh'), '0.1.0-1', legacy);
    // the old way's next release: its conffile changed
    debs.legacy2 = await withChangedExample(debs.legacy, `0.1.0-1.1${NODE}`, CONF);
  }
});

test.after.always(async () => {
  if (work) await removeRoot(work);
});

async function freshRoot(t: { log: (...s: string[]) => void }, name: string): Promise<string> {
  const started = Date.now();
  const { tarball, cold } = await debRootTarball(SPEC, (s) => t.log(s));
  const root = join(work, name);
  await extractRoot(tarball, root);
  t.log(`Debian root ready (${cold ? 'cold: debootstrap' : 'warm: cached tarball'}) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return root;
}

const ok = (t: { is: (a: unknown, b: unknown, m?: string) => void }, r: { exitCode?: number; all?: string }, what: string) =>
  t.is(r.exitCode, 0, `${what} failed:\n${r.all}`);

/** dpkg -i as unattended-upgrades runs it: no terminal, stdin at end of file, no frontend to ask. */
const unattended = (root: string, deb: string) => inRoot(root, ['dpkg', '-i', deb], { input: '' });
const status = async (root: string) => (await inRoot(root, ['dpkg-query', '-W', '-f', '${db:Status-Abbrev}|${Version}', 'loopship-agent'])).stdout.trim();
/** what dpkg leaves beside a conffile it moved or asked about */
const leftovers = async (root: string) => (await readdir(join(root, 'etc/loopship')).catch(() => [] as string[])).filter((f) => /\.dpkg-|\.ucf-/.test(f));

maybe('install, --help, systemd-analyze verify, unattended upgrade with a changed example keeps the config, purge removes config and state', async (t) => {
  const root = await freshRoot(t, 'lifecycle');
  await copyFile(debs.v2, join(root, 'tmp/v2.deb'));
  await copyFile(debs.v3, join(root, 'tmp/v3.deb'));
  await withMounts(root, async () => {
    ok(t, await inRoot(root, ['dpkg', '-i', '/tmp/v2.deb']), 'dpkg -i');
    // every shipped file has its md5sum: dpkg --verify checks them (and prints nothing when all match)
    const dpkgVerify = await inRoot(root, ['dpkg', '--verify', 'loopship-agent']);
    ok(t, dpkgVerify, 'dpkg --verify');
    t.is(dpkgVerify.stdout.trim(), '');
    t.regex((await inRoot(root, ['cat', '/var/lib/dpkg/info/loopship-agent.md5sums'])).stdout, /  usr\/lib\/loopship-agent\/loopship-agent\.js$/m);
    const help = await inRoot(root, ['loopship-agent', '--help']);
    ok(t, help, 'loopship-agent --help');
    for (const cmd of ['init', 'install', 'import', 'upgrade', 'rollback', 'remove', 'status', 'verify', 'daemon']) t.regex(help.stdout, new RegExp(`^\\s+${cmd}\\b`, 'm'));

    // no conffile at all, no agent.yaml: init writes it; the example is beside the package's files
    t.is((await inRoot(root, ['dpkg-query', '-W', '-f', '${Conffiles}', 'loopship-agent'])).stdout.trim(), '', 'the package has no conffiles');
    t.false(existsSync(join(root, CONF)), 'agent.yaml is not shipped');
    t.is(YAML.parse(await readFile(join(root, EXAMPLE), 'utf8')), null, 'the example is all comments');
    t.true(existsSync(join(root, 'etc/loopship')), 'the configuration directory is there for init');
    // a command that reads the configuration fails with a usage error naming the file
    const update = await inRoot(root, ['loopship-agent', 'update']);
    t.is(update.exitCode, 2, update.all);
    t.regex(update.stderr, /\/etc\/loopship\/agent\.yaml: no such file \(run `loopship-agent init` first\)/);

    // what the package put in place
    t.true((await lstat(join(root, WANTS))).isSymbolicLink(), 'unit enabled at install');
    t.regex(await readlink(join(root, WANTS)), new RegExp(`^(/usr)?/lib/systemd/system/${UNIT}$`));
    t.false(existsSync(join(root, `usr/lib/systemd/system/${UNIT}.d`)), 'no drop-in: ConditionPathExists does its job');
    const state = await stat(join(root, 'var/lib/loopship'));
    t.true(state.isDirectory());
    t.is(state.mode & 0o7777, 0o700, "the state dir is the agent's alone");
    t.true(existsSync(join(root, 'usr/share/man/man8/loopship-agent.8.gz')));
    // the unit skips an unconfigured host
    t.regex(await readFile(join(root, `usr/lib/systemd/system/${UNIT}`), 'utf8'), /^ConditionPathExists=\/etc\/loopship\/agent\.yaml$/m);
    // the bundled node and the zstd binding are stripped, the binding is not executable
    const file = await execa('file', ['-L', join(root, 'usr/lib/loopship-agent/node_modules/zstd-napi/build/Release/binding.node')], { reject: false });
    if (file.exitCode === 0) t.regex(file.stdout, /, stripped/);
    t.is((await stat(join(root, 'usr/lib/loopship-agent/node_modules/zstd-napi/build/Release/binding.node'))).mode & 0o111, 0);

    // unit file passes systemd's own checks, inside the root
    const verify = await inRoot(root, ['systemd-analyze', 'verify', `/usr/lib/systemd/system/${UNIT}`]);
    ok(t, verify, 'systemd-analyze verify');
    t.notRegex(verify.all ?? '', /loopship-agent/i, `systemd-analyze complained about the unit:\n${verify.all}`);

    // the admin configures the host and leaves state behind, as a running host would
    const edited = 'repos:\n  - /srv/loopship\ntrust:\n  root_fingerprint: 0123456789abcdef0123456789abcdef01234567\n';
    await writeFile(join(root, CONF), edited);
    await mkdir(join(root, 'var/lib/loopship/appliances/tiny/1.0.0'), { recursive: true });
    await writeFile(join(root, 'var/lib/loopship/appliances/tiny/1.0.0/disk.img'), 'image');
    await mkdir(join(root, 'etc/xen/auto'), { recursive: true });
    await writeFile(join(root, 'etc/xen/tiny.cfg'), '# generated by loopship-agent for tiny 1.0.0: do not edit, it is rewritten on every start\nname = "tiny"\n');
    await symlink('/etc/xen/tiny.cfg', join(root, 'etc/xen/auto/tiny.cfg'));
    await writeFile(join(root, 'etc/xen/mine.cfg'), 'name = "mine"\n');

    // upgrade to a package whose example changed, unattended: nothing to ask, the config as it was
    ok(t, await unattended(root, '/tmp/v3.deb'), 'unattended upgrade');
    t.is(await status(root), `ii |0.1.0-3${NODE}`);
    t.is(await readFile(join(root, CONF), 'utf8'), edited);
    t.true((await readFile(join(root, EXAMPLE), 'utf8')).endsWith(CHANGED), 'the new example is installed');
    t.deepEqual(await leftovers(root), []);
    t.true(existsSync(join(root, 'var/lib/loopship/appliances/tiny/1.0.0/disk.img')), 'state survives an upgrade');
    t.true((await lstat(join(root, WANTS))).isSymbolicLink(), 'still enabled after the upgrade');
    const version = await inRoot(root, ['loopship-agent', '--version']);
    ok(t, version, 'agent after upgrade');
    t.is(version.stdout.trim(), `0.1.0-2${NODE}`, '--version names the package it was bundled for (v3 is v2 repacked)');

    // remove keeps config and state; purge removes them, and only what the agent generated in /etc/xen
    ok(t, await inRoot(root, ['dpkg', '--remove', 'loopship-agent']), 'dpkg --remove');
    t.false(existsSync(join(root, 'usr/bin/loopship-agent')));
    t.false(existsSync(join(root, 'usr/lib/loopship-agent')));
    t.true(existsSync(join(root, CONF)));
    t.true(existsSync(join(root, 'var/lib/loopship/appliances/tiny/1.0.0/disk.img')));
    ok(t, await inRoot(root, ['dpkg', '--purge', 'loopship-agent']), 'dpkg --purge');
    for (const gone of ['etc/loopship', 'var/lib/loopship', 'etc/xen/tiny.cfg', 'etc/xen/auto/tiny.cfg', WANTS, `etc/systemd/system/${UNIT}`]) {
      t.false(existsSync(join(root, gone)) || (await lstat(join(root, gone)).then(() => true, () => false)), `${gone} left after purge`);
    }
    t.true(existsSync(join(root, 'etc/xen/mine.cfg')), 'a config the agent did not write is kept');
    const listed = await inRoot(root, ['dpkg-query', '-W', '-f', '${Status}', 'loopship-agent']);
    t.not(listed.stdout.trim(), 'install ok installed');
  });
  await removeRoot(root);
});

maybeLegacy('from the package that shipped agent.yaml as a conffile: init wrote it, unattended upgrades keep it and ask nothing', async (t) => {
  const fx = await makeRepo();
  const server = await serveDir(fx.repoDir);
  const root = await freshRoot(t, 'legacy-configured');
  try {
    for (const [name, deb] of [['v1', debs.legacy!], ['v2', debs.v2], ['v3', debs.v3]]) await copyFile(deb, join(root, `tmp/${name}.deb`));
    await withMounts(root, async () => {
      ok(t, await inRoot(root, ['dpkg', '-i', '/tmp/v1.deb']), 'dpkg -i of the old package');
      t.regex((await inRoot(root, ['dpkg-query', '-W', '-f', '${Conffiles}', 'loopship-agent'])).stdout, /\/etc\/loopship\/agent\.yaml [0-9a-f]{32}/, 'the old package lists the conffile');
      // the host configured as the docs say: init pins the root and rewrites the conffile
      ok(t, await inRoot(root, ['loopship-agent', 'init', '--repo', server.url, '--root-fingerprint', fx.keystore.find('root').fingerprint]), 'init');
      await writeFile(join(root, CONF), (await readFile(join(root, CONF), 'utf8')) + 'appliances:\n  - name: thin-client\n    channel: stable\n');
      const configured = await readFile(join(root, CONF), 'utf8');
      t.regex(configured, /^repos:/m);

      for (const [deb, version] of [['/tmp/v2.deb', `0.1.0-2${NODE}`], ['/tmp/v3.deb', `0.1.0-3${NODE}`]]) {
        const r = await unattended(root, deb);
        ok(t, r, `unattended upgrade to ${version}`);
        t.notRegex(r.all ?? '', /conffile|Configuration file/i, 'dpkg asked nothing');
        t.is(await status(root), `ii |${version}`);
        t.is(await readFile(join(root, CONF), 'utf8'), configured, 'the settings init wrote are kept, byte for byte');
        t.deepEqual(await leftovers(root), [], 'nothing moved aside (.dpkg-bak, .dpkg-old, .dpkg-dist)');
      }
      // dpkg keeps the file as an obsolete conffile of the package: never asked about, removed by purge
      t.regex((await inRoot(root, ['dpkg-query', '-W', '-f', '${Conffiles}', 'loopship-agent'])).stdout, /\/etc\/loopship\/agent\.yaml [0-9a-f]{32} obsolete/);
      t.false(existsSync(join(root, `usr/lib/systemd/system/${UNIT}.d/debian.conf`)), 'the old ExecCondition drop-in is gone');
      ok(t, await inRoot(root, ['loopship-agent', '--json', 'status']), 'the agent reads the kept configuration');
    });
  } finally {
    await server.close();
    await fx.cleanup();
    await removeRoot(root);
  }
});

maybeLegacy('for comparison, the old way: init rewrote the conffile, and the next package with a changed one stops at the prompt (iU)', async (t) => {
  // what the tests above would see if the package still shipped agent.yaml: the bug, reproduced
  const root = await freshRoot(t, 'legacy-prompt');
  try {
    await copyFile(debs.legacy!, join(root, 'tmp/v1.deb'));
    await copyFile(debs.legacy2!, join(root, 'tmp/v1.1.deb'));
    await withMounts(root, async () => {
      ok(t, await inRoot(root, ['dpkg', '-i', '/tmp/v1.deb']), 'dpkg -i of the old package');
      await writeFile(join(root, CONF), 'repos:\n  - /srv/loopship\ntrust:\n  root_fingerprint: 0123456789abcdef0123456789abcdef01234567\n');
      const r = await unattended(root, '/tmp/v1.1.deb');
      t.not(r.exitCode, 0);
      t.regex(r.all ?? '', /end of file on stdin at conffile prompt/);
      t.is(await status(root), `iU |0.1.0-1.1${NODE}`);
    });
  } finally {
    await removeRoot(root);
  }
});

maybeLegacy('from the package that shipped agent.yaml as a conffile, never configured: the untouched example goes, the unit stays skipped', async (t) => {
  const root = await freshRoot(t, 'legacy-untouched');
  try {
    await copyFile(debs.legacy!, join(root, 'tmp/v1.deb'));
    await copyFile(debs.v2, join(root, 'tmp/v2.deb'));
    await withMounts(root, async () => {
      ok(t, await inRoot(root, ['dpkg', '-i', '/tmp/v1.deb']), 'dpkg -i of the old package');
      t.true(existsSync(join(root, CONF)));
      ok(t, await unattended(root, '/tmp/v2.deb'), 'unattended upgrade');
      t.is(await status(root), `ii |0.1.0-2${NODE}`);
      // the commented-out example would satisfy ConditionPathExists and start an agent with no repos
      t.false(existsSync(join(root, CONF)), 'the untouched example is removed');
      t.deepEqual(await leftovers(root), []);
      // init on the upgraded host writes a fresh file, which later upgrades leave alone
      ok(t, await inRoot(root, ['dpkg', '--purge', 'loopship-agent']), 'purge');
      t.false(existsSync(join(root, 'etc/loopship')));
    });
  } finally {
    await removeRoot(root);
  }
});

maybe('the preseed late_command installs the agent, pins the root, declares appliances and enables the unit', async (t) => {
  const fx = await makeRepo();
  await publishExt4(fx, 'thin-client', '1.0.0', { channel: 'stable' });
  const server = await serveDir(fx.repoDir);
  const root = await freshRoot(t, 'preseed');
  const media = join(work, 'cdrom');
  try {
    await mkdir(join(media, 'loopship'), { recursive: true });
    await copyFile(debs.v2, join(media, 'loopship', basename(debs.v2)));
    await writeFile(join(root, 'etc/hostname'), 'xenhost01\n');
    const fpr = fx.keystore.find('root').fingerprint;
    const command = lateCommand(await readFile(join(top, 'examples/preseed/late_command.cfg'), 'utf8'));
    // what d-i provides: /target, /cdrom and in-target; the example's defaults overridden
    // from the environment like an admin would edit them
    const script = `in_target() { chroot '${root}' "$@"; }\n` + command.replaceAll('in-target ', 'in_target ').replaceAll('/target/', `${root}/`).replaceAll('/cdrom/', `${media}/`);
    await withMounts(root, async () => {
      const r = await execa('sh', ['-c', script], {
        reject: false,
        all: true,
        env: { LOOPSHIP_REPOS: `${server.url} /srv/loopship-mirror`, LOOPSHIP_ROOT_FPR: fpr.toUpperCase(), LOOPSHIP_APPLIANCES: 'thin-client:stable sbc-desktop:testing', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
      });
      ok(t, r, 'late_command');
      const cfg = YAML.parse(await readFile(join(root, 'etc/loopship/agent.yaml'), 'utf8'));
      t.deepEqual(cfg.repos, [server.url, '/srv/loopship-mirror']);
      t.is(cfg.trust.root_fingerprint.toLowerCase(), fpr.toLowerCase());
      t.deepEqual(cfg.appliances, [
        { name: 'thin-client', channel: 'stable', settings: { hostname: 'xenhost01-thin-client' } },
        { name: 'sbc-desktop', channel: 'testing', settings: { hostname: 'xenhost01-sbc-desktop' } },
      ]);
      // the root was fetched from the repository and pinned
      t.true(server.requests.some((u) => u.includes('root')), `repository requests: ${server.requests.join(' ')}`);
      t.true(existsSync(join(root, 'var/lib/loopship/trust/root.json')));
      t.true((await lstat(join(root, WANTS))).isSymbolicLink());
      t.is((await inRoot(root, ['/bin/sh', '-c', 'grep -Eq "^repos:" /etc/loopship/agent.yaml'])).exitCode, 0);
      // the agent accepts what was written
      const status = await inRoot(root, ['loopship-agent', '--json', 'status']);
      ok(t, status, 'status');
      t.false(existsSync(join(root, 'tmp/loopship-agent.deb')), 'the copied .deb is removed');
      // the packaged agent (one bundled file beside the native zstd binding) does the real job:
      // fetch over HTTP, check the signatures, decode the chunks on its workers, configure the
      // image (loop mount) with the host setting the late_command declared, verify it again
      const inst = await inRoot(root, ['loopship-agent', '--json', 'install', 'thin-client', '--no-start']);
      ok(t, inst, 'install --no-start');
      t.like(JSON.parse(inst.stdout), { current: '1.0.0', started: false });
      ok(t, await inRoot(root, ['loopship-agent', 'verify', 'thin-client']), 'verify');
    });
  } finally {
    await server.close();
    await fx.cleanup();
    await rm(media, { recursive: true, force: true });
    await removeRoot(root);
  }
});

// trixie: Debian's own nodejs (20) is new enough, so the default build (Depends: nodejs (>= 20))
// installs from the archive. Runs only where this machine's apt sources name trixie (the
// mirror is never written here); `npm run deb` builds this variant beside the +node one.

(haveTrixie ? test.serial : test.serial.skip)('trixie: the default build installs with Debian\'s nodejs and runs', async (t) => {
  const out = join(work, 'out', 'trixie');
  const r = await execa('bash', [join(top, 'packaging/build-deb.sh'), '--no-build', '--compress', 'zstd', '--out', out], { all: true });
  const deb = r.stdout.trim().split('\n').pop()!;
  const { tarball } = await debRootTarball(TRIXIE, (s) => t.log(s));
  const root = join(work, 'trixie');
  await extractRoot(tarball, root);
  try {
    await copyFile(deb, join(root, 'tmp/agent.deb'));
    await withMounts(root, async () => {
      await copyFile('/etc/resolv.conf', join(root, 'etc/resolv.conf')).catch(() => {});
      ok(t, await inRoot(root, ['apt-get', 'update', '-q']), 'apt-get update');
      ok(t, await inRoot(root, ['apt-get', 'install', '-y', '-q', '--no-install-recommends', '/tmp/agent.deb'], { input: '' }), 'apt-get install of the .deb');
      t.is(await status(root), `ii |${basename(deb).split('_')[1]}`);
      t.false(existsSync(join(root, 'usr/lib/loopship-agent/node')), 'no node of its own');
      const version = await inRoot(root, ['loopship-agent', '--version']);
      ok(t, version, 'loopship-agent --version with /usr/bin/node');
      t.regex((await inRoot(root, ['dpkg-query', '-W', '-f', '${Depends}', 'loopship-agent'])).stdout, /nodejs \(>= 20\)/);
    });
  } finally {
    await removeRoot(root);
  }
});
