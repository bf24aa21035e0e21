// The server's configuration file (YAML): who may publish, which sites may enrol hosts,
// who may look at the fleet, the index signing key(s), and limits. Parsed strictly: an unknown or misspelt key is an error
// naming the field, never silently ignored.
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import * as z from 'zod';
import { ConfigError } from '../format/index.js';
import { describeIssues } from '../format/index.js';

export const DEFAULT_CONFIG_PATH = '/etc/loopship/server.yaml';
export const DEFAULT_STATE_DIR = '/var/lib/loopship-server';

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'expected the lowercase hex sha256 of the token');
const principalName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'expected letters, digits, ".", "_" or "-"');

const principal = z
  .strictObject({
    name: principalName,
    /** the token itself (keep the file private), or better its sha256 */
    token: z.string().min(16, 'a token must be at least 16 characters').max(512).optional(),
    token_sha256: sha256Hex.optional(),
  })
  .refine((p) => (p.token === undefined) !== (p.token_sha256 === undefined), { message: 'give exactly one of token or token_sha256' });

const limits = z.strictObject({
  /** largest package upload accepted */
  max_upload_bytes: z.number().int().positive().default(32 * 1024 ** 3),
  /** an upload that sends nothing for this long is cut off */
  upload_idle_timeout_s: z.number().positive().default(60),
  /** no upload may take longer than this in total */
  upload_timeout_s: z.number().positive().default(6 * 3600),
  /** largest JSON body (reports, promote) */
  max_json_bytes: z.number().int().positive().max(16 * 1024 * 1024).default(256 * 1024),
  /** hosts kept in the fleet store (and enrolled), in all */
  max_hosts: z.number().int().positive().max(1_000_000).default(10_000),
  /** hosts one site may enrol and keep: checked first, so one site cannot fill max_hosts for the others */
  max_hosts_per_site: z.number().int().positive().max(1_000_000).default(1000),
  /** reports accepted per site per minute (a misbehaving site cannot flood the store) */
  reports_per_minute_per_site: z.number().int().positive().default(600),
});

export const ServerConfigSchema = z
  .strictObject({
    publishers: z.array(principal).max(1000).default([]),
    sites: z.array(principal).max(100_000).default([]),
    /** who may look at the dashboard and GET /api/v1/reports (publishers may too) */
    viewers: z.array(principal).max(1000).default([]),
    /** who may start, pause, resume, abort and finish rollouts (publishers may too) */
    operators: z.array(principal).max(1000).default([]),
    index_keys: z
      .array(
        z.union([
          z.strictObject({ path: z.string().min(1), passphrase_env: z.string().regex(/^[A-Z_][A-Z0-9_]*$/).optional() }),
          // a key gpg-agent holds (GNUPGHOME, smartcard, PKCS#11 token): docs/key-custody.md
          z.strictObject({ gpg: z.string().regex(/^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$/), gnupg_home: z.string().min(1).optional(), pin_env: z.string().regex(/^[A-Z_][A-Z0-9_]*$/).optional() }),
        ]),
      )
      .max(16)
      .default([]),
    index_expires_days: z.number().int().positive().max(3650).default(30),
    limits: limits.default(() => limits.parse({})),
    dashboard: z
      .strictObject({
        stale_minutes: z.number().positive().default(30),
        title: z.string().max(200).default('loopship repository'),
        /**
         * true: anyone may open the dashboard page. By default it needs a viewer or publisher
         * token (Basic-auth password or Bearer): it shows host names and their error texts.
         */
        public: z.boolean().default(false),
      })
      .default({ stale_minutes: 30, title: 'loopship repository', public: false }),
    /** true: GET /metrics needs no token (e.g. the server listens on a management network only) */
    metrics_public: z.boolean().default(false),
  })
  .superRefine((c, ctx) => {
    for (const key of ['publishers', 'sites', 'viewers', 'operators'] as const) {
      const seen = new Set<string>();
      c[key].forEach((p, i) => {
        if (seen.has(p.name)) ctx.addIssue({ code: 'custom', path: [key, i, 'name'], message: `duplicate name ${p.name}` });
        seen.add(p.name);
      });
    }
  });

export type ServerConfigFile = z.infer<typeof ServerConfigSchema>;

export interface Principal {
  kind: 'publisher' | 'site' | 'viewer' | 'operator';
  name: string;
  /** sha256 of the bearer token */
  digest: Buffer;
}

export interface ServerConfig {
  publishers: Principal[];
  sites: Principal[];
  viewers: Principal[];
  operators: Principal[];
  indexKeys: Array<{ path: string; passphraseEnv?: string } | { gpg: string; gnupgHome?: string; pinEnv?: string }>;
  indexExpiresDays: number;
  limits: {
    maxUploadBytes: number;
    uploadIdleTimeoutMs: number;
    uploadTimeoutMs: number;
    maxJsonBytes: number;
    maxHosts: number;
    maxHostsPerSite: number;
    reportsPerMinutePerSite: number;
  };
  dashboard: { staleMinutes: number; title: string; public: boolean };
  metricsPublic: boolean;
  /** where the config came from, for messages */
  source: string;
}

export const sha256 = (s: string | Buffer): Buffer => createHash('sha256').update(s).digest();

function toPrincipals(kind: Principal['kind'], list: ServerConfigFile['publishers']): Principal[] {
  return list.map((p) => ({ kind, name: p.name, digest: p.token !== undefined ? sha256(p.token) : Buffer.from(p.token_sha256!, 'hex') }));
}

/** Validates an already-parsed config object (from YAML, or built by a test). */
export function parseServerConfig(value: unknown, source = '(inline config)'): ServerConfig {
  const r = ServerConfigSchema.safeParse(value ?? {});
  if (!r.success) throw new ConfigError(`invalid server config: ${describeIssues(r.error.issues)}`, { where: source });
  const c = r.data;
  return {
    publishers: toPrincipals('publisher', c.publishers),
    sites: toPrincipals('site', c.sites),
    viewers: toPrincipals('viewer', c.viewers),
    operators: toPrincipals('operator', c.operators),
    indexKeys: c.index_keys.map((k) => ('gpg' in k ? { gpg: k.gpg, gnupgHome: k.gnupg_home, pinEnv: k.pin_env } : { path: k.path, passphraseEnv: k.passphrase_env })),
    indexExpiresDays: c.index_expires_days,
    limits: {
      maxUploadBytes: c.limits.max_upload_bytes,
      uploadIdleTimeoutMs: c.limits.upload_idle_timeout_s * 1000,
      uploadTimeoutMs: c.limits.upload_timeout_s * 1000,
      maxJsonBytes: c.limits.max_json_bytes,
      maxHosts: c.limits.max_hosts,
      maxHostsPerSite: c.limits.max_hosts_per_site,
      reportsPerMinutePerSite: c.limits.reports_per_minute_per_site,
    },
    dashboard: { staleMinutes: c.dashboard.stale_minutes, title: c.dashboard.title, public: c.dashboard.public },
    metricsPublic: c.metrics_public,
    source,
  };
}

/**
 * Reads the YAML config. A missing file at the default path means "no publishers, no
 * sites" (a read-only mirror); a missing file the user named is an error.
 */
export async function loadServerConfig(file: string | undefined): Promise<ServerConfig> {
  const path = file ?? DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT' && file === undefined) return parseServerConfig({}, `${path} (absent)`);
    throw new ConfigError(`cannot read the server config (${(cause as Error).message})`, { where: path, cause });
  }
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch (cause) {
    throw new ConfigError(`not valid YAML (${(cause as Error).message.split('\n')[0]})`, { where: path, cause });
  }
  return parseServerConfig(value, path);
}
