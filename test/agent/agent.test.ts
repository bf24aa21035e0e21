// The agent's operations end to end against a real signed repository (directory and HTTP),
// with real ext4 images (mkfs.ext4 -d), real loop mounts, and a fake boot backend.
import test from 'ava';
import { mkdtemp, writeFile, rm, mkdir, readFile, readdir, open } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { Agent } from '../../client-agent/agent.js';
import { loopsFor, listMounts } from '../../client-agent/mount.js';
import { defaultExec } from '../../client-agent/exec.js';
import { makeRepo, serveDir, type Fixture } from '../helpers/repo.js';
import { publishExt4 as publishAny } from './ext4.js';

const publishExt4 = (fx: Fixture, version: string, opts: { motd?: string; channel?: string } = {}) => publishAny(fx, 'sbc', version, opts);
import { FakeBackend } from './fakes.js';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBJqRCGpQXYEvvN2xu3HgHFWp4oeW6J7rTLxqxwVTqQm ops@site';

async function setup(t: import('ava').ExecutionContext, opts: { repoUrl?: (fx: Fixture) => Promise<string> } = {}) {
  const fx = await makeRepo();
  const dir = await mkdtemp(join(fx.dir, 'host-'));
  const stateDir = join(dir, 'state');
  t.teardown(async () => {
    for (const dev of (await execa('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'])).stdout.split('\n')) {
      const [d, f] = dev.trim().split(/\s+/);
      if (f?.startsWith(dir)) await execa('losetup', ['-d', d]).catch(() => {});
    }
    await fx.cleanup();
  });
  const keyFile = join(dir, 'root.asc');
  await writeFile(keyFile, fx.rootKeyArmored);
  const configPath = join(dir, 'agent.yaml');
  await writeFile(configPath, [
    `repos: [${fx.repoDir}]`,
    `trust: { root_key_file: ${keyFile} }`,
    'health_timeout_s: 2',
    'appliances:',
    '  - name: sbc',
    '    channel: stable',
    '    data_size: 16M',
    '    settings: { hostname: ts1.example.org }',
  ].join('\n') + '\n');
  const backend = new FakeBackend(join(dir, 'console'));
  const logs: string[] = [];
  const agent = new Agent({ configPath, stateDir, backend, host: 'dom0-test', log: (l) => logs.push(l) });
  const repo = opts.repoUrl ? await opts.repoUrl(fx) : fx.repoDir;
  return { fx, dir, stateDir, configPath, keyFile, backend, agent, logs, repo };
}

async function nothingAttached(t: import('ava').ExecutionContext, stateDir: string) {
  const prefix = resolve(stateDir) + '/';
  t.deepEqual((await listMounts()).filter((m) => m.startsWith(prefix)), []);
  const out = (await execa('losetup', ['-l', '-n', '-O', 'BACK-FILE'])).stdout;
  t.false(out.includes(prefix), 'no loop device backed by the state dir');
}

const hostnameIn = async (disk: string) => (await execa('debugfs', ['-R', 'cat /etc/hostname', disk])).stdout.trim();

test('init, install, configure, boot; upgrade; failed upgrade rolls back; rollback; verify; gc; remove', async (t) => {
  const { fx, stateDir, configPath, keyFile, backend, agent, logs } = await setup(t);
  await publishExt4(fx, '1.0.0', { channel: 'stable' });

  // init keeps the appliances already in the config and pins the root
  const init = await agent.init({ repos: [fx.repoDir], rootKeyFile: keyFile });
  t.is(init.root_version, 1);
  t.regex(await readFile(configPath, 'utf8'), /name: sbc/);
  t.true(existsSync(join(stateDir, 'trust', 'root.json')));

  // install: fetch, verify, configure, boot, healthy
  const inst = await agent.install('sbc', { set: { 'ssh.authorized_keys': KEY } });
  t.is(inst.current, '1.0.0');
  t.true(inst.health?.ready);
  const v1disk = join(stateDir, 'appliances', 'sbc', '1.0.0', 'disk.img');
  t.is(await hostnameIn(v1disk), 'ts1.example.org');
  t.is((await execa('debugfs', ['-R', 'cat /root/.ssh/authorized_keys', v1disk])).stdout.trim(), KEY);
  t.regex(await readFile(backend.consoleLog('sbc'), 'utf8'), /hostname: ts1\.example\.org\nLOOPSHIP-READY/);
  t.is(backend.starts.at(-1)!.dataDisk, join(stateDir, 'appliances', 'sbc', 'data.img'));
  t.is(backend.starts.at(-1)!.disk, v1disk);
  t.regex(backend.starts.at(-1)!.macs[0], /^00:16:3e:/);
  t.true(backend.autostart.get('sbc'));
  await nothingAttached(t, stateDir);
  let [st] = await agent.status();
  t.like(st, { name: 'sbc', current: '1.0.0', running: true, health: 'healthy', installed: ['1.0.0'] });
  t.true(st.data_disk_bytes > 0);

  // installing what already runs never mounts its disk under the guest
  const again1 = await agent.install('sbc', { set: { 'broker.url': 'https://b.example/' } });
  t.true(again1.install.alreadyInstalled);
  t.notRegex((await execa('debugfs', ['-R', 'cat /etc/loopship/host.json', v1disk])).stdout, /b\.example/);
  t.true(logs.some((l) => /is installed and running; not reconfigured/.test(l)));

  // unknown settings are refused before anything is fetched
  const bad = await t.throwsAsync(agent.install('sbc@1.0.0', { set: { hostnme: 'x' } }));
  t.regex(bad!.message, /unknown setting "hostnme"; sbc 1\.0\.0 accepts broker\.url, hostname, ssh\.authorized_keys/);

  // upgrade to 2.0.0: one file more; only what changed is fetched
  await publishExt4(fx, '2.0.0', { motd: 'version two', channel: 'stable' });
  const up = await agent.upgrade('sbc');
  t.like(up[0], { name: 'sbc', from: '1.0.0', to: '2.0.0', status: 'upgraded' });
  const fetchedLine = logs.find((l) => l.startsWith('installed sbc 2.0.0'))!;
  const share = Number(/\(([\d.]+)% of/.exec(fetchedLine)![1]);
  t.true(share < 50, logs.join('\n'));
  t.is(await hostnameIn(join(stateDir, 'appliances', 'sbc', '2.0.0', 'disk.img')), 'ts1.example.org', 'settings carried to the new version (config + remembered --set)');
  t.is((await execa('debugfs', ['-R', 'cat /root/.ssh/authorized_keys', join(stateDir, 'appliances', 'sbc', '2.0.0', 'disk.img')])).stdout.trim(), KEY);
  [st] = await agent.status('sbc');
  t.like(st, { current: '2.0.0', previous: '1.0.0', running: true, health: 'healthy', installed: ['1.0.0', '2.0.0'] });
  t.is(backend.starts.at(-1)!.version, '2.0.0');

  // upgrade to 3.0.0 whose guest never becomes ready: rolled back to 2.0.0, reported, non-zero
  await publishExt4(fx, '3.0.0', { motd: 'broken', channel: 'stable' });
  backend.bad.add('3.0.0');
  const failed = await t.throwsAsync(agent.upgrade('sbc'));
  t.regex(failed!.message, /sbc 3\.0\.0: health check failed \(stopped|timeout\), rolled back to 2\.0\.0|health check failed/);
  [st] = await agent.status('sbc');
  t.like(st, { current: '2.0.0', previous: '1.0.0', running: true, health: 'healthy', failed_versions: ['3.0.0'], pending_upgrade: null });
  t.regex(st.last_error ?? '', /upgrade of sbc to 3\.0\.0 failed its health check.*Kernel panic/);
  t.deepEqual(backend.starts.slice(-2).map((s) => s.version), ['3.0.0', '2.0.0']);
  // and it is not retried by itself
  const again = await agent.upgrade('sbc');
  t.like(again[0], { status: 'skipped', to: '3.0.0' });

  // rollback: to the previous version
  const rb = await agent.rollback('sbc');
  t.deepEqual(rb, { name: 'sbc', from: '2.0.0', to: '1.0.0' });
  [st] = await agent.status('sbc');
  t.like(st, { current: '1.0.0', previous: '2.0.0', running: true });

  // verify: all fine, then bit rot in one installed image is found
  const clean = await agent.verify();
  t.true(clean.every((v) => v.ok), JSON.stringify(clean, null, 1));
  // the booted copies were changed by configure; the verified images were not
  t.true(clean.every((v) => v.boot_disk_changed_chunks! > 0));
  const m2 = JSON.parse(await readFile(join(stateDir, 'appliances', 'sbc', '2.0.0', 'manifest.json'), 'utf8'));
  const fh = await open(join(stateDir, 'appliances', 'sbc', '2.0.0', 'verified.img'), 'r+');
  await fh.write(Buffer.from('rot'), 0, 3, m2.image.chunks[3].offset + 100);
  const hole = m2.image.chunks.find((c: { offset: number; length: number }, i: number) => m2.image.chunks[i + 1]?.offset > c.offset + c.length);
  await fh.write(Buffer.from('x'), 0, 1, hole.offset + hole.length);
  await fh.close();
  const checks = await agent.verify('sbc');
  const v2 = checks.find((c) => c.version === '2.0.0')!;
  t.false(v2.ok);
  t.is(v2.problems.length, 2);
  t.regex(v2.problems.join('\n'), /chunk at offset \d+ .* has sha256/);
  t.regex(v2.problems.join('\n'), /data at offset \d+ where the manifest has only zeros/);
  t.true(checks.find((c) => c.version === '1.0.0')!.ok);

  // gc keeps current and previous
  const gc = await agent.gc();
  t.deepEqual(gc.removed, ['sbc 3.0.0']);
  t.deepEqual((await agent.status('sbc'))[0].installed, ['1.0.0', '2.0.0']);

  // remove, keeping the data disk
  await agent.remove('sbc', { keepData: true });
  t.deepEqual(await readdir(join(stateDir, 'appliances', 'sbc')), ['data.img']);
  t.false(existsSync(join(stateDir, 'appliances', 'sbc', '1.0.0')));
  t.false(await backend.isRunning('sbc'));
  await nothingAttached(t, stateDir);
});

test('a version whose guest crashes and is restarted before it is ready is rolled back at once (restarted), not after the timeout', async (t) => {
  const { fx, configPath, keyFile, backend, agent: first, stateDir } = await setup(t);
  await publishExt4(fx, '1.0.0', { channel: 'stable' });
  await first.init({ repos: [fx.repoDir], rootKeyFile: keyFile });
  await first.install('sbc');
  // a long health timeout: only the restart may end the wait early
  // (and a host's xl setting, which must reach the domain spec)
  await writeFile(configPath, (await readFile(configPath, 'utf8')).replace('health_timeout_s: 2', 'health_timeout_s: 120').replace('    settings: { hostname: ts1.example.org }', '    settings: { hostname: ts1.example.org }\n    xen: { tsc_mode: native }'));
  const agent = new Agent({ configPath, stateDir, backend, host: 'dom0-test', log: () => {} }); // reads the new config
  await publishExt4(fx, '2.0.0', { motd: 'crashes', channel: 'stable' });
  backend.crashLoop.add('2.0.0');
  const t0 = Date.now();
  const failed = await t.throwsAsync(agent.upgrade('sbc'));
  t.true(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
  t.regex(failed!.message, /sbc 2\.0\.0: health check failed \(restarted\), rolled back to 1\.0\.0/);
  const [st] = await agent.status('sbc');
  t.like(st, { current: '1.0.0', running: true, health: 'healthy', failed_versions: ['2.0.0'] });
  t.deepEqual(backend.starts.map((s) => s.version), ['1.0.0', '2.0.0', '1.0.0']);
  t.is(backend.starts[0].tscMode, undefined);
  t.is(backend.starts.at(-1)!.tscMode, 'native');
});

test('an upgrade whose stop leaves the old guest running does not take it for the new version: an error, the old one stays current', async (t) => {
  const { fx, keyFile, backend, agent } = await setup(t);
  await publishExt4(fx, '1.0.0', { channel: 'stable' });
  await agent.init({ repos: [fx.repoDir], rootKeyFile: keyFile });
  await agent.install('sbc');
  await publishExt4(fx, '2.0.0', { channel: 'stable' });
  backend.stopLeavesRunning.add('sbc');
  const err = await t.throwsAsync(agent.upgrade('sbc'));
  t.regex(err!.message, /upgrade of sbc to 2\.0\.0 not started: sbc 1\.0\.0 is still running after it was stopped/);
  const [st] = await agent.status('sbc');
  t.like(st, { current: '1.0.0', running: true, pending_upgrade: null, failed_versions: [] });
  t.deepEqual(backend.starts.map((s) => s.version), ['1.0.0'], '2.0.0 was never booted');
  // a stop that fails outright: the same, with its cause
  backend.stopLeavesRunning.delete('sbc');
  backend.stopFails.set('sbc', new Error('xl destroy sbc failed with exit code 1: destroy failed (rc=-15)'));
  const failed = await t.throwsAsync(agent.upgrade('sbc'));
  t.regex(failed!.message, /upgrade of sbc to 2\.0\.0 not started: xl destroy sbc failed with exit code 1/);
  t.like((await agent.status('sbc'))[0], { current: '1.0.0', running: true, pending_upgrade: null, failed_versions: [] });
  t.deepEqual(backend.starts.map((s) => s.version), ['1.0.0']);
  // once stop works again, the upgrade goes through
  backend.stopFails.delete('sbc');
  const up = await agent.upgrade('sbc');
  t.like(up[0], { from: '1.0.0', to: '2.0.0', status: 'upgraded' });
  t.deepEqual(backend.starts.map((s) => s.version), ['1.0.0', '2.0.0']);
});

test('a health wait whose liveness ask fails (toolstack busy) keeps waiting for the marker until its timeout, instead of failing on the ask', async (t) => {
  const { fx, keyFile, backend, agent } = await setup(t); // health_timeout_s: 2
  await publishExt4(fx, '1.0.0', { channel: 'stable' });
  await agent.init({ repos: [fx.repoDir], rootKeyFile: keyFile });
  backend.bad.add('1.0.0'); // never prints the marker: the wait asks about liveness until the timeout
  // the boot's own ask (its domid) is answered; every liveness ask after it fails
  const ask = backend.instanceId.bind(backend);
  let asksAfterStart = -1;
  backend.instanceId = async (n) => {
    if (backend.starts.length && ++asksAfterStart > 0) throw new Error('xl list sbc failed 3 times, so whether the domain exists is unknown');
    return ask(n);
  };
  const err = await t.throwsAsync(agent.install('sbc'));
  t.regex(err!.message, /sbc 1\.0\.0 did not become ready \(timeout after 2 s\)/);
  t.true(asksAfterStart > 1, `liveness asked ${asksAfterStart} times`);
  t.true(await backend.isRunning('sbc'));
});

test('start of a guest already running but crash-looping fails at once (restarted), not after the timeout', async (t) => {
  const { fx, configPath, keyFile, backend, stateDir } = await setup(t);
  await writeFile(configPath, (await readFile(configPath, 'utf8')).replace('health_timeout_s: 2', 'health_timeout_s: 120'));
  const agent = new Agent({ configPath, stateDir, backend, host: 'dom0-test', log: () => {} });
  await publishExt4(fx, '1.0.0', { channel: 'stable' });
  await agent.init({ repos: [fx.repoDir], rootKeyFile: keyFile });
  backend.crashLoop.add('1.0.0');
  const t0 = Date.now();
  const inst = await t.throwsAsync(agent.install('sbc'));
  t.regex(inst!.message, /did not become ready \(restarted/);
  t.true(await backend.isRunning('sbc'), 'xl keeps bringing it back');
  // the domain is up (a new instance each time): start waits on it, and sees it restart
  const st = await t.throwsAsync(agent.start('sbc'));
  t.regex(st!.message, /sbc 1\.0\.0 did not become ready \(restarted\)/);
  t.true(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
  t.is(backend.starts.length, 1, 'start did not boot a second domain beside the running one');
  await backend.stop('sbc'); // ends the crash loop before the directory goes
});

test('over HTTP with a dead first mirror; import of an offline package; one agent at a time', async (t) => {
  const { fx, stateDir, keyFile, agent, backend } = await setup(t);
  const pkg = await publishExt4(fx, '1.0.0', { channel: 'stable' });
  const server = await serveDir(fx.repoDir);
  t.teardown(server.close);
  // a port nobody listens on comes first
  await agent.init({ repos: ['http://127.0.0.1:9/', server.url], rootKeyFile: keyFile });
  const r = await agent.install('sbc:stable', { start: false });
  t.is(r.current, '1.0.0');
  t.false(r.started);
  t.false(await backend.isRunning('sbc'));
  t.true(server.requests.some((u) => u.startsWith('/chunks/')));

  // import the same package offline into a second state dir: same checks, no network
  const agent2 = new Agent({ configPath: join(stateDir, '..', 'agent.yaml'), stateDir: join(stateDir, '..', 'state2'), backend, host: 'h2' });
  await mkdir(join(stateDir, '..', 'state2', 'trust'), { recursive: true });
  await writeFile(join(stateDir, '..', 'state2', 'trust', 'root.json'), await readFile(join(stateDir, 'trust', 'root.json')));
  const imp = await agent2.importPackage(pkg.tarPath, { start: false });
  t.is(imp.install.version, '1.0.0');
  t.is(await hostnameIn(join(stateDir, '..', 'state2', 'appliances', 'sbc', '1.0.0', 'disk.img')), 'ts1.example.org');

  // an exported package carrying the signed index: the receiver's rollback floor advances
  const { exportPackage, createFetcher } = await import('../../format/index.js');
  const exported = join(stateDir, '..', 'export.tar');
  await exportPackage({ fetcher: createFetcher(fx.repoDir), pin: { keyArmored: fx.rootKeyArmored }, name: 'sbc', out: exported, withMetadata: true });
  const state3 = join(stateDir, '..', 'state3');
  await mkdir(join(state3, 'trust'), { recursive: true });
  await writeFile(join(state3, 'trust', 'root.json'), await readFile(join(stateDir, 'trust', 'root.json')));
  const agent3 = new Agent({ configPath: join(stateDir, '..', 'agent.yaml'), stateDir: state3, backend, host: 'h3' });
  await agent3.importPackage(exported, { start: false });
  const indexVersion = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8')).version;
  t.is((await readFile(join(state3, 'trust', 'index-version'), 'utf8')).trim(), String(indexVersion));

  // a tampered package is refused and leaves nothing behind
  const tampered = join(stateDir, '..', 'tampered.tar');
  const bytes = await readFile(pkg.tarPath);
  bytes[bytes.length - 2048 - 700] ^= 0xff; // inside the last chunk
  await writeFile(tampered, bytes);
  await agent2.remove('sbc');
  const err = await t.throwsAsync(agent2.importPackage(tampered, { start: false }));
  t.regex(err!.message, /tampered\.tar/);
  t.deepEqual(await agent2.state.installedVersions('sbc'), []);

  // the lock: a second agent process cannot run while one holds it
  const release = await agent.state.lock();
  const locked = await t.throwsAsync(agent.gc());
  t.is((locked as { code?: string }).code, 'LOCKED');
  await release();
  await t.notThrowsAsync(agent.gc());
});
