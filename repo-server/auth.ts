// Bearer-token authentication. Tokens are compared as sha256 digests with
// crypto.timingSafeEqual against every configured principal (no early exit), so the
// time taken says nothing about how close a guess was or which entry matched.
import { timingSafeEqual } from 'node:crypto';
import type { RequestHandler, Request } from 'express';
import { sha256, type Principal } from './config.js';
import { ApiError } from './api-error.js';

export function bearerToken(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i.exec(header);
  return m ? m[1] : null;
}

/** The password of a Basic credential (browsers can send that, not Bearer), any user name. */
export function basicPassword(header: string | undefined): string | null {
  const m = header ? /^Basic[ \t]+([A-Za-z0-9+/=]+)[ \t]*$/i.exec(header) : null;
  if (!m) return null;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon < 0 ? null : decoded.slice(colon + 1) || null;
}

export function findPrincipal(token: string, principals: readonly Principal[]): Principal | null {
  const digest = sha256(token);
  let found: Principal | null = null;
  for (const p of principals) {
    if (timingSafeEqual(digest, p.digest) && found === null) found = p;
  }
  return found;
}

export function principalOf(req: Request): Principal {
  const p = (req as Request & { principal?: Principal }).principal;
  if (!p) throw new ApiError(401, 'UNAUTHORIZED', 'not authenticated');
  return p;
}

/** Middleware: lets the request through only with a valid token of one of `principals()`. */
export function requireToken(what: string, principals: () => readonly Principal[]): RequestHandler {
  return (req, _res, next) => {
    const token = bearerToken(req.get('authorization'));
    const challenge = { 'WWW-Authenticate': `Bearer realm="loopship ${what}"` };
    if (token === null) return next(new ApiError(401, 'UNAUTHORIZED', `${what} needs an "Authorization: Bearer <token>" header`, { headers: challenge }));
    const p = findPrincipal(token, principals());
    if (!p) return next(new ApiError(401, 'UNAUTHORIZED', `the token is not valid for ${what}`, { headers: { ...challenge, 'WWW-Authenticate': challenge['WWW-Authenticate'] + ', error="invalid_token"' } }));
    (req as Request & { principal?: Principal }).principal = p;
    next();
  };
}

/** For pages a browser opens: a token of `principals()` as Bearer or as the Basic-auth password. */
export function requireBrowserToken(what: string, principals: () => readonly Principal[]): RequestHandler {
  return (req, _res, next) => {
    const header = req.get('authorization');
    const token = bearerToken(header) ?? basicPassword(header);
    const p = token === null ? null : findPrincipal(token, principals());
    if (!p) return next(new ApiError(401, 'UNAUTHORIZED', `${what} needs a viewer or publisher token (as the password, any user name)`, { headers: { 'WWW-Authenticate': `Basic realm="loopship ${what}", charset="UTF-8"` } }));
    (req as Request & { principal?: Principal }).principal = p;
    next();
  };
}
