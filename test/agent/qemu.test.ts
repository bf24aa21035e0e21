// The qemu backend booting the real `tiny` appliance: the injected hostname shows in the
// ready marker, stop is graceful-then-forced, nothing is left running. Slow (a debootstrap
// build and a TCG boot): skipped with LOOPSHIP_FAST=1 or when not root.
// LOOPSHIP_TINY_DIR=<dir with disk.img, kernel, initrd, cmdline> reuses an earlier build.
import test from 'ava';
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile, copyFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import { QemuBackend, qemuArgs, qemuCmdline, qmpCommand } from '../../client-agent/backends/qemu.js';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { stableMac, type DomainSpec } from '../../client-agent/backends/types.js';
import { waitReady } from '../../client-agent/health.js';
import { withMountedImage } from '../../client-agent/mount.js';
import { writeHostSettings } from '../../client-agent/configure.js';
import { StateDir } from '../../client-agent/state.js';
import { defaultExec } from '../../client-agent/exec.js';
import type { Manifest } from '../../format/index.js';

const slow = !process.env.LOOPSHIP_FAST && process.getuid?.() === 0;

test('qemu arguments: tcg/kvm, virtio disks, console to a file, QMP, pid file, daemonized', (t) => {
  const spec: DomainSpec = {
    name: 'sbc', version: '1', type: 'pvh', kernel: '/k', initrd: '/i', disk: '/v/disk.img', dataDisk: '/v/data.img',
    cmdline: 'root=/dev/xvda ro console=hvc0 quiet', memory: 512, vcpus: 2, nics: 1, macs: [stableMac('h', 'sbc')],
  };
  const a = qemuArgs(spec, { pidFile: '/r/sbc.pid', qmpSocket: '/r/sbc.qmp', consoleLog: '/l/sbc.log' }, ['tcg']);
  const at = (flag: string) => a[a.indexOf(flag) + 1];
  t.is(at('-accel'), 'tcg');
  t.is(at('-append'), 'root=/dev/vda ro quiet console=ttyS0');
  t.deepEqual(a.filter((_, i) => a[i - 1] === '-drive'), ['file=/v/disk.img,format=raw,if=virtio,cache=writeback', 'file=/v/data.img,format=raw,if=virtio,cache=writeback']);
  t.is(at('-nic'), `user,model=virtio-net-pci,mac=${spec.macs[0]}`);
  t.is(at('-serial'), 'file:/l/sbc.log');
  t.is(at('-pidfile'), '/r/sbc.pid');
  t.true(a.includes('-daemonize'));
  t.is(qemuCmdline('root=UUID=x ro quiet'), 'root=UUID=x ro quiet console=ttyS0');
  t.throws(() => qemuArgs({ ...spec, disk: '/a,b/disk.img' }, { pidFile: '', qmpSocket: '', consoleLog: '' }, ['tcg']), { message: /may not contain ","/ });
});

async function tinyBuild(work: string): Promise<{ image: string; kernel: string; initrd: string; cmdline: string }> {
  const dir = process.env.LOOPSHIP_TINY_DIR;
  if (dir) {
    return { image: join(dir, 'disk.img'), kernel: join(dir, 'kernel'), initrd: join(dir, 'initrd'), cmdline: (await readFile(join(dir, 'cmdline'), 'utf8')).trim() };
  }
  const { build } = await import('../../builder/index.js');
  const r = await build({ recipe: join(process.cwd(), 'recipes', 'tiny'), output: { kind: 'image' }, workDir: work, keepWork: true });
  return { image: r.image.path!, kernel: r.kernel.path!, initrd: r.initrd.path!, cmdline: r.cmdline };
}

(slow ? test : test.skip)('the tiny appliance boots under the qemu backend with the injected hostname, and stops', async (t) => {
  t.timeout(30 * 60_000);
  const work = await mkdtemp('/var/tmp/loopship-agent-qemu-');
  const state = new StateDir(join(work, 'state'));
  await state.init();
  const backend = new QemuBackend({ runDir: state.runDir, logDir: state.logDir });
  t.teardown(async () => {
    await backend.stop('tiny', { timeoutMs: 1000 }).catch(() => {});
    await rm(work, { recursive: true, force: true });
  });
  const built = await tinyBuild(work);
  const disk = join(work, 'disk.img');
  await execa('cp', ['--sparse=always', built.image, disk]);
  await copyFile(built.kernel, join(work, 'kernel'));
  await copyFile(built.initrd, join(work, 'initrd'));
  const manifest = { name: 'tiny', version: '1.0.0', settings: { hostname: { type: 'hostname' } } } as unknown as Manifest;
  await withMountedImage({ exec: defaultExec, state }, disk, 'tiny', (mp) => writeHostSettings(mp, manifest, { hostname: 'qemu-agent-01' }, { host: 'test', configuredAt: new Date().toISOString() }));

  const spec: DomainSpec = {
    name: 'tiny', version: '1.0.0', type: 'pvh', kernel: join(work, 'kernel'), initrd: join(work, 'initrd'), disk, dataDisk: null,
    cmdline: built.cmdline, memory: 256, vcpus: 1, nics: 1, macs: [stableMac('test', 'tiny')],
  };
  await backend.start(spec);
  t.true(await backend.isRunning('tiny'));
  const pid = Number(await readFile(join(state.runDir, 'tiny.pid'), 'utf8'));
  const r = await waitReady({ logPath: backend.consoleLog('tiny'), marker: 'LOOPSHIP-READY', timeoutMs: 15 * 60_000, isAlive: () => backend.isRunning('tiny') });
  t.log(`boot to ready: ${(r.ms / 1000).toFixed(0)} s`);
  t.true(r.ready, r.tail);
  t.regex(r.line ?? '', /LOOPSHIP-READY hostname=qemu-agent-01 version=1\.0\.0/);
  t.regex(await readFile(backend.consoleLog('tiny'), 'utf8'), /LOOPSHIP-READY hostname=qemu-agent-01 /);
  await writeFile(join(work, 'marker'), '');
  await backend.stop('tiny', { timeoutMs: 20_000 });
  t.false(await backend.isRunning('tiny'));
  await t.throwsAsync(access(`/proc/${pid}`), undefined, 'qemu is gone');
  await t.throwsAsync(access(join(state.runDir, 'tiny.pid')));
});

test('qmpCommand: handshake, arguments passed, events skipped; qemu gone before answering is an error', async (t) => {
  const sockPath = (await mkdtemp(`${tmpdir()}/qmp-`)) + '/qmp.sock';
  const seen: unknown[] = [];
  const server = net.createServer((c) => {
    c.write('{"QMP": {"version": {}}}\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      for (let nl; (nl = buf.indexOf('\n')) >= 0; ) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        seen.push(msg);
        if (msg.execute === 'qmp_capabilities') c.write('{"return": {}}\n');
        else if (msg.execute === 'die') c.destroy();
        else c.write('{"event": "SOMETHING", "data": {}}\n{"return": {"ok": true}}\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(sockPath, r));
  t.teardown(() => server.close());
  t.deepEqual(await qmpCommand(sockPath, 'screendump', 5000, { filename: '/tmp/x.ppm' }), { ok: true });
  t.deepEqual(seen.at(-1), { execute: 'screendump', arguments: { filename: '/tmp/x.ppm' } });
  await t.throwsAsync(qmpCommand(sockPath, 'die', 5000), { message: /QMP die: connection closed/ });
});
