// Pack files: written by the writer with every new version, laid out by the signed
// manifest alone, read with Range requests and verified frame by frame.
import test from 'ava';
import { readFile, rm, writeFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import {
  RepoClient, createFetcher, packLayout, planPackRanges, readPackRange, packPath, chunkPath, manifestChunks, isRepositoryPath, isImmutablePath,
  FetchError, DigestError, type Chunk, type Manifest,
} from '../../format/index.js';
import { startServer } from '../../repo-server/server.js';
import { parseServerConfig } from '../../repo-server/config.js';
import { makeRepo, makePackage, publish, serveDir } from '../helpers/repo.js';

const shared = (async () => {
  const fx = await makeRepo();
  const v1 = await makePackage(fx, { version: '1.0.0' });
  const r1 = await publish(fx, v1.tarPath, 'stable');
  return { fx, v1, r1 };
})();
test.after.always(async () => (await shared).fx.cleanup());

const sum = (ns: number[]) => ns.reduce((a, b) => a + b, 0);

test.serial('publishing writes packs/<manifest>.pack: the stored frames of every distinct chunk, in manifest order', async (t) => {
  const { fx, v1, r1 } = await shared;
  t.true(r1.pack);
  const pack = await readFile(join(fx.repoDir, packPath(r1.manifestSha256)));
  const frames = await Promise.all(manifestChunks(v1.manifest).map((c) => readFile(join(fx.repoDir, chunkPath(c.sha256)))));
  t.true(pack.equals(Buffer.concat(frames)));
  t.is(pack.length, packLayout(v1.manifest).size);
  t.true(isRepositoryPath(packPath(r1.manifestSha256)));
  t.true(isImmutablePath(packPath(r1.manifestSha256)));
  t.false(isRepositoryPath(`packs/${r1.manifestSha256}.pack.tmp-1-abcd`));
});

test.serial('planPackRanges: exactly the wanted frames, adjacent ones merged up to the size cap', (t) => {
  const chunks: Chunk[] = Array.from({ length: 10 }, (_, i) => ({ offset: i * 65536, length: 65536, sha256: i.toString(16).padStart(64, '0'), csize: 1000 + i }));
  const m = { image: { fs: 'ext4', size: 10 * 65536, chunks }, kernel: { size: 0, sha256: 'f'.repeat(64), chunks: [] } } as unknown as Manifest;
  const layout = packLayout(m);
  t.is(layout.size, sum(chunks.map((c) => c.csize)));
  // all wanted, no cap: one request for the whole pack
  t.deepEqual(planPackRanges(layout, () => true).map((r) => [r.start, r.end]), [[0, layout.size]]);
  // a cap splits runs; every range stays under it and they tile the pack
  const capped = planPackRanges(layout, () => true, 3100);
  t.true(capped.every((r) => r.end - r.start <= 3100));
  t.is(sum(capped.map((r) => r.entries.length)), 10);
  t.is(capped[0].start, 0);
  for (let i = 1; i < capped.length; i++) t.is(capped[i].start, capped[i - 1].end);
  // holes: chunks 0-1, 5, 7-9 wanted -> three runs, no byte of an unwanted chunk
  const want = new Set([0, 1, 5, 7, 8, 9].map((i) => chunks[i].sha256));
  const ranges = planPackRanges(layout, (s) => want.has(s));
  t.deepEqual(ranges.map((r) => r.entries.map((e) => chunks.indexOf(e.chunk))), [[0, 1], [5], [7, 8, 9]]);
  t.is(sum(ranges.map((r) => r.end - r.start)), sum([...want].map((s) => chunks.find((c) => c.sha256 === s)!.csize)));
});

async function collect(client: RepoClient, sha: string, m: Manifest, maxBytes?: number) {
  const got = new Map<string, Buffer>();
  for (const range of planPackRanges(packLayout(m), () => true, maxBytes)) {
    await client.packChunks(sha, range, (c, raw) => void got.set(c.sha256, raw));
  }
  return got;
}

async function httpClient(url: string, rootKeyArmored: string): Promise<RepoClient> {
  const fetcher = createFetcher(url);
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { keyArmored: rootKeyArmored }) });
  await client.update();
  return client;
}

test.serial('RepoClient.packChunks over `loopship serve`: Range requests give every chunk, verified', async (t) => {
  const { fx, v1, r1 } = await shared;
  const srv = await startServer({ repoDir: fx.repoDir, config: parseServerConfig({}), stateDir: null });
  t.teardown(() => srv.close(0));
  const client = await httpClient(srv.url, fx.rootKeyArmored);
  const got = await collect(client, r1.manifestSha256, v1.manifest, 64 * 1024);
  t.is(got.size, manifestChunks(v1.manifest).length);
  const image = await readFile(v1.imagePath);
  for (const c of v1.manifest.image.chunks) t.true(got.get(c.sha256)!.equals(image.subarray(c.offset, c.offset + c.length)));
});

test.serial('a tampered pack: the bad frame is refused with the pack and chunk named; the frames before it were delivered', async (t) => {
  const { fx, v1, r1 } = await shared;
  const file = join(fx.repoDir, packPath(r1.manifestSha256));
  const good = await readFile(file);
  const layout = packLayout(v1.manifest);
  const victim = layout.entries[3];
  const bad = Buffer.from(good);
  bad[victim.offset + Math.floor(victim.chunk.csize / 2)] ^= 0x55;
  const client = new RepoClient({ fetchers: [createFetcher(fx.repoDir)], trustedRoot: await RepoClient.pin(createFetcher(fx.repoDir), { keyArmored: fx.rootKeyArmored }) });
  await client.update();
  await writeFile(file, bad);
  t.teardown(() => writeFile(file, good));
  const [range] = planPackRanges(layout, () => true);
  const delivered: string[] = [];
  const err = await t.throwsAsync(client.packChunks(r1.manifestSha256, range, (c) => void delivered.push(c.sha256)));
  t.true(err instanceof DigestError, String(err));
  t.regex(err!.message, /sha256|zstd|decompressed/);
  t.true((err as DigestError).where!.includes(packPath(r1.manifestSha256)) && (err as DigestError).where!.includes(victim.chunk.sha256), (err as DigestError).where);
  t.deepEqual(delivered, layout.entries.slice(0, 3).map((e) => e.chunk.sha256));
});

test.serial('readPackRange: a short body and trailing bytes are both refused', async (t) => {
  const { fx, v1, r1 } = await shared;
  const pack = await readFile(join(fx.repoDir, packPath(r1.manifestSha256)));
  const [range] = planPackRanges(packLayout(v1.manifest), () => true);
  const short = await t.throwsAsync(readPackRange(Readable.from([pack.subarray(0, pack.length - 10)]), range, 'x', () => {}));
  t.regex(short!.message, /ended after \d+ of its \d+ chunks/);
  const long = await t.throwsAsync(readPackRange(Readable.from([pack, Buffer.alloc(5)]), range, 'x', () => {}));
  t.regex(long!.message, /5 bytes past its last chunk/);
  // split into 1-byte pieces: frames spanning many reads are reassembled
  let n = 0;
  await readPackRange(Readable.from((function* () { for (let i = 0; i < pack.length; i += 777) yield pack.subarray(i, i + 777); })()), range, 'x', () => void n++);
  t.is(n, range.entries.length);
});

test.serial('a server that ignores Range (200 with the whole file) is refused: no byte is shifted into the wrong chunk', async (t) => {
  const { fx, v1, r1 } = await shared;
  const srv = await serveDir(fx.repoDir); // a plain static server: no Range support
  t.teardown(() => srv.close());
  const client = await httpClient(srv.url, fx.rootKeyArmored);
  const [, second] = planPackRanges(packLayout(v1.manifest), () => true, 64 * 1024);
  const err = await t.throwsAsync(client.packChunks(r1.manifestSha256, second, () => {}));
  t.true(err instanceof FetchError);
  t.regex(err!.message, /HTTP 200 \(expected 206\)/);
});

test.serial('a missing pack is a NOT_FOUND fetch error; writeMissingPacks rebuilds it byte for byte', async (t) => {
  const { fx, v1, r1 } = await shared;
  const file = join(fx.repoDir, packPath(r1.manifestSha256));
  const before = await readFile(file);
  await rm(file);
  t.teardown(() => writeFile(file, before));
  const client = new RepoClient({ fetchers: [createFetcher(fx.repoDir)], trustedRoot: await RepoClient.pin(createFetcher(fx.repoDir), { keyArmored: fx.rootKeyArmored }) });
  await client.update();
  const [range] = planPackRanges(packLayout(v1.manifest), () => true);
  const err = await t.throwsAsync(client.packChunks(r1.manifestSha256, range, () => {}));
  t.is((err as FetchError).code, 'NOT_FOUND');
  const r = await fx.writer.writeMissingPacks();
  t.deepEqual(r, { written: ['tiny 1.0.0'], skipped: [] });
  t.true((await readFile(file)).equals(before));
  t.deepEqual(await fx.writer.writeMissingPacks(), { written: [], skipped: [] });
});

test.serial('no pack is written when a stored frame does not match the manifest csize (the layout would be wrong)', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  const v = await makePackage(fx, { version: '3.0.0', seed: 'other' });
  await publish(fx, v.tarPath);
  const sha = (await fx.writer.readIndex()).images.tiny.versions['3.0.0'].manifest;
  await rm(join(fx.repoDir, packPath(sha)));
  // one stored chunk in another encoding of the same content: a zstd skippable frame after it
  const c = manifestChunks(v.manifest)[0];
  const p = join(fx.repoDir, chunkPath(c.sha256));
  const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
  await writeFile(p, Buffer.concat([await readFile(p), skippable]));
  t.not((await stat(p)).size, c.csize);
  t.deepEqual(await fx.writer.writeMissingPacks(), { written: [], skipped: ['tiny 3.0.0'] });
  t.false(existsSync(join(fx.repoDir, packPath(sha))));
});
