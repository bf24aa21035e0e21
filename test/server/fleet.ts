// Fleet-report helpers for the server tests: enrol a host with its site token (the server
// answers the host's own token), then report with that token.
import { rawRequest, type RawResponse } from './helpers.js';

export const json = (r: RawResponse): Record<string, unknown> => JSON.parse(r.body.toString());

export function enrolRequest(url: string, siteToken: string | undefined, body: unknown): Promise<RawResponse> {
  return rawRequest(url, {
    method: 'POST',
    path: '/api/v1/hosts/enrol',
    headers: { 'Content-Type': 'application/json', ...(siteToken ? { Authorization: `Bearer ${siteToken}` } : {}) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/** Enrols `host` and returns its token (the test fails loudly when the server refuses). */
export async function enrolHost(url: string, siteToken: string, host: string): Promise<string> {
  const r = await enrolRequest(url, siteToken, { host });
  if (r.status !== 201) throw new Error(`enrolment of ${host} answered ${r.status}: ${r.body.toString()}`);
  return json(r).token as string;
}

export function postReport(url: string, body: unknown, token?: string, type = 'application/json'): Promise<RawResponse> {
  return rawRequest(url, {
    method: 'POST',
    path: '/api/v1/reports',
    headers: { 'Content-Type': type, ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}
