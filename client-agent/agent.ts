// The agent's operations (what each CLI command does), over injected dependencies: the
// state dir, the config file, a boot backend, exec, fetchers, clock and host name. The
// CLI only parses options and prints; tests drive this class directly.
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import YAML from 'yaml';
import { join, resolve as resolvePath } from 'node:path';
import {
  RepoClient, createFetcher, readPackage, decodeChunk, parseMetadata, serialize, compareVersions, chunkPath,
  LoopshipError, UsageError, ConfigError, type Fetcher, type Root, type Manifest, type Chunk, type Index,
} from '../format/index.js';
import { type AgentConfig, type ApplianceConfig, type SettingInput, loadConfig, updateConfigFile, parseSize, defaultBackend } from './config.js';
import { StateDir, type ApplianceState } from './state.js';
import { type Exec, defaultExec, run } from './exec.js';
import { installVersion, makeBootDisk, BOOT_DISK, type InstallResult, type InstallProgress, type VerifiedManifest, type ChunkSource, allocatedBytes, seedIndex } from './install.js';
import { resolveSettings, type Settings } from './settings.js';
import { cleanStale, withMountedImage } from './mount.js';
import { writeHostSettings } from './configure.js';
import type { Backend, DomainSpec } from './backends/types.js';
import { stableMac } from './backends/types.js';
import { XlBackend } from './backends/xl.js';
import { QemuBackend } from './backends/qemu.js';
import { waitReady, fileSize, type WaitReadyResult } from './health.js';
import { verifyVersionDir, type VersionCheck } from './verify.js';
import { writeFileAtomic, readOwnFile, ownFileOrNull, createOwnFile, assertOwnDirsBelow } from './fsutil.js';
import { packageVersion } from '../format/version.js';
import { pauseAt } from './pause.js';
import { decideMove, type Move } from './policy.js';
// fleet reports (the body, enrolment, the host's token, the POST) are report.ts's
import { reportBody, sendReport, defaultPost, tokenFile as reportTokenFile } from './report.js';

/** What the daemon's start line and reports say: the package's version (format/version.ts). */
export const AGENT_VERSION = packageVersion();

export interface AgentDeps {
  configPath: string;
  stateDir: string;
  exec?: Exec;
  /** default: from the config (xl or qemu) */
  backend?: Backend;
  createFetcher?: (source: string) => Fetcher;
  now?: () => Date;
  host?: string;
  /** human-readable progress lines (stderr in the CLI) */
  log?: (line: string) => void;
  onInstallProgress?: (p: InstallProgress, label: string) => void;
  /** for reports and enrolment (report.ts): the global fetch by default */
  httpPost?: import('./report.js').HttpPost;
}

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
  failed_versions: string[];
  last_error: string | null;
  /** what the last install fetched and reused */
  last_install: ApplianceState['last_install'];
}

export class Agent {
  readonly state: StateDir;
  readonly exec: Exec;
  readonly host: string;
  private readonly log: (line: string) => void;
  private readonly now: () => Date;
  private configCache?: AgentConfig;
  private backendCache?: Backend;
  private client?: RepoClient;
  private index?: Index;

  constructor(private readonly deps: AgentDeps) {
    this.state = new StateDir(deps.stateDir);
    this.exec = deps.exec ?? defaultExec;
    this.host = deps.host ?? hostname();
    this.log = deps.log ?? (() => {});
    this.now = deps.now ?? (() => new Date());
    this.backendCache = deps.backend;
  }

  // ---------- plumbing ----------

  async config(): Promise<AgentConfig> {
    return (this.configCache ??= await loadConfig(this.deps.configPath));
  }

  /**
   * The config, or undefined on a host that has none yet (commands such as status and stop
   * work there). A config that exists but is broken is an error naming the file and field:
   * never silently run without its settings, Xen overrides or autostart.
   */
  async configIfAny(): Promise<AgentConfig | undefined> {
    try {
      return await this.config();
    } catch (err) {
      if (err instanceof ConfigError && ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async backend(): Promise<Backend> {
    if (this.backendCache) return this.backendCache;
    const cfg = await this.configIfAny();
    const kind = cfg?.backend ?? defaultBackend();
    this.backendCache =
      kind === 'xl' ? new XlBackend({ exec: this.exec, log: (l) => this.log(l) }) : new QemuBackend({ exec: this.exec, runDir: this.state.runDir, logDir: this.state.logDir });
    return this.backendCache;
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
      await this.recoverPendingUpgrades();
      return await f();
    } finally {
      await release();
    }
  }

  private fetchers(cfg: AgentConfig): Fetcher[] {
    const make = this.deps.createFetcher ?? ((s: string) => createFetcher(s));
    return cfg.repos.map(make);
  }

  async trustedRoot(): Promise<Root> {
    const trusted = await this.readTrustedRoot();
    if (trusted) return trusted;
    // unattended installs write the config with the pin; the first run establishes trust
    const cfg = await this.config();
    const root = await this.pin(cfg);
    await writeFileAtomic(this.state.rootFile, serialize(root), { mkdir: true });
    return root;
  }

  private async pin(cfg: AgentConfig): Promise<Root> {
    const pin = cfg.trust.root_key_file
      ? { keyArmored: await readFile(cfg.trust.root_key_file, 'utf8').catch((cause) => { throw new ConfigError(`cannot read the root key file (${(cause as NodeJS.ErrnoException).code})`, { where: cfg.trust.root_key_file, cause }); }) }
      : { fingerprint: cfg.trust.root_fingerprint! };
    let firstErr: unknown;
    for (const f of this.fetchers(cfg)) {
      try {
        return await RepoClient.pin(f, pin, { now: this.now() });
      } catch (err) {
        firstErr ??= err;
        this.log(`pinning the root from ${f.source} failed: ${(err as Error).message}`);
      }
    }
    throw firstErr;
  }

  // ---------- init / update ----------

  /**
   * Writes the repositories and the pin into agent.yaml and establishes trust. Trust only
   * moves forward: a pin of the repository already trusted keeps the trusted root and the
   * rollback floor; a pin of another repository replaces them only with `force`, and says so.
   */
  async init(opts: { repos: string[]; rootKeyFile?: string; rootFingerprint?: string; backend?: 'xl' | 'qemu'; force?: boolean }): Promise<{ root_version: number; config: string; fingerprint?: string; repository: string | null; kept: boolean; reset: string | null }> {
    if (!opts.repos.length) throw new UsageError('at least one --repo is needed', { where: 'init' });
    if (Boolean(opts.rootKeyFile) === Boolean(opts.rootFingerprint)) throw new UsageError('give exactly one of --root-key FILE or --root-fingerprint FPR', { where: 'init' });
    const fields = {
      repos: opts.repos,
      trust: opts.rootKeyFile ? { root_key_file: resolvePath(opts.rootKeyFile) } : { root_fingerprint: opts.rootFingerprint },
      ...(opts.backend ? { backend: opts.backend } : {}),
    };
    // what the file will hold, checked before anything is fetched or written
    const { parseConfig } = await import('./config.js');
    const current = await readFile(this.deps.configPath, 'utf8').then((t) => (YAML.parse(t) as Record<string, unknown>) ?? {}, () => ({}));
    const cfg = parseConfig({ ...current, ...fields }, this.deps.configPath);
    return this.locked(async () => {
      const pinned = await this.pin(cfg);
      // a trust root that no longer parses (damage, or from before repository ids) can only be replaced with --force
      const trusted = await this.readTrustedRoot().catch((err) => {
        if (opts.force && err instanceof LoopshipError && err.code === 'METADATA_INVALID') return 'unreadable' as const;
        throw err;
      });
      const floor = await this.state.readIndexVersion();
      let reset: string | null = null;
      // the same repository: same id, or (a repository from before ids) the same root keys' chain
      const kept = trusted !== null && trusted !== 'unreadable' && trusted.repository === pinned.repository && (trusted.repository !== undefined || trusted.roles.root.keys.some((k) => pinned.roles.root.keys.includes(k)));
      if (trusted && !kept) {
        const what = trusted === 'unreadable'
          ? `the unreadable trusted root and the rollback floor (index version ${floor ?? 'none'})`
          : `the trusted root (repository ${trusted.repository ?? '(no id)'}, root version ${trusted.version}) and the rollback floor (index version ${floor ?? 'none'})`;
        if (!opts.force) {
          throw new UsageError(`this host trusts another repository already; init --force replaces ${what} with repository ${pinned.repository}`, { where: this.state.rootFile });
        }
        reset = what;
      }
      this.configCache = await updateConfigFile(this.deps.configPath, fields);
      if (!kept) {
        await writeFileAtomic(this.state.rootFile, serialize(pinned), { mkdir: true });
        await rm(this.state.indexVersionFile, { force: true });
      }
      const root = kept ? (trusted as Root) : pinned;
      this.log(kept
        ? `repository ${root.repository} is trusted already: kept root version ${root.version} and index version ${floor ?? 'none'} as the floor; wrote ${this.deps.configPath}`
        : `pinned repository ${root.repository} at root version ${root.version}${reset ? `, replacing ${reset}` : ''}; wrote ${this.deps.configPath}`);
      return { root_version: root.version, config: this.deps.configPath, fingerprint: cfg.trust.root_fingerprint, repository: root.repository ?? null, kept, reset };
    });
  }

  /** trust/root.json, or null on a host that trusts nothing yet. */
  private async readTrustedRoot(): Promise<Root | null> {
    try {
      return parseMetadata('root', await readOwnFile(this.state.rootFile), this.state.rootFile);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** Verifies root chain and index; keeps the new root and the index version. */
  async update(): Promise<{ root_version: number; index_version: number; source: string; images: Record<string, { versions: string[]; channels: Record<string, string> }> }> {
    const cfg = await this.config();
    const trustedRoot = await this.trustedRoot();
    const client = new RepoClient({ fetchers: this.fetchers(cfg), trustedRoot, lastIndexVersion: await this.state.readIndexVersion(), now: this.now });
    const r = await client.update();
    if (r.root.version !== trustedRoot.version) {
      await writeFileAtomic(this.state.rootFile, serialize(r.root), { mkdir: true });
      this.log(`accepted root version(s) ${r.rootsAccepted.join(', ')}`);
    }
    await this.state.writeIndexVersion(r.index.version);
    this.client = client;
    this.index = r.index;
    const s = await this.state.readState();
    s.last_update = this.now().toISOString();
    await this.state.writeState(s);
    const images: Record<string, { versions: string[]; channels: Record<string, string> }> = {};
    for (const [name, img] of Object.entries(r.index.images)) images[name] = { versions: Object.keys(img.versions).sort(compareVersions), channels: img.channels };
    return { root_version: r.root.version, index_version: r.index.version, source: r.source, images };
  }

  private async repo(): Promise<RepoClient> {
    if (!this.client) await this.update();
    return this.client!;
  }

  // ---------- install ----------

  private applianceConfig(cfg: AgentConfig | undefined, name: string): ApplianceConfig | undefined {
    return cfg?.appliances.find((a) => a.name === name);
  }

  private async effectiveSettings(name: string, manifest: Manifest, extra: Record<string, SettingInput> = {}): Promise<Settings> {
    const cfg = await this.configIfAny();
    const st = (await this.state.readState()).appliances[name];
    const given = { ...(this.applianceConfig(cfg, name)?.settings ?? {}), ...(st?.settings ?? {}), ...extra };
    return resolveSettings(manifest.settings, given, `${manifest.name} ${manifest.version}`);
  }

  /** The version a spec (or, without one, agent.yaml) names now, and whose word that is. */
  private async resolveTarget(spec: InstallSpec): Promise<{ name: string; version: string; via: Move['via'] }> {
    const client = await this.repo();
    const cfgApp = this.applianceConfig(await this.config(), spec.name);
    const version = spec.version ?? (spec.channel ? undefined : cfgApp?.version);
    const channel = spec.channel ?? (spec.version ? undefined : cfgApp?.channel);
    const r = client.resolve(spec.name, { version, channel });
    // resolve's own order: the version, the channel, stable, else the newest version
    const hasStable = client.currentIndex?.images[spec.name]?.channels.stable !== undefined;
    const via: Move['via'] = version ? { version } : channel ? { channel } : hasStable ? { channel: 'stable' } : { newest: true };
    return { name: r.name, version: r.version, via };
  }

  private async fetchManifest(spec: InstallSpec): Promise<VerifiedManifest> {
    const t = await this.resolveTarget(spec);
    return (await this.repo()).manifest(t.name, t.version);
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
    const { rename } = await import('node:fs/promises');
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
      await this.effectiveSettings(m.name, m, opts.set);
      const result = await this.installVerified(verified, await this.repo());
      return this.activate(m, opts, result);
    });
  }

  /** Makes a freshly installed version current (first install) or leaves upgrades to `upgrade`. */
  private async activate(m: Manifest, opts: { set?: Record<string, string>; dataSize?: string; start?: boolean }, result: InstallResult) {
    const cfgApp = this.applianceConfig(await this.configIfAny(), m.name);
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
      await this.configureVersion(m.name, m.version);
      await this.state.setCurrent(m.name, m.version);
    }
    let health: WaitReadyResult | null = null;
    if (opts.start !== false) {
      // also when it runs already: a run killed while it booted left its health at 'starting'
      health = await this.bootAndCheck(m.name, m.version);
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
        const source: ChunkSource = {
          chunk: async (c: Chunk, where?: string) => decodeChunk(await readOwnFile(join(spool, chunkPath(c.sha256))), c, where ?? file),
        };
        // an exported package may carry newer roots and the signed index: trust advances through them
        if (pkg.root.version > root.version) {
          await writeFileAtomic(this.state.rootFile, serialize(pkg.root), { mkdir: true });
          this.log(`accepted root version(s) ${pkg.roots.map((r) => r.root.version).join(', ')} from the package`);
        }
        if (pkg.index) await this.state.writeIndexVersion(Math.max(pkg.index.index.version, (await this.state.readIndexVersion()) ?? 0));
        const verified: VerifiedManifest = { manifest: pkg.manifest, sha256: pkg.manifestSha256, bytes: pkg.manifestBytes, signature: pkg.signature };
        await this.effectiveSettings(pkg.manifest.name, pkg.manifest, opts.set);
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

  private async versionManifest(name: string, version: string): Promise<Manifest> {
    const p = join(this.state.versionDir(name, version), 'manifest.json');
    return parseMetadata('manifest', await readOwnFile(p), p);
  }

  private async configureVersion(name: string, version: string, extra?: Record<string, string>): Promise<string[]> {
    const m = await this.versionManifest(name, version);
    const settings = await this.effectiveSettings(name, m, extra);
    const disk = join(this.state.versionDir(name, version), BOOT_DISK);
    // the first configure of a version starts from the verified image
    if (!(await ownFileOrNull(disk))) await makeBootDisk(this.state.versionDir(name, version), m);
    const files = await withMountedImage({ exec: this.exec, state: this.state }, disk, name, (mp) =>
      writeHostSettings(mp, m, settings, { host: this.host, configuredAt: this.now().toISOString(), image: disk }),
    );
    this.log(`configured ${name} ${version}: ${files.join(', ')}`);
    return files;
  }

  async configure(name: string, opts: { set?: Record<string, string> } = {}) {
    return this.locked(async () => {
      const version = await this.requireCurrent(name);
      if (await (await this.backend()).isRunning(name)) {
        throw new UsageError(`${name} is running; stop it first (its filesystem must not be mounted twice)`, { where: name });
      }
      const files = await this.configureVersion(name, version, opts.set);
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

  private async domainSpec(name: string, version: string): Promise<DomainSpec> {
    return this.domainSpecFor(await this.versionManifest(name, version));
  }

  /** What booting `m` hands the backend: the manifest's boot and Xen fields with this host's overrides. */
  private async domainSpecFor(m: Manifest): Promise<DomainSpec> {
    const { name, version } = m;
    const dir = this.state.versionDir(name, version);
    const data = this.state.dataDisk(name);
    const local = this.applianceConfig(await this.configIfAny(), name)?.xen ?? {};
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
      macs: Array.from({ length: m.xen.network.nics }, (_, i) => stableMac(this.host, name, i)),
      ...(local.tsc_mode ? { tscMode: local.tsc_mode } : {}),
    };
  }

  /**
   * Throws unless the backend would take `m` as it is (rendered config, exec arguments):
   * run before anything running is stopped, so a version the toolstack refuses costs no outage.
   */
  private async checkBootable(m: Manifest): Promise<void> {
    const backend = await this.backend();
    try {
      backend.validate(await this.domainSpecFor(m));
    } catch (err) {
      if (err instanceof LoopshipError && err.code !== 'CONFIG_INVALID') throw err;
      throw new ConfigError(`${m.name} ${m.version} cannot be booted here: ${(err as Error).message}`, { where: `${m.name} ${m.version}`, cause: err });
    }
  }

  /** The files a boot hands the toolstack are the agent's own, complete: never a planted link to a host disk. */
  private async checkBootFiles(spec: DomainSpec): Promise<void> {
    for (const f of [spec.kernel, spec.initrd, spec.disk]) {
      if (f && !(await ownFileOrNull(f))) throw new LoopshipError('STATE_UNSAFE', `missing: ${spec.name} ${spec.version} cannot be booted without it`, { where: f });
    }
  }

  private async healthTimeoutMs(): Promise<number> {
    return ((await this.configIfAny())?.health_timeout_s ?? 300) * 1000;
  }

  /** Boots `version` and waits for its ready marker; records the health. */
  private async bootAndCheck(name: string, version: string): Promise<WaitReadyResult> {
    const backend = await this.backend();
    const m = await this.versionManifest(name, version);
    const log = backend.consoleLog(name);
    // the outcome of a wait: into the state and the log, the same way for both paths below
    const record = async (health: WaitReadyResult): Promise<WaitReadyResult> => {
      await this.state.updateAppliance(name, (a) => {
        a.health = health.ready ? 'healthy' : 'unhealthy';
        a.health_checked_at = this.now().toISOString();
      });
      this.log(health.ready ? `${name} ${version} is ready after ${(health.ms / 1000).toFixed(1)} s${health.line ? `: ${health.line}` : ''}` : `${name} ${version} did not become ready: ${health.reason}`);
      return health;
    };
    // the instance being checked: a crash or reboot brought back up by on_crash/on_reboot is
    // a new one, and a guest that restarts before it is ready is not healthy (a crash loop
    // would otherwise look alive until the timeout)
    const aliveAs = (instance: string | null) => async () => {
      const now = await backend.instanceId(name).catch(() => undefined);
      // a toolstack that cannot say (xl list failing) is no reason to call the guest dead: the timeout still bounds the wait
      if (now === undefined) return true;
      return now === null ? false : instance === null || now === instance ? true : ('restarted' as const);
    };
    const running = await backend.instanceId(name);
    if (running !== null) {
      // already up: its health is what we last saw, or what its console shows since it booted
      const known = (await this.state.readState()).appliances[name]?.health;
      this.log(`${name} is already running`);
      if (known === 'healthy') return { ready: true, reason: 'marker', ms: 0, tail: '' };
      return record(await waitReady({ logPath: log, marker: m.boot.ready_marker, fromOffset: 0, timeoutMs: await this.healthTimeoutMs(), isAlive: aliveAs(running), aliveEveryMs: backend.livenessIntervalMs }));
    }
    const offset = backend.kind === 'qemu' ? 0 : await fileSize(log);
    await this.state.updateAppliance(name, (a) => { a.health = 'starting'; });
    this.log(`starting ${name} ${version} (${backend.kind})`);
    const spec = await this.domainSpec(name, version);
    await this.checkBootFiles(spec);
    await backend.start(spec);
    const instance = await backend.instanceId(name);
    await pauseAt('boot');
    const autostart = this.applianceConfig(await this.configIfAny(), name)?.autostart ?? true;
    await backend.setAutostart(name, autostart);
    return record(await waitReady({ logPath: log, marker: m.boot.ready_marker, fromOffset: offset, timeoutMs: await this.healthTimeoutMs(), isAlive: aliveAs(instance), aliveEveryMs: backend.livenessIntervalMs }));
  }

  async start(name: string) {
    return this.locked(async () => {
      const version = await this.requireCurrent(name);
      const health = await this.bootAndCheck(name, version);
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
        failed_versions: a?.failed_versions ?? [],
        last_error: a?.last_error ?? null,
        last_install: a?.last_install ?? null,
      });
    }
    return out;
  }

  // ---------- upgrade / rollback ----------

  /** A run killed mid-upgrade left `pending_upgrade`: go back to the old version, bootable. */
  private async recoverPendingUpgrades(): Promise<void> {
    const s = await this.state.readState();
    for (const [name, a] of Object.entries(s.appliances)) {
      if (!a.pending_upgrade) continue;
      const { from, to } = a.pending_upgrade;
      this.log(`an upgrade of ${name} to ${to} was interrupted: returning to ${from ?? 'nothing'}`);
      const backend = await this.backend();
      await backend.stop(name).catch(() => {});
      if (from && (await this.state.installedVersions(name)).includes(from)) {
        await this.state.setCurrent(name, from);
        await backend.start(await this.domainSpec(name, from)).catch((err) => this.log(`could not start ${name} ${from}: ${(err as Error).message}`));
      }
      await this.state.updateAppliance(name, (x) => {
        x.pending_upgrade = null;
        x.health = 'unknown';
      });
    }
  }

  /** Switches to `to` and checks it; on failure switches back to `from` and boots it. */
  private async switchAndCheck(name: string, from: string | null, to: string, why: string): Promise<{ ok: boolean; health: WaitReadyResult }> {
    const backend = await this.backend();
    // planned before anything is stopped: a version the backend would refuse leaves `from` running
    await this.checkBootable(await this.versionManifest(name, to));
    await this.checkBootFiles(await this.domainSpec(name, to));
    await this.state.updateAppliance(name, (a) => {
      a.pending_upgrade = { from, to, started_at: this.now().toISOString() };
    });
    try {
      await backend.stop(name);
      // the boot below takes a domain it finds for the new version "already running": one
      // still there now is the old one (a stop that returned early, CI on real Xen)
      if (await backend.isRunning(name)) throw new LoopshipError('EXEC_FAILED', `${name}${from ? ` ${from}` : ''} is still running after it was stopped`);
    } catch (err) {
      await this.state.updateAppliance(name, (a) => { a.pending_upgrade = null; });
      throw new LoopshipError('EXEC_FAILED', `${why} ${name} to ${to} not started: ${(err as Error).message}`, { where: name, cause: err });
    }
    await this.state.setCurrent(name, to);
    let health: WaitReadyResult;
    try {
      health = await this.bootAndCheck(name, to);
    } catch (err) {
      health = { ready: false, reason: 'stopped', ms: 0, tail: (err as Error).message };
    }
    if (health.ready) {
      await this.state.updateAppliance(name, (a) => {
        if (from && from !== to) a.previous = from;
        a.pending_upgrade = null;
        a.failed_versions = a.failed_versions.filter((v) => v !== to);
        a.last_error = null;
      });
      return { ok: true, health };
    }
    const msg = `${why} ${name} to ${to} failed its health check (${health.reason} after ${Math.round(health.ms / 1000)} s)`;
    this.log(`${msg}; switching back to ${from ?? 'nothing'}`);
    await backend.stop(name, { timeoutMs: 10_000 }).catch(() => {});
    if (from) {
      await this.state.setCurrent(name, from);
      const back = await this.bootAndCheck(name, from).catch((err) => ({ ready: false, reason: 'stopped' as const, ms: 0, tail: (err as Error).message }));
      if (!back.ready) this.log(`warning: ${name} ${from} did not become ready again either (${back.reason})`);
    }
    await this.state.updateAppliance(name, (a) => {
      a.pending_upgrade = null;
      if (!a.failed_versions.includes(to)) a.failed_versions.push(to);
      a.last_error = `${msg}; last console lines: ${health.tail.split('\n').slice(-3).join(' | ')}`;
    });
    return { ok: false, health };
  }

  /** upgrade [NAME]: everything configured (or one) to what its channel/version names now. */
  async upgrade(name?: string, opts: { force?: boolean } = {}) {
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

  private async upgradeUnlocked(name?: string, opts: { force?: boolean } = {}) {
    const cfg = await this.config();
    await this.update();
    const names = name ? [name] : [...new Set([...cfg.appliances.map((a) => a.name), ...(await this.state.applianceNames())])];
    const results: { name: string; from: string | null; to: string; status: 'up-to-date' | 'upgraded' | 'installed' | 'skipped' | 'held' | 'rolled-back' | 'error'; message?: string }[] = [];
    const failures: string[] = [];
    for (const n of names) {
      const from = await this.state.currentVersion(n);
      try {
        const target = await this.resolveTarget({ name: n });
        if (from === target.version) {
          results.push({ name: n, from, to: target.version, status: 'up-to-date' });
          // on what the repository names: a held move's message no longer holds
          await this.state.updateAppliance(n, (a) => { if (a.last_error?.includes('not downgrading')) a.last_error = null; });
          continue;
        }
        const decision = decideMove({ name: n, from, to: target.version, via: target.via }, this.applianceConfig(cfg, n));
        if (!decision.move) {
          this.log(`${n}: ${decision.reason}`);
          results.push({ name: n, from, to: target.version, status: 'held', message: decision.reason });
          await this.state.updateAppliance(n, (a) => { a.last_error = decision.reason; });
          continue;
        }
        const verified = await (await this.repo()).manifest(target.name, target.version);
        const to = verified.manifest.version;
        const a = (await this.state.readState()).appliances[n];
        if (!opts.force && a?.failed_versions.includes(to)) {
          results.push({ name: n, from, to, status: 'skipped', message: `${to} failed before (upgrade --force to retry)` });
          continue;
        }
        await this.effectiveSettings(n, verified.manifest);
        // everything the switch will hand the toolstack, checked before a byte is fetched
        await this.checkBootable(verified.manifest);
        await this.installVerified(verified, await this.repo());
        if (!from) {
          await this.activate(verified.manifest, {}, { alreadyInstalled: true } as InstallResult);
          results.push({ name: n, from, to, status: 'installed' });
          continue;
        }
        await this.configureVersion(n, to);
        const r = await this.switchAndCheck(n, from, to, 'upgrade of');
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
      }
    }
    if (failures.length) {
      const err = new LoopshipError('INTERNAL', `upgrade failed: ${failures.join('; ')}`, { where: 'upgrade' });
      (err as LoopshipError & { results?: unknown }).results = results;
      throw err;
    }
    return results;
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
      await this.configureVersion(name, target);
      const r = await this.switchAndCheck(name, current, target, 'rollback of');
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

  /** Drops versions no longer needed (keeps current and previous), abandoned staging and trash. */
  async gc() {
    return this.locked(async () => {
      const s = await this.state.readState();
      const removed: string[] = [];
      let freed = 0;
      for (const n of await this.state.applianceNames()) {
        const keep = new Set([await this.state.currentVersion(n), s.appliances[n]?.previous].filter(Boolean) as string[]);
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
            const h = await this.bootAndCheck(a.name, v).catch((e) => ({ ready: false, reason: (e as Error).message }));
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
      channelOf: (name) => this.applianceConfig(cfg, name)?.channel,
    });
    await sendReport(body, { report: cfg.report, host: this.host, tokenFile: reportTokenFile(this.state.trustDir), post: this.deps.httpPost ?? defaultPost, log: this.log });
    return true;
  }
}

export { reportUrl } from './report.js';

const mib = (n: number): string => (n / 1024 / 1024).toFixed(1);
