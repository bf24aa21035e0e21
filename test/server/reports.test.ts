// Fleet reports: per-site tokens, strict validation, bounded size/count/rate, and a
// file-backed store that survives a server restart.
import test, { type ExecutionContext } from 'ava';
import { readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { startServer, parseServerConfig, FileReportStore, type RunningServer, type FleetReport } from '../../repo-server/index.js';
import { hashTree, rawRequest, tempDir } from './helpers.js';

const SITES = [
  { name: 'site-a', token: 'site-a-token-0123456789abcdef' },
  { name: 'site-b', token: 'site-b-token-0123456789abcdef' },
];
const PUBLISHER = 'publisher-token-0123456789abcdef';

function report(host: string, site = 'site-a', extra: Partial<FleetReport> = {}): FleetReport {
  return {
    host,
    site,
    agent_version: '0.1.0',
    time: new Date().toISOString(),
    appliances: [{ name: 'desktop', version: '1.0.0', channel: 'stable', running: true, health: 'healthy', verified: true }],
    last_error: null,
    ...extra,
  };
}

async function setup(t: ExecutionContext, limits: Record<string, number> = {}, stateDir?: string): Promise<{ srv: RunningServer; stateDir: string; repoDir: string; start: () => Promise<RunningServer> }> {
  const repoDir = await tempDir('loopship-repo-');
  const state = stateDir ?? (await tempDir('loopship-state-'));
  const config = parseServerConfig({ sites: SITES, publishers: [{ name: 'team', token: PUBLISHER }], limits });
  const start = () => startServer({ repoDir, config, stateDir: state });
  const srv = await start();
  t.teardown(async () => {
    await srv.close(100);
    await rm(repoDir, { recursive: true, force: true });
    await rm(state, { recursive: true, force: true });
  });
  return { srv, stateDir: state, repoDir, start };
}

const post = (srv: RunningServer, body: unknown, token?: string, type = 'application/json') =>
  rawRequest(srv.url, {
    method: 'POST',
    path: '/api/v1/reports',
    headers: { 'Content-Type': type, ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

test('a site reports; the report is stored on disk and survives a restart', async (t) => {
  const { srv, stateDir, start } = await setup(t);
  const r = await post(srv, report('xen-01.branch.example'), SITES[0].token);
  t.is(r.status, 201, r.body.toString());
  t.like(JSON.parse(r.body.toString()), { host: 'xen-01.branch.example', site: 'site-a' });
  await post(srv, report('xen-02', 'site-b', { last_error: 'boot timed out' }), SITES[1].token);
  const files = await readdir(path.join(stateDir, 'reports', 'site-a'));
  t.deepEqual(files, ['xen-01.branch.example.json']);
  await srv.close(100);

  const again = await start();
  t.teardown(() => again.close(100));
  const list = await rawRequest(again.url, { path: '/api/v1/reports', headers: { Authorization: `Bearer ${PUBLISHER}` } });
  t.is(list.status, 200);
  const { reports } = JSON.parse(list.body.toString());
  t.deepEqual(
    reports.map((x: { report: FleetReport }) => [x.report.site, x.report.host, x.report.last_error]),
    [
      ['site-a', 'xen-01.branch.example', null],
      ['site-b', 'xen-02', 'boot timed out'],
    ],
  );
  t.truthy(Date.parse(reports[0].received_at));
  t.is((await rawRequest(again.url, { path: '/api/v1/reports' })).status, 401, 'the fleet list needs a publisher token');
});

test('a newer report replaces the older one for the same host', async (t) => {
  const { srv, stateDir } = await setup(t);
  await post(srv, report('xen-01'), SITES[0].token);
  await post(srv, report('xen-01', 'site-a', { appliances: [], last_error: 'disk full' }), SITES[0].token);
  const stored = JSON.parse(await readFile(path.join(stateDir, 'reports', 'site-a', 'xen-01.json'), 'utf8'));
  t.is(stored.report.last_error, 'disk full');
  t.deepEqual(await readdir(path.join(stateDir, 'reports', 'site-a')), ['xen-01.json'], 'no temp files left');
});

test('no token, a wrong token, or a publisher token: 401 and nothing stored', async (t) => {
  const { srv, stateDir } = await setup(t);
  const before = await hashTree(stateDir);
  for (const token of [undefined, 'site-a-token-wrong-wrong-wrong', PUBLISHER]) {
    const r = await post(srv, report('xen-01'), token);
    t.is(r.status, 401, String(token));
  }
  t.is(await hashTree(stateDir), before);
});

test("a site cannot report for another site (403)", async (t) => {
  const { srv, stateDir } = await setup(t);
  const before = await hashTree(stateDir);
  const r = await post(srv, report('xen-01', 'site-b'), SITES[0].token);
  t.is(r.status, 403);
  t.is(JSON.parse(r.body.toString()).code, 'FORBIDDEN');
  t.is(await hashTree(stateDir), before);
});

test('invalid reports are refused with a message naming the field', async (t) => {
  const { srv, stateDir } = await setup(t);
  const before = await hashTree(stateDir);
  const cases: Array<[unknown, RegExp]> = [
    [{ ...report('xen-01'), host: '../../etc/passwd' }, /host/],
    [{ ...report('xen-01'), host: '.hidden' }, /host/],
    [{ ...report('xen-01'), extra: 1 }, /extra|unrecognized/i],
    [{ ...report('xen-01'), time: 'yesterday' }, /time/],
    [{ ...report('xen-01'), appliances: [{ name: 'desktop', version: '1.0', running: 'yes', health: 'healthy', verified: true }] }, /appliances\.0\.running/],
    [{ ...report('xen-01'), appliances: [{ name: 'desktop', version: '1.0', running: true, health: 'great', verified: true }] }, /appliances\.0\.health/],
    [{ ...report('xen-01'), appliances: Array.from({ length: 300 }, () => report('x').appliances[0]) }, /appliances/],
    [[], /top level|expected object/i],
  ];
  for (const [body, re] of cases) {
    const r = await post(srv, body, SITES[0].token);
    t.is(r.status, 400, JSON.stringify(body).slice(0, 80));
    const e = JSON.parse(r.body.toString());
    t.is(e.code, 'BAD_REQUEST');
    t.regex(e.message, re);
  }
  t.is((await post(srv, '{"host":', SITES[0].token)).status, 400, 'malformed JSON');
  t.is((await post(srv, 'host=x', SITES[0].token, 'application/x-www-form-urlencoded')).status, 415);
  t.is(await hashTree(stateDir), before);
});

test('oversized bodies are refused with 413', async (t) => {
  const { srv, stateDir } = await setup(t, { max_json_bytes: 4096 });
  const before = await hashTree(stateDir);
  const r = await post(srv, report('xen-01', 'site-a', { last_error: 'x'.repeat(3999) + '' }), SITES[0].token);
  t.is(r.status, 413);
  t.is(JSON.parse(r.body.toString()).code, 'PAYLOAD_TOO_LARGE');
  t.is(await hashTree(stateDir), before);
});

test('flooding is bounded: per-site rate (429 + Retry-After) and a host count (507)', async (t) => {
  const { srv } = await setup(t, { reports_per_minute_per_site: 5, max_hosts: 7 });
  const statuses: number[] = [];
  for (let i = 0; i < 8; i++) statuses.push((await post(srv, report(`xen-${i}`), SITES[0].token)).status);
  t.deepEqual(statuses, [201, 201, 201, 201, 201, 429, 429, 429]);
  const limited = await post(srv, report('xen-9'), SITES[0].token);
  t.truthy(Number(limited.headers['retry-after']) > 0);
  // site-b has its own budget; the store holds 7 hosts in all
  const b: number[] = [];
  for (let i = 0; i < 4; i++) b.push((await post(srv, report(`b-${i}`, 'site-b'), SITES[1].token)).status);
  t.deepEqual(b, [201, 201, 507, 507]);
  // known hosts may still report when the store is full
  t.is((await post(srv, report('b-0', 'site-b'), SITES[1].token)).status, 201);
});

test('the store ignores unreadable files and removes temp files left by a crash', async (t) => {
  const stateDir = await tempDir('loopship-state-');
  t.teardown(() => rm(stateDir, { recursive: true, force: true }));
  const dir = path.join(stateDir, 'reports', 'site-a');
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'broken.json'), '{"report":');
  await writeFile(path.join(dir, '.tmp-123-abc'), 'partial');
  await writeFile(path.join(dir, 'other.json'), JSON.stringify({ report: report('someone-else'), received_at: new Date().toISOString() }));
  const warnings: string[] = [];
  const store = await FileReportStore.open(stateDir, { maxHosts: 10, log: { warn: (_o, m) => warnings.push(m) } });
  t.is(store.list().length, 0);
  t.is(warnings.length, 2);
  t.false((await readdir(dir)).includes('.tmp-123-abc'));
  await store.put(report('xen-01'));
  const reopened = await FileReportStore.open(stateDir, { maxHosts: 10 });
  t.deepEqual(reopened.list().map((r) => r.report.host), ['xen-01']);
});

test("the agent's report body (no time, site from the token, verified not yet checked) is accepted", async (t) => {
  const { srv, stateDir } = await setup(t);
  // as client-agent's Agent.report() builds it
  const body = {
    host: 'dom0-7',
    site: null,
    agent_version: '0.1.0',
    appliances: [{ name: 'desktop', version: null, running: false, health: 'unknown', verified: null }],
    last_error: null,
  };
  const r = await post(srv, body, SITES[1].token);
  t.is(r.status, 201, r.body.toString());
  const stored = JSON.parse(await readFile(path.join(stateDir, 'reports', 'site-b', 'dom0-7.json'), 'utf8'));
  t.is(stored.report.site, 'site-b', 'the site comes from the token');
  t.is(stored.report.appliances[0].verified, null);
});
