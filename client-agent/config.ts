// /etc/loopship/agent.yaml: which repositories to trust (mirrors in order), the pinned
// root, the boot backend and the appliances this host should run. Strict: an unknown
// or misspelt field is an error naming the file and the field, never silently ignored.
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import * as z from 'zod';
import YAML from 'yaml';
import { ConfigError } from '../format/index.js';
import { imageName, imageVersion, channelName, bridgeName, siteName, groupName, describeIssues } from '../format/index.js';
import { writeFileAtomic } from './fsutil.js';
import { parseWindow, checkTimeZone } from '../format/index.js';

export const DEFAULT_CONFIG = '/etc/loopship/agent.yaml';
export const DEFAULT_STATE_DIR = '/var/lib/loopship';

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** "512M", "2G", "10GiB", "1048576" -> bytes. Binary units: disks are sized in MiB/GiB. */
export function parseSize(text: string | number, where = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text > 0) return text;
    throw new ConfigError(`expected a positive size, got ${text}`, { where });
  }
  const m = /^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$/i.exec(text);
  if (!m) throw new ConfigError(`expected a size such as 512M or 4G, got "${text}"`, { where });
  const bytes = Number(m[1]) * SIZE_UNITS[m[2].toLowerCase()];
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new ConfigError(`size out of range: "${text}"`, { where });
  return bytes;
}

const sizeField = z.union([z.string(), z.number()]).superRefine((v, ctx) => {
  try {
    parseSize(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as ConfigError).message });
  }
});

const fingerprint = z
  .string()
  .transform((s) => s.replace(/\s+/g, '').toLowerCase())
  .pipe(z.string().regex(/^[0-9a-f]{40}([0-9a-f]{24})?$/, 'expected a 40- or 64-hex-digit OpenPGP fingerprint'));

const repoUrl = z.string().refine((s) => {
  if (s.startsWith('/')) return true; // a local directory (USB stick, NFS) serves as a repository too
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}, 'expected an http(s):// URL or an absolute directory path');

// maintenance windows (windows.ts): checked here so a typo fails at load, naming the field and the text
const windowsField = z
  .array(z.string())
  .min(1, 'an empty list would never let an upgrade switch; leave windows out to allow any time')
  .superRefine((list, ctx) => {
    list.forEach((text, i) => {
      try {
        parseWindow(text, ''); // no prefix: the issue's path names the field
      } catch (e) {
        ctx.addIssue({ code: 'custom', path: [i], message: (e as ConfigError).message });
      }
    });
  });
const timezoneField = z.string().superRefine((tz, ctx) => {
  try {
    checkTimeZone(tz, '');
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as ConfigError).message });
  }
});

const settingValue = z.union([z.string(), z.number(), z.boolean(), z.array(z.string())]);

const appliance = z
  .strictObject({
    name: imageName,
    channel: channelName.optional(),
    version: imageVersion.optional(),
    settings: z.record(z.string(), settingValue).default({}),
    data_size: sizeField.optional(),
    autostart: z.boolean().default(true),
    /** follow a channel to an older version too (default: a channel moves this host forward only) */
    allow_downgrade: z.boolean().default(false),
    /** when upgrades of this appliance may switch (overrides the host's windows and timezone) */
    windows: windowsField.optional(),
    timezone: timezoneField.optional(),
    /** this host's overrides of the manifest's Xen defaults (bridge names differ between sites) */
    xen: z
      .strictObject({
        bridge: bridgeName.optional(),
        memory: z.number().int().min(32).optional(),
        vcpus: z.number().int().min(1).max(512).optional(),
        /** xl.cfg tsc_mode; unset: Xen's default (RDTSC emulated when the host TSC is not invariant) */
        tsc_mode: z.enum(['default', 'always_emulate', 'native', 'native_paravirt']).optional(),
      })
      .optional(),
  })
  .superRefine((a, ctx) => {
    if (a.channel && a.version) ctx.addIssue({ code: 'custom', path: ['version'], message: 'give either channel or version, not both' });
  });

export const AgentConfigSchema = z
  .strictObject({
    repos: z.array(repoUrl).min(1, 'at least one repository URL is needed'),
    trust: z
      .strictObject({ root_fingerprint: fingerprint.optional(), root_key_file: z.string().min(1).optional() })
      .refine((t) => Boolean(t.root_fingerprint) !== Boolean(t.root_key_file), 'give exactly one of root_fingerprint or root_key_file'),
    backend: z.enum(['xl', 'qemu']).optional(),
    appliances: z.array(appliance).default([]),
    report: z
      .strictObject({ url: z.url({ protocol: /^https?$/ }), token: z.string().optional(), site: siteName.optional() })
      .optional(),
    /** the host groups this host is in: a rollout may be limited to some (format/rollout.ts) */
    groups: z.array(groupName).max(64).default([]),
    daemon: z
      .strictObject({ interval_s: z.number().int().min(10).default(900), jitter_s: z.number().int().min(0).default(120) })
      .default({ interval_s: 900, jitter_s: 120 }),
    health_timeout_s: z.number().int().min(1).default(300),
    fetch_concurrency: z.number().int().min(1).max(64).default(8),
    /** maintenance windows, in `timezone` (default: the host's zone); unset: upgrades switch any time */
    windows: windowsField.optional(),
    timezone: timezoneField.optional(),
  })
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    c.appliances.forEach((a, i) => {
      if (seen.has(a.name)) ctx.addIssue({ code: 'custom', path: ['appliances', i, 'name'], message: `appliance ${a.name} is listed twice` });
      seen.add(a.name);
    });
  });

export type AgentConfig = z.infer<typeof AgentConfigSchema>;
export type ApplianceConfig = AgentConfig['appliances'][number];
export type SettingInput = z.infer<typeof settingValue>;

/** Validates an already-parsed config object; `where` names the file in errors. */
export function parseConfig(value: unknown, where: string): AgentConfig {
  const r = AgentConfigSchema.safeParse(value ?? {});
  if (!r.success) throw new ConfigError(describeIssues(r.error.issues), { where });
  return r.data;
}

export async function loadConfig(path: string): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    throw new ConfigError(code === 'ENOENT' ? 'no such file (run `loopship-agent init` first)' : `cannot read (${code})`, { where: path, cause });
  }
  let value: unknown;
  try {
    value = YAML.parse(text, { uniqueKeys: true, maxAliasCount: 100 });
  } catch (cause) {
    throw new ConfigError(`not valid YAML: ${(cause as Error).message.split('\n')[0]}`, { where: path, cause });
  }
  return parseConfig(value, path);
}

/**
 * Sets fields of the config file (init), keeping everything else in it as written,
 * comments included; defaults are not written out, so the file stays the admin's.
 * The result is validated before it replaces the old file.
 */
export async function updateConfigFile(path: string, fields: Record<string, unknown>): Promise<AgentConfig> {
  let doc: YAML.Document;
  try {
    doc = YAML.parseDocument(await readFile(path, 'utf8'), { uniqueKeys: true });
    if (doc.errors.length) throw new ConfigError(`not valid YAML: ${doc.errors[0].message.split('\n')[0]}`, { where: path });
    if (!YAML.isMap(doc.contents)) doc = new YAML.Document({});
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    doc = new YAML.Document({});
    doc.commentBefore = ' loopship agent configuration (see `loopship-agent --help`)';
  }
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) doc.delete(k);
    else doc.set(k, doc.createNode(v));
  }
  const text = doc.toString();
  const parsed = parseConfig(YAML.parse(text), path);
  // report.token is a secret, and so are credentials in a repository URL (user:password@);
  // writeFileAtomic also keeps an admin's narrower mode
  const secret = Boolean(parsed.report?.token) || parsed.repos.some((r) => /^[a-z]+:\/\/[^/]*@/i.test(r));
  await writeFileAtomic(path, text, { mode: secret ? 0o600 : 0o644, mkdir: true });
  return parsed;
}

/** xl when this host is a Xen dom0 (xl on PATH and /proc/xen present), else qemu. */
export function defaultBackend(env: { PATH?: string } = process.env, procXen = '/proc/xen'): 'xl' | 'qemu' {
  const onPath = (env.PATH ?? '').split(delimiter).some((d) => d && existsSync(join(d, 'xl')));
  return onPath && existsSync(procXen) ? 'xl' : 'qemu';
}
