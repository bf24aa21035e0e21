// `loopship-agent` commands. Parsing and printing only: the work is in Agent (agent.ts).
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { Agent, AGENT_VERSION } from './agent.js';
import { writeAgentMetrics } from './metrics.js';
import { DEFAULT_CONFIG, DEFAULT_STATE_DIR } from './config.js';
import { parseSetOptions } from './settings.js';
import { LoopshipError, VerificationError } from '../format/index.js';
import type { InstallProgress } from './install.js';

// Chunk installs keep many file reads, writes and syncs in flight: a larger libuv pool than
// the default 4 (it starts on first use, after this module is loaded).
process.env.UV_THREADPOOL_SIZE ??= '16';

interface Globals {
  config: string;
  stateDir: string;
  json?: boolean;
}

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function globals(cmd: Command): Globals {
  return cmd.optsWithGlobals() as Globals;
}

function makeProgress(json: boolean): ((p: InstallProgress, label: string) => void) | undefined {
  if (json || !process.stderr.isTTY) return undefined;
  let bar: cliProgress.SingleBar | null = null;
  return (p, label) => {
    if (!bar) {
      bar = new cliProgress.SingleBar(
        { stream: process.stderr, format: `${label} [{bar}] {percentage}% | {done}/{total} MiB | fetched {fetched} MiB, reused {reused} MiB`, hideCursor: true },
        cliProgress.Presets.shades_classic,
      );
      bar.start(p.totalBytes, 0, {});
    }
    const mib = (n: number) => (n / 1048576).toFixed(1);
    bar.update(p.doneBytes, { done: mib(p.doneBytes), total: mib(p.totalBytes), fetched: mib(p.fetchedBytes), reused: mib(p.reusedBytes) });
    if (p.doneBytes >= p.totalBytes) {
      bar.stop();
      bar = null;
    }
  };
}

function agentFor(cmd: Command, opts: { daemon?: boolean } = {}): { agent: Agent; g: Globals } {
  const g = globals(cmd);
  const agent = new Agent({
    configPath: g.config,
    stateDir: g.stateDir,
    log: opts.daemon
      ? (l) => process.stdout.write(g.json ? JSON.stringify({ time: new Date().toISOString(), msg: l }) + '\n' : `${l}\n`)
      : (l) => process.stderr.write(`${l}\n`),
    onInstallProgress: makeProgress(Boolean(g.json)),
  });
  return { agent, g };
}

function print(g: Globals, value: unknown, human: () => string): void {
  process.stdout.write(g.json ? JSON.stringify(value, null, 2) + '\n' : human() + (human().endsWith('\n') ? '' : '\n'));
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

export function register(program: Command): void {
  program
    .option('--config <file>', 'agent configuration', DEFAULT_CONFIG)
    .option('--state-dir <dir>', 'state directory', DEFAULT_STATE_DIR)
    .option('--json', 'machine-readable output');
  registerTrust(program);
  registerInstall(program);
  registerLifecycle(program);
  registerUpkeep(program);
  registerDaemon(program);
}

/** init, update: what the host trusts */
function registerTrust(program: Command): void {
  program
    .command('init')
    .description('pin the trust root and write the configuration')
    .requiredOption('--repo <url>', 'repository URL or directory (repeat for mirrors, in order)', collect)
    .option('--root-key <file>', 'root public key (armored or binary) from the install media')
    .option('--root-fingerprint <fpr>', 'root key fingerprint; the key is fetched from the repository and checked against it')
    .addOption(new Option('--backend <kind>', 'boot backend').choices(['xl', 'qemu']))
    .option('--force', 'pin another repository than the one trusted now (resets the trusted root and the rollback floor)')
    .addHelpText('after', '\nRun again with the same pin, init keeps what the host trusts (root version, rollback floor).\nExample:\n  loopship-agent init --repo http://repo:8080 --repo http://mirror:8080 --root-key /media/root.asc')
    .action(async (o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.init({ repos: o.repo, rootKeyFile: o.rootKey, rootFingerprint: o.rootFingerprint, backend: o.backend, force: o.force });
      // the agent's log (stderr) already says "pinned root version N; wrote FILE": no second line
      if (g.json) print(g, r, () => '');
    });

  program
    .command('update')
    .description('fetch and verify the root (rotation chain) and the index (signature, expiry, rollback)')
    .action(async (_o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.locked(() => agent.update());
      print(g, r, () =>
        [`root version ${r.root_version}, index version ${r.index_version} (from ${r.source})`,
          ...Object.entries(r.images).map(([n, i]) => `  ${n}: ${i.versions.join(' ')}  ${Object.entries(i.channels).map(([c, v]) => `${c}=${v}`).join(' ')}`)].join('\n'));
    });
}

/** install, import, configure: a version onto this host */
function registerInstall(program: Command): void {
  const installOpts = (c: Command) =>
    c
      .option('--set <key=value>', 'host setting the image declares (repeatable)', collect, [])
      .option('--data-size <size>', 'create a persistent data disk of this size (e.g. 4G) if there is none')
      .option('--no-start', 'install and configure, but do not boot');

  installOpts(program.command('install').argument('<spec>', 'NAME, NAME@VERSION or NAME:CHANNEL').description('fetch (only what is not on this host), verify, install, configure and boot an appliance'))
    .action(async (spec: string, o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.install(spec, { set: parseSetOptions(o.set), dataSize: o.dataSize, start: o.start });
      print(g, r, () => `${spec}: ${r.install.alreadyInstalled ? 'already installed' : `installed ${r.install.version} (fetched ${mib(r.install.fetchedBytes)} of ${mib(r.install.fullCompressedBytes)} compressed, reused ${mib(r.install.reusedBytes)})`}; current ${r.current}${r.started ? ', running and ready' : ''}`);
    });

  installOpts(program.command('import').argument('<file>', 'package tar (loopship export, USB)').description('install from an offline package, with the same verification'))
    .action(async (file: string, o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.importPackage(file, { set: parseSetOptions(o.set), dataSize: o.dataSize, start: o.start });
      print(g, r, () => `imported ${r.install.name} ${r.install.version}${r.install.alreadyInstalled ? ' (already installed)' : ''}; current ${r.current}`);
    });

  program
    .command('configure')
    .argument('<name>')
    .option('--set <key=value>', 'host setting (repeatable; remembered)', collect, [])
    .description('write host settings into the current image (it must not be running)')
    .action(async (name: string, o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.configure(name, { set: parseSetOptions(o.set) });
      print(g, r, () => `configured ${r.name} ${r.version}: ${r.files.join(', ')}`);
    });
}

/** start, stop, restart, status, upgrade, rollback, remove: the installed appliances */
function registerLifecycle(program: Command): void {
  for (const [verb, desc] of [['start', 'boot the current version and wait until it is ready'], ['stop', 'shut down (forced after a timeout)'], ['restart', 'stop, then start']] as const) {
    program
      .command(verb)
      .argument('<name>')
      .description(desc)
      .action(async (name: string, _o, cmd) => {
        const { agent, g } = agentFor(cmd);
        const r = await agent[verb](name);
        print(g, r, () => `${name}: ${verb === 'stop' ? 'stopped' : 'running and ready'}`);
      });
  }

  program
    .command('status')
    .argument('[name]')
    .description('installed and running versions, health, disk use')
    .action(async (name: string | undefined, _o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.status(name);
      print(g, r, () =>
        r.length === 0
          ? 'no appliances installed'
          : r.map((a) =>
              `${a.name}: current ${a.current ?? '-'}${a.previous ? ` (previous ${a.previous})` : ''}, ${a.running ? 'running' : 'stopped'}, health ${a.health}` +
              `${a.verified === null ? '' : a.verified ? ', verified' : ', VERIFY FAILED'}; installed ${a.installed.join(' ') || '-'}; disk ${mib(a.disk_bytes)}, data ${mib(a.data_disk_bytes)}` +
              `${a.pending_upgrade ? `; upgrade to ${a.pending_upgrade.to} interrupted` : ''}` +
              // a wait is no error: said as what it is (its reason is last_error too, for the fleet report)
              `${a.rollout && !a.rollout.taking ? `\n  rollout: stays on ${a.rollout.from}: ${a.rollout.reason}` : ''}` +
              `${a.waiting ? `\n  waiting: ${a.waiting.reason}` : ''}${a.held ? `\n  held: ${a.held.reason}` : ''}` +
              `${a.operator_hold ? `\n  operator hold: on ${a.operator_hold.version} by ${a.operator_hold.by} (${a.operator_hold.reason})` : ''}` +
              `${a.last_error && a.last_error !== a.waiting?.reason && a.last_error !== a.held?.reason ? `\n  last error: ${a.last_error}` : ''}`).join('\n'));
    });

  program
    .command('upgrade')
    .argument('[name]')
    .option('--force', 'retry a version that failed its health check before')
    .option('--ignore-window', 'switch now, outside the maintenance windows agent.yaml sets')
    .description('install the newer version beside the old; inside the maintenance windows (if any) switch, boot, health check, roll back on failure')
    .addHelpText('after', '\nMaintenance windows (agent.yaml windows:) hold for this command too: outside them the new version\nis downloaded and verified, the running one is left alone and the result is "waiting" with the next\nopening; --ignore-window switches now. A first install (nothing running yet) happens any time.')
    .action(async (name: string | undefined, o, cmd) => {
      const { agent, g } = agentFor(cmd);
      try {
        const r = await agent.upgrade(name, { force: o.force, ignoreWindow: o.ignoreWindow });
        print(g, r, () => r.map((x) => `${x.name}: ${x.status}${x.from ? ` ${x.from}` : ''}${x.to && x.to !== x.from ? ` -> ${x.to}` : ''}${x.message ? ` (${x.message})` : ''}`).join('\n') || 'nothing to upgrade');
      } catch (err) {
        const results = (err as { results?: unknown }).results;
        if (results && g.json && err instanceof LoopshipError) {
          // one JSON document: what happened to each appliance, and the error
          process.stdout.write(JSON.stringify({ results, error: err.toJSON() }, null, 2) + '\n');
          process.stderr.write(`loopship-agent: error: ${err.message}\n`);
          process.exitCode = 1;
          return;
        }
        throw err;
      }
    });

  program
    .command('rollback')
    .argument('<name>')
    .description('switch back to the previous version and boot it')
    .action(async (name: string, _o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.rollback(name);
      print(g, r, () => `${name}: rolled back ${r.from} -> ${r.to}`);
    });

  program
    .command('remove')
    .argument('<name>')
    .option('--keep-data', 'keep the persistent data disk')
    .description('stop and remove an appliance')
    .action(async (name: string, o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.remove(name, { keepData: o.keepData });
      print(g, r, () => `removed ${name}${r.keptData ? ' (data disk kept)' : ''}`);
    });
}

/** gc, verify */
function registerUpkeep(program: Command): void {
  program
    .command('gc')
    .description('drop versions no longer needed (keeps current, previous and a version waiting for its window) and abandoned downloads')
    .action(async (_o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.gc();
      print(g, r, () => (r.removed.length ? `removed ${r.removed.join(', ')}; freed ${mib(r.freed_bytes)}` : 'nothing to remove'));
    });

  program
    .command('verify')
    .argument('[name]')
    .description('re-hash installed images against their signed manifests (exit 3 on any difference)')
    .action(async (name: string | undefined, _o, cmd) => {
      const { agent, g } = agentFor(cmd);
      const r = await agent.verify(name);
      print(g, r, () => r.map((v) => `${v.name} ${v.version}: ${v.ok ? 'ok' : 'FAILED'}${v.problems.map((p) => `\n  ${p}`).join('')}`).join('\n') || 'nothing installed');
      const bad = r.filter((v) => !v.ok);
      if (bad.length) {
        const e = new VerificationError('DIGEST_MISMATCH', `${bad.length} installed version(s) differ from their signed manifests: ${bad.map((b) => `${b.name} ${b.version}`).join(', ')}`, { where: 'verify' });
        if (g.json) {
          // the JSON result is already printed; only the exit code is left to set
          process.stderr.write(`loopship-agent: error: ${e.message}\n`);
          process.exitCode = 3;
          return;
        }
        throw e;
      }
    });
}

/** daemon: the unattended loop */
function registerDaemon(program: Command): void {
  program
    .command('daemon')
    .description('poll on an interval with jitter: upgrade what follows a channel, keep appliances running, report')
    .addHelpText('after', '\nOutside the maintenance windows agent.yaml sets (windows:, timezone:), a round downloads and verifies\nnew versions but stops, switches and reboots nothing; the next round inside a window switches.')
    .option('--once', 'one round, then exit (non-zero if it failed)')
    .option('--metrics-file <file>', "after each round, write this host's facts for node-exporter's textfile collector (e.g. /var/lib/prometheus/node-exporter/loopship.prom)")
    .action(async (o, cmd) => {
      const { agent } = agentFor(cmd, { daemon: true });
      const cfg = await agent.config();
      let stopping = false;
      let wake: () => void = () => {};
      const onSignal = () => {
        stopping = true;
        wake();
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
      process.stdout.write(`loopship-agent ${AGENT_VERSION} daemon: every ${cfg.daemon.interval_s} s (+ up to ${cfg.daemon.jitter_s} s)\n`);
      for (;;) {
        const r = await agent.daemonOnce();
        process.stdout.write(r.ok ? 'round complete\n' : `round failed: ${r.error}\n`);
        if (o.metricsFile) {
          await writeAgentMetrics(o.metricsFile, await agent.status(), { ok: r.ok, at: new Date() })
            .catch((e) => process.stdout.write(`cannot write ${o.metricsFile}: ${(e as Error).message}\n`));
        }
        if (o.once) {
          if (!r.ok) throw new LoopshipError('INTERNAL', r.error ?? 'daemon round failed', { where: 'daemon' });
          return;
        }
        if (stopping) return;
        const ms = (cfg.daemon.interval_s + Math.random() * cfg.daemon.jitter_s) * 1000;
        await new Promise<void>((res) => {
          const t = setTimeout(res, ms);
          wake = () => {
            clearTimeout(t);
            res();
          };
        });
        if (stopping) return;
      }
    });
}
