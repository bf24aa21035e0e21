// Switching an appliance from one installed version to another (upgrade, rollback), and
// recovering one a killed run left half-done. Planned, then executed: everything the switch
// will hand the toolstack is loaded and checked before the running version is stopped;
// then stop, switch, boot, health check, and commit or switch back.
import { LoopshipError, type Manifest } from '../format/index.js';
import type { DomainSpec } from './backends/types.js';
import type { WaitReadyResult } from './health.js';
import type { AgentContext } from './context.js';
import type { Boot } from './boot.js';

export interface ApplianceTransition {
  name: string;
  from: string | null;
  to: string;
  /** for messages: "upgrade of", "rollback of" */
  why: string;
}

/** A transition whose target was loaded and checked: nothing running has been touched yet. */
export interface PlannedTransition extends ApplianceTransition {
  manifest: Manifest;
  spec: DomainSpec;
}

export class Transitions {
  constructor(
    private readonly ctx: AgentContext,
    private readonly boot: Boot,
  ) {}

  /** Loads and checks the target (manifest, rendered domain, its files): throws before anything is stopped. */
  async plan(t: ApplianceTransition): Promise<PlannedTransition> {
    const manifest = await this.boot.manifest(t.name, t.to);
    await this.boot.checkBootable(manifest);
    const spec = await this.boot.domainSpecFor(manifest);
    await this.boot.checkBootFiles(spec);
    return { ...t, manifest, spec };
  }

  /** Switches to `to` and checks it; on failure switches back to `from` and boots it. */
  async execute(p: PlannedTransition): Promise<{ ok: boolean; health: WaitReadyResult }> {
    const { state, log, now } = this.ctx;
    const { name, from, to, why } = p;
    const backend = await this.ctx.backend();
    await state.updateAppliance(name, (a) => {
      a.pending_upgrade = { from, to, started_at: now().toISOString() };
    });
    try {
      await backend.stop(name);
      // the boot below takes a domain it finds for the new version "already running": one
      // still there now is the old one (a stop that returned early, CI on real Xen)
      if (await backend.isRunning(name)) throw new LoopshipError('EXEC_FAILED', `${name}${from ? ` ${from}` : ''} is still running after it was stopped`);
    } catch (err) {
      await state.updateAppliance(name, (a) => { a.pending_upgrade = null; });
      throw new LoopshipError('EXEC_FAILED', `${why} ${name} to ${to} not started: ${(err as Error).message}`, { where: name, cause: err });
    }
    await state.setCurrent(name, to);
    let health: WaitReadyResult;
    try {
      health = await this.boot.bootAndCheck(name, to);
    } catch (err) {
      health = { ready: false, reason: 'stopped', ms: 0, tail: (err as Error).message };
    }
    if (health.ready) {
      await state.updateAppliance(name, (a) => {
        if (from && from !== to) a.previous = from;
        a.pending_upgrade = null;
        a.failed_versions = a.failed_versions.filter((v) => v !== to);
        a.last_error = null;
        a.held = null;
      });
      return { ok: true, health };
    }
    const msg = `${why} ${name} to ${to} failed its health check (${health.reason} after ${Math.round(health.ms / 1000)} s)`;
    log(`${msg}; switching back to ${from ?? 'nothing'}`);
    await backend.stop(name, { timeoutMs: 10_000 }).catch(() => {});
    if (from) {
      await state.setCurrent(name, from);
      const back = await this.boot.bootAndCheck(name, from).catch((err) => ({ ready: false, reason: 'stopped' as const, ms: 0, tail: (err as Error).message }));
      if (!back.ready) log(`warning: ${name} ${from} did not become ready again either (${back.reason})`);
    }
    await state.updateAppliance(name, (a) => {
      a.pending_upgrade = null;
      if (!a.failed_versions.includes(to)) a.failed_versions.push(to);
      a.last_error = `${msg}; last console lines: ${health.tail.split('\n').slice(-3).join(' | ')}`;
    });
    return { ok: false, health };
  }

  /** plan, then execute. */
  async run(t: ApplianceTransition): Promise<{ ok: boolean; health: WaitReadyResult }> {
    return this.execute(await this.plan(t));
  }

  /** A run killed mid-switch left `pending_upgrade`: go back to the old version, bootable. */
  async recoverInterrupted(): Promise<void> {
    const { state, log } = this.ctx;
    const s = await state.readState();
    for (const [name, a] of Object.entries(s.appliances)) {
      if (!a.pending_upgrade) continue;
      const { from, to } = a.pending_upgrade;
      log(`an upgrade of ${name} to ${to} was interrupted: returning to ${from ?? 'nothing'}`);
      const backend = await this.ctx.backend();
      await backend.stop(name).catch(() => {});
      if (from && (await state.installedVersions(name)).includes(from)) {
        await state.setCurrent(name, from);
        await backend.start(await this.boot.domainSpec(name, from)).catch((err) => log(`could not start ${name} ${from}: ${(err as Error).message}`));
      }
      await state.updateAppliance(name, (x) => {
        x.pending_upgrade = null;
        x.health = 'unknown';
      });
    }
  }
}
