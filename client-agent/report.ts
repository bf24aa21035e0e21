// The agent's fleet report: what it says about this host, and the credential it says it
// with. The site token (agent.yaml report.token) is used once, to enrol this host name
// (POST /api/v1/hosts/enrol); the server answers a token of this host's own, kept in
// STATE/trust/report-token (0600, created exclusively, never through a symlink), and every
// report goes with that token: no other host of the site can speak for this one.
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as z from 'zod';
import { ConfigError, FetchError, LoopshipError, printable } from '../format/index.js';
import { packageVersion } from '../format/version.js';
import { ioError, readOwnFileOrNull, writeFileAtomic } from './fsutil.js';
import type { AgentConfig } from './config.js';

/** What a POST answered: the status, and the JSON body when there was one. */
export interface HttpAnswer {
  status: number;
  body?: unknown;
}
/** Injectable (AgentDeps.httpPost); a bare status is enough where no body is read. */
export type HttpPost = (url: string, body: unknown, token?: string) => Promise<number | HttpAnswer>;

export type ReportConfig = NonNullable<AgentConfig['report']>;

/** One appliance as `Agent.status()` lists it (the fields a report needs). */
export interface ApplianceLine {
  name: string;
  current: string | null;
  running: boolean;
  health: 'healthy' | 'unhealthy' | 'starting' | 'stopped' | 'unknown';
  verified: boolean | null;
  last_error: string | null;
  failed_versions?: string[];
  rollout?: { id: string; to: string; taking: boolean; reason: string | null } | null;
  waiting?: { to: string; opens: string | null; reason: string } | null;
  held?: { to: string; reason: string } | null;
}

export const tokenFile = (trustDir: string): string => join(trustDir, 'report-token');

/** A bare server URL gets the server's report endpoint; any other URL is used as given. */
export function reportUrl(url: string): string {
  const u = new URL(url);
  // the server's URL, possibly behind a path prefix (a reverse proxy): its report endpoint
  if (!/\/reports\/?$/.test(u.pathname) && (u.pathname === '' || u.pathname.endsWith('/'))) u.pathname = `${u.pathname.replace(/\/+$/, '')}/api/v1/reports`;
  return u.toString();
}

/** The enrolment endpoint beside the report endpoint (…/reports -> …/hosts/enrol). */
export function enrolUrl(url: string): string {
  const u = new URL(reportUrl(url));
  if (!/\/reports\/?$/.test(u.pathname)) {
    throw new ConfigError(`cannot tell the enrolment URL from ${url}: give the server's URL, or one ending in /api/v1/reports`, { where: 'report.url' });
  }
  u.pathname = u.pathname.replace(/\/reports\/?$/, '/hosts/enrol');
  return u.toString();
}

export async function defaultPost(url: string, body: unknown, token?: string): Promise<HttpAnswer> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
    // as for repository files (format/fetcher.ts): a redirect would send the report (or the
    // enrolment) elsewhere and take that host's answer, its token too, for the server's
    redirect: 'manual',
  });
  if (res.status >= 300 && res.status < 400) {
    await res.body?.cancel().catch(() => {});
    throw new FetchError(`HTTP ${res.status} redirect to ${res.headers.get('location') ?? '?'} refused`, { where: url, status: res.status });
  }
  const text = await readSome(res, 64 * 1024).catch(() => '');
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined; // a proxy's HTML error page: the status says enough
  }
  return { status: res.status, body: json };
}

/** The answer's body, up to `max` bytes (a server's answer is small; a hostile one is not read to its end). */
async function readSome(res: Response, max: number): Promise<string> {
  if (!res.body) return '';
  const parts: Uint8Array[] = [];
  let n = 0;
  const reader = res.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      if ((n += value.length) > max) return ''; // too big to be ours: the status alone tells
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return Buffer.concat(parts).toString('utf8');
}

/** The report body the server's ReportSchema accepts. */
export function reportBody(o: { host: string; site?: string; now: Date; lastError: string | null; appliances: ApplianceLine[]; channelOf: (name: string) => string | undefined }) {
  return {
    host: o.host,
    site: o.site ?? null,
    agent_version: packageVersion(),
    time: o.now.toISOString(),
    appliances: o.appliances.map((a) => {
      const channel = o.channelOf(a.name);
      return {
        name: a.name,
        version: a.current,
        ...(channel ? { channel } : {}),
        running: a.running,
        health: !a.running && a.health !== 'unhealthy' ? 'stopped' : a.health,
        verified: a.verified,
        error: a.last_error ? a.last_error.slice(0, 2000) : null,
        // what the server's halt rule counts (repo-server/rollout-watch.ts)
        ...(a.failed_versions?.length ? { failed_versions: a.failed_versions.slice(-32) } : {}),
        ...(a.waiting ? { waiting: { to: a.waiting.to, opens: a.waiting.opens?.slice(0, 64) ?? null, reason: a.waiting.reason.slice(0, 1000) } } : {}),
        ...(a.held ? { held: { to: a.held.to, reason: a.held.reason.slice(0, 1000) } } : {}),
        ...(a.rollout ? { rollout: { id: a.rollout.id, to: a.rollout.to, taking: a.rollout.taking, reason: a.rollout.reason?.slice(0, 1000) ?? null } } : {}),
      };
    }),
    last_error: o.lastError ? o.lastError.slice(0, 4000) : null,
  };
}

export interface SendOptions {
  report: ReportConfig;
  host: string;
  /** where this host's token is kept (tokenFile(state.trustDir)) */
  tokenFile: string;
  post: HttpPost;
  log: (line: string) => void;
}

const answer = (a: number | HttpAnswer): HttpAnswer => (typeof a === 'number' ? { status: a } : a);
const ok = (a: HttpAnswer) => a.status >= 200 && a.status < 300;

/** "HTTP 403 HOST_MISMATCH: message" from the server's JSON error body, when it sent one. */
function describe(a: HttpAnswer): string {
  const e = a.body as { code?: unknown; message?: unknown } | undefined;
  // the server's words go into the log and state.json: printable, bounded (a man in the middle of an http:// URL writes them too)
  const detail = e && typeof e.message === 'string' ? ` ${printable(`${typeof e.code === 'string' ? e.code + ': ' : ''}${e.message}`, 500)}` : '';
  return `HTTP ${a.status}${detail}`;
}

/**
 * Sends one report with this host's token, enrolling first when there is none. When the
 * server no longer knows the token (401: revoked by its operator, or the server's state
 * lost) the host enrols again, once; the server refuses that (409) while the name is
 * enrolled with another token.
 */
export async function sendReport(body: unknown, o: SendOptions): Promise<void> {
  const url = reportUrl(o.report.url);
  let token = await readToken(o.tokenFile);
  const enrolledNow = token === null;
  token ??= await enrol(o);
  let a = answer(await o.post(url, body, token));
  if (a.status === 401 && !enrolledNow) {
    o.log(`report: the server refused this host's token (${describe(a)}); enrolling again`);
    // the old token stays until a new one is stored: a failed enrolment loses nothing
    a = answer(await o.post(url, body, await enrol(o)));
  }
  if (!ok(a)) throw new FetchError(`report answered ${describe(a)}`, { where: url, status: a.status });
}

const EnrolAnswer = z.object({ token: z.string().regex(/^[\x21-\x7e]{16,512}$/) });

async function enrol(o: SendOptions): Promise<string> {
  const url = enrolUrl(o.report.url);
  if (!o.report.token) throw new ConfigError('this host has no report token yet: report.token (the site token) is needed once, to enrol it', { where: 'report.token' });
  const a = answer(await o.post(url, { host: o.host, ...(o.report.site ? { site: o.report.site } : {}) }, o.report.token));
  if (a.status === 409) {
    throw new LoopshipError('CONFLICT', `host ${o.host} is already enrolled with another token (${describe(a)}); restore ${o.tokenFile}, or have the server's operator revoke it (loopship hosts revoke SITE ${o.host}, then loopship hosts allow SITE ${o.host})`, { where: url });
  }
  if (!ok(a)) throw new FetchError(`enrolment answered ${describe(a)}`, { where: url, status: a.status });
  const r = EnrolAnswer.safeParse(a.body);
  if (!r.success) throw new FetchError(`enrolment answered HTTP ${a.status} without a usable token`, { where: url, status: a.status });
  await writeToken(o.tokenFile, r.data.token);
  o.log(`report: enrolled host ${o.host}; its token is in ${o.tokenFile}`);
  return r.data.token;
}

/** The stored token, or null when there is none. A symlink or other non-file is an error. */
export async function readToken(file: string): Promise<string | null> {
  let text: string;
  try {
    // fsutil's safe read: a planted symlink, hard link or FIFO is refused at once, not followed or waited on
    const bytes = await readOwnFileOrNull(file);
    if (bytes === null) return null;
    text = bytes.toString('utf8');
  } catch (err) {
    if (err instanceof LoopshipError) throw err;
    throw ioError(err, file, "cannot read this host's report token");
  }
  const token = text.trim();
  if (!/^[\x21-\x7e]{16,512}$/.test(token)) throw new LoopshipError('IO', "this host's report token is damaged (remove it to enrol again, after the server's operator revoked and allowed the host)", { where: file });
  return token;
}

/** Stores the token as `file` (0600), atomically, never through a planted link (fsutil's writer). */
async function writeToken(file: string, token: string): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, token + '\n', { mode: 0o600 });
}

