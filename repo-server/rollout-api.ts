// The rollout routes: operators (and publishers) move rollouts, anyone who may read the fleet
// sees them. The moves themselves are rollouts.ts's (on format/'s writer).
import { Router, json } from 'express';
import { imageName, channelName } from '../format/index.js';
import { ApiError, sendError } from './api-error.js';
import { validate, wrap, requireJson } from './handlers.js';
import { requireToken, principalOf } from './auth.js';
import { applyRollout, viewRollouts, RolloutRequestSchema, ROLLOUT_OPS, type RolloutWriter } from './rollouts.js';
import { hostName, type ReportStore } from './reports.js';
import { applyHold, HoldRequestSchema } from './holds.js';
import type { ServerConfig } from './config.js';

export interface RolloutApiOptions {
  config: ServerConfig;
  writer?: RolloutWriter;
  store?: ReportStore;
  now: () => Date;
  log: { info: (obj: object, msg: string) => void; warn: (obj: object, msg: string) => void };
}

export function rolloutRouter(opts: RolloutApiOptions): Router {
  const { config, writer, store, now, log } = opts;
  const router = Router();
  const operator = requireToken('rollouts', () => [...config.operators, ...config.publishers]);
  const reader = requireToken('the rollouts', () => [...config.viewers, ...config.operators, ...config.publishers]);
  const jsonBody = json({ limit: config.limits.maxJsonBytes, type: 'application/json', strict: true });
  const needWriter = (): RolloutWriter => {
    if (!writer) throw new ApiError(503, 'NOT_CONFIGURED', 'this server holds no index key (index_keys in its config), so it cannot sign rollouts');
    return writer;
  };

  router.get(
    '/rollouts',
    reader,
    wrap(async (_req, res) => {
      res.json({ rollouts: viewRollouts(await needWriter().currentIndex(), now(), store?.list() ?? []) });
    }),
  );

  router.post(
    '/rollouts/:name/:channel/:op',
    operator,
    jsonBody,
    wrap(async (req, res) => {
      const w = needWriter();
      const name = validate(imageName, req.params.name, 'image name');
      const channel = validate(channelName, req.params.channel, 'channel name');
      const op = String(req.params.op);
      if (!(ROLLOUT_OPS as readonly string[]).includes(op)) throw new ApiError(404, 'NOT_FOUND', `no rollout action ${op} (expected ${ROLLOUT_OPS.join(', ')})`);
      if (req.get('content-length') && req.get('content-length') !== '0') requireJson(req);
      const body = validate(RolloutRequestSchema, { ...(req.body && typeof req.body === 'object' ? req.body : {}), op }, `rollout ${op} request`);
      const who = principalOf(req);
      const r = await applyRollout(w, name, channel, body, `${who.kind} ${who.name}`, store && (() => store.list()));
      log.info({ who: who.name, kind: who.kind, image: name, channel, op, rollout: r.rollout.id, to: r.rollout.to, state: r.rollout.state, indexVersion: r.index_version }, `rollout ${op}`);
      res.status(op === 'start' ? 201 : 200).json(r);
    }),
  );

  const hold = (release: boolean) =>
    wrap(async (req, res) => {
      const w = needWriter();
      const name = validate(imageName, req.params.name, 'image name');
      const host = validate(hostName, req.params.host, 'host name');
      if (!release && req.get('content-length') && req.get('content-length') !== '0') requireJson(req);
      const body = release ? null : validate(HoldRequestSchema, req.body && typeof req.body === 'object' ? req.body : {}, 'hold request');
      const who = principalOf(req);
      const r = await applyHold(w, name, host, body, `${who.kind} ${who.name}`, store?.list() ?? []);
      log.info({ who: who.name, kind: who.kind, image: name, host, version: r.hold?.version ?? null, indexVersion: r.index_version }, release ? 'host released' : 'host held');
      res.json(r);
    });
  router.put('/holds/:name/:host', operator, jsonBody, hold(false));
  router.delete('/holds/:name/:host', operator, hold(true));
  router.all(['/holds/:name/:host'], (req, res) => sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: 'PUT, DELETE' } })));

  router.all(['/rollouts'], (req, res) => sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: 'GET' } })));
  router.all(['/rollouts/:name/:channel/:op'], (req, res) => sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: 'POST' } })));
  return router;
}
