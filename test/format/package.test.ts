// Hostile package tars: the writer refuses each, and the repository is unchanged.
import test from 'ava';
import { createReadStream } from 'node:fs';
import { readFile, writeFile, readdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { makeRepo, makePackage, publish, type Fixture } from '../helpers/repo.js';
import { compressChunk, chunkPath, serialize, type Manifest } from '../../format/index.js';
import { signDetached } from '../../keys/index.js';

async function treeHash(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string): Promise<void> => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else h.update(relative(dir, p)).update(await readFile(p));
    }
  };
  await walk(dir);
  return h.digest('hex');
}

type Entry = { name: string; data?: Buffer; type?: tar.Headers['type']; linkname?: string };

async function readEntries(tarPath: string): Promise<Entry[]> {
  const out: Entry[] = [];
  const ex = tar.extract();
  createReadStream(tarPath).pipe(ex);
  for await (const e of ex) {
    const parts: Buffer[] = [];
    for await (const p of e) parts.push(p as Buffer);
    out.push({ name: e.header.name, data: Buffer.concat(parts) });
  }
  return out;
}

async function packEntries(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const parts: Buffer[] = [];
  pack.on('data', (d: Buffer) => parts.push(d));
  const done = new Promise((r) => pack.on('end', r));
  for (const e of entries) {
    if (e.type && e.type !== 'file') pack.entry({ name: e.name, type: e.type, linkname: e.linkname, size: 0 });
    else pack.entry({ name: e.name, size: e.data!.length }, e.data!);
  }
  pack.finalize();
  await done;
  return Buffer.concat(parts);
}

async function setup() {
  const fx = await makeRepo();
  const pkg = await makePackage(fx);
  const entries = await readEntries(pkg.tarPath);
  return { fx, pkg, entries };
}

async function refused(t: import('ava').ExecutionContext, fx: Fixture, tarBytes: Buffer, message: RegExp, code = 'PACKAGE_INVALID') {
  const before = await treeHash(fx.repoDir);
  const err = (await t.throwsAsync(fx.writer.addPackage(Readable.from([tarBytes]), { where: 'upload.tar' }))) as Error & { code?: string };
  t.regex(err?.message ?? '', message);
  t.is(err?.code, code, err?.message);
  t.is(await treeHash(fx.repoDir), before, 'repository changed');
}

async function resign(fx: Fixture, m: Manifest): Promise<Entry[]> {
  const bytes = serialize(m);
  return [
    { name: 'manifest.json', data: bytes },
    { name: 'manifest.json.asc', data: Buffer.from(await signDetached(bytes, [await fx.keystore.privateKey(fx.keystore.find('publisher'))])) },
  ];
}

test('hostile tars are refused and leave the repository byte for byte unchanged', async (t) => {
  const { fx, pkg, entries } = await setup();
  t.teardown(fx.cleanup);
  const [manifest, sig, first, ...rest] = entries;

  await refused(t, fx, await packEntries([manifest, sig, { name: '../../etc/passwd', data: Buffer.from('x') }, first, ...rest]), /\.\.\/\.\.\/etc\/passwd: absolute or parent-relative path/);
  await refused(t, fx, await packEntries([manifest, sig, { name: '/etc/shadow', data: Buffer.from('x') }]), /\/etc\/shadow: absolute/);
  await refused(t, fx, await packEntries([manifest, sig, { name: first.name, type: 'symlink', linkname: '/etc/passwd' }]), /entry of type symlink is not allowed/);
  await refused(t, fx, await packEntries([manifest, sig, { name: first.name, type: 'link', linkname: 'manifest.json' }]), /entry of type link is not allowed/);
  await refused(t, fx, await packEntries([manifest, sig, { name: 'chunks/00/dev', type: 'character-device' }]), /entry of type character-device is not allowed/);
  await refused(t, fx, await packEntries([sig, manifest, first]), /expected manifest\.json/);
  await refused(t, fx, await packEntries([manifest, sig, { name: 'chunks/aa/' + 'a'.repeat(64), data: compressChunk(Buffer.alloc(4096)) }]), /chunk is not named by the manifest/);
  await refused(t, fx, await packEntries([manifest, sig, first, first, ...rest]), /duplicate chunk/);
  await refused(t, fx, await packEntries([manifest, sig, first]), /named by the manifest is missing/);
  await refused(t, fx, (await readFile(pkg.tarPath)).subarray(0, 700), /malformed tar|Unexpected end/);
  await refused(t, fx, Buffer.from('<html>502 Bad Gateway</html>'), /malformed tar|not a tar/);

  // A tampered chunk, and a "zstd bomb": a frame that expands past the length the manifest declares.
  const c = pkg.manifest.image.chunks[0];
  const at = entries.findIndex((e) => e.name === chunkPath(c.sha256));
  const swap = (data: Buffer) => entries.map((e, i) => (i === at ? { ...e, data } : e));
  await refused(t, fx, await packEntries(swap(compressChunk(Buffer.alloc(c.length, 7)))), /does not match the manifest/, 'DIGEST_MISMATCH');
  await refused(t, fx, await packEntries(swap(compressChunk(Buffer.alloc(c.length * 64, 0)))), /zstd frame declares|at most/, 'CHUNK_INVALID');

  // Manifest edits: unsigned change, then a signature by a non-publisher key.
  const m = JSON.parse(manifest.data!.toString()) as Manifest;
  m.xen.memory = 4096;
  await refused(t, fx, await packEntries([{ name: 'manifest.json', data: serialize(m) }, sig, first, ...rest]), /manifest\.json: no valid signature by any publisher key/, 'UNKNOWN_KEY');
  // Signed, but a chunk runs past the image end: schema refuses it.
  const m2 = JSON.parse(manifest.data!.toString()) as Manifest;
  m2.image.chunks[0] = { ...m2.image.chunks[0], offset: m2.image.size };
  await refused(t, fx, await packEntries([...(await resign(fx, m2)), first, ...rest]), /image\.chunks\.0: chunk runs past the end/, 'METADATA_INVALID');
  // Huge counts: a signed manifest listing far more packages than allowed.
  const m3 = JSON.parse(manifest.data!.toString()) as Manifest;
  m3.build.packages = Array.from({ length: 60_000 }, (_, i) => ({ name: `p${i}`, version: '1' }));
  await refused(t, fx, await packEntries([...(await resign(fx, m3)), first, ...rest]), /build\.packages: Too big/, 'METADATA_INVALID');

  // After all that, the genuine package still publishes.
  const ok = await publish(fx, pkg.tarPath);
  t.is(ok.version, '1.0.0');
  await t.notThrowsAsync(stat(join(fx.repoDir, chunkPath(c.sha256))));
  void writeFile;
});
