// The first chunk provider: bytes this host already has, in any installed version of any
// appliance (same sha256). Re-hashed before use: bit rot in an old version must not spread
// into the new one. On the decode workers when there are any (read, hash and write there: a
// slow host's upgrade is mostly this), each seed file opened once.
import { join } from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import type { Manifest } from '../format/index.js';
import { parseMetadata, parallel, VerificationError } from '../format/index.js';
import type { StateDir } from './state.js';
import { openOwnFile, readOwnFile } from './fsutil.js';
import { BLOB_FILES, blobsOf, sha256, type Work } from './install-plan.js';
import type { LazyDecodePool } from './decode-pool.js';
import type { ChunkProvider } from './chunk-sources.js';
import type { StagingWriter } from './install-writer.js';

export interface SeedRef {
  path: string;
  offset: number;
  length: number;
}
/** sha256 -> where those bytes already are on this host */
export type SeedIndex = Map<string, SeedRef>;

/** Every chunk of the complete versions on this host (`skip`: the one being installed). */
export async function seedIndex(state: StateDir, skip?: { name: string; version: string }): Promise<SeedIndex> {
  const seeds: SeedIndex = new Map();
  for (const name of await state.applianceNames()) {
    // newest first: likeliest to share content with what comes next
    for (const version of (await state.installedVersions(name)).reverse()) {
      if (skip && skip.name === name && skip.version === version) continue;
      const dir = state.versionDir(name, version);
      let m: Manifest;
      try {
        m = parseMetadata('manifest', await readOwnFile(join(dir, 'manifest.json')), join(dir, 'manifest.json'));
      } catch {
        continue; // a damaged local manifest simply seeds nothing
      }
      for (const [blob, b] of blobsOf(m)) {
        for (const c of b.chunks) if (!seeds.has(c.sha256)) seeds.set(c.sha256, { path: join(dir, BLOB_FILES[blob]), offset: c.offset, length: c.length });
      }
    }
  }
  return seeds;
}

async function readExactly(path: string, offset: number, length: number): Promise<Buffer | null> {
  let fh: FileHandle | undefined;
  try {
    fh = await openOwnFile(path, 'read');
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) return null;
      got += bytesRead;
    }
    return buf;
  } catch {
    return null;
  } finally {
    await fh?.close();
  }
}

/** Seed files opened once each for the workers; an unopenable one seeds nothing. */
class SeedFiles {
  private readonly files = new Map<string, Promise<FileHandle | null>>();
  open(path: string): Promise<FileHandle | null> {
    let f = this.files.get(path);
    if (!f) this.files.set(path, (f = openOwnFile(path, 'read').catch(() => null)));
    return f;
  }
  async close(): Promise<void> {
    for (const f of this.files.values()) await (await f)?.close();
  }
}

/** Copies one chunk from its seed into place; false when the seed is not those bytes. */
async function copyOne(w: Work, seed: SeedRef, into: StagingWriter, workers: LazyDecodePool, files: SeedFiles): Promise<boolean> {
  const copier = workers.get();
  if (!copier) {
    const bytes = await readExactly(seed.path, seed.offset, seed.length);
    if (!bytes || sha256(bytes) !== w.chunk.sha256) return false;
    into.put(w, bytes, true);
    return true;
  }
  const fh = await files.open(seed.path);
  if (!fh) return false;
  try {
    await copier.copy({ fd: fh.fd, offset: seed.offset }, w.chunk, w.where, into.writesOf(w));
  } catch (err) {
    // not the bytes the manifest names (bit rot, a shorter file): the next provider's
    if (err instanceof VerificationError) return false;
    throw err;
  }
  into.written(w, true);
  return true;
}

export function seedProvider(seeds: SeedIndex, workers: LazyDecodePool, concurrency: number): ChunkProvider {
  return {
    async fill(wanted, into) {
      const copied = new Set<Work>();
      const files = new SeedFiles();
      try {
        await parallel(wanted, concurrency, async (w) => {
          into.check();
          const seed = seeds.get(w.chunk.sha256);
          if (seed && seed.length === w.chunk.length && (await copyOne(w, seed, into, workers, files))) copied.add(w);
        });
      } finally {
        await files.close();
      }
      return wanted.filter((w) => !copied.has(w));
    },
  };
}
