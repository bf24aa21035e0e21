// The install engine on the pack path: missing chunks come from the version's pack with
// one Range request per run; a missing or bad pack falls back to per-chunk files, each
// chunk verified either way; our own write failing is never mistaken for a bad pack.
import test from 'ava';
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { installVersion } from '../../client-agent/install.js';
import type { ChunkSource } from '../../client-agent/install.js';
import { StateDir } from '../../client-agent/state.js';
import { packPath, chunkPath, packLayout, manifestChunks, RepoClient, createFetcher, type PackRange } from '../../format/index.js';
import { serveDir } from '../helpers/repo.js';
import { makeRepo, makePackage, publish, clientFor, sha256File, sha256Of, allocated } from './helpers.js';

const shared = (async () => {
  const fx = await makeRepo();
  const v1 = await makePackage(fx, { version: '1.0.0' });
  const p1 = await publish(fx, v1.tarPath, 'stable');
  // v2: two 4 KiB blocks changed, far apart: two runs of new chunks
  const v2 = await makePackage(fx, { version: '2.0.0', patch: { offset: 64 * 1024, data: Buffer.alloc(4096, 7) } });
  const p2 = await publish(fx, v2.tarPath);
  return { fx, v1, v2, p1, p2 };
})();
test.after.always(async () => (await shared).fx.cleanup());

/**
 * The real client, counting Range requests and per-chunk fetches. By default it hands out
 * raw frames (the engine decodes on worker threads, as the agent does); `mainThread` gives
 * only decoded chunks (the engine's other path).
 */
function counting(client: RepoClient, hook?: { afterChunks?: number; then?: () => Promise<void>; mainThread?: boolean }) {
  const ranges: PackRange[] = [];
  const single: string[] = [];
  let delivered = 0;
  const before = async () => {
    if (hook?.afterChunks !== undefined && delivered++ === hook.afterChunks) await hook.then!();
  };
  const source: ChunkSource = {
    chunk: (c) => (single.push(c.sha256), client.chunk(c)),
    packChunks: (sha, range, onChunk) => {
      ranges.push(range);
      return client.packChunks(sha, range, async (c, raw) => {
        await before();
        await onChunk(c, raw);
      });
    },
  };
  if (!hook?.mainThread) {
    source.packFrames = (sha, range, onFrame) => {
      ranges.push(range);
      return client.packFrames(sha, range, async (e, frame, where) => {
        await before();
        await onFrame(e, frame, where);
      });
    };
  }
  return { source, ranges, single };
}

async function newState(dir: string): Promise<StateDir> {
  const state = new StateDir(await mkdtemp(join(dir, 'state-')));
  await state.init();
  return state;
}

test.serial('a fresh install is a few Range requests on the pack and no per-chunk fetch', async (t) => {
  const { fx, v1 } = await shared;
  const state = await newState(fx.dir);
  const client = await clientFor(fx);
  const verified = await client.manifest('tiny', '1.0.0');
  const { source, ranges, single } = counting(client);
  const r = await installVersion({ state, verified, source, packRangeBytes: 512 * 1024, bootDisk: true });
  t.is(await sha256File(join(state.versionDir('tiny', '1.0.0'), 'verified.img')), sha256Of(await readFile(v1.imagePath)));
  // the boot disk is written in the same pass: same bytes, same holes
  const disk = join(state.versionDir('tiny', '1.0.0'), 'disk.img');
  t.is(await sha256File(disk), sha256Of(await readFile(v1.imagePath)));
  t.is(await allocated(disk), await allocated(join(state.versionDir('tiny', '1.0.0'), 'verified.img')));
  t.deepEqual(single, []);
  const size = packLayout(verified.manifest).size;
  t.is(r.rangeRequests, ranges.length);
  t.true(ranges.length >= Math.ceil(size / (512 * 1024)) && ranges.length <= Math.ceil(size / (512 * 1024)) + 2, `${ranges.length} ranges for ${size} bytes`);
  t.is(r.fetchedBytes, r.fullCompressedBytes);
  t.is(r.fetchedChunks, manifestChunks(verified.manifest).length);
  t.is(r.packFallbacks, 0);
});

test.serial('an upgrade fetches exactly the new chunks, by runs, from the new version\'s pack', async (t) => {
  const { fx, v2 } = await shared;
  const state = await newState(fx.dir);
  const client = await clientFor(fx);
  await installVersion({ state, verified: await client.manifest('tiny', '1.0.0'), source: client });
  const verified = await client.manifest('tiny', '2.0.0');
  const old = new Set(manifestChunks((await client.manifest('tiny', '1.0.0')).manifest).map((c) => c.sha256));
  const fresh = manifestChunks(verified.manifest).filter((c) => !old.has(c.sha256));
  const { source, ranges, single } = counting(client);
  const r = await installVersion({ state, verified, source });
  t.is(await sha256File(join(state.versionDir('tiny', '2.0.0'), 'verified.img')), sha256Of(await readFile(v2.imagePath)));
  t.deepEqual(single, []);
  t.true(fresh.length >= 1);
  t.deepEqual(ranges.flatMap((x) => x.entries.map((e) => e.chunk.sha256)).sort(), fresh.map((c) => c.sha256).sort());
  t.is(r.fetchedBytes, fresh.reduce((s, c) => s + c.csize, 0));
  t.is(ranges.reduce((s, x) => s + x.end - x.start, 0), r.fetchedBytes, 'no byte of a chunk the host has is downloaded');
});

test.serial('no pack on the repository: one notice, then chunk by chunk', async (t) => {
  const { fx, v1, p1 } = await shared;
  const file = join(fx.repoDir, packPath(p1.manifestSha256));
  const saved = await readFile(file);
  await rm(file);
  t.teardown(() => writeFile(file, saved));
  const state = await newState(fx.dir);
  const client = await clientFor(fx);
  const verified = await client.manifest('tiny', '1.0.0');
  const { source, single } = counting(client);
  const notices: string[] = [];
  const r = await installVersion({ state, verified, source, onNotice: (m) => notices.push(m), packRangeBytes: 256 * 1024 });
  t.is(await sha256File(join(state.versionDir('tiny', '1.0.0'), 'verified.img')), sha256Of(await readFile(v1.imagePath)));
  t.is(single.length, manifestChunks(verified.manifest).length);
  t.is(notices.filter((n) => /no pack for manifest tiny 1\.0\.0/.test(n)).length, 1, notices.join('\n'));
  t.is(r.fetchedBytes, r.fullCompressedBytes);
});

for (const mainThread of [false, true]) test.serial(`a tampered pack: the bad frame falls back to its chunk file, and the image is still exact (decoded ${mainThread ? 'on the main thread' : 'on workers'})`, async (t) => {
  const { fx, v1, p1 } = await shared;
  const file = join(fx.repoDir, packPath(p1.manifestSha256));
  const saved = await readFile(file);
  const layout = packLayout(v1.manifest);
  const victim = layout.entries[Math.floor(layout.entries.length / 2)];
  const bad = Buffer.from(saved);
  bad[victim.offset + 20] ^= 0xff;
  await writeFile(file, bad);
  t.teardown(() => writeFile(file, saved));
  const state = await newState(fx.dir);
  const client = await clientFor(fx);
  const { source, single } = counting(client, { mainThread });
  const notices: string[] = [];
  const r = await installVersion({ state, verified: await client.manifest('tiny', '1.0.0'), source, onNotice: (m) => notices.push(m) });
  t.is(await sha256File(join(state.versionDir('tiny', '1.0.0'), 'verified.img')), sha256Of(await readFile(v1.imagePath)));
  t.true(single.includes(victim.chunk.sha256));
  t.is(r.packFallbacks, 1);
  t.regex(notices.join('\n'), new RegExp(`pack range .* failed .*${victim.chunk.sha256}`));
  // on workers only the bad frame falls back; on the main thread, the rest of its run too
  if (!mainThread) t.deepEqual(single, [victim.chunk.sha256]);
});

test.serial('pack and chunk file both tampered: the install fails on verification and nothing is put in place', async (t) => {
  const { fx, v1, p1 } = await shared;
  const packFile = join(fx.repoDir, packPath(p1.manifestSha256));
  const savedPack = await readFile(packFile);
  const layout = packLayout(v1.manifest);
  const victim = layout.entries[2];
  const chunkFile = join(fx.repoDir, chunkPath(victim.chunk.sha256));
  const savedChunk = await readFile(chunkFile);
  const bad = Buffer.from(savedPack);
  bad[victim.offset + 20] ^= 0xff;
  await writeFile(packFile, bad);
  await writeFile(chunkFile, bad.subarray(victim.offset, victim.offset + victim.chunk.csize));
  t.teardown(async () => { await writeFile(packFile, savedPack); await writeFile(chunkFile, savedChunk); });
  const state = await newState(fx.dir);
  const client = await clientFor(fx);
  const err = await t.throwsAsync(installVersion({ state, verified: await client.manifest('tiny', '1.0.0'), source: client }));
  t.regex((err as { code?: string }).code ?? '', /DIGEST_MISMATCH|CHUNK_INVALID/);
  t.true(err!.message.includes(victim.chunk.sha256) || ((err as { where?: string }).where ?? '').includes(victim.chunk.sha256));
  t.false(existsSync(state.versionDir('tiny', '1.0.0')));
});

for (const mainThread of [false, true]) test.serial(`our own write failing (disk full mid-range) stops the install: it is not taken for a bad pack (${mainThread ? 'main thread' : 'workers'})`, async (t) => {
  const { fx } = await shared;
  const mnt = await mkdtemp(join(fx.dir, 'small-'));
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'loopship-test', mnt]);
  t.teardown(async () => { await execa('umount', ['-l', mnt]).catch(() => {}); });
  const state = new StateDir(join(mnt, 'state'));
  await state.init();
  const client = await clientFor(fx);
  // after a few chunks, something else fills the disk
  const { source, single } = counting(client, { mainThread, afterChunks: 3, then: () => execa('dd', ['if=/dev/zero', `of=${join(mnt, 'filler')}`, 'bs=1M', 'count=64'], { reject: false }).then(() => {}) });
  const err = await t.throwsAsync(installVersion({ state, verified: await client.manifest('tiny', '1.0.0'), source, concurrency: 1 }));
  t.regex(`${(err as { code?: string }).code} ${err!.message}`, /IO|ENOSPC|no space/i);
  t.deepEqual(single, [], 'no per-chunk fallback for a local write error');
  t.false(existsSync(state.versionDir('tiny', '1.0.0')));
});

test.serial('a server without Range support (200 for a ranged GET): one notice, then chunk by chunk, image exact', async (t) => {
  const { fx, v1 } = await shared;
  const srv = await serveDir(fx.repoDir);
  t.teardown(() => srv.close());
  const fetcher = createFetcher(srv.url);
  const client = new RepoClient({ fetchers: [fetcher], trustedRoot: await RepoClient.pin(fetcher, { keyArmored: fx.rootKeyArmored }) });
  await client.update();
  const state = await newState(fx.dir);
  const notices: string[] = [];
  const { source, ranges, single } = counting(client);
  const verified = await client.manifest('tiny', '1.0.0');
  await installVersion({ state, verified, source, concurrency: 1, packRangeBytes: 128 * 1024, onNotice: (m) => notices.push(m) });
  t.is(await sha256File(join(state.versionDir('tiny', '1.0.0'), 'verified.img')), sha256Of(await readFile(v1.imagePath)));
  t.is(ranges.length, 1, 'the first refused Range answer stops the pack path');
  t.is(single.length, manifestChunks(verified.manifest).length);
  t.deepEqual(notices.filter((n) => /cannot use the pack .*HTTP 200 \(expected 206\)/.test(n)).length, 1, notices.join('\n'));
});
