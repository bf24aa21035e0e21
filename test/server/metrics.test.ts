// GET /metrics: the Prometheus text format as Prometheus' own checker (promtool, Debian's
// prometheus package) reads it, with the fleet, rollout, index and request facts a real
// server has after publishing, a rollout and reports.
import test from 'ava';
import { rm } from 'node:fs/promises';
import { execa } from 'execa';
import { startServer, parseServerConfig, createRepositoryWriter, uploadPackage, promoteRemote } from '../../repo-server/index.js';
import { rolloutRemote } from '../../repo-server/client.js';
import { makeRealRepo, makePackage, rawRequest, tempDir } from './helpers.js';
import { enrolHost, postReport } from './fleet.js';

const PUBLISHER = 'publisher-token-0123456789abcdef';
const VIEWER = 'viewer-token-0123456789abcdef';
const SITE = 'site-a-token-0123456789abcdef';

async function promtool(text: string): Promise<{ exitCode: number; out: string }> {
  const r = await execa('promtool', ['check', 'metrics'], { input: text, reject: false });
  return { exitCode: r.exitCode ?? -1, out: `${r.stdout}${r.stderr}` };
}

test('/metrics: hosts by version, health and site; rollout stage and halt; index expiry; requests and publishes; promtool finds no problem', async (t) => {
  const repo = await makeRealRepo();
  const stateDir = await tempDir('loopship-state-');
  const config = parseServerConfig({ publishers: [{ name: 'team', token: PUBLISHER }], viewers: [{ name: 'noc', token: VIEWER }], sites: [{ name: 'site-a', token: SITE }] });
  const writer = await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir });
  const srv = await startServer({ repoDir: repo.dir, config, writer, stateDir });
  t.teardown(async () => {
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work, stateDir]) await rm(d, { recursive: true, force: true });
  });
  for (const v of ['1.0.0', '1.1.0']) await uploadPackage(srv.url, PUBLISHER, (await makePackage(repo, 'desktop', v, { imageBytes: 64 * 1024 })).tarPath);
  await promoteRemote(srv.url, PUBLISHER, 'desktop', '1.0.0', 'stable');
  await rolloutRemote(srv.url, PUBLISHER, 'desktop', 'stable', { op: 'start', to: '1.1.0', stages: '25,100@manual' });
  await rolloutRemote(srv.url, PUBLISHER, 'desktop', 'stable', { op: 'pause', reason: 'a look first' });
  const report = (host: string, version: string, health: string) => ({
    host, agent_version: 'test', last_error: null, appliances: [{ name: 'desktop', version, running: true, health, verified: true }],
  });
  for (const [h, v, health] of [['xen-01', '1.0.0', 'healthy'], ['xen-02', '1.0.0', 'healthy'], ['xen-03', '1.1.0', 'unhealthy']]) {
    t.is((await postReport(srv.url, report(h, v, health), await enrolHost(srv.url, SITE, h))).status, 201);
  }
  await rawRequest(srv.url, { path: '/index.json' });

  t.is((await rawRequest(srv.url, { path: '/metrics' })).status, 401, 'a token is needed (host names are not in it, but the fleet is)');
  t.is((await rawRequest(srv.url, { path: '/metrics', headers: { Authorization: `Bearer ${SITE}` } })).status, 401);
  const r = await rawRequest(srv.url, { path: '/metrics', headers: { Authorization: `Bearer ${VIEWER}` } });
  t.is(r.status, 200);
  t.regex(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  const text = r.body.toString();
  const checked = await promtool(text);
  t.is(checked.exitCode, 0, checked.out);
  t.is(checked.out.trim(), '', 'no lint findings either');

  const value = (line: RegExp) => Number(text.split('\n').find((l) => line.test(l))?.split(' ').at(-1));
  t.is(value(/^loopship_fleet_hosts\{image="desktop",version="1\.0\.0",health="healthy",site="site-a"\}/), 2);
  t.is(value(/^loopship_fleet_hosts\{image="desktop",version="1\.1\.0",health="unhealthy",site="site-a"\}/), 1);
  t.is(value(/^loopship_rollout_stage\{image="desktop",channel="stable",to="1\.1\.0"\}/), 1);
  t.is(value(/^loopship_rollout_open_percent\{image="desktop",channel="stable",to="1\.1\.0"\}/), 25);
  t.is(value(/^loopship_rollout_halted\{image="desktop",channel="stable",to="1\.1\.0",by_halt_rule="false"\}/), 1);
  const expiry = value(/^loopship_index_expiry_timestamp_seconds /);
  t.true(expiry > Date.now() / 1000 + 20 * 86400, String(expiry));
  t.true(value(/^loopship_index_version /) >= 5);
  t.is(value(/^loopship_http_requests_total\{kind="repository",method="GET",code="200"\}/), 1);
  t.is(value(/^loopship_http_requests_total\{kind="api",method="POST",code="201"\}/), 2 + 1 + 3 + 3, 'uploads, rollout start, enrolments, reports');
  t.is(value(/^loopship_publish_duration_seconds_count\{result="published"\}/), 2);
  t.true(value(/^loopship_http_response_bytes_total\{kind="repository"\}/) > 0);
  t.true(value(/^loopship_server_process_resident_memory_bytes /) > 0);

  // a broken exposition is what promtool is there to catch: the check is not a formality
  const broken = await promtool(text.replace('# TYPE loopship_index_version gauge', '# TYPE loopship_index_version gauge\n# TYPE loopship_index_version counter'));
  t.not(broken.exitCode, 0);
});
