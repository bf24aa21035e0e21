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

  // install-root checks the chain: the same root again is refused
  const stale = await cli(['keys', 'install-root', '--dir', online, '--repo', repo, '--root', join(usb, 'root-2', '2.json')]);
  t.not(stale.exitCode, 0);
  t.regex(stale.stderr, /must be version 3/);

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
