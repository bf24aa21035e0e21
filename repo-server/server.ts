// Starting and stopping the HTTP server around createApp: timeouts suited to big uploads
// and many downloads, a bound address, and a graceful close (stop accepting, let running
// requests finish for a while, then cut the rest).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ServerMetrics } from './metrics.js';
import pino, { type Logger } from 'pino';
import { createRequestListener, type AppOptions } from './app.js';
import { loadServerConfig, DEFAULT_STATE_DIR, type ServerConfig } from './config.js';
import { FileReportStore, type ReportStore } from './reports.js';
import { FileHostRegistry, type HostCredentials } from './hosts.js';
import type { PackageWriter } from './api.js';
import { loadSendfile } from './sendfile.js';

export interface StartOptions {
  repoDir: string;
  port?: number;
  host?: string;
  /** a parsed config; otherwise read from configPath (default /etc/loopship/server.yaml) */
  config?: ServerConfig;
  configPath?: string;
  /** where fleet reports live (default /var/lib/loopship-server); null: keep none */
  stateDir?: string | null;
  writer?: PackageWriter;
  /** builds the writer from the config (index keys) when none is given */
  createWriter?: (repoDir: string, config: ServerConfig) => Promise<PackageWriter | undefined>;
  store?: ReportStore;
  /** per-host credentials; default: STATE_DIR/hosts (none when stateDir is null) */
  hosts?: HostCredentials;
  /** re-read the report store from disk this often (several processes share it) */
  storeSyncMs?: number;
  log?: Logger;
  now?: () => Date;
  static?: AppOptions['static'];
}

export interface RunningServer {
  url: string;
  port: number;
  server: http.Server;
  /** stops accepting; waits up to graceMs for running requests, then closes what is left */
  close(graceMs?: number): Promise<void>;
}

export async function startServer(opts: StartOptions): Promise<RunningServer> {
  const log = opts.log ?? pino({ level: 'silent' });
  const config = opts.config ?? (await loadServerConfig(opts.configPath));
  const stateDir = opts.stateDir === null ? null : (opts.stateDir ?? DEFAULT_STATE_DIR);
  const { maxHosts, maxHostsPerSite } = config.limits;
  const store = opts.store ?? (stateDir === null ? undefined : await FileReportStore.open(stateDir, { maxHosts, maxHostsPerSite, now: opts.now, log }));
  const hosts = opts.hosts ?? (stateDir === null ? undefined : await FileHostRegistry.open(stateDir, { maxHosts, maxHostsPerSite, now: opts.now }));
  const writer = opts.writer ?? (await opts.createWriter?.(opts.repoDir, config));
  const unwatch = opts.storeSyncMs && store instanceof FileReportStore ? store.watch(opts.storeSyncMs) : undefined;
  const metrics = new ServerMetrics({ repoDir: opts.repoDir, store, now: opts.now, staleMinutes: config.dashboard.staleMinutes });
  const server = http.createServer(createRequestListener({ repoDir: opts.repoDir, config, writer, store, hosts, log, now: opts.now, static: opts.static, metrics }));
  // uploads are bounded by our own idle/total timeouts, not by Node's whole-request timer
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;
  server.keepAliveTimeout = 10_000;
  server.setTimeout(120_000); // a socket silent for 2 min is gone
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  // which way file bodies leave (the sendfile addon is optional): said once, at start
  const bodies = opts.static?.sendfile === null ? 'JS copy (configured)' : opts.static?.sendfile ? 'sendfile (given)' : loadSendfile().why;
  log.info({ url, repoDir: opts.repoDir, publishing: Boolean(writer), reports: Boolean(store), bodies }, `serving ${opts.repoDir} at ${url}; file bodies: ${bodies}`);

  let closing: Promise<void> | undefined;
  const close = (graceMs = 10_000) =>
    (closing ??= new Promise<void>((resolve) => {
      const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      timer.unref();
      unwatch?.();
      server.close(() => {
        clearTimeout(timer);
        resolve();
      });
      server.closeIdleConnections();
    }));
  return { url, port, server, close };
}
