// Re-hashes an installed version against its signed manifest: every chunk's sha256, every
// gap between chunks all zero (a hole), file sizes. Reports bit rot or tampering on disk.
import { stat, type FileHandle } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { parseMetadata, verifyManifestSignature, LoopshipError, type Root, type Blob } from '../format/index.js';
import { blobsOf, BLOB_FILES, BOOT_DISK } from './install-plan.js';
import { openOwnFile, readOwnFile } from './fsutil.js';

export interface VersionCheck {
  name: string;
  version: string;
  ok: boolean;
  problems: string[];
  bytes: number;
  /** chunks of the boot disk (disk.img) that differ from the verified image: configure and the guest change it; informational */
  boot_disk_changed_chunks: number | null;
}

const ZERO = Buffer.alloc(1024 * 1024);

/** Compares one file with its blob description; returns the problems found. */
export async function checkBlob(path: string, blob: Pick<Blob, 'size' | 'chunks'>, label: string, maxProblems = 20): Promise<string[]> {
  const problems: string[] = [];
  let fh: FileHandle;
  try {
    // never through a planted link, never a FIFO to hang on: the agent's own regular file
    fh = await openOwnFile(path, 'read');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [`${label}: missing`];
    return [err instanceof LoopshipError ? err.message : `${label}: ${(err as Error).message}`];
  }
  const size = (await fh.stat()).size;
  if (size !== blob.size) problems.push(`${label}: size ${size}, manifest says ${blob.size}`);
  try {
    const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
    const readRange = async (offset: number, length: number, each: (b: Buffer) => void) => {
      for (let done = 0; done < length; ) {
        const n = Math.min(buf.length, length - done);
        const { bytesRead } = await fh.read(buf, 0, n, offset + done);
        if (bytesRead === 0) break;
        each(buf.subarray(0, bytesRead));
        done += bytesRead;
      }
    };
    let pos = 0;
    const checkGap = async (end: number) => {
      if (end <= pos) return;
      let bad = -1;
      let at = pos;
      await readRange(pos, end - pos, (b) => {
        for (let i = 0; i < b.length && bad < 0; i += ZERO.length) {
          const len = Math.min(ZERO.length, b.length - i);
          if (ZERO.compare(b, i, i + len, 0, len) !== 0) bad = at + i;
        }
        at += b.length;
      });
      if (bad >= 0) problems.push(`${label}: data at offset ${bad} where the manifest has only zeros`);
    };
    for (const c of blob.chunks) {
      await checkGap(c.offset);
      const h = createHash('sha256');
      await readRange(c.offset, c.length, (b) => h.update(b));
      const got = h.digest('hex');
      if (got !== c.sha256) problems.push(`${label}: chunk at offset ${c.offset} (${c.length} bytes) has sha256 ${got}, manifest says ${c.sha256}`);
      pos = c.offset + c.length;
      if (problems.length > maxProblems) break;
    }
    await checkGap(Math.min(size, blob.size));
  } finally {
    await fh.close();
  }
  return problems;
}

export async function verifyVersionDir(dir: string, root: Root, now: Date = new Date()): Promise<VersionCheck & { problems: string[] }> {
  const mpath = join(dir, 'manifest.json');
  const parts = dir.split('/');
  const out: VersionCheck = { name: parts.at(-2)!, version: parts.at(-1)!, ok: false, problems: [], bytes: 0, boot_disk_changed_chunks: null };
  let bytes: Buffer;
  let sig: string;
  try {
    bytes = await readOwnFile(mpath);
    sig = (await readOwnFile(mpath + '.asc')).toString('utf8');
    await verifyManifestSignature(bytes, sig, root, mpath, { now });
  } catch (err) {
    out.problems.push(err instanceof LoopshipError ? err.message : `${mpath}: ${(err as Error).message}`);
    return out;
  }
  const m = parseMetadata('manifest', bytes, mpath);
  if (m.name !== out.name || m.version !== out.version) out.problems.push(`${mpath}: manifest is for ${m.name} ${m.version}`);
  for (const [blob, b] of blobsOf(m)) {
    out.problems.push(...(await checkBlob(join(dir, BLOB_FILES[blob]), b, join(dir, BLOB_FILES[blob]))));
    out.bytes += b.size;
  }
  out.ok = out.problems.length === 0;
  const boot = join(dir, BOOT_DISK);
  if (await stat(boot).catch(() => null)) {
    out.boot_disk_changed_chunks = (await checkBlob(boot, { size: m.image.size, chunks: m.image.chunks }, boot, Infinity)).filter((p) => /chunk at offset/.test(p)).length;
  }
  return out;
}
