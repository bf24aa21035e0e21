// QEMU backend, for hosts without Xen and for tests: the same kernel, initrd, cmdline and
// disks (as virtio), console to a log file in the state dir, daemonized with a pid file.
// Stop is graceful first (QMP system_powerdown), then SIGTERM, then SIGKILL.
import { readFile, rm, mkdir, rename, open } from 'node:fs/promises';
import { writeFileAtomic } from '../fsutil.js';
import { constants } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { LoopshipError } from '../../format/index.js';
import { type Exec, run, defaultExec } from '../exec.js';
import { processAlive } from '../state.js';
import type { Backend, DomainSpec } from './types.js';

export interface QemuOptions {
  exec?: Exec;
  qemu?: string;
  /** pid files and QMP sockets */
  runDir: string;
  /** console logs */
  logDir: string;
  /** 'auto': kvm when /dev/kvm opens, with tcg as the fallback */
  accel?: 'auto' | 'tcg' | 'kvm';
  sleep?: (ms: number) => Promise<void>;
}

/** Xen guests see xvdX; under virtio the same disks are vdX. */
export function qemuCmdline(cmdline: string): string {
  const base = cmdline.replace(/\/dev\/xvd([a-z])/g, '/dev/vd$1').replace(/\bconsole=hvc0\b/g, '');
  return `${base} console=ttyS0`.replace(/\s+/g, ' ').trim();
}

/**
 * KVM is used only when the CPU offers hardware virtualisation (vmx/svm) and /dev/kvm
 * opens. A /dev/kvm without them (nested hosts, PVM) accepts the VM and then never runs a
 * stock kernel, and qemu does not fall back to tcg by itself in that case.
 */
export async function kvmUsable(cpuinfo = '/proc/cpuinfo', dev = '/dev/kvm'): Promise<boolean> {
  const flags = await readFile(cpuinfo, 'utf8').catch(() => '');
  if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(flags)) return false;
  try {
    const fh = await open(dev, constants.O_RDWR);
    await fh.close();
    return true;
  } catch {
    return false;
  }
}

export function qemuArgs(spec: DomainSpec, files: { pidFile: string; qmpSocket: string; consoleLog: string }, accel: string[]): string[] {
  const args = [
    '-name', spec.name,
    ...accel.flatMap((a) => ['-accel', a]),
    '-m', String(spec.memory),
    '-smp', String(spec.vcpus),
    '-kernel', spec.kernel,
    ...(spec.initrd ? ['-initrd', spec.initrd] : []),
    '-append', qemuCmdline(spec.cmdline),
    '-drive', `file=${spec.disk},format=raw,if=virtio,cache=writeback`,
    ...(spec.dataDisk ? ['-drive', `file=${spec.dataDisk},format=raw,if=virtio,cache=writeback`] : []),
    ...(spec.nics > 0 ? spec.macs.slice(0, spec.nics).flatMap((mac) => ['-nic', `user,model=virtio-net-pci,mac=${mac}`]) : ['-nic', 'none']),
    '-serial', `file:${files.consoleLog}`,
    '-display', 'none',
    '-monitor', 'none',
    '-qmp', `unix:${files.qmpSocket},server=on,wait=off`,
    '-pidfile', files.pidFile,
    '-daemonize',
  ];
  for (const p of [spec.disk, spec.dataDisk ?? '']) {
    if (p.includes(',')) throw new LoopshipError('CONFIG_INVALID', `disk path may not contain ",": ${p}`);
  }
  // one argument each, but the kernel reads -append up to a NUL and a guest console splits lines
  if (/[\x00-\x1f\x7f]/.test(spec.cmdline)) throw new LoopshipError('CONFIG_INVALID', `kernel command line holds a control character: ${JSON.stringify(spec.cmdline)}`);
  return args;
}

export class QemuBackend implements Backend {
  readonly kind = 'qemu' as const;
  readonly livenessIntervalMs = 1000; // a pid file and a signal 0: cheap
  private readonly exec: Exec;
  private readonly qemu: string;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(private readonly o: QemuOptions) {
    this.exec = o.exec ?? defaultExec;
    this.qemu = o.qemu ?? 'qemu-system-x86_64';
    this.sleep = o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  private files(name: string) {
    return {
      pidFile: join(this.o.runDir, `${name}.pid`),
      qmpSocket: join(this.o.runDir, `${name}.qmp`),
      consoleLog: this.consoleLog(name),
      autostart: join(this.o.runDir, `${name}.autostart`),
    };
  }

  consoleLog(name: string): string {
    return join(this.o.logDir, `${name}.console.log`);
  }

  /** The pid of this domain's qemu, if it runs (checked against its command line). */
  async pid(name: string): Promise<number | null> {
    const { pidFile } = this.files(name);
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (!pid || !processAlive(pid)) return null;
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    // a recycled pid belongs to someone else, who may put any path in their command line: the
    // qemu we started runs as we do (real uid in status, which a process cannot change)
    const uid = /^Uid:\s+(\d+)/m.exec(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''))?.[1];
    return cmd.split('\0').includes(pidFile) && uid === String(process.getuid?.() ?? 0) ? pid : null;
  }

  async isRunning(name: string): Promise<boolean> {
    return (await this.pid(name)) !== null;
  }

  async instanceId(name: string): Promise<string | null> {
    const pid = await this.pid(name);
    return pid === null ? null : String(pid);
  }

  validate(spec: DomainSpec): void {
    qemuArgs(spec, this.files(spec.name), []);
  }

  async start(spec: DomainSpec): Promise<void> {
    if (await this.isRunning(spec.name)) return;
    await mkdir(this.o.runDir, { recursive: true });
    await mkdir(this.o.logDir, { recursive: true });
    const f = this.files(spec.name);
    await rm(f.qmpSocket, { force: true });
    await rm(f.pidFile, { force: true });
    // keep the previous boot's console for diagnosis: a rename moves a planted link itself,
    // where copying its content would write through one planted as the .1 name
    await rm(`${f.consoleLog}.1`, { force: true });
    await rename(f.consoleLog, `${f.consoleLog}.1`).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    // Default tcg: /dev/kvm can open and even run firmware on a nested host whose KVM then
    // hangs the Linux guest (seen on these build machines). 'auto' or 'kvm' opt in.
    const accelMode = this.o.accel ?? ((process.env.LOOPSHIP_QEMU_ACCEL as 'auto' | 'tcg' | 'kvm' | undefined) || 'tcg');
    const accel = accelMode === 'tcg' ? ['tcg'] : accelMode === 'kvm' ? ['kvm'] : (await kvmUsable()) ? ['kvm', 'tcg'] : ['tcg'];
    await run(this.exec, this.qemu, qemuArgs(spec, f, accel), { timeoutMs: 60_000 });
  }

  async stop(name: string, opts: { timeoutMs?: number } = {}): Promise<void> {
    const pid = await this.pid(name);
    const f = this.files(name);
    if (pid === null) {
      await rm(f.qmpSocket, { force: true });
      return;
    }
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const gone = async (ms: number): Promise<boolean> => {
      const t0 = Date.now();
      while (Date.now() - t0 < ms) {
        if (!processAlive(pid)) return true;
        await this.sleep(100);
      }
      return !processAlive(pid);
    };
    await qmpCommand(f.qmpSocket, 'system_powerdown', 5000).catch(() => {});
    if (!(await gone(timeoutMs))) {
      process.kill(pid, 'SIGTERM');
      if (!(await gone(5000))) {
        process.kill(pid, 'SIGKILL');
        await gone(5000);
      }
    }
    await rm(f.qmpSocket, { force: true });
    await rm(f.pidFile, { force: true });
  }

  async setAutostart(name: string, enabled: boolean): Promise<void> {
    const f = this.files(name);
    if (enabled) {
      await mkdir(this.o.runDir, { recursive: true });
      await writeFileAtomic(f.autostart, '', { mode: 0o600 }); // never through a planted link
    } else await rm(f.autostart, { force: true });
  }

  async forget(name: string): Promise<void> {
    const f = this.files(name);
    for (const p of [f.autostart, f.pidFile, f.qmpSocket]) await rm(p, { force: true });
  }
}

/** Sends one QMP command (after the capabilities handshake) and resolves on its reply; events are skipped. */
export function qmpCommand(socketPath: string, command: string, timeoutMs: number, args?: Record<string, unknown>): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    let buf = '';
    let stage = 0;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`QMP ${command}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (err: Error | null, v?: unknown) => {
      clearTimeout(timer);
      sock.end();
      if (err) reject(err);
      else resolve(v);
    };
    sock.on('error', (e) => done(e));
    // qemu gone before it answered (after an answer this is a no-op)
    sock.on('close', () => done(new Error(`QMP ${command}: connection closed`)));
    sock.on('data', (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line);
        } catch {
          continue;
        }
        if (stage === 0 && msg.QMP) {
          stage = 1;
          sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        } else if (stage === 1 && 'return' in msg) {
          stage = 2;
          sock.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) }) + '\n');
        } else if (stage === 2 && ('return' in msg || 'error' in msg)) {
          if (msg.error) done(new Error(`QMP ${command}: ${JSON.stringify(msg.error)}`));
          else done(null, msg.return);
        }
      }
    });
  });
}
