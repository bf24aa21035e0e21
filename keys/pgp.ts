// Thin layer over openpgp.js: every signature in loopship is a detached, armored
// OpenPGP signature over the exact bytes of a file, so that `gpg --verify f.asc f`
// works on anything we publish. Keys are v4 Ed25519 (EdDSA), which GnuPG 2.2 reads.
import type * as OpenPGP from 'openpgp';
import { LoopshipError, SignatureError } from '../format/errors.js';

export type PublicKey = OpenPGP.PublicKey;
export type PrivateKey = OpenPGP.PrivateKey;

// Loaded on first use: openpgp.js is ~40% of the agent's bundle and builds tables when it
// loads, and `status`, `stop` or `--version` check no signature (a start of the agent costs
// seconds on a slow dom0). The bundle keeps it in a chunk of its own (packaging/bundle-agent.mjs).
let loading: Promise<typeof OpenPGP> | undefined;
const pgp = (): Promise<typeof OpenPGP> => (loading ??= import('openpgp'));

export interface GeneratedKey {
  fingerprint: string;
  privateArmored: string;
  publicArmored: string;
}

export async function generateKey(userName: string, passphrase?: string): Promise<GeneratedKey> {
  const openpgp = await pgp();
  const { privateKey, publicKey } = await openpgp.generateKey({
    type: 'ecc',
    curve: 'ed25519Legacy',
    userIDs: [{ name: userName }],
    passphrase: passphrase || undefined,
    format: 'armored',
  });
  const key = await openpgp.readKey({ armoredKey: publicKey });
  return { fingerprint: key.getFingerprint(), privateArmored: privateKey, publicArmored: publicKey };
}

export async function readPublicKey(armored: string, where?: string): Promise<PublicKey> {
  const openpgp = await pgp();
  try {
    const key = await openpgp.readKey({ armoredKey: armored });
    return key.isPrivate() ? key.toPublic() : key;
  } catch (cause) {
    throw new LoopshipError('KEY_INVALID', `not an OpenPGP public key (${(cause as Error).message})`, { where, cause });
  }
}

/** Reads an armored or binary public key (as `gpg --export` or `--export --armor` writes it). */
export async function readPublicKeyBytes(bytes: Uint8Array, where?: string): Promise<PublicKey> {
  const openpgp = await pgp();
  const text = Buffer.from(bytes).toString('utf8');
  if (text.includes('-----BEGIN PGP')) return readPublicKey(text, where);
  try {
    const key = await openpgp.readKey({ binaryKey: bytes });
    return key.isPrivate() ? key.toPublic() : key;
  } catch (cause) {
    throw new LoopshipError('KEY_INVALID', `not an OpenPGP public key (${(cause as Error).message})`, { where, cause });
  }
}

export async function readPrivateKey(armored: string, passphrase: string | undefined, where?: string): Promise<PrivateKey> {
  const openpgp = await pgp();
  let key: PrivateKey;
  try {
    key = await openpgp.readPrivateKey({ armoredKey: armored });
  } catch (cause) {
    throw new LoopshipError('KEY_INVALID', `not an OpenPGP private key (${(cause as Error).message})`, { where, cause });
  }
  if (key.isDecrypted()) return key;
  if (!passphrase) throw new LoopshipError('KEY_PASSPHRASE', 'key is protected by a passphrase; set LOOPSHIP_PASSPHRASE or --passphrase-file', { where });
  try {
    return await openpgp.decryptKey({ privateKey: key, passphrase });
  } catch (cause) {
    throw new LoopshipError('KEY_PASSPHRASE', 'wrong passphrase', { where, cause });
  }
}

export function fingerprintOf(key: PublicKey | PrivateKey): string {
  return key.getFingerprint().toLowerCase();
}

/** One detached armored signature holding one signature packet per key. */
export async function signDetached(data: Uint8Array, keys: PrivateKey[]): Promise<string> {
  const openpgp = await pgp();
  const message = await openpgp.createMessage({ binary: data });
  return (await openpgp.sign({ message, signingKeys: keys, detached: true, format: 'armored' })) as string;
}

/**
 * Which of the trusted keys produced a valid signature over `data`. A signature by an
 * unknown key is not an error here: thresholds decide. Malformed armor is.
 */
export async function validSigners(
  data: Uint8Array,
  armoredSignature: string,
  trusted: PublicKey[],
  where?: string,
): Promise<Set<string>> {
  const openpgp = await pgp();
  let signature: OpenPGP.Signature;
  try {
    signature = await openpgp.readSignature({ armoredSignature });
  } catch (cause) {
    throw new SignatureError('SIGNATURE_INVALID', `not an armored OpenPGP signature (${(cause as Error).message})`, { where, cause });
  }
  const signers = new Set<string>();
  if (trusted.length === 0) return signers;
  const message = await openpgp.createMessage({ binary: data });
  let result: Awaited<ReturnType<typeof OpenPGP.verify>>;
  try {
    result = await openpgp.verify({ message, signature, verificationKeys: trusted, format: 'binary' });
  } catch (cause) {
    throw new SignatureError('SIGNATURE_INVALID', `signature could not be checked (${(cause as Error).message})`, { where, cause });
  }
  for (const sig of result.signatures) {
    try {
      await sig.verified;
    } catch {
      continue; // unknown key, or a bad signature: it simply does not count
    }
    const key = trusted.find((k) => k.getKeys(sig.keyID).length > 0);
    if (key) signers.add(fingerprintOf(key));
  }
  return signers;
}

/** Throws unless at least `threshold` distinct keys of `trusted` signed `data`. */
export async function requireThreshold(
  data: Uint8Array,
  armoredSignature: string,
  trusted: PublicKey[],
  threshold: number,
  where: string,
  role: string,
): Promise<Set<string>> {
  const signers = await validSigners(data, armoredSignature, trusted, where + '.asc');
  if (signers.size < threshold) {
    const code = signers.size === 0 ? 'UNKNOWN_KEY' : 'SIGNATURE_THRESHOLD';
    throw new SignatureError(
      code,
      signers.size === 0
        ? `no valid signature by any ${role} key (${trusted.length} trusted)`
        : `only ${signers.size} valid ${role} signature(s), threshold is ${threshold}`,
      { where },
    );
  }
  return signers;
}
