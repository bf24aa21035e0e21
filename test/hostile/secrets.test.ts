// Credentials a host is configured with stay on the host: a repository URL may carry them
// (http://user:secret@host/, sent as Basic auth; or a token as the user name), and every
// fetch error named its URL whole: into the log, state.json's last_error, and the fleet
// report the server keeps and its viewers read. And agent.yaml holding them is 0600.
import test from 'ava';
import http from 'node:http';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createFetcher, RepoClient } from '../../format/index.js';
import { updateConfigFile } from '../../client-agent/config.js';

for (const [what, userinfo] of [['user and password', 'ops:s3cret-pass'], ['a token as the user name', 's3cret-token']] as const) {
  test(`a repository URL with ${what}: fetch errors and the fetcher's name mask it; the request still carries it`, async (t) => {
    const auth: string[] = [];
    const server = http.createServer((req, res) => {
      auth.push(req.headers.authorization ?? '');
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise((r) => server.close(() => r(undefined))));
    const url = `http://${userinfo}@127.0.0.1:${(server.address() as { port: number }).port}/repo`;
    const f = createFetcher(url);
    t.notRegex(f.source, /s3cret/);
    t.regex(f.source, /^http:\/\/\*\*\*@127\.0\.0\.1:\d+\/repo$/);
    const err = await t.throwsAsync(f.get('index.json', 1000));
    t.regex(err!.message, /\/repo\/index\.json: HTTP 404/);
    t.notRegex(err!.message, /s3cret/);
    t.is(auth[0], `Basic ${Buffer.from(userinfo.includes(':') ? userinfo : `${userinfo}:`).toString('base64')}`, 'the server still gets them');
    const refused = await t.throwsAsync(RepoClient.pin(createFetcher(`http://${userinfo}@127.0.0.1:9/`), { fingerprint: 'a'.repeat(40) }));
    t.notRegex(refused!.message, /s3cret/);
  });
}

test('agent.yaml whose repository URL carries credentials is written 0600', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'hostile-secrets-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'agent.yaml');
  await updateConfigFile(path, { repos: ['https://ops:s3cret@repo.example/'], trust: { root_fingerprint: 'a'.repeat(40) } });
  t.is((await stat(path)).mode & 0o777, 0o600);
  await writeFile(join(dir, 'b.yaml'), '');
  await updateConfigFile(join(dir, 'b.yaml'), { repos: ['https://repo.example/'], trust: { root_fingerprint: 'a'.repeat(40) } });
  t.is((await stat(join(dir, 'b.yaml'))).mode & 0o777, 0o644, 'no secret: as before');
});
