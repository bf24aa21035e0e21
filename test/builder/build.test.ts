// Real builds of recipes/tiny (slow: minutes). Skipped with LOOPSHIP_FAST=1, when not
// root, or without debootstrap/qemu. The bootstrap cache (LOOPSHIP_TEST_CACHE, default
// /var/cache/loopship) is shared with normal builds, so only the first run is cold.
import test from 'ava';
import { mkdtemp, mkdir, cp, rm, readFile, writeFile, stat, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { build, mountsUnder, BootstrapCache, loadRecipe, resolveMirror, type BuildResult } from '../../builder/index.js';
import { ExecError, RepositoryWriter } from '../../format/index.js';
import { makeRepo, type Fixture } from '../helpers/repo.js';

const TINY = join(import.meta.dirname, '../../recipes/tiny');
const CACHE = process.env.LOOPSHIP_TEST_CACHE ?? '/var/cache/loopship';
const have = async (p: string) => execa('sh', ['-c', `command -v ${p}`]).then(() => true, () => false);
const slow = !process.env.LOOPSHIP_FAST && process.getuid?.() === 0 && (await have('debootstrap')) && (await have('qemu-system-x86_64'));
const slowTest = slow ? test.serial : test.serial.skip;

let fx: Fixture;
let work: string;
let built: BuildResult;

test.before(async () => {
  if (!slow) return;
  fx = await makeRepo();
  work = await mkdtemp(join(tmpdir(), 'loopship-build-test-'));
});
test.after.always(async () => {
  if (!slow) return;
  await fx?.cleanup();
  if (work && (await mountsUnder(work)).length === 0) await rm(work, { recursive: true, force: true });
});

async function debugfs(image: string, cmd: string): Promise<string> {
  return (await execa('debugfs', ['-R', cmd, image])).stdout;
}

slowTest('tiny builds into a repository: signed, indexed, clean reproducible ext4, no host identity inside', async (t) => {
  const stages: string[] = [];
  built = await build({
    recipe: TINY,
    output: {
      kind: 'repo',
      repoDir: fx.repoDir,
      channel: 'stable',
      publisherKey: await fx.keystore.privateKey(fx.keystore.find('publisher')),
      indexKeys: await fx.keystore.signingKeys('index'),
    },
    cacheDir: CACHE,
    workDir: work,
    keepWork: true,
    zstdLevel: 3,
    reporter: { stageStart: (s) => stages.push(s), stageEnd: () => undefined },
  });
  t.log(`stages: ${built.stages.map((s) => `${s.stage} ${s.seconds.toFixed(1)}s`).join(', ')}; ${built.stats?.chunks} chunks`);
  t.deepEqual(stages, ['recipe', 'bootstrap', 'customize', 'cleanup', 'image', 'package', 'publish']);
  t.deepEqual(await mountsUnder(work), []);

  // published and indexed
  const index = await new RepositoryWriter(fx.repoDir, { indexKeys: [] }).readIndex();
  t.is(index.images.tiny.channels.stable, '1.0.0');
  t.is(index.images.tiny.versions['1.0.0'].manifest, built.manifestSha256);
  const m = built.manifest!;
  t.is(m.image.uuid, built.uuid);
  t.is(m.boot.cmdline, `root=UUID=${built.uuid} ro quiet`);
  t.is(m.build.recipe_digest, (await loadRecipe(TINY)).digest);
  t.true(m.build.packages.some((p) => p.name === 'systemd-sysv'));
  t.true(m.build.packages.some((p) => p.name.startsWith('linux-image-') && p.name.endsWith('-cloud-amd64')));
  t.deepEqual(Object.keys(m.settings).sort(), ['hostname', 'network.address', 'network.dns', 'network.gateway', 'ssh.authorized_keys']);
  t.truthy(m.initrd);

  // the filesystem: consistent, the fixed UUID, no identity or build noise
  const img = built.image.path!;
  const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
  t.is(fsck.exitCode, 0, fsck.stdout + fsck.stderr);
  t.regex((await execa('dumpe2fs', ['-h', img])).stdout, new RegExp(`Filesystem UUID:\\s+${built.uuid}`));
  t.is(await debugfs(img, 'cat /etc/machine-id'), '');
  t.is(await debugfs(img, 'cat /etc/resolv.conf'), '');
  t.notRegex(await debugfs(img, 'ls /etc/ssh'), /ssh_host_/);
  t.notRegex(await debugfs(img, 'ls /var/lib/apt/lists'), /Packages/);
  t.regex(await debugfs(img, 'cat /etc/fstab'), new RegExp(`UUID=${built.uuid} / ext4`));
  const st = await debugfs(img, 'stat /etc/fstab');
  const mtime = parseInt(/mtime: 0x([0-9a-f]+)/.exec(st)![1], 16);
  t.true(mtime <= built.sourceDateEpoch, 'mtimes clamped to SOURCE_DATE_EPOCH');
});

/**
 * Boots a built image (a sparse copy) under QEMU TCG with host.json written in as the agent
 * would, until the ready marker; then `after` runs with the QMP socket, and QEMU is killed.
 */
async function bootImage(b: BuildResult, name: string, settings: Record<string, string>, after?: (qmp: string, log: string) => Promise<void>, cmdline = b.cmdline): Promise<{ console: string; seconds: number; disk: string; exited: boolean }> {
  const disk = join(work, `${name}.img`);
  await execa('cp', ['--sparse=always', b.image.path!, disk]);
  // what the agent writes (client-agent/configure.ts): settings as strings under "settings"
  const hostJson = join(work, `${name}.host.json`);
  await writeFile(hostJson, JSON.stringify({ appliance: b.manifest!.name, version: b.manifest!.version, settings }));
  await execa('debugfs', ['-w', '-R', `write ${hostJson} /etc/loopship/host.json`, disk]);
  const log = join(work, `${name}.console.log`);
  const qmp = join(work, `${name}.qmp`);
  const t0 = Date.now();
  const qemu = execa('qemu-system-x86_64', [
    '-accel', 'tcg', '-m', '512', '-nographic', '-no-reboot', '-display', 'none', '-monitor', 'none',
    '-kernel', b.kernel.path!, '-initrd', b.initrd.path!,
    '-append', `${cmdline} console=ttyS0`,
    '-drive', `file=${disk},format=raw,if=virtio`,
    // a NIC the cloud kernel drives, on a network of its own (no route anywhere)
    '-nic', 'user,model=virtio-net-pci,restrict=on',
    '-serial', `file:${log}`,
    '-qmp', `unix:${qmp},server=on,wait=off`,
  ], { reject: false });
  try {
    let text = '';
    while (Date.now() - t0 < 300_000) {
      text = await readFile(log, 'utf8').catch(() => '');
      if (/LOOPSHIP-READY/.test(text) || qemu.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    const seconds = (Date.now() - t0) / 1000;
    const exited = qemu.exitCode !== null;
    await after?.(qmp, log);
    return { console: await readFile(log, 'utf8'), seconds, disk, exited };
  } finally {
    qemu.kill('SIGKILL');
    await qemu;
  }
}

slowTest('the image boots under QEMU to the ready marker and applies host settings from /etc/loopship/host.json', async (t) => {
  t.truthy(built, 'needs the previous test');
  const boot = await bootImage(built, 'boot', { hostname: 'qemu-tiny', 'ssh.authorized_keys': 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuildTestKeyOnly test@loopship' });
  t.log(`boot to marker: ${boot.seconds.toFixed(0)} s (TCG)`);
  t.regex(boot.console, /LOOPSHIP-READY hostname=qemu-tiny version=1\.0\.0/);
  const disk = boot.disk;
  // first boot made this host's SSH keys and installed the authorized key (replay the
  // journal first: the VM was killed, and debugfs reads without replaying)
  const fsck = await execa('e2fsck', ['-fy', disk], { reject: false });
  t.true([0, 1].includes(fsck.exitCode ?? -1), fsck.stdout);
  const consoleTail = `console:\n${boot.console.slice(-3000)}`;
  t.regex(await debugfs(disk, 'ls /etc/ssh'), /ssh_host_ed25519_key/, consoleTail);
  t.regex(await debugfs(disk, 'cat /root/.ssh/authorized_keys'), /BuildTestKeyOnly/, consoleTail);
});

slowTest('boot.init busybox + boot.initrd minimal: no systemd, the builder\'s initrd; boots to the marker with host settings and powers off cleanly on an ACPI request', async (t) => {
  const dir = join(work, 'tiny-busybox');
  await cp(TINY, dir, { recursive: true });
  const recipe = (await readFile(join(dir, 'recipe.yaml'), 'utf8'))
    .replace('version: 1.0.0', 'version: 1.0.2')
    .replace(/packages:\n(  - .*\n)+/, 'packages: [jq]\n')
    .replace(/services:\n(  .*\n)+/, '')
    .replace('  cmdline: quiet\n', '  cmdline: quiet\n  init: busybox\n  initrd: minimal\n');
  await writeFile(join(dir, 'recipe.yaml'), recipe);
  // an appliance's own program: started at boot before the marker, stopped at shutdown
  await mkdir(join(dir, 'overlay/etc/loopship/init.d'), { recursive: true });
  await writeFile(join(dir, 'overlay/etc/loopship/init.d/50-demo'), '#!/bin/sh\necho "demo-service: $1" >/dev/console\n', { mode: 0o755 });
  const b = await build({
    recipe: dir,
    output: { kind: 'repo', repoDir: fx.repoDir, publisherKey: await fx.keystore.privateKey(fx.keystore.find('publisher')), indexKeys: await fx.keystore.signingKeys('index') },
    cacheDir: CACHE,
    workDir: work,
    keepWork: true,
  });
  const names = b.manifest!.build.packages.map((p) => p.name);
  t.true(names.includes('busybox'), 'busybox installed as the init');
  t.false(names.includes('systemd-sysv'));
  t.is(await debugfs(b.image.path!, 'stat /usr/sbin/init').then((s) => /Type: symlink/.test(s) && /Fast link dest: "\/bin\/busybox"/.test(s)), true);
  // the builder's initrd: busybox, its libraries and the block drivers; a fraction of Debian's
  const initrd = (await stat(b.initrd.path!)).size;
  t.true(initrd < 4 * 2 ** 20, `minimal initrd is ${initrd} bytes`);
  const list = (await execa('sh', ['-c', `zcat '${b.initrd.path}' | busybox cpio -it`])).stdout.split('\n');
  for (const f of ['init', 'bin/busybox', 'modules.order']) t.true(list.includes(f), `initrd has ${f}`);
  t.true(list.some((f) => f.endsWith('/xen-blkfront.ko')) && list.some((f) => f.endsWith('/virtio_blk.ko')), 'block drivers for Xen and QEMU');

  let exited = false;
  const boot = await bootImage(b, 'busybox', { hostname: 'bb-tiny', 'network.address': '192.0.2.7/24' }, async (qmp) => {
    // QEMU's system_powerdown (the agent's qemu backend stop): ACPI power button -> acpid ->
    // poweroff -> busybox init's shutdown; QEMU exits when the guest powers off (-no-reboot)
    const { qmpCommand } = await import('../../client-agent/backends/qemu.js');
    await qmpCommand(qmp, 'system_powerdown', 5000);
    for (let i = 0; i < 60 && !exited; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      exited = await qmpCommand(qmp, 'query-status', 2000).then(() => false, () => true);
    }
  });
  t.log(`busybox boot to marker: ${boot.seconds.toFixed(0)} s (TCG)`);
  t.is(boot.console.match(/LOOPSHIP-READY hostname=bb-tiny version=1\.0\.2/g)?.length, 1, boot.console.slice(-2000));
  const at = (s: string) => boot.console.indexOf(s);
  t.true(at('demo-service: start') >= 0 && at('demo-service: start') < at('LOOPSHIP-READY'), 'init.d programs start before the marker');
  t.true(at('demo-service: stop') > at('LOOPSHIP-READY'), 'and stop at shutdown');
  t.regex(boot.console, /loopship-host-config: eth0: 192\.0\.2\.7\/24/);
  t.true(exited, `the guest did not power off after system_powerdown:\n${boot.console.slice(-1500)}`);
  t.regex(boot.console, /reboot: Power down/);
  // an orderly shutdown left the filesystem clean: no journal to replay, nothing to fix
  const fsck = await execa('e2fsck', ['-fn', boot.disk], { reject: false });
  t.is(fsck.exitCode, 0, fsck.stdout);

  // a root filesystem that never appears: the initrd says which and powers the guest off
  // (QEMU exits: -no-reboot) instead of hanging until a health timeout
  const wrong = b.cmdline.replace(/root=UUID=[0-9a-f-]+/, 'root=UUID=00000000-0000-4000-8000-000000000000');
  t.not(wrong, b.cmdline);
  const lost = await bootImage(b, 'no-root', {}, undefined, `${wrong} loopship.rootwait=3`);
  t.true(lost.exited, `the guest did not power off:\n${lost.console.slice(-1500)}`);
  t.regex(lost.console, /loopship-initrd: root UUID=00000000-0000-4000-8000-000000000000 did not appear within 3 s/);
  t.notRegex(lost.console, /LOOPSHIP-READY/);
});

slowTest('a failing chroot command: stage named, nothing mounted, scratch removed, cache and repository untouched', async (t) => {
  const dir = join(work, 'bad-recipe');
  await cp(TINY, dir, { recursive: true });
  const yaml = (await readFile(join(dir, 'recipe.yaml'), 'utf8')).replace('version: 1.0.0', 'version: 1.0.1') + 'commands:\n  - echo boom >&2; exit 7\n';
  await writeFile(join(dir, 'recipe.yaml'), yaml);
  const recipe = (await loadRecipe(dir)).recipe;
  const mirror = await resolveMirror({ suite: recipe.base.suite });
  const cache = new BootstrapCache(CACHE, async () => ({ stdout: '' }));
  const entry = cache.entryPath({ suite: 'bookworm', mirror, variant: 'minbase', components: ['main'], snapshot: null, arch: 'amd64' });
  const before = await stat(entry);
  const indexBefore = await readFile(join(fx.repoDir, 'index.json'));
  const scratch = join(work, 'scratch');
  await mkdir(scratch);
  const err = await t.throwsAsync(
    build({
      recipe: dir,
      output: { kind: 'repo', repoDir: fx.repoDir, publisherKey: await fx.keystore.privateKey(fx.keystore.find('publisher')), indexKeys: await fx.keystore.signingKeys('index') },
      cacheDir: CACHE,
      workDir: scratch,
    }),
    { instanceOf: ExecError },
  );
  t.regex(err!.message, /^stage commands\[0\]: .*exited with status 7/s);
  t.regex(err!.message, /boom/);
  t.deepEqual(await mountsUnder(scratch), []);
  t.deepEqual(await readdir(scratch), [], 'scratch directory removed');
  const after = await stat(entry);
  t.is(after.size, before.size);
  t.is(after.mtimeMs, before.mtimeMs, 'cache entry not rewritten');
  t.deepEqual(await readFile(join(fx.repoDir, 'index.json')), indexBefore, 'repository index unchanged');
});
