// server.yaml index_keys may name a key gpg-agent holds: `{ gpg: FPR, gnupg_home, pin_env }`.
import test from 'ava';
import { execa } from 'execa';
import { rm } from 'node:fs/promises';
import { makeRepo, tempDir } from '../helpers/repo.js';
import { RepoClient, RepositoryWriter, createFetcher } from '../../format/index.js';
import { parseServerConfig } from '../../repo-server/config.js';
import { loadIndexKeys, createRepositoryWriter } from '../../repo-server/writer.js';
import { buildRoot, signRoot, GpgSigner, validSigners } from '../../keys/index.js';

const hasGpg = (await execa('gpg', ['--version'], { reject: false }).catch(() => ({ exitCode: 127 }))).exitCode === 0;
if (!hasGpg) console.warn('test/keys/server-index-gpg.test.ts: skipped, gpg is not installed (scripts/setup.sh installs gnupg)');
const gpgTest = hasGpg ? test : test.skip;

gpgTest('an index key in gpg-agent named in server.yaml signs the index; clients accept it', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const home = await tempDir('loopship-gnupg-');
  t.teardown(async () => {
    await execa('gpgconf', ['--homedir', home, '--kill', 'all'], { reject: false });
    await rm(home, { recursive: true, force: true });
  });
  const gpg = (args: string[]) => execa('gpg', ['--homedir', home, '--batch', '--no-tty', ...args], { reject: false });
  t.is((await gpg(['--pinentry-mode', 'loopback', '--passphrase', 'idx-pin', '--quick-gen-key', 'loopship index <index@example.org>', 'ed25519', 'sign', 'never'])).exitCode, 0);
  const fpr = (await gpg(['--with-colons', '--list-secret-keys'])).stdout.split('\n').find((l) => l.startsWith('fpr:'))!.split(':')[9];
  await execa('gpgconf', ['--homedir', home, '--kill', 'gpg-agent'], { reject: false }); // no cached passphrase

  // root 2 lists the gpg index key too
  await fx.keystore.importGpg('index', 'gpg-index', fpr, { homedir: home });
  const current = await fx.writer.readRoot();
  const signed = await signRoot(await buildRoot(fx.keystore, 2, { repository: current.repository }), await fx.keystore.signers('root'));
  await fx.writer.addRoot(signed.bytes, signed.signature);

  const config = parseServerConfig({ index_keys: [{ gpg: fpr, gnupg_home: home, pin_env: 'LOOPSHIP_TEST_INDEX_PIN' }] });
  await t.throwsAsync(loadIndexKeys(config), { message: /LOOPSHIP_TEST_INDEX_PIN.*not set/ });
  process.env.LOOPSHIP_TEST_INDEX_PIN = 'idx-pin';
  t.teardown(() => delete process.env.LOOPSHIP_TEST_INDEX_PIN);
  const keys = await loadIndexKeys(config);
  t.is(keys.length, 1);
  t.true(keys[0] instanceof GpgSigner);
  t.truthy(await createRepositoryWriter(fx.repoDir, config));
  const r = await new RepositoryWriter(fx.repoDir, { indexKeys: keys }).resign();

  const fetcher = createFetcher(fx.repoDir);
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored }) });
  const u = await client.update();
  t.is(u.index.version, r.indexVersion);
  t.deepEqual([...(await validSigners(u.indexBytes, u.indexSignature, [(await (keys[0] as GpgSigner).publicKey()).key]))], [fpr.toLowerCase()]);

  // a key gpg does not have: an error at start-up, naming it
  await t.throwsAsync(loadIndexKeys(parseServerConfig({ index_keys: [{ gpg: 'A'.repeat(40), gnupg_home: home }] })), { message: /gpg has no public key/ });
  // a short key id is no fingerprint
  t.throws(() => parseServerConfig({ index_keys: [{ gpg: 'ABCD1234' }] }), { message: /invalid server config/ });
});
