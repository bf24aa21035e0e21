// The packaging team's key directory: which key plays which role, private keys
// (mode 0600, optionally passphrase-protected) and their armored public halves.
// It knows nothing of repositories; roots are built from it in keys/root.ts.
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import * as z from 'zod';
import { writeFileAtomic } from '../base/atomic.js';
import { LoopshipError } from '../format/errors.js';
import { describeIssues } from '../format/schema.js';
import { generateKey, readPrivateKey, readPublicKey, fingerprintOf, type PrivateKey, type PublicKey } from './pgp.js';
import { GpgSigner, type GpgSignerOptions, type SigningKey } from './signer.js';

export const ROLES = ['root', 'index', 'publisher'] as const;
export type Role = (typeof ROLES)[number];
const STORE_FILE = 'keystore.json';

const entrySchema = z.strictObject({
  role: z.enum(ROLES),
  name: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/),
  fingerprint: z.string(),
  created: z.string(),
  public_file: z.string(),
  private_file: z.string().nullable(),
  // the private key is not a file here: gpg-agent holds it (a GNUPGHOME, a smartcard, a
  // PKCS#11 token behind gnupg-pkcs11-scd) and signs with `gpg --local-user <fingerprint>`
  gpg: z.strictObject({ homedir: z.string().min(1).optional() }).optional(),
  retired: z.string().optional(),
});
const storeSchema = z.strictObject({
  version: z.literal(1),
  thresholds: z.strictObject({ root: z.number().int().min(1), index: z.number().int().min(1), publisher: z.number().int().min(1) }),
  keys: z.array(entrySchema),
});
export type KeyEntry = z.infer<typeof entrySchema>;
export type KeystoreData = z.infer<typeof storeSchema>;

export class Keystore {
  private constructor(
    readonly dir: string,
    private data: KeystoreData,
  ) {}

  static async open(dir: string): Promise<Keystore> {
    const file = join(dir, STORE_FILE);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (cause) {
      throw new LoopshipError('KEY_INVALID', `no key store here; create one with 'loopship keys init --dir ${dir}'`, { where: file, cause });
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      throw new LoopshipError('KEY_INVALID', `not valid JSON (${(cause as Error).message})`, { where: file, cause });
    }
    const parsed = storeSchema.safeParse(value);
    if (!parsed.success) throw new LoopshipError('KEY_INVALID', describeIssues(parsed.error.issues), { where: file });
    return new Keystore(dir, parsed.data);
  }

  /** Generates root key(s), an index key and a first publisher key. */
  static async init(dir: string, opts: { passphrase?: string; rootKeys?: number; rootThreshold?: number; publisher?: string; userPrefix?: string; roles?: Role[] } = {}): Promise<Keystore> {
    try {
      await stat(join(dir, STORE_FILE));
      throw new LoopshipError('CONFLICT', 'a key store already exists here', { where: join(dir, STORE_FILE) });
    } catch (err) {
      if (err instanceof LoopshipError) throw err;
    }
    const rootKeys = opts.rootKeys ?? 1;
    const rootThreshold = opts.rootThreshold ?? 1;
    if (rootThreshold > rootKeys) throw new LoopshipError('USAGE', `root threshold ${rootThreshold} exceeds the ${rootKeys} root key(s)`);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const store = new Keystore(dir, { version: 1, thresholds: { root: rootThreshold, index: 1, publisher: 1 }, keys: [] });
    // `roles`: only these are generated here; the others' public halves come from another
    // store (importPublic), e.g. root keys kept on an air-gapped machine (docs/key-custody.md)
    const roles = new Set<Role>(opts.roles ?? ROLES);
    if (roles.has('root')) for (let i = 1; i <= rootKeys; i++) await store.generate('root', `root-${i}`, opts);
    if (roles.has('index')) await store.generate('index', 'index-1', opts);
    if (roles.has('publisher')) await store.generate('publisher', opts.publisher ?? 'default', opts);
    if (roles.size < ROLES.length) await store.save();
    return store;
  }

  get thresholds(): KeystoreData['thresholds'] {
    return this.data.thresholds;
  }

  entries(opts: { role?: Role; includeRetired?: boolean } = {}): KeyEntry[] {
    return this.data.keys.filter((k) => (!opts.role || k.role === opts.role) && (opts.includeRetired || !k.retired));
  }

  find(role: Role, name?: string): KeyEntry {
    const matches = this.entries({ role }).filter((k) => !name || k.name === name);
    if (matches.length === 0) throw new LoopshipError('KEY_INVALID', `no active ${role} key${name ? ` named ${name}` : ''}`, { where: this.dir });
    return matches[0];
  }

  /** Generates a new key for a role and saves the store. */
  async generate(role: Role, name: string, opts: { passphrase?: string; userPrefix?: string } = {}): Promise<KeyEntry> {
    if (this.data.keys.some((k) => k.role === role && k.name === name && !k.retired)) {
      throw new LoopshipError('CONFLICT', `an active ${role} key named ${name} already exists`, { where: this.dir });
    }
    const key = await generateKey(`${opts.userPrefix ?? 'loopship'} ${role} key ${name}`, opts.passphrase);
    const base = `${role}-${name}-${key.fingerprint.slice(-8).toLowerCase()}`;
    await this.writeKeyFiles(base, key.publicArmored, key.privateArmored);
    const entry: KeyEntry = { role, name, fingerprint: key.fingerprint.toLowerCase(), created: new Date().toISOString(), public_file: `${base}.pub.asc`, private_file: `${base}.key` };
    this.data.keys.push(entry);
    await this.save();
    return entry;
  }

  /** Adds a key made elsewhere (e.g. `gpg --export --armor`, `gpg --export-secret-keys --armor`). */
  async importKey(role: Role, name: string, publicArmored: string, privateArmored?: string, passphrase?: string): Promise<KeyEntry> {
    const pub = await readPublicKey(publicArmored, 'imported public key');
    const fpr = fingerprintOf(pub);
    if (privateArmored) {
      const priv = await readPrivateKey(privateArmored, passphrase, 'imported private key');
      if (fingerprintOf(priv) !== fpr) throw new LoopshipError('KEY_INVALID', `private key ${fingerprintOf(priv)} does not belong to public key ${fpr}`);
    }
    if (this.data.keys.some((k) => k.fingerprint === fpr && !k.retired)) throw new LoopshipError('CONFLICT', `key ${fpr} is already in the store`);
    const base = `${role}-${name}-${fpr.slice(-8)}`;
    await this.writeKeyFiles(base, pub.armor(), privateArmored);
    const entry: KeyEntry = { role, name, fingerprint: fpr, created: new Date().toISOString(), public_file: `${base}.pub.asc`, private_file: privateArmored ? `${base}.key` : null };
    this.data.keys.push(entry);
    await this.save();
    return entry;
  }

  /**
   * Adds a key gpg-agent holds (a GNUPGHOME key, a smartcard, a PKCS#11 token): its public
   * half is exported from gpg into the store, the private half stays where it is.
   */
  async importGpg(role: Role, name: string, fingerprint: string, opts: { homedir?: string } = {}): Promise<KeyEntry> {
    if (this.data.keys.some((k) => k.role === role && k.name === name && !k.retired)) {
      throw new LoopshipError('CONFLICT', `an active ${role} key named ${name} already exists`, { where: this.dir });
    }
    const signer = new GpgSigner(fingerprint, { homedir: opts.homedir });
    const { armored } = await signer.publicKey();
    const fpr = signer.fingerprint;
    if (this.data.keys.some((k) => k.fingerprint === fpr && !k.retired)) throw new LoopshipError('CONFLICT', `key ${fpr} is already in the store`);
    const base = `${role}-${name}-${fpr.slice(-8)}`;
    await this.writeKeyFiles(base, armored);
    const entry: KeyEntry = { role, name, fingerprint: fpr, created: new Date().toISOString(), public_file: `${base}.pub.asc`, private_file: null, gpg: opts.homedir ? { homedir: opts.homedir } : {} };
    this.data.keys.push(entry);
    await this.save();
    return entry;
  }

  /**
   * What signs for an entry: its key file (decrypted with `passphrase`), or gpg-agent for a
   * gpg entry (`gpg` options: the PIN or passphrase, the binary, an exec for tests).
   */
  async signer(entry: KeyEntry, passphrase?: string, gpg: Omit<GpgSignerOptions, 'homedir'> = {}): Promise<SigningKey> {
    if (entry.gpg) return new GpgSigner(entry.fingerprint, { ...gpg, homedir: entry.gpg.homedir });
    return this.privateKey(entry, passphrase);
  }

  /** Signers of a role (key files or gpg-agent keys), enough to meet its threshold. */
  async signers(role: Role, passphrase?: string, gpg: Omit<GpgSignerOptions, 'homedir'> = {}): Promise<SigningKey[]> {
    const entries = this.entries({ role }).filter((e) => e.private_file || e.gpg);
    const need = this.data.thresholds[role];
    if (entries.length < need) throw new LoopshipError('KEY_INVALID', `${entries.length} ${role} signing key(s) available, threshold is ${need}`, { where: this.dir });
    return Promise.all(entries.slice(0, need).map((e) => this.signer(e, passphrase, gpg)));
  }

  /**
   * Writes the public half of this store to `out`: every active key's public file and a
   * keystore.json that holds no private key (nor says where one is). What crosses an air gap.
   */
  async exportPublic(out: string): Promise<KeyEntry[]> {
    await mkdir(out, { recursive: true, mode: 0o700 });
    const keys = this.entries().map(({ gpg: _gpg, ...e }) => ({ ...e, private_file: null }));
    for (const e of keys) await writeFileAtomic(join(out, e.public_file), await readFile(join(this.dir, e.public_file)), { mode: 0o644 });
    const data: KeystoreData = { version: 1, thresholds: { ...this.data.thresholds }, keys };
    await writeFileAtomic(join(out, STORE_FILE), JSON.stringify(data, null, 2) + '\n', { mode: 0o644 });
    return keys;
  }

  /**
   * Takes the keys of `roles` (and their thresholds) from another store's public export: keys
   * it has that this store lacks are added, public only; this store's public-only keys of
   * those roles it no longer has are retired. A key this store can sign with is never retired
   * here (that is `keys rotate`'s decision, made where the key is).
   */
  async importPublic(from: string, roles: Role[]): Promise<{ added: KeyEntry[]; retired: KeyEntry[] }> {
    const other = await Keystore.open(from);
    const added: KeyEntry[] = [];
    const retired: KeyEntry[] = [];
    for (const role of roles) {
      const theirs = other.entries({ role });
      if (theirs.length === 0) throw new LoopshipError('KEY_INVALID', `the store in ${from} has no active ${role} key`, { where: from });
      for (const e of theirs) {
        // a file name in this directory, nothing else: the export crossed an air gap
        if (!/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/.test(e.public_file)) throw new LoopshipError('KEY_INVALID', `public_file ${JSON.stringify(e.public_file)} is not a plain file name`, { where: join(from, STORE_FILE) });
        const armored = await readFile(join(from, e.public_file), 'utf8');
        const pub = await readPublicKey(armored, join(from, e.public_file));
        if (fingerprintOf(pub) !== e.fingerprint) throw new LoopshipError('KEY_INVALID', `${e.public_file} holds key ${fingerprintOf(pub)}, not ${e.fingerprint}`, { where: from });
        if (this.data.keys.some((k) => k.fingerprint === e.fingerprint && !k.retired)) continue;
        let name = e.name;
        for (let i = 2; this.data.keys.some((k) => k.role === role && k.name === name && !k.retired); i++) name = `${e.name}-${i}`;
        await writeFileAtomic(join(this.dir, e.public_file), pub.armor(), { mode: 0o644 });
        const entry: KeyEntry = { role, name, fingerprint: e.fingerprint, created: e.created, public_file: e.public_file, private_file: null };
        this.data.keys.push(entry);
        added.push(entry);
      }
      const keep = new Set(theirs.map((e) => e.fingerprint));
      for (const k of this.entries({ role })) {
        if (keep.has(k.fingerprint)) continue;
        if (k.private_file || k.gpg) throw new LoopshipError('CONFLICT', `${role} key ${k.name} (${k.fingerprint}) is not in ${from}, but this store signs with it: retire it here first (keys rotate)`, { where: this.dir });
        k.retired = new Date().toISOString();
        retired.push(k);
      }
      this.data.thresholds[role] = other.thresholds[role];
    }
    await this.save();
    return { added, retired };
  }

  async retire(fingerprint: string): Promise<void> {
    const k = this.data.keys.find((e) => e.fingerprint === fingerprint && !e.retired);
    if (!k) throw new LoopshipError('KEY_INVALID', `no active key ${fingerprint}`);
    k.retired = new Date().toISOString();
    await this.save();
  }

  async publicKey(entry: KeyEntry): Promise<{ key: PublicKey; armored: string }> {
    const where = join(this.dir, entry.public_file);
    const armored = await readFile(where, 'utf8');
    return { key: await readPublicKey(armored, where), armored };
  }

  async privateKey(entry: KeyEntry, passphrase?: string): Promise<PrivateKey> {
    if (!entry.private_file) throw new LoopshipError('KEY_INVALID', entry.gpg ? `${entry.role} key ${entry.name} is held by gpg-agent, not a file: sign through Keystore.signer()` : `only the public half of ${entry.role} key ${entry.name} is in this store`, { where: this.dir });
    const where = join(this.dir, entry.private_file);
    let armored: string;
    try {
      armored = await readFile(where, 'utf8');
    } catch (cause) {
      throw new LoopshipError('KEY_INVALID', `private key file missing (root keys may be kept offline)`, { where, cause });
    }
    return readPrivateKey(armored, passphrase, where);
  }

  /** Private keys of a role, enough to meet its threshold. */
  async signingKeys(role: Role, passphrase?: string): Promise<PrivateKey[]> {
    const entries = this.entries({ role }).filter((e) => e.private_file);
    const need = this.data.thresholds[role];
    if (entries.length < need) throw new LoopshipError('KEY_INVALID', `${entries.length} ${role} private key(s) available, threshold is ${need}`, { where: this.dir });
    return Promise.all(entries.slice(0, need).map((e) => this.privateKey(e, passphrase)));
  }

  /** Synced before keystore.json names them: a crash never leaves an entry without its key. */
  private async writeKeyFiles(base: string, publicArmored: string, privateArmored?: string): Promise<void> {
    await writeFileAtomic(join(this.dir, `${base}.pub.asc`), publicArmored, { mode: 0o644 });
    if (privateArmored) await writeFileAtomic(join(this.dir, `${base}.key`), privateArmored, { mode: 0o600 });
  }

  private async save(): Promise<void> {
    await writeFileAtomic(join(this.dir, STORE_FILE), JSON.stringify(this.data, null, 2) + '\n', { mode: 0o600 });
  }
}
