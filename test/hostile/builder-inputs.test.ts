// What the builder takes from the network goes into images the publisher key then signs: the
// packages debootstrap fetches must be Debian's, checked against the archive's signed Release,
// for a snapshot build too (snapshot.debian.org is plain http; anyone on the path could
// otherwise put packages of their own into every image, and the signature would vouch for them).
import test from 'ava';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootstrapRoot } from '../../builder/rootfs.js';
import type { Exec } from '../../builder/exec.js';

for (const snapshot of [null, '20250520T000000Z']) {
  test(`debootstrap checks the Release signature (${snapshot ? 'a snapshot build' : 'a build from the mirror'})`, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'hostile-builder-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const runs: [string, string[]][] = [];
    const exec: Exec = async (file, args) => {
      runs.push([file, args]);
      await mkdir(join(args.at(-2)!, 'etc'), { recursive: true });
      await writeFile(join(args.at(-2)!, 'etc/debian_version'), '12\n');
      return { stdout: '' };
    };
    const mirror = snapshot ? `http://snapshot.debian.org/archive/debian/${snapshot}` : 'http://deb.debian.org/debian';
    await bootstrapRoot({ root: join(dir, 'root'), key: { suite: 'bookworm', mirror, variant: 'minbase', components: ['main'], snapshot, arch: 'amd64' }, cache: null, exec, useCache: false });
    const [file, args] = runs.find(([f]) => f === 'debootstrap')!;
    t.is(file, 'debootstrap');
    t.false(args.some((a) => /^--no-check-(gpg|sig)|^--allow-unauthenticated/.test(a)), args.join(' '));
  });
}
