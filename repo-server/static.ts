// Serves the repository tree as plain files over GET and HEAD, on the hot path of every
// agent's download, so it runs before (and without) express. Only names that can exist
// in a repository are served (format/paths.ts decides), and only if they resolve to a
// regular file inside the tree: traversal, dot-files and symlinks pointing out are 404.
//
// Per request: one open (O_NOFOLLOW: a symlink takes the slow, realpath-checked way), one
// fstat, then either one read (small files, most chunks) or a bounded stream (packs,
// package tars). Directory realpaths are cached briefly, so a directory swapped for a
// symlink is noticed within `dirCacheMs`. Conditional GET (ETag / Last-Modified), single
// Range and If-Range follow RFC 9110; several ranges at once get the whole file (allowed,
// and simpler for caches).
//
// Big bodies (agents fetch packs as Range requests of up to 8 MiB, hundreds at once) are
// the server's main cost. With the sendfile addon (sendfile.ts, native/) they go from the
// page cache to the socket without a copy, as nginx sends them. Without it (not built, or
// LOOPSHIP_NO_SENDFILE=1) every byte is copied from the page cache and again into the
// socket, and the stream keeps that to those two copies: a synchronous
// pread into a buffer of a shared pool (no thread-pool round trip, no allocation, no
// garbage), one socket write, and the next read only when the kernel has taken the write
// (backpressure without a queue). Memory: the pool (64 x 128 KiB) plus at most one buffer
// per connection whose client is slower than the kernel's socket buffer, like nginx's
// per-connection output buffers. A read that misses the page cache holds this process's
// loop for one disk read, as it holds an nginx worker (sendfile without aio).
import fs from 'node:fs';
import path from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isRepositoryPath, isImmutablePath } from '../format/index.js';
import { BufferPool } from './buffer-pool.js';
import { loadSendfile, sendFileBody, type SendfileAddon } from './sendfile.js';

export const CACHE_IMMUTABLE = 'public, max-age=31536000, immutable';
/** Metadata that changes in place: caches must revalidate every time (cheap with ETag / 304). */
export const CACHE_REVALIDATE = 'no-cache';

export interface StaticOptions {
  /** files up to this size are read in one go and sent with one write */
  smallFileBytes?: number;
  /** read size per step when streaming bigger files (the pool's buffer size) */
  readBytes?: number;
  /** how many read buffers may exist at once (readBytes each): caps streaming memory */
  readBuffers?: number;
  /** the read buffers (default: a pool of readBuffers x readBytes); shared by tests to watch it */
  pool?: BufferPool;
  /**
   * the zero-copy path for bodies (default: the native addon when it loads, see
   * sendfile.ts); null: always copy in JS
   */
  sendfile?: SendfileAddon | null;
  /**
   * bodies of at least this many bytes go through sendfile when it is there (default 4 KiB,
   * or LOOPSHIP_SENDFILE_MIN): smaller ones leave with their headers in one write
   */
  sendfileMinBytes?: number;
  /** how long a directory's realpath is trusted */
  dirCacheMs?: number;
  /** told about every 5xx answer (the request log may be off) */
  onError?: (err: NodeJS.ErrnoException, url: string | undefined) => void;
}

/** Handles the request when it names a repository file (returns true), else leaves it (false). */
export type RepositoryHandler = (req: IncomingMessage, res: ServerResponse) => boolean;

/** one socket write of a pool buffer */
interface Write {
  b: Buffer;
  /** given up by the pool while the socket still needed it */
  lent: boolean;
  /** back in the pool (or adopted, or left to the collector) */
  done: boolean;
}

const SHA_NAMED = /^(?:chunks\/[0-9a-f]{2}\/([0-9a-f]{64})|manifests\/([0-9a-f]{64})\.json)$/;
const { O_RDONLY, O_NOFOLLOW } = fs.constants;

/** A strong validator: the content hash for content-addressed files, else inode+size+mtime (like nginx). */
export function etagFor(rel: string, st: { ino: number; size: number; mtimeMs: number }): string {
  const m = SHA_NAMED.exec(rel);
  if (m) return `"${m[1] ?? m[2]}"`;
  return `"${st.ino.toString(16)}-${st.size.toString(16)}-${Math.round(st.mtimeMs * 1000).toString(16)}"`;
}

export function cacheControlFor(rel: string): string {
  return isImmutablePath(rel) ? CACHE_IMMUTABLE : CACHE_REVALIDATE;
}

export function contentTypeFor(rel: string): string {
  if (rel.endsWith('.json')) return 'application/json';
  if (rel.endsWith('.asc')) return 'application/pgp-signature';
  if (rel.endsWith('.tar')) return 'application/x-tar';
  if (rel.startsWith('chunks/')) return 'application/zstd';
  return 'application/octet-stream';
}

/**
 * The single byte range a Range header asks for, 'unsatisfiable', or null when the header
 * is to be ignored (absent, malformed, not bytes, or several ranges).
 */
export function parseRange(size: number, header: string | undefined): { start: number; end: number } | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^bytes=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(header);
  if (!m) return null; // includes "bytes=0-1,5-6": several ranges are served as a whole
  const [, a, b] = m;
  if (a === '' && b === '') return null;
  let start: number;
  let end: number;
  if (a === '') {
    const n = Number(b);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return null; // invalid: ignore
  }
  if (start >= size || !Number.isSafeInteger(start)) return 'unsatisfiable';
  return { start, end };
}

function etagMatches(header: string, etag: string): boolean {
  if (header.trim() === '*') return true;
  const strip = (t: string) => t.trim().replace(/^W\//, '');
  const want = strip(etag);
  return header.split(',').some((t) => strip(t) === want);
}

/** Is the client's copy (per If-None-Match, else If-Modified-Since) still current? */
export function isNotModified(headers: IncomingMessage['headers'], etag: string, mtimeMs: number): boolean {
  const inm = headers['if-none-match'];
  if (inm !== undefined) return etagMatches(inm, etag);
  const ims = headers['if-modified-since'];
  if (ims !== undefined) {
    const t = Date.parse(ims);
    return !Number.isNaN(t) && Math.floor(mtimeMs / 1000) * 1000 <= t;
  }
  return false;
}

function preconditionFailed(headers: IncomingMessage['headers'], etag: string, mtimeMs: number): boolean {
  const im = headers['if-match'];
  if (im !== undefined) return !etagMatches(im, etag) || im.includes('W/');
  const ius = headers['if-unmodified-since'];
  if (ius !== undefined) {
    const t = Date.parse(ius);
    return !Number.isNaN(t) && Math.floor(mtimeMs / 1000) * 1000 > t;
  }
  return false;
}

function rangeIsFresh(headers: IncomingMessage['headers'], etag: string, mtimeMs: number): boolean {
  const raw = headers['if-range'] as string | string[] | undefined;
  if (raw === undefined) return true;
  const ir = Array.isArray(raw) ? raw[0] : raw;
  if (ir.startsWith('"') || ir.startsWith('W/')) return ir === etag; // strong comparison only
  const t = Date.parse(ir);
  return !Number.isNaN(t) && Math.floor(mtimeMs / 1000) * 1000 <= t;
}

export function sendJsonError(res: ServerResponse, status: number, code: string, message: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: 'ApiError', code, message });
  res.writeHead(status, { ...headers, 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(body), 'X-Content-Type-Options': 'nosniff' });
  res.end(body);
}

const notFound = (res: ServerResponse) => sendJsonError(res, 404, 'NOT_FOUND', 'no such file in this repository');

/** The repository path a request names, null when none, or 'malformed' for a bad escape. */
export function repositoryPathOf(url: string): string | null | 'malformed' {
  const q = url.indexOf('?');
  let p = q < 0 ? url : url.slice(0, q);
  if (p.includes('%')) {
    try {
      p = decodeURIComponent(p);
    } catch {
      return 'malformed';
    }
  }
  if (p[0] !== '/') return null;
  const rel = p.slice(1);
  // isRepositoryPath's patterns admit no '..', no '.' segments, no backslash, no NUL
  return isRepositoryPath(rel) ? rel : null;
}

export function createRepositoryHandler(repoDir: string, opts: StaticOptions = {}): RepositoryHandler {
  const smallFile = opts.smallFileBytes ?? 256 * 1024;
  // 128 KiB steps cost ~10% more CPU per byte than 256 KiB ones and halve what a slow
  // client's pending write holds; 64 of them (8 MiB) are more than one loop keeps busy
  const pool = opts.pool ?? new BufferPool(opts.readBytes ?? 128 * 1024, opts.readBuffers ?? 64);
  const dirCacheMs = opts.dirCacheMs ?? 1000;
  const sendfile = opts.sendfile !== undefined ? opts.sendfile : loadSendfile().addon;
  // bench/server.ts on 30 KiB chunk files: the same throughput as the one-read path with
  // ~25% less server CPU; on 4 KiB files, no difference (BENCHMARKS.md)
  const minEnv = Number(process.env.LOOPSHIP_SENDFILE_MIN);
  const sendfileMin = opts.sendfileMinBytes ?? (Number.isInteger(minEnv) && minEnv > 0 ? minEnv : 4096);
  let root: string | undefined;
  const dirs = new Map<string, { real: string | null; at: number }>();

  const inside = (real: string) => real === root || real.startsWith(root + path.sep);

  /**
   * The real path of a directory of the tree, or null when it is missing or leads out.
   * Synchronous (realpath(3)), like the opens below: on a busy machine every thread-pool
   * hand-off costs a context switch, which is what made async fs calls the bottleneck.
   */
  function realDir(dir: string): string | null {
    const now = Date.now();
    const hit = dirs.get(dir);
    if (hit && now - hit.at < dirCacheMs) return hit.real;
    let real: string | null;
    try {
      real = fs.realpathSync.native(path.join(root!, dir));
      if (!inside(real)) real = null;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR' && code !== 'ELOOP') throw err;
      real = null;
    }
    if (dirs.size > 4096) dirs.clear();
    dirs.set(dir, { real, at: now });
    return real;
  }

  /** An open descriptor of the file, or null when it is missing or not inside the tree. */
  function openInside(rel: string): number | null {
    const slash = rel.lastIndexOf('/');
    const real = realDir(slash < 0 ? '' : rel.slice(0, slash));
    if (real === null) return null;
    const file = path.join(real, rel.slice(slash + 1));
    try {
      return fs.openSync(file, O_RDONLY | O_NOFOLLOW);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return null;
      if (e.code !== 'ELOOP') throw e;
    }
    // a symlink: allowed only when it stays inside the tree
    let target: string;
    try {
      target = fs.realpathSync.native(file);
    } catch {
      return null;
    }
    if (!inside(target)) return null;
    try {
      return fs.openSync(target, O_RDONLY);
    } catch {
      return null;
    }
  }

  function fail(res: ServerResponse, err: NodeJS.ErrnoException): void {
    opts.onError?.(err, res.req?.url);
    sendJsonError(res, 500, 'INTERNAL', `cannot read the file (${err.code ?? 'error'})`);
  }

  function serve(req: IncomingMessage, res: ServerResponse, rel: string, fd: number): void {
    let st: fs.Stats;
    try {
      st = fs.fstatSync(fd);
    } catch (err) {
      fs.closeSync(fd);
      return fail(res, err as NodeJS.ErrnoException);
    }
    if (!st.isFile()) {
      fs.closeSync(fd);
      return notFound(res);
    }
    const etag = etagFor(rel, st);
    const headers: Record<string, string | number> = {
      ETag: etag,
      'Last-Modified': st.mtime.toUTCString(),
      'Cache-Control': cacheControlFor(rel),
      'Accept-Ranges': 'bytes',
      'X-Content-Type-Options': 'nosniff',
    };
    if (preconditionFailed(req.headers, etag, st.mtimeMs)) {
      fs.closeSync(fd);
      return sendJsonError(res, 412, 'PRECONDITION_FAILED', 'precondition failed (If-Match / If-Unmodified-Since)');
    }
    if (isNotModified(req.headers, etag, st.mtimeMs)) {
      fs.closeSync(fd);
      res.writeHead(304, headers);
      res.end();
      return;
    }
    let start = 0;
    let end = st.size - 1;
    let status = 200;
    const range = req.headers.range !== undefined && rangeIsFresh(req.headers, etag, st.mtimeMs) ? parseRange(st.size, req.headers.range) : null;
    if (range === 'unsatisfiable') {
      fs.closeSync(fd);
      return sendJsonError(res, 416, 'RANGE_NOT_SATISFIABLE', 'requested range is outside the file', { 'Content-Range': `bytes */${st.size}` });
    }
    if (range) {
      ({ start, end } = range);
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
    }
    const length = Math.max(0, end - start + 1);
    headers['Content-Type'] = contentTypeFor(rel);
    res.setHeader('Content-Length', length); // set, not only written: the request log reads it
    if (req.method === 'HEAD' || length === 0) {
      fs.closeSync(fd);
      res.writeHead(status, headers);
      res.end();
      return;
    }
    const zeroCopy = sendfile !== null && length >= sendfileMin;
    if (length <= smallFile && !zeroCopy) {
      // Small files (nearly every chunk) are read in one synchronous call: from the page
      // cache that is a memcpy, far cheaper than a thread-pool round trip; on a cache
      // miss it holds the loop for one disk read, as nginx's workers do.
      const buf = Buffer.allocUnsafe(length);
      let off = 0;
      try {
        while (off < length) {
          const n = fs.readSync(fd, buf, off, length - off, start + off);
          if (n === 0) break; // the file shrank under us
          off += n;
        }
      } catch (err) {
        fs.closeSync(fd);
        return fail(res, err as NodeJS.ErrnoException);
      }
      fs.closeSync(fd);
      if (off < length) return sendJsonError(res, 500, 'INTERNAL', 'the file changed while it was read');
      res.writeHead(status, headers);
      res.end(buf);
      return;
    }
    res.writeHead(status, headers);
    if (!zeroCopy) return stream(res, fd, start, end);
    let open = true;
    sendFileBody(res, sendfile, fd, start, length, {
      closeFd: () => {
        if (open) fs.closeSync(fd);
        open = false;
      },
      fallback: () => stream(res, fd, start, end),
      onError: (err) => opts.onError?.(err, res.req?.url),
    });
  }

  /**
   * Sends bytes start..end (inclusive) of fd, one pool buffer per step; closes fd. A step
   * reads synchronously and writes once; the next waits for that write's callback (the
   * kernel took the bytes), so nothing queues up in memory. The buffer goes back to the
   * pool after every write (responses take turns); one whose write did not go out at
   * once is lent to the socket (it may still be read from) and adopted back when done.
   */
  function stream(res: ServerResponse, fd: number, start: number, end: number): void {
    let pos = start;
    let open = true;
    let closed = false;
    let cancel = () => {};
    let inFlight: Write | null = null;
    const closeFd = () => {
      if (!open) return;
      open = false;
      fs.closeSync(fd);
    };
    const abort = (err: NodeJS.ErrnoException) => {
      opts.onError?.(err, res.req?.url);
      closeFd();
      res.destroy(); // the status line is out: a short body is the only way to say it failed
    };
    const step = (b: Buffer): void => {
      cancel = () => {};
      if (pos > end) {
        pool.give(b);
        closeFd();
        res.end();
        return;
      }
      let n: number;
      try {
        n = fs.readSync(fd, b, 0, Math.min(b.length, end - pos + 1), pos);
      } catch (err) {
        pool.give(b);
        return abort(err as NodeJS.ErrnoException);
      }
      if (n === 0) {
        pool.give(b);
        return abort(Object.assign(new Error('the file shrank while it was sent'), { code: 'ESHRANK' }));
      }
      pos += n;
      const w: Write = { b, lent: false, done: false };
      inFlight = w;
      res.write(n === b.length ? b : b.subarray(0, n), (err) => {
        if (inFlight === w) inFlight = null;
        dispose(w);
        if (!err && !closed) cancel = pool.take(step);
      });
      // callbacks never run inside write(): here the write is either all in the kernel or pending
      if (res.writableLength > 0) {
        w.lent = true;
        pool.forget();
      }
    };
    res.on('close', () => {
      closed = true;
      cancel();
      closeFd();
      // a write that went out at once only awaits its callback: its buffer is free now;
      // a lent one comes back through its callback, if it ever runs (else the collector has it)
      if (inFlight && !inFlight.lent) dispose(inFlight);
    });
    cancel = pool.take(step);
  }

  function dispose(w: Write): void {
    if (w.done) return;
    w.done = true;
    if (w.lent) pool.adopt(w.b);
    else pool.give(w.b);
  }

  return (req, res) => {
    const rel = repositoryPathOf(req.url ?? '/');
    if (rel === null) return false;
    if (rel === 'malformed') {
      sendJsonError(res, 400, 'BAD_REQUEST', 'malformed percent-encoding in the request path');
      return true;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJsonError(res, 405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on repository files`, { Allow: 'GET, HEAD' });
      return true;
    }
    try {
      root ??= fs.realpathSync.native(repoDir);
    } catch {
      sendJsonError(res, 503, 'NOT_CONFIGURED', 'the repository directory is not available');
      return true;
    }
    let fd: number | null;
    try {
      fd = openInside(rel);
    } catch (err) {
      fail(res, err as NodeJS.ErrnoException);
      return true;
    }
    if (fd === null) notFound(res);
    else serve(req, res, rel, fd);
    return true;
  };
}
