// The fleet proof of staged rollouts: 50 hosts, each the real agent code (real installs into
// its own state dir, real loop-mounted configure, fake boot backend), one real repo server
// over HTTP with a real signed repository. A 10% stage moves its hosts and no others; two of
// them fail, and the server halts the rollout before its next stage; resumed, the rest move.
// Slow (50 installs): skipped with LOOPSHIP_FAST=1.
import test from 'ava';
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { Agent } from '../../client-agent/agent.js';
import { createApp, parseServerConfig, FileReportStore, FileHostRegistry } from '../../repo-server/index.js';
import { RepositoryWriter, rolloutBucket, parallel } from '../../format/index.js';
import { rolloutRemote, rolloutsRemote } from '../../repo-server/client.js';
import { makeRepo } from '../helpers/repo.js';
import { publishExt4 } from '../agent/ext4.js';
import { FakeBackend } from '../agent/fakes.js';

const SITE_TOKEN = 'site-token-0123456789abcdef';
const OPERATOR = 'operator-token-0123456789abcdef';
const HOSTS = 50;
const ROLLOUT_ID = '5eed0000000000000000000000000001';
const slow = process.env.LOOPSHIP_FAST ? test.skip : test;

slow('50 hosts: a 10% stage moves only its hosts; 2 failures halt the rollout before its next stage; resume moves the rest', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable', bulkFiles: 4 });
  const stateDir = join(fx.dir, 'server-state');
  const store = await FileReportStore.open(stateDir, { maxHosts: 1000 });
  const hosts = await FileHostRegistry.open(stateDir, { maxHosts: 1000, maxHostsPerSite: 1000 });
  // the server signs with the fixture's index key (the writer the fixture publishes with)
  const writer = fx.writer as RepositoryWriter;
  const config = parseServerConfig({ sites: [{ name: 'branch', token: SITE_TOKEN }], operators: [{ name: 'ops', token: OPERATOR }], limits: { reports_per_minute_per_site: 10_000 } });
  const app = createApp({ repoDir: fx.repoDir, config, store, hosts, writer, logRequests: false });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  // the agents' clock: the rollout's second stage opens an hour after the first
  let offsetMs = 0;
  const now = () => new Date(Date.now() + offsetMs);
  const fleet: { host: string; agent: Agent; backend: FakeBackend }[] = [];
  await writeFile(join(fx.dir, 'root.asc'), fx.rootKeyArmored);
  for (let i = 0; i < HOSTS; i++) {
    const host = `xen-${String(i).padStart(2, '0')}.branch.example`;
    const dir = join(fx.dir, 'hosts', host);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'agent.yaml'), [
      `repos: [${url}]`,
      `trust: { root_key_file: ${join(fx.dir, 'root.asc')} }`,
      'health_timeout_s: 5',
      'appliances:',
      `  - { name: sbc, channel: stable, settings: { hostname: ts-${i} } }`,
      `report: { url: "${url}", token: ${SITE_TOKEN}, site: branch }`,
    ].join('\n') + '\n');
    const backend = new FakeBackend(join(dir, 'console'));
    fleet.push({ host, backend, agent: new Agent({ configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), backend, host, now, log: () => {} }) });
  }
  const round = async () => {
    const out: { host: string; ok: boolean; error: string | null }[] = [];
    await parallel(fleet, 4, async (h) => void out.push({ host: h.host, ...(await h.agent.daemonOnce()) }));
    return out;
  };
  const versions = async () => Promise.all(fleet.map(async (h) => (await h.agent.state.currentVersion('sbc'))!));
  const count = (vs: string[], v: string) => vs.filter((x) => x === v).length;

  for (const r of await round()) t.true(r.ok, `${r.host}: ${r.error}`);
  t.is(count(await versions(), '1.0.0'), HOSTS);

  // 1.1.0, rolled out at 10%, then (an hour later) to every host
  await publishExt4(fx, 'sbc', '1.1.0', { bulkFiles: 4, motd: 'one-one' });
  const started = await rolloutRemote(url, OPERATOR, 'sbc', 'stable', { op: 'start', to: '1.1.0', stages: '10,100', every: '1h', id: ROLLOUT_ID, halt: { failures: 2, of_first: 20, percent: 5 } });
  t.is(started.rollout.percent, 10);
  const inStage = fleet.filter((h) => rolloutBucket(ROLLOUT_ID, h.host) < 10).map((h) => h.host);
  t.true(inStage.length >= 3 && inStage.length <= 8, `${inStage.length} hosts in the 10% stage`);
  // two of them get a guest that never becomes ready
  const failing = inStage.slice(0, 2);
  for (const h of fleet) if (failing.includes(h.host)) h.backend.bad.add('1.1.0');

  await round();
  const after1 = await versions();
  fleet.forEach((h, i) => {
    const want = inStage.includes(h.host) && !failing.includes(h.host) ? '1.1.0' : '1.0.0';
    t.is(after1[i], want, `${h.host} after the first stage`);
  });
  const [outside] = fleet.filter((h) => !inStage.includes(h.host));
  const [st] = await outside.agent.status('sbc');
  t.like(st.rollout, { id: ROLLOUT_ID, from: '1.0.0', to: '1.1.0', taking: false });
  t.regex(st.rollout!.reason!, /^outside the open stages of the rollout of 1\.1\.0: stage 1 of 2 is open to 10% of hosts/);
  const reported = store.list().find((s) => s.report.host === outside.host)!.report.appliances[0];
  t.like(reported.rollout, { id: ROLLOUT_ID, taking: false });

  // the server saw the two rollbacks in their reports and paused the rollout (as the last reports came in)
  let [halted] = await rolloutsRemote(url, OPERATOR);
  for (let i = 0; i < 50 && halted.state !== 'paused'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    [halted] = await rolloutsRemote(url, OPERATOR);
  }
  t.is(halted.state, 'paused');
  t.regex(halted.stopped!.reason, new RegExp(`^halted: 2 of ${inStage.length} hosts that took 1\\.1\\.0 failed: `));
  for (const h of failing) t.true(halted.stopped!.reason.includes(h), h);

  // two hours on: the second stage's time has come, but a paused rollout opens nothing
  offsetMs = 2 * 3600_000;
  await round();
  t.deepEqual(await versions(), after1);

  // the operator resumes (the schedule moves by the seconds it stood still): the second stage is open
  const resumed = await rolloutRemote(url, OPERATOR, 'sbc', 'stable', { op: 'resume' });
  t.is(resumed.rollout.state, 'running');
  for (const r of await round()) if (!failing.includes(r.host)) t.true(r.ok, `${r.host}: ${r.error}`);
  const after2 = await versions();
  fleet.forEach((h, i) => t.is(after2[i], failing.includes(h.host) ? '1.0.0' : '1.1.0', `${h.host} after resume`));
  const [done] = await rolloutsRemote(url, OPERATOR);
  t.is(done.state, 'running', 'the failures it was resumed over do not halt it again');
  t.is(done.fleet!.failed.length, 2);
  t.is(done.fleet!.took, HOSTS);
});
