// Fixtures for the agent tests: a real signed repository (the lead's helpers), a verified
// client over it, and chunk sources that fail on purpose.
import { readFile, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { execa } from 'execa';
import { listMounts } from '../../client-agent/mount.js';
import { createHash } from 'node:crypto';
import { RepoClient, createFetcher, type Chunk } from '../../format/index.js';
import type { ChunkSource, VerifiedManifest } from '../../client-agent/install.js';
import { makeRepo, makePackage, publish, type Fixture } from '../helpers/repo.js';

export { makeRepo, makePackage, publish, type Fixture };

export async function clientFor(fx: Fixture): Promise<RepoClient> {
  const fetcher = createFetcher(fx.repoDir);
  const root = await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored });
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: root });
  await client.update();
  return client;
}

export async function verifiedManifest(client: RepoClient, name: string, version: string): Promise<VerifiedManifest> {
  return client.manifest(name, version);
}

/** Counts what is fetched, and can fail on the n-th fetch or corrupt one chunk. */
export function countingSource(inner: ChunkSource, opts: { failAfter?: number; corrupt?: (c: Chunk) => boolean; delayMs?: number } = {}) {
  const fetched: string[] = [];
  const source: ChunkSource = {
    async chunk(c, where) {
      if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
      if (opts.failAfter !== undefined && fetched.length >= opts.failAfter) throw new Error(`injected fetch failure after ${opts.failAfter} chunks`);
      fetched.push(c.sha256);
      if (opts.corrupt?.(c)) {
        // what a tampering mirror would send: the verifier must refuse it
        const { decodeChunk, compressChunk } = await import('../../format/index.js');
        const raw = await inner.chunk(c, where);
        raw[0] ^= 0xff;
        return decodeChunk(compressChunk(raw), c, where ?? 'chunk');
      }
      return inner.chunk(c, where);
    },
  };
  return { source, fetched };
}

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** (ava's deepEqual on big buffers is very slow: compare digests instead) */
export function sha256Of(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

export async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** Loop devices whose backing file is under `dir` (losetup's JSON listing; a deleted backing file still counts). */
export async function loopsUnder(dir: string): Promise<{ name: string; 'back-file': string }[]> {
  const out = (await execa('losetup', ['-J', '-l'])).stdout;
  const list = out ? (JSON.parse(out).loopdevices as { name: string; 'back-file': string }[]) : [];
  return list.filter((l) => (l['back-file'] ?? '').replace(/ \(deleted\)$/, '').startsWith(resolve(dir) + '/'));
}

/** Mount points strictly under `dir`. */
export const mountsUnder = async (dir: string): Promise<string[]> => (await listMounts()).filter((m) => m.startsWith(resolve(dir) + '/'));

/** The next Monday 12:00 UTC at least an hour from now: inside a test index's validity (30 days), outside Mon-Fri 22:00-05:00 in Europe. */
export function nextMondayNoon(): number {
  const hour = 3600_000;
  const d = new Date(Date.now() + hour);
  d.setUTCHours(12, 0, 0, 0);
  while (d.getUTCDay() !== 1 || d.getTime() < Date.now() + hour) d.setUTCDate(d.getUTCDate() + 1);
  return d.getTime();
}
