// Guards a streamed request body: a byte limit, an idle timeout (no data for N ms) and a
// total timeout. Whatever trips first ends the stream with an ApiError, so the consumer
// (the repository writer) aborts and the route answers with that error.
//
// The source is only piped in once the consumer starts reading ('resume'): by then the
// consumer listens for 'error', so a failure can never go unnoticed and leave it waiting.
import { Transform, type TransformCallback } from 'node:stream';
import { ApiError } from './api-error.js';

export interface UploadLimits {
  maxBytes: number;
  idleTimeoutMs: number;
  totalTimeoutMs: number;
}

export class LimitedUpload extends Transform {
  bytes = 0;
  /** the reason the upload was cut off, when it was */
  failure: ApiError | null = null;
  private idle?: NodeJS.Timeout;
  private total?: NodeJS.Timeout;
  private started = false;

  constructor(
    private readonly source: NodeJS.ReadableStream,
    private readonly limits: UploadLimits,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.on('error', () => {}); // reported through `failure`; the consumer has its own listener
    this.once('resume', () => this.start());
  }

  private start(): void {
    if (this.started) return;
    this.started = true;
    if (this.failure) {
      this.destroy(this.failure);
      return;
    }
    this.idle = setTimeout(() => this.fail(new ApiError(408, 'REQUEST_TIMEOUT', `upload sent nothing for ${this.limits.idleTimeoutMs / 1000} s`)), this.limits.idleTimeoutMs);
    this.total = setTimeout(() => this.fail(new ApiError(408, 'REQUEST_TIMEOUT', `upload took longer than ${this.limits.totalTimeoutMs / 1000} s`)), this.limits.totalTimeoutMs);
    this.idle.unref();
    this.total.unref();
    this.source.pipe(this);
  }

  fail(err: ApiError): void {
    if (this.failure || this.destroyed) return;
    this.failure = err;
    if (this.started) this.destroy(err);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limits.maxBytes) {
      this.fail(new ApiError(413, 'PAYLOAD_TOO_LARGE', `upload exceeds the server's limit of ${this.limits.maxBytes} bytes`));
      return cb();
    }
    this.idle?.refresh();
    cb(null, chunk);
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    clearTimeout(this.idle);
    clearTimeout(this.total);
    this.source.unpipe?.(this);
    cb(err);
  }

  override _flush(cb: TransformCallback): void {
    clearTimeout(this.idle);
    clearTimeout(this.total);
    cb();
  }
}
