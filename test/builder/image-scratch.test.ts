import test from 'ava';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fitsInMemory, memoryFacts } from '../../builder/image-scratch.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

test('an image is made in memory only with room in the tmpfs and half the available memory to spare', (t) => {
  t.true(fitsInMemory(464 * MiB, { tmpfsFree: 12 * GiB, memAvailable: 20 * GiB }));
  t.false(fitsInMemory(464 * MiB, { tmpfsFree: null, memAvailable: 20 * GiB }), 'no tmpfs');
  t.false(fitsInMemory(4 * GiB, { tmpfsFree: 4 * GiB, memAvailable: 20 * GiB }), 'tmpfs would be full');
  t.true(fitsInMemory(4 * GiB, { tmpfsFree: 12 * GiB, memAvailable: 8 * GiB }));
  t.false(fitsInMemory(4 * GiB + 1, { tmpfsFree: 12 * GiB, memAvailable: 8 * GiB }), 'more than half of the available memory');
  t.false(fitsInMemory(MiB, { tmpfsFree: 12 * GiB, memAvailable: 0 }), 'unknown memory: not in memory');
});

test('memory facts: a tmpfs is recognised by its filesystem type, MemAvailable read from meminfo', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-memfacts-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const meminfo = join(dir, 'meminfo');
  await writeFile(meminfo, 'MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n');
  const shm = await memoryFacts('/dev/shm', meminfo);
  t.is(shm.memAvailable, 2048 * 1024);
  // /dev/shm is a tmpfs on Linux (Debian and systemd mount one there)
  t.true(typeof shm.tmpfsFree === 'number' && shm.tmpfsFree > 0);
  t.is((await memoryFacts('/proc', meminfo)).tmpfsFree, null, 'procfs is no tmpfs');
  t.deepEqual(await memoryFacts(join(dir, 'missing'), join(dir, 'no-meminfo')), { tmpfsFree: null, memAvailable: 0 });
});
