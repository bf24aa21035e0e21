// The verifier: what a client checks, in order (DESIGN.md "Trust"). Each step is a
// small function over bytes already fetched; RepoClient is the thin I/O shell that
// walks them against one or more mirrors.
import { FetchError, RootChainError, DigestError, VerificationError, LoopshipError, MetadataError } from './errors.js';
import { LIMITS, zstdCompressBound } from './limits.js';
import { INDEX_FILE, ROOT_FILE, indexHistoryPath, chunkPath, manifestPath, packPath, rootHistoryPath, sigPath } from './paths.js';
import { readPackRange, splitPackRange, frameWhere, type PackEntry, type PackRange } from './pack.js';
import { parseMetadata, latestVersion, type Root, type Index, type Manifest, type Chunk, type IndexVersion } from './schema.js';
import { verifyRootTransition, verifyRootSignature, verifyManifestSignature, verifyIndex, checkRootInForce, checkRootKeys } from './trust.js';
import { decodeChunk, sha256Hex } from './codec.js';
import { readPublicKey, requireThreshold, fingerprintOf } from '../keys/pgp.js';
import type { Fetcher } from './fetcher.js';

export { verifyIndex, checkNotExpired } from './trust.js';

// ---------- pure steps ----------

export async function verifyManifest(
  bytes: Buffer,
  signature: string,
  root: Root,
  expect: { name: string; version: string; entry: IndexVersion },
  where: string,
  now: Date = new Date(),
): Promise<Manifest> {
  if (bytes.length !== expect.entry.size) {
    throw new DigestError('SIZE_MISMATCH', `${bytes.length} bytes, the index says ${expect.entry.size}`, { where });
  }
  const digest = sha256Hex(bytes);
  if (digest !== expect.entry.manifest) {
    throw new DigestError('DIGEST_MISMATCH', `sha256 ${digest} does not match the index's ${expect.entry.manifest}`, { where });
  }
  await verifyManifestSignature(bytes, signature, root, where, { now });
  const manifest = parseMetadata('manifest', bytes, where);
  if (manifest.name !== expect.name || manifest.version !== expect.version || manifest.arch !== expect.entry.arch) {
    throw new VerificationError('MIX_AND_MATCH', `manifest is for ${manifest.name} ${manifest.version} (${manifest.arch}), the index entry is ${expect.name} ${expect.version} (${expect.entry.arch})`, { where });
  }
  return manifest;
}

/** root/<v>.json and its signature, parsed; null when the repository has no such version. */
async function fetchRootVersion(fetcher: Fetcher, v: number, withSignature: boolean): Promise<{ root: Root; bytes: Buffer; signature?: string; where: string } | null> {
  const path = rootHistoryPath(v);
  const where = `${fetcher.source}/${path}`;
  let bytes: Buffer;
  try {
    bytes = await fetcher.get(path, LIMITS.rootBytes);
  } catch (err) {
    if (err instanceof FetchError && err.code === 'NOT_FOUND') return null;
    throw err;
  }
  const root = parseMetadata('root', bytes, where);
  if (root.version !== v) throw new RootChainError('ROOT_CHAIN', `file holds root version ${root.version}, expected ${v}`, { where });
  const signature = withSignature ? (await fetcher.get(sigPath(path), LIMITS.signatureBytes)).toString('utf8') : undefined;
  return { root, bytes, signature, where };
}

// ---------- the I/O shell ----------

export type RootPin = { keyArmored: string } | { fingerprint: string };

export interface RepoClientOptions {
  fetchers: Fetcher[];
  trustedRoot: Root;
  lastIndexVersion?: number;
  now?: () => Date;
}

export interface UpdateResult {
  root: Root;
  index: Index;
  rootBytes: Buffer;
  indexBytes: Buffer;
  indexSignature: string;
  /** root versions accepted in this update */
  rootsAccepted: number[];
  /** their files as verified (a mirror writes these, never a second download) */
  rootFiles: { version: number; bytes: Buffer; signature: string }[];
  source: string;
}

export interface Resolved {
  name: string;
  version: string;
  entry: IndexVersion;
}

export class RepoClient {
  private fetchers: Fetcher[];
  private root: Root;
  private rootBytes?: Buffer;
  private index?: Index;
  private lastIndexVersion?: number;
  private readonly now: () => Date;

  constructor(opts: RepoClientOptions) {
    if (opts.fetchers.length === 0) throw new LoopshipError('USAGE', 'no repository configured');
    this.fetchers = [...opts.fetchers];
    this.root = opts.trustedRoot;
    this.lastIndexVersion = opts.lastIndexVersion;
    this.now = opts.now ?? (() => new Date());
  }

  get trustedRoot(): Root {
    return this.root;
  }
  get currentIndex(): Index | undefined {
    return this.index;
  }

  /**
   * Establishes the first trusted root from a pin (a key file or a fingerprint from the
   * install media): the lowest root version whose root role holds the pinned key and
   * that this key signed. Nothing from the network is trusted before that check.
   */
  static async pin(fetcher: Fetcher, pin: RootPin, opts: { now?: Date } = {}): Promise<Root> {
    const now = opts.now ?? new Date();
    const pinnedKey = 'keyArmored' in pin ? await readPublicKey(pin.keyArmored, 'pinned root key') : undefined;
    const fpr = pinnedKey ? fingerprintOf(pinnedKey) : (pin as { fingerprint: string }).fingerprint.toLowerCase().replace(/\s+/g, '');
    if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(fpr)) throw new LoopshipError('USAGE', `not an OpenPGP fingerprint: ${fpr}`);
    for (let v = 1; v <= LIMITS.rootChainLength; v++) {
      const found = await fetchRootVersion(fetcher, v, false);
      if (!found) {
        throw new RootChainError('ROOT_CHAIN', `no root version lists the pinned key ${fpr} as a root key (looked at versions 1-${v - 1})`, { where: fetcher.source });
      }
      const { root, bytes, where } = found;
      if (!root.roles.root.keys.includes(fpr)) continue;
      const sig = (await fetcher.get(sigPath(rootHistoryPath(v)), LIMITS.signatureBytes)).toString('utf8');
      const key = pinnedKey ?? (await readPublicKey(root.keys[fpr].public_key, where));
      if (fingerprintOf(key) !== fpr) throw new MetadataError('METADATA_INVALID', `key listed as ${fpr} has fingerprint ${fingerprintOf(key)}`, { where });
      await checkRootKeys(root, where);
      await requireThreshold(bytes, sig, [key], 1, where, 'pinned root', { now, keyValidity: 'signed' });
      await verifyRootSignature(bytes, sig, root, where, { now });
      return root;
    }
    throw new RootChainError('ROOT_CHAIN', 'root chain too long', { where: fetcher.source });
  }

  /** Walks the root chain from the trusted root, then fetches and verifies the index. Tries mirrors in order. */
  async update(): Promise<UpdateResult> {
    const errors: { source: string; err: unknown }[] = [];
    for (let i = 0; i < this.fetchers.length; i++) {
      const fetcher = this.fetchers[i];
      try {
        const result = await this.updateFrom(fetcher);
        // The mirror that worked goes first for the files that follow.
        if (i > 0) this.fetchers = [fetcher, ...this.fetchers.filter((f) => f !== fetcher)];
        return result;
      } catch (err) {
        errors.push({ source: fetcher.source, err });
      }
    }
    if (errors.length === 1) throw errors[0].err;
    // Prefer a verification failure over "mirror down": it is the more important news.
    const first = errors.find((e) => e.err instanceof VerificationError) ?? errors[0];
    const summary = errors.map((e) => (e.err as Error).message).join("; ");
    const base = first.err as LoopshipError;
    const Ctor = (base?.constructor ?? LoopshipError) as new (code: string, msg: string, o: object) => LoopshipError;
    if (base instanceof FetchError) throw new FetchError(`every mirror failed: ${summary}`, { cause: base, code: base.code });
    throw new Ctor(base.code ?? 'INTERNAL', `every mirror failed: ${summary}`, { cause: base });
  }

  private async updateFrom(fetcher: Fetcher): Promise<UpdateResult> {
    const now = this.now();
    let root = this.root;
    const accepted: number[] = [];
    const rootFiles: UpdateResult['rootFiles'] = [];
    let rootBytes = this.rootBytes;
    for (let n = 0; n < LIMITS.rootChainLength; n++) {
      const found = await fetchRootVersion(fetcher, root.version + 1, true);
      if (!found) break;
      const { root: next, bytes, signature: sig, where } = found;
      await verifyRootTransition(root, next, bytes, sig!, where, { now });
      root = next;
      rootBytes = bytes;
      accepted.push(next.version);
      rootFiles.push({ version: next.version, bytes, signature: sig! });
    }
    // root.json names the newest root: if the chain stopped short of it, a link is missing.
    try {
      const latest = parseMetadata('root', await fetcher.get(ROOT_FILE, LIMITS.rootBytes), `${fetcher.source}/${ROOT_FILE}`);
      if (latest.version > root.version) {
        throw new RootChainError('ROOT_CHAIN', `root.json is version ${latest.version} but the chain stops at ${root.version}: ${rootHistoryPath(root.version + 1)} is missing`, { where: `${fetcher.source}/${rootHistoryPath(root.version + 1)}` });
      }
    } catch (err) {
      if (!(err instanceof FetchError && err.code === 'NOT_FOUND')) throw err;
    }
    // Checked after the walk: an expired root may be replaced by a newer one in the chain.
    checkRootInForce(root, now, `${fetcher.source}/${accepted.length ? rootHistoryPath(root.version) : ROOT_FILE}`);

    const where = `${fetcher.source}/${INDEX_FILE}`;
    const indexBytes = await fetcher.get(INDEX_FILE, LIMITS.indexBytes);
    let indexSignature = (await fetcher.get(sigPath(INDEX_FILE), LIMITS.signatureBytes)).toString('utf8');
    let index: Index;
    try {
      index = await verifyIndex(indexBytes, indexSignature, root, { now, lastVersion: this.lastIndexVersion, where });
    } catch (err) {
      // A publisher replaces index.json and index.json.asc one after the other; a reader
      // between the two renames sees a mismatch. The versioned copy is written first, so
      // its signature settles whether these bytes are genuine.
      const claimed = (() => {
        try {
          return JSON.parse(indexBytes.toString('utf8')).version;
        } catch {
          return undefined;
        }
      })();
      if (!(err instanceof VerificationError) || err.code !== 'UNKNOWN_KEY' && err.code !== 'SIGNATURE_THRESHOLD' || !Number.isInteger(claimed) || claimed < 1) throw err;
      try {
        indexSignature = (await fetcher.get(sigPath(indexHistoryPath(claimed)), LIMITS.signatureBytes)).toString('utf8');
      } catch {
        throw err;
      }
      index = await verifyIndex(indexBytes, indexSignature, root, { now, lastVersion: this.lastIndexVersion, where });
    }
    // Commit only once everything verified.
    this.root = root;
    this.rootBytes = rootBytes;
    this.index = index;
    this.lastIndexVersion = index.version;
    return { root, index, rootBytes: rootBytes ?? Buffer.from(JSON.stringify(root)), indexBytes, indexSignature, rootsAccepted: accepted, rootFiles, source: fetcher.source };
  }

  /** NAME with an exact version, a channel, or (neither) the "stable" channel, else the newest version. */
  resolve(name: string, spec: { version?: string; channel?: string } = {}): Resolved {
    const index = this.requireIndex();
    const image = index.images[name];
    if (!image) throw new LoopshipError('NOT_FOUND', `no image named ${name} in the repository (has: ${Object.keys(index.images).join(', ') || 'none'})`);
    let version = spec.version;
    if (!version && spec.channel) {
      version = image.channels[spec.channel];
      if (!version) throw new LoopshipError('NOT_FOUND', `image ${name} has no channel ${spec.channel} (has: ${Object.keys(image.channels).join(', ') || 'none'})`);
    }
    version ??= image.channels.stable ?? latestVersion(image);
    const entry = version ? image.versions[version] : undefined;
    if (!version || !entry) throw new LoopshipError('NOT_FOUND', `image ${name} has no version ${version ?? '(none published)'}`);
    return { name, version, entry };
  }

  async manifest(name: string, version: string): Promise<{ manifest: Manifest; sha256: string; bytes: Buffer; signature: string }> {
    const { entry } = this.resolve(name, { version });
    const path = manifestPath(entry.manifest);
    return this.withMirrors(path, async (fetcher) => {
      const where = `${fetcher.source}/${path}`;
      const bytes = await fetcher.get(path, entry.size);
      const signature = (await fetcher.get(sigPath(path), LIMITS.signatureBytes)).toString('utf8');
      const manifest = await verifyManifest(bytes, signature, this.root, { name, version, entry }, where, this.now());
      return { manifest, sha256: entry.manifest, bytes, signature };
    });
  }

  /** A chunk's raw bytes, verified against the manifest's sha256 and length. */
  async chunk(c: Chunk): Promise<Buffer> {
    return (await this.chunkWithCompressed(c)).raw;
  }

  /** The verified raw bytes and the zstd frame they came in (for mirrors and exports). */
  async chunkWithCompressed(c: Chunk): Promise<{ raw: Buffer; compressed: Buffer }> {
    const path = chunkPath(c.sha256);
    return this.withMirrors(path, async (fetcher) => {
      const compressed = await fetcher.get(path, zstdCompressBound(c.length));
      return { raw: decodeChunk(compressed, c, `${fetcher.source}/${path}`), compressed };
    });
  }

  /**
   * The chunks of one run of a version's pack (format/pack.ts), each decoded and verified
   * against the manifest before `onChunk` sees it, from the preferred mirror in one Range
   * request. Throws on a missing pack or a bad frame; the caller fetches what was not
   * delivered chunk by chunk (which tries every mirror).
   */
  async packChunks(manifestSha256: string, range: PackRange, onChunk: (c: Chunk, raw: Buffer) => Promise<void> | void): Promise<void> {
    const fetcher = this.fetchers[0];
    const path = packPath(manifestSha256);
    const body = await fetcher.stream(path, range.end - range.start, { start: range.start, end: range.end });
    try {
      await readPackRange(body, range, `${fetcher.source}/${path}`, onChunk);
    } finally {
      body.destroy();
    }
  }

  /**
   * packChunks without the decoding: each frame with the place it names in error messages,
   * NOT verified. For callers that decode elsewhere (the agent's worker threads); they must
   * decodeChunk every frame before using a byte of it.
   */
  async packFrames(manifestSha256: string, range: PackRange, onFrame: (e: PackEntry, frame: Buffer, where: string) => Promise<void> | void): Promise<void> {
    const fetcher = this.fetchers[0];
    const path = packPath(manifestSha256);
    const where = `${fetcher.source}/${path}`;
    const body = await fetcher.stream(path, range.end - range.start, { start: range.start, end: range.end });
    try {
      await splitPackRange(body, range, where, (e, frame) => onFrame(e, frame, frameWhere(where, e)));
    } finally {
      body.destroy();
    }
  }

  /** The fetchers in their current order of preference. */
  get sources(): readonly Fetcher[] {
    return this.fetchers;
  }

  /** Runs `fn` against each mirror in turn until one succeeds. */
  private async withMirrors<T>(path: string, fn: (f: Fetcher) => Promise<T>): Promise<T> {
    let firstErr: unknown;
    for (const fetcher of this.fetchers) {
      try {
        return await fn(fetcher);
      } catch (err) {
        firstErr ??= err;
      }
    }
    throw firstErr ?? new FetchError('no mirror', { where: path });
  }

  private requireIndex(): Index {
    if (!this.index) throw new LoopshipError('INTERNAL', 'update() must run before resolving images');
    return this.index;
  }
}
