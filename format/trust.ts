// Signature checks against a root's roles. Pure apart from openpgp's crypto: callers
// pass bytes they already fetched.
import { readPublicKey, requireThreshold, fingerprintOf, type PublicKey } from '../keys/pgp.js';
import { MetadataError, SignatureError } from './errors.js';
import type { Root, RoleName } from './schema.js';

const keyCache = new WeakMap<Root, Map<string, Promise<PublicKey>>>();

/** The public keys of a role. Each key's real fingerprint must equal the one it is listed under. */
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

export async function verifyRole(data: Uint8Array, signature: string, root: Root, role: RoleName, where: string): Promise<Set<string>> {
  const keys = await roleKeys(root, role);
  return requireThreshold(data, signature, keys, root.roles[role].threshold, where, role);
}

export async function verifyManifestSignature(bytes: Uint8Array, signature: string, root: Root, where: string): Promise<void> {
  await verifyRole(bytes, signature, root, 'publisher', where);
}

/**
 * A new root is accepted only when signed by the threshold of the trusted root's root
 * keys AND by its own (so a rotation cannot be forged with old keys alone, nor new ones).
 */
export async function verifyRootTransition(trusted: Root, next: Root, bytes: Uint8Array, signature: string, where: string): Promise<void> {
  try {
    await verifyRole(bytes, signature, trusted, 'root', where);
    await verifyRole(bytes, signature, next, 'root', where);
  } catch (err) {
    if (err instanceof SignatureError) {
      throw new SignatureError(err.code, `root version ${next.version} is not signed by the root keys of versions ${trusted.version} and ${next.version}: ${err.message.replace(`${where}: `, '')}`, { where, cause: err });
    }
    throw err;
  }
}
