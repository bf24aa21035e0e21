// Where the scratch image file is made. `mkfs.ext4 -d` writes it one 4 KiB block per
// pwrite (76,000 calls for tiny) and the package stage reads it straight back; on a disk
// filesystem both pay for block allocation and page-cache bookkeeping of a file that is
// deleted seconds later. In a RAM-backed directory (tmpfs) the image and package stages
// of a warm tiny build took 2.0-2.3 s instead of 3.0-3.2 s (BENCHMARKS.md). So the image
// goes to /dev/shm when that is a tmpfs with room for it and the machine has memory to
// spare; otherwise next to the root tree, as before.
import { readFile, statfs } from 'node:fs/promises';

const MiB = 1024 * 1024;
/** statfs(2) f_type of tmpfs */
const TMPFS_MAGIC = 0x01021994;
export const DEFAULT_MEMORY_DIR = '/dev/shm';

export interface MemoryFacts {
  /** free bytes of the RAM-backed directory, null when it is missing or not a tmpfs */
  tmpfsFree: number | null;
  /** MemAvailable of /proc/meminfo, bytes */
  memAvailable: number;
}

/**
 * Whether an image of `size` bytes (apparent size: tmpfs charges only the blocks mkfs
 * writes, but nothing bounds those below it) may be made in memory: it must fit in the
 * tmpfs with room left, and use at most half of the memory available, so that the build
 * never pushes the host into swap or the OOM killer for a speed-up.
 */
export function fitsInMemory(size: number, facts: MemoryFacts): boolean {
  if (facts.tmpfsFree === null) return false;
  return facts.tmpfsFree >= size + 256 * MiB && facts.memAvailable >= 2 * size;
}

/** Reads the facts fitsInMemory decides on. */
export async function memoryFacts(dir = DEFAULT_MEMORY_DIR, meminfo = '/proc/meminfo'): Promise<MemoryFacts> {
  const fs = await statfs(dir).catch(() => null);
  const tmpfsFree = fs && fs.type === TMPFS_MAGIC ? fs.bavail * fs.bsize : null;
  const text = await readFile(meminfo, 'utf8').catch(() => '');
  const kib = /^MemAvailable:\s+(\d+) kB$/m.exec(text);
  return { tmpfsFree, memAvailable: kib ? Number(kib[1]) * 1024 : 0 };
}
