// Keys that are not files: signing through gpg (gpg-agent, so a smartcard or token behind it
// signs the same way), merged with key-file signatures into one .asc that loopship's verifier
// and `gpg --verify` both accept.
import test from 'ava';
import { execa } from 'execa';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRepo, makePackage, publish, tempDir } from '../helpers/repo.js';
import { RepoClient, createFetcher } from '../../format/index.js';
import { verifyRole } from '../../format/trust.js';
import { serialize } from '../../format/schema.js';
import { Keystore, GpgSigner, buildRoot, signRoot, signDetached, generateKey, readPrivateKey, type GpgExec } from '../../keys/index.js';

const hasGpg = (await execa('gpg', ['--version'], { reject: false }).catch(() => ({ exitCode: 127 }))).exitCode === 0;
if (!hasGpg) console.warn('test/keys/gpg-signer.test.ts: skipped, gpg is not installed (scripts/setup.sh installs gnupg)');
const gpgTest = hasGpg ? test : test.skip;

async function gpgHome() {
  const home = await tempDir('loopship-gnupg-');
  const gpg = (args: string[], input?: string) => execa('gpg', ['--homedir', home, '--batch', '--no-tty', ...args], { input, reject: false });
  const teardown = async () => {
    await execa('gpgconf', ['--homedir', home, '--kill', 'all'], { reject: false });
    await rm(home, { recursive: true, force: true });
  };
  return { home, gpg, teardown };
}

/** a fresh key in the GNUPGHOME; its primary fingerprint */
async function genKey(gpg: Awaited<ReturnType<typeof gpgHome>>['gpg'], uid: string, passphrase = ''): Promise<string> {
  const r = await gpg(['--pinentry-mode', 'loopback', '--passphrase', passphrase, '--quick-gen-key', uid, 'ed25519', 'sign', 'never']);
  if (r.exitCode !== 0) throw new Error(r.stderr);
  const list = await gpg(['--with-colons', '--list-secret-keys', uid]);
  return list.stdout.split('\n').find((l) => l.startsWith('fpr:'))!.split(':')[9].toLowerCase();
}

gpgTest('a root signed by a key file and a gpg-agent key in one .asc: verifyRole counts both, gpg --verify reads both', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const g = await gpgHome();
  t.teardown(g.teardown);
  const fpr = await genKey(g.gpg, 'Root on gpg <root@example.org>');

  const entry = await fx.keystore.importGpg('root', 'gpg-root', fpr, { homedir: g.home });
  t.deepEqual(entry.gpg, { homedir: g.home });
  t.is(entry.private_file, null);
  const reopened = await Keystore.open(fx.keysDir);
  t.truthy(reopened.entries({ role: 'root' }).find((e) => e.fingerprint === fpr)?.gpg);

  const current = await fx.writer.readRoot();
  const next = await buildRoot(reopened, 2, { repository: current.repository });
  next.roles.root.threshold = 2; // both root keys must sign
  const fileKey = await reopened.privateKey(reopened.find('root', 'root-1'));
  const gpgSigner = await reopened.signer(reopened.find('root', 'gpg-root'));
  t.true(gpgSigner instanceof GpgSigner);
  const signed = await signRoot(next, [fileKey, gpgSigner]);
  t.is((signed.signature.match(/BEGIN PGP SIGNATURE/g) ?? []).length, 1, 'one armor');

  const signers = await verifyRole(signed.bytes, signed.signature, next, 'root', 'root/2.json');
  t.deepEqual([...signers].sort(), [fileKey.getFingerprint().toLowerCase(), fpr].sort());
  // and the repository takes it as root 2 (signed by root 1's key and by the new root keys)
  await fx.writer.addRoot(signed.bytes, signed.signature);
  t.is((await fx.writer.readRoot()).version, 2);

  // the gpg key alone does not meet a threshold of 2
  const lone = await signDetached(signed.bytes, [gpgSigner]);
  await t.throwsAsync(verifyRole(signed.bytes, lone, next, 'root', 'root/2.json'), { message: /only 1 valid root signature/ });

  // gpg itself, with only the public keys: two good signatures
  const v = await gpgHome();
  t.teardown(v.teardown);
  for (const e of reopened.entries({ role: 'root' })) t.is((await v.gpg(['--import', join(fx.keysDir, e.public_file)])).exitCode, 0);
  const f = join(fx.dir, 'root-2.json');
  await writeFile(f, signed.bytes);
  await writeFile(f + '.asc', signed.signature);
  const r = await v.gpg(['--status-fd', '1', '--verify', f + '.asc', f]);
  t.is(r.exitCode, 0, r.stderr);
  const valid = r.stdout.split('\n').filter((l) => l.startsWith('[GNUPG:] VALIDSIG')).map((l) => l.split(' ')[11] ?? l.split(' ')[2]);
  t.is(valid.length, 2, r.stdout);
  t.true(valid.map((x) => x.toLowerCase()).includes(fpr), r.stdout);
  // a changed byte: gpg says BAD
  await writeFile(f, Buffer.concat([signed.bytes, Buffer.from(' ')]));
  t.not((await v.gpg(['--verify', f + '.asc', f])).exitCode, 0);
});

gpgTest('a publisher key held by gpg signs a package the client accepts', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const g = await gpgHome();
  t.teardown(g.teardown);
  const fpr = await genKey(g.gpg, 'Packager on gpg <pkg@example.org>');
  await fx.keystore.importGpg('publisher', 'gpgpub', fpr, { homedir: g.home });
  // a root that allows the new publisher, signed by the root key file
  const current = await fx.writer.readRoot();
  const next = await buildRoot(fx.keystore, 2, { repository: current.repository });
  const signed = await signRoot(next, await fx.keystore.signers('root'));
  await fx.writer.addRoot(signed.bytes, signed.signature);

  // makePackage signs with keystore.privateKey(); a gpg entry has no file: it says so
  await t.throwsAsync(fx.keystore.privateKey(fx.keystore.find('publisher', 'gpgpub')), { message: /held by gpg-agent/ });
  const { createPackage } = await import('../../format/package.js');
  const { makeImage, baseManifest } = await import('../helpers/repo.js');
  const img = join(fx.dir, 'disk.img');
  await makeImage(img);
  await writeFile(join(fx.dir, 'vmlinuz'), 'kernel');
  const tarPath = join(fx.dir, 'gpg.tar');
  await createPackage({
    manifest: baseManifest('tiny', '1.0.0'),
    imagePath: img,
    kernelPath: join(fx.dir, 'vmlinuz'),
    initrdPath: null,
    publisherKey: await fx.keystore.signer(fx.keystore.find('publisher', 'gpgpub')),
    out: { tarPath },
  });
  await publish(fx, tarPath);
  const fetcher = createFetcher(fx.repoDir);
  const c = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored }) });
  await c.update();
  const { manifest } = await c.manifest('tiny', '1.0.0');
  t.is(manifest.version, '1.0.0');
  void makePackage;
});

gpgTest('a passphrase-protected gpg key signs through --pinentry-mode loopback (as a card PIN would be given); a wrong one is an error naming gpg', async (t) => {
  const g = await gpgHome();
  t.teardown(g.teardown);
  const fpr = await genKey(g.gpg, 'Protected <p@example.org>', 'correct horse');
  const data = Buffer.from('{"type":"loopship/root"}');
  // the wrong one first: once right, gpg-agent caches the passphrase (as it caches a card PIN)
  await t.throwsAsync(new GpgSigner(fpr, { homedir: g.home, passphrase: 'wrong' }).sign(data), { message: /gpg did not sign.*(Bad passphrase|bad passphrase|No secret key|signing failed)/s });
  const good = await new GpgSigner(fpr, { homedir: g.home, passphrase: 'correct horse' }).sign(data);
  t.regex(good, /BEGIN PGP SIGNATURE/);
  // an unknown fingerprint: no public key
  await t.throwsAsync(new GpgSigner('0'.repeat(40), { homedir: g.home }).sign(data), { message: /gpg has no public key/ });
  t.throws(() => new GpgSigner('ABCD1234'), { message: /full fingerprint/ });
});

gpgTest('what gpg returns is checked: a signature by another key, over other bytes, or two packets is refused', async (t) => {
  const g = await gpgHome();
  t.teardown(g.teardown);
  const fpr = await genKey(g.gpg, 'Real <r@example.org>');
  const data = Buffer.from('the bytes to sign');
  const stranger = await readPrivateKey((await generateKey('stranger')).privateArmored, undefined);
  const real = new GpgSigner(fpr, { homedir: g.home });
  const realSig = await real.sign(data);
  const fake = (answer: () => Promise<string>): GpgExec => async (file, args, opts) => {
    if (args.includes('--detach-sign')) return { exitCode: 0, stdout: Buffer.from(await answer()), stderr: '' };
    const { spawnExec } = await import('../../keys/signer.js');
    return spawnExec(file, args, opts);
  };
  const seen: string[][] = [];
  const recording: GpgExec = async (file, args, opts) => {
    seen.push(args);
    const { spawnExec } = await import('../../keys/signer.js');
    return spawnExec(file, args, opts);
  };
  await new GpgSigner(fpr, { homedir: g.home, exec: recording }).sign(data);
  const signArgs = seen.find((a) => a.includes('--detach-sign'))!;
  t.true(signArgs.includes('--local-user') && signArgs[signArgs.indexOf('--local-user') + 1] === fpr);
  t.true(signArgs.includes('--homedir') && signArgs.includes(g.home));

  const byStranger = new GpgSigner(fpr, { homedir: g.home, exec: fake(() => signDetached(data, [stranger])) });
  await t.throwsAsync(byStranger.sign(data), { message: /does not verify with key/ });
  const otherBytes = new GpgSigner(fpr, { homedir: g.home, exec: fake(() => real.sign(Buffer.from('other bytes'))) });
  await t.throwsAsync(otherBytes.sign(data), { message: /does not verify with key/ });
  const two = new GpgSigner(fpr, { homedir: g.home, exec: fake(() => signDetached(data, [stranger, real])) });
  await t.throwsAsync(two.sign(data), { message: /made 2 signatures/ });
  t.regex(realSig, /BEGIN PGP SIGNATURE/);
});
