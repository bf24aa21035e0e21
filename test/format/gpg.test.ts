// Interop with the real GnuPG binary, both ways: what we sign, gpg verifies with our
// exported public key; a key made by `gpg --quick-gen-key` can sign for us.
import test from 'ava';
import { execa } from 'execa';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRepo, makePackage, publish, tempDir } from '../helpers/repo.js';
import { RepoClient, createFetcher, manifestPath } from '../../format/index.js';
import { requireThreshold, readPublicKey, Keystore } from '../../keys/index.js';

async function gpgHome() {
  const home = await tempDir('loopship-gnupg-');
  const gpg = (args: string[], input?: string) => execa('gpg', ['--homedir', home, '--batch', '--no-tty', '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { input, reject: false });
  return { home, gpg };
}

test('gpg --verify accepts our signatures on index, root and manifest with the exported public keys', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const pkg = await makePackage(fx);
  await publish(fx, pkg.tarPath);
  const { gpg } = await gpgHome();
  for (const e of fx.keystore.entries()) {
    const r = await gpg(['--import', join(fx.keysDir, e.public_file)]);
    t.is(r.exitCode, 0, r.stderr);
  }
  const idx = JSON.parse(await readFile(join(fx.repoDir, 'index.json'), 'utf8'));
  const files = ['index.json', 'root.json', 'root/1.json', manifestPath(idx.images.tiny.versions['1.0.0'].manifest)];
  for (const f of files) {
    const p = join(fx.repoDir, f);
    const r = await gpg(['--status-fd', '1', '--verify', p + '.asc', p]);
    t.is(r.exitCode, 0, `${f}: ${r.stderr}`);
    t.regex(r.stdout, /\[GNUPG:\] VALIDSIG/);
  }
  // And a changed byte makes gpg fail too: the signature is over the exact bytes.
  const p = join(fx.repoDir, 'index.json');
  await writeFile(p, (await readFile(p, 'utf8')) + ' ');
  const bad = await gpg(['--verify', p + '.asc', p]);
  t.not(bad.exitCode, 0);
  t.regex(bad.stderr, /BAD signature/);
});

test('a gpg-generated key imported as a publisher signs packages the client accepts, and gpg detached signatures verify', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const { gpg } = await gpgHome();
  const gen = await gpg(['--quick-gen-key', 'Packager <packager@example.org>', 'default', 'sign', 'never']);
  t.is(gen.exitCode, 0, gen.stderr);
  const pub = (await gpg(['--armor', '--export', 'packager@example.org'])).stdout;
  const sec = (await gpg(['--armor', '--export-secret-keys', 'packager@example.org'])).stdout;
  t.regex(pub, /BEGIN PGP PUBLIC KEY BLOCK/);

  // Through the CLI, as the packaging team would do it; a new root allows the key.
  const pubFile = join(fx.dir, 'gpg.pub.asc');
  const secFile = join(fx.dir, 'gpg.sec.asc');
  await writeFile(pubFile, pub);
  await writeFile(secFile, sec);
  const cli = await execa('node', ['dist/bin/loopship.js', 'keys', 'add-publisher', '--dir', fx.keysDir, '--name', 'gpgpub', '--import-public', pubFile, '--import-private', secFile, '--repo', fx.repoDir, '--json'], { reject: false });
  t.is(cli.exitCode, 0, cli.stderr);
  t.is(JSON.parse(cli.stdout).rootVersion, 2);

  fx.keystore = await Keystore.open(fx.keysDir); // the CLI changed it on disk
  const pkg = await makePackage(fx, { publisher: 'gpgpub' });
  await publish(fx, pkg.tarPath);
  const fetcher = createFetcher(fx.repoDir);
  const c = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored }) });
  await c.update();
  const { bytes } = await c.manifest('tiny', '1.0.0');

  // gpg's own detached signature over the manifest verifies with our code.
  const mf = join(fx.dir, 'manifest.json');
  await writeFile(mf, bytes);
  const sig = await gpg(['--armor', '--detach-sign', '--local-user', 'packager@example.org', '--output', '-', mf]);
  t.is(sig.exitCode, 0, sig.stderr);
  const signers = await requireThreshold(bytes, sig.stdout, [await readPublicKey(pub)], 1, 'manifest.json', 'publisher');
  t.is(signers.size, 1);
});
