// A hostile state directory: the agent runs as root, so whatever was planted in
// /var/lib/loopship (a symlink, a hard link, a symlinked directory where the resume path
// opens its files) must be refused with an error naming it, and the file it points at,
// outside the state dir, must stay byte-identical. And the secrets the agent keeps
// (password hashes in state.json, report.token in agent.yaml) are never world-readable.
// The staging dir is planted as a killed install leaves it: manifest.json with the
// verified manifest's digest and a journal, which is what makes install.ts resume it.
import test, { type ExecutionContext } from 'ava';
import { chmod, chown, link, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { createPackage, manifestPath } from '../../format/index.js';
import { StateDir } from '../../client-agent/state.js';
import { baseManifest, seeded } from '../helpers/repo.js';
import { FakeBackend } from '../agent/fakes.js';
import { buildWorld, copyHost, agentFor, runningBackend, fileSha, sha256, type World, type Host } from './harness.js';

/** An appliance whose manifest accepts a password hash setting, as sbc-desktop's does. */
async function publishDesk(world: World): Promise<void> {
  const work = await mkdtemp(join(world.dir, 'desk-'));
  const root = join(work, 'rootfs');
  await mkdir(join(root, 'etc'), { recursive: true });
  await writeFile(join(root, 'etc', 'hostname'), 'buildhost\n');
  await writeFile(join(root, 'etc', 'hosts'), '127.0.0.1\tlocalhost\n');
  const image = join(work, 'disk.img');
  await execa('mkfs.ext4', ['-q', '-F', '-d', root, image, '8M']);
  await writeFile(join(work, 'vmlinuz'), seeded('desk-kernel', 50_000));
  const manifest = baseManifest('desk', '1.0.0');
  manifest.settings = { hostname: { type: 'hostname', required: false }, 'users.password_hashes': { type: 'string' } } as typeof manifest.settings;
  const tarPath = join(work, 'desk.tar');
  const publisherKey = await world.fx.keystore.privateKey(world.fx.keystore.find('publisher'));
  await createPackage({ manifest, imagePath: image, kernelPath: join(work, 'vmlinuz'), publisherKey, out: { tarPath } });
  await world.fx.writer.addPackage(createReadStream(tarPath), { channel: 'stable' });
}

const worldP = buildWorld().then(async (w) => {
  await publishDesk(w);
  return w;
});
test.after.always(async () => (await worldP.catch(() => null))?.cleanup());

const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;

/** A file outside the state dir that root must never write: its path, and its sha256 now. */
async function victim(world: World, name: string): Promise<{ path: string; sha: string }> {
  await mkdir(join(world.dir, 'victims'), { recursive: true });
  const path = join(world.dir, 'victims', name);
  await writeFile(path, `${name}: precious, not the agent's\n`);
  return { path, sha: await fileSha(path) };
}

/** appliances/sbc/.staging/2.0.0 as a killed install of 2.0.0 leaves it: resumable. */
async function plantStaging(world: World, dir: string): Promise<void> {
  const manifest = await readFile(join(world.repoDir, manifestPath(world.manifests.sbc2)));
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'manifest.json'), manifest);
  await writeFile(join(dir, 'done.log'), `manifest ${sha256(manifest)}\n`);
}

const stagingOf = (host: Host): string => join(host.stateDir, 'appliances', 'sbc', '.staging', '2.0.0');

/** The next install (of 2.0.0, resuming the staging dir) fails: STATE_UNSAFE, naming `planted`. */
async function installRefused(t: ExecutionContext, world: World, host: Host, planted: string): Promise<void> {
  const agent = agentFor(host, runningBackend(world, host));
  const err = await t.throwsAsync(agent.install('sbc@2.0.0', { start: false }));
  t.is((err as { code?: string }).code, 'STATE_UNSAFE', err?.message);
  t.true(err?.message.includes(planted), `the error names ${planted}: ${err?.message}`);
  if (err) t.log(err.message);
}

test('a symlink planted as the staging verified.img is refused; its target is untouched; removed, the install completes', async (t) => {
  const world = await worldP;
  const host = await copyHost(world, 'symlink-image');
  const target = await victim(world, 'symlink-image');
  await plantStaging(world, stagingOf(host));
  const planted = join(stagingOf(host), 'verified.img');
  await symlink(target.path, planted);
  await installRefused(t, world, host, planted);
  t.is(await fileSha(target.path), target.sha, 'the file the link points at is byte-identical');
  t.true((await lstat(planted)).isSymbolicLink(), 'the planted link is left for a human to look at');

  await rm(planted);
  await agentFor(host, runningBackend(world, host)).install('sbc@2.0.0', { start: false });
  t.is(await fileSha(join(host.stateDir, 'appliances', 'sbc', '2.0.0', 'verified.img')), world.sbc2ImageSha);
  t.is(await fileSha(target.path), target.sha);
});

test('a symlink planted as the staging disk.img (the boot disk) is refused; its target is untouched', async (t) => {
  const world = await worldP;
  const host = await copyHost(world, 'symlink-disk');
  const target = await victim(world, 'symlink-disk');
  await plantStaging(world, stagingOf(host));
  const planted = join(stagingOf(host), 'disk.img');
  await symlink(target.path, planted);
  await installRefused(t, world, host, planted);
  t.is(await fileSha(target.path), target.sha);
});

test('a hard link planted as the staging verified.img is refused; the other name\'s file is untouched', async (t) => {
  const world = await worldP;
  const host = await copyHost(world, 'hardlink');
  const target = await victim(world, 'hardlink');
  await plantStaging(world, stagingOf(host));
  const planted = join(stagingOf(host), 'verified.img');
  await link(target.path, planted);
  await installRefused(t, world, host, planted);
  t.is(await fileSha(target.path), target.sha);
  t.is((await stat(target.path)).size, (await readFile(target.path)).length);
});

test('a staging dir planted as a symlink to a directory elsewhere is refused; nothing is written there', async (t) => {
  const world = await worldP;
  const host = await copyHost(world, 'symlink-dir');
  const elsewhere = join(world.dir, 'victims', 'staging-elsewhere');
  await plantStaging(world, elsewhere);
  const before = (await readdir(elsewhere)).sort();
  await mkdir(join(stagingOf(host), '..'), { recursive: true });
  await symlink(elsewhere, stagingOf(host));
  await installRefused(t, world, host, stagingOf(host));
  t.deepEqual((await readdir(elsewhere)).sort(), before, 'no image, boot disk or journal written through the link');
});

test('the state dir is created 0700 (subdirectories too), and an existing 0755 one is tightened', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-statedir-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // a fresh host's first command
  const agent = agentFor({ dir, configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), consoleDir: join(dir, 'console') }, new FakeBackend(join(dir, 'console')));
  await agent.locked(async () => {});
  const state = new StateDir(join(dir, 'state'));
  for (const d of [state.root, state.trustDir, state.appliancesDir, state.mntDir, state.runDir, state.logDir]) t.is(await mode(d), 0o700, d);
  // what an older agent (or a package's postinst) made
  const old = join(dir, 'old');
  await mkdir(old);
  await chmod(old, 0o755);
  await new StateDir(old).init();
  t.is(await mode(old), 0o700);
});

test('a state dir owned by another user is refused, naming it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-statedir-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const theirs = join(dir, 'theirs');
  await mkdir(theirs, { mode: 0o700 });
  await chown(theirs, 65534, 65534);
  const err = await t.throwsAsync(new StateDir(theirs).init());
  t.is((err as { code?: string }).code, 'STATE_UNSAFE');
  t.true(err?.message.includes(theirs), err?.message);
  t.is((await stat(theirs)).uid, 65534, 'not taken over');
});

test('state.json, which keeps --set values such as password hashes, is 0600 after configure --set', async (t) => {
  const world = await worldP;
  const host = await copyHost(world, 'password');
  const agent = agentFor(host, new FakeBackend(host.consoleDir)); // nothing running: configure may mount
  await agent.install('desk', { start: false });
  const stateFile = join(host.stateDir, 'state.json');
  await chmod(stateFile, 0o644); // as an older agent left it
  const hash = `$6$loopshipsalt$${'Q'.repeat(86)}`;
  await agent.configure('desk', { set: { 'users.password_hashes': `alice:${hash}` } });
  t.true((await readFile(stateFile, 'utf8')).includes(hash), 'the premise: state.json keeps the hash');
  t.is(await mode(stateFile), 0o600);
  t.is(await mode(host.stateDir), 0o700);
});

test('agent.yaml holding report.token stays 0600 through init, and a 0644 one is tightened', async (t) => {
  const world = await worldP;
  const host = await copyHost(world, 'token');
  const token = 'SITE-TOKEN-not-for-other-users';
  await writeFile(host.configPath, (await readFile(host.configPath, 'utf8')) + `report: { url: "https://repo.example/", token: ${token} }\n`);
  const init = () => agentFor(host, runningBackend(world, host)).init({ repos: [world.repoDir], rootKeyFile: join(host.dir, 'root.asc') });
  await chmod(host.configPath, 0o600);
  await init();
  t.true((await readFile(host.configPath, 'utf8')).includes(token));
  t.is(await mode(host.configPath), 0o600, 'kept 0600');
  await chmod(host.configPath, 0o644);
  await init();
  t.is(await mode(host.configPath), 0o600, 'a file holding the token is written 0600');
});

test('a planted mount record is refused, not acted on: a mount point outside mnt/ (also via mnt/..), an image outside the state dir', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-mnt-rec-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const state = new StateDir(join(dir, 'state'));
  await state.init();
  const { cleanStale } = await import('../../client-agent/mount.js');
  const { defaultExec } = await import('../../client-agent/exec.js');
  const calls: string[][] = [];
  const exec: typeof defaultExec = async (cmd, args, o) => {
    calls.push([cmd, ...args]);
    return defaultExec(cmd, args, o);
  };
  const planted = [
    { pid: 999999, image: join(state.root, 'x.img'), mountPoint: join(state.mntDir, '..'), device: null },
    { pid: 999999, image: '/var/lib/xen/images/other-guest.img', mountPoint: join(state.mntDir, 'x'), device: null },
  ];
  for (const rec of planted) {
    await writeFile(join(state.mntDir, 'evil.json'), JSON.stringify(rec), { mode: 0o600 });
    const err = (await t.throwsAsync(cleanStale({ exec, state }))) as Error & { code?: string };
    t.is(err.code, 'STATE_UNSAFE', err.message);
    t.regex(err.message, /mnt\/evil\.json: names the (mount point|image)/);
    t.false(calls.some(([c, ...a]) => c === 'losetup' && a.includes('--detach')), 'nothing detached');
    t.false(calls.some(([c]) => c === 'umount'), 'nothing unmounted');
  }
});
