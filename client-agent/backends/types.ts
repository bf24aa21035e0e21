// One interface for every way of booting an appliance (xl on Xen dom0, qemu elsewhere).
import { createHash } from 'node:crypto';

export interface DomainSpec {
  name: string;
  version: string;
  type: 'pv' | 'pvh';
  kernel: string;
  initrd: string | null;
  disk: string;
  dataDisk: string | null;
  /** the manifest's cmdline; each backend adds its console */
  cmdline: string;
  memory: number; // MiB
  vcpus: number;
  nics: number;
  bridge?: string;
  /** one stable MAC per nic */
  macs: string[];
  /** xl: the domain's tsc_mode (a host setting; unset: Xen's default) */
  tscMode?: 'default' | 'always_emulate' | 'native' | 'native_paravirt';
}

export interface Backend {
  readonly kind: 'xl' | 'qemu';
  /**
   * Throws (a ConfigError naming the field) unless `start(spec)` would hand the toolstack a
   * config or arguments it takes as meant; no side effects. Agents call it before they stop
   * the version that runs.
   */
  validate(spec: DomainSpec): void;
  /** Boots the domain (no-op if it already runs). */
  start(spec: DomainSpec): Promise<void>;
  /**
   * Graceful shutdown, then forced after `timeoutMs` (no-op if not running). Returns only once
   * the domain no longer runs, else throws: an upgrade boots the new version right after it.
   */
  stop(name: string, opts?: { timeoutMs?: number }): Promise<void>;
  isRunning(name: string): Promise<boolean>;
  /**
   * What identifies this run of the domain (xl: its domid, qemu: its pid), null when it does
   * not run: a health wait that sees it change knows the guest was restarted (crashed or
   * rebooted, then brought up again by on_crash/on_reboot) before it became ready.
   */
  instanceId(name: string): Promise<string | null>;
  /** How often a health wait may ask instanceId (ms): what one ask costs the host decides. */
  readonly livenessIntervalMs: number;
  /** Where the guest's console output goes. */
  consoleLog(name: string): string;
  /** Whether the host boots this appliance by itself at host start. */
  setAutostart(name: string, enabled: boolean): Promise<void>;
  /** Forgets the domain's generated files (after remove). */
  forget(name: string): Promise<void>;
}

/**
 * A MAC address in Xen's range (00:16:3e), stable for a host + appliance + nic, so the
 * guest keeps its DHCP lease across upgrades and differs between hosts on one LAN.
 */
export function stableMac(host: string, appliance: string, nic = 0): string {
  const h = createHash('sha256').update(`loopship\0${host}\0${appliance}\0${nic}`).digest();
  // Xen's convention keeps the top bit of the fourth byte clear
  const bytes = [0x00, 0x16, 0x3e, h[0] & 0x7f, h[1], h[2]];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}
