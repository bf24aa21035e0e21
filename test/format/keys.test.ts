import test from 'ava';
import { execa } from 'execa';
import { join } from 'node:path';
import { writeFile, readFile } from 'node:fs/promises';
import { tempDir } from '../helpers/repo.js';
import { Keystore } from '../../keys/index.js';

const loopship = (args: string[], env: Record<string, string> = {}) => execa('node', ['dist/bin/loopship.js', ...args], { reject: false, env: { LOOPSHIP_PASSPHRASE: '', ...env } });

test('passphrase-protected keys: encrypted at rest, usable with the passphrase, a clear error without or with a wrong one', async (t) => {
  const dir = await tempDir();
  const keys = join(dir, 'keys');
  const pf = join(dir, 'pass');
  await writeFile(pf, 'correct horse\n');
  t.is((await loopship(['keys', 'init', '--dir', keys, '--passphrase-file', pf])).exitCode, 0);
  const store = await Keystore.open(keys);
  const priv = await readFile(join(keys, store.find('index').private_file!), 'utf8');
  t.regex(priv, /BEGIN PGP PRIVATE KEY BLOCK/);
  await t.throwsAsync(store.privateKey(store.find('index')), { message: /protected by a passphrase/ });
  await t.throwsAsync(store.privateKey(store.find('index'), 'wrong'), { message: /wrong passphrase/ });
  const none = await loopship(['repo', 'init', '--dir', join(dir, 'repo'), '--keys', keys]);
  t.is(none.exitCode, 1);
  t.regex(none.stderr, /root-1-[0-9a-f]{8}\.key: key is protected by a passphrase/);
  const ok = await loopship(['repo', 'init', '--dir', join(dir, 'repo'), '--keys', keys], { LOOPSHIP_PASSPHRASE: 'correct horse' });
  t.is(ok.exitCode, 0, ok.stderr);
});

test('keys rotate publishes root N+1; keys list shows the retired key', async (t) => {
  const dir = await tempDir();
  const keys = join(dir, 'keys');
  const repo = join(dir, 'repo');
  await loopship(['keys', 'init', '--dir', keys]);
  await loopship(['repo', 'init', '--dir', repo, '--keys', keys]);
  const before = await Keystore.open(keys);
  const oldIndex = before.find('index').fingerprint;
  const r = await loopship(['keys', 'rotate', '--dir', keys, '--role', 'index', '--repo', repo, '--json']);
  t.is(r.exitCode, 0, r.stderr);
  t.is(JSON.parse(r.stdout).rootVersion, 2);
  const root2 = JSON.parse(await readFile(join(repo, 'root/2.json'), 'utf8'));
  t.false(root2.roles.index.keys.includes(oldIndex));
  const index = JSON.parse(await readFile(join(repo, 'index.json'), 'utf8'));
  t.is(index.root_version, 2);
  const list = await loopship(['keys', 'list', '--dir', keys, '--all']);
  t.regex(list.stdout, new RegExp(`${oldIndex} retired`));
  const rootPub = join(keys, before.find('root').public_file);
  const v = await loopship(['verify', '--repo', repo, '--root-key', rootPub]);
  t.is(v.exitCode, 0, v.stderr);
  t.regex(v.stdout, /root chain to version 2 \(accepted 2\)/);
  const bad = await loopship(['keys', 'rotate', '--dir', keys, '--role', 'admin', '--repo', repo]);
  t.is(bad.exitCode, 2);
  t.regex(bad.stderr, /--role must be one of root, index, publisher/);
});
