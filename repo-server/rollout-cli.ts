// `loopship rollout start|status|pause|resume|abort|finish`: staged rollouts, on a server
// (--server, an operator or publisher token) or straight on a repository directory (--repo,
// --keys). `promote` stays the one-step form (and ends a rollout on its channel).
import { Command, InvalidArgumentError } from 'commander';
import { RepositoryWriter, UsageError, parseStages, parseWindows } from '../format/index.js';
import { rolloutRemote, rolloutsRemote, holdRemote } from './client.js';
import { applyHold, type HoldRequest, type HoldResult } from './holds.js';
import { tokenFrom, checkTarget, localWriter, type Target } from './cli-target.js';
import { applyRollout, viewRollouts, type RolloutRequest, type RolloutResult, type RolloutView } from './rollouts.js';

type Common = Target & { channel: string; json?: boolean };

function targetOptions(cmd: Command, withChannel = true): Command {
  if (withChannel) cmd.option('--channel <channel>', 'the channel the rollout moves', 'stable');
  return cmd
    .option('--server <url>', 'repository server')
    .option('--token <token>', 'operator or publisher token (or --token-file, or LOOPSHIP_TOKEN)')
    .option('--token-file <file>', 'read the token from this file')
    .option('--repo <dir>', 'repository directory (act locally)')
    .option('--keys <dir>', 'key store with the index key (with --repo)')
    .option('--passphrase-file <file>', 'passphrase of the key store (else LOOPSHIP_PASSPHRASE)')
    .option('--json', 'machine-readable output');
}

const list = (v: string): string[] => v.split(',').map((s) => s.trim()).filter(Boolean);

function halt(v: string): RolloutRequest & { op: 'start' } extends { halt?: infer H } ? H : never {
  const m = /^(\d+)\/(\d+)(?:,(\d+(?:\.\d+)?)%)?$/.exec(v);
  if (!m) throw new InvalidArgumentError('expected FAILURES/OF_FIRST[,PERCENT%], e.g. 2/20,5%');
  return { failures: Number(m[1]), of_first: Number(m[2]), percent: m[3] === undefined ? 5 : Number(m[3]) } as never;
}

export function describeView(v: RolloutView): string {
  const lines = [`${v.name}/${v.channel}: ${v.from} -> ${v.to}, ${v.state}${v.stopped ? ` (${v.stopped.reason}; by ${v.stopped.by} at ${v.stopped.at})` : ''}`];
  lines.push(`  stage ${v.stage} of ${v.stages.length}: open to ${v.percent}% of hosts${v.complete ? ' - complete: rollout finish moves the channel' : ''}`);
  if (v.next) lines.push(`  next: ${v.next}`);
  lines.push(`  stages: ${v.stages.map((s) => `${s.percent}%@${s.opens ?? 'manual'}${s.window ? ` (in ${s.window.join(', ')})` : ''}`).join(', ')}`);
  if (v.sites) lines.push(`  sites: ${v.sites.join(', ')}`);
  if (v.groups) lines.push(`  groups: ${v.groups.join(', ')}`);
  if (v.halt) lines.push(`  halts after ${v.halt.failures} failure(s) among the first ${v.halt.of_first} hosts, then above ${v.halt.percent}%`);
  if (v.fleet) {
    lines.push(`  fleet: ${v.fleet.took} host(s) took ${v.to}, ${v.fleet.failed.length} failed, ${v.fleet.waiting} waiting for their stage`);
    for (const f of v.fleet.failed.slice(0, 20)) lines.push(`    failed: ${f.host} (${f.site}): ${f.error ?? 'unhealthy'}`);
  }
  return lines.join('\n') + '\n';
}

async function act(name: string, o: Common, req: RolloutRequest): Promise<void> {
  const r: RolloutResult =
    checkTarget(o) === 'server'
      ? await rolloutRemote(o.server!, await tokenFrom(o), name, o.channel, req)
      : await applyRollout(await localWriter(o), name, o.channel, req, `local ${process.env.SUDO_USER ?? process.env.USER ?? 'user'}`);
  if (o.json) return void process.stdout.write(JSON.stringify(r) + '\n');
  const head = req.op === 'finish' ? `finished: channel ${o.channel} of ${name} names ${r.channel_version}` : `rollout ${req.op}: done`;
  process.stdout.write(`${head} (index version ${r.index_version})\n${describeView(r.rollout)}`);
}

const EXAMPLES = `
Examples:
  # 5% at once, then 25%, 50% and all, four hours apart; halt after 2 failures among the first 20
  loopship rollout start tiny 1.4.0 --stages 5,25,50,100 --every 4h --server http://repo:8080 --token-file ops.token
  # 1% now, the rest only when an operator says so
  loopship rollout start tiny 1.4.0 --stages 1,10@manual,100@manual --repo /srv/repo --keys /etc/loopship/keys
  loopship rollout status --server http://repo:8080 --token-file ops.token
  loopship rollout pause tiny --reason "tickets from site berlin" --server http://repo:8080 --token-file ops.token
  loopship rollout resume tiny ...     # un-pause, or open the next manual stage
  loopship rollout abort tiny ...      # hosts go back to the old version where they consent (allow_downgrade)
  loopship rollout finish tiny ...     # every stage open: the channel names the new version

Exit codes: 0 done; 2 usage (bad stages, a version not newer than the channel's); 4 server not reachable;
1 anything else (no such image or rollout, a rollout already under way, a move its state does not allow).
`;

export function registerRolloutCommands(program: Command, hosts: Command): void {
  registerHoldCommands(hosts);
  const rollout = program
    .command('rollout')
    .description('staged rollouts: move a channel to a new version a share of hosts at a time, halted when hosts fail')
    .addHelpText('after', EXAMPLES);

  targetOptions(
    rollout
      .command('start')
      .description('start moving a channel to a newer published version, in stages')
      .argument('<name>', 'image name')
      .argument('<version>', 'the published version to roll out (newer than the channel\'s)')
      .requiredOption('--stages <list>', 'shares of hosts, e.g. 1,10,50,100; a stage may add @manual, @+4h or @2026-12-08T22:00:00Z')
      .option('--every <duration>', 'each stage this long after the one before (30m, 4h, 2d); without it, later stages wait for rollout resume')
      .option('--sites <list>', 'only hosts of these sites (comma-separated)', list)
      .option('--groups <list>', 'only hosts in these groups (agent.yaml groups:)', list)
      .option('--window <window>', 'hosts switch only inside this window, in their local time, e.g. "Mon-Fri 22:00-05:00" (repeat for several)', (v: string, prev: string[] = []) => [...prev, v])
      .option('--halt <rule>', 'pause when FAILURES of the first OF_FIRST hosts fail, or more than PERCENT% after (default 2/20,5%)', halt),
  ).action(async (name: string, version: string, o: Common & { stages: string; every?: string; sites?: string[]; groups?: string[]; halt?: never; window?: string[] }) => {
    parseStages(o.stages, o.every); // a bad --stages or --window is a usage error before any key or server is asked
    try {
      if (o.window) parseWindows(o.window, '--window');
    } catch (e) {
      throw new UsageError((e as Error).message, { where: '--window' });
    }
    await act(name, o, { op: 'start', to: version, stages: o.stages, every: o.every, sites: o.sites, groups: o.groups, halt: o.halt, window: o.window });
  });

  for (const op of ['pause', 'abort'] as const) {
    targetOptions(
      rollout
        .command(op)
        .description(op === 'pause' ? 'stop opening stages (hosts that moved stay; the rest wait)' : 'end the rollout: hosts go back to the old version where their agent.yaml allows a downgrade')
        .argument('<name>', 'image name')
        .option('--reason <text>', 'why, for the status, the dashboard and the log'),
    ).action(async (name: string, o: Common & { reason?: string }) => act(name, o, { op, reason: o.reason }));
  }
  targetOptions(
    rollout.command('resume').description('go on after a pause, or open the next stage that waits for an operator').argument('<name>', 'image name'),
  ).action(async (name: string, o: Common) => act(name, o, { op: 'resume' }));
  targetOptions(
    rollout
      .command('finish')
      .description('end a complete rollout: its channel names the new version (an aborted one: the old)')
      .argument('<name>', 'image name')
      .option('--force', 'finish before every stage is open: every host moves at its next poll'),
  ).action(async (name: string, o: Common & { force?: boolean }) => act(name, o, { op: 'finish', force: o.force }));

  targetOptions(rollout.command('status').description('the rollouts under way, with what the fleet reports about each').argument('[name]', 'only this image'), false)
    .action(async (name: string | undefined, o: Target & { json?: boolean }) => {
      let views: RolloutView[];
      if (o.server) views = await rolloutsRemote(o.server, await tokenFrom(o));
      else if (o.repo) views = viewRollouts(await new RepositoryWriter(o.repo, { indexKeys: [] }).currentIndex(), new Date());
      else throw new UsageError('where? give --server URL --token TOKEN, or --repo DIR');
      views = views.filter((v) => !name || v.name === name);
      if (o.json) return void process.stdout.write(JSON.stringify({ rollouts: views }) + '\n');
      process.stdout.write(views.length ? views.map(describeView).join('') : `no rollout under way${name ? ` for ${name}` : ''}\n`);
    });
}

/** `loopship hosts hold|release IMAGE HOST`: an operator keeps one host on a version (the signed index's holds). */
function registerHoldCommands(hosts: Command): void {
  const run = async (name: string, host: string, o: Target & { json?: boolean }, req: HoldRequest | null) => {
    const r: HoldResult =
      checkTarget(o) === 'server'
        ? await holdRemote(o.server!, await tokenFrom(o), name, host, req)
        : await applyHold(await localWriter(o), name, host, req, `local ${process.env.SUDO_USER ?? process.env.USER ?? 'user'}`);
    process.stdout.write(o.json ? JSON.stringify(r) + '\n'
      : r.hold ? `${host} is held on ${name} ${r.hold.version} (${r.hold.reason}); index version ${r.index_version}\n`
        : `${host} follows its channel of ${name} again; index version ${r.index_version}\n`);
  };
  targetOptions(
    hosts
      .command('hold')
      .description('keep one host on a version of an image, whatever its channel or a rollout says (it never moves back for a hold)')
      .argument('<image>', 'image name')
      .argument('<host>', 'host name (as it reports)')
      .option('--on <version>', 'the version to hold it on (default: the one it last reported, with --server)')
      .option('--reason <text>', 'why, for the host\'s status and the dashboard'),
    false,
  ).action(async (name: string, host: string, o: Target & { json?: boolean; on?: string; reason?: string }) => run(name, host, o, { version: o.on, reason: o.reason }));
  targetOptions(
    hosts.command('release').description('let a held host follow its channel again').argument('<image>', 'image name').argument('<host>', 'host name'),
    false,
  ).action(async (name: string, host: string, o: Target & { json?: boolean }) => run(name, host, o, null));
}
