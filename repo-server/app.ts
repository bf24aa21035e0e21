// The whole HTTP surface in one readable place:
//   GET  /                                  dashboard (HTML)             (viewer/publisher token, unless dashboard.public)
//   POST /api/v1/packages                   publish a package tar        (publisher token)
//   POST /api/v1/channels/:ch/promote       move a channel to a version  (publisher token)
//   POST /api/v1/hosts/enrol                a host's own token, once     (site token)
//   POST /api/v1/reports                    a host's fleet report        (host token)
//   GET  /api/v1/reports                    the fleet as JSON            (viewer/publisher token)
//   GET  /api/v1/rollouts                   rollouts with the fleet's tally (viewer/operator/publisher token)
//   POST /api/v1/rollouts/:img/:ch/:op      start|pause|resume|abort|finish (operator/publisher token)
//   POST /actions/rollouts/:img/:ch/:op     dashboard buttons (operator/publisher, Basic auth + CSRF token)
//   GET  /metrics                           Prometheus text format       (viewer/operator/publisher token, unless metrics_public)
//   GET|HEAD /<repository path>             the static repository tree (format/paths.ts)
import type { IncomingMessage, ServerResponse, RequestListener } from 'node:http';
import express, { type Express } from 'express';
import pino, { type Logger } from 'pino';
import { ApiError, errorHandler, sendError } from './api-error.js';
import { apiRouter, type PackageWriter } from './api.js';
import { requireBrowserToken, requireToken } from './auth.js';
import type { ServerMetrics } from './metrics.js';
import { createRepositoryHandler, type RepositoryHandler, type StaticOptions } from './static.js';
import { RepositoryViewer } from './repo-view.js';
import { renderDashboard } from './dashboard.js';
import { dashboardActions, csrfToken, mayAct } from './dashboard-actions.js';
import { viewRollouts, type RolloutWriter } from './rollouts.js';
import { readServedIndex } from './repo-view.js';
import { siteName, holdFor } from '../format/index.js';
import type { Principal } from './config.js';
import type { ReportStore } from './reports.js';
import type { HostCredentials } from './hosts.js';
import type { ServerConfig } from './config.js';

export interface AppOptions {
  repoDir: string;
  config: ServerConfig;
  /** publishes and promotes; without one, those routes answer 503 */
  writer?: PackageWriter;
  /** fleet reports; without one, reports answer 503 and the dashboard shows no fleet */
  store?: ReportStore;
  /** per-host credentials (enrolment); without them, enrolment and reports answer 503 */
  hosts?: HostCredentials;
  now?: () => Date;
  log?: Logger;
  static?: StaticOptions;
  /** GET /metrics and the request counters; without, /metrics is 404 */
  metrics?: ServerMetrics;
}

/** One log line per request, written when the response is done (5xx always, the rest at info). */
export function logRequest(log: Logger, req: IncomingMessage, res: ServerResponse, metrics?: ServerMetrics): void {
  const url = req.url; // express rewrites req.url inside mounted routers
  if (metrics) res.on('close', () => metrics.observeRequest(url, req.method, res.statusCode, Number(res.getHeader('content-length') ?? 0) || 0));
  // below info nothing per request: failures are logged where they happen, with details
  if (!log.isLevelEnabled('info')) return;
  const start = process.hrtime.bigint();
  res.on('close', () => {
    const ms = Math.round(Number(process.hrtime.bigint() - start) / 1e5) / 10;
    const line = {
      method: req.method,
      url,
      status: res.statusCode,
      bytes: Number(res.getHeader('content-length') ?? 0) || undefined,
      ms,
      ip: req.socket.remoteAddress,
      aborted: !res.writableFinished || undefined,
    };
    const msg = `${req.method} ${url} ${res.statusCode} ${ms}ms`;
    if (res.statusCode >= 500) log.error(line, msg);
    else log.info(line, msg);
  });
}

export function createApp(opts: AppOptions & { repository?: RepositoryHandler; logRequests?: boolean }): Express {
  const log = opts.log ?? pino({ level: 'silent' });
  const repository = opts.repository ?? createRepositoryHandler(opts.repoDir, { ...opts.static, onError: (err, url) => log.error({ err, url }, 'cannot serve a repository file') });
  const now = opts.now ?? (() => new Date());
  const viewer = new RepositoryViewer(opts.repoDir);
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag'); // repository files get their own strong ETags; API answers are not cacheable
  app.set('query parser', 'simple');

  if (opts.logRequests !== false)
    app.use((req, res, next) => {
      logRequest(log, req, res, opts.metrics);
      next();
    });
  // the static tree first: it is nearly all of the traffic
  app.use((req, res, next) => {
    if (!repository(req, res)) next();
  });

  // the page shows host names and their errors: private unless the config opens it
  const dashboardAccess: express.RequestHandler = opts.config.dashboard.public
    ? (_req, _res, next) => next()
    : requireBrowserToken('dashboard', () => [...opts.config.viewers, ...opts.config.operators, ...opts.config.publishers]);
  app.get('/', dashboardAccess, async (req, res, next) => {
    try {
      const view = await viewer.view();
      const reports = opts.store?.list() ?? [];
      const index = await readServedIndex(opts.repoDir);
      const who = (req as express.Request & { principal?: Principal }).principal;
      const site = typeof req.query.site === 'string' && siteName.safeParse(req.query.site).success ? req.query.site : null;
      const page = renderDashboard(view, reports, {
        title: opts.config.dashboard.title, now: now(), staleMinutes: opts.config.dashboard.staleMinutes, site,
        rollouts: index ? viewRollouts(index, now(), reports) : [],
        actions: mayAct(who) && opts.writer ? { csrf: csrfToken(who) } : null,
        holdOf: (image, host) => holdFor(index?.images[image], host),
      });
      res.setHeader('Content-Type', 'text/html; charset=utf-8');
      res.setHeader('Cache-Control', 'no-store');
      res.setHeader('Content-Security-Policy', "default-src 'none'; style-src 'unsafe-inline'");
      res.setHeader('X-Content-Type-Options', 'nosniff');
      res.send(page);
    } catch (err) {
      next(err);
    }
  });

  if (opts.metrics) {
    const metrics = opts.metrics;
    const metricsAccess: express.RequestHandler = opts.config.metricsPublic
      ? (_req, _res, next) => next()
      : requireToken('metrics', () => [...opts.config.viewers, ...opts.config.operators, ...opts.config.publishers]);
    app.get('/metrics', metricsAccess, async (_req, res, next) => {
      try {
        const text = await metrics.text();
        res.setHeader('Content-Type', metrics.registry.contentType);
        res.setHeader('Cache-Control', 'no-store');
        res.send(text);
      } catch (err) {
        next(err);
      }
    });
  }

  app.use(dashboardActions({ config: opts.config, writer: opts.writer?.changeImage && opts.writer.currentIndex ? (opts.writer as RolloutWriter) : undefined, store: opts.store, log }));

  app.use('/api/v1', apiRouter({ config: opts.config, writer: opts.writer, store: opts.store, hosts: opts.hosts, now, log, metrics: opts.metrics }));

  // anything else: only GET and HEAD exist outside the API
  app.use((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return sendError(res, new ApiError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`, { headers: { Allow: 'GET, HEAD' } }));
    }
    sendError(res, new ApiError(404, 'NOT_FOUND', 'no such file in this repository'));
  });
  app.use(errorHandler(log));
  return app;
}

/**
 * The server's request listener: repository files are answered before express is
 * entered (the hot path of every download), everything else goes through the app.
 */
export function createRequestListener(opts: AppOptions): RequestListener {
  const log = opts.log ?? pino({ level: 'silent' });
  const repository = createRepositoryHandler(opts.repoDir, { ...opts.static, onError: (err, url) => log.error({ err, url }, 'cannot serve a repository file') });
  const app = createApp({ ...opts, repository, logRequests: false });
  return (req, res) => {
    logRequest(log, req, res, opts.metrics);
    if (!repository(req, res)) app(req, res);
  };
}
