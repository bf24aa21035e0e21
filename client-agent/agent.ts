// The agent's operations (what each CLI command does), over injected dependencies: the
// state dir, the config file, a boot backend, exec, fetchers, clock and host name. A thin
// facade over its parts: context.ts (deps, config, backend), trust.ts (what the host trusts),
// boot.ts (one installed version: configure, domain, boot, health), transition.ts (switching
// versions, planned then executed). The CLI only parses options and prints; tests drive this.
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  readPackage, chunkPath, compareVersions, placeHost, holdFor, LoopshipError, UsageError,
  type Root, type Manifest,
} from '../format/index.js';
import { type AgentConfig, parseSize } from './config.js';
import type { StateDir, ApplianceState } from './state.js';
import { type Exec, run } from './exec.js';
import { installVersion, type InstallResult, type VerifiedManifest, allocatedBytes } from './install.js';
import { chunkDirSource, type ChunkSource } from './chunk-sources.js';
import { seedIndex } from './seed-source.js';
import { cleanStale } from './mount.js';
import type { Backend } from './backends/types.js';
import type { WaitReadyResult } from './health.js';
import { verifyVersionDir, type VersionCheck } from './verify.js';
import { writeFileAtomic, ownFileOrNull, createOwnFile, assertOwnDirsBelow } from './fsutil.js';
import { packageVersion } from '../format/version.js';
import { decideMove, type Move } from './policy.js';
import { decideSwitch } from './windows.js';
import { AgentContext, type AgentDeps } from './context.js';
import { HostTrust, type InitOptions, type InitResult, type UpdateSummary } from './trust.js';
import { Boot } from './boot.js';
import { Transitions } from './transition.js';
// fleet reports (the body, enrolment, the host's token, the POST) are report.ts's
import { reportBody, sendReport, defaultPost, tokenFile as reportTokenFile } from './report.js';

export type { AgentDeps } from './context.js';

/** What the daemon's start line and reports say: the package's version (format/version.ts). */
export const AGENT_VERSION = packageVersion();

export interface InstallSpec {
  name: string;
  version?: string;
  channel?: string;
}

/** NAME, NAME@VERSION or NAME:CHANNEL */
export function parseNameSpec(text: string): InstallSpec {
  const m = /^([a-z0-9][a-z0-9._-]{0,63})(?:@([0-9A-Za-z][0-9A-Za-z.+~_-]{0,63})|:([a-z][a-z0-9_-]{0,31}))?$/.exec(text);
  if (!m) throw new UsageError(`expected NAME, NAME@VERSION or NAME:CHANNEL, got "${text}"`, { where: 'appliance' });
  return { name: m[1], version: m[2], channel: m[3] };
}

export interface ApplianceStatus {
  name: string;
  current: string | null;
  previous: string | null;
  installed: string[];
  running: boolean;
  health: ApplianceState['health'];
  verified: boolean | null;
  disk_bytes: number;
  data_disk_bytes: number;
  pending_upgrade: ApplianceState['pending_upgrade'];
  /** installed, not switched: outside the maintenance window (windows.ts) */
  waiting: ApplianceState['waiting'];
  /** a move to an older version this host refused (policy.ts) */
  held: ApplianceState['held'];
  /** an operator holds this host on a version (the signed index's holds) */
  operator_hold: ApplianceState['operator_hold'];
  failed_versions: string[];
  last_error: string | null;
  /** what the last install fetched and reused */
  last_install: ApplianceState['last_install'];
  /** this host's place in the rollout on its channel, while one is under way */
  rollout: ApplianceState['rollout'];
}

export class Agent {
  readonly state: StateDir;
  readonly exec: Exec;
  readonly host: string;
  private readonly ctx: AgentContext;
  private readonly trust: HostTrust;
  private readonly boot: Boot;
  private readonly transitions: Transitions;
  private readonly log: (line: string) => void;
  private readonly now: () => Date;

  constructor(private readonly deps: AgentDeps) {
    this.ctx = new AgentContext(deps);
    this.trust = new HostTrust(this.ctx);
    this.boot = new Boot(this.ctx);
    this.transitions = new Transitions(this.ctx, this.boot);
    ({ state: this.state, exec: this.exec, host: this.host, log: this.log, now: this.now } = this.ctx);
  }

  // ---------- plumbing ----------

  config(): Promise<AgentConfig> {
    return this.ctx.config();
  }

  configIfAny(): Promise<AgentConfig | undefined> {
    return this.ctx.configIfAny();
  }

  backend(): Promise<Backend> {
    return this.ctx.backend();
  }

  /**
   * Every mutating command runs inside this: the one lock, stale mounts of a killed run
   * cleaned, an upgrade a killed run left half-done rolled back to a bootable state.
   */
  async locked<T>(f: () => Promise<T>): Promise<T> {
    await this.state.init();
    const release = await this.state.lock();
    try {
      const cleaned = await cleanStale({ exec: this.exec, state: this.state });
      for (const c of cleaned) this.log(`cleaned a stale mount left by an earlier run: ${c}`);
      await this.transitions.recoverInterrupted();
      return await f();
    } finally {
      await release();
    }
  }

  trustedRoot(): Promise<Root> {
    return this.trust.trustedRoot();
  }

  // ---------- init / update ----------

  /** See HostTrust.init: trust moves forward only; another repository needs `force`. */
  async init(opts: InitOptions): Promise<InitResult> {
    const plan = await this.trust.planInit(opts);
    return this.locked(() => this.trust.init(opts, plan));
  }

  /** Verifies root chain and index; keeps the new root and the index version. */
  update(): Promise<UpdateSummary> {
    return this.trust.update();
  }

  // ---------- install ----------

  /** The version a spec (or, without one, agent.yaml) names now, and whose word that is. */
  private async resolveTarget(spec: InstallSpec): Promise<{ name: string; version: string; via: Move['via']; stageWindow?: string[] | null }> {
    const client = await this.trust.repo(); // its update loaded agent.yaml: a missing or broken one failed there
    const cfgApp = await this.ctx.applianceConfig(spec.name);
    const version = spec.version ?? (spec.channel ? undefined : cfgApp?.version);
    const channel = spec.channel ?? (spec.version ? undefined : cfgApp?.channel);
    const r = client.resolve(spec.name, { version, channel });
    // resolve's own order: the version, the channel, stable, else the newest version
    const image = client.currentIndex?.images[spec.name];
    // an operator's hold on this host (the signed index's word) comes before its channel, not before its own agent.yaml
    const hold = version ? undefined : holdFor(image, this.host);
    if (hold) return { name: spec.name, version: hold.version, via: { hold } };
    const via: Move['via'] = version ? { version } : channel ? { channel } : image?.channels.stable !== undefined ? { channel: 'stable' } : { newest: true };
    const rollout = 'channel' in via ? image?.rollouts?.[via.channel] : undefined;
    if (!rollout || !('channel' in via)) return { name: r.name, version: r.version, via };
    // a rollout under way on the channel: this host's place in it says which of its two versions
    const cfg = await this.config();
    const p = placeHost(rollout, { host: this.host, site: cfg.report?.site, groups: cfg.groups }, this.now());
    return { name: r.name, version: p.version, via: { channel: via.channel, rollout: { id: rollout.id, from: rollout.from, to: rollout.to, taking: p.taking, reason: p.reason } }, stageWindow: p.taking ? p.window : null };
  }

  /** Keeps this host's place in its channel's rollout in state.json (written only when it changes). */
  private async notePlace(name: string, via: Move['via']): Promise<void> {
    const place = 'channel' in via ? via.rollout ?? null : null;
    const hold = 'hold' in via ? { version: via.hold.version, reason: via.hold.reason, by: via.hold.by } : null;
    const a = (await this.state.readState()).appliances[name];
    if (JSON.stringify(a?.rollout ?? null) === JSON.stringify(place) && JSON.stringify(a?.operator_hold ?? null) === JSON.stringify(hold)) return;
    if (place && !place.taking) this.log(`${name}: stays on ${place.from}: ${place.reason}`);
    if (hold) this.log(`${name}: held on ${hold.version} by ${hold.by}: ${hold.reason}`);
    await this.state.updateAppliance(name, (s) => {
      s.rollout = place;
      s.operator_hold = hold;
    });
  }

  private async fetchManifest(spec: InstallSpec): Promise<VerifiedManifest> {
    const t = await this.resolveTarget(spec);
    return (await this.trust.repo()).manifest(t.name, t.version);
  }

  private async installVerified(verified: VerifiedManifest, source: ChunkSource): Promise<InstallResult> {
    const m = verified.manifest;
    const cfg = await this.configIfAny();
    const label = `${m.name} ${m.version}`;
    this.log(`installing ${label}`);
    const r = await installVersion({
      state: this.state,
      verified,
      source,
      concurrency: cfg?.fetch_concurrency ?? 8,
      onNotice: (msg) => this.log(msg),
      bootDisk: true,
      onProgress: this.deps.onInstallProgress ? (p) => this.deps.onInstallProgress!(p, label) : undefined,
    });
    if (!r.alreadyInstalled) {
      await this.state.updateAppliance(m.name, (a) => {
        a.last_install = { version: r.version, fetchedBytes: r.fetchedBytes, reusedBytes: r.reusedBytes, fullCompressedBytes: r.fullCompressedBytes, fetchedChunks: r.fetchedChunks, reusedChunks: r.reusedChunks, seconds: r.seconds };
      });
    }
    if (r.alreadyInstalled) this.log(`${label} is already installed`);
    else {
      const share = r.fullCompressedBytes ? ((100 * r.fetchedBytes) / r.fullCompressedBytes).toFixed(1) : '0';
      this.log(`installed ${label}: fetched ${mib(r.fetchedBytes)} MiB (${share}% of ${mib(r.fullCompressedBytes)} MiB compressed), reused ${mib(r.reusedBytes)} MiB from this host, ${r.resumedChunks} chunk(s) resumed, ${r.rangeRequests} pack range request(s), in ${r.seconds.toFixed(1)} s`);
    }
    return r;
  }

  private async ensureDataDisk(name: string, size: number | undefined): Promise<void> {
    const path = this.state.dataDisk(name);
    // one there must be ours: a planted data.img (a link to a host disk) is refused, not booted
    if ((await ownFileOrNull(path)) || size === undefined) return;
    const tmp = `${path}.new`;
    await rm(tmp, { force: true }); // a killed run's leftover (rm never follows a link)
    const fh = await createOwnFile(tmp, 0o600); // exclusive, not through a link planted since
    await fh.truncate(size).finally(() => fh.close());
    await run(this.exec, 'mkfs.ext4', ['-q', '-F', '-L', 'data', '-E', 'lazy_itable_init=1,nodiscard', tmp]);
    await rename(tmp, path);
    this.log(`created the data disk ${path} (${mib(size)} MiB)`);
  }

  /** install NAME[@VERSION|:CHANNEL]: fetch, verify, place, configure, (boot). */
  async install(specText: string, opts: { set?: Record<string, string>; dataSize?: string; start?: boolean } = {}) {
    const spec = parseNameSpec(specText);
    return this.locked(async () => {
      const verified = await this.fetchManifest(spec);
      const m = verified.manifest;
      // settings are checked before any byte is fetched: a typo costs nothing
      await this.boot.settings(m.name, m, opts.set);
      const result = await this.installVerified(verified, await this.trust.repo());
      return this.activate(m, opts, result);
    });
  }

  /** Makes a freshly installed version current (first install) or leaves upgrades to `upgrade`. */
  private async activate(m: Manifest, opts: { set?: Record<string, string>; dataSize?: string; start?: boolean }, result: InstallResult) {
    const cfgApp = await this.ctx.applianceConfig(m.name);
    await this.state.updateAppliance(m.name, (a) => {
      Object.assign(a.settings, opts.set ?? {});
    });
    const dataSize = opts.dataSize ?? cfgApp?.data_size;
    await this.ensureDataDisk(m.name, dataSize === undefined ? undefined : parseSize(dataSize, 'data size'));
    const current = await this.state.currentVersion(m.name);
    if (current && current !== m.version) {
      this.log(`${m.name} ${current} stays current; run \`upgrade ${m.name}\` to switch to ${m.version}`);
      return { install: result, current, started: false, health: null as WaitReadyResult | null };
    }
    const running = current === m.version && (await (await this.backend()).isRunning(m.name));
    if (running) {
      // never mount a filesystem a running guest has mounted: settings apply at the next configure
      this.log(`${m.name} ${m.version} is installed and running; not reconfigured (stop it and run configure to apply new settings)`);
    } else {
      await this.boot.configure(m.name, m.version);
      await this.state.setCurrent(m.name, m.version);
    }
    let health: WaitReadyResult | null = null;
    if (opts.start !== false) {
      // also when it runs already: a run killed while it booted left its health at 'starting'
      health = await this.boot.bootAndCheck(m.name, m.version);
      if (!health.ready) throw new LoopshipError('INTERNAL', `${m.name} ${m.version} did not become ready (${health.reason} after ${Math.round(health.ms / 1000)} s); last console lines:\n${health.tail}`, { where: m.name });
    }
    return { install: result, current: m.version, started: running || opts.start !== false, health };
  }

  /** import FILE.tar: the same verification and install, from an offline package. */
  async importPackage(file: string, opts: { set?: Record<string, string>; dataSize?: string; start?: boolean } = {}) {
    return this.locked(async () => {
      const root = await this.trustedRoot();
      const spool = join(this.state.root, 'import', `${process.pid}`);
      // rm -r and mkdir -p would follow an import/ planted as a symlink out of the state dir
      await assertOwnDirsBelow(this.state.root, spool);
      await rm(spool, { recursive: true, force: true });
      await mkdir(spool, { recursive: true, mode: 0o700 });
      try {
        const seeds = await seedIndex(this.state);
        const pkg = await readPackage(createReadStream(file), {
          root,
          rootWhere: this.state.rootFile,
          where: file,
          lastIndexVersion: await this.state.readIndexVersion(),
          now: this.now,
          haveChunk: async (sha) => seeds.has(sha),
          onChunk: async (sha, compressed) => writeFileAtomic(join(spool, chunkPath(sha)), compressed, { mkdir: true }),
        });
        const source = chunkDirSource(spool, file);
        // an exported package may carry newer roots and the signed index: trust advances through them
        await this.trust.acceptFromPackage(pkg, root);
        const verified: VerifiedManifest = { manifest: pkg.manifest, sha256: pkg.manifestSha256, bytes: pkg.manifestBytes, signature: pkg.signature };
        await this.boot.settings(pkg.manifest.name, pkg.manifest, opts.set);
        const result = await this.installVerified(verified, source);
        return await this.activate(pkg.manifest, opts, result);
      } finally {
        await rm(spool, { recursive: true, force: true });
        // and import/ itself once empty: a refused package leaves the state dir as it was
        await rmdir(join(this.state.root, 'import')).catch(() => {});
      }
    });
  }

  // ---------- configure ----------

  async configure(name: string, opts: { set?: Record<string, string> } = {}) {
    return this.locked(async () => {
      const version = await this.requireCurrent(name);
      if (await (await this.backend()).isRunning(name)) {
        throw new UsageError(`${name} is running; stop it first (its filesystem must not be mounted twice)`, { where: name });
      }
      const files = await this.boot.configure(name, version, opts.set);
      await this.state.updateAppliance(name, (a) => Object.assign(a.settings, opts.set ?? {}));
      return { name, version, files };
    });
  }

  private async requireCurrent(name: string): Promise<string> {
    const v = await this.state.currentVersion(name);
    if (!v) throw new UsageError(`${name} is not installed`, { where: name });
    return v;
  }

  // ---------- boot ----------

  async start(name: string) {
    return this.locked(async () => {
      const version = await this.requireCurrent(name);
      const health = await this.boot.bootAndCheck(name, version);
      if (!health.ready) throw new LoopshipError('INTERNAL', `${name} ${version} did not become ready (${health.reason}); last console lines:\n${health.tail}`, { where: name });
      return { name, version, ready: true, ms: health.ms };
    });
  }

  async stop(name: string) {
    return this.locked(async () => {
      await this.requireCurrent(name);
      await (await this.backend()).stop(name);
      await this.state.updateAppliance(name, (a) => { a.health = 'unknown'; });
      this.log(`stopped ${name}`);
      return { name, running: false };
    });
  }

  async restart(name: string) {
    await this.stop(name);
    return this.start(name);
  }

  // ---------- status ----------

  async status(name?: string): Promise<ApplianceStatus[]> {
    const names = name ? [name] : await this.state.applianceNames();
    const s = await this.state.readState();
    const backend = await this.backend();
    const out: ApplianceStatus[] = [];
    for (const n of names) {
      const installed = await this.state.installedVersions(n);
      if (name && !installed.length && !s.appliances[n]) throw new UsageError(`${n} is not installed`, { where: n });
      const a = s.appliances[n];
      let disk = 0;
      for (const v of installed) for (const f of ['verified.img', 'disk.img', 'kernel', 'initrd']) disk += await allocatedBytes(join(this.state.versionDir(n, v), f));
      out.push({
        name: n,
        current: await this.state.currentVersion(n),
        previous: a?.previous ?? null,
        installed,
        running: await backend.isRunning(n).catch(() => false),
        health: a?.health ?? 'unknown',
        verified: a?.verified ?? null,
        disk_bytes: disk,
        data_disk_bytes: await allocatedBytes(this.state.dataDisk(n)),
        pending_upgrade: a?.pending_upgrade ?? null,
        waiting: a?.waiting ?? null,
        held: a?.held ?? null,
        operator_hold: a?.operator_hold ?? null,
        failed_versions: a?.failed_versions ?? [],
        last_error: a?.last_error ?? null,
        last_install: a?.last_install ?? null,
        rollout: a?.rollout ?? null,
      });
    }
    return out;
  }

  // ---------- upgrade / rollback ----------

  /** upgrade [NAME]: everything configured (or one) to what its channel/version names now. */
  async upgrade(name?: string, opts: { force?: boolean; ignoreWindow?: boolean } = {}) {
    return this.locked(async () => {
      try {
        const r = await this.upgradeUnlocked(name, opts);
        await this.report(null).catch((e) => this.log(`report failed: ${(e as Error).message}`));
        return r;
      } catch (err) {
        await this.report((err as Error).message).catch((e) => this.log(`report failed: ${(e as Error).message}`));
        throw err;
      }
    });
  }

  private async upgradeUnlocked(name?: string, opts: { force?: boolean; ignoreWindow?: boolean } = {}) {
    const cfg = await this.config();
    await this.trust.update();
    const names = name ? [name] : [...new Set([...cfg.appliances.map((a) => a.name), ...(await this.state.applianceNames())])];
    const results: { name: string; from: string | null; to: string; status: 'up-to-date' | 'upgraded' | 'installed' | 'skipped' | 'held' | 'waiting' | 'rolled-back' | 'error'; message?: string }[] = [];
    const failures: string[] = [];
    for (const n of names) {
      const from = await this.state.currentVersion(n);
      try {
        const target = await this.resolveTarget({ name: n });
        await this.notePlace(n, target.via);
        if (from === target.version) {
          results.push({ name: n, from, to: target.version, status: 'up-to-date' });
          // on what the repository names: a held move's message no longer holds (written only then)
          if ((await this.state.readState()).appliances[n]?.held) {
            await this.state.updateAppliance(n, (a) => {
              if (a.last_error === a.held?.reason) a.last_error = null;
              a.held = null;
            });
          }
          continue;
        }
        const decision = decideMove({ name: n, from, to: target.version, via: target.via }, await this.ctx.applianceConfig(n));
        if (!decision.move) {
          this.log(`${n}: ${decision.reason}`);
          results.push({ name: n, from, to: target.version, status: 'held', message: decision.reason });
          await this.state.updateAppliance(n, (a) => {
            a.held = { to: target.version, reason: decision.reason };
            a.last_error = decision.reason;
          });
          continue;
        }
        const verified = await (await this.trust.repo()).manifest(target.name, target.version);
        const to = verified.manifest.version;
        const a = (await this.state.readState()).appliances[n];
        if (!opts.force && a?.failed_versions.includes(to)) {
          results.push({ name: n, from, to, status: 'skipped', message: `${to} failed before (upgrade --force to retry)` });
          continue;
        }
        await this.boot.settings(n, verified.manifest);
        // everything the switch will hand the toolstack, checked before a byte is fetched
        await this.boot.checkBootable(verified.manifest);
        await this.installVerified(verified, await this.trust.repo());
        if (!from) {
          await this.activate(verified.manifest, {}, { alreadyInstalled: true } as InstallResult);
          results.push({ name: n, from, to, status: 'installed' });
          continue;
        }
        // a switch stops what runs: outside its window only the pre-fetch above (a new version dir) happens
        const gate = opts.ignoreWindow ? { switch: true as const } : decideSwitch(cfg, await this.ctx.applianceConfig(n), this.now(), { name: n, to }, target.stageWindow);
        if (!gate.switch) {
          this.log(`${n}: ${gate.reason}`);
          results.push({ name: n, from, to, status: 'waiting', message: gate.reason });
          await this.state.updateAppliance(n, (a) => {
            a.waiting = { to, opens: gate.opens, reason: gate.reason };
            a.last_error = gate.reason;
          });
          continue;
        }
        await this.boot.configure(n, to);
        const r = await this.transitions.run({ name: n, from, to, why: 'upgrade of' });
        if (r.ok) {
          results.push({ name: n, from, to, status: 'upgraded' });
        } else {
          results.push({ name: n, from, to, status: 'rolled-back', message: r.health.reason });
          failures.push(`${n} ${to}: health check failed (${r.health.reason}), rolled back to ${from}`);
        }
      } catch (err) {
        const message = (err as Error).message;
        results.push({ name: n, from, to: '', status: 'error', message });
        failures.push(`${n}: ${message}`);
        await this.state.updateAppliance(n, (a) => { a.last_error = message; }).catch(() => {});
        if (names.length === 1) throw err;
      } finally {
        // any other outcome ends a wait (switched, up to date, held, failed): its message goes with it
        if (results.at(-1)?.name === n && results.at(-1)?.status !== 'waiting') await this.endWait(n).catch(() => {});
      }
    }
    if (failures.length) {
      const err = new LoopshipError('INTERNAL', `upgrade failed: ${failures.join('; ')}`, { where: 'upgrade' });
      (err as LoopshipError & { results?: unknown }).results = results;
      throw err;
    }
    return results;
  }

  /** Clears a wait recorded by an earlier round (state.json is written only then). */
  private async endWait(name: string): Promise<void> {
    if (!(await this.state.readState()).appliances[name]?.waiting) return;
    await this.state.updateAppliance(name, (a) => {
      if (a.last_error === a.waiting?.reason) a.last_error = null;
      a.waiting = null;
    });
  }

  async rollback(name: string) {
    return this.locked(async () => {
      const current = await this.requireCurrent(name);
      const a = (await this.state.readState()).appliances[name];
      const installed = await this.state.installedVersions(name);
      const target = a?.previous && installed.includes(a.previous) && a.previous !== current
        ? a.previous
        : installed.filter((v) => compareVersions(v, current) < 0).at(-1);
      if (!target) throw new UsageError(`no earlier version of ${name} is installed to roll back to`, { where: name });
      await this.boot.configure(name, target);
      const r = await this.transitions.run({ name, from: current, to: target, why: 'rollback of' });
      if (!r.ok) throw new LoopshipError('INTERNAL', `rollback to ${target} failed its health check; ${current} is running again`, { where: name });
      // do not let the daemon upgrade straight back to what was rolled back
      await this.state.updateAppliance(name, (x) => { if (!x.failed_versions.includes(current)) x.failed_versions.push(current); });
      return { name, from: current, to: target };
    });
  }

  async remove(name: string, opts: { keepData?: boolean } = {}) {
    return this.locked(async () => {
      const known = (await this.state.applianceNames()).includes(name) || Boolean((await this.state.readState()).appliances[name]);
      if (!known) throw new UsageError(`${name} is not installed`, { where: name });
      const backend = await this.backend();
      await backend.stop(name);
      await backend.forget(name);
      const dir = this.state.applianceDir(name);
      for (const e of await readdir(dir).catch(() => [] as string[])) {
        if (opts.keepData && e === 'data.img') continue;
        await rm(join(dir, e), { recursive: true, force: true });
      }
      if (!opts.keepData) await rm(dir, { recursive: true, force: true });
      const s = await this.state.readState();
      delete s.appliances[name];
      await this.state.writeState(s);
      this.log(`removed ${name}${opts.keepData ? ' (data disk kept)' : ''}`);
      return { name, removed: true, keptData: Boolean(opts.keepData) };
    });
  }

  /** Drops versions no longer needed (keeps current, previous and one waiting for its window), abandoned staging and trash. */
  async gc() {
    return this.locked(async () => {
      const s = await this.state.readState();
      const removed: string[] = [];
      let freed = 0;
      for (const n of await this.state.applianceNames()) {
        // and a version waiting for its maintenance window: removing it would only fetch it again
        const keep = new Set([await this.state.currentVersion(n), s.appliances[n]?.previous, s.appliances[n]?.waiting?.to].filter(Boolean) as string[]);
        for (const v of await this.state.installedVersions(n)) {
          if (keep.has(v)) continue;
          for (const f of ['verified.img', 'disk.img', 'kernel', 'initrd']) freed += await allocatedBytes(join(this.state.versionDir(n, v), f));
          await this.state.removeVersion(n, v);
          removed.push(`${n} ${v}`);
        }
        for (const e of await readdir(this.state.applianceDir(n)).catch(() => [] as string[])) {
          if (e === '.staging' || e.startsWith('.trash-')) {
            await rm(join(this.state.applianceDir(n), e), { recursive: true, force: true });
            removed.push(`${n}/${e}`);
          }
        }
      }
      await rm(join(this.state.root, 'import'), { recursive: true, force: true });
      for (const r of removed) this.log(`removed ${r}`);
      return { removed, freed_bytes: freed };
    });
  }

  /** Re-hashes installed versions against their signed manifests. */
  async verify(name?: string): Promise<VersionCheck[]> {
    const root = await this.trustedRoot();
    const names = name ? [name] : await this.state.applianceNames();
    const out: VersionCheck[] = [];
    for (const n of names) {
      const versions = await this.state.installedVersions(n);
      if (name && !versions.length) throw new UsageError(`${n} is not installed`, { where: n });
      for (const v of versions) {
        const r = await verifyVersionDir(this.state.versionDir(n, v), root, this.now());
        out.push(r);
        this.log(r.ok ? `${n} ${v}: ok` : `${n} ${v}: ${r.problems.length} problem(s)`);
      }
      const cur = await this.state.currentVersion(n);
      const curCheck = out.find((r) => r.name === n && r.version === cur);
      if (curCheck) await this.state.updateAppliance(n, (a) => { a.verified = curCheck.ok; }).catch(() => {});
    }
    return out;
  }

  // ---------- daemon ----------

  /** One round of the daemon: update, install/upgrade what is configured, start what should run, report. */
  async daemonOnce(): Promise<{ ok: boolean; error: string | null }> {
    let error: string | null = null;
    try {
      await this.locked(async () => {
        const cfg = await this.config();
        try {
          await this.upgradeUnlocked();
        } catch (err) {
          error = (err as Error).message;
        }
        // appliances that should run but do not (host rebooted without xendomains, crash)
        const backend = await this.backend();
        for (const a of cfg.appliances) {
          const v = await this.state.currentVersion(a.name);
          if (v && a.autostart && !(await backend.isRunning(a.name))) {
            const h = await this.boot.bootAndCheck(a.name, v).catch((e) => ({ ready: false, reason: (e as Error).message }));
            if (!h.ready) error ??= `${a.name} ${v} did not become ready (${h.reason})`;
          }
        }
      });
    } catch (err) {
      error = (err as Error).message;
    }
    const s = await this.state.readState();
    s.last_error = error;
    await this.state.writeState(s).catch(() => {});
    await this.report(error).catch((err) => this.log(`report failed: ${(err as Error).message}`));
    return { ok: error === null, error };
  }

  /**
   * POSTs this host's state to the repo server, if `report` is configured: with this host's
   * own token, enrolling with the site token the first time (report.ts).
   */
  async report(lastError: string | null): Promise<boolean> {
    const cfg = await this.configIfAny();
    if (!cfg?.report) return false;
    const body = reportBody({
      host: this.host,
      site: cfg.report.site,
      now: this.now(),
      lastError,
      appliances: await this.status(),
      channelOf: (name) => cfg.appliances.find((a) => a.name === name)?.channel,
    });
    await sendReport(body, { report: cfg.report, host: this.host, tokenFile: reportTokenFile(this.state.trustDir), post: this.deps.httpPost ?? defaultPost, log: this.log });
    return true;
  }
}

export { reportUrl } from './report.js';

const mib = (n: number): string => (n / 1024 / 1024).toFixed(1);
