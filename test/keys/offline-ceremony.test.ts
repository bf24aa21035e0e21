// The offline root ceremony of docs/key-custody.md, through the real CLI: root keys are born
// and used on an "air-gapped" store; the online store holds only the index and publisher
// keys; only public files and signed roots cross between them. Clients follow the chain.
import test from 'ava';
import { execa } from 'execa';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from '../helpers/repo.js';
import { RepoClient, createFetcher } from '../../format/index.js';
import { Keystore } from '../../keys/index.js';

const hasGpg = (await execa('gpg', ['--version'], { reject: false }).catch(() => ({ exitCode: 127 }))).exitCode === 0;
if (!hasGpg) console.warn('test/keys/offline-ceremony.test.ts: gpg test skipped, gpg is not installed (scripts/setup.sh installs gnupg)');
const gpgTest = hasGpg ? test : test.skip;

const cli = (args: string[], env: Record<string, string> = {}) => execa('node', ['--import', 'tsx', 'bin/loopship.ts', ...args], { reject: false, env });
async function ok(args: string[], env?: Record<string, string>) {
  const r = await cli([...args, '--json'], env);
  if (r.exitCode !== 0) throw new Error(`loopship ${args.join(' ')}: exit ${r.exitCode}\n${r.stderr}`);
  return JSON.parse(r.stdout);
}
/** every file under dir, relative */
async function files(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((d) => d.isFile()).map((d) => join(d.parentPath ?? (d as unknown as { path: string }).path, d.name).slice(dir.length + 1)).sort();
}
/** nothing that crossed the gap holds a private key */
async function onlyPublic(t: import('ava').ExecutionContext, dir: string) {
  for (const f of await files(dir)) {
    const text = await readFile(join(dir, f), 'utf8');
    t.notRegex(text, /PRIVATE KEY/, `${dir}/${f}`);
    t.regex(f.split('/').pop()!, /^(keystore\.json|[a-z0-9._-]+\.pub\.asc|\d+\.json(\.asc)?)$/, `${dir}/${f}`);
  }
}

test('offline root ceremony: root keys never leave the air-gapped store; repository created and root rotated with only public files carried across', async (t) => {
  const dir = await tempDir('loopship-ceremony-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const [offline, online, repo, usb] = ['offline-keys', 'online-keys', 'repo', 'usb'].map((d) => join(dir, d));

  // air-gapped: two root keys, both must sign; online: the index and publisher keys
  await ok(['keys', 'init', '--dir', offline, '--roles', 'root', '--root-keys', '2', '--root-threshold', '2']);
  await ok(['keys', 'init', '--dir', online, '--roles', 'index,publisher']);
  await ok(['keys', 'export-public', '--dir', offline, '--out', join(usb, 'root-public')]);
  await ok(['keys', 'import-public', '--dir', online, '--from', join(usb, 'root-public'), '--roles', 'root']);
  await ok(['keys', 'export-public', '--dir', online, '--out', join(usb, 'online-public')]);
  const imported = await ok(['keys', 'import-public', '--dir', offline, '--from', join(usb, 'online-public'), '--roles', 'index,publisher']);
  t.is(imported.added.length, 2);

  // air-gapped: root 1; online: the repository from it
  const r1 = await ok(['keys', 'sign-root', '--dir', offline, '--out', join(usb, 'root-1')]);
  t.is(r1.rootVersion, 1);
  const created = await ok(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'root-1', '1.json')]);
  t.true(created.created);

  // the online store cannot sign a root; the offline one cannot sign an index
  const noRoot = await cli(['keys', 'sign-root', '--dir', online, '--out', join(dir, 'nope')]);
  t.not(noRoot.exitCode, 0);
  t.regex(noRoot.stderr, /0 root signing key\(s\) available/);
  const store = await Keystore.open(offline);
  t.deepEqual(store.entries({ role: 'index' }).map((e) => e.private_file), [null]);

  const pinKey = await readFile(join(offline, (await Keystore.open(offline)).find('root', 'root-1').public_file), 'utf8');
  const fetcher = createFetcher(repo);
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { keyArmored: pinKey }) });
  t.is((await client.update()).root.version, 1);

  // rotation of root-1 on the air-gapped machine, from a copy of the current root.json
  const rot = await ok(['keys', 'rotate', '--dir', offline, '--role', 'root', '--name', 'root-1', '--current-root', join(repo, 'root.json'), '--out', join(usb, 'root-2')]);
  t.is(rot.rootVersion, 2);
  await ok(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'root-2', '2.json')]);
  const u = await client.update();
  t.is(u.root.version, 2);
  t.deepEqual(u.rootsAccepted, [2]);
  t.false(u.root.roles.root.keys.includes(rot.retired.fingerprint));
  t.true(u.root.roles.root.keys.includes(rot.key.fingerprint));

  // an online key rotated under the offline root: the new index key is made online, the old
  // one retired there; its public half crosses; the air-gapped store signs root 3
  const idx2 = await ok(['keys', 'generate', '--dir', online, '--role', 'index', '--name', 'index-2']);
  const idx1 = (await Keystore.open(online)).find('index', 'index-1');
  await ok(['keys', 'retire', '--dir', online, '--fingerprint', idx1.fingerprint]);
  await ok(['keys', 'export-public', '--dir', online, '--out', join(usb, 'online-public-2')]);
  const moved = await ok(['keys', 'import-public', '--dir', offline, '--from', join(usb, 'online-public-2'), '--roles', 'index,publisher']);
  t.deepEqual(moved.added.map((e: { fingerprint: string }) => e.fingerprint), [idx2.key.fingerprint]);
  t.deepEqual(moved.retired.map((e: { fingerprint: string }) => e.fingerprint), [idx1.fingerprint]);
  await ok(['keys', 'sign-root', '--dir', offline, '--current-root', join(repo, 'root.json'), '--out', join(usb, 'root-3')]);
  await ok(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'root-3', '3.json')]);
  const u3 = await client.update();
  t.is(u3.root.version, 3);
  t.deepEqual(u3.root.roles.index.keys, [idx2.key.fingerprint]);
  const retireLast = await cli(['keys', 'retire', '--dir', online, '--fingerprint', idx2.key.fingerprint]);
  t.regex(retireLast.stderr, /only active index key/);

  // install-root checks the chain: the same root again is refused
  const stale = await cli(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'root-2', '2.json')]);
  t.not(stale.exitCode, 0);
  t.regex(stale.stderr, /must be version 4/);

  // everything that crossed: public only
  await onlyPublic(t, usb);
  t.true((await files(offline)).some((f) => f.endsWith('.key')), 'the root private keys stayed offline');
  t.false((await files(online)).some((f) => /^root-.*\.key$/.test(f)), 'no root private key online');
});

test('import-public refuses a public_file that is not a plain file name (the export crossed an air gap)', async (t) => {
  const dir = await tempDir('loopship-ceremony-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await ok(['keys', 'init', '--dir', join(dir, 'a'), '--roles', 'root']);
  await ok(['keys', 'init', '--dir', join(dir, 'b'), '--roles', 'index,publisher']);
  await ok(['keys', 'export-public', '--dir', join(dir, 'b'), '--out', join(dir, 'x')]);
  const p = join(dir, 'x', 'keystore.json');
  const data = JSON.parse(await readFile(p, 'utf8'));
  data.keys[0].public_file = '../../b/keystore.json';
  await import('node:fs/promises').then((fs) => fs.writeFile(p, JSON.stringify(data)));
  const r = await cli(['keys', 'import-public', '--dir', join(dir, 'a'), '--from', join(dir, 'x'), '--roles', 'index,publisher']);
  t.not(r.exitCode, 0);
  t.regex(r.stderr, /not a plain file name/);
});


gpgTest('keys rotate --gpg moves a root key into gpg-agent (a card, a token): the next roots are signed through it, the PIN from --gpg-pin-file', async (t) => {
  const dir = await tempDir('loopship-ceremony-');
  const home = join(dir, 'gnupg');
  t.teardown(async () => {
    await execa('gpgconf', ['--homedir', home, '--kill', 'all'], { reject: false });
    await rm(dir, { recursive: true, force: true });
  });
  const fs = await import('node:fs/promises');
  await fs.mkdir(home, { mode: 0o700 });
  const gpg = (args: string[]) => execa('gpg', ['--homedir', home, '--batch', '--no-tty', ...args], { reject: false });
  const gen = await gpg(['--pinentry-mode', 'loopback', '--passphrase', '4711', '--quick-gen-key', 'loopship root on a card <root@example.org>', 'ed25519', 'sign', 'never']);
  t.is(gen.exitCode, 0, gen.stderr);
  const fpr = (await gpg(['--with-colons', '--list-secret-keys'])).stdout.split('\n').find((l) => l.startsWith('fpr:'))!.split(':')[9].toLowerCase();
  await gpgconfKill(home); // a fresh agent: the PIN is not cached, --gpg-pin-file must give it
  const pin = join(dir, 'pin');
  await fs.writeFile(pin, '4711\n', { mode: 0o600 });

  const [offline, online, repo, usb] = ['offline-keys', 'online-keys', 'repo', 'usb'].map((d) => join(dir, d));
  await ok(['keys', 'init', '--dir', offline, '--roles', 'root']);
  await ok(['keys', 'init', '--dir', online, '--roles', 'index,publisher']);
  await ok(['keys', 'export-public', '--dir', online, '--out', join(usb, 'online-public')]);
  await ok(['keys', 'import-public', '--dir', offline, '--from', join(usb, 'online-public'), '--roles', 'index,publisher']);
  await ok(['keys', 'sign-root', '--dir', offline, '--out', join(usb, 'r1')]);
  await ok(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'r1', '1.json')]);

  // root-1 (a file) is replaced by the gpg key; root 2 is signed by both
  const rot = await ok(['keys', 'rotate', '--dir', offline, '--role', 'root', '--gpg', fpr, '--gnupg-home', home, '--gpg-pin-file', pin, '--current-root', join(repo, 'root.json'), '--out', join(usb, 'r2')]);
  t.is(rot.key.fingerprint, fpr);
  t.deepEqual(rot.key.gpg, { homedir: home });
  await ok(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'r2', '2.json')]);
  const listing = await cli(['keys', 'list', '--dir', offline]);
  t.regex(listing.stdout, new RegExp(`${fpr} \\(gpg-agent, GNUPGHOME `));

  // root 3, signed by the gpg key alone (the root-1 file is retired); the PIN again from the file
  await gpgconfKill(home);
  const wrongPin = join(dir, 'wrong');
  await fs.writeFile(wrongPin, '0000\n');
  const bad = await cli(['keys', 'sign-root', '--dir', offline, '--current-root', join(repo, 'root.json'), '--out', join(usb, 'r3'), '--gpg-pin-file', wrongPin]);
  t.not(bad.exitCode, 0);
  t.regex(bad.stderr, /gpg did not sign/);
  const r3 = await ok(['keys', 'sign-root', '--dir', offline, '--current-root', join(repo, 'root.json'), '--out', join(usb, 'r3b'), '--gpg-pin-file', pin]);
  t.is(r3.rootVersion, 3);
  await ok(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'r3b', '3.json')]);

  // a client pinned to the first root key follows 1 -> 2 -> 3
  const first = JSON.parse(await readFile(join(usb, 'r1', '1.json'), 'utf8'));
  const fetcher = createFetcher(repo);
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { fingerprint: first.roles.root.keys[0] }) });
  const u = await client.update();
  t.is(u.root.version, 3);
  t.deepEqual(u.root.roles.root.keys, [fpr]);
  await onlyPublic(t, join(usb, 'r3b'));
});

async function gpgconfKill(home: string) {
  await execa('gpgconf', ['--homedir', home, '--kill', 'gpg-agent'], { reject: false });
}
