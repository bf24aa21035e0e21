// A small pool of decode workers (decode-worker.ts). Frames are copied into their own
// buffer and transferred, so a worker never sees the socket's pooled memory.
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { DigestError, type Chunk, type ErrorCode } from '../format/index.js';
import type { DecodeJob, DecodeReply } from './decode-worker.js';

/**
 * The worker script. Under tsx (tests, benches) this module and its worker are .ts files;
 * Node 20 does not apply `--import tsx` to a worker's entry, so a tiny bootstrap registers
 * tsx in the worker first (messages queue on the port until the worker listens).
 */
function newWorker(): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./decode-worker.js', import.meta.url));
  const entry = new URL('./decode-worker.ts', import.meta.url).href;
  const tsx = import.meta.resolve('tsx/esm/api');
  return new Worker(`import(${JSON.stringify(tsx)}).then(({ register }) => { register(); return import(${JSON.stringify(entry)}); })`, { eval: true });
}

export class DecodePool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();
  private nextId = 0;
  private broken?: Error;

  constructor(size = Math.min(4, availableParallelism())) {
    for (let i = 0; i < Math.max(1, size); i++) {
      const w = newWorker();
      w.on('message', (r: DecodeReply) => this.settle(r));
      w.on('error', (err) => this.fail(err));
      w.on('exit', (code) => code !== 0 && this.fail(new Error(`decode worker exited with code ${code}`)));
      this.workers.push(w);
    }
  }

  /** Decodes and verifies a frame in a worker, then writes the chunk at each (fd, offset). */
  decode(frame: Uint8Array, c: Pick<Chunk, 'length' | 'sha256'>, where: string, writes: { fd: number; offset: number }[]): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    const copy = new Uint8Array(frame.length);
    copy.set(frame);
    return this.post({ id: this.nextId++, frame: copy, length: c.length, sha256: c.sha256, where, writes }, [copy.buffer]);
  }

  /**
   * Reads a chunk from a local file (fd at offset) in a worker, re-hashes it, then writes it
   * at each (fd, offset). Rejects with a VerificationError when the local bytes are not the chunk.
   */
  copy(seed: { fd: number; offset: number }, c: Pick<Chunk, 'length' | 'sha256'>, where: string, writes: { fd: number; offset: number }[]): Promise<void> {
    return this.post({ id: this.nextId++, seed, length: c.length, sha256: c.sha256, where, writes });
  }

  private post(job: DecodeJob, transfer: ArrayBuffer[] = []): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    return new Promise((resolve, reject) => {
      this.pending.set(job.id, { resolve, reject });
      this.workers[job.id % this.workers.length].postMessage(job, transfer);
    });
  }

  private settle(r: DecodeReply): void {
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    if (r.ok) return p.resolve();
    if (r.verification) return p.reject(new DigestError((r.code ?? 'CHUNK_INVALID') as ErrorCode, r.message, { where: r.where }));
    p.reject(Object.assign(new Error(r.message), { code: r.code }));
  }

  private fail(err: Error): void {
    this.broken ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** A DecodePool started only when first asked for, shared by the sources of one install; size 0: none (the main thread decodes). */
export class LazyDecodePool {
  private pool?: DecodePool;
  constructor(private readonly size?: number) {}
  get(): DecodePool | null {
    if (this.size === 0) return null;
    return (this.pool ??= new DecodePool(this.size));
  }
  async close(): Promise<void> {
    await this.pool?.close();
  }
}
