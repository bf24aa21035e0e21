import test from 'ava';
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDeb822Sources, parseOneLineSources, pickMirror, readAptSources, resolveMirror } from '../../builder/index.js';
import { LoopshipError } from '../../format/index.js';

// Host names below are placeholders in the reserved .example domain.
const DEB822 = `Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
Enabled: no
URIs: http://disabled.example/debian
Suites: trixie
Components: main
`;

async function aptRoot(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-apt-'));
  for (const [p, c] of Object.entries(files)) {
    await mkdir(join(dir, p, '..'), { recursive: true });
    await writeFile(join(dir, p), c);
  }
  return dir;
}

test('deb822: paragraphs, comments, multi-value fields, Enabled: no', (t) => {
  const s = parseDeb822Sources(DEB822, 'x.sources');
  t.is(s.length, 2);
  t.deepEqual(s[0].uris, ['http://mirror.example/debian']);
  t.deepEqual(s[0].suites, ['bookworm', 'bookworm-updates']);
  t.deepEqual(s[1].suites, ['bookworm-security']);
});

test('one-line format with options and comments', (t) => {
  const s = parseOneLineSources('# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main contrib\ndeb-src http://one.example/debian bookworm main\n\n', 'sources.list');
  t.is(s.length, 2);
  t.deepEqual(s[0], { types: ['deb'], uris: ['http://one.example/debian/'], suites: ['bookworm'], components: ['main', 'contrib'], file: 'sources.list' });
});

test('the mirror for a suite: exact suite first, never a security pocket or third-party repo', (t) => {
  const s = parseDeb822Sources(DEB822, 'x');
  t.is(pickMirror(s, 'bookworm'), 'http://mirror.example/debian');
  // A bookworm host building trixie: same archive
  t.is(pickMirror(s, 'trixie'), 'http://mirror.example/debian');
  const thirdParty = parseOneLineSources('deb https://vendor.example/apt cloud-sdk main\n', 'x');
  t.is(pickMirror(thirdParty, 'bookworm'), null);
  t.is(pickMirror(parseDeb822Sources(DEB822, 'x').slice(1), 'trixie'), null, 'only a security pocket: no mirror');
});

test('reads sources.list and sources.list.d under an injected root, ignoring disabled files', async (t) => {
  const root = await aptRoot({
    'etc/apt/sources.list': 'deb http://one.example/debian bookworm main\n',
    'etc/apt/sources.list.d/debian.sources': DEB822,
    'etc/apt/sources.list.d/vendor.list.disabled-by-admin': 'deb http://ignored.example/debian bookworm main\n',
  });
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const s = await readAptSources(root);
  t.deepEqual(s.map((x) => x.uris[0]), ['http://one.example/debian', 'http://mirror.example/debian', 'http://mirror.example/debian-security']);
  t.is(await resolveMirror({ suite: 'bookworm', rootDir: root }), 'http://one.example/debian');
  t.is(await resolveMirror({ suite: 'bookworm', rootDir: root, recipeMirror: 'http://r.example/debian/' }), 'http://r.example/debian');
  t.is(await resolveMirror({ suite: 'bookworm', rootDir: root, explicit: 'http://cli.example/debian', recipeMirror: 'http://r.example/debian' }), 'http://cli.example/debian');
});

test('no usable source: a clear error suggesting --mirror', async (t) => {
  const root = await aptRoot({ 'etc/apt/sources.list.d/vendor.list': 'deb https://vendor.example/apt stable main\n' });
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const err = await t.throwsAsync(resolveMirror({ suite: 'bookworm', rootDir: root }), { instanceOf: LoopshipError });
  t.is(err!.code, 'CONFIG_INVALID');
  t.regex(err!.message, /no Debian mirror for suite bookworm.*--mirror/);
});
