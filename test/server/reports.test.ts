// Fleet reports: a site token enrols each host once, the host reports with its own token
// (site and host from the credential), strict validation, bounded size/count/rate per site
// and in all, and file-backed stores that survive a server restart.
import test, { type ExecutionContext } from 'ava';
import { readdir, readFile, rm, writeFile, mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { startServer, parseServerConfig, FileReportStore, type RunningServer, type FleetReport } from '../../repo-server/index.js';
import { hashTree, rawRequest, sha256hex, tempDir } from './helpers.js';
import { enrolHost, enrolRequest, postReport, json } from './fleet.js';

const SITES = [
  { name: 'site-a', token: 'site-a-token-0123456789abcdef' },
  { name: 'site-b', token: 'site-b-token-0123456789abcdef' },
];
const PUBLISHER = 'publisher-token-0123456789abcdef';
const VIEWER = 'viewer-token-0123456789abcdef';
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

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
  const config = parseServerConfig({ sites: SITES, publishers: [{ name: 'team', token: PUBLISHER }], viewers: [{ name: 'ops', token: VIEWER }], limits });
  const start = () => startServer({ repoDir, config, stateDir: state });
  const srv = await start();
  t.teardown(async () => {
    await srv.close(100);
    await rm(repoDir, { recursive: true, force: true });
    await rm(state, { recursive: true, force: true });
  });
  return { srv, stateDir: state, repoDir, start };
}

const post = (srv: RunningServer, body: unknown, token?: string, type = 'application/json') => postReport(srv.url, body, token, type);
const enrol = (srv: RunningServer, host: string, site = 0) => enrolHost(srv.url, SITES[site].token, host);

test('a host enrols, reports with its own token; the report is stored on disk and survives a restart', async (t) => {
  const { srv, stateDir, start } = await setup(t);
  const a1 = await enrol(srv, 'xen-01.branch.example');
  t.regex(a1, /^lsh1:site-a:xen-01\.branch\.example:[A-Za-z0-9_-]{43}$/);
  const r = await post(srv, report('xen-01.branch.example'), a1);
  t.is(r.status, 201, r.body.toString());
  t.like(json(r), { host: 'xen-01.branch.example', site: 'site-a' });
  const b2 = await enrol(srv, 'xen-02', 1);
  t.is((await post(srv, report('xen-02', 'site-b', { last_error: 'boot timed out' }), b2)).status, 201);
  const files = await readdir(path.join(stateDir, 'reports', 'site-a'));
  t.deepEqual(files, ['xen-01.branch.example.json']);
  await srv.close(100);

  const again = await start();
  t.teardown(() => again.close(100));
  t.is((await post(again, report('xen-01.branch.example'), a1)).status, 201, 'the host token outlives a restart');
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
  t.is((await rawRequest(again.url, { path: '/api/v1/reports', headers: { Authorization: `Bearer ${VIEWER}` } })).status, 200, 'a viewer may read the fleet');
  for (const token of [undefined, SITES[0].token, a1]) {
    const r = await rawRequest(again.url, { path: '/api/v1/reports', headers: token ? { Authorization: `Bearer ${token}` } : {} });
    t.is(r.status, 401, `the fleet list needs a viewer or publisher token (${token?.slice(0, 12)})`);
  }
});

test('enrolment keeps only the sha256 of the host token, 0600 in a 0700 directory', async (t) => {
  const { srv, stateDir } = await setup(t);
  const token = await enrol(srv, 'Xen-07');
  const file = path.join(stateDir, 'hosts', 'site-a', 'xen-07.json');
  const record = JSON.parse(await readFile(file, 'utf8'));
  t.like(record, { site: 'site-a', host: 'Xen-07', token_sha256: sha256hex(token) });
  t.false((await readFile(file, 'utf8')).includes(token.split(':')[3]), 'the secret itself is not stored');
  t.is((await stat(file)).mode & 0o777, 0o600);
  t.is((await stat(path.join(stateDir, 'hosts'))).mode & 0o777, 0o700);
  t.is((await stat(path.join(stateDir, 'hosts', 'site-a'))).mode & 0o777, 0o700);
  t.deepEqual(await readdir(path.join(stateDir, 'hosts', 'site-a')), ['xen-07.json'], 'no temp file left');
  // host names are case-insensitive: the report may spell it either way, the credential's spelling is kept
  const r = await post(srv, report('xen-07'), token);
  t.is(r.status, 201, r.body.toString());
  t.is(json(r).host, 'Xen-07');
});

test('a second enrolment of a name is refused (409); revoked, the name stays barred (403) until an operator allows it (loopship hosts revoke, allow)', async (t) => {
  const { srv, stateDir } = await setup(t);
  const first = await enrol(srv, 'xen-01');
  const again = await enrolRequest(srv.url, SITES[0].token, { host: 'XEN-01' });
  t.is(again.status, 409);
  t.like(json(again), { code: 'HOST_ENROLLED' });
  t.regex(json(again).message as string, /host XEN-01 of site site-a is already enrolled.*loopship hosts revoke site-a XEN-01, then loopship hosts allow site-a XEN-01/);
  // the same name in another site is another host
  t.is((await enrolRequest(srv.url, SITES[1].token, { host: 'xen-01' })).status, 201);

  const hosts = (verb: string, args: string[]) => execa('node', ['--import', 'tsx', path.join(ROOT, 'bin/loopship.ts'), 'hosts', verb, ...args], { cwd: ROOT, reject: false });
  const revoke = (args: string[]) => hosts('revoke', args);
  const done = await revoke(['site-a', 'xen-01', '--state-dir', stateDir]);
  t.is(done.exitCode, 0, done.stderr);
  t.regex(done.stdout, /revoked host xen-01 of site site-a/);
  const r = await post(srv, report('xen-01'), first);
  t.is(r.status, 401, 'the revoked token is refused at once');
  t.regex(json(r).message as string, /not enrolled here/);
  // the revoked host holds the site token as well: it may not simply enrol again
  const barred = await enrolRequest(srv.url, SITES[0].token, { host: 'xen-01' });
  t.is(barred.status, 403);
  t.like(json(barred), { code: 'HOST_REVOKED' });
  t.regex(json(barred).message as string, /host xen-01 of site site-a was revoked .*loopship hosts allow site-a xen-01/);
  const allowed = await hosts('allow', ['site-a', 'xen-01', '--state-dir', stateDir]);
  t.is(allowed.exitCode, 0, allowed.stderr);
  t.regex(allowed.stdout, /host xen-01 of site site-a may enrol again/);
  t.is((await hosts('allow', ['site-a', 'xen-01', '--state-dir', stateDir])).exitCode, 1, 'allow twice: nothing to lift');
  const second = await enrol(srv, 'xen-01');
  t.not(second, first);
  t.is((await post(srv, report('xen-01'), second)).status, 201);

  const missing = await revoke(['site-a', 'xen-99', '--state-dir', stateDir]);
  t.is(missing.exitCode, 1);
  t.regex(missing.stderr, /host xen-99 of site site-a is not enrolled/);
  const bad = await revoke(['../etc', 'xen-01', '--state-dir', stateDir]);
  t.is(bad.exitCode, 2);
  t.regex(bad.stderr, /invalid site name "\.\.\/etc"/);
});

test('bad enrolments: no or wrong token 401, another site 403, a bad body 400, nothing stored', async (t) => {
  const { srv, stateDir } = await setup(t);
  const before = await hashTree(stateDir);
  for (const token of [undefined, 'site-a-token-wrong-wrong-wrong', PUBLISHER, VIEWER]) {
    const r = await enrolRequest(srv.url, token, { host: 'xen-01' });
    t.is(r.status, 401, String(token));
    t.is(json(r).code, 'UNAUTHORIZED');
  }
  const other = await enrolRequest(srv.url, SITES[0].token, { host: 'xen-01', site: 'site-b' });
  t.is(other.status, 403);
  t.like(json(other), { code: 'SITE_MISMATCH', message: 'this token belongs to site site-a, not to site site-b' });
  const cases: Array<[unknown, RegExp]> = [
    [{ host: '../../etc/passwd' }, /host/],
    [{ host: 'xen-01', token: 'mine' }, /token|unrecognized/i],
    [{}, /host/],
    [[], /expected object/i],
  ];
  for (const [body, re] of cases) {
    const r = await enrolRequest(srv.url, SITES[0].token, body);
    t.is(r.status, 400, JSON.stringify(body));
    t.is(json(r).code, 'BAD_REQUEST');
    t.regex(json(r).message as string, re);
  }
  t.is((await rawRequest(srv.url, { path: '/api/v1/hosts/enrol' })).status, 405);
  t.is(await hashTree(stateDir), before);
});

test('a newer report replaces the older one for the same host', async (t) => {
  const { srv, stateDir } = await setup(t);
  const token = await enrol(srv, 'xen-01');
  await post(srv, report('xen-01'), token);
  await post(srv, report('xen-01', 'site-a', { appliances: [], last_error: 'disk full' }), token);
  const stored = JSON.parse(await readFile(path.join(stateDir, 'reports', 'site-a', 'xen-01.json'), 'utf8'));
  t.is(stored.report.last_error, 'disk full');
  t.deepEqual(await readdir(path.join(stateDir, 'reports', 'site-a')), ['xen-01.json'], 'no temp files left');
});

test('no token, a wrong token, a publisher token or a forged host token: 401; a site token: 403; nothing stored', async (t) => {
  const { srv, stateDir } = await setup(t);
  const real = await enrol(srv, 'xen-01');
  const before = await hashTree(stateDir);
  const forged = real.replace(/:[^:]+$/, ':' + 'A'.repeat(43));
  for (const token of [undefined, 'site-a-token-wrong-wrong-wrong', PUBLISHER, forged, 'lsh1:site-a:xen-02:' + 'A'.repeat(43)]) {
    const r = await post(srv, report('xen-01'), token);
    t.is(r.status, 401, String(token));
    t.is(json(r).code, 'UNAUTHORIZED');
  }
  const site = await post(srv, report('xen-01'), SITES[0].token);
  t.is(site.status, 403);
  t.is(json(site).code, 'HOST_TOKEN_REQUIRED');
  t.regex(json(site).message as string, /site token cannot send reports.*POST \/api\/v1\/hosts\/enrol/);
  t.is(await hashTree(stateDir), before);
});

test("a host cannot report for another host or another site (403 naming the mismatch)", async (t) => {
  const { srv, stateDir } = await setup(t);
  const token = await enrol(srv, 'xen-01');
  const before = await hashTree(stateDir);
  const site = await post(srv, report('xen-01', 'site-b'), token);
  t.is(site.status, 403);
  t.like(json(site), { code: 'SITE_MISMATCH', message: 'this host token belongs to site site-a, not to site site-b' });
  const host = await post(srv, report('xen-02'), token);
  t.is(host.status, 403);
  t.like(json(host), { code: 'HOST_MISMATCH', message: 'this host token belongs to host xen-01 of site site-a; it cannot report for host xen-02' });
  t.is(await hashTree(stateDir), before);
});

test('invalid reports are refused with a message naming the field', async (t) => {
  const { srv, stateDir } = await setup(t);
  const token = await enrol(srv, 'xen-01');
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
    const r = await post(srv, body, token);
    t.is(r.status, 400, JSON.stringify(body).slice(0, 80));
    const e = JSON.parse(r.body.toString());
    t.is(e.code, 'BAD_REQUEST');
    t.regex(e.message, re);
  }
  t.is((await post(srv, '{"host":', token)).status, 400, 'malformed JSON');
  t.is((await post(srv, 'host=x', token, 'application/x-www-form-urlencoded')).status, 415);
  t.is(await hashTree(stateDir), before);
});

test('oversized bodies are refused with 413', async (t) => {
  const { srv, stateDir } = await setup(t, { max_json_bytes: 4096 });
  const token = await enrol(srv, 'xen-01');
  const before = await hashTree(stateDir);
  const r = await post(srv, report('xen-01', 'site-a', { last_error: 'x'.repeat(3999) + '' }), token);
  t.is(r.status, 413);
  t.is(JSON.parse(r.body.toString()).code, 'PAYLOAD_TOO_LARGE');
  t.is(await hashTree(stateDir), before);
});

test('flooding is bounded: per-site rate (429 + Retry-After)', async (t) => {
  const { srv } = await setup(t, { reports_per_minute_per_site: 5 });
  const token = await enrol(srv, 'xen-0'); // enrolling counts against the site's budget too
  const statuses: number[] = [];
  for (let i = 0; i < 6; i++) statuses.push((await post(srv, report('xen-0'), token)).status);
  t.deepEqual(statuses, [201, 201, 201, 201, 429, 429]);
  const limited = await post(srv, report('xen-0'), token);
  t.truthy(Number(limited.headers['retry-after']) > 0);
  t.is(json(limited).code, 'RATE_LIMITED');
  t.is((await enrolRequest(srv.url, SITES[0].token, { host: 'xen-1' })).status, 429);
  // site-b has its own budget
  t.is((await post(srv, report('b-0', 'site-b'), await enrol(srv, 'b-0', 1))).status, 201);
});

test('flooding is bounded: hosts per site, then in all (507 naming the limit)', async (t) => {
  const { srv } = await setup(t, { max_hosts_per_site: 2, max_hosts: 3 });
  for (const h of ['a-0', 'a-1']) t.is((await post(srv, report(h), await enrol(srv, h))).status, 201);
  const full = await enrolRequest(srv.url, SITES[0].token, { host: 'a-2' });
  t.is(full.status, 507);
  t.like(json(full), { code: 'STORE_FULL' });
  t.regex(json(full).message as string, /site site-a has enrolled its limit of 2 hosts \(limits\.max_hosts_per_site\); host a-2 not enrolled/);
  // site-b still enrols and reports, until the server's own limit
  t.is((await post(srv, report('b-0', 'site-b'), await enrol(srv, 'b-0', 1))).status, 201);
  const all = await enrolRequest(srv.url, SITES[1].token, { host: 'b-1' });
  t.is(all.status, 507);
  t.regex(json(all).message as string, /the server has enrolled its limit of 3 hosts \(limits\.max_hosts\)/);
});

test('the report store refuses a new host past its site\'s limit before the global one', async (t) => {
  const stateDir = await tempDir('loopship-state-');
  t.teardown(() => rm(stateDir, { recursive: true, force: true }));
  const store = await FileReportStore.open(stateDir, { maxHosts: 3, maxHostsPerSite: 2 });
  await store.put(report('a-0'));
  await store.put(report('a-1'));
  const err = await t.throwsAsync(store.put(report('a-2')));
  t.regex(err!.message, /site site-a holds its limit of 2 hosts/);
  await store.put(report('a-1')); // a known host still reports
  await store.put(report('b-0', 'site-b'));
  t.regex((await t.throwsAsync(store.put(report('b-1', 'site-b'))))!.message, /the fleet store holds its limit of 3 hosts/);
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
  // as client-agent's reportBody() builds it
  const body = {
    host: 'dom0-7',
    site: null,
    agent_version: '0.1.0',
    appliances: [{ name: 'desktop', version: null, running: false, health: 'unknown', verified: null }],
    last_error: null,
  };
  const r = await post(srv, body, await enrol(srv, 'dom0-7', 1));
  t.is(r.status, 201, r.body.toString());
  const stored = JSON.parse(await readFile(path.join(stateDir, 'reports', 'site-b', 'dom0-7.json'), 'utf8'));
  t.is(stored.report.site, 'site-b', 'the site comes from the token');
  t.is(stored.report.appliances[0].verified, null);
});
