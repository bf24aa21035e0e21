// Maintenance windows in the agent (windows.ts through upgradeUnlocked), on a virtual clock
// (deps.now) with a real signed repository, real ext4 images and the fake backend: outside
// the window a round pre-fetches the new version and says it waits, and stops, switches and
// configures nothing; the first round inside the window switches. A first install, and an
// operator's `upgrade --ignore-window`, go ahead any time.
import test from 'ava';
import { mkdtemp, writeFile, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { Agent } from '../../client-agent/agent.js';
import type { HttpAnswer } from '../../client-agent/report.js';
import { makeRepo } from '../helpers/repo.js';
import { publishExt4 } from './ext4.js';
import { FakeBackend } from './fakes.js';
import { sha256File, nextMondayNoon } from './helpers.js';

const HOST_TOKEN = 'lsh1:site:dom0-win:' + 'h'.repeat(43);
const HOUR = 3600_000;


async function setup(t: import('ava').ExecutionContext, applianceExtra = '') {
  const fx = await makeRepo();
  const dir = await mkdtemp(join(fx.dir, 'host-'));
  t.teardown(async () => {
    for (const dev of (await execa('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'])).stdout.split('\n')) {
      const [d, f] = dev.trim().split(/\s+/);
      if (f?.startsWith(dir)) await execa('losetup', ['-d', d]).catch(() => {});
    }
    await fx.cleanup();
  });
  await writeFile(join(dir, 'root.asc'), fx.rootKeyArmored);
  const configPath = join(dir, 'agent.yaml');
  await writeFile(configPath, [
    `repos: [${fx.repoDir}]`,
    `trust: { root_key_file: ${join(dir, 'root.asc')} }`,
    'health_timeout_s: 5',
    'windows: ["Mon-Fri 22:00-05:00"]',
    'timezone: Europe/Berlin',
    'appliances:',
    `  - { name: sbc, channel: stable, settings: { hostname: ts-win }${applianceExtra} }`,
    'report: { url: "http://fleet.invalid/", token: site-token-0123456789abcdef }',
  ].join('\n') + '\n');
  const backend = new FakeBackend(join(dir, 'console'));
  const clock = { t: nextMondayNoon() };
  const logs: string[] = [];
  const reports: Record<string, unknown>[] = [];
  const agent = new Agent({
    configPath, stateDir: join(dir, 'state'), backend, host: 'dom0-win', now: () => new Date(clock.t), log: (l) => logs.push(l),
    httpPost: async (url, body): Promise<HttpAnswer> => {
      if (url.endsWith('/hosts/enrol')) return { status: 201, body: { site: 'site', host: 'dom0-win', token: HOST_TOKEN, enrolled_at: new Date().toISOString() } };
      reports.push(body as Record<string, unknown>);
      return { status: 201 };
    },
  });
  return { fx, dir, backend, clock, logs, reports, agent, stateDir: join(dir, 'state') };
}

const hostnameIn = async (disk: string) => (await execa('debugfs', ['-R', 'cat /etc/hostname', disk])).stdout.trim();

test('outside the window a round pre-fetches and waits (status and report say until when); the first round inside it switches', async (t) => {
  const { fx, backend, clock, logs, reports, agent, stateDir } = await setup(t);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });

  // nothing installed: nothing to disrupt, so the first install and boot happen outside the window
  let r = await agent.daemonOnce();
  t.true(r.ok, r.error ?? '');
  t.is(await agent.state.currentVersion('sbc'), '1.0.0');
  t.true(await backend.isRunning('sbc'));
  const v1disk = join(stateDir, 'appliances', 'sbc', '1.0.0', 'disk.img');
  const v1sum = await sha256File(v1disk);

  // the channel moves on Monday afternoon
  await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two' });
  clock.t += HOUR;
  const starts = backend.starts.length;
  logs.length = 0;
  r = await agent.daemonOnce();
  t.true(r.ok, 'waiting is no failure');
  // pre-fetched: the new version is complete in the versions dir
  t.deepEqual(await agent.state.installedVersions('sbc'), ['1.0.0', '2.0.0']);
  t.true(existsSync(join(stateDir, 'appliances', 'sbc', '2.0.0', 'manifest.json')));
  // and nothing else: not stopped, switched, configured or booted
  t.is(await agent.state.currentVersion('sbc'), '1.0.0');
  t.is(backend.running.get('sbc')?.version, '1.0.0');
  t.deepEqual(backend.stops, []);
  t.is(backend.starts.length, starts);
  t.is(await sha256File(v1disk), v1sum, 'the running version is not configured over');
  t.is(await hostnameIn(join(stateDir, 'appliances', 'sbc', '2.0.0', 'disk.img')), 'buildhost', 'the new version is not configured yet either');
  t.false(logs.some((l) => /configured sbc/.test(l)), logs.join('\n'));

  // when: Monday 22:00 in Berlin (21:00 UTC in winter, 20:00 in summer)
  const monday = new Date(clock.t).toISOString().slice(0, 10);
  const opens = [Date.parse(`${monday}T21:00:00Z`), Date.parse(`${monday}T20:00:00Z`)];
  const state = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')).appliances.sbc;
  t.is(state.waiting.to, '2.0.0');
  t.true(opens.includes(Date.parse(state.waiting.opens)), state.waiting.opens);
  const waitRe = new RegExp(`^2\\.0\\.0 is downloaded and verified, waiting for a maintenance window \\(Mon-Fri 22:00-05:00\\) to switch: next opens Mon ${monday} 22:00 \\+0[12]:00 \\(Europe/Berlin\\) \\(to switch now: loopship-agent upgrade sbc --ignore-window\\)$`);
  t.regex(state.waiting.reason, waitRe);
  const [status] = await agent.status('sbc');
  t.like(status, { current: '1.0.0', installed: ['1.0.0', '2.0.0'], running: true });
  t.regex(status.waiting?.reason ?? '', waitRe);
  t.is(status.last_error, status.waiting?.reason, 'as a held move: its reason is last_error, so the fleet report carries it');
  const report = reports.at(-1) as { last_error: string | null; appliances: { version: string; error: string | null }[] };
  t.is(report.last_error, null, 'the round did not fail');
  t.like(report.appliances[0], { version: '1.0.0' });
  t.regex(report.appliances[0].error ?? '', waitRe);

  // gc keeps what waits (it would only be fetched again)
  t.deepEqual((await agent.gc()).removed, []);
  t.deepEqual(await agent.state.installedVersions('sbc'), ['1.0.0', '2.0.0']);

  // an operator's plain `upgrade sbc` honours the window too (the config is the host's policy)
  const up = await agent.upgrade('sbc');
  t.like(up[0], { name: 'sbc', from: '1.0.0', to: '2.0.0', status: 'waiting' });
  t.regex(up[0].message ?? '', waitRe);
  t.is(await agent.state.currentVersion('sbc'), '1.0.0');

  // the clock reaches the window: the next round switches, and the wait is over
  // a round just before still waits
  clock.t = Date.parse(state.waiting.opens) - 60_000;
  t.like((await agent.upgrade('sbc'))[0], { status: 'waiting' });
  clock.t = Date.parse(state.waiting.opens) + 5 * 60_000;
  r = await agent.daemonOnce();
  t.true(r.ok, r.error ?? '');
  t.is(await agent.state.currentVersion('sbc'), '2.0.0');
  t.is(backend.running.get('sbc')?.version, '2.0.0');
  t.is(await hostnameIn(join(stateDir, 'appliances', 'sbc', '2.0.0', 'disk.img')), 'ts-win');
  const after = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')).appliances.sbc;
  t.is(after.waiting, null);
  t.is(after.last_error, null);
  t.is((reports.at(-1) as { appliances: { version: string; error: string | null }[] }).appliances[0].error, null);
});

test('upgrade --ignore-window switches now; an appliance with windows of its own follows those', async (t) => {
  const { fx, backend, agent } = await setup(t);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  t.like((await agent.upgrade('sbc'))[0], { status: 'installed', to: '1.0.0' });
  await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two' });
  t.like((await agent.upgrade('sbc'))[0], { status: 'waiting' });
  t.like((await agent.upgrade('sbc', { ignoreWindow: true }))[0], { from: '1.0.0', to: '2.0.0', status: 'upgraded' });
  t.is(backend.running.get('sbc')?.version, '2.0.0');
  const [s] = await agent.status('sbc');
  t.is(s.waiting, null);
  t.is(s.last_error, null);

  // the appliance's own window (any time) overrides the host's
  const own = await setup(t, ', windows: ["00:00-24:00"]');
  await publishExt4(own.fx, 'sbc', '1.0.0', { channel: 'stable' });
  await own.agent.upgrade('sbc');
  await publishExt4(own.fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two' });
  t.like((await own.agent.upgrade('sbc'))[0], { from: '1.0.0', to: '2.0.0', status: 'upgraded' });
});
