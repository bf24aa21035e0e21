// Recipes: one YAML file (plus an optional overlay directory beside it) that says
// everything an image is made of. Validated strictly: an unknown key is a typo, and a
// typo silently ignored is a wrong image shipped to every site.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readFile, readlink, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import * as z from 'zod';
import { LineCounter, parseDocument, type Document } from 'yaml';
import { LoopshipError } from '../format/errors.js';
import { arch, imageName, imageVersion, settingType } from '../format/schema.js';

export const RECIPE_FILE = 'recipe.yaml';

const packageName = z.string().regex(/^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$/, 'expected a Debian package name (optionally name=version)');
const unixName = z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'expected a user/group name (lowercase, max 32)');
const unitName = z.string().regex(/^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount)$/, 'expected a systemd unit such as ssh.service');
const suite = z.string().regex(/^[a-z][a-z0-9-]{1,31}$/, 'expected a Debian suite or codename such as bookworm');
// Either a fixed size ("2G", "512M") or "auto": measured content plus headroom.
export const sizeString = z.string().regex(/^[1-9][0-9]*[KMGT]$/, 'expected a size such as 512M or 2G');
const headroom = z.string().regex(/^([1-9][0-9]*%|[1-9][0-9]*[KMGT])$/, 'expected a percentage such as 25% or a size such as 256M');
const snapshot = z.string().regex(/^[0-9]{8}T[0-9]{6}Z$/, 'expected a snapshot timestamp such as 20250520T000000Z');

const settingSpec = z.strictObject({
  type: settingType,
  description: z.string().max(500).optional(),
  default: z.string().max(4096).optional(),
  required: z.boolean().optional(),
});

export const RecipeSchema = z.strictObject({
  name: imageName,
  version: imageVersion,
  arch: arch.default('amd64'),
  description: z.string().max(500).optional(),
  base: z.strictObject({
    suite,
    variant: z.enum(['minbase', 'buildd', 'fakechroot', 'standard']).default('minbase'),
    components: z.array(z.string().regex(/^[a-z][a-z0-9-]*$/, 'expected an archive component such as main')).min(1).default(['main']),
    /** Normally left out: the build host's apt sources (or --mirror) decide, so no host name lives in the recipe. */
    mirror: z.url({ protocol: /^(https?|file)$/ }).optional(),
    snapshot: snapshot.optional(),
  }),
  packages: z.array(packageName).default([]),
  /** Install recommended packages too (Debian's default); off keeps images small. */
  install_recommends: z.boolean().default(false),
  /** Overlay directory, relative to the recipe, copied over the root filesystem. */
  files: z.string().min(1).optional(),
  groups: z.array(z.strictObject({ name: unixName, gid: z.number().int().min(1).max(65533).optional(), system: z.boolean().default(false) })).default([]),
  users: z
    .array(
      z.strictObject({
        name: unixName,
        uid: z.number().int().min(1).max(65533).optional(),
        groups: z.array(unixName).default([]),
        shell: z.string().regex(/^\/[^\0\s]*$/, 'expected an absolute path').default('/bin/bash'),
        home: z.string().regex(/^\/[^\0\s]*$/, 'expected an absolute path').optional(),
        system: z.boolean().default(false),
      }),
    )
    .default([]),
  services: z.strictObject({ enable: z.array(unitName).default([]), disable: z.array(unitName).default([]) }).prefault({}),
  /** Shell commands run in the chroot (sh -ec), in order, after packages, overlay, users and services. */
  commands: z.array(z.string().min(1)).default([]),
  cleanup: z.strictObject({ docs: z.boolean().default(true), locales: z.boolean().default(false) }).prefault({}),
  image: z
    .strictObject({
      fs: z.literal('ext4').default('ext4'),
      size: z.union([z.literal('auto'), sizeString]).default('auto'),
      headroom: headroom.default('25%'),
      inode_ratio: z.number().int().min(1024).max(67108864).default(16384),
    })
    .prefault({}),
  boot: z.strictObject({
    type: z.enum(['pv', 'pvh']).default('pvh'),
    kernel: packageName,
    /** Appended after root=UUID=... ro; the agent adds the console= for its backend. */
    cmdline: z.string().max(2000).default(''),
    ready_marker: z.string().min(1).max(200).regex(/^[^\s]+$/, 'expected one word without spaces').default('LOOPSHIP-READY'),
    /**
     * PID 1: systemd (systemd-sysv in packages), or busybox init, which the builder installs
     * and configures: seconds to boot where systemd takes a minute (emulated CPUs), for
     * appliances that need no service manager.
     */
    init: z.enum(['systemd', 'busybox']).default('systemd'),
    /**
     * initramfs-tools (Debian's, with udev), or minimal: the builder's own (busybox, the
     * block drivers, find the root by UUID, switch to it), which boots in a fraction of the time.
     */
    initrd: z.enum(['initramfs-tools', 'minimal']).default('initramfs-tools'),
  }),
  xen: z
    .strictObject({
      memory: z.number().int().min(32).max(1024 * 1024).default(512),
      vcpus: z.number().int().min(1).max(512).default(1),
      network: z.strictObject({ bridge: z.string().max(64).optional(), nics: z.number().int().min(0).max(8).default(1) }).prefault({}),
    })
    .prefault({}),
  settings: z.record(z.string().regex(/^[a-z][a-z0-9_.-]{0,63}$/, 'expected a setting name (lowercase, digits, . _ -)'), settingSpec).default({}),
  /** Fixed build time for clamped mtimes, when neither SOURCE_DATE_EPOCH nor the snapshot gives one. */
  source_date_epoch: z.number().int().nonnegative().optional(),
});
export type Recipe = z.infer<typeof RecipeSchema>;

export interface LoadedRecipe {
  recipe: Recipe;
  /** the recipe YAML file */
  file: string;
  /** the directory it lives in (overlay paths are relative to it) */
  dir: string;
  /** absolute overlay directory, if any */
  overlayDir: string | null;
  /** sha256 over the recipe file and every overlay file, in sorted order */
  digest: string;
}

export class RecipeError extends LoopshipError {
  constructor(message: string, options: { where?: string; cause?: unknown } = {}) {
    super('RECIPE_INVALID', message, options);
  }
}

/** Accepts a recipe directory (holding recipe.yaml) or the YAML file itself. */
export async function resolveRecipeFile(pathArg: string): Promise<string> {
  const p = resolve(pathArg);
  let st;
  try {
    st = await stat(p);
  } catch (cause) {
    throw new RecipeError('no such recipe file or directory', { where: pathArg, cause });
  }
  if (!st.isDirectory()) return p;
  const f = join(p, RECIPE_FILE);
  try {
    await stat(f);
  } catch (cause) {
    throw new RecipeError(`directory has no ${RECIPE_FILE}`, { where: pathArg, cause });
  }
  return f;
}

/** Parses and validates recipe text; `where` names the file in errors. Pure. */
export function parseRecipe(text: string, where: string): Recipe {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true, lineCounter });
  if (doc.errors.length) {
    const e = doc.errors[0];
    const pos = e.linePos?.[0];
    throw new RecipeError(`YAML syntax error${pos ? ` at line ${pos.line}, column ${pos.col}` : ''}: ${e.message.split('\n')[0]}`, { where, cause: e });
  }
  const value = doc.toJS();
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new RecipeError('expected a YAML mapping at the top level', { where });
  }
  const result = RecipeSchema.safeParse(value);
  if (!result.success) throw new RecipeError(`invalid recipe: ${describeRecipeIssues(result.error.issues, doc, lineCounter)}`, { where });
  const recipe = result.data;
  checkConsistency(recipe, where);
  return recipe;
}

/** Like describeIssues, with the YAML line of each offending field ("image.size (line 12): ..."). */
function describeRecipeIssues(issues: readonly z.core.$ZodIssue[], doc: Document, lc: LineCounter, max = 5): string {
  const lines = issues.slice(0, max).map((i) => {
    const path = i.code === 'unrecognized_keys' && i.keys.length ? [...i.path, i.keys[0]] : i.path;
    // the deepest node that exists along the path (a missing field points at its parent)
    let line: number | undefined;
    for (let n = path.length; n >= 0 && line === undefined; n--) {
      const node = n === 0 ? doc.contents : doc.getIn(path.slice(0, n) as (string | number)[], true);
      const start = (node as { range?: [number, number, number] } | undefined)?.range?.[0];
      if (typeof start === 'number' && n > 0) line = lc.linePos(start).line;
    }
    return `${path.length ? path.join('.') : '(top level)'}${line ? ` (line ${line})` : ''}: ${i.message}`;
  });
  if (issues.length > max) lines.push(`... and ${issues.length - max} more`);
  return lines.join('; ');
}

// Rules a per-field schema cannot express.
function checkConsistency(r: Recipe, where: string): void {
  const groupNames = new Set(r.groups.map((g) => g.name));
  if (groupNames.size !== r.groups.length) throw new RecipeError('groups: duplicate group name', { where });
  const userNames = new Set(r.users.map((u) => u.name));
  if (userNames.size !== r.users.length) throw new RecipeError('users: duplicate user name', { where });
  const both = r.services.enable.filter((s) => r.services.disable.includes(s));
  if (both.length) throw new RecipeError(`services: ${both.join(', ')} both enabled and disabled`, { where });
  const units = [...r.services.enable, ...r.services.disable];
  if (r.boot.init === 'busybox' && units.length) {
    throw new RecipeError(`services: ${units.join(', ')} cannot be enabled or disabled with boot.init busybox (no systemd); start an appliance's own programs from /etc/loopship/init.d/`, { where });
  }
  if (r.files !== undefined && (r.files.startsWith('/') || r.files.split(/[\\/]/).includes('..'))) {
    throw new RecipeError(`files: expected a directory inside the recipe's directory, got ${JSON.stringify(r.files)}`, { where });
  }
  for (const [name, s] of Object.entries(r.settings)) {
    if (s.required && s.default !== undefined) throw new RecipeError(`settings.${name}: a required setting cannot have a default`, { where });
  }
}

/** Loads a recipe from disk: validates it, checks the overlay exists, computes the digest. */
export async function loadRecipe(pathArg: string): Promise<LoadedRecipe> {
  const file = await resolveRecipeFile(pathArg);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    throw new RecipeError(`cannot read recipe (${(cause as Error).message})`, { where: file, cause });
  }
  const recipe = parseRecipe(text, file);
  const dir = dirname(file);
  let overlayDir: string | null = null;
  if (recipe.files !== undefined) {
    overlayDir = resolve(dir, recipe.files);
    const st = await stat(overlayDir).catch(() => null);
    if (!st?.isDirectory()) throw new RecipeError(`files: overlay directory ${JSON.stringify(recipe.files)} does not exist next to the recipe`, { where: file });
  }
  const digest = await recipeDigest(file, overlayDir);
  return { recipe, file, dir, overlayDir, digest };
}

/**
 * sha256 over the recipe file and the overlay tree: for every entry, in byte-sorted
 * path order, its relative path, type, mode and content (or link target). Anything that
 * changes what lands in the image changes the digest; checkout times do not.
 */
export async function recipeDigest(file: string, overlayDir: string | null): Promise<string> {
  const h = createHash('sha256');
  h.update(`recipe\0${basename(file)}\0`);
  h.update(await readFile(file));
  if (overlayDir) {
    for (const rel of await listTree(overlayDir)) {
      const abs = join(overlayDir, rel);
      const st = await lstat(abs);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) h.update(`\0link\0${rel}\0${mode}\0${await readlink(abs)}\0`);
      else if (st.isDirectory()) h.update(`\0dir\0${rel}\0${mode}\0`);
      else if (st.isFile()) {
        h.update(`\0file\0${rel}\0${mode}\0${st.size}\0`);
        for await (const chunk of createReadStream(abs)) h.update(chunk as Buffer);
      } else throw new RecipeError(`overlay holds a special file (${rel}): only files, directories and symlinks are allowed`, { where: abs });
    }
  }
  return h.digest('hex');
}

/** Every path under `dir`, relative, '/'-separated, byte-sorted (stable across machines). */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true });
    for (const e of entries) {
      const abs = join(d, e.name);
      out.push(relative(dir, abs).split(sep).join('/'));
      if (e.isDirectory()) await walk(abs);
    }
  };
  await walk(dir);
  return out.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

/** "512M" / "2G" -> bytes */
export function parseSize(s: string): number {
  const m = /^([1-9][0-9]*)([KMGT])$/.exec(s);
  if (!m) throw new RecipeError(`not a size: ${JSON.stringify(s)}`);
  return Number(m[1]) * 1024 ** ('KMGT'.indexOf(m[2]) + 1);
}

/** The kernel command line the image boots with (the agent appends console=). */
export function kernelCmdline(recipe: Recipe, uuid: string): string {
  return [`root=UUID=${uuid}`, 'ro', recipe.boot.cmdline.trim()].filter(Boolean).join(' ');
}
