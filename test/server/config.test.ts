// The server config file and token matching.
import test from 'ava';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadServerConfig, parseServerConfig } from '../../repo-server/index.js';
import { bearerToken, findPrincipal } from '../../repo-server/auth.js';
import { ConfigError } from '../../format/index.js';
import { sha256hex, tempDir } from './helpers.js';

const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../repo-server/server.example.yaml');

test('the example config is valid and its tokens match', async (t) => {
  const c = await loadServerConfig(EXAMPLE);
  t.is(findPrincipal('change-me-publisher-token', c.publishers)?.name, 'packaging-team');
  t.is(findPrincipal('change-me-site-token-north', c.sites)?.name, 'branch-north');
  t.is(findPrincipal('change-me-site-token-north', c.publishers), null, 'a site token is not a publisher token');
  t.is(findPrincipal('change-me-viewer-token', c.viewers)?.name, 'operations');
  t.false(c.dashboard.public);
  t.is(c.limits.uploadIdleTimeoutMs, 60_000);
});

test('defaults: no file at the default path is a read-only server; a named missing file is an error', async (t) => {
  const c = parseServerConfig({});
  t.deepEqual([c.publishers, c.sites, c.indexKeys], [[], [], []]);
  t.is(c.limits.maxHosts, 10_000);
  t.is(c.limits.maxHostsPerSite, 1000);
  t.deepEqual(c.viewers, []);
  t.false(c.dashboard.public, 'the dashboard shows host names and errors: private unless opened');
  const err = await t.throwsAsync(loadServerConfig('/nonexistent/server.yaml'));
  t.true(err instanceof ConfigError);
  t.regex(err!.message, /\/nonexistent\/server\.yaml: cannot read/);
});

test('bad configs name the field', async (t) => {
  const dir = await tempDir();
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const cases: Array<[string, RegExp]> = [
    ['publishers:\n  - name: a\n', /publishers\.0.*exactly one of token or token_sha256/],
    ['publishers:\n  - name: a\n    token: short\n', /publishers\.0\.token.*16/],
    [`publishers:\n  - name: a\n    token_sha256: "${'A'.repeat(64)}"\n`, /token_sha256/],
    [`sites:\n  - {name: a, token: aaaaaaaaaaaaaaaaaaaa}\n  - {name: a, token: bbbbbbbbbbbbbbbbbbbb}\n`, /sites\.1\.name: duplicate name a/],
    ['limits:\n  max_upload_byte: 5\n', /limits.*max_upload_byte/],
    ['limits:\n  max_hosts_per_site: 0\n', /limits\.max_hosts_per_site/],
    [`viewers:\n  - {name: a, token: aaaaaaaaaaaaaaaaaaaa}\n  - {name: a, token: bbbbbbbbbbbbbbbbbbbb}\n`, /viewers\.1\.name: duplicate name a/],
    ['limits: [1, 2\n', /not valid YAML/],
    ['dashboard:\n  stale_minutes: -1\n', /dashboard\.stale_minutes/],
  ];
  for (const [yaml, re] of cases) {
    const f = path.join(dir, 'c.yaml');
    await writeFile(f, yaml);
    const err = await t.throwsAsync(loadServerConfig(f), undefined, yaml);
    t.true(err instanceof ConfigError, yaml);
    t.regex(err!.message, re, yaml);
    t.true(err!.message.startsWith(f), 'names the file');
  }
});

test('bearer tokens: parsing and constant-time lookup over digests', (t) => {
  t.is(bearerToken('Bearer abc.def-123'), 'abc.def-123');
  t.is(bearerToken('bearer   abc'), 'abc');
  t.is(bearerToken('Basic abc'), null);
  t.is(bearerToken('Bearer'), null);
  t.is(bearerToken('Bearer a b'), null);
  t.is(bearerToken(undefined), null);
  const c = parseServerConfig({ publishers: [{ name: 'one', token: 'token-one-0123456789' }, { name: 'two', token_sha256: sha256hex('token-two-0123456789') }] });
  t.is(findPrincipal('token-one-0123456789', c.publishers)?.name, 'one');
  t.is(findPrincipal('token-two-0123456789', c.publishers)?.name, 'two');
  t.is(findPrincipal('token-one-012345678', c.publishers), null);
  t.is(findPrincipal('', c.publishers), null);
});
