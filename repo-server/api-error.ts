// HTTP-facing errors: every failure the server answers is a small JSON body
// {error, code, message} with a status that says whose fault it was. Errors thrown by
// the format/ layer (LoopshipError) are mapped here, in one place.
import type { ErrorRequestHandler, Response } from 'express';
import { LoopshipError, VerificationError, UsageError, ConfigError } from '../format/index.js';

export type ApiErrorCode =
  | 'BAD_REQUEST'
  | 'UNAUTHORIZED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'METHOD_NOT_ALLOWED'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'REQUEST_TIMEOUT'
  | 'RANGE_NOT_SATISFIABLE'
  | 'PRECONDITION_FAILED'
  | 'RATE_LIMITED'
  | 'STORE_FULL'
  | 'NOT_CONFIGURED'
  | 'INTERNAL';

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly headers: Record<string, string>;
  constructor(status: number, code: ApiErrorCode | string, message: string, opts: { headers?: Record<string, string>; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.headers = opts.headers ?? {};
  }
}

export interface ErrorBody {
  error: string;
  code: string;
  message: string;
  where?: string;
}

/** Status for an error thrown below the HTTP layer: bad input is the client's fault, the rest ours. */
export function statusFor(err: LoopshipError): number {
  if (err instanceof VerificationError) return 422;
  if (err instanceof UsageError || err instanceof ConfigError || err.code === 'USAGE' || err.code === 'CONFIG_INVALID') return 400;
  switch (err.code) {
    case 'NOT_FOUND':
      return 404;
    case 'LOCKED':
    case 'CONFLICT':
      return 409;
    case 'METADATA_TOO_LARGE':
      return 413;
    default:
      return 500;
  }
}

export function toErrorResponse(err: unknown): { status: number; body: ErrorBody; headers: Record<string, string> } {
  if (err instanceof ApiError) {
    return { status: err.status, body: { error: 'ApiError', code: err.code, message: err.message }, headers: err.headers };
  }
  if (err instanceof LoopshipError) {
    const status = statusFor(err);
    const body: ErrorBody = { error: err.name, code: err.code, message: err.message };
    if (err.where) body.where = err.where;
    return { status, body, headers: {} };
  }
  // body-parser / raw-body errors carry an HTTP status and a type
  const e = err as { status?: number; statusCode?: number; type?: string; message?: string; expose?: boolean };
  const status = e?.status ?? e?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const code =
      status === 413 ? 'PAYLOAD_TOO_LARGE' : status === 415 ? 'UNSUPPORTED_MEDIA_TYPE' : status === 408 ? 'REQUEST_TIMEOUT' : 'BAD_REQUEST';
    return { status, body: { error: 'ApiError', code, message: e.expose !== false && e.message ? e.message : 'bad request' }, headers: {} };
  }
  return { status: 500, body: { error: 'InternalError', code: 'INTERNAL', message: 'internal server error (see the server log)' }, headers: {} };
}

export function sendError(res: Response, err: unknown): void {
  const { status, body, headers } = toErrorResponse(err);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.status(status).json(body);
}

/** Express's final error handler: JSON for everything, details of 5xx only in the log. */
export function errorHandler(log: { error: (obj: object, msg: string) => void }): ErrorRequestHandler {
  return (err, req, res, _next) => {
    const { status } = toErrorResponse(err);
    if (status >= 500) log.error({ err, method: req.method, url: req.originalUrl }, 'request failed');
    // a refused upload is not read to its end just to keep the connection: close it instead
    if (!req.complete && !res.headersSent) res.setHeader('Connection', 'close');
    sendError(res, err);
  };
}
