// The dashboard in a real headless Chromium (Debian's, driven by playwright-core):
// images, versions, channels, sizes and build facts from a real signed repository, the
// fleet from stored reports with a stale host highlighted, and hostile text escaped. The
// page is private by default: a viewer (or publisher) token, as the Basic-auth password.
import test from 'ava';
import { access, mkdir, rm, writeFile, stat, readFile } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';
import { startServer, parseServerConfig, createRepositoryWriter, uploadPackage, promoteRemote, type FleetReport } from '../../repo-server/index.js';
import { makeRealRepo, makePackage, rawRequest, tempDir } from './helpers.js';
import { enrolHost, postReport } from './fleet.js';

const CHROMIUM = '/usr/bin/chromium';
const TOKEN = 'dashboard-publisher-token-0123456789';
const SITE = 'dashboard-site-token-0123456789';
const VIEWER = 'dashboard-viewer-token-0123456789';

function report(host: string, extra: Partial<FleetReport> = {}): FleetReport {
  return {
    host,
    site: 'branch-north',
    agent_version: '0.1.0',
    time: new Date().toISOString(),
    appliances: [{ name: 'desktop', version: '1.1.0', channel: 'stable', running: true, health: 'healthy', verified: true }],
    last_error: null,
    ...extra,
  };
}

test('the dashboard shows images, versions, channels, sizes, build facts and the fleet', async (t) => {
  await access(CHROMIUM).catch(() => t.fail(`${CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh does)`));
  const repo = await makeRealRepo();
  const state = await tempDir('loopship-state-');
  const profile = await tempDir('loopship-chromium-');
  const config = parseServerConfig({ publishers: [{ name: 'team', token: TOKEN }], sites: [{ name: 'branch-north', token: SITE }], viewers: [{ name: 'ops', token: VIEWER }], dashboard: { stale_minutes: 30, title: 'Central repository' } });
  // a host that last reported two hours ago, as an earlier server run stored it
  await mkdir(path.join(state, 'reports', 'branch-north'), { recursive: true });
  await writeFile(
    path.join(state, 'reports', 'branch-north', 'xen-old.json'),
    JSON.stringify({ report: report('xen-old', { appliances: [{ name: 'desktop', version: '1.0.0', channel: 'stable', running: false, health: 'unhealthy', verified: false }] }), received_at: new Date(Date.now() - 2 * 3600_000).toISOString() }),
  );
  const writer = await createRepositoryWriter(repo.dir, config, { keysDir: repo.keysDir });
  const srv = await startServer({ repoDir: repo.dir, config, writer, stateDir: state });
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 1000 },
    httpCredentials: { username: 'ops', password: VIEWER }, // the browser answers the Basic challenge
  });
  t.teardown(async () => {
    await browser.close();
    await srv.close(100);
    for (const d of [repo.dir, repo.keysDir, repo.work, state, profile]) await rm(d, { recursive: true, force: true });
  });

  // two versions sharing most image blocks, and a second image
  const seed = randomBytes(512 * 1024);
  const v1 = await makePackage(repo, 'desktop', '1.0.0', { seed });
  const changed = Buffer.from(seed);
  randomBytes(8192).copy(changed, 100 * 4096);
  const v2 = await makePackage(repo, 'desktop', '1.1.0', { seed: changed });
  await uploadPackage(srv.url, TOKEN, v1.tarPath);
  const second = await uploadPackage(srv.url, TOKEN, v2.tarPath, undefined, { channel: 'testing' });
  t.true(second.reused_chunks > 0, 'the second version reuses chunks of the first');
  await promoteRemote(srv.url, TOKEN, 'desktop', '1.1.0', 'stable');
  await uploadPackage(srv.url, TOKEN, (await makePackage(repo, 'terminal', '0.9')).tarPath);

  const post = async (body: FleetReport) => postReport(srv.url, body, await enrolHost(srv.url, SITE, body.host));
  t.is((await post(report('xen-01.branch-north'))).status, 201);
  t.is((await post(report('xen-02', { last_error: '<img src=x onerror="document.title=1">boot failed & rolled back' }))).status, 201);

  const page = await browser.newPage();
  const resp = await page.goto(srv.url + '/');
  t.is(resp?.status(), 200);
  t.is(await page.title(), 'Central repository');
  const shot = path.join(repo.work, 'dashboard.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.true((await stat(shot)).size > 10_000, 'a real screenshot was taken');
  t.true((await readFile(shot)).subarray(1, 4).equals(Buffer.from('PNG')));
  t.log(`screenshot: ${shot}`);
  if (process.env.LOOPSHIP_KEEP_SCREENSHOT) await writeFile(process.env.LOOPSHIP_KEEP_SCREENSHOT, await readFile(shot));

  const text = await page.locator('body').innerText();
  for (const s of ['desktop', 'terminal', '1.0.0', '1.1.0', '0.9', 'stable → 1.1.0', 'testing → 1.1.0', 'bookworm', '2 packages', 'xen-01.branch-north', 'xen-02', 'xen-old', 'branch-north', 'index v']) {
    t.true(text.includes(s), `page shows ${s}`);
  }
  // sizes: apparent image+kernel (768 KiB + 40000 B), compressed, chunk counts
  t.regex(text, /807 KiB/);
  // the new-chunks column of 1.1.0 is measured against 1.0.0
  const row = page.locator('section[data-image="desktop"] tbody tr', { hasText: '1.1.0' });
  t.regex(await row.innerText(), /vs 1\.0\.0/);
  t.regex(await page.locator('section[data-image="desktop"] tbody tr', { hasText: '1.0.0' }).last().innerText(), /first version/);

  // stale host highlighted, fresh ones not
  t.is(await page.locator('tr.host.stale').count(), 1);
  t.regex(await page.locator('tr.host.stale').innerText(), /xen-old[\s\S]*stale/);
  t.regex(await page.locator('tr[data-host="xen-old"]').innerText(), /behind: stable is 1\.1\.0/);
  t.regex(await page.locator('tr[data-host="xen-old"]').innerText(), /not verified/);
  t.is(await page.locator('tr[data-host="xen-01.branch-north"].stale').count(), 0);
  const staleBg = await page.locator('tr.host.stale td').first().evaluate((el) => getComputedStyle(el).backgroundColor);
  const freshBg = await page.locator('tr[data-host="xen-01.branch-north"] td').first().evaluate((el) => getComputedStyle(el).backgroundColor);
  t.not(staleBg, freshBg, 'stale rows look different');

  // hostile text is shown as text, never as markup
  t.true(text.includes('<img src=x onerror="document.title=1">boot failed & rolled back'));
  t.is(await page.locator('tr[data-host="xen-02"] img').count(), 0);
  t.is(await page.title(), 'Central repository');
  const headers = resp!.headers();
  t.regex(headers['content-security-policy'] ?? '', /default-src 'none'/);
});

test('the dashboard of an empty directory says nothing is published, without failing', async (t) => {
  const dir = await tempDir();
  const srv = await startServer({ repoDir: dir, config: parseServerConfig({ dashboard: { public: true } }), stateDir: null });
  t.teardown(async () => {
    await srv.close(100);
    await rm(dir, { recursive: true, force: true });
  });
  const r = await rawRequest(srv.url, { path: '/' });
  t.is(r.status, 200);
  t.regex(r.body.toString(), /no index\.json yet/);
  t.regex(r.body.toString(), /No host has reported yet/);
});

test('the dashboard is private by default: a viewer or publisher token (Basic password or Bearer)', async (t) => {
  const dir = await tempDir();
  const config = parseServerConfig({ publishers: [{ name: 'team', token: TOKEN }], sites: [{ name: 'branch-north', token: SITE }], viewers: [{ name: 'ops', token: VIEWER }] });
  const srv = await startServer({ repoDir: dir, config, stateDir: null });
  t.teardown(async () => {
    await srv.close(100);
    await rm(dir, { recursive: true, force: true });
  });
  const none = await rawRequest(srv.url, { path: '/' });
  t.is(none.status, 401);
  t.regex(JSON.parse(none.body.toString()).message, /dashboard needs a viewer or publisher token/);
  t.regex(String(none.headers['www-authenticate']), /^Basic realm="loopship dashboard"/);
  const basic = (user: string, pass: string) => 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64');
  t.is((await rawRequest(srv.url, { path: '/', headers: { Authorization: basic('anyone', TOKEN) } })).status, 200);
  t.is((await rawRequest(srv.url, { path: '/', headers: { Authorization: `Bearer ${TOKEN}` } })).status, 200);
  t.is((await rawRequest(srv.url, { path: '/', headers: { Authorization: basic('', VIEWER) } })).status, 200);
  t.is((await rawRequest(srv.url, { path: '/', headers: { Authorization: `Bearer ${VIEWER}` } })).status, 200);
  t.is((await rawRequest(srv.url, { path: '/', headers: { Authorization: basic('anyone', SITE) } })).status, 401, 'a site token is not enough');
  t.is((await rawRequest(srv.url, { path: '/', headers: { Authorization: basic('anyone', 'wrong-wrong-wrong-wrong') } })).status, 401);
  // the repository itself stays public: agents fetch without tokens
  t.is((await rawRequest(srv.url, { path: '/index.json' })).status, 404);
});
