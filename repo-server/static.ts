// Serves the repository tree as plain files over GET and HEAD. Only names that can exist in
// a repository are served (format/paths.ts decides), and only if they resolve to a regular
// file inside the tree, so traversal, dot-files and symlinks pointing out are all 404.
// `send` (what express.static uses) does Range, If-Range, conditional GET and streaming;
// this module adds the strict path policy, strong ETags and the cache policy.
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import type { RequestHandler, Response } from 'express';
import send from 'send';
import { isRepositoryPath, isImmutablePath } from '../format/index.js';
import { ApiError, sendError } from './api-error.js';

export const CACHE_IMMUTABLE = 'public, max-age=31536000, immutable';
/** Metadata that changes in place: caches must revalidate every time (cheap with ETag / 304). */
export const CACHE_REVALIDATE = 'no-cache';

export interface StaticOptions {
  /** read size per chunk of a streamed file; bigger means fewer syscalls per byte */
  highWaterMark?: number;
}

const SHA_NAMED = /^(?:chunks\/[0-9a-f]{2}\/([0-9a-f]{64})|manifests\/([0-9a-f]{64})\.json)$/;

/**
 * The repository path a request names, or null when it names nothing servable.
 * Decodes once; a malformed escape is a client error.
 */
export function repositoryPathOf(urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    throw new ApiError(400, 'BAD_REQUEST', 'malformed percent-encoding in the request path');
  }
  if (!decoded.startsWith('/')) return null;
  const rel = decoded.slice(1);
  // isRepositoryPath's patterns admit no '..', no '.' segments, no backslash, no NUL
  return isRepositoryPath(rel) ? rel : null;
}

/** A strong validator: the content hash for content-addressed files, else inode+size+mtime (like nginx). */
export function etagFor(rel: string, st: { ino: number; size: number; mtimeMs: number }): string {
  const m = SHA_NAMED.exec(rel);
  if (m) return `"${m[1] ?? m[2]}"`;
  return `"${st.ino.toString(16)}-${st.size.toString(16)}-${Math.round(st.mtimeMs * 1000).toString(16)}"`;
}

export function cacheControlFor(rel: string): string {
  return isImmutablePath(rel) ? CACHE_IMMUTABLE : CACHE_REVALIDATE;
}

const CONTENT_TYPES: Array<[RegExp, string]> = [
  [/\.json$/, 'application/json'],
  [/\.asc$/, 'application/pgp-signature'],
  [/\.tar$/, 'application/x-tar'],
  [/^chunks\//, 'application/zstd'],
];

function notFound(res: Response): void {
  sendError(res, new ApiError(404, 'NOT_FOUND', 'no such file in this repository'));
}

export function serveRepository(repoDir: string, opts: StaticOptions = {}): RequestHandler {
  const highWaterMark = opts.highWaterMark ?? 1024 * 1024;
  let realRootPromise: Promise<string> | undefined;
  const realRoot = () => (realRootPromise ??= realpath(repoDir));

  return async (req, res, next) => {
    let rel: string | null;
    try {
      rel = repositoryPathOf(req.path);
    } catch (err) {
      return sendError(res, err);
    }
    if (rel === null) return next();
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on repository files`, { headers: { Allow: 'GET, HEAD' } }));
    }
    let root: string;
    let real: string;
    try {
      root = await realRoot();
      real = await realpath(path.join(root, rel));
      // a symlink (anywhere on the way) may not lead out of the tree
      if (!real.startsWith(root + path.sep)) return notFound(res);
      if (!(await stat(real)).isFile()) return notFound(res);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return notFound(res);
      return next(err);
    }
    const type = CONTENT_TYPES.find(([re]) => re.test(rel))?.[1] ?? 'application/octet-stream';
    const stream = send(req, path.relative(root, real), {
      root,
      dotfiles: 'allow', // already excluded by isRepositoryPath; the root itself may sit under a dot-dir
      index: false,
      cacheControl: false,
      etag: true,
      lastModified: true,
      acceptRanges: true,
      highWaterMark,
    } as send.SendOptions);
    stream.on('headers', (r: Response, _p: string, st: { ino: number; size: number; mtimeMs: number }) => {
      r.setHeader('ETag', etagFor(rel, st));
      r.setHeader('Cache-Control', cacheControlFor(rel));
      r.setHeader('Content-Type', type);
      r.setHeader('X-Content-Type-Options', 'nosniff');
    });
    stream.on('error', (err: { status?: number; headers?: Record<string, string> }) => {
      const status = err.status ?? 500;
      if (!res.headersSent) for (const h of res.getHeaderNames()) res.removeHeader(h);
      if (status === 416) {
        return sendError(res, new ApiError(416, 'RANGE_NOT_SATISFIABLE', 'requested range is outside the file', { headers: err.headers ?? {} }));
      }
      if (status === 412) return sendError(res, new ApiError(412, 'PRECONDITION_FAILED', 'precondition failed (If-Match / If-Unmodified-Since)'));
      if (status === 404) return notFound(res);
      next(err);
    });
    stream.pipe(res);
  };
}
