import test from 'ava';
import { mkdtemp, writeFile, rm, mkdir, symlink, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { StateDir } from '../../client-agent/state.js';
import { withMountedImage, cleanStale, listMounts, loopsFor } from '../../client-agent/mount.js';
import { writeHostSettings, planHostFiles } from '../../client-agent/configure.js';
import { defaultExec } from '../../client-agent/exec.js';
import type { Manifest } from '../../format/index.js';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBJqRCGpQXYEvvN2xu3HgHFWp4oeW6J7rTLxqxwVTqQm ops@site';

const manifest = {
  name: 'sbc', version: '1.0.0',
  settings: {
    hostname: { type: 'hostname' },
    'network.address': { type: 'cidr' },
    'network.gateway': { type: 'ip' },
    'network.dns': { type: 'ip-list' },
    'ssh.authorized_keys': { type: 'ssh-keys' },
    'broker.url': { type: 'url' },
  },
} as unknown as Manifest;

const settings = {
  hostname: 'ts1.example.org',
  'network.address': '192.0.2.10/24',
  'network.gateway': '192.0.2.1',
  'network.dns': '192.0.2.53,192.0.2.54',
  'ssh.authorized_keys': KEY,
  'broker.url': 'https://broker.example.org/',
};

/** A real ext4 image, made like the builder makes them: mkfs.ext4 -d from a tree. */
async function makeImage(t: import('ava').ExecutionContext, tree: (root: string) => Promise<void>, sizeMiB = 8) {
  const dir = await mkdtemp(join(tmpdir(), 'agent-cfg-img-'));
  const state = new StateDir(join(dir, 'state'));
  await state.init();
  const root = join(dir, 'rootfs');
  await mkdir(join(root, 'etc', 'network'), { recursive: true });
  await writeFile(join(root, 'etc', 'hosts'), '127.0.0.1\tlocalhost\n127.0.1.1\tbuildhost\n::1\tlocalhost\n');
  await writeFile(join(root, 'etc', 'hostname'), 'buildhost\n');
  await writeFile(join(root, 'etc', 'network', 'interfaces'), 'source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n');
  await mkdir(join(root, 'root'), { mode: 0o700 });
  await tree(root);
  const image = join(dir, 'state', 'disk.img');
  await execa('mkfs.ext4', ['-q', '-F', '-d', root, image, `${sizeMiB}M`]);
  t.teardown(async () => {
    // whatever happened, leave nothing attached
    for (const dev of await loopsFor(defaultExec, image).catch(() => [])) await execa('losetup', ['-d', dev]).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });
  return { dir, image, state };
}

async function debugfsCat(image: string, path: string): Promise<string> {
  return (await execa('debugfs', ['-R', `cat ${path}`, image])).stdout;
}
async function debugfsMode(image: string, path: string): Promise<string> {
  const out = (await execa('debugfs', ['-R', `stat ${path}`, image])).stdout;
  return /Mode:\s+(\d+)/.exec(out)?.[1] ?? '';
}

async function assertNothingLeft(t: import('ava').ExecutionContext, image: string, state: StateDir) {
  t.deepEqual(await loopsFor(defaultExec, image), [], 'no loop device left on the image');
  const prefix = resolve(state.root) + '/';
  t.deepEqual((await listMounts()).filter((m) => m.startsWith(prefix)), [], 'nothing mounted under the state dir');
  t.deepEqual(await readdir(state.mntDir), [], 'no mount point or record left');
}

test.serial('configure writes hostname, hosts, network, SSH keys and host.json into a real ext4 image, then detaches', async (t) => {
  const { image, state } = await makeImage(t, async () => {});
  const files = await withMountedImage({ exec: defaultExec, state }, image, 'sbc', async (mp) => {
    t.true((await listMounts()).includes(mp), 'mounted while configuring');
    return writeHostSettings(mp, manifest, settings, { host: 'dom0-a', configuredAt: '2026-01-01T00:00:00Z' });
  });
  await assertNothingLeft(t, image, state);
  t.deepEqual(files, ['/etc/hostname', '/etc/hosts', '/etc/systemd/network/10-loopship.network', '/etc/network/interfaces.d/loopship', '/root/.ssh/authorized_keys', '/etc/loopship/host.json']);
  t.is(await debugfsCat(image, '/etc/hostname'), 'ts1.example.org');
  const hosts = await debugfsCat(image, '/etc/hosts');
  t.regex(hosts, /^127\.0\.0\.1\tlocalhost\n127\.0\.1\.1\tts1\.example\.org ts1\n::1\tlocalhost$/);
  t.notRegex(hosts, /buildhost/);
  const nd = await debugfsCat(image, '/etc/systemd/network/10-loopship.network');
  t.regex(nd, /Address=192\.0\.2\.10\/24\nGateway=192\.0\.2\.1\nDNS=192\.0\.2\.53\nDNS=192\.0\.2\.54/);
  t.notRegex(nd, /DHCP/);
  t.regex(await debugfsCat(image, '/etc/network/interfaces.d/loopship'), /iface eth0 inet static\n\taddress 192\.0\.2\.10\/24\n\tgateway 192\.0\.2\.1\n\tdns-nameservers 192\.0\.2\.53 192\.0\.2\.54/);
  t.is(await debugfsCat(image, '/root/.ssh/authorized_keys'), KEY);
  t.is(await debugfsMode(image, '/root/.ssh/authorized_keys'), '0600');
  t.is(await debugfsMode(image, '/root/.ssh'), '0700');
  const host = JSON.parse(await debugfsCat(image, '/etc/loopship/host.json'));
  t.deepEqual(host.settings, settings);
  t.is(host.host, 'dom0-a');
  t.is(await debugfsMode(image, '/etc/loopship/host.json'), '0600');
  // the filesystem is clean after our unmount
  await t.notThrowsAsync(execa('e2fsck', ['-n', '-f', image]));
});

test.serial('a write failing midway (symlink out of the image) is a clear error; unmounted, detached, host untouched', async (t) => {
  const outside = await mkdtemp(join(tmpdir(), 'agent-outside-'));
  t.teardown(() => rm(outside, { recursive: true, force: true }));
  const { image, state } = await makeImage(t, async (root) => {
    await symlink(outside, join(root, 'root', '.ssh'));
  });
  const err = await t.throwsAsync(
    withMountedImage({ exec: defaultExec, state }, image, 'sbc', (mp) => writeHostSettings(mp, manifest, settings, { host: 'h', configuredAt: 'now' })),
  );
  t.regex(err!.message, /refusing to write through the symlink \/root\/\.ssh in the image/);
  t.deepEqual(await readdir(outside), [], 'nothing written on the host');
  await assertNothingLeft(t, image, state);
  // the files before the failure were written whole (tmp + rename), the rest not at all
  t.is(await debugfsCat(image, '/etc/hostname'), 'ts1.example.org');
});

test.serial('an image that is full: clear error, nothing left attached', async (t) => {
  const { image, state } = await makeImage(t, async () => {}, 2);
  // fill it up through a mount of our own
  await withMountedImage({ exec: defaultExec, state }, image, 'fill', async (mp) => {
    await execa('dd', ['if=/dev/zero', `of=${join(mp, 'fill')}`, 'bs=64k'], { reject: false });
  });
  const big = { ...settings, 'ssh.authorized_keys': Array(2000).fill(KEY).join('\n') };
  const err = await t.throwsAsync(
    withMountedImage({ exec: defaultExec, state }, image, 'sbc', (mp) => writeHostSettings(mp, manifest, big, { host: 'h', configuredAt: 'now' })),
  );
  t.regex(err!.message, /cannot write .* into the image: ENOSPC \(image full\)/);
  await assertNothingLeft(t, image, state);
});

test.serial('stale loop devices and mounts of a killed run are found and cleaned at the next start', async (t) => {
  const { image, state } = await makeImage(t, async () => {});
  // a "killed agent": a process that recorded, attached and mounted, then died (kill -9)
  const child = execa('sleep', ['60']);
  const deadPid = child.pid!;
  const id = `sbc-${deadPid}-dead`;
  const mountPoint = join(resolve(state.mntDir), id);
  await mkdir(mountPoint);
  const dev = (await execa('losetup', ['--find', '--show', image])).stdout.trim();
  await writeFile(join(state.mntDir, `${id}.json`), JSON.stringify({ pid: deadPid, image: resolve(image), mountPoint, device: dev }));
  await execa('mount', [dev, mountPoint]);
  child.kill('SIGKILL');
  await child.catch(() => {});
  // and one with no record at all (the record was lost)
  const orphan = join(resolve(state.mntDir), 'orphan');
  await mkdir(orphan);
  await execa('mount', ['-t', 'tmpfs', 'none', orphan]);

  t.deepEqual(await loopsFor(defaultExec, image), [dev]);
  const cleaned = await cleanStale({ exec: defaultExec, state });
  t.deepEqual(cleaned.sort(), [mountPoint, orphan].sort());
  await assertNothingLeft(t, image, state);
});

test.serial('a live run\'s mount is left alone by cleanStale', async (t) => {
  const { image, state } = await makeImage(t, async () => {});
  await withMountedImage({ exec: defaultExec, state }, image, 'sbc', async (mp) => {
    // another agent process would see our record with our live pid... simulate by a foreign live pid
    const recs = (await readdir(state.mntDir)).filter((e) => e.endsWith('.json'));
    const rec = JSON.parse(await readFile(join(state.mntDir, recs[0]), 'utf8'));
    rec.pid = process.ppid; // alive, not us
    await writeFile(join(state.mntDir, recs[0]), JSON.stringify(rec));
    t.deepEqual(await cleanStale({ exec: defaultExec, state }), []);
    t.true((await listMounts()).includes(mp));
  });
  await assertNothingLeft(t, image, state);
});

test('host files for DHCP: no address means DHCP, declared network settings only', (t) => {
  const files = planHostFiles(manifest, { hostname: 'a' }, { hosts: null, hasIfupdown: false }, { host: 'h', configuredAt: 'now' });
  t.deepEqual(files.map((f) => f.path), ['/etc/hostname', '/etc/hosts', '/etc/systemd/network/10-loopship.network', '/etc/loopship/host.json']);
  t.regex(files[2].content, /DHCP=yes/);
  const none = planHostFiles({ ...manifest, settings: { 'broker.url': { type: 'url' } } } as unknown as Manifest, {}, { hosts: null, hasIfupdown: true }, { host: 'h', configuredAt: 'now' });
  t.deepEqual(none.map((f) => f.path), ['/etc/loopship/host.json']);
});

test.serial('the image is mounted nodev, nosuid and noexec: a device node or setuid program in a signed image gives dom0 nothing', async (t) => {
  const { image, state } = await makeImage(t, async (root) => {
    await writeFile(join(root, 'suid'), '#!/bin/sh\nid\n', { mode: 0o4755 });
    await execa('mknod', [join(root, 'disk'), 'b', '8', '0']); // mkfs -d copies it into the image
  });
  const options = await withMountedImage({ exec: defaultExec, state }, image, 'sbc', async (mp) => {
    const opts = (await execa('findmnt', ['-n', '-o', 'OPTIONS', '--mountpoint', mp])).stdout.split(',');
    // the device node cannot be opened, the program cannot run
    await t.throwsAsync(readFile(join(mp, 'disk')), { code: 'EACCES' });
    await t.throwsAsync(execa(join(mp, 'suid')), { message: /EACCES|Permission denied/ });
    return opts;
  });
  for (const o of ['nodev', 'nosuid', 'noexec']) t.true(options.includes(o), `${o} in ${options.join(',')}`);
  await assertNothingLeft(t, image, state);
});
