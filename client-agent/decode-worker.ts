// A decode worker: zstd-decodes one chunk frame under the manifest's length bound, checks
// its sha256, and only then writes it (sparse) at each of its places. The main thread only
// moves bytes, so decoding and hashing use every core, as `curl | zstd -d | sha256sum` does.
// A seed job is the same without the network: the chunk's bytes are read from a file this
// host already has (an installed version's verified image) and re-hashed before the write.
import { parentPort } from 'node:worker_threads';
import { readSync } from 'node:fs';
import { decodeChunk, sha256Hex } from '../format/codec.js';
import { DigestError, LoopshipError } from '../format/errors.js';
import { writeSparseSync } from './sparse.js';

interface JobBase {
  id: number;
  length: number;
  sha256: string;
  where: string;
  writes: { fd: number; offset: number }[];
}
export type DecodeJob = (JobBase & { frame: Uint8Array }) | (JobBase & { seed: { fd: number; offset: number } });
export type DecodeReply = { id: number; ok: true } | { id: number; ok: false; verification: boolean; code?: string; message: string; where?: string };

/** The chunk's bytes from a local file, verified; a short read or other bytes are a DigestError. */
function readSeed(seed: { fd: number; offset: number }, c: JobBase): Buffer {
  const out = Buffer.allocUnsafe(c.length);
  let got = 0;
  try {
    while (got < c.length) {
      const n = readSync(seed.fd, out, got, c.length - got, seed.offset + got);
      if (n === 0) break;
      got += n;
    }
  } catch (cause) {
    throw new DigestError('CHUNK_INVALID', `cannot read the local copy (${(cause as Error).message})`, { where: c.where, cause });
  }
  if (got !== c.length) throw new DigestError('CHUNK_INVALID', `local copy ends after ${got} of ${c.length} bytes`, { where: c.where });
  const digest = sha256Hex(out);
  if (digest !== c.sha256) throw new DigestError('DIGEST_MISMATCH', `local copy has sha256 ${digest}, not the manifest's ${c.sha256}`, { where: c.where });
  return out;
}

parentPort!.on('message', (job: DecodeJob) => {
  let raw: Buffer;
  try {
    raw = 'seed' in job ? readSeed(job.seed, job) : decodeChunk(job.frame, job, job.where);
  } catch (err) {
    const e = err as LoopshipError;
    // the message without the "where: " prefix LoopshipError adds: the main thread adds it again
    const message = e.where && e.message.startsWith(`${e.where}: `) ? e.message.slice(e.where.length + 2) : e.message;
    parentPort!.postMessage({ id: job.id, ok: false, verification: true, code: e.code, message, where: e.where } satisfies DecodeReply);
    return;
  }
  try {
    for (const w of job.writes) writeSparseSync(w.fd, raw, w.offset);
    parentPort!.postMessage({ id: job.id, ok: true } satisfies DecodeReply);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    parentPort!.postMessage({ id: job.id, ok: false, verification: false, code: e.code, message: e.message } satisfies DecodeReply);
  }
});
