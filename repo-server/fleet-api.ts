// The fleet half of the API: hosts enrol with their site's token and get a token of their
// own; reports go with that host token only, and the server takes site and host from it,
// so no host of a site can overwrite another's report. Viewers and publishers read the fleet.
//   POST /hosts/enrol   {host[, site]}   site token     -> 201 {site, host, token, enrolled_at}
//   POST /reports       ReportSchema     host token     -> 201 {site, host, received_at}
//   GET  /reports                        viewer/publisher token
import { Router, json, type Response, type RequestHandler } from 'express';
import * as z from 'zod';
import { ApiError, sendError } from './api-error.js';
import { validate, wrap, requireJson } from './handlers.js';
import { bearerToken, findPrincipal, principalOf, requireToken } from './auth.js';
import { isHostToken, type HostCredentials, type HostIdentity } from './hosts.js';
import { ReportSchema, RateLimiter, hostName, siteName, type ReportStore, type FleetReport } from './reports.js';
import type { ServerConfig } from './config.js';

export interface FleetApiOptions {
  config: ServerConfig;
  store?: ReportStore;
  hosts?: HostCredentials;
  log: { info: (obj: object, msg: string) => void; warn: (obj: object, msg: string) => void };
  /** each stored report, for the rollouts' halt rule (rollouts.ts) */
  onReport?: (report: FleetReport) => void;
}

const EnrolBody = z.strictObject({ host: hostName, site: siteName.nullable().optional() });


const hostOf = (res: Response): HostIdentity => res.locals.hostIdentity as HostIdentity;

/** Middleware: a valid host token, whose identity is put in res.locals.hostIdentity. */
function requireHostToken(hosts: HostCredentials | undefined, config: ServerConfig): RequestHandler {
  const challenge = 'Bearer realm="loopship fleet reports"';
  return (req, res, next) => {
    if (!hosts) return next(new ApiError(503, 'NOT_CONFIGURED', 'this server keeps no fleet reports (no state directory)'));
    const token = bearerToken(req.get('authorization'));
    if (token === null) {
      return next(new ApiError(401, 'UNAUTHORIZED', 'fleet reports need an "Authorization: Bearer <host token>" header (the token POST /api/v1/hosts/enrol answered)', { headers: { 'WWW-Authenticate': challenge } }));
    }
    if (!isHostToken(token)) {
      // a site token is valid, but only for enrolling: say so rather than "invalid token"
      if (findPrincipal(token, config.sites)) {
        return next(new ApiError(403, 'HOST_TOKEN_REQUIRED', 'a site token cannot send reports: it enrols a host once (POST /api/v1/hosts/enrol), and reports go with the host token that answers'));
      }
      return next(new ApiError(401, 'UNAUTHORIZED', 'the token is not valid for fleet reports', { headers: { 'WWW-Authenticate': `${challenge}, error="invalid_token"` } }));
    }
    hosts.authenticate(token).then((id) => {
      if (!id) {
        return next(new ApiError(401, 'UNAUTHORIZED', 'this host token is not enrolled here (revoked, or issued by another server): enrol again with the site token', { headers: { 'WWW-Authenticate': `${challenge}, error="invalid_token"` } }));
      }
      // a site removed from server.yaml takes its hosts with it
      if (!config.sites.some((s) => s.name === id.site)) {
        return next(new ApiError(401, 'UNAUTHORIZED', `site ${id.site} is not configured on this server (server.yaml sites): its hosts' tokens are refused`, { headers: { 'WWW-Authenticate': `${challenge}, error="invalid_token"` } }));
      }
      res.locals.hostIdentity = id;
      next();
    }, next);
  };
}

export function fleetRouter(opts: FleetApiOptions): Router {
  const { config, store, hosts, log } = opts;
  const limits = config.limits;
  const router = Router();
  const site = requireToken('host enrolment', () => config.sites);
  const host = requireHostToken(hosts, config);
  const reader = requireToken('the fleet data', () => [...config.viewers, ...config.operators, ...config.publishers]);
  const jsonBody = json({ limit: limits.maxJsonBytes, type: 'application/json', strict: true });
  const rate = new RateLimiter(limits.reportsPerMinutePerSite);
  const takeRate = (who: string) => {
    const wait = rate.take(who);
    if (wait) throw new ApiError(429, 'RATE_LIMITED', `site ${who} sent more than ${limits.reportsPerMinutePerSite} requests this minute`, { headers: { 'Retry-After': String(wait) } });
  };

  router.post(
    '/hosts/enrol',
    site,
    jsonBody,
    wrap(async (req, res) => {
      if (!hosts) throw new ApiError(503, 'NOT_CONFIGURED', 'this server keeps no fleet reports (no state directory)');
      requireJson(req);
      const who = principalOf(req).name;
      takeRate(who);
      const body = validate(EnrolBody, req.body, 'enrolment');
      if (body.site != null && body.site !== who) throw new ApiError(403, 'SITE_MISMATCH', `this token belongs to site ${who}, not to site ${body.site}`);
      const e = await hosts.enrol(who, body.host);
      log.info({ site: who, host: e.host }, 'host enrolled');
      res.status(201).json(e);
    }),
  );

  router.post(
    '/reports',
    host,
    jsonBody,
    wrap(async (req, res) => {
      if (!store) throw new ApiError(503, 'NOT_CONFIGURED', 'this server keeps no fleet reports');
      requireJson(req);
      const id = hostOf(res);
      takeRate(id.site);
      const input = validate(ReportSchema, req.body, 'report');
      if (input.site != null && input.site !== id.site) {
        throw new ApiError(403, 'SITE_MISMATCH', `this host token belongs to site ${id.site}, not to site ${input.site}`);
      }
      if (input.host.toLowerCase() !== id.host.toLowerCase()) {
        throw new ApiError(403, 'HOST_MISMATCH', `this host token belongs to host ${id.host} of site ${id.site}; it cannot report for host ${input.host}`);
      }
      const report = { ...input, site: id.site, host: id.host };
      const stored = await store.put(report);
      opts.onReport?.(report);
      res.status(201).json({ host: report.host, site: report.site, received_at: stored.received_at });
    }),
  );

  router.get(
    '/reports',
    reader,
    wrap(async (_req, res) => {
      res.json({ reports: store?.list() ?? [] });
    }),
  );

  router.all('/hosts/enrol', (req, res) => {
    sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: 'POST' } }));
  });
  router.all('/reports', (req, res) => {
    sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: 'GET, POST' } }));
  });
  return router;
}
