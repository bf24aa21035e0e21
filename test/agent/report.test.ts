// The agent's fleet report (client-agent/report.ts): it enrols once with the site token,
// keeps the host token it gets (0600, never through a symlink), reports with it, enrols
// again when the server revokes it, and says clearly what went wrong. Against an injected
// httpPost (no network) and against the real server on 127.0.0.1.
import test, { type ExecutionContext } from 'ava';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from '../../client-agent/agent.js';
import type { HttpAnswer } from '../../client-agent/report.js';
import { packageVersion } from '../../format/version.js';
import { startServer, parseServerConfig, FileHostRegistry } from '../../repo-server/index.js';
import { FakeBackend } from './fakes.js';

const SITE_TOKEN = 'agent-site-token-0123456789abcdef';
const HOST_TOKEN = 'lsh1:branch-7:dom0-7:' + 'h'.repeat(43);

interface Call {
  url: string;
  body: Record<string, unknown>;
  token?: string;
}

/** A host dir with an agent.yaml reporting to `url`, and an Agent over it. */
async function host(t: ExecutionContext, url: string, opts: { name?: string; siteToken?: string | null; post?: (c: Call) => HttpAnswer; logs?: string[] } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-report-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const token = opts.siteToken === null ? '' : `, token: "${opts.siteToken ?? SITE_TOKEN}"`;
  await writeFile(join(dir, 'agent.yaml'), [`repos: [${url}]`, `trust: { root_fingerprint: ${'a'.repeat(40)} }`, `report: { url: "${url}", site: branch-7${token} }`].join('\n') + '\n');
  const calls: Call[] = [];
  const agent = new Agent({
    configPath: join(dir, 'agent.yaml'),
    stateDir: join(dir, 'state'),
    backend: new FakeBackend(join(dir, 'console')),
    host: opts.name ?? 'dom0-7',
    log: (l) => opts.logs?.push(l),
    httpPost: opts.post
      ? async (u, body, tok) => {
          const c = { url: u, body: body as Record<string, unknown>, token: tok };
          calls.push(c);
          return opts.post!(c);
        }
      : undefined,
  });
  await agent.state.init();
  return { dir, agent, calls, tokenFile: join(dir, 'state', 'trust', 'report-token') };
}

const isEnrol = (c: Call) => c.url.endsWith('/api/v1/hosts/enrol');

test('the first report enrols with the site token and keeps the host token (0600); later reports use only it', async (t) => {
  const h = await host(t, 'http://fleet.invalid:8080', {
    post: (c) => (isEnrol(c) ? { status: 201, body: { site: 'branch-7', host: 'dom0-7', token: HOST_TOKEN, enrolled_at: new Date().toISOString() } } : { status: 201 }),
  });
  t.true(await h.agent.report(null));
  t.true(await h.agent.report('disk almost full'));
  t.deepEqual(h.calls.map((c) => [c.url, c.token]), [
    ['http://fleet.invalid:8080/api/v1/hosts/enrol', SITE_TOKEN],
    ['http://fleet.invalid:8080/api/v1/reports', HOST_TOKEN],
    ['http://fleet.invalid:8080/api/v1/reports', HOST_TOKEN],
  ]);
  t.deepEqual(h.calls[0].body, { host: 'dom0-7', site: 'branch-7' });
  t.like(h.calls[2].body, { host: 'dom0-7', site: 'branch-7', last_error: 'disk almost full', appliances: [] });
  t.is(h.calls[1].body.agent_version, packageVersion(), "the agent's real version (format/version.ts)");
  t.is((await readFile(h.tokenFile, 'utf8')).trim(), HOST_TOKEN);
  t.is((await stat(h.tokenFile)).mode & 0o777, 0o600);
  t.deepEqual((await readdir(join(h.dir, 'state', 'trust'))).filter((f) => f.includes('report-token')), ['report-token'], 'no temp file left');
});

test('a token the server no longer knows (401): the agent enrols again, once; a name enrolled with another token: a clear error', async (t) => {
  const NEW = HOST_TOKEN.replace(/h+$/, 'n'.repeat(43));
  let enrolAnswer: HttpAnswer = { status: 201, body: { token: NEW } };
  const logs: string[] = [];
  const h = await host(t, 'http://fleet.invalid', {
    logs,
    post: (c) => (isEnrol(c) ? enrolAnswer : c.token === NEW ? { status: 201 } : { status: 401, body: { code: 'UNAUTHORIZED', message: 'this host token is not enrolled here' } }),
  });
  await mkdir(join(h.dir, 'state', 'trust'), { recursive: true });
  await writeFile(h.tokenFile, HOST_TOKEN + '\n', { mode: 0o600 });
  t.true(await h.agent.report(null));
  t.deepEqual(h.calls.map((c) => c.token), [HOST_TOKEN, SITE_TOKEN, NEW]);
  t.is((await readFile(h.tokenFile, 'utf8')).trim(), NEW);
  t.true(logs.some((l) => /refused this host's token \(HTTP 401 UNAUTHORIZED: this host token is not enrolled here\); enrolling again/.test(l)));

  // revoked again, and this time someone else holds the name
  await writeFile(h.tokenFile, HOST_TOKEN + '\n');
  enrolAnswer = { status: 409, body: { code: 'HOST_ENROLLED', message: 'host dom0-7 of site branch-7 is already enrolled' } };
  const err = await t.throwsAsync(h.agent.report(null));
  t.is((err as { code?: string }).code, 'CONFLICT');
  t.regex(err!.message, /host dom0-7 is already enrolled with another token \(HTTP 409 HOST_ENROLLED: .*\); restore .*report-token, or have the server's operator revoke it \(loopship hosts revoke SITE dom0-7, then loopship hosts allow SITE dom0-7\)/);
  t.is((await readFile(h.tokenFile, 'utf8')).trim(), HOST_TOKEN, 'a failed enrolment leaves the old token');
});

test('report errors name the status and the server\'s code and message', async (t) => {
  const h = await host(t, 'http://fleet.invalid', {
    post: (c) => (isEnrol(c) ? { status: 201, body: { token: HOST_TOKEN } } : { status: 403, body: { code: 'HOST_MISMATCH', message: 'this host token belongs to host x' } }),
  });
  const err = await t.throwsAsync(h.agent.report(null));
  t.regex(err!.message, /^http:\/\/fleet\.invalid\/api\/v1\/reports: report answered HTTP 403 HOST_MISMATCH: this host token belongs to host x$/);
  const bare = await host(t, 'http://fleet.invalid', { post: () => 201 });
  t.regex((await t.throwsAsync(bare.agent.report(null)))!.message, /enrolment answered HTTP 201 without a usable token/);
});

test('a symlink planted at the token path is refused and never followed; no site token is a config error', async (t) => {
  const h = await host(t, 'http://fleet.invalid', { post: (c) => (isEnrol(c) ? { status: 201, body: { token: HOST_TOKEN } } : { status: 201 }) });
  const outside = join(h.dir, 'outside');
  await writeFile(outside, 'not yours\n');
  await mkdir(join(h.dir, 'state', 'trust'), { recursive: true });
  await symlink(outside, h.tokenFile);
  const err = await t.throwsAsync(h.agent.report(null));
  t.regex(err!.message, /report-token: is a symbolic link; refused/);
  t.is((err as { code?: string }).code, 'STATE_UNSAFE');
  t.is(h.calls.length, 0, 'nothing sent');
  // a dangling symlink: enrolment must not write through it
  await rm(h.tokenFile);
  await symlink(join(h.dir, 'planted'), h.tokenFile);
  await t.throwsAsync(h.agent.report(null), { message: /report-token/ });
  await t.throwsAsync(stat(join(h.dir, 'planted')), { code: 'ENOENT' });
  t.is(await readFile(outside, 'utf8'), 'not yours\n');

  const none = await host(t, 'http://fleet.invalid', { siteToken: null, post: () => 201 });
  const e2 = await t.throwsAsync(none.agent.report(null));
  t.is((e2 as { code?: string }).code, 'CONFIG_INVALID');
  t.regex(e2!.message, /report\.token: this host has no report token yet/);
});

test('against the real server: enrol, report; another host with the same name and the site token is refused; revoked, the name is barred until allowed, then the host enrols again', async (t) => {
  const repoDir = await mkdtemp(join(tmpdir(), 'loopship-repo-'));
  const stateDir = await mkdtemp(join(tmpdir(), 'loopship-state-'));
  const config = parseServerConfig({ sites: [{ name: 'branch-7', token: SITE_TOKEN }] });
  const srv = await startServer({ repoDir, config, stateDir, host: '127.0.0.1' });
  t.teardown(async () => {
    await srv.close(100);
    await rm(repoDir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });
  const a = await host(t, srv.url);
  t.true(await a.agent.report(null));
  t.true(await a.agent.report('second round'));
  const stored = JSON.parse(await readFile(join(stateDir, 'reports', 'branch-7', 'dom0-7.json'), 'utf8'));
  t.like(stored.report, { host: 'dom0-7', site: 'branch-7', last_error: 'second round', agent_version: packageVersion() });

  // an impostor with the site token and the same host name
  const impostor = await host(t, srv.url);
  const err = await t.throwsAsync(impostor.agent.report('owned'));
  t.regex(err!.message, /host dom0-7 is already enrolled with another token \(HTTP 409 HOST_ENROLLED/);
  t.is(JSON.parse(await readFile(join(stateDir, 'reports', 'branch-7', 'dom0-7.json'), 'utf8')).report.last_error, 'second round');

  // the operator revokes the name: the host (it holds the site token) cannot enrol itself again
  const before = (await readFile(a.tokenFile, 'utf8')).trim();
  const registry = FileHostRegistry.at(stateDir, { maxHosts: 10, maxHostsPerSite: 10 });
  t.true(await registry.revoke('branch-7', 'dom0-7'));
  const barred = await t.throwsAsync(a.agent.report('after revoke'));
  t.regex(barred!.message, /HTTP 403 HOST_REVOKED.*loopship hosts allow branch-7 dom0-7/);
  t.is((await readFile(a.tokenFile, 'utf8')).trim(), before, 'the old token kept until a new one is issued');
  // allowed again (a re-installed host): the real host enrols again by itself
  t.true(await registry.allow('branch-7', 'dom0-7'));
  t.true(await a.agent.report('after revoke'));
  t.not((await readFile(a.tokenFile, 'utf8')).trim(), before);
  t.is(JSON.parse(await readFile(join(stateDir, 'reports', 'branch-7', 'dom0-7.json'), 'utf8')).report.last_error, 'after revoke');
});
