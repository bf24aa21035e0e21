// The plan step of an install: which chunks a version needs and where each goes, and what a
// resumed staging dir already holds (its journal). Also readies that staging dir: a fresh
// one carries the manifest last, since the manifest's digest is what makes it resumable.
import { createHash } from 'node:crypto';
import { mkdir, rm, rmdir, statfs, unlink } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import type { Chunk, Manifest } from '../format/index.js';
import { MetadataError, LoopshipError } from '../format/index.js';
import type { StateDir } from './state.js';
import { writeFileAtomic, pathExists, assertOwnDirsBelow, readOwnFileOrNull } from './fsutil.js';

export interface VerifiedManifest {
  manifest: Manifest;
  sha256: string;
  bytes: Buffer;
  signature: string;
}

/**
 * Files of a version directory, one per blob of the manifest. The image is kept exactly
 * as verified (verified.img): it seeds later installs and is what `verify` checks. The
 * guest boots a working copy (disk.img) that configure and the guest itself change.
 */
export const BLOB_FILES = { image: 'verified.img', kernel: 'kernel', initrd: 'initrd' } as const;
export const BOOT_DISK = 'disk.img';
export type BlobName = keyof typeof BLOB_FILES;
export const JOURNAL = 'done.log';

export interface Target {
  file: BlobName;
  offset: number;
}
/** One unique chunk of a version and every place its bytes go. */
export interface Work {
  chunk: Chunk;
  where: string;
  targets: Target[];
}

/** Bytes a chunk takes once written everywhere it goes. */
export const bytesOf = (w: Work): number => w.chunk.length * w.targets.length;

export function blobsOf(m: Manifest): [BlobName, Manifest['image'] | Manifest['kernel']][] {
  const out: [BlobName, Manifest['image'] | Manifest['kernel']][] = [['image', m.image], ['kernel', m.kernel]];
  if (m.initrd) out.push(['initrd', m.initrd]);
  return out;
}

/** Unique chunks of a manifest, each with every place its bytes go. */
export function planChunks(m: Manifest, label: string): Map<string, Work> {
  const work = new Map<string, Work>();
  for (const [blob, b] of blobsOf(m)) {
    b.chunks.forEach((c, i) => {
      const w = work.get(c.sha256);
      if (w) {
        if (w.chunk.length !== c.length) {
          throw new MetadataError('METADATA_INVALID', `chunk ${c.sha256} appears with two lengths (${w.chunk.length}, ${c.length})`, { where: `${label}: ${blob}.chunks.${i}` });
        }
        w.targets.push({ file: blob, offset: c.offset });
      } else {
        work.set(c.sha256, { chunk: c, where: `${label}: ${blob}.chunks.${i}`, targets: [{ file: blob, offset: c.offset }] });
      }
    });
  }
  return work;
}

export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function readJournal(path: string, manifestSha: string): Promise<Set<string>> {
  const done = new Set<string>();
  const bytes = await readOwnFileOrNull(path);
  if (!bytes) return done;
  const lines = bytes.toString('utf8').split('\n');
  if (lines[0] !== `manifest ${manifestSha}`) return done;
  // a torn last line (crash mid-append) is simply not counted
  for (const l of lines.slice(1)) if (/^[0-9a-f]{64}$/.test(l)) done.add(l);
  return done;
}

export interface InstallPlan {
  verified: VerifiedManifest;
  manifest: Manifest;
  /** `manifest NAME VERSION`, for messages */
  label: string;
  work: Map<string, Work>;
  /** the version is already in place (what a run killed right after the move left is tidied) */
  installed: boolean;
  staging: string;
  finalDir: string;
  journalPath: string;
  /** a staging dir of this very manifest was found and is carried on */
  resuming: boolean;
  /** chunks the journal says are written and synced */
  done: Set<string>;
  /** chunks still to be written, in manifest order */
  pending: Work[];
}

/** Plans an install and readies its staging dir; refuses a different build already in place. */
export async function planInstall(state: StateDir, verified: VerifiedManifest): Promise<InstallPlan> {
  const m = verified.manifest;
  const label = `manifest ${m.name} ${m.version}`;
  const work = planChunks(m, label);
  const finalDir = state.versionDir(m.name, m.version);
  const staging = state.stagingDir(m.name, m.version);
  const journalPath = join(staging, JOURNAL);
  const plan: InstallPlan = { verified, manifest: m, label, work, installed: false, staging, finalDir, journalPath, resuming: false, done: new Set(), pending: [] };
  // rm -r, mkdir -p and every open below would follow a directory planted as a symlink
  await assertOwnDirsBelow(state.root, staging);
  await assertOwnDirsBelow(state.root, finalDir);
  if (await pathExists(finalDir)) {
    const have = await readOwnFileOrNull(join(finalDir, 'manifest.json'));
    if (have && sha256(have) === verified.sha256) {
      // what a run killed right after the move left: the journal, the empty staging parent
      await unlink(join(finalDir, JOURNAL)).catch(() => {});
      await rmdir(dirname(staging)).catch(() => {});
      return { ...plan, installed: true };
    }
    throw new LoopshipError('IO', `a different build of ${m.name} ${m.version} is already installed; remove it first`, { where: finalDir });
  }
  const stagedManifest = await readOwnFileOrNull(join(staging, 'manifest.json'));
  plan.resuming = stagedManifest !== null && sha256(stagedManifest) === verified.sha256;
  if (plan.resuming) plan.done = await readJournal(journalPath, verified.sha256);
  else await freshStaging(staging, verified);
  plan.pending = [...work.values()].filter((w) => !plan.done.has(w.chunk.sha256));
  await checkFreeSpace(plan);
  return plan;
}

async function freshStaging(staging: string, verified: VerifiedManifest): Promise<void> {
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(staging, 'manifest.json.asc'), verified.signature, { mode: 0o644 });
  await writeFileAtomic(join(staging, JOURNAL), `manifest ${verified.sha256}\n`, { mode: 0o600 });
  // the manifest last: its presence with the right digest is what makes staging resumable
  await writeFileAtomic(join(staging, 'manifest.json'), verified.bytes, { mode: 0o644 });
}

/** What is still to be written must fit (holes cost nothing, so this is an upper bound). */
async function checkFreeSpace(plan: InstallPlan): Promise<void> {
  let toWrite = plan.pending.reduce((n, w) => n + bytesOf(w), 0);
  // and the boot disk, a copy of the image's data made at the first configure
  toWrite += plan.manifest.image.chunks.reduce((n, c) => n + c.length, 0);
  let free: number;
  try {
    const fs = await statfs(plan.staging);
    free = fs.bavail * fs.bsize;
  } catch {
    return; // no statfs here: the writes themselves will tell
  }
  if (toWrite > free) {
    throw new LoopshipError('IO', `not enough space: up to ${mib(toWrite)} MiB to write (image, kernel, initrd and the boot disk), ${mib(free)} MiB free`, { where: plan.staging });
  }
}

export const mib = (n: number): string => (n / 1024 / 1024).toFixed(1);
