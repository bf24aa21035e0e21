// A boot backend for tests of the agent's logic (there is neither Xen nor time for real
// boots in unit tests): "boots" by printing to a console log what a guest would — the
// hostname read from the disk it was given (so configure must have reached that disk)
// and the ready marker, unless the version is marked bad.
import { appendFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Backend, DomainSpec } from '../../client-agent/backends/types.js';
import { renderXlConfig } from '../../client-agent/backends/xl.js';
import { LoopshipError } from '../../format/index.js';

export class FakeBackend implements Backend {
  readonly kind = 'xl' as const;
  readonly livenessIntervalMs = 50;
  readonly running = new Map<string, DomainSpec>();
  readonly starts: DomainSpec[] = [];
  readonly stops: string[] = [];
  readonly autostart = new Map<string, boolean>();
  readonly bad = new Set<string>();
  /** versions whose guest crashes at once and is brought up again, again and again (xl's on_crash = "restart") */
  readonly crashLoop = new Set<string>();
  /** names whose stop returns while the guest stays up (a stop that returned early, seen on real Xen) */
  readonly stopLeavesRunning = new Set<string>();
  /** names whose stop throws this (xl destroy failing, say) */
  readonly stopFails = new Map<string, Error>();

  private readonly instances = new Map<string, number>();
  private nextInstance = 1;
  constructor(readonly logDir: string, readonly marker = 'LOOPSHIP-READY') {}

  /** versions whose spec validate() refuses (a config the toolstack would not take) */
  readonly invalid = new Set<string>();
  readonly validated: DomainSpec[] = [];

  // what the real xl backend checks: the config it would write must render
  validate(spec: DomainSpec): void {
    this.validated.push(spec);
    if (this.invalid.has(spec.version)) throw new LoopshipError('CONFIG_INVALID', `fake: ${spec.name} ${spec.version} refused`);
    renderXlConfig(spec);
  }

  async start(spec: DomainSpec): Promise<void> {
    if (this.running.has(spec.name)) return;
    this.running.set(spec.name, spec);
    this.instances.set(spec.name, this.nextInstance++);
    this.starts.push(spec);
    if (this.crashLoop.has(spec.version)) {
      const loop = setInterval(() => {
        if (this.running.get(spec.name) !== spec) return clearInterval(loop);
        appendFile(this.consoleLog(spec.name), `Linux version fake (${spec.version})\nKernel panic - not syncing: Fatal exception\n`).catch(() => {});
        this.instances.set(spec.name, this.nextInstance++);
      }, 30);
      loop.unref(); // never what keeps a test process alive
    }
    await mkdir(this.logDir, { recursive: true });
    const hostname = (await execa('debugfs', ['-R', 'cat /etc/hostname', spec.disk], { reject: false })).stdout.trim();
    const log = this.consoleLog(spec.name);
    // the guest prints a little later, as a real one would
    if (!this.crashLoop.has(spec.version)) setTimeout(() => {
      void appendFile(log, `Linux version fake (${spec.version})\nhostname: ${hostname}\n${this.bad.has(spec.version) ? 'Kernel panic - not syncing\n' : `${this.marker}\n`}`);
    }, 50);
  }
  async stop(name: string): Promise<void> {
    const failure = this.stopFails.get(name);
    if (failure) throw failure;
    if (this.stopLeavesRunning.has(name)) return;
    if (this.running.delete(name)) this.stops.push(name);
  }
  async isRunning(name: string): Promise<boolean> {
    return this.running.has(name);
  }
  async instanceId(name: string): Promise<string | null> {
    return this.running.has(name) ? String(this.instances.get(name)) : null;
  }
  consoleLog(name: string): string {
    return join(this.logDir, `guest-${name}.log`);
  }
  async setAutostart(name: string, enabled: boolean): Promise<void> {
    this.autostart.set(name, enabled);
  }
  async forget(name: string): Promise<void> {
    this.autostart.delete(name);
  }
}
