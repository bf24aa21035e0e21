// kill -9 of the agent in the middle of an install and of an upgrade: the next run
// completes the work, the previous version is still the bootable one, nothing is left
// mounted or attached.
import test from 'ava';
import { execa } from 'execa';
import { killAt } from './kill.js';
import { readFile, writeFile, mkdtemp } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Agent } from '../../client-agent/agent.js';
import { listMounts } from '../../client-agent/mount.js';
import { makeRepo } from '../helpers/repo.js';
import { FakeBackend } from './fakes.js';
import { publishExt4 } from './ext4.js';
import { sha256File, sha256Of } from './helpers.js';

async function setup(t: import('ava').ExecutionContext) {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const dir = await mkdtemp(join(fx.dir, 'host-'));
  const keyFile = join(dir, 'root.asc');
  await writeFile(keyFile, fx.rootKeyArmored);
  const configPath = join(dir, 'agent.yaml');
  await writeFile(configPath, `repos: [${fx.repoDir}]\ntrust: { root_key_file: ${keyFile} }\nhealth_timeout_s: 30\nfetch_concurrency: 2\nappliances:\n  - name: sbc\n    settings: { hostname: site-a }\n`);
  const stateDir = join(dir, 'state');
  const logDir = join(dir, 'console');
  return { fx, dir, configPath, stateDir, logDir };
}

test('kill -9 during download: the next install resumes, fetching only what was missing', async (t) => {
  const { fx, configPath, stateDir, logDir } = await setup(t);
  const pkg = await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable', bulkFiles: 120 });
  // killed once most chunks are in (completed chunks are journaled at least every second)
  const mostlyDone = { test: (l: string) => { const m = /^PROGRESS (\d+) (\d+) /.exec(l); return !!m && Number(m[1]) > 0.7 * Number(m[2]); } } as RegExp;
  await killAt({ configPath, stateDir, logDir, op: 'install', arg: 'sbc', chunkDelayMs: 150 }, mostlyDone);
  t.false(existsSync(join(stateDir, 'appliances', 'sbc', '1.0.0')), 'no half version in place');
  t.true(existsSync(join(stateDir, 'appliances', 'sbc', '.staging', '1.0.0', 'manifest.json')));
  const agent = new Agent({ configPath, stateDir, backend: new FakeBackend(logDir), host: 'dom0-test' });
  const r = await agent.install('sbc', { start: false });
  t.is(r.current, '1.0.0');
  t.true(r.install.resumedChunks > 0, `resumed ${r.install.resumedChunks}`);
  t.is(r.install.fetchedChunks + r.install.resumedChunks, r.install.chunks);
  t.is(await sha256File(join(stateDir, 'appliances', 'sbc', '1.0.0', 'verified.img')), sha256Of(await readFile(pkg.image)));
  t.true((await agent.verify('sbc')).every((v) => v.ok));
});

test('kill -9 while an upgrade waits for the new guest: the next run is back on the old version, then completes', async (t) => {
  const { fx, configPath, stateDir, logDir } = await setup(t);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  const backend = new FakeBackend(logDir);
  const agent = new Agent({ configPath, stateDir, backend, host: 'dom0-test' });
  await agent.install('sbc');
  await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two' });
  // 2.0.0 never becomes ready in the child: kill it while it waits
  const { lines } = await killAt({ configPath, stateDir, logDir, op: 'upgrade', arg: 'sbc', bad: ['2.0.0'] }, /^LOG starting sbc 2\.0\.0/);
  t.true(lines.some((l) => l.startsWith('LOG configured sbc 2.0.0')));
  const state = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8'));
  t.is(state.appliances.sbc.pending_upgrade.to, '2.0.0', 'the interrupted upgrade is on record');

  // the host rebooted: nothing runs. The next command puts the old version back first.
  const after = new FakeBackend(logDir);
  const agent2 = new Agent({ configPath, stateDir, backend: after, host: 'dom0-test' });
  const st = await agent2.status('sbc');
  t.is(st[0].pending_upgrade?.to, '2.0.0');
  const up = await agent2.upgrade('sbc');
  t.deepEqual(after.starts.map((s) => s.version), ['1.0.0', '2.0.0'], 'old version booted back, then the upgrade redone');
  t.like(up[0], { from: '1.0.0', to: '2.0.0', status: 'upgraded' });
  const [final] = await agent2.status('sbc');
  t.like(final, { current: '2.0.0', previous: '1.0.0', pending_upgrade: null, health: 'healthy' });
  const prefix = resolve(stateDir) + '/';
  t.deepEqual((await listMounts()).filter((m) => m.startsWith(prefix)), []);
});

test.serial('a full disk: clear error before anything is written, the installed version untouched, works once space returns', async (t) => {
  const { fx, configPath, dir, logDir } = await setup(t);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  const stateDir = join(dir, 'small');
  await (await import('node:fs/promises')).mkdir(stateDir);
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'loopship-test', stateDir]);
  t.teardown(async () => { await execa('umount', ['-l', stateDir]).catch(() => {}); });
  const agent = new Agent({ configPath, stateDir, backend: new FakeBackend(logDir), host: 'dom0-test' });
  const err = await t.throwsAsync(agent.install('sbc', { start: false }));
  t.is((err as { code?: string }).code, 'IO');
  t.regex(err!.message, /not enough space: up to [\d.]+ MiB to write .*, [\d.]+ MiB free/);
  t.deepEqual(await agent.state.installedVersions('sbc'), []);
  await execa('mount', ['-o', 'remount,size=64m', stateDir]);
  const r = await agent.install('sbc', { start: false });
  t.is(r.current, '1.0.0');
  t.true((await agent.verify('sbc')).every((v) => v.ok));
});
