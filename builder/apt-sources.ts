// Which Debian mirror to debootstrap from when neither the recipe nor --mirror says:
// the one the build host already uses. Recipes stay free of host names, and a site
// behind a proxy or a local mirror builds with what already works there.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LoopshipError } from '../format/errors.js';

export interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
  /** file it came from, for messages */
  file: string;
}

/** deb822 format (.sources): paragraphs of "Field: value" with continuation lines. */
export function parseDeb822Sources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (const para of text.split(/\n[ \t]*\n/)) {
    const fields = new Map<string, string>();
    let last: string | null = null;
    for (const raw of para.split('\n')) {
      if (raw.startsWith('#')) continue;
      if (/^[ \t]/.test(raw) && last) {
        fields.set(last, `${fields.get(last)} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (!m) continue;
      last = m[1].toLowerCase();
      fields.set(last, m[2].trim());
    }
    if (!fields.has('uris') || (fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue;
    const words = (k: string) => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
    out.push({ types: words('types'), uris: words('uris'), suites: words('suites'), components: words('components'), file });
  }
  return out;
}

/** One-line format (sources.list): "deb [options] uri suite component...". */
export function parseOneLineSources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (let line of text.split('\n')) {
    line = line.replace(/#.*$/, '').trim();
    if (!line) continue;
    const m = /^(deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({ types: [m[1]], uris: [m[2]], suites: [m[3]], components: m[4].split(/\s+/).filter(Boolean), file });
  }
  return out;
}

/** All apt sources configured under `rootDir` (default /): sources.list and sources.list.d/*.{list,sources}. */
export async function readAptSources(rootDir = '/'): Promise<AptSource[]> {
  const etc = join(rootDir, 'etc/apt');
  const out: AptSource[] = [];
  const main = join(etc, 'sources.list');
  const text = await readFile(main, 'utf8').catch(() => null);
  if (text !== null) out.push(...parseOneLineSources(text, main));
  const d = join(etc, 'sources.list.d');
  const names = (await readdir(d).catch(() => [] as string[])).sort();
  for (const name of names) {
    const f = join(d, name);
    if (name.endsWith('.list')) out.push(...parseOneLineSources(await readFile(f, 'utf8'), f));
    else if (name.endsWith('.sources')) out.push(...parseDeb822Sources(await readFile(f, 'utf8'), f));
    // anything else (.disabled, .save, .dpkg-old) is not read by apt either
  }
  return out;
}

const POCKET = /-(security|updates|backports|proposed-updates)$|\/updates$/;

/**
 * The mirror URI to debootstrap `suite` from. Prefers a binary source that lists the
 * suite itself; otherwise one that lists a sibling Debian suite (a bookworm host can
 * build trixie from the same archive); never a -security/-updates pocket or a
 * third-party repository without a "main" component.
 */
export function pickMirror(sources: AptSource[], suite: string): string | null {
  const binary = sources.filter((s) => s.types.includes('deb') && s.uris.length);
  const exact = binary.find((s) => s.suites.includes(suite));
  if (exact) return stripSlash(exact.uris[0]);
  const sibling = binary.find((s) => s.components.includes('main') && s.suites.some((x) => !POCKET.test(x) && /^[a-z]+$/.test(x)) && /\/debian\/?$/.test(s.uris[0]));
  return sibling ? stripSlash(sibling.uris[0]) : null;
}

const stripSlash = (u: string) => u.replace(/\/+$/, '');

/** The mirror to use, in order: explicit (--mirror), the recipe's, the build host's apt sources. */
export async function resolveMirror(opts: { explicit?: string; recipeMirror?: string; suite: string; rootDir?: string }): Promise<string> {
  if (opts.explicit) return stripSlash(opts.explicit);
  if (opts.recipeMirror) return stripSlash(opts.recipeMirror);
  const sources = await readAptSources(opts.rootDir);
  const m = pickMirror(sources, opts.suite);
  if (!m) {
    throw new LoopshipError('CONFIG_INVALID', `no Debian mirror for suite ${opts.suite} found in the build host's apt sources; pass --mirror URL`, { where: join(opts.rootDir ?? '/', 'etc/apt') });
  }
  return m;
}
