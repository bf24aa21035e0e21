import test from 'ava';
import { mkdtemp, writeFile, rm, readFile, readlink, mkdir, symlink } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XlBackend, renderXlConfig, xlString } from '../../client-agent/backends/xl.js';
import { stableMac, type DomainSpec } from '../../client-agent/backends/types.js';
// @ts-expect-error plain JS fixture
import { parseXlCfg } from './fixtures/xlcfg.mjs';

const here = dirname(fileURLToPath(import.meta.url));

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
  const backend = new XlBackend({ etcXen: join(dir, 'etc-xen'), consoleDir: process.env.FAKE_XL_CONSOLE_DIR, sleep: async (ms) => { sleeps.push(ms); }, toolstackTimeoutMs: 60_000 });
  const calls = async () => (await readFile(join(dir, 'xlstate', 'calls.log'), 'utf8').catch(() => '')).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as string[]);
  return { dir, spec, backend, sleeps, calls };
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
  const { dir, spec, backend, sleeps, calls } = await setup(t);
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
  await backend.forget('sbc');
  t.false(existsSync(cfgPath));
  t.false(existsSync(join(dir, 'etc-xen', 'auto', 'sbc.cfg')));
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
