// The daemon's rounds against the real repo server (static tree + fleet reports over HTTP):
// installs what the config lists, upgrades what follows a channel, restarts what should
// run, and reports in the shape the server accepts (enrolled once with the site token,
// then with the host's own token).
import test from 'ava';
import { writeFile, mkdtemp, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { Agent, reportUrl } from '../../client-agent/agent.js';
import { enrolUrl } from '../../client-agent/report.js';
import { createApp, parseServerConfig, FileReportStore, FileHostRegistry } from '../../repo-server/index.js';
import { makeRepo } from '../helpers/repo.js';
import { publishExt4 } from './ext4.js';
import { FakeBackend } from './fakes.js';

const SITE_TOKEN = 'site-token-0123456789abcdef';

test('daemon rounds: install, keep running, upgrade on channel move, report to the server', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  const store = await FileReportStore.open(join(fx.dir, 'server-state'), { maxHosts: 10 });
  const hosts = await FileHostRegistry.open(join(fx.dir, 'server-state'), { maxHosts: 10, maxHostsPerSite: 10 });
  const app = createApp({ repoDir: fx.repoDir, config: parseServerConfig({ sites: [{ name: 'branch-7', token: SITE_TOKEN }] }), store, hosts, logRequests: false });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const dir = await mkdtemp(join(fx.dir, 'host-'));
  await writeFile(join(dir, 'root.asc'), fx.rootKeyArmored);
  await writeFile(join(dir, 'agent.yaml'), [
    `repos: [${url}]`,
    `trust: { root_key_file: ${join(dir, 'root.asc')} }`,
    'health_timeout_s: 5',
    'appliances:',
    '  - { name: sbc, channel: stable, settings: { hostname: ts-branch-7 } }',
    `report: { url: "${url}", token: ${SITE_TOKEN}, site: branch-7 }`,
    'daemon: { interval_s: 60, jitter_s: 0 }',
  ].join('\n') + '\n');
  const backend = new FakeBackend(join(dir, 'console'));
  const agent = new Agent({ configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), backend, host: 'dom0-branch-7' });

  // round 1: nothing installed yet
  let r = await agent.daemonOnce();
  t.true(r.ok, r.error ?? '');
  t.is(await agent.state.currentVersion('sbc'), '1.0.0');
  t.true(await backend.isRunning('sbc'));
  let [stored] = store.list();
  t.like(stored.report, { host: 'dom0-branch-7', site: 'branch-7', last_error: null });
  t.like(stored.report.appliances[0], { name: 'sbc', version: '1.0.0', channel: 'stable', running: true, health: 'healthy' });
  // enrolled once: the host's own token is kept in its state dir, 0600
  const tokenFile = join(dir, 'state', 'trust', 'report-token');
  const token = (await readFile(tokenFile, 'utf8')).trim();
  t.regex(token, /^lsh1:branch-7:dom0-branch-7:/);
  t.is((await stat(tokenFile)).mode & 0o777, 0o600);

  // the guest died (or the host rebooted without xendomains): the next round starts it
  backend.running.delete('sbc');
  r = await agent.daemonOnce();
  t.true(r.ok);
  t.true(await backend.isRunning('sbc'));
  t.is(backend.starts.length, 2);

  // the channel moves: the next round upgrades
  await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two' });
  r = await agent.daemonOnce();
  t.true(r.ok, r.error ?? '');
  t.is(await agent.state.currentVersion('sbc'), '2.0.0');
  [stored] = store.list();
  t.is(stored.report.appliances[0].version, '2.0.0');

  // a bad version: rolled back, the error reported, the round fails
  await publishExt4(fx, 'sbc', '3.0.0', { channel: 'stable', motd: 'three' });
  backend.bad.add('3.0.0');
  r = await agent.daemonOnce();
  t.false(r.ok);
  t.regex(r.error ?? '', /sbc 3\.0\.0: health check failed/);
  t.is(await agent.state.currentVersion('sbc'), '2.0.0');
  [stored] = store.list();
  t.regex(stored.report.last_error ?? '', /rolled back to 2\.0\.0/);
  t.like(stored.report.appliances[0], { version: '2.0.0', running: true, health: 'healthy' });
  t.regex(stored.report.appliances[0].error ?? '', /3\.0\.0 failed its health check/);
  // and the failed version is not retried round after round
  r = await agent.daemonOnce();
  t.true(r.ok, r.error ?? '');
  t.is(backend.starts.filter((s) => s.version === '3.0.0').length, 1);
  t.is((await readFile(tokenFile, 'utf8')).trim(), token, 'every round used the same host token (no second enrolment)');
});

test('report URL: a bare server URL gets the report endpoint', (t) => {
  t.is(reportUrl('http://127.0.0.1:8080'), 'http://127.0.0.1:8080/api/v1/reports');
  t.is(reportUrl('http://127.0.0.1:8080/'), 'http://127.0.0.1:8080/api/v1/reports');
  t.is(reportUrl('https://fleet.example/custom/path'), 'https://fleet.example/custom/path');
  t.is(enrolUrl('http://127.0.0.1:8080'), 'http://127.0.0.1:8080/api/v1/hosts/enrol');
  t.is(enrolUrl('https://fleet.example/loopship/api/v1/reports'), 'https://fleet.example/loopship/api/v1/hosts/enrol');
  // a server behind a reverse proxy's path prefix: its URL with the trailing slash
  t.is(reportUrl('https://fleet.example/loopship/'), 'https://fleet.example/loopship/api/v1/reports');
  t.is(enrolUrl('https://fleet.example/loopship/'), 'https://fleet.example/loopship/api/v1/hosts/enrol');
  t.is(reportUrl('https://fleet.example/api/v1/reports/'), 'https://fleet.example/api/v1/reports/');
  t.throws(() => enrolUrl('https://fleet.example/custom/path'), { message: /report\.url: cannot tell the enrolment URL/ });
});
