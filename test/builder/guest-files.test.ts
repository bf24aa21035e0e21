// The files the builder adds to every image, for both inits: which exist, what they say,
// and that every shell script in them parses (dash and busybox sh, the shells that run them).
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { parseRecipe } from '../../builder/index.js';
import { guestFiles, type GuestFile } from '../../builder/guest-files.js';
import { imagePackages } from '../../builder/rootfs.js';

const RECIPE = `name: demo
version: 2.3.4
base: {suite: bookworm}
boot:
  kernel: linux-image-cloud-amd64
  ready_marker: DEMO-UP
`;
const facts = { uuid: '0b6f2bb8-5b5c-4f3d-9c1e-2f1d2b8a9c10', digest: 'ab'.repeat(32) };
const files = (yaml: string) => guestFiles(parseRecipe(yaml, 'recipe.yaml'), facts);
const text = (f: GuestFile | undefined) => (f && 'content' in f ? f.content : '');

test('systemd images get the two units and no inittab', (t) => {
  const f = files(RECIPE);
  t.regex(text(f.get('usr/lib/systemd/system/loopship-ready.service')), /ExecStart=\/usr\/lib\/loopship\/ready/);
  t.regex(text(f.get('usr/lib/systemd/system/loopship-host-config.service')), /ExecStart=\/usr\/lib\/loopship\/host-config/);
  t.false(f.has('etc/inittab'));
  t.false(f.has('usr/sbin/init'), 'systemd-sysv owns /sbin/init');
  t.regex(text(f.get('usr/lib/loopship/ready')), /line="DEMO-UP hostname=\$\(hostname\) version=2\.3\.4"/);
  t.regex(text(f.get('etc/fstab')), new RegExp(`^UUID=${facts.uuid} / ext4`, 'm'));
});

test('busybox images: busybox is PID 1 and poweroff, inittab runs sysinit, the marker, the shutdown script; no units', (t) => {
  const f = files(RECIPE + '  init: busybox\n');
  for (const applet of ['init', 'poweroff', 'reboot', 'halt']) t.deepEqual(f.get(`usr/sbin/${applet}`), { link: '/bin/busybox' }, applet);
  const inittab = text(f.get('etc/inittab'));
  // busybox init runs sysinit to the end, then the wait actions: the marker comes after the
  // settings (once: init's stdout is the console the script also writes to)
  t.deepEqual(inittab.split('\n').filter((l) => l && !l.startsWith('#')), [
    '::sysinit:/usr/lib/loopship/rc.sysinit',
    "::wait:/bin/sh -c '/usr/lib/loopship/ready >/dev/null'",
    '::ctrlaltdel:/usr/sbin/reboot',
    '::shutdown:/usr/lib/loopship/rc.shutdown',
  ]);
  for (const p of ['usr/lib/loopship/rc.sysinit', 'usr/lib/loopship/rc.shutdown', 'usr/lib/loopship/udhcpc.script', 'usr/lib/loopship/host-config', 'etc/acpi/PWRF/00000080']) {
    const g = f.get(p);
    t.true(g && 'mode' in g && g.mode === 0o755, `${p} is executable`);
  }
  const rc = text(f.get('usr/lib/loopship/rc.sysinit'));
  t.regex(rc, /\/usr\/lib\/loopship\/host-config\n/);
  t.regex(rc, /hostname -F \/etc\/hostname/);
  t.true(rc.indexOf('remount,rw /') < rc.indexOf('/usr/lib/loopship/host-config'), 'settings are written to a writable root');
  t.false([...f.keys()].some((p) => p.startsWith('usr/lib/systemd/')));
});

test('every guest script parses in dash and in busybox sh', async (t) => {
  const shells = ['/bin/dash', '/bin/busybox'].filter((s) => existsSync(s));
  t.true(shells.includes('/bin/dash'));
  for (const yaml of [RECIPE, RECIPE + '  init: busybox\n']) {
    for (const [path, f] of files(yaml)) {
      if (!('content' in f) || !f.content.startsWith('#!/bin/sh')) continue;
      for (const sh of shells) {
        const r = await execa(sh, sh.endsWith('busybox') ? ['sh', '-n'] : ['-n'], { input: f.content, reject: false });
        t.is(r.exitCode, 0, `${sh} -n ${path}: ${r.stderr}`);
      }
    }
  }
});

test('busybox is installed when it is the init, once, whatever the recipe lists', (t) => {
  const p = (yaml: string) => imagePackages(parseRecipe(yaml, 'recipe.yaml'));
  t.deepEqual(p(RECIPE + 'packages: [jq]\n'), ['linux-image-cloud-amd64', 'jq']);
  t.deepEqual(p(RECIPE + '  init: busybox\npackages: [jq]\n'), ['linux-image-cloud-amd64', 'busybox', 'jq']);
  t.deepEqual(p(RECIPE + '  init: busybox\npackages: [busybox-static]\n'), ['linux-image-cloud-amd64', 'busybox-static']);
});
