export { generateKey, readPublicKey, readPublicKeyBytes, readPrivateKey, signDetached, validSigners, requireThreshold, fingerprintOf, type PublicKey, type PrivateKey, type GeneratedKey } from './pgp.js';
export { Keystore, ROLES, type Role, type KeyEntry } from './keystore.js';
export { buildRoot, signRoot, newRepositoryId } from './root.js';
export { readPassphrase } from './passphrase.js';
export { GpgSigner, mergeSignatures, isSigner, signingKeyFingerprint, spawnExec, type Signer, type SigningKey, type GpgSignerOptions, type GpgExec, type ExecResult } from './signer.js';
