import { readFile } from 'node:fs/promises';

/** A passphrase from --passphrase-file, else LOOPSHIP_PASSPHRASE, else none. */
export async function readPassphrase(file?: string): Promise<string | undefined> {
  if (file) return (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
  return process.env.LOOPSHIP_PASSPHRASE || undefined;
}
