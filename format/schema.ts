// The repository's metadata: types and validation, no I/O. Every metadata file is
// JSON, signed detached (file.asc) over its exact bytes. Unknown fields are errors.
import * as z from 'zod';
import { MetadataError } from './errors.js';
import { parseWindows } from './windows.js';
import { LIMITS, BLOCK_SIZE, zstdCompressBound } from './limits.js';

export const SPEC_VERSION = 1;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'expected a lowercase hex sha256 digest');
const fingerprint = z.string().regex(/^[0-9a-f]{40}([0-9a-f]{24})?$/, 'expected a lowercase hex OpenPGP fingerprint');
const timestamp = z.iso.datetime({ offset: true });
const count = z.number().int().nonnegative();
// not digits only: xl takes such an argument for a domain id (`xl shutdown 0` is dom0)
export const imageName = z.string().regex(/^(?![0-9]+$)[a-z0-9][a-z0-9._-]{0,63}$/, 'expected lowercase letters, digits, ".", "_" or "-" (max 64), not digits only');
export const imageVersion = z.string().regex(/^[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}$/, 'expected a version such as 1.2.3 (letters, digits, . + ~ _ -)');
export const channelName = z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'expected a channel name such as stable');
export const arch = z.enum(['amd64', 'arm64', 'i386']);
/** Made at `repo init`, kept by every root version, named by every index: files of two repositories never mix. */
export const repositoryId = z.string().regex(/^[0-9a-f]{32}$/, 'expected a repository id (32 lowercase hex digits)');

// Fields that reach dom0 (xl config, exec arguments, kernel command lines) are held to what
// they can mean there: a signed manifest may describe a bad guest, never a dom0 program.
/** A network interface name (IFNAMSIZ 16 with the NUL): no ",", "=", quote or space for xl's vif spec to split on. */
export const bridgeName = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'expected a network interface name (letters, digits, "_", ".", "-"; at most 15)');
/** Printable text on one line: no control characters (a line break ends an xl.cfg value, a NUL a C string). */
/** Text made to pass `oneLine(max)`: runs of control characters become one space, the rest is cut at `max`. */
export const asOneLine = (s: string, max: number): string => s.replace(/[\x00-\x1f\x7f]+/g, ' ').slice(0, max);
export const oneLine = (max: number) => z.string().max(max).regex(/^[^\x00-\x1f\x7f]*$/, 'expected one line of printable text (no control characters)');

// ---------- root.json ----------

const role = z.strictObject({
  keys: z.array(fingerprint).min(1).max(LIMITS.keysPerRoot),
  threshold: z.number().int().min(1),
});

export const RootSchema = z
  .strictObject({
    type: z.literal('loopship/root'),
    spec_version: z.literal(SPEC_VERSION),
    version: z.number().int().min(1),
    /** absent only in repositories from before ids: the first root that carries one gives it */
    repository: repositoryId.optional(),
    expires: timestamp,
    keys: z.record(
      fingerprint,
      z.strictObject({ name: z.string().max(200), public_key: z.string().max(16 * 1024) }),
    ),
    roles: z.strictObject({ root: role, index: role, publisher: role }),
  })
  .superRefine((root, ctx) => {
    if (Object.keys(root.keys).length > LIMITS.keysPerRoot) ctx.addIssue({ code: 'custom', path: ['keys'], message: `more than ${LIMITS.keysPerRoot} keys` });
    for (const [name, r] of Object.entries(root.roles)) {
      if (r.threshold > r.keys.length) ctx.addIssue({ code: 'custom', path: ['roles', name, 'threshold'], message: `threshold ${r.threshold} exceeds the role's ${r.keys.length} key(s)` });
      if (new Set(r.keys).size !== r.keys.length) ctx.addIssue({ code: 'custom', path: ['roles', name, 'keys'], message: 'duplicate key' });
      for (const k of r.keys) if (!root.keys[k]) ctx.addIssue({ code: 'custom', path: ['roles', name, 'keys'], message: `key ${k} is not listed in keys` });
    }
  });
export type Root = z.infer<typeof RootSchema>;
export type RoleName = keyof Root['roles'];

// ---------- index.json ----------

const versionEntry = z.strictObject({
  manifest: sha256Hex,
  size: count.max(LIMITS.manifestBytes),
  arch,
  published: timestamp,
});

/** A fleet site, as agent.yaml's report.site and the server's sites name it. */
export const siteName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'expected a site name (letters, digits, ".", "_", "-")');
/** A host group, as agent.yaml's groups name it. */
export const groupName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'expected a group name (lowercase letters, digits, ".", "_", "-")');
export const rolloutId = z.string().regex(/^[0-9a-f]{16,64}$/, 'expected a rollout id (16-64 lowercase hex digits)');

const rolloutStage = z.strictObject({
  percent: z.number().int().min(1).max(100),
  /** when the stage opens, by the host's clock; null: when an operator opens it (rollout resume) */
  opens: timestamp.nullable(),
  /** for the writer: once the stage before opens, this one opens so many seconds later */
  after_seconds: count.max(366 * 86400).optional(),
  /** while this is the highest open stage, hosts switch only inside these windows (each host's local time; format/windows.ts) */
  window: z.array(z.string().max(100)).min(1).max(8).optional().superRefine((w, ctx) => {
    try {
      if (w) parseWindows(w, 'window');
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
    }
  }),
});

/**
 * A staged move of a channel from one version to the next (format/rollout.ts decides what
 * a host makes of it). The channel keeps naming `from` until the rollout is finished.
 */
const rollout = z
  .strictObject({
    id: rolloutId,
    from: imageVersion,
    to: imageVersion,
    started: timestamp,
    state: z.enum(['running', 'paused', 'aborted']),
    /** why and since when it is paused or aborted, and by whom */
    stopped: z.strictObject({ at: timestamp, reason: oneLine(1000), by: oneLine(200) }).optional(),
    stages: z.array(rolloutStage).min(1).max(LIMITS.rolloutStages),
    /** only hosts of these sites / groups take part; the others stay on `from` */
    sites: z.array(siteName).min(1).max(256).optional(),
    groups: z.array(groupName).min(1).max(256).optional(),
    /** the server pauses the rollout when `failures` of the first `of_first` hosts on `to` failed, or `percent` of them */
    halt: z.strictObject({ failures: z.number().int().min(1), of_first: z.number().int().min(1), percent: z.number().min(0).max(100) }).optional(),
    /** the fleet's tally when an operator last resumed it: the halt rule counts what came after */
    halt_baseline: z.strictObject({ took: count, failed: count }).optional(),
  })
  .superRefine((r, ctx) => {
    if (r.from === r.to) ctx.addIssue({ code: 'custom', path: ['to'], message: 'a rollout moves to another version than it starts from' });
    if ((r.state === 'running') === (r.stopped !== undefined)) ctx.addIssue({ code: 'custom', path: ['stopped'], message: 'present exactly when the rollout is paused or aborted' });
    let last: string | null = null;
    r.stages.forEach((st, i) => {
      if (i > 0 && st.percent <= r.stages[i - 1].percent) ctx.addIssue({ code: 'custom', path: ['stages', i, 'percent'], message: 'stages grow: each opens to more hosts than the one before' });
      if (st.opens !== null) {
        if (last !== null && Date.parse(st.opens) < Date.parse(last)) ctx.addIssue({ code: 'custom', path: ['stages', i, 'opens'], message: 'a stage cannot open before the one before it' });
        last = st.opens;
      }
    });
  });
export type Rollout = z.infer<typeof rollout>;
export type RolloutStage = Rollout['stages'][number];

const hold = z.strictObject({ version: imageVersion, reason: oneLine(500), by: oneLine(200), at: timestamp });
export type Hold = z.infer<typeof hold>;

const imageEntry = z
  .strictObject({
    versions: z.record(imageVersion, versionEntry),
    channels: z.record(channelName, imageVersion),
    /** per channel: the rollout under way (at most one) */
    rollouts: z.record(channelName, rollout).optional(),
    /** hosts an operator holds on a version, by holdKey(host name) (format/holds.ts): no host name is published */
    holds: z.record(sha256Hex, hold).optional(),
  })
  .superRefine((img, ctx) => {
    if (Object.keys(img.versions).length > LIMITS.versionsPerImage) ctx.addIssue({ code: 'custom', path: ['versions'], message: 'too many versions' });
    for (const [ch, v] of Object.entries(img.channels)) {
      if (!img.versions[v]) ctx.addIssue({ code: 'custom', path: ['channels', ch], message: `channel points to unknown version ${v}` });
    }
    if (Object.keys(img.holds ?? {}).length > LIMITS.holdsPerImage) ctx.addIssue({ code: 'custom', path: ['holds'], message: 'too many holds' });
    for (const [key, h] of Object.entries(img.holds ?? {})) {
      if (!img.versions[h.version]) ctx.addIssue({ code: 'custom', path: ['holds', key, 'version'], message: `hold on unknown version ${h.version}` });
    }
    for (const [ch, r] of Object.entries(img.rollouts ?? {})) {
      if (img.channels[ch] !== r.from) ctx.addIssue({ code: 'custom', path: ['rollouts', ch, 'from'], message: `a rollout starts from the version its channel names (${img.channels[ch] ?? 'none'})` });
      if (!img.versions[r.to]) ctx.addIssue({ code: 'custom', path: ['rollouts', ch, 'to'], message: `rollout to unknown version ${r.to}` });
    }
  });

export const IndexSchema = z
  .strictObject({
    type: z.literal('loopship/index'),
    spec_version: z.literal(SPEC_VERSION),
    version: z.number().int().min(1),
    /** its root's (absent exactly when the root has none) */
    repository: repositoryId.optional(),
    expires: timestamp,
    root_version: z.number().int().min(1),
    images: z.record(imageName, imageEntry),
  })
  .superRefine((idx, ctx) => {
    if (Object.keys(idx.images).length > LIMITS.imagesPerIndex) ctx.addIssue({ code: 'custom', path: ['images'], message: 'too many images' });
  });
export type Index = z.infer<typeof IndexSchema>;
export type IndexImage = Index['images'][string];
export type IndexVersion = IndexImage['versions'][string];

// ---------- manifests/<sha256>.json ----------

const chunk = z.strictObject({
  offset: count,
  length: z.number().int().min(1).max(LIMITS.chunkLength),
  sha256: sha256Hex,
  /** size of the zstd object in chunks/: informational (delta accounting); reads are bounded by length */
  csize: z.number().int().min(1),
});
export type Chunk = z.infer<typeof chunk>;

function blob(maxSize: number, blockAligned: boolean) {
  return z
    .strictObject({
      size: count.max(maxSize),
      sha256: sha256Hex.optional(),
      chunks: z.array(chunk).max(LIMITS.chunksPerBlob),
    })
    .superRefine((b, ctx) => {
      let end = 0;
      b.chunks.forEach((c, i) => {
        if (c.offset < end) ctx.addIssue({ code: 'custom', path: ['chunks', i, 'offset'], message: `chunk overlaps the previous one (offset ${c.offset} < ${end})` });
        if (c.offset + c.length > b.size) ctx.addIssue({ code: 'custom', path: ['chunks', i], message: `chunk runs past the end (${c.offset}+${c.length} > ${b.size})` });
        if (blockAligned && c.offset % BLOCK_SIZE !== 0) ctx.addIssue({ code: 'custom', path: ['chunks', i, 'offset'], message: `offset ${c.offset} is not a multiple of ${BLOCK_SIZE}` });
        if (c.csize > zstdCompressBound(c.length)) ctx.addIssue({ code: 'custom', path: ['chunks', i, 'csize'], message: `compressed size ${c.csize} exceeds zstd's bound for ${c.length} bytes` });
        end = c.offset + c.length;
      });
    });
}
export const ImageBlobSchema = blob(LIMITS.imageSize, true);
export const FileBlobSchema = blob(LIMITS.kernelSize, false);
export type Blob = z.infer<typeof ImageBlobSchema>;

export const settingType = z.enum(['string', 'hostname', 'url', 'ip', 'cidr', 'ip-list', 'port', 'boolean', 'ssh-keys', 'users']);
export type SettingType = z.infer<typeof settingType>;

/** Xen's HVM_MAX_VCPUS: a PVH guest is an HVM domain to it */
export const PVH_MAX_VCPUS = 128;
/** A PV guest's command line lives in start_info.cmd_line[MAX_GUEST_CMDLINE], with its NUL: Xen cuts off the rest */
export const PV_MAX_CMDLINE_BYTES = 1023;

export const ManifestSchema = z.strictObject({
  type: z.literal('loopship/manifest'),
  spec_version: z.literal(SPEC_VERSION),
  name: imageName,
  version: imageVersion,
  arch,
  build: z.strictObject({
    recipe_digest: sha256Hex,
    suite: z.string().max(64),
    packages: z.array(z.strictObject({ name: z.string().max(200), version: z.string().max(200) })).max(LIMITS.packagesPerManifest),
    built_at: timestamp,
    source_date_epoch: count.optional(),
    builder: z.string().max(200),
  }),
  image: ImageBlobSchema.and(z.strictObject({ fs: z.literal('ext4'), uuid: z.uuid().optional() })),
  kernel: FileBlobSchema,
  initrd: FileBlobSchema.nullable(),
  boot: z.strictObject({
    type: z.enum(['pv', 'pvh']),
    cmdline: oneLine(4096),
    ready_marker: oneLine(200).min(1),
  }),
  xen: z.strictObject({
    memory: z.number().int().min(32).max(1024 * 1024),
    vcpus: z.number().int().min(1).max(512),
    network: z.strictObject({ bridge: bridgeName.optional(), nics: z.number().int().min(0).max(8) }),
  }),
  settings: z.record(
    z.string().regex(/^[a-z][a-z0-9_.-]{0,63}$/),
    z.strictObject({
      type: settingType,
      description: z.string().max(500).optional(),
      default: z.string().max(4096).optional(),
      required: z.boolean().optional(),
    }),
  ),
}).superRefine((m, ctx) => {
  // Xen builds no PVH (HVM) domain of more (HVM_MAX_VCPUS): refused here, not by xl create after the running version stopped
  if (m.boot.type === 'pvh' && m.xen.vcpus > PVH_MAX_VCPUS) ctx.addIssue({ code: 'custom', path: ['xen', 'vcpus'], message: `a pvh domain has at most ${PVH_MAX_VCPUS} vcpus` });
  if (m.boot.type === 'pv' && Buffer.byteLength(m.boot.cmdline) > PV_MAX_CMDLINE_BYTES) ctx.addIssue({ code: 'custom', path: ['boot', 'cmdline'], message: `a pv guest's command line has at most ${PV_MAX_CMDLINE_BYTES} bytes (Xen cuts off the rest)` });
});
export type Manifest = z.infer<typeof ManifestSchema>;

// ---------- parsing with clear errors ----------

export type MetadataKind = 'root' | 'index' | 'manifest';
const SCHEMAS = { root: RootSchema, index: IndexSchema, manifest: ManifestSchema } as const;
const MAX_BYTES = { root: LIMITS.rootBytes, index: LIMITS.indexBytes, manifest: LIMITS.manifestBytes } as const;
type Parsed = { root: Root; index: Index; manifest: Manifest };

/**
 * Text taken from a file into a message: control and non-ASCII characters escaped (\uXXXX),
 * at most `max` characters. A root file is parsed before its signatures can be checked, so
 * its keys are anyone's; they must not reach a terminal, a log line or a report as they are.
 */
export function printable(s: string, max = 200): string {
  const t = s.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return t.length > max ? `${t.slice(0, max)}... (${t.length} characters)` : t;
}

/** Formats zod issues as "field.path: message" lines, at most a few of them. */
export function describeIssues(issues: readonly z.core.$ZodIssue[], max = 5): string {
  const lines = issues.slice(0, max).map((i) => printable(`${i.path.length ? i.path.map(String).join('.') : '(top level)'}: ${i.message}`, 300));
  if (issues.length > max) lines.push(`... and ${issues.length - max} more`);
  return lines.join('; ');
}

/** Parses and validates a metadata file's bytes. `where` names the file for error messages. */
export function parseMetadata<K extends MetadataKind>(kind: K, bytes: Uint8Array, where: string): Parsed[K] {
  if (bytes.length > MAX_BYTES[kind]) {
    throw new MetadataError('METADATA_TOO_LARGE', `${bytes.length} bytes exceeds the ${MAX_BYTES[kind]}-byte limit for ${kind} metadata`, { where });
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (cause) {
    // V8 quotes the bytes it stopped at
    throw new MetadataError('METADATA_INVALID', `not valid JSON (${printable((cause as Error).message)})`, { where, cause });
  }
  const result = SCHEMAS[kind].safeParse(value);
  if (!result.success) {
    throw new MetadataError('METADATA_INVALID', `invalid ${kind} metadata: ${describeIssues(result.error.issues)}`, { where });
  }
  return result.data as Parsed[K];
}

/**
 * The bytes we write for a metadata object: 2-space JSON (stable key order as built), except
 * that an object or array holding only scalars goes on one line. A manifest is mostly such
 * objects (one per chunk): a line each keeps it readable and diffable at about three
 * quarters of the bytes of fully indented JSON (~135 instead of ~180 bytes a chunk), and
 * every host downloads it on each update.
 */
export function serialize(value: Root | Index | Manifest): Buffer {
  return Buffer.from(layout(JSON.parse(JSON.stringify(value)), '') + '\n', 'utf8');
}

function layout(v: unknown, indent: string): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  const entries: [string | null, unknown][] = Array.isArray(v) ? v.map((x) => [null, x]) : Object.entries(v);
  if (entries.every(([, x]) => x === null || typeof x !== 'object')) return JSON.stringify(v);
  const inner = indent + '  ';
  const lines = entries.map(([k, x]) => inner + (k === null ? '' : JSON.stringify(k) + ': ') + layout(x, inner));
  return (Array.isArray(v) ? '[' : '{') + '\n' + lines.join(',\n') + '\n' + indent + (Array.isArray(v) ? ']' : '}');
}

/** Natural ordering of versions: numeric runs compare as numbers ("1.10" > "1.9"). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    if (x === y) continue;
    if (i % 2 === 1) {
      const d = BigInt(x || '0') - BigInt(y || '0');
      if (d !== 0n) return d < 0n ? -1 : 1;
    } else {
      // "~" sorts before anything, like Debian
      if (x.startsWith('~') !== y.startsWith('~')) return x.startsWith('~') ? -1 : 1;
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

export function latestVersion(image: IndexImage): string | undefined {
  return Object.keys(image.versions).sort(compareVersions).at(-1);
}
