// The dashboard's rollout view and its buttons in a real headless Chromium: an operator
// pauses and resumes a rollout from the page (the signed index changes, the log names who);
// a viewer sees no buttons; posts without the page's CSRF token, with another user's, or
// from another site are refused and change nothing. Also: hosts per version, the reason a
// host is behind, the site filter and the index-expiry warning.
import test from 'ava';
import { access, rm, stat, copyFile } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { chromium } from 'playwright-core';
import { startServer, parseServerConfig, createRepositoryWriter, uploadPackage, promoteRemote } from '../../repo-server/index.js';
import { rolloutRemote } from '../../repo-server/client.js';
import { csrfToken } from '../../repo-server/dashboard-actions.js';
import { sha256 } from '../../repo-server/config.js';
import { makeRealRepo, makePackage, rawRequest, tempDir, hashTree } from './helpers.js';
import { enrolHost, postReport } from './fleet.js';

const CHROMIUM = '/usr/bin/chromium';
const PUBLISHER = 'publisher-token-0123456789abcdef';
const OPERATOR = 'operator-token-0123456789abcdef';
const VIEWER = 'viewer-token-0123456789abcdef';
const SITES = [{ name: 'north', token: 'site-north-token-0123456789' }, { name: 'south', token: 'site-south-token-0123456789' }];
const basic = (pass: string) => 'Basic ' + Buffer.from(`u:${pass}`).toString('base64');

test('rollouts on the dashboard: an operator pauses and resumes from the page; refused posts change nothing', async (t) => {
  await access(CHROMIUM).catch(() => t.fail(`${CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh does)`));
  const repo = await makeRealRepo();
  const state = await tempDir('loopship-state-');
  const profile = await tempDir('loopship-chromium-');
  const config = parseServerConfig({
    publishers: [{ name: 'team', token: PUBLISHER }], operators: [{ name: 'anna', token: OPERATOR }], viewers: [{ name: 'noc', token: VIEWER }],
    sites: SITES, index_expires_days: 3, dashboard: { title: 'Fleet' },
  });
  const writer = await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir });
  const logs: Record<string, unknown>[] = [];
  const srv = await startServer({ repoDir: repo.dir, config, writer, stateDir: state, log: pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) }) });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  t.teardown(async () => {
    await browser.close();
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work, state, profile]) await rm(d, { recursive: true, force: true });
  });
  for (const v of ['1.0.0', '1.1.0']) await uploadPackage(srv.url, PUBLISHER, (await makePackage(repo, 'desktop', v, { imageBytes: 64 * 1024 })).tarPath);
  await promoteRemote(srv.url, PUBLISHER, 'desktop', '1.0.0', 'stable');
  const started = await rolloutRemote(srv.url, OPERATOR, 'desktop', 'stable', { op: 'start', to: '1.1.0', stages: '20,100@manual' });
  const app = (version: string, extra: Record<string, unknown> = {}) => ({ name: 'desktop', version, channel: 'stable', running: true, health: 'healthy', verified: true, ...extra });
  const reports: [string, number, Record<string, unknown>][] = [
    ['xen-n1', 0, app('1.1.0')],
    ['xen-n2', 0, app('1.0.0', { rollout: { id: started.rollout.id, to: '1.1.0', taking: false, reason: 'outside the open stages' } })],
    ['xen-s1', 1, app('1.0.0', { failed_versions: ['1.1.0'], error: 'health check failed: <b>no marker</b>' })],
    ['xen-s2', 1, app('1.0.0', { waiting: { to: '1.1.0', opens: null, reason: 'waiting for a window' } })],
  ];
  for (const [host, site, a] of reports) {
    const r = await postReport(srv.url, { host, agent_version: 't', last_error: null, appliances: [a] }, await enrolHost(srv.url, SITES[site].token, host));
    t.is(r.status, 201, r.body.toString());
  }

  // as the operator: the rollout card with its stages, tally and buttons
  const ctx = await browser.newContext({ httpCredentials: { username: 'anna', password: OPERATOR }, viewport: { width: 1400, height: 1000 } });
  const page = await ctx.newPage();
  t.is((await page.goto(srv.url + '/'))?.status(), 200);
  const card = page.locator('section.rollout[data-rollout="desktop/stable"]');
  t.regex(await card.innerText(), /1\.0\.0 → 1\.1\.0[\s\S]*running[\s\S]*stage 1 of 2, 20% of hosts/);
  t.is(await card.locator('.stage.open').count(), 1);
  t.regex(await card.locator('.tally').innerText(), /^2 host\(s\) took 1\.1\.0 · 1 failed · 1 waiting for their stage$/);
  t.regex(await card.locator('ul.failed').innerText(), /xen-s1 \(south\): health check failed: <b>no marker<\/b>/, 'error text shown as text');
  t.regex(await page.locator('#expiry').innerText(), /index\.json expires in 2 d \d+ h .*re-sign it/);
  // why hosts are behind, as they said; hosts per version
  t.regex(await page.locator('tr[data-host="xen-n2"] .why').innerText(), /outside the rollout of 1\.1\.0/);
  t.notRegex(await page.locator('tr[data-host="xen-n1"]').innerText(), /behind/, 'a host on the rollout\'s new version is not behind its channel');
  t.regex(await page.locator('tr[data-host="xen-s2"] .why').innerText(), /waiting for its maintenance window/);
  t.regex(await page.locator('tr[data-host="xen-s1"] .why').innerText(), /failed 1\.1\.0, rolled back/);
  t.is(await page.locator('#versions tr[data-version="1.0.0"] td.num').innerText(), '3');
  t.is(await page.locator('#versions tr[data-version="1.1.0"] td.num').innerText(), '1');

  // press Pause with a reason
  await card.locator('form[action$="/pause"] input[name=reason]').fill('calls from south');
  await Promise.all([page.waitForURL(/#rollouts$/), card.locator('form[action$="/pause"] button').click()]);
  t.regex(await card.innerText(), /paused[\s\S]*calls from south \(operator anna \(dashboard\)/);
  t.like(logs.find((l) => l.msg === 'rollout pause'), { who: 'anna', kind: 'operator', via: 'dashboard', image: 'desktop' });
  const shot = path.join(repo.work, 'dashboard-rollouts.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.true((await stat(shot)).size > 10_000);
  t.log(`screenshot: ${shot}`);
  if (process.env.LOOPSHIP_KEEP_SCREENSHOT) await copyFile(shot, process.env.LOOPSHIP_KEEP_SCREENSHOT.replace(/(\.png)?$/, '-rollouts.png'));
  await Promise.all([page.waitForURL(/#rollouts$/), card.locator('form[action$="/resume"] button').click()]);
  t.regex(await card.innerText(), /running/);

  // hold a host from its row: the index holds it on the version it reported, the row says so
  const row = page.locator('tr[data-host="xen-n1"]');
  await row.locator('form.hold input[name=reason]').fill('visit on friday');
  await Promise.all([page.waitForURL(/#fleet$/), row.locator('form.hold button').click()]);
  t.regex(await page.locator('tr[data-host="xen-n1"] .why').innerText(), /held on 1\.1\.0 by operator anna \(dashboard\): visit on friday/);
  t.like(logs.find((l) => l.msg === 'host held'), { who: 'anna', via: 'dashboard', host: 'xen-n1', version: '1.1.0' });
  await Promise.all([page.waitForURL(/#fleet$/), page.locator('tr[data-host="xen-n1"] form.hold button', { hasText: 'Release' }).click()]);
  t.is(await page.locator('tr[data-host="xen-n1"] form.hold button', { hasText: 'Hold on 1.1.0' }).count(), 1);

  // the site filter
  await page.goto(srv.url + '/?site=south#fleet');
  t.deepEqual(await page.locator('tr.host').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-host'))), ['xen-s1', 'xen-s2']);

  // a viewer sees the rollout, no buttons
  const vctx = await browser.newContext({ httpCredentials: { username: 'noc', password: VIEWER } });
  const vpage = await vctx.newPage();
  await vpage.goto(srv.url + '/');
  t.is(await vpage.locator('section.rollout').count(), 1);
  t.is(await vpage.locator('section.rollout form').count(), 0);

  // refused posts: no token in the form, a viewer, another user's token, another site's page
  const before = await hashTree(repo.dir);
  const op = { kind: 'operator' as const, name: 'anna', digest: sha256(OPERATOR) };
  const post = (auth: string, body: string, headers: Record<string, string> = {}) =>
    rawRequest(srv.url, { method: 'POST', path: '/actions/rollouts/desktop/stable/pause', headers: { Authorization: auth, 'Content-Type': 'application/x-www-form-urlencoded', ...headers }, body });
  t.is((await post(basic(OPERATOR), 'reason=x')).status, 403);
  t.is((await post(basic(VIEWER), `csrf=${csrfToken({ kind: 'viewer', name: 'noc', digest: sha256(VIEWER) })}`)).status, 401);
  t.is((await post(basic(OPERATOR), `csrf=${csrfToken({ kind: 'publisher', name: 'team', digest: sha256(PUBLISHER) })}`)).status, 403);
  t.is((await post(basic(OPERATOR), `csrf=${csrfToken(op)}`, { 'Sec-Fetch-Site': 'cross-site' })).status, 403);
  t.is((await post(basic(OPERATOR), `csrf=${csrfToken(op)}`, { Origin: 'http://evil.example' })).status, 403);
  t.is(await hashTree(repo.dir), before, 'refused posts changed nothing');
  // a reason with a line break in it (pasted into the form) is made one line, not refused
  t.is((await post(basic(OPERATOR), `csrf=${csrfToken(op)}&op=start&reason=${encodeURIComponent('first line\nsecond')}`)).status, 303, 'the right token from the same site works; a stray op field changes nothing');
  t.regex(await (await ctx.newPage()).goto(srv.url + '/').then((r) => r!.text()), /first line second/);
  t.not(await hashTree(repo.dir), before, 'the accepted post did change the index');
});
