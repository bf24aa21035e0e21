// A decode worker: zstd-decodes one chunk frame under the manifest's length bound, checks
// its sha256, and only then writes it (sparse) at each of its places. The main thread only
// moves bytes, so decoding and hashing use every core, as `curl | zstd -d | sha256sum` does.
import { parentPort } from 'node:worker_threads';
import { decodeChunk } from '../format/codec.js';
import { LoopshipError } from '../format/errors.js';
import { writeSparseSync } from './sparse.js';

export interface DecodeJob {
  id: number;
  frame: Uint8Array;
  length: number;
  sha256: string;
  where: string;
  writes: { fd: number; offset: number }[];
}
export type DecodeReply = { id: number; ok: true } | { id: number; ok: false; verification: boolean; code?: string; message: string; where?: string };

parentPort!.on('message', (job: DecodeJob) => {
  let raw: Buffer;
  try {
    raw = decodeChunk(job.frame, job, job.where);
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
