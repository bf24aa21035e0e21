import test from 'ava';
import { mkdtemp, writeFile, rm, readFile, readlink, mkdir, symlink } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XlBackend, renderXlConfig, xlString, consoleLogging } from '../../client-agent/backends/xl.js';
import { defaultExec, type Exec } from '../../client-agent/exec.js';
import { ExecError } from '../../format/index.js';
import { stableMac, type DomainSpec } from '../../client-agent/backends/types.js';
// @ts-expect-error plain JS fixture
import { parseXlCfg } from './fixtures/xlcfg.mjs';

const here = dirname(fileURLToPath(import.meta.url));

/** A /proc with one xenconsoled process started with `args` (none: no xenconsoled at all). */
async function fakeProc(dir: string, args: string[] | null): Promise<string> {
  const proc = join(dir, 'proc');
  await mkdir(join(proc, '1'), { recursive: true });
  await writeFile(join(proc, '1', 'comm'), 'systemd\n');
  await writeFile(join(proc, '1', 'cmdline'), '/sbin/init\0');
  if (args) {
    await mkdir(join(proc, '412'), { recursive: true });
    await writeFile(join(proc, '412', 'comm'), 'xenconsoled\n');
    await writeFile(join(proc, '412', 'cmdline'), ['/usr/lib/xen-4.17/bin/xenconsoled', ...args].join('\0') + '\0');
    await writeFile(join(proc, '412', 'status'), 'Name:\txenconsoled\nUid:\t0\t0\t0\t0\n');
  }
  return proc;
}

async function setup(t: import('ava').ExecutionContext) {
  const dir = await mkdtemp(join(tmpdir(), 'agent-xl-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const bin = join(dir, 'bin');
  await mkdir(bin);
  await symlink(join(here, 'fixtures', 'fake-xl.mjs'), join(bin, 'xl'));
  // the fake xl is found on PATH, like the real one
  process.env.PATH = `${bin}:${process.env.PATH}`;
  process.env.FAKE_XL_STATE = join(dir, 'xlstate');
  process.env.FAKE_XL_CONSOLE_DIR = join(dir, 'console');
  await mkdir(process.env.FAKE_XL_CONSOLE_DIR);
  const v = join(dir, 'appliances', 'sbc', '1.2.0');
  await mkdir(v, { recursive: true });
  for (const f of ['kernel', 'initrd', 'disk.img']) await writeFile(join(v, f), 'x');
  await writeFile(join(dir, 'data.img'), '');
  const spec: DomainSpec = {
    name: 'sbc', version: '1.2.0', type: 'pvh',
    kernel: join(v, 'kernel'), initrd: join(v, 'initrd'), disk: join(v, 'disk.img'), dataDisk: join(dir, 'data.img'),
    cmdline: 'root=/dev/xvda ro quiet "x"', memory: 1024, vcpus: 2, nics: 1, bridge: 'xenbr0', macs: [stableMac('host1', 'sbc', 0)],
  };
  const sleeps: number[] = [];
  const consoleDir = process.env.FAKE_XL_CONSOLE_DIR;
  const procDir = await fakeProc(dir, ['--log=guest', `--log-dir=${consoleDir}`, '--pid-file', '/run/xenconsoled.pid']);
  const logged: string[] = [];
  // time passes only in the backend's sleeps: "the rest of the timeout" is a fixed number of looks
  let clock = 0;
  const backend = new XlBackend({ etcXen: join(dir, 'etc-xen'), consoleDir, procDir, now: () => clock, sleep: async (ms) => { sleeps.push(ms); clock += ms; }, toolstackTimeoutMs: 60_000, log: (l) => logged.push(l) });
  const calls = async () => (await readFile(join(dir, 'xlstate', 'calls.log'), 'utf8').catch(() => '')).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as string[]);
  const advance = (ms: number) => void (clock += ms);
  return { dir, spec, backend, sleeps, calls, consoleDir, procDir, logged, advance };
}

test.serial('the generated config follows xl.cfg syntax and says what the spec says', async (t) => {
  const { spec } = await setup(t);
  const text = renderXlConfig(spec);
  const cfg = parseXlCfg(text);
  t.is(cfg.name, 'sbc');
  t.is(cfg.type, 'pvh');
  t.is(cfg.kernel, spec.kernel);
  t.is(cfg.ramdisk, spec.initrd);
  t.is(cfg.extra, 'root=/dev/xvda ro quiet "x" console=hvc0');
  t.is(cfg.memory, 1024);
  t.is(cfg.vcpus, 2);
  t.deepEqual(cfg.disk, [`format=raw,vdev=xvda,access=rw,target=${spec.disk}`, `format=raw,vdev=xvdb,access=rw,target=${spec.dataDisk}`]);
  t.deepEqual(cfg.vif, [`mac=${spec.macs[0]},bridge=xenbr0`]);
  t.is(cfg.on_crash, 'restart');
  t.false('tsc_mode' in cfg, 'Xen decides the TSC mode unless the host says');
  t.is(parseXlCfg(renderXlConfig({ ...spec, tscMode: 'native' })).tsc_mode, 'native');
  t.throws(() => renderXlConfig({ ...spec, cmdline: 'a\nb' }), { message: /line break/ });
  t.throws(() => renderXlConfig({ ...spec, disk: '/x,y/disk.img' }), { message: /may not contain/ });
  t.is(xlString('a"b\\c'), '"a\\"b\\\\c"');
});

test('stable MACs: in the Xen range, the same for the same host and appliance, different otherwise', (t) => {
  const a = stableMac('host1', 'sbc');
  t.regex(a, /^00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$/);
  t.is(stableMac('host1', 'sbc'), a);
  t.not(stableMac('host2', 'sbc'), a);
  t.not(stableMac('host1', 'term'), a);
  t.not(stableMac('host1', 'sbc', 1), a);
});

test.serial('start waits for the toolstack, writes the config, xl create, autostart link; stop shuts down', async (t) => {
  const { dir, spec, backend, sleeps, calls, advance } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  await writeFile(join(dir, 'xlstate', 'info-failures'), '3'); // xenstored still starting
  t.false(await backend.isRunning('sbc'));
  await backend.start(spec);
  await backend.setAutostart('sbc', true);
  t.true(await backend.isRunning('sbc'));
  t.is(sleeps.length, 3, 'polled xl info until it answered, with backoff');
  t.deepEqual(sleeps, [100, 200, 400]);
  const cfgPath = join(dir, 'etc-xen', 'sbc.cfg');
  t.true(existsSync(cfgPath));
  t.is(await readlink(join(dir, 'etc-xen', 'auto', 'sbc.cfg')), '../sbc.cfg');
  const c = await calls();
  t.deepEqual(c.filter((a) => a[0] === 'create'), [['create', cfgPath]]);
  t.is(c.filter((a) => a[0] === 'info').length, 4);

  // starting again is a no-op, not a second domain
  await backend.start(spec);
  t.is((await calls()).filter((a) => a[0] === 'create').length, 1);

  await backend.stop('sbc');
  t.false(await backend.isRunning('sbc'));
  t.truthy((await calls()).find((a) => a[0] === 'shutdown' && a.includes('-w') && a.includes('sbc')));
  t.is((await calls()).filter((a) => a[0] === 'info').length, 4, 'the toolstack answered a moment ago: not asked again');
  // a minute later (the daemon's next round) it is asked again
  advance(61_000);
  await backend.stop('sbc');
  t.is((await calls()).filter((a) => a[0] === 'info').length, 5);
  await backend.forget('sbc');
  t.false(existsSync(cfgPath));
  t.false(existsSync(join(dir, 'etc-xen', 'auto', 'sbc.cfg')));
});

test.serial('a domain that shut down but stays listed (no xl left to apply on_poweroff) is not running: stop destroys it, start replaces it', async (t) => {
  const { dir, spec, backend, calls } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  await writeFile(join(dir, 'xlstate', 'linger'), '');
  await backend.start(spec);
  const id = await backend.instanceId('sbc');
  t.truthy(id);
  // stop: the guest shuts down and stays listed '--ps--': destroyed, nothing left
  await backend.stop('sbc');
  t.false(await backend.isRunning('sbc'));
  t.truthy((await calls()).find((a) => a[0] === 'destroy' && a.includes('sbc')), 'the shut-down domain was destroyed');
  t.false(existsSync(join(dir, 'xlstate', 'sbc')));
  // a leftover from before (shut down by itself): not running, and start creates afresh
  await backend.start(spec);
  await writeFile(join(dir, 'xlstate', 'shutdown-sbc'), '');
  t.is(await backend.instanceId('sbc'), null, 'a shut-down domain is not an instance');
  const creates = (await calls()).filter((a) => a[0] === 'create').length;
  await backend.start(spec);
  t.is((await calls()).filter((a) => a[0] === 'create').length, creates + 1, 'start replaced the leftover instead of taking it for running');
  t.true(await backend.isRunning('sbc'));
});

test.serial('stop waits for the xl that created the domain to destroy it after the shutdown, instead of racing it', async (t) => {
  const { dir, spec, backend, calls, sleeps } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  await writeFile(join(dir, 'xlstate', 'slow-cleanup'), '');
  await backend.start(spec);
  await backend.stop('sbc');
  t.false(await backend.isRunning('sbc'));
  t.false(existsSync(join(dir, 'xlstate', 'dom-sbc')));
  t.deepEqual((await calls()).filter((a) => a[0] === 'destroy'), [], 'no destroy of ours: the creating xl did it');
  t.deepEqual(sleeps.filter((ms) => ms === 2000), [2000, 2000], 'looked again until the domain left the list');
});

test.serial('a guest that powered itself off is left to the xl that created it: stop and start wait for it to leave the list instead of racing it', async (t) => {
  const { dir, spec, backend, calls, sleeps } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  const poweredOff = async () => {
    // listed '--ps--' for two more looks, then the creating xl's on_poweroff removes it
    await writeFile(join(dir, 'xlstate', 'shutdown-sbc'), '');
    await writeFile(join(dir, 'xlstate', 'cleanup-sbc'), '2');
  };
  await backend.start(spec);
  await poweredOff();
  await backend.start(spec); // e.g. a rollback starting the previous version
  t.true(await backend.isRunning('sbc'));
  t.is((await calls()).filter((a) => a[0] === 'create').length, 2, 'created afresh once the old domain was gone');
  await poweredOff();
  await backend.stop('sbc');
  t.false(await backend.isRunning('sbc'));
  t.deepEqual((await calls()).filter((a) => a[0] === 'destroy' || a[0] === 'shutdown'), [], 'neither destroyed nor shut down by us: the creating xl cleaned up');
  t.deepEqual(sleeps.filter((ms) => ms === 2000), [2000, 2000, 2000, 2000], 'two looks each time, until the domain left the list');
});

test.serial('a destroy that loses the race with the xl that created the domain is not a failure; one that leaves the domain is', async (t) => {
  const { dir, spec, backend, calls, sleeps, logged } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  await backend.start(spec);
  // the guest ignores the shutdown and is destroyed; ours fails while the creating xl's removes it
  await writeFile(join(dir, 'xlstate', 'ignore-shutdown'), '');
  await writeFile(join(dir, 'xlstate', 'destroy-race'), '');
  await backend.stop('sbc', { timeoutMs: 10_000 });
  t.false(await backend.isRunning('sbc'));
  t.is((await calls()).filter((a) => a[0] === 'destroy').length, 1);
  t.is(sleeps.filter((ms) => ms === 2000).length, 5, 'the guest had the rest of the 10 s to go, then was destroyed');
  t.true(logged.some((l) => /^sbc did not shut down within 10 s \(xl shutdown -w: Domain sbc did not shut down in time; still -b----\): destroying it/.test(l)), logged.join('\n'));
  t.true(logged.some((l) => /^xl destroy sbc failed, but the domain is gone .*Unable to destroy guest/.test(l)), logged.join('\n'));

  // a destroy that fails and leaves the domain: stop fails with xl's own words, after a few looks
  await rm(join(dir, 'xlstate', 'destroy-race'));
  await backend.start(spec);
  await writeFile(join(dir, 'xlstate', 'destroy-stuck'), '');
  sleeps.length = 0;
  const err = await t.throwsAsync(backend.stop('sbc', { timeoutMs: 10_000 }));
  t.regex(err!.message, /xl destroy sbc failed .*Unable to destroy guest/s);
  t.is(sleeps.filter((ms) => ms === 2000).length, 5 + 5, 'the rest of the timeout, then 5 looks after the failed destroy');
  t.true(existsSync(join(dir, 'xlstate', 'dom-sbc')), 'the domain is still there');

  // a destroy that says it worked while the domain stays listed is no stop either
  await rm(join(dir, 'xlstate', 'destroy-stuck'));
  await writeFile(join(dir, 'xlstate', 'destroy-noop'), '');
  const noop = await t.throwsAsync(backend.stop('sbc', { timeoutMs: 10_000 }));
  t.regex(noop!.message, /xl destroy sbc succeeded but the domain is still listed \(-b----\)/);
  t.true(await backend.isRunning('sbc'));
});

test.serial('stop ends only when the domain has left the list: xl shutdown -w returning while the guest still shuts down is waited out, not taken for gone', async (t) => {
  const { dir, spec, backend, calls, sleeps } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  await backend.start(spec);
  await writeFile(join(dir, 'xlstate', 'early-return'), '');
  await backend.stop('sbc');
  t.false(await backend.isRunning('sbc'));
  t.false(existsSync(join(dir, 'xlstate', 'dom-sbc')));
  t.deepEqual((await calls()).filter((a) => a[0] === 'destroy'), [], 'not destroyed mid-shutdown: it had time left');
  t.deepEqual(sleeps.filter((ms) => ms === 2000), [2000, 2000], 'looked until it left the list');
});

test.serial('an xl list that fails for another reason than "no such domain" is asked again, then an error: never taken for a domain that is gone', async (t) => {
  const { dir, spec, backend, calls, sleeps } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  await backend.start(spec);
  await writeFile(join(dir, 'xlstate', 'list-failures'), '2');
  t.true(await backend.isRunning('sbc'), 'two failures, then the answer');
  t.deepEqual(sleeps.filter((ms) => ms === 1000), [1000, 1000]);
  await writeFile(join(dir, 'xlstate', 'list-failures'), '3');
  const err = await t.throwsAsync(backend.stop('sbc'));
  t.regex(err!.message, /xl list sbc failed 3 times, so whether the domain exists is unknown: .*Resource temporarily unavailable/);
  t.deepEqual((await calls()).filter((a) => a[0] === 'shutdown' || a[0] === 'destroy'), [], 'nothing done on an unknown');
  t.true(await backend.isRunning('sbc'), 'and it still runs');
  await rm(join(dir, 'xlstate', 'list-failures'));
  await backend.stop('sbc');
  t.false(await backend.isRunning('sbc'), 'a real "invalid domain identifier" is gone');
});

test.serial('a toolstack that never answers is a clear error, after the timeout, without xl create', async (t) => {
  const { dir, spec, calls } = await setup(t);
  await mkdir(join(dir, 'xlstate'), { recursive: true });
  await writeFile(join(dir, 'xlstate', 'info-failures'), '1000');
  let clock = 0;
  const backend = new XlBackend({ etcXen: join(dir, 'etc-xen'), toolstackTimeoutMs: 5000, now: () => clock, sleep: async (ms) => { clock += ms; } });
  const err = await t.throwsAsync(backend.start(spec));
  t.regex(err!.message, /Xen toolstack did not answer within .*privileged command interface/);
  t.falsy((await calls()).find((a) => a[0] === 'create'));
  // 100+200+400+800+1600+2000 ms of backoff, then the deadline
  t.is((await calls()).filter((a) => a[0] === 'info').length, 7);
  t.is(clock, 5100);
});

test.serial('the fake xl refuses configs that break xl.cfg syntax (so the check above can fail)', (t) => {
  t.throws(() => parseXlCfg('name = sbc\n'), { message: /expected a quoted string/ });
  t.throws(() => parseXlCfg('disk = [ "a" "b" ]\n'), { message: /expected "," or "\]"/ });
  t.throws(() => parseXlCfg('extra = "unterminated\n'), { message: /unterminated/ });
  t.throws(() => parseXlCfg('memory = 1\nmemory = 2\n'), { message: /twice/ });
  t.deepEqual(parseXlCfg('# c\nvif = [ "mac=00:16:3e:00:00:01",\n  ]; memory = 0x10\n'), { vif: ['mac=00:16:3e:00:00:01'], memory: 16 });
});

test('consoleLogging reads xenconsoled options the way its getopt_long does', (t) => {
  const x = '/usr/lib/xen-4.17/bin/xenconsoled';
  t.deepEqual(consoleLogging([x, '--pid-file', '/run/xenconsoled.pid']), { guest: false, dir: '/var/log/xen/console' });
  t.deepEqual(consoleLogging([x, '--log=guest', '--log-dir=/var/log/xen/console/']), { guest: true, dir: '/var/log/xen/console' });
  t.deepEqual(consoleLogging([x, '--log', 'all', '--log-dir', '/srv/consoles']), { guest: true, dir: '/srv/consoles' });
  t.deepEqual(consoleLogging([x, '--log=hv']), { guest: false, dir: '/var/log/xen/console' });
  t.deepEqual(consoleLogging([x, '--log=guest', '--log=none']), { guest: false, dir: '/var/log/xen/console' }, 'the last one counts');
});

for (const [what, args, message] of [
  ['without --log=guest', ['--pid-file', '/run/xenconsoled.pid'], /xenconsoled does not log guest consoles .*set XENCONSOLED_ARGS="--log=guest --log-dir=.*\/console" in \/etc\/default\/xen/],
  ['logging elsewhere', ['--log=guest', '--log-dir=/elsewhere'], /xenconsoled logs guest consoles to \/elsewhere, the agent reads them in .*XENCONSOLED_TRACE=guest in \/etc\/default\/xencommons/],
  ['not running', null, /xenconsoled is not running.*XENCONSOLED_ARGS=/],
] as const) {
  test.serial(`start refuses with what to set when xenconsoled is ${what}, before xl create`, async (t) => {
    const { dir, spec, consoleDir, calls } = await setup(t);
    const procDir = await fakeProc(join(dir, 'other'), args === null ? null : [...args]);
    let clock = 0;
    const backend = new XlBackend({ etcXen: join(dir, 'etc-xen'), consoleDir, procDir, toolstackTimeoutMs: 3000, now: () => clock, sleep: async (ms) => { clock += ms; } });
    const err = await t.throwsAsync(backend.start(spec));
    t.regex(err!.message, message);
    t.is((err as { code?: string }).code, 'CONFIG_INVALID');
    t.falsy((await calls()).find((a) => a[0] === 'create'));
    t.false(existsSync(join(dir, 'etc-xen', 'sbc.cfg')));
    t.is(clock, args === null ? 3100 : 0, 'only a missing xenconsoled is waited for (it starts just after xenstored)');
  });
}

test.serial('xenconsoled that starts a moment after the toolstack answers is waited for', async (t) => {
  const { dir, spec, consoleDir, calls } = await setup(t);
  const procDir = await fakeProc(join(dir, 'late'), null);
  const backend = new XlBackend({
    etcXen: join(dir, 'etc-xen'), consoleDir, procDir,
    sleep: async () => { await fakeProc(join(dir, 'late'), ['--log=guest', `--log-dir=${consoleDir}/`]); },
  });
  await backend.start(spec);
  t.deepEqual((await calls()).filter((a) => a[0] === 'create').length, 1);
});

/** The fake xl, except that `xl create` does its work (or not) and then never returns. */
function hangingCreate(opts: { makeDomain: boolean | ((attempt: number) => boolean); settle?: 'killed' | 'never'; paused?: (attempt: number) => boolean }): { exec: Exec; createOpts: { timeoutMs?: number }[] } {
  const createOpts: { timeoutMs?: number }[] = [];
  const exec: Exec = async (file, args, o) => {
    if (args[0] !== 'create') return defaultExec(file, args, o);
    createOpts.push({ timeoutMs: o?.timeoutMs });
    const attempt = createOpts.length;
    const make = typeof opts.makeDomain === 'function' ? opts.makeDomain(attempt) : opts.makeDomain;
    if (make) await defaultExec(file, args); // the domain is made, then xl hangs
    const pausedFlag = join(process.env.FAKE_XL_STATE!, 'paused-sbc');
    if (opts.paused?.(attempt)) await writeFile(pausedFlag, '');
    else await rm(pausedFlag, { force: true });
    if (opts.settle === 'never') return new Promise(() => {});
    // what defaultExec does when it kills a program at its timeout
    await new Promise((r) => setTimeout(r, o?.timeoutMs ?? 0));
    throw new ExecError(`${file}: Command timed out after ${o?.timeoutMs} milliseconds`, { where: file });
  };
  return { exec, createOpts };
}

for (const settle of ['killed', 'never'] as const) {
  test.serial(`xl create that never returns (${settle === 'killed' ? 'killed at its timeout' : 'not even when killed'}): the domain exists, so start carries on`, async (t) => {
    const { dir, spec, consoleDir, procDir } = await setup(t);
    const { exec, createOpts } = hangingCreate({ makeDomain: true, settle });
    const notes: string[] = [];
    const backend = new XlBackend({ exec, etcXen: join(dir, 'etc-xen'), consoleDir, procDir, createTimeoutMs: 150, log: (l) => notes.push(l) });
    await backend.start(spec); // 'never': only the backend's own deadline gets it past this
    t.deepEqual(createOpts, [{ timeoutMs: 150 }]);
    t.true(await backend.isRunning('sbc'));
    t.regex(notes.join('\n'), /xl create sbc did not return within 0 s, but the domain runs: carrying on/);
  });
}

test.serial('xl create that never returns and made no domain is an error saying so', async (t) => {
  const { dir, spec, consoleDir, procDir } = await setup(t);
  const { exec } = hangingCreate({ makeDomain: false, settle: 'never' });
  const backend = new XlBackend({ exec, etcXen: join(dir, 'etc-xen'), consoleDir, procDir, createTimeoutMs: 100, log: () => {} });
  const err = await t.throwsAsync(backend.start(spec));
  t.regex(err!.message, /xl create .*sbc\.cfg did not return within 0 s, twice; no domain sbc exists/);
  t.is((err as { code?: string }).code, 'EXEC_FAILED');
});

test.serial('xl create that hangs while building leaves a paused domain: destroyed, created once more', async (t) => {
  const { dir, spec, consoleDir, procDir, calls } = await setup(t);
  const { exec, createOpts } = hangingCreate({ makeDomain: true, settle: 'killed', paused: (n) => n === 1 });
  const notes: string[] = [];
  const backend = new XlBackend({ exec, etcXen: join(dir, 'etc-xen'), consoleDir, procDir, createTimeoutMs: 100, log: (l) => notes.push(l) });
  await backend.start(spec);
  t.is(createOpts.length, 2);
  t.truthy((await calls()).find((a) => a[0] === 'destroy' && a[1] === 'sbc'), 'the paused half-built domain was destroyed');
  t.true(await backend.isRunning('sbc'));
  t.regex(notes[0], /domain sbc was left paused \(--p---\): trying once more/);
  t.regex(notes[1], /but the domain runs/);

  // paused both times: an error, and nothing half-built left behind
  await backend.stop('sbc');
  const always = hangingCreate({ makeDomain: true, settle: 'killed', paused: () => true });
  const b2 = new XlBackend({ exec: always.exec, etcXen: join(dir, 'etc-xen'), consoleDir, procDir, createTimeoutMs: 100, log: () => {} });
  t.regex((await t.throwsAsync(b2.start(spec)))!.message, /did not return within 0 s, twice; domain sbc was left paused/);
  t.false(await backend.isRunning('sbc'));
});

test.serial('xl create that fails on a hotplug script timeout is tried once more, then the failure stands', async (t) => {
  const { dir, spec, consoleDir, procDir } = await setup(t);
  const timedOut = 'libxl: error: libxl_aoutils.c:539:async_exec_timeout: killing execution of /etc/xen/scripts/block add because of timeout\nlibxl: error: libxl_create.c:1871:domcreate_attach_devices: Domain 1:unable to add disk devices';
  let creates = 0;
  const flaky: Exec = async (file, args, o) => {
    if (args[0] !== 'create') return defaultExec(file, args, o);
    if (++creates === 1) return { exitCode: 3, stdout: '', stderr: timedOut };
    return defaultExec(file, args, o);
  };
  const notes: string[] = [];
  const backend = new XlBackend({ exec: flaky, etcXen: join(dir, 'etc-xen'), consoleDir, procDir, log: (l) => notes.push(l) });
  await backend.start(spec);
  t.is(creates, 2);
  t.true(await backend.isRunning('sbc'));
  t.regex(notes[0], /xl create sbc failed on a libxl timeout .*because of timeout.*: trying once more/);
  await backend.stop('sbc');

  // every time: the second failure is the error, no third try
  creates = 0;
  const always: Exec = async (file, args, o) => (args[0] === 'create' ? (creates++, { exitCode: 3, stdout: '', stderr: timedOut }) : defaultExec(file, args, o));
  const b2 = new XlBackend({ exec: always, etcXen: join(dir, 'etc-xen'), consoleDir, procDir, log: () => {} });
  t.regex((await t.throwsAsync(b2.start(spec)))!.message, /failed with exit code 3: .*unable to add disk devices/);
  t.is(creates, 2);
});

test.serial('xl create that fails, or succeeds without a domain, is an error', async (t) => {
  const { dir, spec, consoleDir, procDir } = await setup(t);
  const failing: Exec = async (file, args, o) => (args[0] === 'create' ? { exitCode: 3, stdout: '', stderr: 'libxl: error: cannot make domain: -3' } : defaultExec(file, args, o));
  let backend = new XlBackend({ exec: failing, etcXen: join(dir, 'etc-xen'), consoleDir, procDir });
  t.regex((await t.throwsAsync(backend.start(spec)))!.message, /create .* failed with exit code 3: libxl: error: cannot make domain/);
  const vanishing: Exec = async (file, args, o) => (args[0] === 'create' ? { exitCode: 0, stdout: '', stderr: '' } : defaultExec(file, args, o));
  backend = new XlBackend({ exec: vanishing, etcXen: join(dir, 'etc-xen'), consoleDir, procDir });
  t.regex((await t.throwsAsync(backend.start(spec)))!.message, /succeeded but domain sbc does not exist/);
});
