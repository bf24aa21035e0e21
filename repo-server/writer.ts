// The publishing side of the server: format/'s RepositoryWriter holding the index key(s)
// named in the server config (or taken from a key store directory).
import { readFile } from 'node:fs/promises';
import { RepositoryWriter, LoopshipError, ConfigError } from '../format/index.js';
import { Keystore, GpgSigner, readPrivateKey, readPassphrase, type SigningKey } from '../keys/index.js';
import type { ServerConfig } from './config.js';
import type { PackageWriter } from './api.js';

export async function loadIndexKeys(config: ServerConfig): Promise<SigningKey[]> {
  const keys: SigningKey[] = [];
  for (const k of config.indexKeys) {
    if ('gpg' in k) {
      const pin = k.pinEnv ? process.env[k.pinEnv] : undefined;
      if (k.pinEnv && pin === undefined) throw new ConfigError(`environment variable ${k.pinEnv} (the key's PIN or passphrase) is not set`, { where: `index key gpg:${k.gpg}` });
      const signer = new GpgSigner(k.gpg, { homedir: k.gnupgHome, passphrase: pin });
      try {
        await signer.publicKey(); // at start-up, not at the first publish: gpg must know the key
      } catch (cause) {
        throw new ConfigError((cause as Error).message, { where: `index key gpg:${k.gpg}`, cause });
      }
      keys.push(signer);
      continue;
    }
    let armored: string;
    try {
      armored = await readFile(k.path, 'utf8');
    } catch (cause) {
      throw new ConfigError(`cannot read index key (${(cause as Error).message})`, { where: k.path, cause });
    }
    const passphrase = k.passphraseEnv ? process.env[k.passphraseEnv] : undefined;
    if (k.passphraseEnv && passphrase === undefined) throw new ConfigError(`environment variable ${k.passphraseEnv} (the key's passphrase) is not set`, { where: k.path });
    keys.push(await readPrivateKey(armored, passphrase, k.path));
  }
  return keys;
}

/**
 * The writer for a server: index keys from `keysDir` (a key store, as `loopship keys init`
 * makes) when given, else from the config's index_keys; none at all means a read-only server.
 */
export async function createRepositoryWriter(repoDir: string, config: ServerConfig, opts: { keysDir?: string; passphraseFile?: string } = {}): Promise<PackageWriter | undefined> {
  let indexKeys: SigningKey[];
  if (opts.keysDir) {
    const store = await Keystore.open(opts.keysDir);
    indexKeys = await store.signers('index', await readPassphrase(opts.passphraseFile));
  } else {
    indexKeys = await loadIndexKeys(config);
  }
  if (indexKeys.length === 0) return undefined;
  const writer = new RepositoryWriter(repoDir, { indexKeys, expiresDays: config.indexExpiresDays });
  // fail at start-up, not at the first publish, when the keys are not the root's index keys
  let root;
  try {
    root = await writer.readRoot();
  } catch (err) {
    if (err instanceof LoopshipError) throw err;
    throw new ConfigError(`cannot read the repository root (${(err as Error).message})`, { where: repoDir, cause: err });
  }
  try {
    writer.assertIndexKeysOf(root, opts.keysDir ?? 'server.yaml index_keys');
  } catch (err) {
    throw new ConfigError(`the index keys given are not this repository's: ${(err as Error).message}`, { where: opts.keysDir ?? 'server.yaml index_keys', cause: err });
  }
  return writer;
}
