// Building and signing root.json from a key store: the bridge between keys/ and the
// repository format.
import { randomBytes } from 'node:crypto';
import { LoopshipError } from '../format/errors.js';
import { RootSchema, serialize, describeIssues, SPEC_VERSION, type Root } from '../format/schema.js';
import { signDetached } from './pgp.js';
import type { SigningKey } from './signer.js';
import type { Keystore, Role } from './keystore.js';

const YEAR_MS = 365 * 86_400_000;

/**
 * root.json version `version` from the key store. Version 1 starts a repository and gets a
 * fresh random repository id unless one is given; every later version must carry the id of
 * the root it follows (`repository`), or clients refuse it.
 */
/** A fresh repository id: 128 random bits. */
export function newRepositoryId(): string {
  return randomBytes(16).toString('hex');
}

export async function buildRoot(store: Keystore, version: number, opts: { now?: Date; expiresDays?: number; repository?: string } = {}): Promise<Root> {
  const now = opts.now ?? new Date();
  if (version > 1 && !opts.repository) throw new LoopshipError('USAGE', `root version ${version} must carry the repository id of the root it follows (newRepositoryId() for a repository from before ids)`, { where: store.dir });
  const repository = opts.repository ?? newRepositoryId();
  const keys: Root['keys'] = {};
  const roles = {} as Root['roles'];
  for (const role of ['root', 'index', 'publisher'] as Role[]) {
    const entries = store.entries({ role });
    for (const e of entries) keys[e.fingerprint] = { name: `${role}:${e.name}`, public_key: (await store.publicKey(e)).armored };
    roles[role] = { keys: entries.map((e) => e.fingerprint), threshold: store.thresholds[role] };
  }
  const expires = new Date(now.getTime() + (opts.expiresDays ? opts.expiresDays * 86_400_000 : YEAR_MS)).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const root = { type: 'loopship/root' as const, spec_version: SPEC_VERSION, version, repository, expires, keys, roles };
  const checked = RootSchema.safeParse(root);
  if (!checked.success) throw new LoopshipError('KEY_INVALID', `key store does not make a valid root: ${describeIssues(checked.error.issues)}`, { where: store.dir });
  return checked.data;
}

export async function signRoot(root: Root, keys: SigningKey[]): Promise<{ bytes: Buffer; signature: string }> {
  const bytes = serialize(root);
  return { bytes, signature: await signDetached(bytes, keys) };
}
