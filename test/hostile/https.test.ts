// A pinned https:// mirror that an attacker tries to downgrade or impersonate. The repository
// is served over real TLS (a CA and certificates made with openssl for this run; the server is
// the repo server's own request handler on node:https, as `loopship serve` speaks plain HTTP
// only); the compiled `loopship-agent` trusts the CA through NODE_EXTRA_CA_CERTS (what its
// systemd unit would set: the agent has no CA option of its own). A host runs sbc 1.0.0
// installed over https; 2.0.0 is published since (the host has seen that index). For every attack, `upgrade sbc --json`:
// exit 4, the error names the https URL and the reason, no byte went over plain HTTP (an
// http server that would serve the same repository records no request), and the host is
// byte-identical (1.0.0's images by sha256; state.json but for last_update/last_error).
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { join } from 'node:path';
import { createRequestListener } from '../../repo-server/app.js';
import { parseServerConfig } from '../../repo-server/config.js';
import { makeRepo, type Fixture } from '../helpers/repo.js';
import { publishExt4 } from '../agent/ext4.js';
import { hostileServer, hashTree, diffTrees, SKIP, normalizedState, fileSha, runCli, type HostileServer, type Host, type CliResult } from './harness.js';

interface Pki {
  /** the CA the hosts trust */
  ca: string;
  /** for 127.0.0.1, signed by the trusted CA */
  good: { key: Buffer; cert: Buffer };
  /** for 127.0.0.1, signed by a CA nobody trusts (a man in the middle) */
  rogue: { key: Buffer; cert: Buffer };
  /** signed by the trusted CA, but for another name */
  otherName: { key: Buffer; cert: Buffer };
}

async function makePki(dir: string): Promise<Pki> {
  await mkdir(dir, { recursive: true });
  const ossl = (args: string[]) => execa('openssl', args, { cwd: dir });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const ca = async (name: string) => {
    await ossl(['req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  };
  const leaf = async (name: string, issuer: string, san: string) => {
    await writeFile(join(dir, `${name}.ext`), `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
    await ossl(['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    await ossl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`]);
    return { key: await readFile(join(dir, `${name}.key`)), cert: await readFile(join(dir, `${name}.pem`)) };
  };
  await ca('site-ca');
  await ca('rogue-ca');
  return {
    ca: join(dir, 'site-ca.pem'),
    good: await leaf('mirror', 'site-ca', 'IP:127.0.0.1,DNS:localhost'),
    rogue: await leaf('mitm', 'rogue-ca', 'IP:127.0.0.1,DNS:localhost'),
    otherName: await leaf('elsewhere', 'site-ca', 'DNS:mirror.invalid'),
  };
}

interface HttpsServer {
  url: string;
  /** requests that reached HTTP (after a completed TLS handshake) */
  requests: string[];
  close(): Promise<void>;
}

/** The repo server's handler over TLS (no sendfile: it would bypass TLS), unless `override` answers. */
async function httpsRepo(repoDir: string, tls: { key: Buffer; cert: Buffer }, override?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean): Promise<HttpsServer> {
  const listener = createRequestListener({ repoDir, config: parseServerConfig({}), static: { sendfile: null } });
  const requests: string[] = [];
  const server = https.createServer(tls, (req, res) => {
    requests.push(req.url ?? '');
    if (!override?.(req, res)) listener(req, res);
  });
  server.on('tlsClientError', () => {});
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `https://127.0.0.1:${(server.address() as { port: number }).port}`,
    requests,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

async function hostConfig(host: string, repo: string): Promise<void> {
  await writeFile(join(host, 'agent.yaml'), `repos: [${repo}]\ntrust: { root_key_file: ${join(host, 'root.asc')} }\nhealth_timeout_s: 5\nfetch_concurrency: 2\nappliances:\n  - name: sbc\n    settings: { hostname: branch-01 }\n`);
}

const hostIn = (dir: string): Host => ({ dir, configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), consoleDir: join(dir, 'console') });

interface World {
  fx: Fixture;
  pki: Pki;
  good: HttpsServer;
  /** plain HTTP over the same repository: anything the agent sends here is a downgrade */
  plain: HostileServer;
  /** sbc 1.0.0 installed over https */
  template: Host;
  images: { v1: string };
}

const worldP: Promise<World> = (async () => {
  const fx = await makeRepo();
  const pki = await makePki(join(fx.dir, 'pki'));
  // the agent processes trust the site CA, as the host's unit file would make them
  process.env.NODE_EXTRA_CA_CERTS = pki.ca;
  const v1 = await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  const good = await httpsRepo(fx.repoDir, pki.good);
  const plain = await hostileServer(fx.repoDir);
  const template = hostIn(join(fx.dir, 'template'));
  await mkdir(template.dir);
  await writeFile(join(template.dir, 'root.asc'), fx.rootKeyArmored);
  await hostConfig(template.dir, good.url);
  const r = await runCli(template, ['install', 'sbc', '--no-start', '--json']);
  if (r.exitCode !== 0) throw new Error(`install over https failed: ${r.stderr}`);
  await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two' });
  // the host has seen the newest index (its rollback floor), not yet upgraded
  const u = await runCli(template, ['update', '--json']);
  if (u.exitCode !== 0) throw new Error(`update over https failed: ${u.stderr}`);
  return { fx, pki, good, plain, template, images: { v1: await fileSha(v1.image) } };
})();

test.after.always(async () => {
  const w = await worldP.catch(() => null);
  if (!w) return;
  await w.good.close();
  await w.plain.close();
  await w.fx.cleanup();
});

/** A copy of the template host whose config names `repo`. */
async function hostFor(w: World, name: string, repo: string): Promise<Host> {
  const dir = join(w.fx.dir, 'hosts', name);
  await mkdir(join(w.fx.dir, 'hosts'), { recursive: true });
  await execa('cp', ['-a', '--sparse=always', w.template.dir, dir]);
  await hostConfig(dir, repo);
  return hostIn(dir);
}

/** Runs `upgrade sbc` on a copy of the template pointed at `repo`; checks what every attack must leave. */
async function attack(t: ExecutionContext, w: World, name: string, repo: string): Promise<CliResult & { error: string }> {
  const host = await hostFor(w, name, repo);
  const v1 = join(host.stateDir, 'appliances', 'sbc', '1.0.0');
  const images = async () => ({ verified: await fileSha(join(v1, 'verified.img')), boot: await fileSha(join(v1, 'disk.img')) });
  const before = await hashTree(host.dir, SKIP);
  const imagesBefore = await images();
  const stateBefore = normalizedState(await readFile(join(host.stateDir, 'state.json'), 'utf8'));
  const plainBefore = w.plain.requests.length;

  const r = await runCli(host, ['upgrade', 'sbc', '--json']);
  const error = r.stderr.split('\n').find((l) => l.startsWith('loopship-agent: error: ')) ?? '';
  t.is(r.exitCode, 4, `exit code (stderr: ${r.stderr.slice(-1500)})`);
  t.is(r.json?.code, 'FETCH_FAILED');
  t.is(w.plain.requests.length, plainBefore, `nothing asked over plain HTTP: ${w.plain.requests.slice(plainBefore).join(', ')}`);

  // the host as it was: 1.0.0's images, the tree, the state but for the update time and the error
  t.deepEqual(await images(), imagesBefore);
  t.is(imagesBefore.verified, w.images.v1);
  const after = await hashTree(host.dir, SKIP);
  t.deepEqual(diffTrees(before.files, after.files), []);
  t.deepEqual(normalizedState(await readFile(join(host.stateDir, 'state.json'), 'utf8')), stateBefore);
  return { ...r, error };
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** the first metadata file the agent asks for (root/N.json, then index.json) */
const FILE = '(root/\\d+|index)\\.json';

test('the good case: install over https with the site CA pinned; the image exactly as built', async (t) => {
  const w = await worldP;
  const host = hostIn(join(w.fx.dir, 'fresh'));
  await mkdir(host.dir);
  await writeFile(join(host.dir, 'root.asc'), w.fx.rootKeyArmored);
  await hostConfig(host.dir, w.good.url);
  const seen = w.good.requests.length;
  const r = await runCli(host, ['install', 'sbc@1.0.0', '--no-start', '--json']);
  t.is(r.exitCode, 0, r.stderr);
  t.is(await fileSha(join(host.stateDir, 'appliances', 'sbc', '1.0.0', 'verified.img')), w.images.v1);
  t.true(w.good.requests.slice(seen).some((p) => p.startsWith('/packs/') || p.startsWith('/chunks/')), 'the image came over https');
  // and the template host (installed the same way) too
  t.is(await fileSha(join(w.template.stateDir, 'appliances', 'sbc', '1.0.0', 'verified.img')), w.images.v1);
});

for (const a of [
  { what: 'every file', redirects: (_url: string) => true, file: FILE, asked: 1 },
  // metadata verified over TLS, then the pack and (the fallback) every chunk sent to http://
  { what: 'the image data only', redirects: (url: string) => /^\/(packs|chunks)\//.test(url), file: 'chunks/[0-9a-f]{2}/[0-9a-f]{64}', asked: -1 },
]) {
  test(`(a) the https mirror redirects ${a.what} to the same path over http://: refused, nothing fetched over http`, async (t) => {
    const w = await worldP;
    const downgrade = await httpsRepo(w.fx.repoDir, w.pki.good, (req, res) => {
      if (!a.redirects(req.url ?? '')) return false;
      res.writeHead(301, { location: `${w.plain.url}${req.url}` }).end();
      return true;
    });
    t.teardown(() => downgrade.close());
    const r = await attack(t, w, `redirect-${a.asked}`, downgrade.url);
    t.regex(r.error, new RegExp(`${escape(downgrade.url)}/${a.file}: HTTP 301 redirect to ${escape(w.plain.url)}/${a.file} refused`));
    const redirected = downgrade.requests.filter(a.redirects);
    if (a.asked > 0) t.is(redirected.length, a.asked, `asked once, not followed: ${downgrade.requests.join(', ')}`);
    else t.true(redirected.some((u) => u.startsWith('/packs/')) && redirected.some((u) => u.startsWith('/chunks/')), downgrade.requests.join(', '));
  });
}

test('(b) the https port answers plain HTTP (TLS stripped): a TLS error naming the URL, no request sent in clear', async (t) => {
  const w = await worldP;
  // a plain HTTP server with the real repository on the https URL's port: a client that
  // fell back to http:// on the same host and port would get everything it asked for
  const stripped = await hostileServer(w.fx.repoDir);
  t.teardown(() => stripped.close());
  const repo = stripped.url.replace(/^http:/, 'https:');
  const r = await attack(t, w, 'stripped', repo);
  t.regex(r.error, new RegExp(`${escape(repo)}/${FILE}: request failed \\(.*(wrong version number|packet length too long)`));
  t.deepEqual(stripped.requests, [], 'no HTTP request reached it');
});

test('(b) the https mirror is down: a fetch error naming the URL, no try of http:// on the same host', async (t) => {
  const w = await worldP;
  // a port nobody listens on any more
  const gone = await hostileServer(w.fx.repoDir);
  const repo = gone.url.replace(/^http:/, 'https:');
  await gone.close();
  // and plain HTTP on the host's standard port, if this machine lets us have it
  const port80 = await new Promise<HostileServer | null>((res) => {
    const requests: string[] = [];
    const srv = http.createServer((req, rs) => { requests.push(req.url ?? ''); rs.writeHead(404).end(); });
    srv.once('error', () => res(null));
    srv.listen(80, '127.0.0.1', () => res({ url: 'http://127.0.0.1', requests, override: undefined, close: () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }) }));
  });
  t.teardown(() => port80?.close());
  if (!port80) t.log('port 80 is taken here: only the same-port check runs');
  const r = await attack(t, w, 'down', repo);
  t.regex(r.error, new RegExp(`${escape(repo)}/${FILE}: request failed \\(.*connect ECONNREFUSED 127\\.0\\.0\\.1:\\d+\\)`));
  t.deepEqual(port80?.requests ?? [], [], 'nothing asked of http://127.0.0.1/');
});

test('(c) a certificate from an unknown CA (man in the middle): refused with a TLS error naming the host, no fallback', async (t) => {
  const w = await worldP;
  const mitm = await httpsRepo(w.fx.repoDir, w.pki.rogue);
  t.teardown(() => mitm.close());
  const r = await attack(t, w, 'mitm', mitm.url);
  t.regex(r.error, new RegExp(`${escape(mitm.url)}/${FILE}: request failed \\(unable to verify the first certificate, UNABLE_TO_VERIFY_LEAF_SIGNATURE\\)`));
  t.deepEqual(mitm.requests, [], 'the handshake failed: not one request was sent to the impostor');
});

test('(c) a certificate of the site CA for another name: refused, the host and the name in the error', async (t) => {
  const w = await worldP;
  const other = await httpsRepo(w.fx.repoDir, w.pki.otherName);
  t.teardown(() => other.close());
  const r = await attack(t, w, 'other-name', other.url);
  t.regex(r.error, new RegExp(`${escape(other.url)}/${FILE}: request failed \\(Hostname/IP does not match certificate's altnames: IP: 127\\.0\\.0\\.1 is not in the cert's list.*\\)`));
  t.deepEqual(other.requests, []);
});
