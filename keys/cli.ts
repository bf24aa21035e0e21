// `loopship keys ...`: generate, list, add publishers, rotate (publishing a new root).
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { Keystore, ROLES, type Role } from './keystore.js';
import { buildRoot, signRoot } from './root.js';
import { readPassphrase } from './passphrase.js';
import { LoopshipError, UsageError } from '../format/errors.js';
import { RepositoryWriter } from '../format/writer.js';

function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : text + '\n');
}

/** Publishes a new root version built from the key store, signed by the old root's keys and the new ones. */
export async function publishRootFromKeystore(store: Keystore, repoDir: string, passphrase: string | undefined, oldRootSigners: Awaited<ReturnType<Keystore['signingKeys']>>) {
  const writer = new RepositoryWriter(repoDir, { indexKeys: await store.signingKeys('index', passphrase) });
  const current = await writer.readRoot();
  const next = await buildRoot(store, current.version + 1, { repository: current.repository });
  const newSigners = await store.signingKeys('root', passphrase);
  const byFpr = new Map([...oldRootSigners, ...newSigners].map((k) => [k.getFingerprint(), k]));
  const signed = await signRoot(next, [...byFpr.values()]);
  return writer.addRoot(signed.bytes, signed.signature);
}

export function registerKeysCommands(program: Command): void {
  const keys = program.command('keys').description('manage the repository signing keys (OpenPGP, Ed25519)');

  keys
    .command('init')
    .description('generate root, index and publisher keys into a new key directory')
    .requiredOption('--dir <dir>', 'key directory (created, mode 0700)')
    .option('--publisher <name>', 'name of the first publisher key', 'default')
    .option('--root-keys <n>', 'number of root keys', (v) => parseInt(v, 10), 1)
    .option('--root-threshold <n>', 'root signatures required', (v) => parseInt(v, 10), 1)
    .option('--passphrase-file <file>', 'protect private keys with this passphrase (else LOOPSHIP_PASSPHRASE, else none)')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.init(o.dir, { passphrase: await readPassphrase(o.passphraseFile), rootKeys: o.rootKeys, rootThreshold: o.rootThreshold, publisher: o.publisher });
      const entries = store.entries();
      print(o.json, { dir: o.dir, keys: entries }, [`keys created in ${o.dir}:`, ...entries.map((e) => `  ${e.role.padEnd(9)} ${e.name.padEnd(12)} ${e.fingerprint}`), 'Keep the root private keys offline once the repository is created.'].join('\n'));
    });

  keys
    .command('list')
    .description('list keys with their roles and fingerprints')
    .requiredOption('--dir <dir>', 'key directory')
    .option('--all', 'include retired keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.dir);
      const entries = store.entries({ includeRetired: o.all });
      print(o.json, { thresholds: store.thresholds, keys: entries }, entries.map((e) => `${e.role.padEnd(9)} ${e.name.padEnd(12)} ${e.fingerprint}${e.private_file ? '' : ' (public only)'}${e.retired ? ` retired ${e.retired}` : ''}`).join('\n'));
    });

  keys
    .command('add-publisher')
    .description('generate (or import) a publisher key; with --repo, publish a new root that allows it')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--name <name>', 'publisher name')
    .option('--import-public <file>', 'use this armored public key (e.g. from gpg --export --armor) instead of generating one')
    .option('--import-private <file>', 'its armored private key (gpg --export-secret-keys --armor), if this store may sign with it')
    .option('--repo <dir>', 'repository whose root to update')
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.dir);
      const passphrase = await readPassphrase(o.passphraseFile);
      const oldRoot = o.repo ? await store.signingKeys('root', passphrase) : [];
      const entry = o.importPublic
        ? await store.importKey('publisher', o.name, await readFile(o.importPublic, 'utf8'), o.importPrivate ? await readFile(o.importPrivate, 'utf8') : undefined, passphrase)
        : await store.generate('publisher', o.name, { passphrase });
      const root = o.repo ? await publishRootFromKeystore(store, o.repo, passphrase, oldRoot) : undefined;
      print(o.json, { key: entry, rootVersion: root?.version }, `publisher ${entry.name}: ${entry.fingerprint}${root ? `\nroot version ${root.version} published in ${o.repo}` : '\n(run with --repo to publish a root that allows it)'}`);
    });

  keys
    .command('rotate')
    .description('replace a key of a role; publishes root N+1 signed by the old root keys and the new ones')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--role <role>', `one of ${ROLES.join(', ')}`)
    .requiredOption('--repo <dir>', 'repository whose root to update')
    .option('--name <name>', 'which key of the role (default: the oldest)')
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      if (!ROLES.includes(o.role)) throw new UsageError(`--role must be one of ${ROLES.join(', ')}, not ${o.role}`);
      const role = o.role as Role;
      const store = await Keystore.open(o.dir);
      const passphrase = await readPassphrase(o.passphraseFile);
      const oldRoot = await store.signingKeys('root', passphrase);
      const old = store.find(role, o.name);
      const fresh = await store.generate(role, `${old.name.replace(/-\d+$/, '')}-${Date.now().toString(36)}`, { passphrase });
      await store.retire(old.fingerprint);
      let root;
      try {
        root = await publishRootFromKeystore(store, o.repo, passphrase, oldRoot);
      } catch (err) {
        throw new LoopshipError('INTERNAL', `new ${role} key ${fresh.fingerprint} generated but the root was not published: ${(err as Error).message}`, { cause: err });
      }
      print(o.json, { retired: old, key: fresh, rootVersion: root.version }, `${role} key ${old.fingerprint} retired, ${fresh.fingerprint} in use; root version ${root.version} published`);
    });
}
