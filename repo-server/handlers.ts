// What every API router of `loopship serve` does with a request the same way: a JSON body
// required, validated against its schema with the field named, async handlers' errors passed on.
import type { Request, RequestHandler, Response } from 'express';
import type * as z from 'zod';
import { describeIssues } from '../format/index.js';
import { ApiError } from './api-error.js';

export function validate<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new ApiError(400, 'BAD_REQUEST', `invalid ${what}: ${describeIssues(r.error.issues)}`);
  return r.data;
}

export const wrap =
  (fn: (req: Request, res: Response) => Promise<void>): RequestHandler =>
  (req, res, next) => {
    fn(req, res).catch(next);
  };

export function requireJson(req: Request): void {
  if (!req.is('application/json')) throw new ApiError(415, 'UNSUPPORTED_MEDIA_TYPE', 'expected a JSON body (Content-Type: application/json)');
}
