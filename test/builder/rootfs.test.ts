import test from 'ava';
import { mkdtemp, mkdir, writeFile, rm, readFile, readdir, stat, lstat, symlink, utimes, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanRoot, clampAndMeasure, archiveDate, installedPackages, placeHostKeys, eatmydata } from '../../builder/rootfs.js';
import { chooseEpoch, snapshotMirror, parseRecipe, type LoadedRecipe } from '../../builder/index.js';
import type { Exec } from '../../builder/index.js';

const RECIPE = parseRecipe('name: t\nversion: 1.0.0\nbase: {suite: bookworm}\nboot: {kernel: linux-image-cloud-amd64}\n', 'r.yaml');

async function tree(t: import('ava').ExecutionContext, files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'loopship-rootfs-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  for (const [p, c] of Object.entries(files)) {
    await mkdir(join(root, p, '..'), { recursive: true });
    await writeFile(join(root, p), c);
  }
  return root;
}

test('cleanup removes identity and noise, keeps what services and licences need', async (t) => {
  const root = await tree(t, {
    'etc/machine-id': '0123456789abcdef0123456789abcdef\n',
    'var/lib/dbus/machine-id': 'x',
    'etc/ssh/ssh_host_ed25519_key': 'secret',
    'etc/ssh/ssh_host_ed25519_key.pub': 'pub',
    'etc/ssh/sshd_config': 'Port 22\n',
    'etc/resolv.conf': 'nameserver 10.0.0.1 # the build host\n',
    'var/lib/apt/lists/mirror_dists_bookworm_main_binary-amd64_Packages': 'Package: x',
    'var/cache/apt/pkgcache.bin': 'x',
    'var/cache/apt/archives/x.deb': 'x',
    'var/log/xrdp.log': 'old log line\n',
    'var/log/dpkg.log.1': 'rotated',
    'var/log/apt/history.log': 'install x',
    'var/log/journal/abc/system.journal': 'binary',
    'usr/share/doc/pkg/copyright': 'GPL',
    'usr/share/doc/pkg/changelog.gz': 'x',
    'usr/share/man/man1/x.1.gz': 'x',
    'usr/sbin/policy-rc.d': 'exit 101',
    'var/cache/ldconfig/aux-cache': 'x',
    'run/blkid/blkid.tab': '<device DEVNO="0x0700">/dev/loop0</device>',
    'run/systemd/netif/links/.keep': '',
  });
  await chmod(join(root, 'var/log/xrdp.log'), 0o640);
  await cleanRoot(root, RECIPE);
  t.is(await readFile(join(root, 'etc/machine-id'), 'utf8'), '', 'empty machine-id: first boot makes one');
  t.deepEqual((await readdir(join(root, 'etc/ssh'))).sort(), ['sshd_config']);
  t.is(await readFile(join(root, 'etc/resolv.conf'), 'utf8'), '');
  t.deepEqual(await readdir(join(root, 'var/lib/apt/lists')), []);
  t.deepEqual(await readdir(join(root, 'var/cache/apt')), ['archives']);
  t.deepEqual(await readdir(join(root, 'var/cache/apt/archives')), []);
  t.is(await readFile(join(root, 'var/log/xrdp.log'), 'utf8'), '', 'log emptied');
  t.is((await stat(join(root, 'var/log/xrdp.log'))).mode & 0o777, 0o640, 'but kept with its mode');
  t.is(await readFile(join(root, 'var/log/apt/history.log'), 'utf8'), '');
  t.false((await readdir(join(root, 'var/log'))).includes('dpkg.log.1'), 'rotated logs removed');
  t.deepEqual(await readdir(join(root, 'var/log/journal')), []);
  t.deepEqual(await readdir(join(root, 'usr/share/doc/pkg')), ['copyright']);
  t.deepEqual(await readdir(join(root, 'usr/share/man')), []);
  t.false((await readdir(join(root, 'usr/sbin'))).includes('policy-rc.d'));
  t.false((await readdir(join(root, 'var/lib/dbus'))).includes('machine-id'));
  t.deepEqual(await readdir(join(root, 'run')), [], "/run emptied: a tmpfs at boot, and the build host's blkid cache landed there");
});

test('times are clamped to the epoch, older ones kept, symlinks not followed; the tree is measured in blocks', async (t) => {
  const root = await tree(t, { 'new.txt': 'x'.repeat(5000), 'old.txt': 'y', 'd/e.txt': '' });
  const outside = await tree(t, { 'target.txt': 'outside' });
  await utimes(join(outside, 'target.txt'), 2_000_000_000, 2_000_000_000);
  await symlink(join(outside, 'target.txt'), join(root, 'link'));
  await utimes(join(root, 'old.txt'), 1000, 1000);
  const epoch = 1_700_000_000;
  const stats = await clampAndMeasure(root, epoch);
  t.is((await stat(join(root, 'new.txt'))).mtimeMs / 1000, epoch);
  t.is((await stat(join(root, 'old.txt'))).mtimeMs / 1000, 1000, 'older than the epoch: kept');
  t.is((await lstat(join(root, 'link'))).mtimeMs / 1000, epoch);
  t.is((await stat(join(outside, 'target.txt'))).mtimeMs / 1000, 2_000_000_000, 'symlink target outside untouched');
  t.is((await stat(join(root, 'd'))).mtimeMs / 1000, epoch);
  t.is(stats.files, 6); // root, d, d/e.txt, link, new.txt, old.txt
  t.is(stats.bytes, 5001);
  t.is(stats.blockBytes, 4096 * 2 /* dirs */ + 8192 /* new.txt */ + 4096 /* old.txt */);
});

test('SOURCE_DATE_EPOCH: environment, then recipe, then snapshot, then the archive date', (t) => {
  const loaded = (extra = ''): LoadedRecipe => ({ recipe: parseRecipe(`name: t\nversion: 1.0.0\nbase: {suite: bookworm${extra}}\nboot: {kernel: k}\n`, 'r'), file: 'r', dir: '.', overlayDir: null, digest: 'd' });
  t.is(chooseEpoch({ SOURCE_DATE_EPOCH: '1234' }, loaded(', snapshot: 20250520T000000Z'), 99), 1234);
  t.is(chooseEpoch({}, loaded(', snapshot: 20250520T000000Z'), 99), Date.UTC(2025, 4, 20) / 1000);
  t.is(chooseEpoch({}, loaded(), 99), 99);
  t.is(chooseEpoch({}, loaded(), null), 0);
  const withField = loaded();
  withField.recipe.source_date_epoch = 42;
  t.is(chooseEpoch({}, withField, 99), 42);
  t.throws(() => chooseEpoch({ SOURCE_DATE_EPOCH: 'yesterday' }, loaded(), 1), { message: /SOURCE_DATE_EPOCH must be a number/ });
});

test('snapshot mirrors need a {snapshot} placeholder', (t) => {
  t.is(snapshotMirror('http://m.example/debian', undefined), 'http://m.example/debian');
  t.is(snapshotMirror('http://s.example/archive/debian/{snapshot}', '20250520T000000Z'), 'http://s.example/archive/debian/20250520T000000Z');
  t.throws(() => snapshotMirror('http://m.example/debian', '20250520T000000Z'), { message: /no \{snapshot\} placeholder/ });
});

test('the archive date comes from the Release file the bootstrap fetched', async (t) => {
  const root = await tree(t, { 'var/lib/apt/lists/m_dists_bookworm_InRelease': 'Origin: Debian\nDate: Sat, 10 May 2025 08:52:37 UTC\nSuite: stable\n' });
  t.is(await archiveDate(root), Date.UTC(2025, 4, 10, 8, 52, 37) / 1000);
  t.is(await archiveDate(join(root, 'nowhere')), null);
});

test('package facts: installed only, sorted, native arch qualifier dropped', async (t) => {
  const exec: Exec = async () => ({ stdout: 'zlib1g:amd64\t1:1.2.13\tii \nbash\t5.2.15-2\tii \nlibc6:i386\t2.36\tii \nremoved\t1.0\trc \n' });
  t.deepEqual(await installedPackages('/x', exec, 'amd64'), [
    { name: 'bash', version: '5.2.15-2' },
    { name: 'libc6:i386', version: '2.36' },
    { name: 'zlib1g', version: '1:1.2.13' },
  ]);
});

test('SSH host key placeholders: empty files stop the package from generating keys, and only they go again', async (t) => {
  // a root without /etc/ssh (no openssh installed): the directory goes too
  const bare = await tree(t, { 'etc/hostname': 'x\n' });
  const p1 = await placeHostKeys(bare);
  t.deepEqual((await readdir(join(bare, 'etc/ssh'))).sort(), ['ssh_host_dsa_key', 'ssh_host_ecdsa_key', 'ssh_host_ed25519_key', 'ssh_host_rsa_key']);
  t.is((await stat(join(bare, 'etc/ssh/ssh_host_rsa_key'))).size, 0);
  await p1.remove();
  t.deepEqual(await readdir(join(bare, 'etc')), ['hostname']);

  // an existing key is never touched; a placeholder something wrote a key into stays
  const root = await tree(t, { 'etc/ssh/sshd_config': 'Port 22\n', 'etc/ssh/ssh_host_ed25519_key': 'real key' });
  const p2 = await placeHostKeys(root);
  await writeFile(join(root, 'etc/ssh/ssh_host_ecdsa_key'), 'written by a package');
  await writeFile(join(root, 'etc/ssh/ssh_config'), 'installed meanwhile');
  await p2.remove();
  t.deepEqual((await readdir(join(root, 'etc/ssh'))).sort(), ['ssh_config', 'ssh_host_ecdsa_key', 'ssh_host_ed25519_key', 'sshd_config']);
  t.is(await readFile(join(root, 'etc/ssh/ssh_host_ed25519_key'), 'utf8'), 'real key');
});

test('eatmydata: the host library is preloaded through env(1) inside the chroot only when it loads there', async (t) => {
  const root = await tree(t, { 'etc/hostname': 'x\n' });
  // as on Debian: libeatmydata.so.1 is a symlink to the versioned file
  const lib = join(root, '..', `${root.split('/').pop()}-libeatmydata.so.1`);
  await writeFile(`${lib}.3.0`, 'ELF...');
  await symlink(`${lib}.3.0`, lib);
  t.teardown(() => Promise.all([rm(lib, { force: true }), rm(`${lib}.3.0`, { force: true })]));
  const calls: string[][] = [];
  const loads: Exec = async (file, args) => {
    calls.push([file, ...args]);
    return { stdout: '' };
  };
  const eat = await eatmydata(root, 'amd64', loads, {}, lib);
  t.deepEqual(eat.prefix, ['/usr/bin/env', 'LD_PRELOAD=/tmp/loopship-eatmydata/libeatmydata.so']);
  t.deepEqual(calls, [['chroot', root, '/usr/bin/env', 'LD_PRELOAD=/tmp/loopship-eatmydata/libeatmydata.so', '/bin/true']], 'probed inside the chroot');
  t.is(await readFile(join(root, 'tmp/loopship-eatmydata/libeatmydata.so'), 'utf8'), 'ELF...');
  t.true((await lstat(join(root, 'tmp/loopship-eatmydata/libeatmydata.so'))).isFile(), 'a copy: a link to a host path would not resolve in the chroot');
  await eat.remove();
  t.deepEqual(await readdir(join(root, 'tmp')), []);

  // ld.so cannot preload it in this chroot (it only warns): apt runs without it, nothing left behind
  const warns: Exec = async (_file, _args, opts) => {
    opts?.onLine?.("ERROR: ld.so: object '/tmp/loopship-eatmydata/libeatmydata.so' from LD_PRELOAD cannot be preloaded: ignored.");
    return { stdout: '' };
  };
  const none = await eatmydata(root, 'amd64', warns, {}, lib);
  t.deepEqual(none.prefix, []);
  t.deepEqual(await readdir(join(root, 'tmp')), []);
  // no library on the host, or the probe fails: the same
  t.deepEqual((await eatmydata(root, 'amd64', loads, {}, join(root, 'missing.so'))).prefix, []);
  const fails: Exec = async () => {
    throw new Error('exit 127');
  };
  t.deepEqual((await eatmydata(root, 'amd64', fails, {}, lib)).prefix, []);
});
