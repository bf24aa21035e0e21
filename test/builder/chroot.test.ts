import test from 'ava';
import { mkdtemp, mkdir, copyFile, rm, readFile, writeFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { execa } from 'execa';
import { withChroot, mountsUnder, defaultExec } from '../../builder/index.js';
import { ExecError } from '../../format/index.js';

// A minimal root: dash and sleep with their libraries, enough to run commands in a chroot.
async function miniRoot(t: import('ava').ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-chroot-'));
  t.teardown(async () => {
    // never delete while something is still mounted below (the test would have failed anyway)
    if ((await mountsUnder(dir)).length === 0) await rm(dir, { recursive: true, force: true });
  });
  const root = join(dir, 'root');
  const bins = ['/bin/sh', '/bin/dash', '/bin/sleep', '/bin/true'];
  const libs = new Set<string>();
  for (const b of bins) {
    const { stdout } = await execa('ldd', [b]);
    for (const m of stdout.matchAll(/(\/\S+\.so[.\d]*)/g)) libs.add(m[1]);
  }
  for (const f of [...bins, ...libs]) {
    await mkdir(join(root, dirname(f)), { recursive: true });
    await copyFile(f, join(root, f));
  }
  await execa('chmod', ['+x', ...bins.map((b) => join(root, b))]);
  await mkdir(join(root, 'etc'), { recursive: true });
  await mkdir(join(root, 'usr/sbin'), { recursive: true });
  await writeFile(join(root, 'etc/resolv.conf'), '# image resolv.conf\n');
  return root;
}

test('inside: /proc, /sys, /dev, /dev/pts are mounted and policy-rc.d forbids daemon starts; after: all gone, resolv.conf restored', async (t) => {
  const root = await miniRoot(t);
  const inside = await withChroot(root, defaultExec, {}, async (c) => {
    const out = await c.sh('echo "epoch=$SOURCE_DATE_EPOCH"; /usr/sbin/policy-rc.d || echo "policy=$?"', { env: { SOURCE_DATE_EPOCH: '42' } });
    return { mounts: await mountsUnder(root), out };
  });
  t.deepEqual([...inside.mounts].sort(), ['dev', 'dev/pts', 'proc', 'sys'].map((d) => join(root, d)).sort());
  t.regex(inside.out, /epoch=42\npolicy=101/);
  t.deepEqual(await mountsUnder(root), []);
  await t.throwsAsync(access(join(root, 'usr/sbin/policy-rc.d')));
  t.is(await readFile(join(root, 'etc/resolv.conf'), 'utf8'), '# image resolv.conf\n');
});

test('a failing command in the chroot: error names the stage and exit status, and no mount is left behind', async (t) => {
  const root = await miniRoot(t);
  const err = await t.throwsAsync(
    withChroot(root, defaultExec, {}, (c) => c.sh('echo about to fail >&2; exit 3', { stage: 'commands[0]' })),
    { instanceOf: ExecError },
  );
  t.regex(err!.message, /^stage commands\[0\]: chroot .*exited with status 3/);
  t.regex(err!.message, /about to fail/);
  t.deepEqual(await mountsUnder(root), []);
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  t.false(mountinfo.includes(root), 'nothing under the root in /proc/self/mountinfo');
});

test('a missing program is reported as not installed', async (t) => {
  const err = await t.throwsAsync(defaultExec('loopship-no-such-tool', ['x'], { stage: 'image (mkfs.ext4)' }), { instanceOf: ExecError });
  t.regex(err!.message, /^stage image \(mkfs\.ext4\): .*not installed/);
});

test('SIGTERM during a chroot step unmounts everything before the process exits', async (t) => {
  const root = await miniRoot(t);
  const script = join(dirname(root), 'hold.mts');
  await writeFile(
    script,
    `import { withChroot, defaultExec } from ${JSON.stringify(join(import.meta.dirname, '../../builder/index.js'))};\n` +
      `await withChroot(${JSON.stringify(root)}, defaultExec, {}, (c) => c.run('/bin/sleep', ['60']));\n`,
  );
  const child = execa('node', ['--import', 'tsx', script], { reject: false, cwd: join(import.meta.dirname, '../..') });
  // wait until the mounts exist
  const t0 = Date.now();
  while ((await mountsUnder(root)).length < 4) {
    if (Date.now() - t0 > 30_000) {
      child.kill('SIGKILL');
      t.fail('mounts never appeared');
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGTERM');
  const r = await child;
  t.is(r.exitCode, 143, r.stderr);
  t.regex(r.stderr, /SIGTERM: unmounted/);
  t.deepEqual(await mountsUnder(root), []);
});
