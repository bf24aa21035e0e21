// The HTTP client side of the publishing API, used by `loopship publish/promote --server`:
// streams the package file (never buffered) with progress, and turns the server's JSON
// errors back into LoopshipErrors with the server's code and message.
import type { RolloutRequest, RolloutResult, RolloutView } from './rollouts.js';
import type { HoldRequest, HoldResult } from './holds.js';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { LoopshipError, VerificationError, UsageError, FetchError, type ErrorCode } from '../format/index.js';

export interface PublishResponse {
  name: string;
  version: string;
  arch: string;
  manifest_sha256: string;
  index_version: number;
  new_chunks: number;
  reused_chunks: number;
  unchanged: boolean;
  channel: string | null;
  bytes: number;
}

export interface PromoteResponse {
  name: string;
  channel: string;
  version: string;
  index_version: number;
}

const VERIFICATION_CODES = new Set<string>(['METADATA_INVALID', 'METADATA_TOO_LARGE', 'SIGNATURE_INVALID', 'SIGNATURE_THRESHOLD', 'UNKNOWN_KEY', 'EXPIRED', 'ROLLBACK', 'ROOT_CHAIN', 'DIGEST_MISMATCH', 'SIZE_MISMATCH', 'MIX_AND_MATCH', 'CHUNK_INVALID', 'PACKAGE_INVALID']);

/** The server's error answer as an error of the right class (so exit codes mean the same). */
export function remoteError(status: number, bodyText: string, where: string): LoopshipError {
  let body: { code?: string; message?: string } = {};
  try {
    body = JSON.parse(bodyText);
  } catch {
    /* not JSON: a proxy's error page, say */
  }
  const message = `server answered ${status}: ${body.message ?? (bodyText.slice(0, 200).trim() || http.STATUS_CODES[status])}${body.code ? ` (${body.code})` : ''}`;
  if (status === 422 && body.code && VERIFICATION_CODES.has(body.code)) return new VerificationError(body.code as ErrorCode, message, { where });
  if (status === 409) return new LoopshipError(body.code === 'LOCKED' ? 'LOCKED' : 'CONFLICT', message, { where });
  if (status === 404 && body.code === 'NOT_FOUND') return new LoopshipError('NOT_FOUND', message, { where });
  if (status >= 400 && status < 500 && status !== 408 && status !== 429) return new UsageError(message, { where });
  return new FetchError(message, { where, status });
}

interface RequestOptions {
  method: string;
  token: string;
  headers?: Record<string, string | number>;
  body?: NodeJS.ReadableStream | Buffer;
  timeoutMs?: number;
}

function request(url: URL, opts: RequestOptions): Promise<{ status: number; text: string }> {
  const mod = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : null;
  if (!mod) return Promise.reject(new UsageError(`unsupported server URL ${url.href} (expected http:// or https://)`));
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (fn: () => void) => {
      if (!settled) {
        settled = true;
        fn();
      }
    };
    const req = mod.request(url, { method: opts.method, headers: { ...opts.headers, Authorization: `Bearer ${opts.token}`, Accept: 'application/json' } }, (res) => {
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (d: Buffer) => {
        n += d.length;
        if (n <= 1024 * 1024) parts.push(d); // an answer is small; never hold more than 1 MiB of it
      });
      res.on('end', () => done(() => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8') })));
      res.on('error', (err) => done(() => reject(new FetchError(`reading the answer failed (${err.message})`, { where: url.href, cause: err }))));
    });
    // a server that rejects an upload answers and closes before reading it all: the
    // answer, if it came, matters more than the broken pipe
    req.on('error', (err) => setTimeout(() => done(() => reject(new FetchError(`request failed (${err.message})`, { where: url.href, cause: err }))), 200));
    if (opts.timeoutMs) req.setTimeout(opts.timeoutMs, () => req.destroy(new Error(`no progress for ${opts.timeoutMs! / 1000} s`)));
    if (!opts.body) req.end();
    else if (Buffer.isBuffer(opts.body)) req.end(opts.body);
    else {
      const body = opts.body;
      body.on('error', (err: Error) => {
        req.destroy(err);
        done(() => reject(err));
      });
      body.pipe(req);
    }
  });
}

function apiUrl(server: string, path: string): URL {
  const base = server.endsWith('/') ? server : server + '/';
  return new URL(path, base);
}

/** Uploads a package tar to `POST /api/v1/packages`, streamed, reporting bytes sent. */
export async function uploadPackage(
  server: string,
  token: string,
  tarPath: string,
  onProgress?: (sent: number, total: number) => void,
  opts: { channel?: string; timeoutMs?: number } = {},
): Promise<PublishResponse> {
  let size: number;
  try {
    size = (await stat(tarPath)).size;
  } catch (cause) {
    throw new UsageError(`cannot read the package (${(cause as Error).message})`, { where: tarPath, cause });
  }
  const url = apiUrl(server, 'api/v1/packages');
  if (opts.channel) url.searchParams.set('channel', opts.channel);
  const file = createReadStream(tarPath, { highWaterMark: 1024 * 1024 });
  let sent = 0;
  file.on('data', (d) => {
    sent += d.length;
    onProgress?.(sent, size);
  });
  const res = await request(url, {
    method: 'POST',
    token,
    headers: { 'Content-Type': 'application/x-tar', 'Content-Length': size },
    body: file,
    timeoutMs: opts.timeoutMs ?? 120_000,
  });
  file.destroy();
  if (res.status !== 200 && res.status !== 201) throw remoteError(res.status, res.text, tarPath);
  return JSON.parse(res.text) as PublishResponse;
}

/** `POST /api/v1/channels/<channel>/promote` with {name, version}. */
export async function promoteRemote(server: string, token: string, name: string, version: string, channel: string): Promise<PromoteResponse> {
  const url = apiUrl(server, `api/v1/channels/${encodeURIComponent(channel)}/promote`);
  const body = Buffer.from(JSON.stringify({ name, version }));
  const res = await request(url, { method: 'POST', token, headers: { 'Content-Type': 'application/json', 'Content-Length': body.length }, body, timeoutMs: 60_000 });
  if (res.status !== 200) throw remoteError(res.status, res.text, `${name} ${version} -> ${channel}`);
  return JSON.parse(res.text) as PromoteResponse;
}

/** `POST /api/v1/rollouts/<name>/<channel>/<op>`: one rollout move (rollouts.ts). */
export async function rolloutRemote(server: string, token: string, name: string, channel: string, req: RolloutRequest): Promise<RolloutResult> {
  const url = apiUrl(server, `api/v1/rollouts/${encodeURIComponent(name)}/${encodeURIComponent(channel)}/${req.op}`);
  const { op: _op, ...rest } = req;
  const body = Buffer.from(JSON.stringify(rest));
  const res = await request(url, { method: 'POST', token, headers: { 'Content-Type': 'application/json', 'Content-Length': body.length }, body, timeoutMs: 60_000 });
  if (res.status !== 200 && res.status !== 201) throw remoteError(res.status, res.text, `rollout ${req.op} ${name}/${channel}`);
  return JSON.parse(res.text) as RolloutResult;
}

/** `GET /api/v1/rollouts`: every rollout, with the fleet's tally. */
export async function rolloutsRemote(server: string, token: string): Promise<RolloutView[]> {
  const res = await request(apiUrl(server, 'api/v1/rollouts'), { method: 'GET', token, timeoutMs: 60_000 });
  if (res.status !== 200) throw remoteError(res.status, res.text, 'rollouts');
  return (JSON.parse(res.text) as { rollouts: RolloutView[] }).rollouts;
}

/** `PUT /api/v1/holds/<image>/<host>` (hold) or `DELETE` (release). */
export async function holdRemote(server: string, token: string, name: string, host: string, req: HoldRequest | null): Promise<HoldResult> {
  const url = apiUrl(server, `api/v1/holds/${encodeURIComponent(name)}/${encodeURIComponent(host)}`);
  const body = req ? Buffer.from(JSON.stringify(req)) : undefined;
  const res = await request(url, { method: req ? 'PUT' : 'DELETE', token, headers: body ? { 'Content-Type': 'application/json', 'Content-Length': body.length } : {}, body, timeoutMs: 60_000 });
  if (res.status !== 200) throw remoteError(res.status, res.text, `${req ? 'hold' : 'release'} ${name}/${host}`);
  return JSON.parse(res.text) as HoldResult;
}
