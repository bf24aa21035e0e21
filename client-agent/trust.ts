// What this host trusts, and the only code that changes it: the pinned root
// (trust/root.json), the rollback floor (trust/index-version), the verified index of this
// run. Trust moves forward only: an update or an offline package may advance it; init keeps
// it for the same repository and replaces it for another only when forced.
import { readFile, rm } from 'node:fs/promises';
import { resolve as resolvePath } from 'node:path';
import YAML from 'yaml';
import {
  RepoClient, parseMetadata, serialize, compareVersions, LoopshipError, UsageError, ConfigError,
  type Root, type ReadPackageResult,
} from '../format/index.js';
import { type AgentConfig, parseConfig, updateConfigFile } from './config.js';
import { writeFileAtomic, readOwnFile } from './fsutil.js';
import type { AgentContext } from './context.js';

export interface InitOptions {
  repos: string[];
  rootKeyFile?: string;
  rootFingerprint?: string;
  backend?: 'xl' | 'qemu';
  force?: boolean;
}

export interface InitResult {
  root_version: number;
  config: string;
  fingerprint?: string;
  repository: string | null;
  kept: boolean;
  reset: string | null;
}

export interface UpdateSummary {
  root_version: number;
  index_version: number;
  source: string;
  images: Record<string, { versions: string[]; channels: Record<string, string> }>;
}

export class HostTrust {
  private client?: RepoClient;

  constructor(private readonly ctx: AgentContext) {}

  /** trust/root.json, or null on a host that trusts nothing yet. */
  async readTrustedRoot(): Promise<Root | null> {
    const { state } = this.ctx;
    try {
      return parseMetadata('root', await readOwnFile(state.rootFile), state.rootFile);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** The trusted root; on a host that has none yet, the one its config pins (an unattended install). */
  async trustedRoot(): Promise<Root> {
    const trusted = await this.readTrustedRoot();
    if (trusted) return trusted;
    const root = await this.pin(await this.ctx.config());
    await writeFileAtomic(this.ctx.state.rootFile, serialize(root), { mkdir: true });
    return root;
  }

  private async pin(cfg: AgentConfig): Promise<Root> {
    const pin = cfg.trust.root_key_file
      ? { keyArmored: await readFile(cfg.trust.root_key_file, 'utf8').catch((cause) => { throw new ConfigError(`cannot read the root key file (${(cause as NodeJS.ErrnoException).code})`, { where: cfg.trust.root_key_file, cause }); }) }
      : { fingerprint: cfg.trust.root_fingerprint! };
    let firstErr: unknown;
    for (const f of this.ctx.fetchers(cfg)) {
      try {
        return await RepoClient.pin(f, pin, { now: this.ctx.now() });
      } catch (err) {
        firstErr ??= err;
        this.ctx.log(`pinning the root from ${f.source} failed: ${(err as Error).message}`);
      }
    }
    throw firstErr;
  }

  /** The config `init` would write, checked before anything is fetched or written. */
  async planInit(opts: InitOptions): Promise<{ fields: Record<string, unknown>; cfg: AgentConfig }> {
    if (!opts.repos.length) throw new UsageError('at least one --repo is needed', { where: 'init' });
    if (Boolean(opts.rootKeyFile) === Boolean(opts.rootFingerprint)) throw new UsageError('give exactly one of --root-key FILE or --root-fingerprint FPR', { where: 'init' });
    const fields = {
      repos: opts.repos,
      trust: opts.rootKeyFile ? { root_key_file: resolvePath(opts.rootKeyFile) } : { root_fingerprint: opts.rootFingerprint },
      ...(opts.backend ? { backend: opts.backend } : {}),
    };
    const path = this.ctx.configPath;
    const current = await readFile(path, 'utf8').then((t) => (YAML.parse(t) as Record<string, unknown>) ?? {}, () => ({}));
    return { fields, cfg: parseConfig({ ...current, ...fields }, path) };
  }

  /**
   * Writes the repositories and the pin into agent.yaml and establishes trust (under the
   * agent's lock). A pin of the repository already trusted keeps the trusted root and the
   * rollback floor; a pin of another repository replaces them only with `force`, and says so.
   */
  async init(opts: InitOptions, plan: { fields: Record<string, unknown>; cfg: AgentConfig }): Promise<InitResult> {
    const { state, log } = this.ctx;
    const pinned = await this.pin(plan.cfg);
    // a trust root that no longer parses (damage, or from before repository ids) can only be replaced with --force
    const trusted = await this.readTrustedRoot().catch((err) => {
      if (opts.force && err instanceof LoopshipError && err.code === 'METADATA_INVALID') return 'unreadable' as const;
      throw err;
    });
    // a damaged floor, likewise: only --force resets it (then it is not kept, and that is said)
    const floor = await state.readIndexVersion().catch((err) => {
      if (opts.force && err instanceof LoopshipError && err.code === 'METADATA_INVALID') return 'unreadable' as const;
      throw err;
    });
    let reset: string | null = null;
    // the same repository: same id, or (a repository from before ids) the same root keys' chain
    const kept = floor !== 'unreadable' && trusted !== null && trusted !== 'unreadable' && trusted.repository === pinned.repository && (trusted.repository !== undefined || trusted.roles.root.keys.some((k) => pinned.roles.root.keys.includes(k)));
    if (trusted && !kept) {
      const what = trusted === 'unreadable'
        ? `the unreadable trusted root and the rollback floor (index version ${floor ?? 'none'})`
        : `the trusted root (repository ${trusted.repository ?? '(no id)'}, root version ${trusted.version}) and the rollback floor (index version ${floor ?? 'none'})`;
      if (!opts.force) {
        throw new UsageError(`this host trusts another repository already; init --force replaces ${what} with repository ${pinned.repository}`, { where: state.rootFile });
      }
      reset = what;
    }
    this.ctx.setConfig(await updateConfigFile(this.ctx.configPath, plan.fields));
    if (!kept) {
      await writeFileAtomic(state.rootFile, serialize(pinned), { mkdir: true });
      await rm(state.indexVersionFile, { force: true });
    }
    const root = kept ? (trusted as Root) : pinned;
    log(kept
      ? `repository ${root.repository} is trusted already: kept root version ${root.version} and index version ${floor ?? 'none'} as the floor; wrote ${this.ctx.configPath}`
      : `pinned repository ${root.repository} at root version ${root.version}${reset ? `, replacing ${reset}` : ''}; wrote ${this.ctx.configPath}`);
    return { root_version: root.version, config: this.ctx.configPath, fingerprint: plan.cfg.trust.root_fingerprint, repository: root.repository ?? null, kept, reset };
  }

  /** Verifies root chain and index; keeps the new root and the index version. */
  async update(): Promise<UpdateSummary> {
    const { state, log, now } = this.ctx;
    const cfg = await this.ctx.config();
    const trustedRoot = await this.trustedRoot();
    const client = new RepoClient({ fetchers: this.ctx.fetchers(cfg), trustedRoot, lastIndexVersion: await state.readIndexVersion(), now });
    const r = await client.update();
    if (r.root.version !== trustedRoot.version) {
      await writeFileAtomic(state.rootFile, serialize(r.root), { mkdir: true });
      log(`accepted root version(s) ${r.rootsAccepted.join(', ')}`);
    }
    await state.writeIndexVersion(r.index.version);
    this.client = client;
    const s = await state.readState();
    s.last_update = now().toISOString();
    await state.writeState(s);
    const images: UpdateSummary['images'] = {};
    for (const [name, img] of Object.entries(r.index.images)) images[name] = { versions: Object.keys(img.versions).sort(compareVersions), channels: img.channels };
    return { root_version: r.root.version, index_version: r.index.version, source: r.source, images };
  }

  /** The verified repository of this run (updating first when this run has not yet). */
  async repo(): Promise<RepoClient> {
    if (!this.client) await this.update();
    return this.client!;
  }

  /** What an offline package verified (format's readPackage): newer roots and its index advance trust. */
  async acceptFromPackage(pkg: ReadPackageResult, before: Root): Promise<void> {
    const { state, log } = this.ctx;
    if (pkg.root.version > before.version) {
      await writeFileAtomic(state.rootFile, serialize(pkg.root), { mkdir: true });
      log(`accepted root version(s) ${pkg.roots.map((r) => r.root.version).join(', ')} from the package`);
    }
    if (pkg.index) await state.writeIndexVersion(Math.max(pkg.index.index.version, (await state.readIndexVersion()) ?? 0));
  }
}
