// The dashboard's buttons: POST /actions/rollouts/:image/:channel/:op from a plain form. The
// browser sends Basic credentials to any page that posts here, so each form carries a token
// only a page rendered for that principal holds (an HMAC keyed by its token's digest, the
// same in every worker), and a cross-site request is refused by its Fetch metadata too.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { Router, urlencoded, type Request } from 'express';
import { imageName, channelName, asOneLine } from '../format/index.js';
import { ApiError } from './api-error.js';
import { validate, wrap } from './handlers.js';
import { requireBrowserToken, principalOf } from './auth.js';
import { applyRollout, ROLLOUT_OPS, RolloutRequestSchema, type RolloutWriter } from './rollouts.js';
import { hostName, type ReportStore } from './reports.js';
import { applyHold } from './holds.js';
import type { Principal, ServerConfig } from './config.js';

export function csrfToken(p: Principal): string {
  return createHmac('sha256', p.digest).update(`loopship dashboard actions\0${p.kind}\0${p.name}`).digest('base64url');
}

/** Who may press the buttons: operators and publishers. */
export const mayAct = (p: Principal | undefined): p is Principal => p?.kind === 'operator' || p?.kind === 'publisher';

function sameOrigin(req: Request): boolean {
  const site = req.get('sec-fetch-site');
  if (site && site !== 'same-origin' && site !== 'none') return false;
  const origin = req.get('origin');
  if (origin && origin !== 'null') {
    try {
      return new URL(origin).host === req.get('host');
    } catch {
      return false;
    }
  }
  return origin !== 'null';
}

/** The form came from a dashboard page rendered for this principal; returns who it is. */
function checkForm(req: Request): Principal {
  const who = principalOf(req);
  if (!sameOrigin(req)) throw new ApiError(403, 'CROSS_SITE', 'a dashboard action must come from the dashboard itself (cross-site request refused)');
  const sent = typeof req.body?.csrf === 'string' ? Buffer.from(req.body.csrf) : Buffer.alloc(0);
  const want = Buffer.from(csrfToken(who));
  if (sent.length !== want.length || !timingSafeEqual(sent, want)) throw new ApiError(403, 'CSRF', 'the form\'s token is missing or not this user\'s: reload the dashboard and try again');
  return who;
}

export interface DashboardActionOptions {
  config: ServerConfig;
  writer?: RolloutWriter;
  store?: ReportStore;
  log: { info: (obj: object, msg: string) => void; warn: (obj: object, msg: string) => void };
}

export function dashboardActions(opts: DashboardActionOptions): Router {
  const { config, writer, store, log } = opts;
  const router = Router();
  const actor = requireBrowserToken('dashboard actions', () => [...config.operators, ...config.publishers]);
  router.post(
    '/actions/rollouts/:name/:channel/:op',
    actor,
    urlencoded({ extended: false, limit: 8192, parameterLimit: 10 }),
    wrap(async (req, res) => {
      const who = checkForm(req);
      if (!writer) throw new ApiError(503, 'NOT_CONFIGURED', 'this server holds no index key, so it cannot sign rollouts');
      const name = validate(imageName, req.params.name, 'image name');
      const channel = validate(channelName, req.params.channel, 'channel name');
      const op = String(req.params.op);
      if (!(ROLLOUT_OPS as readonly string[]).includes(op) || op === 'start') throw new ApiError(404, 'NOT_FOUND', `no dashboard action ${op}`);
      // a browser form's text, made one line as the index needs it (a pasted line break is no reason to refuse)
      const reason = typeof req.body.reason === 'string' && req.body.reason.trim() ? asOneLine(req.body.reason.trim(), 1000) : undefined;
      const body = validate(RolloutRequestSchema, op === 'pause' || op === 'abort' ? { op, reason } : { op }, `rollout ${op}`);
      const r = await applyRollout(writer, name, channel, body, `${who.kind} ${who.name} (dashboard)`, store && (() => store.list()));
      log.info({ who: who.name, kind: who.kind, via: 'dashboard', image: name, channel, op, rollout: r.rollout.id, state: r.rollout.state, indexVersion: r.index_version }, `rollout ${op}`);
      res.redirect(303, '/#rollouts');
    }),
  );
  router.post(
    '/actions/holds/:name/:host/:op',
    actor,
    urlencoded({ extended: false, limit: 8192, parameterLimit: 10 }),
    wrap(async (req, res) => {
      const who = checkForm(req);
      if (!writer) throw new ApiError(503, 'NOT_CONFIGURED', 'this server holds no index key, so it cannot sign holds');
      const op = String(req.params.op);
      if (op !== 'hold' && op !== 'release') throw new ApiError(404, 'NOT_FOUND', `no dashboard action ${op}`);
      const name = validate(imageName, req.params.name, 'image name');
      const host = validate(hostName, req.params.host, 'host name');
      const reason = typeof req.body.reason === 'string' && req.body.reason.trim() ? req.body.reason.trim().slice(0, 500) : undefined;
      const r = await applyHold(writer, name, host, op === 'hold' ? { reason } : null, `${who.kind} ${who.name} (dashboard)`, store?.list() ?? []);
      log.info({ who: who.name, kind: who.kind, via: 'dashboard', image: name, host, version: r.hold?.version ?? null, indexVersion: r.index_version }, op === 'hold' ? 'host held' : 'host released');
      res.redirect(303, '/#fleet');
    }),
  );
  return router;
}
