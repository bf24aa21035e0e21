// Hostile hosts and onlookers against the fleet side of `loopship serve` (the real server
// on 127.0.0.1, its state on disk): one test per attack. A host holds its own credential
// (enrolled once with the site token) and can speak only for itself; one site cannot
// exhaust the host store for the others; the dashboard and the fleet data are not public
// unless the config says so; a site token cannot take over an enrolled host name.
import test, { type ExecutionContext } from 'ava';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { startServer, parseServerConfig, type RunningServer, type FleetReport } from '../../repo-server/index.js';
import { hashTree, rawRequest, tempDir } from '../server/helpers.js';
import { enrolHost, enrolRequest, postReport, json } from '../server/fleet.js';

const SITE_A = 'hostile-site-a-token-0123456789';
const SITE_B = 'hostile-site-b-token-0123456789';
const VIEWER = 'hostile-viewer-token-0123456789';
const PUBLISHER = 'hostile-publisher-token-0123456';

function report(host: string, extra: Partial<FleetReport> = {}): Omit<FleetReport, 'site'> {
  return {
    host,
    agent_version: '0.1.0',
    appliances: [{ name: 'desktop', version: '1.0.0', channel: 'stable', running: true, health: 'healthy', verified: true }],
    last_error: null,
    ...extra,
  };
}

async function serve(t: ExecutionContext, extra: Record<string, unknown> = {}): Promise<{ srv: RunningServer; stateDir: string }> {
  const repoDir = await tempDir('loopship-repo-');
  const stateDir = await tempDir('loopship-state-');
  const config = parseServerConfig({
    sites: [{ name: 'site-a', token: SITE_A }, { name: 'site-b', token: SITE_B }],
    publishers: [{ name: 'team', token: PUBLISHER }],
    ...extra,
  });
  const srv = await startServer({ repoDir, config, stateDir, host: '127.0.0.1' });
  t.teardown(async () => {
    await srv.close(100);
    await rm(repoDir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });
  return { srv, stateDir };
}

const stored = async (stateDir: string, site: string, host: string) => JSON.parse(await readFile(path.join(stateDir, 'reports', site, `${host}.json`), 'utf8')).report as FleetReport;

test('host A, with its own credential, tries to overwrite host B\'s report: 403 naming the mismatch, B\'s report intact', async (t) => {
  const { srv, stateDir } = await serve(t);
  const a = await enrolHost(srv.url, SITE_A, 'xen-a');
  const b = await enrolHost(srv.url, SITE_A, 'xen-b');
  t.is((await postReport(srv.url, report('xen-b', { last_error: null }), b)).status, 201);
  const before = await hashTree(stateDir);

  // A names B in the body, with A's token
  const forged = await postReport(srv.url, report('xen-b', { last_error: 'all fine, nothing to see', appliances: [] }), a);
  t.is(forged.status, 403);
  t.like(json(forged), { code: 'HOST_MISMATCH', message: 'this host token belongs to host xen-a of site site-a; it cannot report for host xen-b' });
  // ... or spells B differently, or claims another site
  t.is((await postReport(srv.url, report('XEN-B'), a)).status, 403);
  t.like(json(await postReport(srv.url, { ...report('xen-a'), site: 'site-b' }, a)), { code: 'SITE_MISMATCH' });
  // ... or falls back on the site token every host of the site knows
  const bySite = await postReport(srv.url, report('xen-b', { last_error: 'owned' }), SITE_A);
  t.is(bySite.status, 403);
  t.is(json(bySite).code, 'HOST_TOKEN_REQUIRED');
  // ... or builds B's token from the parts it can guess
  t.is((await postReport(srv.url, report('xen-b'), `lsh1:site-a:xen-b:${a.split(':')[3]}`)).status, 401);

  t.is(await hashTree(stateDir), before, 'nothing stored');
  t.like(await stored(stateDir, 'site-a', 'xen-b'), { host: 'xen-b', last_error: null });
  t.is((await stored(stateDir, 'site-a', 'xen-b')).appliances.length, 1);
});

test('site A fills its per-site host limit: 507 naming site A, while site B still enrols and reports', async (t) => {
  const { srv } = await serve(t, { limits: { max_hosts_per_site: 3, max_hosts: 5 } });
  for (let i = 0; i < 3; i++) t.is((await postReport(srv.url, report(`a-${i}`), await enrolHost(srv.url, SITE_A, `a-${i}`))).status, 201);
  for (let i = 3; i < 8; i++) {
    const r = await enrolRequest(srv.url, SITE_A, { host: `a-${i}` });
    t.is(r.status, 507, `a-${i}`);
    t.like(json(r), { code: 'STORE_FULL' });
    t.regex(json(r).message as string, new RegExp(`^site site-a has enrolled its limit of 3 hosts \\(limits\\.max_hosts_per_site\\); host a-${i} not enrolled$`));
  }
  // site B is not affected
  for (const h of ['b-0', 'b-1']) {
    const r = await postReport(srv.url, report(h), await enrolHost(srv.url, SITE_B, h));
    t.is(r.status, 201, r.body.toString());
  }
  const list = json(await rawRequest(srv.url, { path: '/api/v1/reports', headers: { Authorization: `Bearer ${PUBLISHER}` } })).reports as Array<{ report: FleetReport }>;
  t.deepEqual(list.map((r) => `${r.report.site}/${r.report.host}`), ['site-a/a-0', 'site-a/a-1', 'site-a/a-2', 'site-b/b-0', 'site-b/b-1']);
});

test('the dashboard without a token answers 401 by default (host names and errors are not public)', async (t) => {
  const { srv } = await serve(t);
  await postReport(srv.url, report('secret-host-01', { last_error: 'password for root is hunter2' }), await enrolHost(srv.url, SITE_A, 'secret-host-01'));
  const anon = await rawRequest(srv.url, { path: '/' });
  t.is(anon.status, 401);
  t.regex(String(anon.headers['www-authenticate']), /^Basic realm="loopship dashboard"/);
  t.like(json(anon), { code: 'UNAUTHORIZED', message: 'dashboard needs a viewer or publisher token (as the password, any user name)' });
  t.false(anon.body.toString().includes('secret-host-01'));
  // a site token (every host of the site has it) is not a viewer's
  t.is((await rawRequest(srv.url, { path: '/', headers: { Authorization: `Bearer ${SITE_A}` } })).status, 401);
  t.is((await rawRequest(srv.url, { path: '/api/v1/reports', headers: { Authorization: `Bearer ${SITE_A}` } })).status, 401);
  const page = await rawRequest(srv.url, { path: '/', headers: { Authorization: 'Basic ' + Buffer.from(`team:${PUBLISHER}`).toString('base64') } });
  t.is(page.status, 200);
  t.regex(page.body.toString(), /secret-host-01/);
});

test('with dashboard.public: true the page is open to anyone; the JSON fleet data still needs a viewer token', async (t) => {
  const { srv } = await serve(t, { viewers: [{ name: 'ops', token: VIEWER }], dashboard: { public: true } });
  await postReport(srv.url, report('open-host-01'), await enrolHost(srv.url, SITE_A, 'open-host-01'));
  const page = await rawRequest(srv.url, { path: '/' });
  t.is(page.status, 200);
  t.regex(page.body.toString(), /open-host-01/);
  t.is((await rawRequest(srv.url, { path: '/api/v1/reports' })).status, 401);
  const list = await rawRequest(srv.url, { path: '/api/v1/reports', headers: { Authorization: `Bearer ${VIEWER}` } });
  t.is(list.status, 200);
  t.is((json(list).reports as unknown[]).length, 1);
});

test('the site token cannot enrol an already enrolled host name again (409), in any spelling; the host keeps its credential', async (t) => {
  const { srv, stateDir } = await serve(t);
  const owner = await enrolHost(srv.url, SITE_A, 'xen-01');
  const before = await hashTree(stateDir);
  for (const host of ['xen-01', 'XEN-01', 'Xen-01']) {
    const r = await enrolRequest(srv.url, SITE_A, { host });
    t.is(r.status, 409, host);
    t.like(json(r), { code: 'HOST_ENROLLED' });
    t.regex(json(r).message as string, new RegExp(`^host ${host} of site site-a is already enrolled`));
    t.false('token' in json(r), 'no token handed out');
  }
  t.is(await hashTree(stateDir), before, 'the enrolment record is untouched');
  t.is((await postReport(srv.url, report('xen-01'), owner)).status, 201, 'the real host still reports');
});

test('a site removed from server.yaml takes its hosts with it: their tokens are refused (401), other sites unaffected', async (t) => {
  const repoDir = await tempDir('loopship-repo-');
  const stateDir = await tempDir('loopship-state-');
  t.teardown(async () => {
    await rm(repoDir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });
  const both = parseServerConfig({ sites: [{ name: 'site-a', token: SITE_A }, { name: 'site-b', token: SITE_B }] });
  let srv = await startServer({ repoDir, config: both, stateDir, host: '127.0.0.1' });
  const a = await enrolHost(srv.url, SITE_A, 'xen-a');
  const b = await enrolHost(srv.url, SITE_B, 'xen-b');
  t.is((await postReport(srv.url, report('xen-a'), a)).status, 201);
  await srv.close(100);
  // the operator drops site-a (a closed branch, a leaked site token)
  srv = await startServer({ repoDir, config: parseServerConfig({ sites: [{ name: 'site-b', token: SITE_B }] }), stateDir, host: '127.0.0.1' });
  t.teardown(() => srv.close(100));
  const refused = await postReport(srv.url, report('xen-a'), a);
  t.is(refused.status, 401);
  t.regex(json(refused).message as string, /site site-a is not configured on this server/);
  t.is((await postReport(srv.url, report('xen-b'), b)).status, 201);
});
