// Reading what the in-dom0 job (job.sh) left behind: one directory per step with the
// agent's output and a snapshot of dom0 (xl state, generated config, guest console, loop
// devices, mounts). Pure parsing, so the assertions in xen.test.ts stay readable.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface StepResult {
  step: string;
  rc: number | null;
  seconds: number | null;
  stdout: string;
  stderr: string;
  /** the agent's --json output, when it printed one */
  json: unknown;
  xlList: XlListRow[];
  /** `xl list -l NAME`: the configuration the toolstack built the running domain from */
  xlListLong: unknown;
  xlCfg: Record<string, string> | null;
  xlCfgText: string | null;
  autostartLink: string | null;
  console: string;
  /** `xl dmesg` since the step before it, where job.sh kept it (a failed PVH attempt) */
  xlDmesg: string;
  loopDevices: string[];
  mounts: string[];
  current: string | null;
  status: unknown;
}

export interface XlListRow {
  name: string;
  id: number;
  memMiB: number;
  vcpus: number;
  state: string;
}

const read = (path: string): string | null => (existsSync(path) ? readFileSync(path, 'utf8') : null);

function parseJson(text: string | null): unknown {
  if (!text?.trim()) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** `xl list` table: Name ID Mem VCPUs State Time(s) */
export function parseXlList(text: string): XlListRow[] {
  const rows: XlListRow[] = [];
  for (const line of text.split('\n').slice(1)) {
    const m = /^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+[\d.]+\s*$/.exec(line.trim());
    if (m) rows.push({ name: m[1], id: Number(m[2]), memMiB: Number(m[3]), vcpus: Number(m[4]), state: m[5] });
  }
  return rows;
}

/** xl.cfg(5): KEY = VALUE lines; strings unquoted, lists kept as their text. */
export function parseXlCfg(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (!m) continue;
    const v = m[2];
    out[m[1]] = /^"(.*)"$/.test(v) ? v.slice(1, -1).replace(/\\(["\\])/g, '$1') : v;
  }
  return out;
}

/** The quoted strings of an xl.cfg list value: [ "a", "b" ] */
export function cfgList(value: string | undefined): string[] {
  return [...(value ?? '').matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1].replace(/\\(["\\])/g, '$1'));
}

export function readStep(outDir: string, step: string): StepResult {
  const d = join(outDir, step);
  const num = (s: string | null) => (s === null || s.trim() === '' ? null : Number(s.trim()));
  const stdout = read(join(d, 'stdout')) ?? '';
  const cfgText = read(join(d, 'xl.cfg'));
  return {
    step,
    rc: num(read(join(d, 'rc'))),
    seconds: num(read(join(d, 'seconds'))),
    stdout,
    stderr: read(join(d, 'stderr')) ?? '',
    json: parseJson(stdout),
    xlList: parseXlList(read(join(d, 'xl-list')) ?? ''),
    xlListLong: parseJson(read(join(d, 'xl-list-l.json'))),
    xlCfg: cfgText === null ? null : parseXlCfg(cfgText),
    xlCfgText: cfgText,
    autostartLink: read(join(d, 'auto-link'))?.trim() || null,
    console: read(join(d, 'console.log')) ?? '',
    xlDmesg: read(join(d, 'xl-dmesg')) ?? '',
    loopDevices: (read(join(d, 'losetup')) ?? '').split('\n').filter((l) => /^\/dev\/loop/.test(l)),
    mounts: (read(join(d, 'mounts')) ?? '').split('\n').filter(Boolean),
    current: read(join(d, 'current'))?.trim() || null,
    status: parseJson(read(join(d, 'status.json'))),
  };
}

/** The bits of `xl list -l` JSON (libxl_domain_config) the test compares with the cfg. */
export interface DomainFacts {
  name: string | null;
  type: string | null;
  kernel: string | null;
  ramdisk: string | null;
  cmdline: string | null;
  memoryMiB: number | null;
  vcpus: number | null;
  disks: { target: string | null; vdev: string | null }[];
  macs: string[];
}

export function domainFacts(xlListLong: unknown): DomainFacts | null {
  const top = Array.isArray(xlListLong) ? xlListLong[0] : xlListLong;
  const cfg = (top as { config?: Record<string, any> } | null)?.config;
  if (!cfg) return null;
  const b = cfg.b_info ?? {};
  const c = cfg.c_info ?? {};
  const maxKb = b.max_memkb ?? b.target_memkb;
  return {
    name: c.name ?? null,
    type: c.type ?? null,
    kernel: b.kernel ?? b['type.pv']?.kernel ?? null,
    ramdisk: b.ramdisk ?? b['type.pv']?.ramdisk ?? null,
    cmdline: b.cmdline ?? b['type.pv']?.cmdline ?? null,
    memoryMiB: typeof maxKb === 'number' ? maxKb / 1024 : null,
    vcpus: typeof b.max_vcpus === 'number' ? b.max_vcpus : null,
    disks: (cfg.disks ?? []).map((d: Record<string, any>) => ({ target: d.pdev_path ?? null, vdev: d.vdev ?? null })),
    macs: (cfg.nics ?? []).map((n: Record<string, any>) => String(n.mac ?? '')),
  };
}
