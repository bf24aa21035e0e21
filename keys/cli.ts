// `loopship keys ...`: generate, list, add publishers, rotate (publishing a new root).
import type { Command } from 'commander';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Keystore, ROLES, type Role, type KeyEntry } from './keystore.js';
import { buildRoot, newRepositoryId, signRoot } from './root.js';
import { readPassphrase } from './passphrase.js';
import { signingKeyFingerprint, type GpgSignerOptions, type SigningKey } from './signer.js';
import { LoopshipError, UsageError } from '../format/errors.js';
import { RepositoryWriter } from '../format/writer.js';
import { parseExpiresDays } from '../format/cli.js';
import { parseMetadata, type Root } from '../format/schema.js';
import { verifyRole, verifyRootTransition } from '../format/trust.js';

type GpgOpts = Omit<GpgSignerOptions, 'homedir'>;

/** --gpg-pin-file: the PIN (or passphrase) gpg-agent asks for, given by loopback; without it, gpg-agent's pinentry asks. */
async function gpgOptions(o: { gpgPinFile?: string }): Promise<GpgOpts> {
  return o.gpgPinFile ? { passphrase: (await readFile(o.gpgPinFile, 'utf8')).replace(/\r?\n$/, '') } : {};
}

function parseRoles(v: string): Role[] {
  const roles = v.split(',').map((r) => r.trim()).filter(Boolean);
  for (const r of roles) if (!ROLES.includes(r as Role)) throw new UsageError(`roles are ${ROLES.join(', ')}, not ${r}`);
  return roles as Role[];
}

function dedupe(signers: SigningKey[]): SigningKey[] {
  return [...new Map(signers.map((k) => [signingKeyFingerprint(k), k])).values()];
}

/** The next root from the store, signed by the old root's keys and the new ones, checked as a client would. */
async function signNextRoot(store: Keystore, current: Root | undefined, oldRootSigners: SigningKey[], passphrase: string | undefined, gpg: GpgOpts) {
  const next = current ? await buildRoot(store, current.version + 1, { repository: current.repository ?? newRepositoryId() }) : await buildRoot(store, 1);
  const signed = await signRoot(next, dedupe([...oldRootSigners, ...(await store.signers('root', passphrase, gpg))]));
  if (current) await verifyRootTransition(current, next, signed.bytes, signed.signature, `root ${next.version}`);
  else await verifyRole(signed.bytes, signed.signature, next, 'root', 'root 1');
  return { root: next, ...signed };
}

/** Writes <version>.json and <version>.json.asc into `out`; refuses to overwrite. */
async function writeSignedRoot(out: string, signed: { root: Root; bytes: Buffer; signature: string }): Promise<string> {
  await mkdir(out, { recursive: true });
  const file = join(out, `${signed.root.version}.json`);
  await writeFile(file, signed.bytes, { flag: 'wx' });
  await writeFile(file + '.asc', signed.signature, { flag: 'wx' });
  return file;
}

async function readRootFile(file: string): Promise<Root> {
  return parseMetadata('root', await readFile(file), file);
}

/** Adds a key of a role: generated, from gpg (--gpg), or imported from files (--public/--private). */
async function addKey(store: Keystore, role: Role, name: string, o: { gpg?: string; gnupgHome?: string; public?: string; private?: string }, passphrase: string | undefined): Promise<KeyEntry> {
  if (o.gpg && (o.public || o.private)) throw new UsageError('--gpg and --public/--private exclude each other');
  if (o.gpg) return store.importGpg(role, name, o.gpg, { homedir: o.gnupgHome });
  if (o.private && !o.public) throw new UsageError('--private needs --public');
  if (o.public) return store.importKey(role, name, await readFile(o.public, 'utf8'), o.private ? await readFile(o.private, 'utf8') : undefined, passphrase);
  return store.generate(role, name, { passphrase });
}

function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : text + '\n');
}

/** Publishes a new root version built from the key store, signed by the old root's keys and the new ones. */
export async function publishRootFromKeystore(store: Keystore, repoDir: string, passphrase: string | undefined, oldRootSigners: SigningKey[], gpg: GpgOpts = {}) {
  const writer = new RepositoryWriter(repoDir, { indexKeys: await store.signers('index', passphrase, gpg) });
  const current = await writer.readRoot();
  const next = await buildRoot(store, current.version + 1, { repository: current.repository ?? newRepositoryId() });
  const newSigners = await store.signers('root', passphrase, gpg);
  const signed = await signRoot(next, dedupe([...oldRootSigners, ...newSigners]));
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
    .option('--roles <list>', 'generate only these roles (e.g. root on an air-gapped machine, index,publisher online); the rest come from `keys import-public`', parseRoles)
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.init(o.dir, { passphrase: await readPassphrase(o.passphraseFile), rootKeys: o.rootKeys, rootThreshold: o.rootThreshold, publisher: o.publisher, roles: o.roles });
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
      print(o.json, { thresholds: store.thresholds, keys: entries }, entries.map((e) => `${e.role.padEnd(9)} ${e.name.padEnd(12)} ${e.fingerprint}${e.gpg ? ` (gpg-agent${e.gpg.homedir ? `, GNUPGHOME ${e.gpg.homedir}` : ''})` : e.private_file ? '' : ' (public only)'}${e.retired ? ` retired ${e.retired}` : ''}`).join('\n'));
    });

  keys
    .command('add-publisher')
    .description('generate (or import) a publisher key; with --repo, publish a new root that allows it')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--name <name>', 'publisher name')
    .option('--import-public <file>', 'use this armored public key (e.g. from gpg --export --armor) instead of generating one')
    .option('--import-private <file>', 'its armored private key (gpg --export-secret-keys --armor), if this store may sign with it')
    .option('--gpg <fingerprint>', 'a key gpg-agent holds (GNUPGHOME, smartcard, PKCS#11 token): signs through gpg, no private key file')
    .option('--gnupg-home <dir>', 'with --gpg: its GNUPGHOME (default $GNUPGHOME, else ~/.gnupg)')
    .option('--gpg-pin-file <file>', 'PIN or passphrase of gpg-agent keys (else gpg-agent asks through its pinentry)')
    .option('--repo <dir>', 'repository whose root to update')
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.dir);
      const passphrase = await readPassphrase(o.passphraseFile);
      const gpg = await gpgOptions(o);
      const oldRoot = o.repo ? await store.signers('root', passphrase, gpg) : [];
      const entry = await addKey(store, 'publisher', o.name, { gpg: o.gpg, gnupgHome: o.gnupgHome, public: o.importPublic, private: o.importPrivate }, passphrase);
      const root = o.repo ? await publishRootFromKeystore(store, o.repo, passphrase, oldRoot, gpg) : undefined;
      print(o.json, { key: entry, rootVersion: root?.version }, `publisher ${entry.name}: ${entry.fingerprint}${root ? `\nroot version ${root.version} published in ${o.repo}` : '\n(run with --repo to publish a root that allows it)'}`);
    });

  keys
    .command('rotate')
    .description('replace a key of a role; publishes root N+1 signed by the old root keys and the new ones (--repo), or writes it to --out for `keys install-root` (offline, with --current-root)')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--role <role>', `one of ${ROLES.join(', ')}`)
    .option('--repo <dir>', 'repository whose root to update')
    .option('--current-root <file>', 'offline: the repository\'s current root.json, carried over (instead of --repo)')
    .option('--out <dir>', 'with --current-root: write <N+1>.json and <N+1>.json.asc here')
    .option('--name <name>', 'which key of the role (default: the oldest)')
    .option('--gpg <fingerprint>', 'the new key is this one gpg-agent holds (GNUPGHOME, smartcard, PKCS#11 token) instead of a generated key file')
    .option('--gnupg-home <dir>', 'with --gpg: its GNUPGHOME (default $GNUPGHOME, else ~/.gnupg)')
    .option('--gpg-pin-file <file>', 'PIN or passphrase of gpg-agent keys (else gpg-agent asks through its pinentry)')
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      if (!ROLES.includes(o.role)) throw new UsageError(`--role must be one of ${ROLES.join(', ')}, not ${o.role}`);
      if (!o.repo === !o.currentRoot) throw new UsageError('give --repo (publish here) or --current-root with --out (offline)');
      if (o.currentRoot && !o.out) throw new UsageError('--current-root needs --out');
      const role = o.role as Role;
      const store = await Keystore.open(o.dir);
      const passphrase = await readPassphrase(o.passphraseFile);
      const gpg = await gpgOptions(o);
      const current = o.currentRoot ? await readRootFile(o.currentRoot) : undefined;
      const oldRoot = await store.signers('root', passphrase, gpg);
      const old = store.find(role, o.name);
      const fresh = await addKey(store, role, `${old.name.replace(/-\d+$/, '')}-${Date.now().toString(36)}`, { gpg: o.gpg, gnupgHome: o.gnupgHome }, passphrase);
      await store.retire(old.fingerprint);
      let rootVersion: number;
      let file: string | undefined;
      try {
        if (current) {
          file = await writeSignedRoot(o.out, await signNextRoot(store, current, oldRoot, passphrase, gpg));
          rootVersion = current.version + 1;
        } else {
          rootVersion = (await publishRootFromKeystore(store, o.repo, passphrase, oldRoot, gpg)).version;
        }
      } catch (err) {
        throw new LoopshipError('INTERNAL', `new ${role} key ${fresh.fingerprint} made but the root was not ${current ? 'signed' : 'published'}: ${(err as Error).message}`, { cause: err });
      }
      print(
        o.json,
        { retired: old, key: fresh, rootVersion, rootFile: file },
        `${role} key ${old.fingerprint} retired, ${fresh.fingerprint} in use; root version ${rootVersion} ${file ? `signed: ${file} (+ .asc); carry it to the server: loopship keys install-root` : 'published'}`,
      );
    });

  keys
    .command('import')
    .description('add a key of a role without publishing a root: from gpg-agent (--gpg), or armored files (--public, --private)')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--role <role>', `one of ${ROLES.join(', ')}`)
    .requiredOption('--name <name>', 'key name')
    .option('--gpg <fingerprint>', 'a key gpg-agent holds (GNUPGHOME, smartcard, PKCS#11 token)')
    .option('--gnupg-home <dir>', 'with --gpg: its GNUPGHOME (default $GNUPGHOME, else ~/.gnupg)')
    .option('--public <file>', 'armored public key')
    .option('--private <file>', 'armored private key (with --public)')
    .option('--passphrase-file <file>', 'passphrase of --private')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      if (!ROLES.includes(o.role)) throw new UsageError(`--role must be one of ${ROLES.join(', ')}, not ${o.role}`);
      if (!o.gpg && !o.public) throw new UsageError('give --gpg FINGERPRINT or --public FILE');
      const store = await Keystore.open(o.dir);
      const entry = await addKey(store, o.role as Role, o.name, o, await readPassphrase(o.passphraseFile));
      print(o.json, { key: entry }, `${entry.role} key ${entry.name}: ${entry.fingerprint}${entry.gpg ? ' (gpg-agent)' : entry.private_file ? '' : ' (public only)'}; publish a root that lists it (keys sign-root / install-root, or keys add-publisher --repo)`);
    });

  keys
    .command('generate')
    .description('generate a key of a role without publishing a root (the offline ceremony signs the root that lists it)')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--role <role>', `one of ${ROLES.join(', ')}`)
    .requiredOption('--name <name>', 'key name')
    .option('--passphrase-file <file>', 'protect the private key with this passphrase (else LOOPSHIP_PASSPHRASE, else none)')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      if (!ROLES.includes(o.role)) throw new UsageError(`--role must be one of ${ROLES.join(', ')}, not ${o.role}`);
      const entry = await (await Keystore.open(o.dir)).generate(o.role as Role, o.name, { passphrase: await readPassphrase(o.passphraseFile) });
      print(o.json, { key: entry }, `${entry.role} key ${entry.name}: ${entry.fingerprint}`);
    });

  keys
    .command('retire')
    .description('retire a key in this store (the next root built here leaves it out); publishes nothing')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--fingerprint <fpr>', 'the key')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.dir);
      const fpr = String(o.fingerprint).replace(/\s+/g, '').toLowerCase();
      const entry = store.entries().find((e) => e.fingerprint === fpr);
      if (!entry) throw new UsageError(`no active key ${fpr} in ${o.dir}`);
      if (store.entries({ role: entry.role }).length === 1) throw new UsageError(`${fpr} is the only active ${entry.role} key`);
      await store.retire(fpr);
      print(o.json, { retired: entry }, `${entry.role} key ${entry.name} (${fpr}) retired`);
    });

  keys
    .command('export-public')
    .description('write the public half of the key store (public keys, a keystore.json without private keys) to a directory, to carry across an air gap')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--out <dir>', 'where to write it')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const keys = await (await Keystore.open(o.dir)).exportPublic(o.out);
      print(o.json, { out: o.out, keys }, `${keys.length} public key(s) written to ${o.out}`);
    });

  keys
    .command('import-public')
    .description('take the keys of some roles (and their thresholds) from another store\'s export-public: missing ones are added public-only, absent public-only ones retired')
    .requiredOption('--dir <dir>', 'key directory')
    .requiredOption('--from <dir>', 'an export-public directory')
    .requiredOption('--roles <list>', 'which roles, e.g. root or index,publisher', parseRoles)
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const r = await (await Keystore.open(o.dir)).importPublic(o.from, o.roles);
      print(o.json, r, [...r.added.map((e) => `added   ${e.role.padEnd(9)} ${e.name.padEnd(12)} ${e.fingerprint}`), ...r.retired.map((e) => `retired ${e.role.padEnd(9)} ${e.name.padEnd(12)} ${e.fingerprint}`)].join('\n') || 'no change');
    });

  keys
    .command('sign-root')
    .description('offline: build the next root from the key store and sign it (root 1 of a new repository without --current-root); writes <N>.json and <N>.json.asc to --out')
    .requiredOption('--dir <dir>', 'key directory (holding the root keys)')
    .requiredOption('--out <dir>', 'where to write the signed root')
    .option('--current-root <file>', 'the repository\'s current root.json (its root keys in this store sign too)')
    .option('--gpg-pin-file <file>', 'PIN or passphrase of gpg-agent keys (else gpg-agent asks through its pinentry)')
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.dir);
      const passphrase = await readPassphrase(o.passphraseFile);
      const gpg = await gpgOptions(o);
      const current = o.currentRoot ? await readRootFile(o.currentRoot) : undefined;
      // the current root's keys that this store can sign with (retired ones included)
      const oldRoot: SigningKey[] = [];
      if (current) {
        const listed = new Set(current.roles.root.keys);
        for (const e of store.entries({ role: 'root', includeRetired: true })) if (listed.has(e.fingerprint) && (e.private_file || e.gpg)) oldRoot.push(await store.signer(e, passphrase, gpg));
      }
      const signed = await signNextRoot(store, current, oldRoot, passphrase, gpg);
      const file = await writeSignedRoot(o.out, signed);
      print(o.json, { rootVersion: signed.root.version, repository: signed.root.repository, rootFile: file, rootKeys: signed.root.roles.root.keys }, `root version ${signed.root.version} of repository ${signed.root.repository} signed: ${file} (+ .asc)`);
    });

  keys
    .command('install-root')
    .description('online: put a root signed elsewhere (keys sign-root, keys rotate --out) into a repository; root 1 creates the repository. The index is re-signed with this store\'s index keys')
    .requiredOption('--dir <dir>', 'key directory (holding the index keys)')
    .requiredOption('--repo <dir>', 'repository directory')
    .requiredOption('--root <file>', 'the signed root (<N>.json); its signature is <file>.asc unless --signature')
    .option('--signature <file>', 'the detached signature')
    .option('--expires-days <n>', 'index validity', parseExpiresDays, 30)
    .option('--gpg-pin-file <file>', 'PIN or passphrase of gpg-agent keys (else gpg-agent asks through its pinentry)')
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.dir);
      const bytes = await readFile(o.root);
      const signature = await readFile(o.signature ?? o.root + '.asc', 'utf8');
      const root = parseMetadata('root', bytes, o.root);
      const indexKeys = await store.signers('index', await readPassphrase(o.passphraseFile), await gpgOptions(o));
      const exists = await stat(join(o.repo, 'root.json')).then(() => true, () => false);
      if (exists) await new RepositoryWriter(o.repo, { indexKeys, expiresDays: o.expiresDays }).addRoot(bytes, signature);
      else await RepositoryWriter.init(o.repo, { bytes, signature }, { indexKeys, expiresDays: o.expiresDays });
      print(o.json, { repo: o.repo, rootVersion: root.version, repository: root.repository, created: !exists }, `${basename(o.root)}: root version ${root.version} ${exists ? 'installed in' : 'created repository'} ${o.repo}${exists ? '' : `\npin this root fingerprint on clients: ${root.roles.root.keys.join(', ')}`}`);
    });
}
