// Rollouts through the HTTP API with the real writer on a real signed repository: who may
// move them, what lands in the signed index (RepoClient verifies it), refusals that change
// nothing, and the halt rule pausing a rollout from the fleet's reports.
import test, { type ExecutionContext } from 'ava';
import { rm } from 'node:fs/promises';
import pino from 'pino';
import { startServer, parseServerConfig, createRepositoryWriter, uploadPackage, promoteRemote, type RunningServer } from '../../repo-server/index.js';
import { rolloutRemote, rolloutsRemote, holdRemote } from '../../repo-server/client.js';
import { RepoClient, DirFetcher, LoopshipError, UsageError, holdKey } from '../../format/index.js';
import { makeRealRepo, makePackage, hashTree, rawRequest, tempDir, settled, type RealRepo } from './helpers.js';
import { enrolHost, postReport } from './fleet.js';

const PUBLISHER = 'publisher-token-0123456789abcdef';
const OPERATOR = 'operator-token-0123456789abcdef';
const VIEWER = 'viewer-token-0123456789abcdef';
const SITE = 'site-a-token-0123456789abcdef';

async function setup(t: ExecutionContext): Promise<{ repo: RealRepo; srv: RunningServer; logs: Record<string, unknown>[] }> {
  const repo = await makeRealRepo();
  const stateDir = await tempDir('loopship-state-');
  const config = parseServerConfig({
    publishers: [{ name: 'team', token: PUBLISHER }],
    operators: [{ name: 'ops-anna', token: OPERATOR }],
    viewers: [{ name: 'noc', token: VIEWER }],
    sites: [{ name: 'site-a', token: SITE }],
  });
  const writer = await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir });
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
  const srv = await startServer({ repoDir: repo.dir, config, writer, stateDir, log });
  t.teardown(async () => {
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work, stateDir]) await rm(d, { recursive: true, force: true });
  });
  for (const v of ['1.0.0', '1.1.0']) await uploadPackage(srv.url, PUBLISHER, (await makePackage(repo, 'desktop', v, { imageBytes: 64 * 1024 })).tarPath);
  await promoteRemote(srv.url, PUBLISHER, 'desktop', '1.0.0', 'stable');
  return { repo, srv, logs };
}

async function verifiedIndex(repo: RealRepo) {
  const fetcher = new DirFetcher(repo.dir);
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { fingerprint: repo.store.entries({ role: 'root' })[0].fingerprint }) });
  await client.update();
  return client.currentIndex!;
}

test('an operator starts a rollout: the signed index carries it, the channel still names the old version; viewers see it', async (t) => {
  const { repo, srv, logs } = await setup(t);
  const r = await rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'start', to: '1.1.0', stages: '10,50,100', every: '1h' });
  t.like(r.rollout, { name: 'desktop', channel: 'stable', from: '1.0.0', to: '1.1.0', state: 'running', stage: 1, percent: 10 });
  t.is(r.channel_version, '1.0.0');
  const idx = await verifiedIndex(repo);
  t.is(idx.version, r.index_version);
  t.is(idx.images.desktop.channels.stable, '1.0.0');
  t.deepEqual(idx.images.desktop.rollouts?.stable.stages.map((s) => s.percent), [10, 50, 100]);
  t.like(logs.find((l) => l.msg === 'rollout start'), { who: 'ops-anna', kind: 'operator', image: 'desktop', to: '1.1.0' });
  const seen = await rolloutsRemote(srv.url, VIEWER);
  t.is(seen.length, 1);
  t.like(seen[0], { id: r.rollout.id, fleet: { took: 0, failed: [], waiting: 0 } });
  // pause, resume, abort, finish: each signs a new index
  t.is((await rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'pause', reason: 'ticket 42' })).rollout.stopped?.by, 'operator ops-anna');
  t.is((await rolloutRemote(srv.url, PUBLISHER, 'desktop', 'stable', { op: 'resume' })).rollout.state, 'running');
  t.is((await rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'abort' })).rollout.state, 'aborted');
  const fin = await rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'finish' });
  t.is(fin.channel_version, '1.0.0', 'an aborted rollout leaves the channel where it was');
  t.is((await verifiedIndex(repo)).images.desktop.rollouts, undefined);
});

test('refusals change nothing: viewer, site and no token; bad stages; older version; a second rollout; unknown action', async (t) => {
  const { repo, srv } = await setup(t);
  const before = await hashTree(repo.dir);
  const post = (token: string | null, path: string, body: unknown) =>
    rawRequest(srv.url, { method: 'POST', path, headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
  const start = { to: '1.1.0', stages: '10,100' };
  t.is((await post(null, '/api/v1/rollouts/desktop/stable/start', start)).status, 401);
  t.is((await post(VIEWER, '/api/v1/rollouts/desktop/stable/start', start)).status, 401);
  t.is((await post(SITE, '/api/v1/rollouts/desktop/stable/start', start)).status, 401);
  const bad = await post(OPERATOR, '/api/v1/rollouts/desktop/stable/start', { to: '1.1.0', stages: '10,,100' });
  t.is(bad.status, 400);
  t.regex(bad.body.toString(), /expected stages such as/);
  t.regex((await post(OPERATOR, '/api/v1/rollouts/desktop/stable/start', { ...start, extra: 1 })).body.toString(), /extra/);
  t.is((await post(OPERATOR, '/api/v1/rollouts/desktop/stable/launch', start)).status, 404);
  t.is((await post(OPERATOR, '/api/v1/rollouts/desktop/stable/pause', {})).status, 404, 'nothing to pause');
  t.is((await rawRequest(srv.url, { method: 'GET', path: '/api/v1/rollouts', headers: { Authorization: `Bearer ${SITE}` } })).status, 401);
  t.is(await hashTree(repo.dir), before, 'the tree is unchanged');
  await t.throwsAsync(rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'start', to: '1.0.0', stages: '100' }), { instanceOf: UsageError, message: /400: desktop\/stable: 1\.0\.0 is not newer than 1\.0\.0/ });
  await rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'start', ...start });
  const again = await t.throwsAsync(rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'start', ...start }), { instanceOf: LoopshipError });
  t.regex(again!.message, /409.*already has a rollout/);
  // promote, the one-step form, ends the rollout on its channel
  await promoteRemote(srv.url, PUBLISHER, 'desktop', '1.1.0', 'stable');
  const idx = await verifiedIndex(repo);
  t.is(idx.images.desktop.channels.stable, '1.1.0');
  t.is(idx.images.desktop.rollouts, undefined);
});

test('the halt rule: two hosts that took the new version fail, and the server pauses the rollout itself, naming them', async (t) => {
  const { repo, srv, logs } = await setup(t);
  const r = await rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'start', to: '1.1.0', stages: '100', halt: { failures: 2, of_first: 20, percent: 5 } });
  const report = (host: string, a: Record<string, unknown>) => ({
    host, agent_version: 'test', last_error: null,
    appliances: [{ name: 'desktop', version: '1.1.0', channel: 'stable', running: true, health: 'healthy', verified: true, error: null, ...a }],
  });
  const tokens: Record<string, string> = {};
  for (const h of ['xen-01', 'xen-02', 'xen-03']) tokens[h] = await enrolHost(srv.url, SITE, h);
  t.is((await postReport(srv.url, report('xen-01', {}), tokens['xen-01'])).status, 201);
  t.is((await postReport(srv.url, report('xen-02', { version: '1.0.0', failed_versions: ['1.1.0'], error: 'health check failed: no ready marker' }), tokens['xen-02'])).status, 201);
  await new Promise((res) => setTimeout(res, 300));
  t.is((await verifiedIndex(repo)).images.desktop.rollouts?.stable.state, 'running', 'one failure is within the rule');
  t.is((await postReport(srv.url, report('xen-03', { health: 'unhealthy', error: 'guest did not answer' }), tokens['xen-03'])).status, 201);
  await settled(() => logs.some((l) => l.msg === 'rollout halted'), 'the halt');
  const ro = (await verifiedIndex(repo)).images.desktop.rollouts!.stable;
  t.is(ro.id, r.rollout.id);
  t.is(ro.state, 'paused');
  t.is(ro.stopped?.by, 'loopship serve (halt rule)');
  t.regex(ro.stopped!.reason, /^halted: 2 of 3 hosts that took 1\.1\.0 failed: xen-02 \(health check failed: no ready marker\), xen-03 \(guest did not answer\)$/);
  const [view] = await rolloutsRemote(srv.url, VIEWER);
  t.deepEqual(view.fleet?.failed.map((f) => f.host), ['xen-02', 'xen-03']);
  t.is(view.fleet?.took, 3);
});

test('holds over the API: an operator holds a host on the version it reported, the index names only a digest; release; refusals', async (t) => {
  const { repo, srv, logs } = await setup(t);
  const token = await enrolHost(srv.url, SITE, 'xen-07');
  const body = { host: 'xen-07', agent_version: 't', last_error: null, appliances: [{ name: 'desktop', version: '1.0.0', running: true, health: 'healthy', verified: true }] };
  t.is((await postReport(srv.url, body, token)).status, 201);
  const before = await hashTree(repo.dir);
  const put = (tok: string | null, path: string, b: unknown, method = 'PUT') =>
    rawRequest(srv.url, { method, path, headers: { 'Content-Type': 'application/json', ...(tok ? { Authorization: `Bearer ${tok}` } : {}) }, body: JSON.stringify(b) });
  t.is((await put(VIEWER, '/api/v1/holds/desktop/xen-07', {})).status, 401);
  t.is((await put(SITE, '/api/v1/holds/desktop/xen-07', {})).status, 401);
  t.is((await put(OPERATOR, '/api/v1/holds/desktop/xen-99', {})).status, 400, 'no version given and none reported');
  t.is((await put(OPERATOR, '/api/v1/holds/desktop/bad_host!', {})).status, 400);
  t.is((await put(OPERATOR, '/api/v1/holds/desktop/xen-07', { version: '9.9' })).status, 404);
  t.is((await put(OPERATOR, '/api/v1/holds/desktop/xen-07', {}, 'POST')).status, 405);
  t.is(await hashTree(repo.dir), before, 'refusals changed nothing');
  const held = await holdRemote(srv.url, OPERATOR, 'desktop', 'xen-07', { reason: 'site visit' });
  t.like(held, { image: 'desktop', host: 'xen-07', hold: { version: '1.0.0', reason: 'site visit', by: 'operator ops-anna' } });
  const idx = await verifiedIndex(repo);
  t.deepEqual(Object.keys(idx.images.desktop.holds ?? {}), [holdKey('xen-07')]);
  t.like(logs.find((l) => l.msg === 'host held'), { who: 'ops-anna', host: 'xen-07', version: '1.0.0' });
  t.is((await holdRemote(srv.url, PUBLISHER, 'desktop', 'xen-07', null)).hold, null);
  t.is((await verifiedIndex(repo)).images.desktop.holds, undefined);
  await t.throwsAsync(holdRemote(srv.url, OPERATOR, 'desktop', 'xen-07', null), { message: /404.*is not held/ });
});
