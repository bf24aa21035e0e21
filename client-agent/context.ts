// What every part of the agent works with: the injected outside world (exec, clock, host
// name, fetchers, log), the state directory, agent.yaml loaded once and failing loudly, and
// the boot backend it names. One per command; the parts (trust, boot, transition) share it.
import { hostname } from 'node:os';
import { createFetcher, ConfigError, type Fetcher } from '../format/index.js';
import { type AgentConfig, type ApplianceConfig, loadConfig, defaultBackend } from './config.js';
import { StateDir } from './state.js';
import { type Exec, defaultExec } from './exec.js';
import type { InstallProgress } from './install.js';
import type { Backend } from './backends/types.js';
import { XlBackend } from './backends/xl.js';
import { QemuBackend } from './backends/qemu.js';
import type { HttpPost } from './report.js';

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
  httpPost?: HttpPost;
}

export class AgentContext {
  readonly state: StateDir;
  readonly exec: Exec;
  readonly host: string;
  readonly log: (line: string) => void;
  readonly now: () => Date;
  private configCache?: AgentConfig;
  private backendCache?: Backend;

  constructor(readonly deps: AgentDeps) {
    this.state = new StateDir(deps.stateDir);
    this.exec = deps.exec ?? defaultExec;
    this.host = deps.host ?? hostname();
    this.log = deps.log ?? (() => {});
    this.now = deps.now ?? (() => new Date());
    this.backendCache = deps.backend;
  }

  get configPath(): string {
    return this.deps.configPath;
  }

  async config(): Promise<AgentConfig> {
    return (this.configCache ??= await loadConfig(this.deps.configPath));
  }

  /** After init rewrote the file: what it now holds. */
  setConfig(cfg: AgentConfig): void {
    this.configCache = cfg;
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

  /** This appliance's entry in agent.yaml, if the host has one. */
  async applianceConfig(name: string): Promise<ApplianceConfig | undefined> {
    return (await this.configIfAny())?.appliances.find((a) => a.name === name);
  }

  async backend(): Promise<Backend> {
    if (this.backendCache) return this.backendCache;
    const kind = (await this.configIfAny())?.backend ?? defaultBackend();
    this.backendCache =
      kind === 'xl' ? new XlBackend({ exec: this.exec, log: (l) => this.log(l) }) : new QemuBackend({ exec: this.exec, runDir: this.state.runDir, logDir: this.state.logDir });
    return this.backendCache;
  }

  fetchers(cfg: AgentConfig): Fetcher[] {
    const make = this.deps.createFetcher ?? ((s: string) => createFetcher(s));
    return cfg.repos.map(make);
  }
}
