// One installed version of an appliance on this host: its signed manifest, the settings it
// gets, writing them into its boot disk, the domain the backend is handed, the checks made
// before anything running is stopped, and a boot with its health check.
import { join } from 'node:path';
import { parseMetadata, LoopshipError, ConfigError, type Manifest } from '../format/index.js';
import type { SettingInput } from './config.js';
import { makeBootDisk, BOOT_DISK } from './install.js';
import { resolveSettings, type Settings } from './settings.js';
import { withMountedImage } from './mount.js';
import { writeHostSettings } from './configure.js';
import { stableMac, type DomainSpec } from './backends/types.js';
import { waitReady, fileSize, type WaitReadyResult } from './health.js';
import { readOwnFile, ownFileOrNull } from './fsutil.js';
import { pauseAt } from './pause.js';
import type { AgentContext } from './context.js';

export class Boot {
  constructor(private readonly ctx: AgentContext) {}

  /** The signed manifest kept with an installed version. */
  async manifest(name: string, version: string): Promise<Manifest> {
    const p = join(this.ctx.state.versionDir(name, version), 'manifest.json');
    return parseMetadata('manifest', await readOwnFile(p), p);
  }

  /** agent.yaml's settings, then what configure --set kept, then `extra`, checked against what the image declares. */
  async settings(name: string, manifest: Manifest, extra: Record<string, SettingInput> = {}): Promise<Settings> {
    const st = (await this.ctx.state.readState()).appliances[name];
    const given = { ...((await this.ctx.applianceConfig(name))?.settings ?? {}), ...(st?.settings ?? {}), ...extra };
    return resolveSettings(manifest.settings, given, `${manifest.name} ${manifest.version}`);
  }

  /** Writes the host settings into the version's boot disk (made from the verified image the first time). */
  async configure(name: string, version: string, extra?: Record<string, string>): Promise<string[]> {
    const { state, exec, host, now, log } = this.ctx;
    const m = await this.manifest(name, version);
    const settings = await this.settings(name, m, extra);
    const disk = join(state.versionDir(name, version), BOOT_DISK);
    if (!(await ownFileOrNull(disk))) await makeBootDisk(state.versionDir(name, version), m);
    const files = await withMountedImage({ exec, state }, disk, name, (mp) =>
      writeHostSettings(mp, m, settings, { host, configuredAt: now().toISOString(), image: disk }),
    );
    log(`configured ${name} ${version}: ${files.join(', ')}`);
    return files;
  }

  async domainSpec(name: string, version: string): Promise<DomainSpec> {
    return this.domainSpecFor(await this.manifest(name, version));
  }

  /** What booting `m` hands the backend: the manifest's boot and Xen fields with this host's overrides. */
  async domainSpecFor(m: Manifest): Promise<DomainSpec> {
    const { name, version } = m;
    const { state, host } = this.ctx;
    const dir = state.versionDir(name, version);
    const data = state.dataDisk(name);
    const local = (await this.ctx.applianceConfig(name))?.xen ?? {};
    return {
      name, version,
      type: m.boot.type,
      kernel: join(dir, 'kernel'),
      initrd: m.initrd ? join(dir, 'initrd') : null,
      disk: join(dir, 'disk.img'),
      // never a planted data.img (a symlink to a host disk): only a file the agent made
      dataDisk: (await ownFileOrNull(data)) ? data : null,
      cmdline: m.boot.cmdline,
      memory: local.memory ?? m.xen.memory,
      vcpus: local.vcpus ?? m.xen.vcpus,
      nics: m.xen.network.nics,
      bridge: local.bridge ?? m.xen.network.bridge,
      macs: Array.from({ length: m.xen.network.nics }, (_, i) => stableMac(host, name, i)),
      ...(local.tsc_mode ? { tscMode: local.tsc_mode } : {}),
    };
  }

  /**
   * Throws unless the backend would take `m` as it is (rendered config, exec arguments):
   * run before anything running is stopped, so a version the toolstack refuses costs no outage.
   */
  async checkBootable(m: Manifest): Promise<void> {
    const backend = await this.ctx.backend();
    try {
      backend.validate(await this.domainSpecFor(m));
    } catch (err) {
      if (err instanceof LoopshipError && err.code !== 'CONFIG_INVALID') throw err;
      throw new ConfigError(`${m.name} ${m.version} cannot be booted here: ${(err as Error).message}`, { where: `${m.name} ${m.version}`, cause: err });
    }
  }

  /** The files a boot hands the toolstack are the agent's own, complete: never a planted link to a host disk. */
  async checkBootFiles(spec: DomainSpec): Promise<void> {
    for (const f of [spec.kernel, spec.initrd, spec.disk]) {
      // a planted entry is STATE_UNSAFE from ownFileOrNull; an absent one is damage to the installed version
      if (f && !(await ownFileOrNull(f))) throw new LoopshipError('IO', `missing: ${spec.name} ${spec.version} cannot be booted without it (reinstall it: remove, then install)`, { where: f });
    }
  }

  private async healthTimeoutMs(): Promise<number> {
    return ((await this.ctx.configIfAny())?.health_timeout_s ?? 300) * 1000;
  }

  /** Boots `version` (unless it runs already) and waits for its ready marker; records the health. */
  async bootAndCheck(name: string, version: string): Promise<WaitReadyResult> {
    const { state, log, now } = this.ctx;
    const backend = await this.ctx.backend();
    const m = await this.manifest(name, version);
    const consoleLog = backend.consoleLog(name);
    // the outcome of a wait: into the state and the log, the same way for both paths below
    const record = async (health: WaitReadyResult): Promise<WaitReadyResult> => {
      await state.updateAppliance(name, (a) => {
        a.health = health.ready ? 'healthy' : 'unhealthy';
        a.health_checked_at = now().toISOString();
      });
      log(health.ready ? `${name} ${version} is ready after ${(health.ms / 1000).toFixed(1)} s${health.line ? `: ${health.line}` : ''}` : `${name} ${version} did not become ready: ${health.reason}`);
      return health;
    };
    // the instance being checked: a crash or reboot brought back up by on_crash/on_reboot is
    // a new one, and a guest that restarts before it is ready is not healthy (a crash loop
    // would otherwise look alive until the timeout)
    const aliveAs = (instance: string | null) => async () => {
      const id = await backend.instanceId(name).catch(() => undefined);
      // a toolstack that cannot say (xl list failing) is no reason to call the guest dead: the timeout still bounds the wait
      if (id === undefined) return true;
      return id === null ? false : instance === null || id === instance ? true : ('restarted' as const);
    };
    const wait = async (fromOffset: number, instance: string | null) =>
      waitReady({ logPath: consoleLog, marker: m.boot.ready_marker, fromOffset, timeoutMs: await this.healthTimeoutMs(), isAlive: aliveAs(instance), aliveEveryMs: backend.livenessIntervalMs });
    const running = await backend.instanceId(name);
    if (running !== null) {
      // already up: its health is what we last saw, or what its console shows since it booted
      const known = (await state.readState()).appliances[name]?.health;
      log(`${name} is already running`);
      if (known === 'healthy') return { ready: true, reason: 'marker', ms: 0, tail: '' };
      return record(await wait(0, running));
    }
    const offset = backend.kind === 'qemu' ? 0 : await fileSize(consoleLog);
    await state.updateAppliance(name, (a) => { a.health = 'starting'; });
    log(`starting ${name} ${version} (${backend.kind})`);
    const spec = await this.domainSpec(name, version);
    await this.checkBootFiles(spec);
    await backend.start(spec);
    const instance = await backend.instanceId(name);
    await pauseAt('boot');
    await backend.setAutostart(name, (await this.ctx.applianceConfig(name))?.autostart ?? true);
    return record(await wait(offset, instance));
  }
}
