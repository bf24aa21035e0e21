// What the dashboard shows about the repository, read from the tree on disk: images,
// versions, channels, and per version the sizes and build facts from its manifest. The
// server reads its own tree here (no signature checks: that is the agent's job); a file
// it cannot read becomes an error line on the page, never a crash.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseMetadata, compareVersions, type Index, type Manifest } from '../format/index.js';
import { manifestPath, INDEX_FILE } from '../format/index.js';

export interface ManifestSummary {
  arch: string;
  apparent: number;
  compressed: number;
  chunks: number;
  suite: string;
  builtAt: string;
  builder: string;
  packageCount: number;
  boot: string;
  memory: number;
  vcpus: number;
}

export interface VersionView {
  version: string;
  arch: string;
  published: string;
  manifestSha256: string;
  channels: string[];
  summary?: ManifestSummary;
  /** chunks (and their compressed bytes) not in the previous version: what an upgrade fetches */
  delta?: { chunks: number; compressed: number; previous: string | null };
  error?: string;
}

export interface ImageView {
  name: string;
  channels: Record<string, string>;
  versionCount: number;
  /** newest first, at most `maxVersions` (channel targets always included) */
  versions: VersionView[];
}

export interface RepositoryView {
  index: { version: number; expires: string; rootVersion: number } | null;
  images: ImageView[];
  error?: string;
}

interface Loaded {
  summary: ManifestSummary;
  /** sha256 -> csize of every chunk (image, kernel, initrd) */
  chunks: Map<string, number>;
}

function summarize(m: Manifest): Loaded {
  const chunks = new Map<string, number>();
  for (const blob of [m.image, m.kernel, m.initrd]) for (const c of blob?.chunks ?? []) chunks.set(c.sha256, c.csize);
  let compressed = 0;
  for (const csize of chunks.values()) compressed += csize;
  return {
    chunks,
    summary: {
      arch: m.arch,
      apparent: m.image.size + m.kernel.size + (m.initrd?.size ?? 0),
      compressed,
      chunks: chunks.size,
      suite: m.build.suite,
      builtAt: m.build.built_at,
      builder: m.build.builder,
      packageCount: m.build.packages.length,
      boot: `${m.boot.type}`,
      memory: m.xen.memory,
      vcpus: m.xen.vcpus,
    },
  };
}

/** The served index.json as it stands (the server's own tree), or null when there is none or it does not parse. */
export async function readServedIndex(repoDir: string): Promise<Index | null> {
  try {
    return parseMetadata('index', await readFile(path.join(repoDir, INDEX_FILE)), INDEX_FILE);
  } catch {
    return null;
  }
}

export class RepositoryViewer {
  // manifests are immutable (content-addressed), so what we learn from one is kept
  private summaries = new Map<string, ManifestSummary>();
  private deltas = new Map<string, { chunks: number; compressed: number }>();

  constructor(
    private readonly repoDir: string,
    private readonly opts: { maxVersions?: number; maxCached?: number } = {},
  ) {}

  private async loadManifest(sha: string): Promise<Loaded> {
    const rel = manifestPath(sha);
    const bytes = await readFile(path.join(this.repoDir, rel));
    return summarize(parseMetadata('manifest', bytes, rel));
  }

  private remember<K, V>(map: Map<K, V>, k: K, v: V): void {
    if (map.size >= (this.opts.maxCached ?? 10_000)) map.delete(map.keys().next().value as K);
    map.set(k, v);
  }

  async view(): Promise<RepositoryView> {
    let index: Index;
    try {
      index = parseMetadata('index', await readFile(path.join(this.repoDir, INDEX_FILE)), INDEX_FILE);
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      return { index: null, images: [], error: missing ? 'no index.json yet: nothing has been published' : (err as Error).message };
    }
    const maxVersions = this.opts.maxVersions ?? 8;
    const images: ImageView[] = [];
    for (const name of Object.keys(index.images).sort()) {
      const img = index.images[name];
      const ordered = Object.keys(img.versions).sort(compareVersions).reverse();
      const targets = new Set(Object.values(img.channels));
      const shown = ordered.filter((v, i) => i < maxVersions || targets.has(v));
      const versions: VersionView[] = [];
      for (const v of shown) {
        const e = img.versions[v];
        const prev = ordered[ordered.indexOf(v) + 1] ?? null;
        const vv: VersionView = {
          version: v,
          arch: e.arch,
          published: e.published,
          manifestSha256: e.manifest,
          channels: Object.entries(img.channels)
            .filter(([, t]) => t === v)
            .map(([c]) => c)
            .sort(),
        };
        try {
          vv.summary = await this.summary(e.manifest);
          vv.delta = { previous: prev, ...(await this.delta(e.manifest, prev ? img.versions[prev].manifest : null)) };
        } catch (err) {
          vv.error = (err as Error).message;
        }
        versions.push(vv);
      }
      images.push({ name, channels: img.channels, versionCount: ordered.length, versions });
    }
    return { index: { version: index.version, expires: index.expires, rootVersion: index.root_version }, images };
  }

  private async summary(sha: string): Promise<ManifestSummary> {
    let s = this.summaries.get(sha);
    if (!s) {
      s = (await this.loadManifest(sha)).summary;
      this.remember(this.summaries, sha, s);
    }
    return s;
  }

  private async delta(sha: string, prevSha: string | null): Promise<{ chunks: number; compressed: number }> {
    const key = `${sha}:${prevSha}`;
    let d = this.deltas.get(key);
    if (!d) {
      const cur = await this.loadManifest(sha);
      const before = prevSha ? (await this.loadManifest(prevSha)).chunks : new Map<string, number>();
      d = { chunks: 0, compressed: 0 };
      for (const [c, csize] of cur.chunks) {
        if (!before.has(c)) {
          d.chunks++;
          d.compressed += csize;
        }
      }
      this.remember(this.deltas, key, d);
    }
    return d;
  }
}
