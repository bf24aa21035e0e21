// The agent's facts for node-exporter's textfile collector (--metrics-file): one .prom file,
// replaced atomically after each daemon round (the collector may read it at any moment).
// The text is prom-client's, the same library the server's /metrics uses.
import { Registry, Gauge } from 'prom-client';
import { packageVersion } from '../format/version.js';
import { writeFileAtomic } from './fsutil.js';
import type { ApplianceStatus } from './agent.js';

export interface RoundFacts {
  ok: boolean;
  at: Date;
}

const HEALTH = ['healthy', 'unhealthy', 'starting', 'stopped', 'unknown'] as const;

/** The exposition for one round: appliances as `status` lists them, and how the round went. */
export async function renderAgentMetrics(appliances: readonly ApplianceStatus[], round: RoundFacts): Promise<string> {
  const registry = new Registry();
  const registers = [registry];
  const g = (name: string, help: string, labelNames: string[] = []) => new Gauge({ name, help, labelNames, registers });
  g('loopship_agent_info', 'The agent, by its package version', ['version']).set({ version: packageVersion() }, 1);
  g('loopship_agent_last_round_timestamp_seconds', 'When the last daemon round ended').set(round.at.getTime() / 1000);
  g('loopship_agent_last_round_success', 'Whether the last daemon round succeeded (1) or failed (0)').set(round.ok ? 1 : 0);
  const version = g('loopship_agent_appliance_version_info', 'The version each appliance runs (current)', ['appliance', 'version']);
  const running = g('loopship_agent_appliance_running', 'Whether the appliance\'s domain runs', ['appliance']);
  const health = g('loopship_agent_appliance_health', 'The appliance\'s health, one series per state (1 for the current one)', ['appliance', 'health']);
  const failed = g('loopship_agent_appliance_failed_versions', 'Versions that failed their health check here and were rolled back', ['appliance']);
  const held = g('loopship_agent_appliance_held', 'A move to an older version the host refused (1), else 0', ['appliance']);
  const waiting = g('loopship_agent_appliance_waiting_window', 'A new version installed, waiting for the maintenance window (1), else 0', ['appliance']);
  const staged = g('loopship_agent_appliance_outside_rollout', 'Staying on the old version: outside the open stages of its channel\'s rollout (1), else 0', ['appliance']);
  const disk = g('loopship_agent_appliance_disk_bytes', 'Bytes the appliance\'s installed versions take on disk (allocated)', ['appliance']);
  for (const a of appliances) {
    const appliance = a.name;
    version.set({ appliance, version: a.current ?? 'none' }, 1);
    running.set({ appliance }, a.running ? 1 : 0);
    for (const h of HEALTH) health.set({ appliance, health: h }, a.health === h ? 1 : 0);
    failed.set({ appliance }, a.failed_versions.length);
    held.set({ appliance }, a.held ? 1 : 0);
    waiting.set({ appliance }, a.waiting ? 1 : 0);
    staged.set({ appliance }, a.rollout && !a.rollout.taking ? 1 : 0);
    disk.set({ appliance }, a.disk_bytes);
  }
  return registry.metrics();
}

/** Writes the file the textfile collector reads: a temp file renamed over it, never half-written. */
export async function writeAgentMetrics(file: string, appliances: readonly ApplianceStatus[], round: RoundFacts): Promise<void> {
  await writeFileAtomic(file, await renderAgentMetrics(appliances, round), { mode: 0o644 });
}
