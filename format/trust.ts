// Signature checks against a root's roles, and the trust decisions every reader of a
// repository makes the same way (the client over HTTP, an offline package, a mirror, an
// export): root transitions, the index against its root. Pure apart from openpgp's crypto:
// callers pass bytes they already fetched and the verifier's clock.
import { readPublicKey, requireThreshold, fingerprintOf, type PublicKey } from '../keys/pgp.js';
import { MetadataError, SignatureError, ExpiredError, RollbackError, RootChainError, RepositoryMismatchError } from './errors.js';
import { parseMetadata, type Root, type RoleName, type Index } from './schema.js';

const keyCache = new WeakMap<Root, Map<string, Promise<PublicKey>>>();

/**
 * The public keys of a role. Each key's real fingerprint must equal the one it is listed
 * under. `where` names the root's own file: the first use of a root (its acceptance) decides
 * what a bad key entry's error names.
 */
export async function roleKeys(root: Root, role: RoleName, where = 'root.json'): Promise<PublicKey[]> {
  let cache = keyCache.get(root);
  if (!cache) keyCache.set(root, (cache = new Map()));
  const keys: PublicKey[] = [];
  for (const fpr of root.roles[role].keys) {
    let p = cache.get(fpr);
    if (!p) {
      p = (async () => {
        const key = await readPublicKey(root.keys[fpr].public_key, `${where}: keys.${fpr}`);
        if (fingerprintOf(key) !== fpr) {
          throw new MetadataError('METADATA_INVALID', `key listed as ${fpr} has fingerprint ${fingerprintOf(key)}`, { where });
        }
        return key;
      })();
      cache.set(fpr, p);
    }
    keys.push(await p);
  }
  return keys;
}

/** Every key of every role of `root` read and checked against its fingerprint; errors name `where`. */
export async function checkRootKeys(root: Root, where: string): Promise<void> {
  for (const role of ['root', 'index', 'publisher'] as RoleName[]) await roleKeys(root, role, where);
}

export interface VerifyOptions {
  /** the verifier's clock: key expiry and revocation are judged at this time */
  now?: Date;
  /** see keys/pgp.ts VerifyAt: 'signed' for the root role's signatures on a root file only */
  keyValidity?: 'now' | 'signed';
}

export async function verifyRole(data: Uint8Array, signature: string, root: Root, role: RoleName, where: string, opts: VerifyOptions = {}): Promise<Set<string>> {
  const keys = await roleKeys(root, role);
  return requireThreshold(data, signature, keys, root.roles[role].threshold, where, role, { now: opts.now, keyValidity: opts.keyValidity });
}

/**
 * A root file's signatures by a root role. Root keys are judged as of the signature: their
 * copies in a published root never change, and a host that was off while one expired must
 * still walk the chain. Revoked keys never count; the newest root's own `expires` bounds
 * how long a chain stays good.
 */
export async function verifyRootSignature(bytes: Uint8Array, signature: string, signer: Root, where: string, opts: VerifyOptions = {}): Promise<Set<string>> {
  return verifyRole(bytes, signature, signer, 'root', where, { now: opts.now, keyValidity: 'signed' });
}

export async function verifyManifestSignature(bytes: Uint8Array, signature: string, root: Root, where: string, opts: VerifyOptions = {}): Promise<void> {
  await verifyRole(bytes, signature, root, 'publisher', where, opts);
}

/**
 * A new root is accepted only when it is the next version of the same repository, its keys
 * are what they claim to be, and it is signed by the threshold of the trusted root's root
 * keys AND by its own (so a rotation cannot be forged with old keys alone, nor new ones).
 */
export async function verifyRootTransition(trusted: Root, next: Root, bytes: Uint8Array, signature: string, where: string, opts: VerifyOptions = {}): Promise<void> {
  if (next.version !== trusted.version + 1) {
    throw new RootChainError('ROOT_CHAIN', `root version ${next.version} does not follow the trusted version ${trusted.version}`, { where });
  }
  await checkRootKeys(next, where);
  try {
    await verifyRootSignature(bytes, signature, trusted, where, opts);
    await verifyRootSignature(bytes, signature, next, where, opts);
  } catch (err) {
    if (err instanceof SignatureError) {
      throw new SignatureError(err.code, `root version ${next.version} is not signed by the root keys of versions ${trusted.version} and ${next.version}: ${err.message.replace(`${where}: `, '')}`, { where, cause: err });
    }
    throw err;
  }
  // a repository from before ids gets one with a rotation: adopted; after that, never another
  if (trusted.repository !== undefined) checkSameRepository(trusted.repository, next.repository, `root version ${next.version}`, where);
}

/** `claimed` must be the trusted repository's id; both absent only for a repository from before ids. */
export function checkSameRepository(trusted: string | undefined, claimed: string | undefined, what: string, where: string): void {
  if (claimed !== trusted) {
    throw new RepositoryMismatchError(`${what} belongs to repository ${claimed ?? '(none named)'}, not to the trusted repository ${trusted ?? '(none named)'}`, { where });
  }
}

export function checkNotExpired(kind: string, expires: string, now: Date, where: string): void {
  if (new Date(expires).getTime() <= now.getTime()) {
    throw new ExpiredError('EXPIRED', `${kind} expired at ${expires} (now ${now.toISOString()})`, { where });
  }
}

/**
 * index.json's bytes against the (already accepted) root: signed by the index role as of
 * now, of this repository, not expired, not older than what was seen, not from a newer root.
 */
export async function verifyIndex(bytes: Uint8Array, signature: string, root: Root, opts: { now: Date; lastVersion?: number; where: string }): Promise<Index> {
  await verifyRole(bytes, signature, root, 'index', opts.where, { now: opts.now });
  const index = parseMetadata('index', bytes, opts.where);
  checkSameRepository(root.repository, index.repository, `index version ${index.version}`, opts.where);
  checkNotExpired('index', index.expires, opts.now, opts.where);
  if (opts.lastVersion !== undefined && index.version < opts.lastVersion) {
    throw new RollbackError('ROLLBACK', `index version ${index.version} is older than version ${opts.lastVersion} already seen`, { where: opts.where });
  }
  if (index.root_version > root.version) {
    throw new RootChainError('ROOT_CHAIN', `index was signed under root version ${index.root_version}, newer than the trusted root ${root.version}`, { where: opts.where });
  }
  return index;
}

/** The root that trust ends on after a walk must be in force: an expired root may only be left behind. */
export function checkRootInForce(root: Root, now: Date, where: string): void {
  checkNotExpired('root', root.expires, now, where);
}
