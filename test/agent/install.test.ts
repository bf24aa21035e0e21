import test from 'ava';
import { readFile, stat, readdir, open } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { mkdtemp } from 'node:fs/promises';
import { installVersion, planChunks } from '../../client-agent/install.js';
import { StateDir } from '../../client-agent/state.js';
import { makeRepo, makePackage, publish, clientFor, countingSource, sha256File, sha256Of, allocated } from './helpers.js';

// one signed repository for the whole file (building packages is the slow part); each test its own state dir
const shared = (async () => {
  const fx = await makeRepo();
  const v1 = await makePackage(fx, { version: '1.0.0' });
  await publish(fx, v1.tarPath, 'stable');
  // v2: one 4 KiB block changed near the start
  const v2 = await makePackage(fx, { version: '2.0.0', patch: { offset: 64 * 1024, data: Buffer.alloc(4096, 7) } });
  await publish(fx, v2.tarPath);
  return { fx, v1, v2 };
})();
test.after.always(async () => (await shared).fx.cleanup());

async function setup(_t: import('ava').ExecutionContext) {
  const { fx, v1, v2 } = await shared;
  const state = new StateDir(await mkdtemp(join(fx.dir, 'state-')));
  await state.init();
  const client = await clientFor(fx);
  return { fx, v1, v2, state, client };
}

test('a fresh install reproduces image, kernel and initrd, sparse, and only a complete version appears', async (t) => {
  const { v1, state, client } = await setup(t);
  const verified = await client.manifest('tiny', '1.0.0');
  const { source, fetched } = countingSource(client);
  const progress: number[] = [];
  const r = await installVersion({ state, verified, source, concurrency: 4, onProgress: (p) => progress.push(p.doneBytes) });
  const dir = state.versionDir('tiny', '1.0.0');
  t.is(await sha256File(join(dir, 'verified.img')), sha256Of(await readFile(v1.imagePath)));
  t.is(r.fetchedChunks, planChunks(verified.manifest, 'm').size);
  t.is(fetched.length, r.fetchedChunks);
  t.is(r.reusedChunks, 0);
  t.true(r.fetchedBytes > 0 && r.fetchedBytes === r.fullCompressedBytes);
  const img = await stat(join(dir, 'verified.img'));
  t.is(img.size, verified.manifest.image.size);
  // the zero third of the image is a hole, never written
  t.true(await allocated(join(dir, 'verified.img')) <= (2 * img.size) / 3 + 64 * 1024, `allocated ${await allocated(join(dir, 'verified.img'))} of ${img.size}`);
  t.is(await sha256File(join(dir, 'kernel')), sha256Of(await readFile(join(v1.imagePath, '..', 'vmlinuz'))));
  t.is(await sha256File(join(dir, 'initrd')), sha256Of(await readFile(join(v1.imagePath, '..', 'initrd.img'))));
  t.is(await sha256File(join(dir, 'manifest.json')), sha256Of(verified.bytes));
  t.is(await readFile(join(dir, 'manifest.json.asc'), 'utf8'), verified.signature);
  t.deepEqual((await readdir(dir)).sort(), ['initrd', 'kernel', 'manifest.json', 'manifest.json.asc', 'verified.img']);
  t.false(existsSync(state.stagingDir('tiny', '1.0.0')));
  t.true(progress.length > 0 && progress.at(-1)! > 0);

  // installing again fetches nothing
  const again = await installVersion({ state, verified, source });
  t.true(again.alreadyInstalled);
  t.is(fetched.length, r.fetchedChunks);
});

test('an installed version is the seed: a one-block change fetches only the changed chunks', async (t) => {
  const { v2, state, client } = await setup(t);
  await installVersion({ state, verified: await client.manifest('tiny', '1.0.0'), source: client });
  const verified = await client.manifest('tiny', '2.0.0');
  const { source, fetched } = countingSource(client);
  const r = await installVersion({ state, verified, source });
  t.is(await sha256File(join(state.versionDir('tiny', '2.0.0'), 'verified.img')), sha256Of(await readFile(v2.imagePath)));
  t.true(r.fetchedChunks >= 1 && r.fetchedChunks <= 3, `fetched ${r.fetchedChunks} chunks`);
  t.is(fetched.length, r.fetchedChunks);
  t.true(r.reusedChunks > 10);
  t.true(r.fetchedBytes < r.fullCompressedBytes / 5, `fetched ${r.fetchedBytes} of ${r.fullCompressedBytes}`);
});

for (const [how, decodeWorkers] of [['on the workers', undefined], ['on the main thread', 0]] as const) {
  test(`a damaged seed is not spread: its chunk is re-hashed and fetched instead (${how})`, async (t) => {
    const { v2, state, client } = await setup(t);
    await installVersion({ state, verified: await client.manifest('tiny', '1.0.0'), source: client });
    const m1 = (await client.manifest('tiny', '1.0.0')).manifest;
    const m2 = (await client.manifest('tiny', '2.0.0')).manifest;
    const shared = m1.image.chunks.filter((c) => m2.image.chunks.some((d) => d.sha256 === c.sha256));
    // bit rot in the old version, in a chunk the new version shares, and the old image cut
    // short inside another shared chunk: both are fetched, everything else is reused
    const [victim, last] = [shared[0], shared.at(-1)!];
    const fh = await open(join(state.versionDir('tiny', '1.0.0'), 'verified.img'), 'r+');
    await fh.write(Buffer.from([0xde, 0xad]), 0, 2, victim.offset + 10);
    await fh.truncate(last.offset + 100);
    await fh.close();
    const { source, fetched } = countingSource(client);
    const r = await installVersion({ state, verified: await client.manifest('tiny', '2.0.0'), source, decodeWorkers });
    t.true(fetched.includes(victim.sha256), 'the damaged chunk came from the repository');
    t.true(fetched.includes(last.sha256), 'the chunk past the end of the cut seed came from the repository');
    t.true(r.reusedChunks > 10, `reused ${r.reusedChunks}`);
    t.is(await sha256File(join(state.versionDir('tiny', '2.0.0'), 'verified.img')), sha256Of(await readFile(v2.imagePath)));
  });
}

test('an interrupted install resumes: verified chunks are not fetched again', async (t) => {
  const { v1, state, client } = await setup(t);
  const verified = await client.manifest('tiny', '1.0.0');
  const first = countingSource(client, { failAfter: 10 });
  const err = await t.throwsAsync(installVersion({ state, verified, source: first.source, concurrency: 2 }));
  t.regex(err!.message, /injected fetch failure/);
  t.false(existsSync(state.versionDir('tiny', '1.0.0')), 'nothing half-done is in place');
  t.true(existsSync(state.stagingDir('tiny', '1.0.0')));
  const second = countingSource(client);
  const r = await installVersion({ state, verified, source: second.source });
  t.is(r.resumedChunks, 10);
  t.is(second.fetched.length, r.chunks - 10);
  t.false(second.fetched.some((s) => first.fetched.includes(s)));
  t.is(await sha256File(join(state.versionDir('tiny', '1.0.0'), 'verified.img')), sha256Of(await readFile(v1.imagePath)));
});

test('a chunk failing verification stops the install; the installed version is untouched', async (t) => {
  const { state, client } = await setup(t);
  await installVersion({ state, verified: await client.manifest('tiny', '1.0.0'), source: client });
  await state.setCurrent('tiny', '1.0.0');
  const before = await sha256File(join(state.versionDir('tiny', '1.0.0'), 'verified.img'));
  const verified = await client.manifest('tiny', '2.0.0');
  const changed = new Set(verified.manifest.image.chunks.map((c) => c.sha256));
  for (const c of (await client.manifest('tiny', '1.0.0')).manifest.image.chunks) changed.delete(c.sha256);
  const bad = countingSource(client, { corrupt: (c) => changed.has(c.sha256) });
  const err = await t.throwsAsync(installVersion({ state, verified, source: bad.source }));
  t.is((err as { code?: string }).code, 'DIGEST_MISMATCH');
  t.false(existsSync(state.versionDir('tiny', '2.0.0')));
  t.is(await state.currentVersion('tiny'), '1.0.0');
  t.is(await sha256File(join(state.versionDir('tiny', '1.0.0'), 'verified.img')), before);
  // the next run with an honest mirror completes
  const r = await installVersion({ state, verified, source: client });
  t.false(r.alreadyInstalled);
  t.true(existsSync(join(state.versionDir('tiny', '2.0.0'), 'verified.img')));
});

test('a different build under an installed version number is refused, not mixed', async (t) => {
  const { state, client } = await setup(t);
  const verified = await client.manifest('tiny', '1.0.0');
  await installVersion({ state, verified, source: client });
  const other = { ...verified, sha256: 'f'.repeat(64) };
  const err = await t.throwsAsync(installVersion({ state, verified: other, source: client }));
  t.regex(err!.message, /different build of tiny 1\.0\.0 is already installed/);
});

test('writeSparse writes every non-zero byte, whole blocks of zeros become holes, also for unaligned lengths', async (t) => {
  const { writeSparse } = await import('../../client-agent/install.js');
  const { fx } = await shared;
  for (const len of [1, 4095, 4096, 4097, 3 * 4096 + 5, 100_000]) {
    const data = Buffer.alloc(len, 0);
    for (let i = 0; i < len; i += 7) data[i] = (i % 251) + 1;
    if (len > 3 * 4096) data.fill(0, 4096, 2 * 4096); // a zero block in the middle
    const path = join(fx.dir, `sparse-${len}`);
    const fh = await open(path, 'w+');
    await fh.truncate(len + 4096);
    await writeSparse(fh, data, 4096);
    await fh.close();
    const back = await readFile(path);
    t.true(back.subarray(4096).equals(data), `length ${len}`);
  }
});
