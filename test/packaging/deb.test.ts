// The agent's .deb in a debootstrapped Debian root (bookworm minbase + systemd): install,
// --help, upgrade to a second build, purge; the unit file through systemd-analyze verify;
// and the preseed late_command example run with /target = that root. Slow (a cold
// debootstrap, two package builds): skipped with LOOPSHIP_FAST=1 or when not root.
import test from 'ava';
import { execa } from 'execa';
import { copyFile, lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { debRootTarball, extractRoot, inRoot, removeRoot, withMounts, type DebRootSpec } from './debroot.js';
import { lateCommand } from './preseed.js';
import { makeRepo, serveDir } from '../helpers/repo.js';
import { publishExt4 } from '../agent/ext4.js';

const top = fileURLToPath(new URL('../..', import.meta.url));
const have = async (tool: string) => (await execa('sh', ['-c', `command -v ${tool}`], { reject: false })).exitCode === 0;
const slow = !process.env.LOOPSHIP_FAST && process.getuid?.() === 0 && (await have('debootstrap')) && (await have('dpkg-deb')) && existsSync(join(top, 'dist/bin/loopship-agent.js'));
const maybe = slow ? test.serial : test.serial.skip;

// bookworm: Debian's nodejs is 18 there, so the packages carry the build host's node
const SPEC: DebRootSpec = { suite: 'bookworm', variant: 'minbase', include: ['systemd', 'init-system-helpers', 'man-db'] }; // man-db: systemd-analyze verify runs man for Documentation=man:
const UNIT = 'loopship-agent.service';
const WANTS = `etc/systemd/system/multi-user.target.wants/${UNIT}`;

let work = '';
const debs: string[] = [];

test.before(async (t) => {
  if (!slow) return;
  work = await mkdtemp('/tmp/loopship-deb-test-');
  // two builds, the second with a bumped version: the upgrade path is a real one
  for (const version of ['0.1.0-1', '0.1.0-2']) {
    const started = Date.now();
    const r = await execa('bash', [join(top, 'packaging/build-deb.sh'), '--no-build', '--bundle-node', '--compress', 'zstd', '--version', version, '--out', join(work, 'out')], { all: true });
    const deb = r.stdout.trim().split('\n').pop()!;
    debs.push(deb);
    t.log(`built ${basename(deb)}: ${((await stat(deb)).size / 1048576).toFixed(1)} MiB in ${((Date.now() - started) / 1000).toFixed(0)} s`);
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

maybe('install, --help, systemd-analyze verify, upgrade keeps the edited config, purge removes config and state', async (t) => {
  const root = await freshRoot(t, 'lifecycle');
  await copyFile(debs[0], join(root, 'tmp/v1.deb'));
  await copyFile(debs[1], join(root, 'tmp/v2.deb'));
  await withMounts(root, async () => {
    ok(t, await inRoot(root, ['dpkg', '-i', '/tmp/v1.deb']), 'dpkg -i');
    // every shipped file has its md5sum: dpkg --verify checks them (and prints nothing when all match)
    const dpkgVerify = await inRoot(root, ['dpkg', '--verify', 'loopship-agent']);
    ok(t, dpkgVerify, 'dpkg --verify');
    t.is(dpkgVerify.stdout.trim(), '');
    t.regex((await inRoot(root, ['cat', '/var/lib/dpkg/info/loopship-agent.md5sums'])).stdout, /  usr\/lib\/loopship-agent\/loopship-agent\.js$/m);
    const help = await inRoot(root, ['loopship-agent', '--help']);
    ok(t, help, 'loopship-agent --help');
    for (const cmd of ['init', 'install', 'import', 'upgrade', 'rollback', 'remove', 'status', 'verify', 'daemon']) t.regex(help.stdout, new RegExp(`^\\s+${cmd}\\b`, 'm'));
    // a command that reads the (still commented-out) configuration fails with a usage error naming the file
    const update = await inRoot(root, ['loopship-agent', 'update']);
    t.is(update.exitCode, 2, update.all);
    t.regex(update.stderr, /\/etc\/loopship\/agent\.yaml: repos/);

    // what the package put in place
    t.true((await lstat(join(root, WANTS))).isSymbolicLink(), 'unit enabled at install');
    t.regex(await readlink(join(root, WANTS)), new RegExp(`^(/usr)?/lib/systemd/system/${UNIT}$`));
    const state = await stat(join(root, 'var/lib/loopship'));
    t.true(state.isDirectory());
    t.is(state.mode & 0o7777, 0o700, "the state dir is the agent's alone");
    t.true(existsSync(join(root, 'usr/share/man/man8/loopship-agent.8.gz')));
    const example = await readFile(join(root, 'etc/loopship/agent.yaml'), 'utf8');
    t.is(YAML.parse(example), null, 'the shipped agent.yaml is inactive (all comments)');
    // the drop-in's start condition: skipped while unconfigured
    t.not((await inRoot(root, ['/bin/sh', '-c', 'grep -Eq "^repos:" /etc/loopship/agent.yaml'])).exitCode, 0);

    // unit file (with the Debian drop-in) passes systemd's own checks, inside the root
    const verify = await inRoot(root, ['systemd-analyze', 'verify', `/usr/lib/systemd/system/${UNIT}`]);
    ok(t, verify, 'systemd-analyze verify');
    t.notRegex(verify.all ?? '', /loopship-agent/i, `systemd-analyze complained about the unit:\n${verify.all}`);

    // the admin edits the conffile and leaves state behind, as a running host would
    const edited = 'repos:\n  - /srv/loopship\ntrust:\n  root_fingerprint: 0123456789abcdef0123456789abcdef01234567\n';
    await writeFile(join(root, 'etc/loopship/agent.yaml'), edited);
    await mkdir(join(root, 'var/lib/loopship/appliances/tiny/1.0.0'), { recursive: true });
    await writeFile(join(root, 'var/lib/loopship/appliances/tiny/1.0.0/disk.img'), 'image');
    await mkdir(join(root, 'etc/xen/auto'), { recursive: true });
    await writeFile(join(root, 'etc/xen/tiny.cfg'), '# generated by loopship-agent for tiny 1.0.0: do not edit, it is rewritten on every start\nname = "tiny"\n');
    await symlink('/etc/xen/tiny.cfg', join(root, 'etc/xen/auto/tiny.cfg'));
    await writeFile(join(root, 'etc/xen/mine.cfg'), 'name = "mine"\n');

    // upgrade: new version, the edited conffile kept (unchanged in the package: no prompt)
    ok(t, await inRoot(root, ['dpkg', '-i', '/tmp/v2.deb']), 'upgrade');
    const v = await inRoot(root, ['dpkg-query', '-W', '-f', '${Version}', 'loopship-agent']);
    t.is(v.stdout, `0.1.0-2+node${process.versions.node.split('.')[0]}`);
    t.is(await readFile(join(root, 'etc/loopship/agent.yaml'), 'utf8'), edited);
    t.true(existsSync(join(root, 'var/lib/loopship/appliances/tiny/1.0.0/disk.img')), 'state survives an upgrade');
    t.true((await lstat(join(root, WANTS))).isSymbolicLink(), 'still enabled after the upgrade');
    const version = await inRoot(root, ['loopship-agent', '--version']);
    ok(t, version, 'agent after upgrade');
    t.is(version.stdout.trim(), v.stdout, '--version names the installed package');
    t.is((await inRoot(root, ['/bin/sh', '-c', 'grep -Eq "^repos:" /etc/loopship/agent.yaml'])).exitCode, 0, 'configured: the unit would start');

    // remove keeps config and state; purge removes them, and only what the agent generated in /etc/xen
    ok(t, await inRoot(root, ['dpkg', '--remove', 'loopship-agent']), 'dpkg --remove');
    t.false(existsSync(join(root, 'usr/bin/loopship-agent')));
    t.false(existsSync(join(root, 'usr/lib/loopship-agent')));
    t.true(existsSync(join(root, 'etc/loopship/agent.yaml')));
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

maybe('the preseed late_command installs the agent, pins the root, declares appliances and enables the unit', async (t) => {
  const fx = await makeRepo();
  await publishExt4(fx, 'thin-client', '1.0.0', { channel: 'stable' });
  const server = await serveDir(fx.repoDir);
  const root = await freshRoot(t, 'preseed');
  const media = join(work, 'cdrom');
  try {
    await mkdir(join(media, 'loopship'), { recursive: true });
    await copyFile(debs[0], join(media, 'loopship', basename(debs[0])));
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
