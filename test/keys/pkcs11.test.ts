// A root key that lives on a PKCS#11 token and never leaves it: SoftHSM2 plays the token, the
// key pair is generated on it (pkcs11-tool), gnupg-pkcs11-scd stands in for scdaemon behind
// gpg-agent, and gpg makes an OpenPGP key around the token's key (by keygrip). loopship signs
// root.json through gpg; its verifier and `gpg --verify` accept the signature.
// Needs: softhsm2, opensc (pkcs11-tool), gnupg-pkcs11-scd, gnupg, openssl (scripts/setup.sh).
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile, mkdir, chmod, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRepo, tempDir } from '../helpers/repo.js';
import { verifyRole } from '../../format/trust.js';
import { Keystore, GpgSigner, buildRoot, signRoot } from '../../keys/index.js';

const SOFTHSM_LIB = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so', '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so'].find((p) => existsSync(p));
const SCD = '/usr/bin/gnupg-pkcs11-scd';
const onPath = async (cmd: string) => (await execa('sh', ['-c', `command -v ${cmd}`], { reject: false })).exitCode === 0;
const missing = [
  ...(await Promise.all(['gpg', 'gpgconf', 'gpg-connect-agent', 'softhsm2-util', 'pkcs11-tool', 'openssl'].map(async (c) => ((await onPath(c)) ? [] : [c])))).flat(),
  ...(SOFTHSM_LIB ? [] : ['libsofthsm2.so (softhsm2)']),
  ...(existsSync(SCD) ? [] : [SCD + ' (gnupg-pkcs11-scd)']),
];
if (missing.length) console.warn(`test/keys/pkcs11.test.ts: skipped, missing ${missing.join(', ')} (scripts/setup.sh installs them)`);
const p11test = missing.length ? test.skip : test;

const PIN = '123456';
const SO_PIN = '87654321';

/** A SoftHSM2 token holding an RSA key pair generated on it, plus the certificate gnupg-pkcs11-scd requires. */
async function makeToken(dir: string) {
  const env = { SOFTHSM2_CONF: join(dir, 'softhsm2.conf') };
  await mkdir(join(dir, 'tokens'));
  await writeFile(env.SOFTHSM2_CONF, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\n`);
  const run = async (cmd: string, args: string[]) => {
    const r = await execa(cmd, args, { env, reject: false, cwd: dir });
    if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.exitCode}\n${r.stdout}\n${r.stderr}`);
    return r;
  };
  const p11 = ['--module', SOFTHSM_LIB!, '--token-label', 'loopship-root'];
  await run('softhsm2-util', ['--init-token', '--free', '--label', 'loopship-root', '--so-pin', SO_PIN, '--pin', PIN]);
  await run('pkcs11-tool', [...p11, '--login', '--pin', PIN, '--keypairgen', '--key-type', 'rsa:2048', '--id', '01', '--label', 'root-key']);
  // gnupg-pkcs11-scd finds keys through certificates (same CKA_ID). The private key cannot sign
  // a certificate here without an OpenSSL PKCS#11 engine, and need not: a throw-away CA issues
  // one over the token's public key (-force_pubkey). Only the public key in it matters to gpg.
  await run('pkcs11-tool', [...p11, '--read-object', '--type', 'pubkey', '--id', '01', '-o', 'pub.der']);
  await run('openssl', ['pkey', '-pubin', '-inform', 'DER', '-in', 'pub.der', '-out', 'pub.pem']);
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-subj', '/CN=throw-away CA', '-days', '3650', '-out', 'ca.crt']);
  await run('openssl', ['x509', '-new', '-subj', '/CN=loopship root key', '-force_pubkey', 'pub.pem', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-days', '3650', '-outform', 'DER', '-out', 'cert.der']);
  await run('pkcs11-tool', [...p11, '--login', '--pin', PIN, '--write-object', 'cert.der', '--type', 'cert', '--id', '01', '--label', 'root-key']);
  const objects = (await run('pkcs11-tool', [...p11, '--login', '--pin', PIN, '--list-objects'])).stdout;
  return { env, objects };
}

/** A GNUPGHOME whose gpg-agent uses gnupg-pkcs11-scd on the token, and an OpenPGP key made around the token's key. */
async function gpgOnToken(dir: string, env: Record<string, string>) {
  const home = join(dir, 'gnupg');
  await mkdir(home);
  await chmod(home, 0o700);
  await writeFile(join(home, 'gpg-agent.conf'), `scdaemon-program ${SCD}\nallow-loopback-pinentry\n`);
  await writeFile(join(home, 'gnupg-pkcs11-scd.conf'), `providers softhsm\nprovider-softhsm-library ${SOFTHSM_LIB}\n`);
  const genv = { ...env, GNUPGHOME: home };
  const gpg = (args: string[]) => execa('gpg', ['--homedir', home, '--batch', '--no-tty', ...args], { env: genv, reject: false });
  const status = await gpg(['--card-status']);
  if (status.exitCode !== 0) throw new Error(`gpg --card-status: ${status.stderr}`);
  const learn = await execa('gpg-connect-agent', ['--homedir', home, 'SCD LEARN', '/bye'], { env: genv, reject: false });
  const keygrip = /^S KEY-FRIEDNLY ([0-9A-F]{40}) /m.exec(learn.stdout)?.[1];
  if (!keygrip) throw new Error(`SCD LEARN found no key on the token:\n${learn.stdout}\n${learn.stderr}`);
  // gpg 2.2's batch key generation takes an existing key by keygrip: the self-signature is
  // made on the token (hence the PIN)
  await writeFile(join(dir, 'keygen'), `Key-Type: RSA\nKey-Grip: ${keygrip}\nKey-Usage: sign\nName-Real: loopship root on token\nExpire-Date: 0\n%commit\n`);
  const gen = await gpg(['--pinentry-mode', 'loopback', '--passphrase', PIN, '--generate-key', join(dir, 'keygen')]);
  if (gen.exitCode !== 0) throw new Error(`gpg --generate-key (Key-Grip ${keygrip}): ${gen.stderr}`);
  const listing = (await gpg(['--with-colons', '--list-secret-keys'])).stdout;
  const fpr = listing.split('\n').find((l) => l.startsWith('fpr:'))!.split(':')[9].toLowerCase();
  return { home, genv, gpg, keygrip, fpr, listing };
}

p11test('a root key generated on a PKCS#11 token (SoftHSM2) signs root.json through gpg-agent + gnupg-pkcs11-scd; verifyRole and gpg --verify accept it', async (t) => {
  const dir = await tempDir('loopship-p11-');
  let home: string | undefined;
  t.teardown(async () => {
    if (home) await execa('gpgconf', ['--homedir', home, '--kill', 'all'], { reject: false });
    await rm(dir, { recursive: true, force: true });
  });
  const { env, objects } = await makeToken(dir);
  // the private key was made on the token and cannot be taken off it
  t.regex(objects, /Private Key Object; RSA[\s\S]*never extractable/, objects);
  const g = await gpgOnToken(dir, env);
  home = g.home;
  t.log(`token key: keygrip ${g.keygrip}, OpenPGP fingerprint ${g.fpr}`);
  // gpg holds no secret key material: its key file is a stub pointing at the card
  const sec = g.listing.split('\n').find((l) => l.startsWith('sec:'))!.split(':');
  t.not(sec[14], '', 'the secret key lives on a card (serial number in field 15)');
  const stub = await readFile(join(g.home, 'private-keys-v1.d', `${g.keygrip}.key`), 'latin1');
  t.regex(stub, /shadowed-private-key/);
  t.deepEqual((await readdir(join(g.home, 'private-keys-v1.d'))).filter((f) => f.endsWith('.key')), [`${g.keygrip}.key`]);

  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const entry = await fx.keystore.importGpg('root', 'token', g.fpr, { homedir: g.home });
  t.is(entry.private_file, null);

  // root 2 lists the file root key and the token's; both must sign
  const current = await fx.writer.readRoot();
  const next = await buildRoot(fx.keystore, 2, { repository: current.repository });
  next.roles.root.threshold = 2;
  const tokenSigner = await fx.keystore.signer(entry, undefined, { passphrase: PIN });
  t.true(tokenSigner instanceof GpgSigner);
  // the environment gnupg-pkcs11-scd needs (SOFTHSM2_CONF) is the agent's, started above
  const signed = await signRoot(next, [await fx.keystore.privateKey(fx.keystore.find('root', 'root-1')), tokenSigner]);
  const signers = await verifyRole(signed.bytes, signed.signature, next, 'root', 'root/2.json');
  t.true(signers.has(g.fpr));
  t.is(signers.size, 2);
  await fx.writer.addRoot(signed.bytes, signed.signature);
  t.is((await fx.writer.readRoot()).version, 2);

  // the token alone, as root 3's only root key: a root signed by nothing but the token
  const onlyToken = await buildRoot(fx.keystore, 3, { repository: current.repository });
  onlyToken.roles.root = { keys: [g.fpr], threshold: 1 };
  const s3 = await signRoot(onlyToken, [tokenSigner]);
  t.deepEqual([...(await verifyRole(s3.bytes, s3.signature, onlyToken, 'root', 'root/3.json'))], [g.fpr]);

  // gpg --verify with only the public keys, in a home that knows no token
  const vhome = await tempDir('loopship-gnupg-verify-');
  t.teardown(async () => {
    await execa('gpgconf', ['--homedir', vhome, '--kill', 'all'], { reject: false });
    await rm(vhome, { recursive: true, force: true });
  });
  const vg = (args: string[]) => execa('gpg', ['--homedir', vhome, '--batch', '--no-tty', ...args], { reject: false });
  for (const e of fx.keystore.entries({ role: 'root' })) t.is((await vg(['--import', join(fx.keysDir, e.public_file)])).exitCode, 0);
  const f = join(dir, 'root-2.json');
  await writeFile(f, signed.bytes);
  await writeFile(f + '.asc', signed.signature);
  const v = await vg(['--status-fd', '1', '--verify', f + '.asc', f]);
  t.is(v.exitCode, 0, v.stderr);
  const valid = v.stdout.split('\n').filter((l) => l.startsWith('[GNUPG:] VALIDSIG'));
  t.is(valid.length, 2, v.stdout);
  t.true(valid.some((l) => l.toLowerCase().includes(g.fpr)), v.stdout);
});
