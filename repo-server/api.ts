// The write side of the HTTP API: publishing packages and promoting channels (publisher
// tokens), and fleet reports (site tokens). Each handler validates, then hands over to an
// injected writer or store: the verification itself lives in format/ (RepositoryWriter).
import { Router, json, type Request, type Response, type NextFunction, type RequestHandler } from 'express';
import * as z from 'zod';
import { imageName, imageVersion, channelName, describeIssues, type RepositoryWriter } from '../format/index.js';
import { ApiError, sendError } from './api-error.js';
import { requireToken, principalOf } from './auth.js';
import { LimitedUpload } from './upload-limit.js';
import { ReportSchema, RateLimiter, type ReportStore } from './reports.js';
import type { ServerConfig } from './config.js';

/** What the server needs from format/'s RepositoryWriter (injected, so tests can use a fake). */
export type PackageWriter = Pick<RepositoryWriter, 'addPackage' | 'promote'>;

export interface ApiOptions {
  config: ServerConfig;
  writer?: PackageWriter;
  store?: ReportStore;
  log: { info: (obj: object, msg: string) => void; warn: (obj: object, msg: string) => void };
}

const PromoteBody = z.strictObject({ name: imageName, version: imageVersion });

function validate<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new ApiError(400, 'BAD_REQUEST', `invalid ${what}: ${describeIssues(r.error.issues)}`);
  return r.data;
}

const wrap =
  (fn: (req: Request, res: Response) => Promise<void>): RequestHandler =>
  (req, res, next: NextFunction) => {
    fn(req, res).catch(next);
  };

function requireJson(req: Request): void {
  if (!req.is('application/json')) throw new ApiError(415, 'UNSUPPORTED_MEDIA_TYPE', 'expected a JSON body (Content-Type: application/json)');
}

export function apiRouter(opts: ApiOptions): Router {
  const { config, writer, store, log } = opts;
  const limits = config.limits;
  const router = Router();
  const publisher = requireToken('publishing', () => config.publishers);
  const site = requireToken('fleet reports', () => config.sites);
  const jsonBody = json({ limit: limits.maxJsonBytes, type: 'application/json', strict: true });
  const rate = new RateLimiter(limits.reportsPerMinutePerSite);

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
      try {
        const result = await w.addPackage(body, { where: 'upload', channel });
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

  router.post(
    '/reports',
    site,
    jsonBody,
    wrap(async (req, res) => {
      if (!store) throw new ApiError(503, 'NOT_CONFIGURED', 'this server keeps no fleet reports');
      requireJson(req);
      const who = principalOf(req).name;
      const wait = rate.take(who);
      if (wait) throw new ApiError(429, 'RATE_LIMITED', `site ${who} sent more than ${limits.reportsPerMinutePerSite} reports this minute`, { headers: { 'Retry-After': String(wait) } });
      const input = validate(ReportSchema, req.body, 'report');
      if (input.site != null && input.site !== who) throw new ApiError(403, 'FORBIDDEN', `this token belongs to site ${who}, not to site ${input.site}`);
      const report = { ...input, site: who };
      const stored = await store.put(report);
      res.status(201).json({ host: report.host, site: report.site, received_at: stored.received_at });
    }),
  );

  // the packaging team may read the fleet as JSON (the dashboard shows the same)
  router.get(
    '/reports',
    publisher,
    wrap(async (_req, res) => {
      res.json({ reports: store?.list() ?? [] });
    }),
  );

  // a known API path with the wrong method
  router.all(['/packages', '/reports', '/channels/:channel/promote', '/channels/:channel/promote/:name/:version'], (req, res) => {
    const allow = req.path === '/reports' ? 'GET, POST' : 'POST';
    sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: allow } }));
  });
  router.use((_req, res) => sendError(res, new ApiError(404, 'NOT_FOUND', 'no such API endpoint')));
  return router;
}
