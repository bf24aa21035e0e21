// Where a publishing command acts: on a server (--server with a token) or straight on a
// repository directory (--repo with the key store holding the index key).
import { readFile } from 'node:fs/promises';
import { RepositoryWriter, UsageError } from '../format/index.js';
import { Keystore, readPassphrase } from '../keys/index.js';

export async function tokenFrom(o: { token?: string; tokenFile?: string }): Promise<string> {
  if (o.tokenFile) return (await readFile(o.tokenFile, 'utf8')).trim();
  const t = o.token ?? process.env.LOOPSHIP_TOKEN;
  if (!t) throw new UsageError('--server needs a token: --token, --token-file or LOOPSHIP_TOKEN');
  return t;
}

export type Target = { server?: string; token?: string; tokenFile?: string; repo?: string; keys?: string; passphraseFile?: string };

export function checkTarget(o: Target): 'server' | 'repo' {
  if (o.server && o.repo) throw new UsageError('give either --server (with a token) or --repo (with --keys), not both');
  if (o.server) return 'server';
  if (o.repo) {
    if (!o.keys) throw new UsageError('--repo needs --keys KEYDIR (the key store holding the index key)');
    return 'repo';
  }
  throw new UsageError('where to? give --server URL --token TOKEN, or --repo DIR --keys KEYDIR');
}

export async function localWriter(o: Target): Promise<RepositoryWriter> {
  const store = await Keystore.open(o.keys!);
  return new RepositoryWriter(o.repo!, { indexKeys: await store.signers('index', await readPassphrase(o.passphraseFile)) });
}

