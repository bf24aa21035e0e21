// `loopship serve`, `loopship publish`, `loopship promote`: the repository server and
// its clients. Publishing works against a server (--server, --token) or straight on a
// repository directory (--repo, --keys).
import cluster from 'node:cluster';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { Option, InvalidArgumentError, type Command } from 'commander';
import cliProgress from 'cli-progress';
import pino, { type Logger } from 'pino';
import { RepositoryWriter, UsageError, type PublishResult } from '../format/index.js';
import { Keystore, readPassphrase } from '../keys/index.js';
import { startServer } from './server.js';
import { loadServerConfig, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR } from './config.js';
import { createRepositoryWriter } from './writer.js';
import { uploadPackage, promoteRemote, type PublishResponse } from './client.js';
import { registerHostsCommands } from './hosts-cli.js';
import { registerRolloutCommands } from './rollout-cli.js';
import { tokenFrom, checkTarget, localWriter } from './cli-target.js';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** A readable one-line-per-event log for terminals; JSON lines otherwise (for journald, jq). */
export function createLogger(format: 'pretty' | 'json', out: NodeJS.WritableStream = process.stderr): Logger {
  if (format === 'json') return pino({ base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, out as unknown as pino.DestinationStream);
  return pino(
    { base: undefined },
    {
      write(line: string) {
        try {
          const { level, time, msg, err, ...rest } = JSON.parse(line) as Record<string, unknown>;
          const t = new Date(time as number).toISOString().slice(11, 23);
          const extra = ['url', 'method', 'status', 'ms'].some((k) => k in rest) ? '' : Object.keys(rest).length ? ' ' + JSON.stringify(rest) : '';
          const e = err ? ` (${(err as { message?: string }).message ?? String(err)})` : '';
          out.write(`${t} ${(LEVELS[level as number] ?? String(level)).padEnd(5)} ${msg}${e}${extra}\n`);
        } catch {
          out.write(line);
        }
      },
    },
  );
}

function progressBar(enabled: boolean, label: string): { update: (done: number, total: number) => void; stop: () => void } {
  if (!enabled || !process.stderr.isTTY) return { update: () => {}, stop: () => {} };
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: `${label} [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {speed} MiB/s`, hideCursor: true, clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  const t0 = Date.now();
  let started = false;
  return {
    update(done, total) {
      const payload = { doneMiB: (done / 2 ** 20).toFixed(1), totalMiB: (total / 2 ** 20).toFixed(1), speed: (done / 2 ** 20 / Math.max(0.001, (Date.now() - t0) / 1000)).toFixed(1) };
      if (!started) {
        bar.start(total, done, payload);
        started = true;
      } else bar.update(done, payload);
    },
    stop: () => started && bar.stop(),
  };
}

function describePublish(r: PublishResponse): string {
  const what = `${r.name} ${r.version} (${r.arch}) manifest ${r.manifest_sha256.slice(0, 16)}`;
  if (r.unchanged) return `${what} was already published; index version ${r.index_version}\n`;
  return `published ${what}: ${r.new_chunks} new chunk(s), ${r.reused_chunks} already present; index version ${r.index_version}${r.channel ? `; channel ${r.channel} -> ${r.version}` : ''}\n`;
}

function fromLocal(r: PublishResult, bytes: number, channel?: string): PublishResponse {
  return {
    name: r.name,
    version: r.version,
    arch: r.arch,
    manifest_sha256: r.manifestSha256,
    index_version: r.indexVersion,
    new_chunks: r.newChunks,
    reused_chunks: r.reusedChunks,
    unchanged: r.unchanged,
    channel: channel ?? null,
    bytes,
  };
}

/**
 * The primary of `serve --workers N`: forks N server processes sharing the listening
 * socket, replaces one that dies (unless it dies right after starting, which would only
 * repeat), and on SIGTERM/SIGINT lets every worker finish its requests before exiting.
 */
async function runWorkers(n: number, log: Logger): Promise<void> {
  let stopping = false;
  const started = new Map<number, number>();
  const fork = () => {
    const w = cluster.fork();
    started.set(w.id, Date.now());
  };
  for (let i = 0; i < n; i++) fork();
  await new Promise<void>((resolve) => {
    cluster.on('exit', (w, code, signal) => {
      const uptime = Date.now() - (started.get(w.id) ?? 0);
      started.delete(w.id);
      if (!stopping) {
        if (uptime < 5000) {
          log.error({ pid: w.process.pid, code, signal }, 'a worker failed right after starting; stopping');
          process.exitCode = 1;
          stop('worker failure');
        } else {
          log.error({ pid: w.process.pid, code, signal }, 'a worker died; starting another');
          fork();
        }
      }
      if (stopping && Object.keys(cluster.workers ?? {}).length === 0) resolve();
    });
    const stop = (why: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ why }, `${why}: stopping ${n} workers`);
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
      if (Object.keys(cluster.workers ?? {}).length === 0) resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  log.info({}, 'stopped');
}

export function register(program: Command): void {
  registerRolloutCommands(program, registerHostsCommands(program));
  program
    .command('serve')
    .description('serve a repository over HTTP: the static tree, the publish/promote API, fleet reports and a dashboard')
    .requiredOption('--repo <dir>', 'repository directory')
    .option('--port <n>', 'TCP port', (v) => {
      if (!/^[0-9]{1,5}$/.test(v) || Number(v) > 65535) throw new InvalidArgumentError('expected a TCP port number (0-65535)');
      return Number(v);
    }, 8080)
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--config <file>', `server config (YAML): tokens, index key, limits (default ${DEFAULT_CONFIG_PATH}, optional)`)
    .option('--state-dir <dir>', 'where fleet reports are kept', DEFAULT_STATE_DIR)
    .option('--keys <dir>', 'take the index key from this key store instead of the config')
    .option('--passphrase-file <file>', 'passphrase of the key store (else LOOPSHIP_PASSPHRASE)')
    .addOption(new Option('--log-format <format>', 'log lines').choices(['pretty', 'json']).default(process.stderr.isTTY ? 'pretty' : 'json', 'pretty on a terminal, else json'))
    .addOption(new Option('--log-level <level>', 'least severe level logged (info logs every request)').choices(['debug', 'info', 'warn', 'error']).default('info'))
    .option('--workers <n>', 'server processes sharing the port (like nginx worker_processes); reports are shared through the state dir', (v) => parseInt(v, 10), 1)
    .action(async (o) => {
      const log = createLogger(o.logFormat);
      log.level = o.logLevel;
      if (!Number.isInteger(o.workers) || o.workers < 1 || o.workers > 64) throw new UsageError(`invalid --workers ${o.workers} (1..64)`);
      if (!Number.isInteger(o.port) || o.port < 0 || o.port > 65535) throw new UsageError(`invalid --port ${o.port}`);
      try {
        if (!(await stat(o.repo)).isDirectory()) throw new Error('not a directory');
      } catch (cause) {
        throw new UsageError(`repository directory ${o.repo} is not usable (${(cause as Error).message})`, { cause });
      }
      const config = await loadServerConfig(o.config);
      const writer = await createRepositoryWriter(o.repo, config, { keysDir: o.keys, passphraseFile: o.passphraseFile });
      if (o.workers > 1 && cluster.isPrimary) {
        // config and keys checked above, once: workers that fail at start-up are not re-forked forever
        await runWorkers(o.workers, log);
        return;
      }
      if (!writer && cluster.isPrimary) log.warn({}, 'no index key configured: publishing and promoting are disabled (read-only server)');
      const server = await startServer({ repoDir: o.repo, port: o.port, host: o.host, config, writer, stateDir: o.stateDir, log, storeSyncMs: o.workers > 1 ? 2000 : undefined });
      await new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          log.info({ signal }, `${signal}: finishing running requests, then stopping`);
          server.close(10_000).then(() => {
            log.info({}, 'stopped');
            if (cluster.isWorker) process.disconnect?.(); // the IPC channel would keep a worker alive
            resolve();
          });
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
    });

  program
    .command('publish')
    .description('publish a package tar to a repository server (--server) or a repository directory (--repo)')
    .argument('<package>', 'package tar made by loopship build')
    .option('--server <url>', 'repository server, e.g. http://repo.example:8080')
    .option('--token <token>', 'publisher token (or --token-file, or LOOPSHIP_TOKEN)')
    .option('--token-file <file>', 'read the publisher token from this file')
    .option('--repo <dir>', 'repository directory (publish locally)')
    .option('--keys <dir>', 'key store with the index key (with --repo)')
    .option('--passphrase-file <file>', 'passphrase of the key store (else LOOPSHIP_PASSPHRASE)')
    .option('--channel <channel>', 'also point this channel at the new version')
    .option('--json', 'machine-readable output')
    .action(async (pkg: string, o) => {
      const mode = checkTarget(o);
      const bar = progressBar(!o.json, 'upload');
      let result: PublishResponse;
      try {
        if (mode === 'server') {
          result = await uploadPackage(o.server, await tokenFrom(o), pkg, bar.update, { channel: o.channel });
        } else {
          const size = (await stat(pkg).catch((cause) => {
            throw new UsageError(`cannot read the package (${cause.message})`, { where: pkg, cause });
          })).size;
          // count what the writer reads (a 'data' listener here would start the flow before it listens)
          let done = 0;
          const input = createReadStream(pkg, { highWaterMark: 1024 * 1024 }).pipe(
            new Transform({
              transform(chunk: Buffer, _enc, cb) {
                bar.update((done += chunk.length), size);
                cb(null, chunk);
              },
            }),
          );
          result = fromLocal(await (await localWriter(o)).addPackage(input, { where: pkg, channel: o.channel }), size, o.channel);
        }
      } finally {
        bar.stop();
      }
      process.stdout.write(o.json ? JSON.stringify(result) + '\n' : describePublish(result));
    });

  program
    .command('promote')
    .description('point a channel (e.g. stable) of an image at a published version; re-signs the index')
    .argument('<name>', 'image name')
    .argument('<version>', 'published version')
    .requiredOption('--channel <channel>', 'channel to move, e.g. testing or stable')
    .option('--server <url>', 'repository server')
    .option('--token <token>', 'publisher token (or --token-file, or LOOPSHIP_TOKEN)')
    .option('--token-file <file>', 'read the publisher token from this file')
    .option('--repo <dir>', 'repository directory (promote locally)')
    .option('--keys <dir>', 'key store with the index key (with --repo)')
    .option('--passphrase-file <file>', 'passphrase of the key store (else LOOPSHIP_PASSPHRASE)')
    .option('--json', 'machine-readable output')
    .action(async (name: string, version: string, o) => {
      const mode = checkTarget(o);
      const r =
        mode === 'server'
          ? await promoteRemote(o.server, await tokenFrom(o), name, version, o.channel)
          : { name, version, channel: o.channel, index_version: (await (await localWriter(o)).promote(name, o.channel, version)).indexVersion };
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `${r.name}: channel ${r.channel} -> ${r.version} (index version ${r.index_version})\n`);
    });
}
