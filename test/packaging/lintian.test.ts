// lintian, Debian's package checker, on the agent's .deb: no errors, no warnings (what is left
// as information is explained in docs/remote-sites.md). The default build (nodejs dependency),
// xz-compressed: bookworm's lintian cannot read zstd members. The +node build takes minutes
// with xz; its overrides are in build-deb.sh. Skipped with LOOPSHIP_FAST=1, or without lintian
// and debhelper (scripts/setup.sh installs both).
import test from 'ava';
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';

const top = fileURLToPath(new URL('../..', import.meta.url));
const have = async (tool: string) => (await execa('sh', ['-c', `command -v ${tool}`], { reject: false })).exitCode === 0;
const run = !process.env.LOOPSHIP_FAST && (await have('lintian')) && (await have('dh_gencontrol')) && existsSync(join(top, 'dist/bin/loopship-agent.js'));

(run ? test : test.skip)('lintian finds no errors or warnings in the agent .deb', async (t) => {
  const out = await mkdtemp(join(tmpdir(), 'loopship-lintian-'));
  try {
    const built = await execa('bash', [join(top, 'packaging/build-deb.sh'), '--no-build', '--compress', 'xz', '--maintainer', 'loopship test <test@loopship.test>', '--out', out], { all: true, reject: false });
    t.is(built.exitCode, 0, built.all);
    const deb = built.stdout.trim().split('\n').pop()!;
    const r = await execa('lintian', ['--info', '--tag-display-limit', '0', deb], { all: true, reject: false });
    const complaints = (r.stdout ?? '').split('\n').filter((l) => /^[EW]: /.test(l));
    t.deepEqual(complaints, [], r.all);
    t.log((r.stdout ?? '').split('\n').filter((l) => /^[IN]: /.test(l) && !/extra-license-file/.test(l)).join('\n') || 'nothing else');
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
