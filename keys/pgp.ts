// Thin layer over openpgp.js: every signature in loopship is a detached, armored
// OpenPGP signature over the exact bytes of a file, so that `gpg --verify f.asc f`
// works on anything we publish. Keys are v4 Ed25519 (EdDSA), which GnuPG 2.2 reads.
import type * as OpenPGP from 'openpgp';
import { LoopshipError, SignatureError } from '../format/errors.js';
import { isSigner, mergeSignatures, type SigningKey } from './signer.js';

export type PublicKey = OpenPGP.PublicKey;
export type PrivateKey = OpenPGP.PrivateKey;
export type { SigningKey, Signer } from './signer.js';

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

/**
 * One detached armored signature holding one signature packet per key. Keys are key files
 * openpgp.js holds or external signers (gpg-agent, a smartcard, a PKCS#11 token: keys/signer.ts);
 * their packets are merged into one armor, which openpgp.js and `gpg --verify` both read.
 */
export async function signDetached(data: Uint8Array, keys: SigningKey[]): Promise<string> {
  const openpgp = await pgp();
  const local = keys.filter((k): k is PrivateKey => !isSigner(k));
  const external = keys.filter(isSigner);
  const parts: string[] = [];
  if (local.length > 0 || external.length === 0) {
    const message = await openpgp.createMessage({ binary: data });
    parts.push((await openpgp.sign({ message, signingKeys: local, detached: true, format: 'armored' })) as string);
  }
  // one at a time: a card signs one request at a time, and may ask for a touch or a PIN
  for (const s of external) parts.push(await s.sign(data));
  return parts.length === 1 ? parts[0] : mergeSignatures(parts);
}

/** How far in the future a signature's creation time may lie (clocks of signer and verifier differ). */
export const SIGNATURE_CLOCK_SKEW_MS = 10 * 60_000;

export interface VerifyAt {
  /** the verifier's clock: keys must be valid (not expired, not revoked) at this time */
  now?: Date;
  /**
   * 'now' (default): the key must be valid at the verifier's clock. 'signed': a key that has
   * since expired still counts for a signature it made while valid, but never a revoked one.
   * For the trusted root's own keys in a root transition (and the pinned key) only: their
   * copies in an old root cannot be refreshed, and a host offline across their expiry must
   * still walk the chain; a compromised root key is retired by rotation, not by expiry.
   */
  keyValidity?: 'now' | 'signed';
}

/**
 * Which of the trusted keys produced a valid signature over `data`, judged at the
 * verifier's clock: the creation time in a signature is the signer's word, so a key that
 * expired or was revoked does not count for a signature it claims to have made earlier,
 * and a creation time beyond a small skew into the future is no valid signature. A
 * signature by an unknown key is not an error here: thresholds decide. Malformed armor is.
 */
export async function validSigners(
  data: Uint8Array,
  armoredSignature: string,
  trusted: PublicKey[],
  where?: string,
  at: VerifyAt = {},
): Promise<Set<string>> {
  return (await judgeSignatures(data, armoredSignature, trusted, where, at)).signers;
}

/** validSigners, plus why each signature by a trusted key did not count (for error messages). */
async function judgeSignatures(
  data: Uint8Array,
  armoredSignature: string,
  trusted: PublicKey[],
  where: string | undefined,
  at: VerifyAt,
): Promise<{ signers: Set<string>; refused: string[] }> {
  const openpgp = await pgp();
  const now = at.now ?? new Date();
  let signature: OpenPGP.Signature;
  try {
    signature = await openpgp.readSignature({ armoredSignature });
  } catch (cause) {
    throw new SignatureError('SIGNATURE_INVALID', `not an armored OpenPGP signature (${(cause as Error).message})`, { where, cause });
  }
  const signers = new Set<string>();
  const refused: string[] = [];
  if (trusted.length === 0) return { signers, refused };
  const message = await openpgp.createMessage({ binary: data });
  let result: Awaited<ReturnType<typeof OpenPGP.verify>>;
  try {
    // openpgp.js refuses a creation time after `date` and judges the key as of the creation time
    result = await openpgp.verify({ message, signature, verificationKeys: trusted, format: 'binary', date: new Date(now.getTime() + SIGNATURE_CLOCK_SKEW_MS) });
  } catch (cause) {
    throw new SignatureError('SIGNATURE_INVALID', `signature could not be checked (${(cause as Error).message})`, { where, cause });
  }
  for (const sig of result.signatures) {
    const key = trusted.find((k) => k.getKeys(sig.keyID).length > 0);
    if (!key) continue; // unknown key: it simply does not count
    try {
      await sig.verified;
    } catch (err) {
      refused.push(`key ${fingerprintOf(key)}: ${(err as Error).message}`);
      continue; // a bad signature: it does not count
    }
    try {
      // ...and as of now: an expired, revoked (for any reason) or not yet valid key does not
      // count. The skew again: a key made moments ago on a signer whose clock runs ahead.
      if (at.keyValidity === 'signed') {
        if (await key.isRevoked(undefined, undefined, now)) throw new Error('the key is revoked');
      } else {
        await key.getSigningKey(sig.keyID, new Date(now.getTime() + SIGNATURE_CLOCK_SKEW_MS));
      }
    } catch (err) {
      refused.push(`key ${fingerprintOf(key)} is not valid at ${now.toISOString()}: ${(err as Error).message}`);
      continue;
    }
    signers.add(fingerprintOf(key));
  }
  return { signers, refused };
}

/** Throws unless at least `threshold` distinct keys of `trusted` signed `data`. */
export async function requireThreshold(
  data: Uint8Array,
  armoredSignature: string,
  trusted: PublicKey[],
  threshold: number,
  where: string,
  role: string,
  at: VerifyAt = {},
): Promise<Set<string>> {
  const { signers, refused } = await judgeSignatures(data, armoredSignature, trusted, where + '.asc', at);
  if (signers.size < threshold) {
    const code = signers.size === 0 ? 'UNKNOWN_KEY' : 'SIGNATURE_THRESHOLD';
    const why = refused.length ? ` (${refused.slice(0, 3).join('; ')})` : '';
    throw new SignatureError(
      code,
      signers.size === 0
        ? `no valid signature by any ${role} key (${trusted.length} trusted)${why}`
        : `only ${signers.size} valid ${role} signature(s), threshold is ${threshold}${why}`,
      { where },
    );
  }
  return signers;
}
