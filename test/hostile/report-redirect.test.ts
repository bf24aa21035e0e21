// The fleet report's HTTP, as the repository fetcher's: a redirect is not followed. The report
// URL (agent.yaml report.url) answering 3xx towards another host (a hijacked proxy or a man in
// the middle of an http:// URL) got the report body, and for an enrolment the host name, sent
// there, and the answer of that other host taken for the server's: its "token" was kept as
// this host's credential, after which the real server refused every report (401, then 409 on
// the enrolment again): the host was cut off from its fleet until an operator stepped in.
import test from 'ava';
import http from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from '../../client-agent/agent.js';
import { FakeBackend } from '../agent/fakes.js';

const SITE_TOKEN = 'hostile-site-token-0123456789abcdef';
const PLANTED = 'lsh1:branch-7:dom0-7:' + 'x'.repeat(43);

async function listen(handler: http.RequestListener, host: string): Promise<{ url: string; close: () => Promise<void> }> {
  const s = http.createServer(handler);
  await new Promise<void>((r) => s.listen(0, host, r));
  const { port } = s.address() as { port: number };
  return { url: `http://${host}:${port}`, close: () => new Promise((r) => { s.closeAllConnections(); s.close(() => r()); }) };
}

for (const status of [301, 302, 307, 308]) {
  test(`report.url answering ${status} to another host: refused, naming the redirect; nothing sent there, no token kept`, async (t) => {
    const seen: string[] = [];
    const other = await listen((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        seen.push(`${req.method} ${req.url} ${body}`);
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ site: 'branch-7', host: 'dom0-7', token: PLANTED, enrolled_at: new Date().toISOString() }));
      });
    }, '127.0.0.2');
    const server = await listen((req, res) => {
      req.resume();
      res.writeHead(status, { location: `${other.url}${req.url}` });
      res.end();
    }, '127.0.0.1');
    const dir = await mkdtemp(join(tmpdir(), 'hostile-report-'));
    t.teardown(async () => {
      await server.close();
      await other.close();
      await rm(dir, { recursive: true, force: true });
    });
    await writeFile(join(dir, 'agent.yaml'), [`repos: [${server.url}]`, `trust: { root_fingerprint: ${'a'.repeat(40)} }`, `report: { url: "${server.url}", site: branch-7, token: "${SITE_TOKEN}" }`].join('\n') + '\n');
    const agent = new Agent({ configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), backend: new FakeBackend(join(dir, 'console')), host: 'dom0-7', log: () => {} });
    await agent.state.init();
    const err = await t.throwsAsync(agent.report('a secret-ish error text'));
    t.regex(err!.message, new RegExp(`HTTP ${status} redirect to ${other.url.replace(/[.]/g, '\\.')}/api/v1/hosts/enrol refused`));
    t.deepEqual(seen, [], 'the other host got nothing');
    await t.throwsAsync(import('node:fs/promises').then((f) => f.stat(join(dir, 'state', 'trust', 'report-token'))), { code: 'ENOENT' }, 'no token kept');
  });
}

test('the report server\'s error message goes into the agent\'s error (log, state.json) printable and bounded', async (t) => {
  const server = await listen((req, res) => {
    req.resume();
    res.writeHead(403, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ code: 'FORBIDDEN\u001b[2J', message: `no\nloopship-agent: upgraded sbc -> 9.9.9\u001b]0;x\u0007${'y'.repeat(50_000)}` }));
  }, '127.0.0.1');
  const dir = await mkdtemp(join(tmpdir(), 'hostile-report-'));
  t.teardown(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  await writeFile(join(dir, 'agent.yaml'), [`repos: [${server.url}]`, `trust: { root_fingerprint: ${'a'.repeat(40)} }`, `report: { url: "${server.url}", site: branch-7, token: "${SITE_TOKEN}" }`].join('\n') + '\n');
  const agent = new Agent({ configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), backend: new FakeBackend(join(dir, 'console')), host: 'dom0-7', log: () => {} });
  await agent.state.init();
  const err = await t.throwsAsync(agent.report(null));
  t.regex(err!.message, /enrolment answered HTTP 403 FORBIDDEN\\u001b\[2J: no\\u000aloopship-agent/);
  t.notRegex(err!.message, /[^\x20-\x7e]/);
  t.true(err!.message.length < 1000, `${err!.message.length}`);
});
