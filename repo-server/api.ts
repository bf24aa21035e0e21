// The write side of the HTTP API: publishing packages and promoting channels (publisher
// tokens); the fleet routes (enrolment, reports) are fleet-api.ts's. Each handler
// validates, then hands over to an injected writer or store: the verification itself lives
// in format/ (RepositoryWriter).
import { Router, json } from 'express';
import * as z from 'zod';
import { imageName, imageVersion, channelName, type RepositoryWriter } from '../format/index.js';
import { ApiError, sendError } from './api-error.js';
import { validate, wrap, requireJson } from './handlers.js';
import { requireToken, principalOf } from './auth.js';
import { LimitedUpload } from './upload-limit.js';
import { fleetRouter } from './fleet-api.js';
import { rolloutRouter } from './rollout-api.js';
import { RolloutWatch, type RolloutWriter } from './rollouts.js';
import type { ReportStore } from './reports.js';
import type { HostCredentials } from './hosts.js';
import type { ServerConfig } from './config.js';
import type { ServerMetrics } from './metrics.js';

/** What the server needs from format/'s RepositoryWriter (injected, so tests can use a fake). */
export type PackageWriter = Pick<RepositoryWriter, 'addPackage' | 'promote'> & Partial<RolloutWriter>;

export interface ApiOptions {
  config: ServerConfig;
  writer?: PackageWriter;
  store?: ReportStore;
  /** per-host credentials; without them, enrolment and reports answer 503 */
  hosts?: HostCredentials;
  now?: () => Date;
  metrics?: Pick<ServerMetrics, 'observePublish'>;
  log: { info: (obj: object, msg: string) => void; warn: (obj: object, msg: string) => void };
}

const PromoteBody = z.strictObject({ name: imageName, version: imageVersion });


export function apiRouter(opts: ApiOptions): Router {
  const { config, writer, store, hosts, log } = opts;
  const limits = config.limits;
  const router = Router();
  const publisher = requireToken('publishing', () => config.publishers);
  const jsonBody = json({ limit: limits.maxJsonBytes, type: 'application/json', strict: true });

  const needWriter = (): PackageWriter => {
    if (!writer) throw new ApiError(503, 'NOT_CONFIGURED', 'this server holds no index key (index_keys in its config), so it cannot publish');
    return writer;
  };

  router.post(
    '/packages',
    publisher,
    wrap(async (req, res) => {
      const w = needWriter();
      const type = req.get('content-type');
      if (type && !req.is(['application/x-tar', 'application/octet-stream'])) {
        throw new ApiError(415, 'UNSUPPORTED_MEDIA_TYPE', 'expected a package tar (Content-Type: application/x-tar)');
      }
      const channel = req.query.channel === undefined ? undefined : validate(channelName, req.query.channel, 'channel (query parameter)');
      const declared = Number(req.get('content-length') ?? NaN);
      if (declared > limits.maxUploadBytes) {
        res.setHeader('Connection', 'close');
        throw new ApiError(413, 'PAYLOAD_TOO_LARGE', `upload of ${declared} bytes exceeds the server's limit of ${limits.maxUploadBytes} bytes`);
      }
      const body = new LimitedUpload(req, { maxBytes: limits.maxUploadBytes, idleTimeoutMs: limits.uploadIdleTimeoutMs, totalTimeoutMs: limits.uploadTimeoutMs });
      req.on('close', () => {
        if (!req.complete) body.fail(new ApiError(400, 'BAD_REQUEST', 'the client aborted the upload'));
      });
      req.on('error', () => body.fail(new ApiError(400, 'BAD_REQUEST', 'the upload connection failed')));
      const who = principalOf(req).name;
      const started = process.hrtime.bigint();
      const took = () => Number(process.hrtime.bigint() - started) / 1e9;
      try {
        const result = await w.addPackage(body, { where: 'upload', channel });
        opts.metrics?.observePublish(took(), true);
        log.info({ publisher: who, ...result, bytes: body.bytes }, result.unchanged ? 'package already published' : 'package published');
        res.status(result.unchanged ? 200 : 201).json({
          name: result.name,
          version: result.version,
          arch: result.arch,
          manifest_sha256: result.manifestSha256,
          index_version: result.indexVersion,
          new_chunks: result.newChunks,
          reused_chunks: result.reusedChunks,
          unchanged: result.unchanged,
          channel: channel ?? null,
          bytes: body.bytes,
        });
      } catch (err) {
        // our own cut-off (size, timeout, abort) explains the writer's failure better than its message
        opts.metrics?.observePublish(took(), false);
        const reason = body.failure ?? err;
        log.warn({ publisher: who, err: (reason as Error).message, bytes: body.bytes }, 'package rejected');
        body.destroy();
        // do not read the rest of a rejected upload: close the connection after answering
        if (!req.readableEnded) res.setHeader('Connection', 'close');
        throw reason;
      }
    }),
  );

  const promote = (from: 'body' | 'path') =>
    wrap(async (req, res) => {
      const w = needWriter();
      const channel = validate(channelName, req.params.channel, 'channel name');
      let target: z.infer<typeof PromoteBody>;
      if (from === 'body') {
        requireJson(req);
        target = validate(PromoteBody, req.body, 'promote request');
      } else {
        target = validate(PromoteBody, { name: req.params.name, version: req.params.version }, 'promote request');
      }
      const { indexVersion } = await w.promote(target.name, channel, target.version);
      log.info({ publisher: principalOf(req).name, channel, ...target, indexVersion }, 'channel promoted');
      res.json({ name: target.name, channel, version: target.version, index_version: indexVersion });
    });
  router.post('/channels/:channel/promote', publisher, jsonBody, promote('body'));
  router.post('/channels/:channel/promote/:name/:version', publisher, promote('path'));

  const rollouts = writer?.changeImage && writer.currentIndex ? (writer as PackageWriter & RolloutWriter) : undefined;
  const watch = rollouts && store ? new RolloutWatch(rollouts, () => store.list(), log) : undefined;
  router.use(fleetRouter({ config, store, hosts, log, onReport: watch && ((r) => void watch.observe(r)) }));
  router.use(rolloutRouter({ config, writer: rollouts, store, now: opts.now ?? (() => new Date()), log }));

  // a known API path with the wrong method
  router.all(['/packages', '/channels/:channel/promote', '/channels/:channel/promote/:name/:version'], (req, res) => {
    sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: 'POST' } }));
  });
  router.use((_req, res) => sendError(res, new ApiError(404, 'NOT_FOUND', 'no such API endpoint')));
  return router;
}
