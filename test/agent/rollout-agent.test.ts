// The agent in a rollout (format/rollout.ts through resolveTarget and the switch gate), with a
// real signed repository, real ext4 images and the fake backend on a virtual clock: a host
// outside the open stages stays and says why; a stage with a window switches only inside it
// (the host's local time); an aborted rollout takes a host back only with its consent.
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { Agent } from '../../client-agent/agent.js';
import { startRollout, abortRollout, parseStages, rolloutBucket, holdHost, releaseHost, type RepositoryWriter } from '../../format/index.js';
import { makeRepo, type Fixture } from '../helpers/repo.js';
import { publishExt4 } from './ext4.js';
import { FakeBackend } from './fakes.js';
import { nextMondayNoon } from './helpers.js';

const HOUR = 3600_000;

async function host(t: ExecutionContext, fx: Fixture, name: string, extra: string[] = [], appliance = '') {
  const dir = await mkdtemp(join(fx.dir, 'host-'));
  t.teardown(async () => {
    for (const dev of (await execa('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'])).stdout.split('\n')) {
      const [d, f] = dev.trim().split(/\s+/);
      if (f?.startsWith(dir)) await execa('losetup', ['-d', d]).catch(() => {});
    }
  });
  await writeFile(join(dir, 'root.asc'), fx.rootKeyArmored);
  await writeFile(join(dir, 'agent.yaml'), [
    `repos: [${fx.repoDir}]`, `trust: { root_key_file: ${join(dir, 'root.asc')} }`, 'health_timeout_s: 5', ...extra,
    'appliances:', `  - { name: sbc, channel: stable, settings: { hostname: ts }${appliance} }`,
  ].join('\n') + '\n');
  const backend = new FakeBackend(join(dir, 'console'));
  const clock = { t: nextMondayNoon() };
  const agent = new Agent({ configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), backend, host: name, now: () => new Date(clock.t), log: () => {} });
  return { agent, backend, clock };
}

const ID = 'c0ffee00000000000000000000000000';
/** host names on either side of 50% in rollout ID */
function namesAround50(): { inside: string; outside: string } {
  const names = Array.from({ length: 40 }, (_, i) => `dom0-${i}`);
  return { inside: names.find((n) => rolloutBucket(ID, n) < 50)!, outside: names.find((n) => rolloutBucket(ID, n) >= 50)! };
}

test('a host outside the open stages stays and says why; one inside moves, in its stage window only', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable', bulkFiles: 4 });
  const { inside, outside } = namesAround50();
  const a = await host(t, fx, inside, ['timezone: Europe/Berlin']);
  const b = await host(t, fx, outside);
  for (const h of [a, b]) t.true((await h.agent.daemonOnce()).ok);
  await publishExt4(fx, 'sbc', '1.1.0', { bulkFiles: 4, motd: 'next' });
  await (fx.writer as RepositoryWriter).changeImage('sbc', (img, now) => startRollout(img, 'sbc', 'stable', { to: '1.1.0', stages: parseStages('50,100@manual'), window: ['Mon-Fri 22:00-05:00'], id: ID }, now));

  // Monday noon: the inside host pre-fetches 1.1.0 and waits for the stage's window, the other stays on 1.0.0
  const [ra] = await a.agent.upgrade();
  t.like(ra, { status: 'waiting', from: '1.0.0', to: '1.1.0' });
  t.regex(ra.message!, /its rollout stage switches only inside Mon-Fri 22:00-05:00 \(this host's time\): next opens Mon \d{4}-\d\d-\d\d 22:00 \+01:00 \(Europe\/Berlin\)/);
  t.is(await a.agent.state.currentVersion('sbc'), '1.0.0');
  t.true((await a.agent.state.installedVersions('sbc')).includes('1.1.0'), 'pre-fetched');
  t.is(a.backend.stops.length, 0);
  const [rb] = await b.agent.upgrade();
  t.like(rb, { status: 'up-to-date', to: '1.0.0' });
  const [sb] = await b.agent.status('sbc');
  t.like(sb.rollout, { id: ID, taking: false, from: '1.0.0', to: '1.1.0' });
  t.regex(sb.rollout!.reason!, /outside the open stages of the rollout of 1\.1\.0: stage 1 of 2 is open to 50% of hosts, this host's place is \d+\.\d\d%; next: stage 2 of 2 \(100%\) opens when an operator opens it/);
  t.false((await b.agent.state.installedVersions('sbc')).includes('1.1.0'), 'nothing fetched for a stage it is not in');

  // 22:30 Berlin: the window is open, the inside host switches
  a.clock.t += 9.5 * HOUR;
  const [ra2] = await a.agent.upgrade();
  t.like(ra2, { status: 'upgraded', to: '1.1.0' });
  t.is(await a.agent.state.currentVersion('sbc'), '1.1.0');

  // the rollout is aborted: back to 1.0.0 only with the host's consent
  await (fx.writer as RepositoryWriter).changeImage('sbc', (img, now) => abortRollout(img, 'sbc', 'stable', { reason: 'calls from the field', by: 'ops' }, now));
  const [held] = await a.agent.upgrade();
  t.like(held, { status: 'held', from: '1.1.0', to: '1.0.0' });
  t.regex(held.message!, /^the rollout of 1\.1\.0 was aborted \(calls from the field\), so channel stable names 1\.0\.0 again, older than the installed 1\.1\.0: not downgrading/);
  t.is(await a.agent.state.currentVersion('sbc'), '1.1.0');
});

test('an aborted rollout takes back a host whose agent.yaml allows downgrades; sites and groups decide who takes part', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable', bulkFiles: 4 });
  const inGroup = await host(t, fx, 'dom0-a', ['groups: [canary]', 'report: { url: "http://fleet.invalid/", site: berlin }'], ', allow_downgrade: true');
  const other = await host(t, fx, 'dom0-b', ['groups: [main]']);
  for (const h of [inGroup, other]) t.true((await h.agent.daemonOnce()).ok);
  await publishExt4(fx, 'sbc', '1.1.0', { bulkFiles: 4, motd: 'next' });
  await (fx.writer as RepositoryWriter).changeImage('sbc', (img, now) => startRollout(img, 'sbc', 'stable', { to: '1.1.0', stages: parseStages('100'), groups: ['canary'], sites: ['berlin'] }, now));
  t.like((await inGroup.agent.upgrade())[0], { status: 'upgraded', to: '1.1.0' });
  t.like((await other.agent.upgrade())[0], { status: 'up-to-date', to: '1.0.0' });
  t.regex((await other.agent.status('sbc'))[0].rollout!.reason!, /for the sites berlin; this host's site is not set/);
  await (fx.writer as RepositoryWriter).changeImage('sbc', (img, now) => abortRollout(img, 'sbc', 'stable', { reason: 'bad', by: 'ops' }, now));
  t.like((await inGroup.agent.upgrade())[0], { status: 'upgraded', to: '1.0.0' });
  t.is(await inGroup.agent.state.currentVersion('sbc'), '1.0.0');
});

test('an operator\'s hold keeps a host on its version while its channel moves; released, it follows again', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable', bulkFiles: 4 });
  const h = await host(t, fx, 'Dom0-Held.site');
  t.true((await h.agent.daemonOnce()).ok);
  const w = fx.writer as RepositoryWriter;
  await w.changeImage('sbc', (img, now) => holdHost(img, 'sbc', 'dom0-held.site', { version: '1.0.0', reason: 'site visit friday', by: 'operator anna' }, now));
  await publishExt4(fx, 'sbc', '1.1.0', { channel: 'stable', bulkFiles: 4, motd: 'next' });
  t.like((await h.agent.upgrade())[0], { status: 'up-to-date', to: '1.0.0' });
  t.deepEqual((await h.agent.status('sbc'))[0].operator_hold, { version: '1.0.0', reason: 'site visit friday', by: 'operator anna' });
  // a hold on an older version is a downgrade like any other: refused without the host's consent
  await publishExt4(fx, 'sbc', '0.9.0', { bulkFiles: 4, motd: 'old' });
  await w.changeImage('sbc', (img, now) => holdHost(img, 'sbc', 'dom0-held.site', { version: '0.9.0', reason: 'r', by: 'operator anna' }, now));
  const [held] = await h.agent.upgrade();
  t.like(held, { status: 'held', to: '0.9.0' });
  t.regex(held.message!, /^operator anna holds this host on 0\.9\.0 \(r\), older than the installed 1\.0\.0: not downgrading/);
  await w.changeImage('sbc', (img) => releaseHost(img, 'sbc', 'dom0-held.site'));
  t.like((await h.agent.upgrade())[0], { status: 'upgraded', to: '1.1.0' });
  t.is((await h.agent.status('sbc'))[0].operator_hold, null);
});
