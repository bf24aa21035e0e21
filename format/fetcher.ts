// Where repository files come from: an HTTP(S) base URL or a local directory (a mirror
// on disk, a USB stick). Every read is bounded by the caller's maxBytes and by time,
// whatever the server claims, so a hostile server cannot feed us forever.
import http from 'node:http';
import https from 'node:https';
import { constants } from 'node:fs';
import { lstat, open, realpath } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { FetchError } from './errors.js';

export interface StreamOptions {
  start?: number;
  /** end of the byte range, exclusive (an HTTP Range request; the answer must be exactly it) */
  end?: number;
}

export interface Fetcher {
  readonly source: string;
  /** A whole (small) file, at most maxBytes. 404 throws FetchError with code NOT_FOUND. */
  get(path: string, maxBytes: number): Promise<Buffer>;
  /** A stream of the file from `start`, ending with an error if it runs past maxBytes. */
  stream(path: string, maxBytes: number, opts?: StreamOptions): Promise<Readable>;
}

export interface HttpFetcherOptions {
  /** no byte for this long: give up */
  idleTimeoutMs?: number;
  /** whole request deadline = baseTimeoutMs + bytes / minBytesPerSecond */
  baseTimeoutMs?: number;
  minBytesPerSecond?: number;
  maxSockets?: number;
  headers?: Record<string, string>;
}

const DEFAULTS: Required<Omit<HttpFetcherOptions, 'headers'>> = {
  idleTimeoutMs: 30_000,
  baseTimeoutMs: 60_000,
  minBytesPerSecond: 32 * 1024,
  maxSockets: 16,
};

/** Counts bytes through a stream and fails it once they exceed `max`. */
function limitStream(max: number, where: string): Transform {
  let n = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n > max) cb(new FetchError(`more than ${max} bytes (the limit for this file)`, { where, code: 'TOO_LARGE' }));
      else cb(null, chunk);
    },
  });
}

function checkPath(path: string, where: string): void {
  if (path.startsWith('/') || path.split('/').some((p) => p === '..' || p === '' || p.startsWith('.'))) {
    throw new FetchError('refusing a path outside the repository tree', { where, code: 'USAGE' });
  }
}

/**
 * A URL as it may be shown: credentials in it (http://user:secret@host/, or a token as the
 * user name; sent as Basic auth) masked. Messages go to logs, state.json and the fleet
 * report the server's viewers read.
 */
export function displayUrl(url: URL | string): string {
  const u = new URL(url);
  if (!u.username && !u.password) return u.href;
  u.username = '***';
  u.password = '';
  return u.href;
}

export class HttpFetcher implements Fetcher {
  /** the base URL as shown in messages (displayUrl) */
  readonly source: string;
  private readonly base: URL;
  private readonly opts: Required<Omit<HttpFetcherOptions, 'headers'>> & { headers: Record<string, string> };
  private readonly agent: http.Agent;

  constructor(source: string, opts: HttpFetcherOptions = {}) {
    this.base = new URL(source.endsWith('/') ? source : source + '/');
    this.source = /^[a-z]+:\/\/[^/]*@/i.test(source) ? displayUrl(source) : source;
    this.opts = { ...DEFAULTS, ...opts, headers: opts.headers ?? {} };
    const Agent = this.base.protocol === 'https:' ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true, maxSockets: this.opts.maxSockets });
  }

  private url(path: string): URL {
    return new URL(path, this.base);
  }

  /**
   * The whole body, read straight off the response (no extra stream stage: chunk
   * downloads are many small requests, and each stage costs).
   */
  async get(path: string, maxBytes: number): Promise<Buffer> {
    const { res, where, declared, finish, reason } = await this.open(path, maxBytes, {});
    try {
      const parts: Buffer[] = [];
      let n = 0;
      for await (const part of res) {
        n += (part as Buffer).length;
        if (n > maxBytes) {
          res.destroy();
          throw new FetchError(`more than ${maxBytes} bytes (the limit for this file)`, { where, code: 'TOO_LARGE' });
        }
        parts.push(part as Buffer);
      }
      if (declared !== undefined && n !== declared) throw new FetchError(`connection closed after ${n} of ${declared} bytes`, { where });
      return parts.length === 1 ? parts[0] : Buffer.concat(parts, n);
    } catch (err) {
      if (err instanceof FetchError) throw err;
      throw reason() ?? new FetchError(`download failed (${networkReason(err as Error)})`, { where, cause: err });
    } finally {
      finish();
    }
  }

  async stream(path: string, maxBytes: number, opts: StreamOptions = {}): Promise<Readable> {
    const { res, req, where, finish } = await this.open(path, maxBytes, opts);
    const limiter = limitStream(maxBytes, where);
    res.on('error', (err) => limiter.destroy(err instanceof FetchError ? err : new FetchError(`download failed (${networkReason(err)})`, { where, cause: err })));
    res.on('aborted', () => limiter.destroy(new FetchError('connection closed before the end of the file', { where })));
    req.on('error', (err) => limiter.destroy(err));
    limiter.on('close', finish);
    limiter.on('end', finish);
    return res.pipe(limiter);
  }

  /** Sends the request and checks status and headers; the caller reads the body. */
  private open(path: string, maxBytes: number, opts: StreamOptions, attempt = 0): Promise<{ res: http.IncomingMessage; req: http.ClientRequest; where: string; declared?: number; finish: () => void; reason: () => FetchError | undefined }> {
    const url = this.url(path);
    const where = displayUrl(url);
    checkPath(path, where);
    const lib = url.protocol === 'https:' ? https : http;
    const deadline = this.opts.baseTimeoutMs + (maxBytes / this.opts.minBytesPerSecond) * 1000;
    return new Promise((resolvePromise, reject) => {
      const headers: Record<string, string> = { 'user-agent': 'loopship', ...this.opts.headers };
      const ranged = Boolean(opts.start) || opts.end !== undefined;
      if (ranged) headers.range = `bytes=${opts.start ?? 0}-${opts.end !== undefined ? opts.end - 1 : ''}`;
      const req = lib.get(url, { agent: this.agent, headers });
      // Why we cut a request off, so the reader reports that instead of "aborted".
      let reason: FetchError | undefined;
      const kill = (err: FetchError) => req.destroy((reason ??= err));
      const t0 = Date.now();
      const deadlineAt = (ms: number) => {
        const t = setTimeout(() => kill(new FetchError(`took longer than ${Math.round(ms / 1000)} s`, { where })), Math.max(0, t0 + ms - Date.now()));
        t.unref();
        return t;
      };
      let timer = deadlineAt(deadline);
      req.setTimeout(this.opts.idleTimeoutMs, () => kill(new FetchError(`no data for ${this.opts.idleTimeoutMs / 1000} s`, { where })));
      let answered = false;
      req.on('error', (err) => {
        clearTimeout(timer);
        // A kept-alive socket the server closed just as we reused it: the request never
        // reached the server, so sending it again on a fresh socket is safe (once).
        const code = (err as NodeJS.ErrnoException).code;
        if (!answered && !reason && attempt === 0 && req.reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE' || err.message === 'socket hang up')) {
          resolvePromise(this.open(path, maxBytes, opts, 1));
          return;
        }
        reject(err instanceof FetchError ? err : new FetchError(`request failed (${networkReason(err)})`, { where, cause: err }));
      });
      req.on('response', (res) => {
        answered = true;
        const status = res.statusCode ?? 0;
        const fail = (msg: string, code?: 'NOT_FOUND' | 'TOO_LARGE') => {
          clearTimeout(timer);
          // a wrong answer to a Range request may be the whole (big) file: drop the connection
          // rather than drain it
          if (ranged) res.destroy();
          else res.resume();
          reject(new FetchError(msg, { where, status, code }));
        };
        // Redirects are not followed: a repository is a plain tree, and a redirect to
        // another host is exactly what a hijacked mirror would send.
        if (status >= 300 && status < 400) return fail(`HTTP ${status} redirect to ${res.headers.location ?? '?'} refused`);
        if (status === 404 || status === 410) return fail(`HTTP ${status}: not found`, 'NOT_FOUND');
        const wantStatus = ranged ? 206 : 200;
        if (status !== wantStatus) return fail(`HTTP ${status} (expected ${wantStatus})`);
        if (ranged) {
          // a server that answers another range than asked would shift every byte after it
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
          const start = opts.start ?? 0;
          if (!m || Number(m[1]) !== start || (opts.end !== undefined && Number(m[2]) !== opts.end - 1)) {
            return fail(`Content-Range ${JSON.stringify(res.headers['content-range'] ?? null)} does not answer bytes=${start}-${opts.end !== undefined ? opts.end - 1 : ''}`);
          }
        }
        const declared = Number(res.headers['content-length'] ?? NaN);
        if (Number.isFinite(declared) && declared > maxBytes) return fail(`Content-Length ${declared} exceeds the ${maxBytes}-byte limit for this file`, 'TOO_LARGE');
        if (Number.isFinite(declared) && declared < maxBytes) {
          // the deadline follows what is coming, not the limit: a 2 KiB index.json dripped at
          // a byte a second is cut off after ~60 s, not after the time 16 MiB would take
          clearTimeout(timer);
          timer = deadlineAt(this.opts.baseTimeoutMs + (declared / this.opts.minBytesPerSecond) * 1000);
        }
        resolvePromise({ res, req, where, declared: Number.isFinite(declared) ? declared : undefined, finish: () => clearTimeout(timer), reason: () => reason });
      });
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

export class DirFetcher implements Fetcher {
  readonly source: string;
  constructor(dir: string) {
    this.source = resolve(dir);
  }

  private async resolvePath(path: string): Promise<string> {
    const where = join(this.source, path);
    checkPath(path, where);
    let real: string;
    try {
      real = await realpath(where);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new FetchError('not found', { where, code: 'NOT_FOUND', status: 404 });
      throw new FetchError(`cannot read (${(err as Error).message})`, { where, cause: err });
    }
    const base = await realpath(this.source);
    if (!real.startsWith(base + sep)) throw new FetchError('symlink leads outside the repository', { where });
    return real;
  }

  /**
   * Opens a repository file for reading: only a regular file (a FIFO, device or socket planted
   * on a USB stick or share would hang or never end), without blocking on a FIFO while it looks.
   */
  private async openFile(p: string) {
    // looked at before it is opened (opening a device can itself do something), and opened
    // without following a link swapped in since realpath resolved it
    if (!(await lstat(p)).isFile()) throw new FetchError('not a regular file', { where: p });
    const fh = await open(p, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY | constants.O_NOFOLLOW).catch((err: NodeJS.ErrnoException) => {
      throw new FetchError(err.code === 'ELOOP' ? 'replaced by a symlink while being opened' : `cannot read (${err.message})`, { where: p, cause: err });
    });
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw new FetchError('not a regular file', { where: p });
    }
    return { fh, size: st.size };
  }

  async get(path: string, maxBytes: number): Promise<Buffer> {
    const p = await this.resolvePath(path);
    const { fh, size } = await this.openFile(p);
    try {
      if (size > maxBytes) throw new FetchError(`${size} bytes exceeds the ${maxBytes}-byte limit for this file`, { where: p, code: 'TOO_LARGE' });
      // exactly the size it had when opened: a file that grows meanwhile is not read past it
      const buf = Buffer.alloc(size);
      let off = 0;
      while (off < size) {
        const { bytesRead } = await fh.read(buf, off, size - off, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return buf.subarray(0, off);
    } finally {
      await fh.close();
    }
  }

  async stream(path: string, maxBytes: number, opts: StreamOptions = {}): Promise<Readable> {
    const p = await this.resolvePath(path);
    const end = opts.end !== undefined ? opts.end - 1 : undefined;
    const { fh, size } = await this.openFile(p);
    if (end !== undefined && end >= size) {
      await fh.close();
      throw new FetchError(`range ends at ${end}, past the end of the file`, { where: p });
    }
    const src = fh.createReadStream({ start: opts.start ?? 0, end, highWaterMark: 1024 * 1024 });
    const out = src.pipe(limitStream(maxBytes, p));
    // a reader that gives up (a bad frame in a pack) destroys `out`: close the file with it
    out.once('close', () => src.destroy());
    return out;
  }
}

export function createFetcher(source: string, opts: HttpFetcherOptions = {}): Fetcher {
  if (/^https?:\/\//i.test(source)) return new HttpFetcher(source, opts);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) throw new FetchError('only http://, https:// and local directories are supported', { where: source, code: 'USAGE' });
  return new DirFetcher(source.replace(/^file:\/\//, ''));
}

export { Readable };

/**
 * One readable line for a socket or TLS failure. OpenSSL's messages carry its source path
 * and a line break ("…:error:0A00010B:SSL routines:ssl_get_record:wrong version number:../deps/openssl/…\n");
 * keep the reason and Node's error code, which is what a sysadmin can look up.
 */
export function networkReason(err: Error & { code?: string }): string {
  const text = err.message.split('\n')[0].replace(/:\.\.\/deps\/openssl\/\S*/g, '').replace(/\b[0-9A-F]{8,}:error:[0-9A-F]+:/, '');
  return err.code && !text.includes(err.code) ? `${text}, ${err.code}` : text;
}
