// kill -9 of the agent at every step of an install and of an upgrade (a resumed download
// and the wait for a new guest are in faults.test.ts). The agent runs in a child process
// that stops at the step (LOOPSHIP_TEST_PAUSE_AT, client-agent/pause.ts) and is killed
// there, or, for the download, is killed once some bytes of the new version came in. Then:
//  - right after the kill: what the step leaves is there (a loop device, a mount), the state
//    file parses, and the previous version is the bootable one (current, or the recorded way
//    back of an interrupted upgrade) and still verifies against its signed manifest;
//  - once the next run has started (inside its lock): no loop device attached to a file of
//    the host, no mount under the state dir, `current` names an installed version that
//    verifies, and after an upgrade's kill the previous version is the one running;
//  - the next run completes the work: the new version current, running, configured.
// Real loop mounts of real ext4 images; the boot backend is the fake one, and the guests it
// had running when the agent died keep running (as xl domains do) in the next run's backend.
// About 4-5 s of CPU per case (two agent runs, one a node process).
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { appendFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Agent } from '../../client-agent/agent.js';
import { verifyVersionDir } from '../../client-agent/verify.js';
import type { DomainSpec } from '../../client-agent/backends/types.js';
import type { PauseStep } from '../../client-agent/pause.js';
import { makeRepo, type Fixture } from '../helpers/repo.js';
import { FakeBackend } from './fakes.js';
import { publishExt4 } from './ext4.js';
import { killAt } from './kill.js';
import { sha256File, sha256Of, loopsUnder, mountsUnder } from './helpers.js';

interface World {
  fx: Fixture;
  /** a host with sbc 1.0.0 installed, configured and running */
  template: string;
  running: DomainSpec;
  images: Record<string, string>;
}

async function hostConfig(dir: string, fx: Fixture): Promise<void> {
  await writeFile(join(dir, 'root.asc'), fx.rootKeyArmored);
  await writeFile(join(dir, 'agent.yaml'), `repos: [${fx.repoDir}]\ntrust: { root_key_file: ${join(dir, 'root.asc')} }\nhealth_timeout_s: 30\nfetch_concurrency: 2\nappliances:\n  - name: sbc\n    settings: { hostname: site-a }\n`);
}

const worldP: Promise<World> = (async () => {
  const fx = await makeRepo();
  const v1 = await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  const template = join(fx.dir, 'template');
  await mkdir(template);
  await hostConfig(template, fx);
  const backend = new FakeBackend(join(template, 'console'));
  const agent = new Agent({ configPath: join(template, 'agent.yaml'), stateDir: join(template, 'state'), backend, host: 'dom0-test' });
  if (!(await agent.install('sbc')).health?.ready) throw new Error('template install did not become ready');
  // 40 files more than 1.0.0: something to download
  const v2 = await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two', bulkFiles: 80 });
  return { fx, template, running: backend.running.get('sbc')!, images: { '1.0.0': sha256Of(await readFile(v1.image)), '2.0.0': sha256Of(await readFile(v2.image)) } };
})();

test.after.always(async () => {
  const world = await worldP.catch(() => null);
  if (!world) return;
  for (const l of await loopsUnder(world.fx.dir)) await execa('losetup', ['-d', l.name], { reject: false });
  for (const m of (await mountsUnder(world.fx.dir)).reverse()) await execa('umount', ['-l', m], { reject: false });
  await world.fx.cleanup();
});

/** The hostname configure wrote into a version's boot disk (read without mounting). */
async function hostnameOn(disk: string): Promise<string> {
  return (await execa('debugfs', ['-R', 'cat /etc/hostname', disk])).stdout.trim();
}

/** A guest the killed agent started goes on booting: it prints what the fake backend's guests print, if the kill came first. */
async function finishBooting(backend: FakeBackend, spec: DomainSpec): Promise<void> {
  const log = await readFile(backend.consoleLog(spec.name), 'utf8').catch(() => '');
  const last = log.slice(log.lastIndexOf('Linux version fake'));
  if (!last.includes(backend.marker)) await appendFile(backend.consoleLog(spec.name), `Linux version fake (${spec.version})\nhostname: ${await hostnameOn(spec.disk)}\n${backend.marker}\n`);
}

/** Files of an interrupted atomic write, anywhere in the state dir. */
async function tmpFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true }).catch(() => [] as string[]);
  return entries.filter((e) => /\.tmp-\d+-[0-9a-f]+$/.test(e) && !e.startsWith('mnt/'));
}

interface Step {
  /** where the child stops to be killed, or the line of its output the kill follows */
  pauseAt?: PauseStep;
  when?: { test(line: string): boolean };
  /** slows its pack and chunk downloads (ms per 32 KiB) */
  chunkDelayMs?: number;
  /** what the kill leaves for the next run: a loop device, a mount, a staging dir */
  leaves: { loop: boolean; mount: boolean; staging: boolean };
}
interface Case extends Step {
  op: 'install' | 'upgrade';
  step: string;
}

const paused = (step: PauseStep, leaves: Partial<Step['leaves']> = {}): Step => ({ pauseAt: step, leaves: { loop: false, mount: false, staging: false, ...leaves } });
const STEPS: Record<string, Step> = {
  // some bytes of the new version fetched, more to come
  download: {
    when: { test: (l) => { const m = /^PROGRESS (\d+) (\d+) (\d+)$/.exec(l); return !!m && Number(m[3]) > 0 && Number(m[1]) < Number(m[2]); } },
    chunkDelayMs: 150,
    leaves: { loop: false, mount: false, staging: true },
  },
  verify: paused('verify', { staging: true }),
  move: paused('move'),
  mount: paused('mount', { loop: true, mount: true }),
  configure: paused('configure', { loop: true, mount: true }),
  unmount: paused('unmount', { loop: true }),
  switch: paused('switch'),
  boot: paused('boot'),
};
const CASES: Case[] = (['install', 'upgrade'] as const).flatMap((op) => Object.entries(STEPS).map(([step, s]) => ({ op, step, ...s })));

/** At most 3 cases at a time: loop mounts and node processes on a small shared machine. */
const slots = { free: 3, waiting: [] as (() => void)[] };
async function slot<T>(f: () => Promise<T>): Promise<T> {
  if (slots.free === 0) await new Promise<void>((r) => slots.waiting.push(r));
  else slots.free--;
  try {
    return await f();
  } finally {
    const next = slots.waiting.shift();
    if (next) next();
    else slots.free++;
  }
}

async function hostFor(world: World, c: Case): Promise<{ dir: string; configPath: string; stateDir: string; logDir: string; running: DomainSpec[] }> {
  const dir = join(world.fx.dir, `${c.op}-${c.step}`);
  if (c.op === 'install') {
    await mkdir(dir);
    await hostConfig(dir, world.fx);
  } else {
    await execa('cp', ['-a', '--sparse=always', world.template, dir]);
  }
  const running = c.op === 'upgrade' ? [JSON.parse(JSON.stringify(world.running).replaceAll(world.template, dir)) as DomainSpec] : [];
  return { dir, configPath: join(dir, 'agent.yaml'), stateDir: join(dir, 'state'), logDir: join(dir, 'console'), running };
}

/** The state dir after a kill: state file parses, nothing half-written, `current` (if any) an installed version that verifies. */
async function assertConsistent(t: ExecutionContext, agent: Agent, stateDir: string, world: World): Promise<string | null> {
  const text = await readFile(join(stateDir, 'state.json'), 'utf8').catch(() => null);
  if (text !== null) t.notThrows(() => JSON.parse(text), 'state.json parses');
  t.deepEqual((await readdir(stateDir)).filter((e) => e.includes('.corrupt-')), [], 'no state file was found damaged');
  t.deepEqual(await tmpFiles(stateDir), [], 'no half-written file');
  const current = await agent.state.currentVersion('sbc');
  if (current) {
    t.true((await agent.state.installedVersions('sbc')).includes(current), `current ${current} is installed`);
    const check = await verifyVersionDir(agent.state.versionDir('sbc', current), await agent.trustedRoot());
    t.true(check.ok, `${current} verifies against its signed manifest: ${check.problems.join('; ')}`);
    t.is(await sha256File(join(agent.state.versionDir('sbc', current), 'verified.img')), world.images[current]);
  }
  return current;
}

// LOOPSHIP_FAST: the install's kills before the switch are left out (an upgrade passes
// through the same install steps); its switch and boot are its own code (first activation)
const FAST = Boolean(process.env.LOOPSHIP_FAST);
for (const c of CASES) {
  const skip = FAST && c.op === 'install' && !['switch', 'boot'].includes(c.step);
  (skip ? test.skip : test)(`kill -9 at ${c.step} of ${c.op === 'install' ? 'an install' : 'an upgrade'}: cleaned at the next start, ${c.op === 'upgrade' ? 'the previous version still running, ' : ''}then completed`, async (t) => {
    const world = await worldP;
    await slot(async () => {
      const host = await hostFor(world, c);
      const target = c.op === 'install' ? '1.0.0' : '2.0.0';
      const killed = await killAt(
        { configPath: host.configPath, stateDir: host.stateDir, logDir: host.logDir, op: c.op, arg: c.op === 'install' ? 'sbc@1.0.0' : 'sbc', start: true, running: host.running, chunkDelayMs: c.chunkDelayMs },
        c.when ?? new RegExp(`^pause-at ${c.pauseAt}$`),
        { pauseAt: c.pauseAt },
      );

      // right after the kill: the step was reached, and it left what it holds
      t.is((await loopsUnder(host.dir)).length > 0, c.leaves.loop, `a loop device attached: ${JSON.stringify(await loopsUnder(host.dir))}`);
      t.is((await mountsUnder(host.stateDir)).length > 0, c.leaves.mount, 'a mount under the state dir');
      t.is(existsSync(join(host.stateDir, 'appliances', 'sbc', '.staging', target, 'manifest.json')), c.leaves.staging, 'a staging dir');
      t.is(existsSync(join(host.stateDir, 'appliances', 'sbc', target)), !c.leaves.staging, 'the version in place');
      const probe = new Agent({ configPath: host.configPath, stateDir: host.stateDir, backend: new FakeBackend(host.logDir), host: 'dom0-test' });
      const current = await assertConsistent(t, probe, host.stateDir, world);
      const pending = (await probe.state.readState()).appliances.sbc?.pending_upgrade ?? null;
      if (c.op === 'upgrade') {
        // the previous version is the bootable one: current, or the recorded way back
        t.true(current === '1.0.0' || pending?.from === '1.0.0', `current ${current}, pending ${JSON.stringify(pending)}`);
        t.is(await hostnameOn(join(probe.state.versionDir('sbc', '1.0.0'), 'disk.img')), 'site-a');
        t.true((await verifyVersionDir(probe.state.versionDir('sbc', '1.0.0'), await probe.trustedRoot())).ok);
      }

      // the next run, once started (inside its lock): everything of the killed run cleaned up
      const backend = new FakeBackend(host.logDir);
      for (const s of killed.running) {
        backend.running.set(s.name, s);
        await finishBooting(backend, s);
      }
      const logs: string[] = [];
      const agent = new Agent({ configPath: host.configPath, stateDir: host.stateDir, backend, host: 'dom0-test', log: (l) => logs.push(l) });
      await agent.locked(async () => {
        t.deepEqual(await loopsUnder(host.dir), [], 'no loop device left attached');
        t.deepEqual(await mountsUnder(host.stateDir), [], 'no mount left');
        const cur = await assertConsistent(t, agent, host.stateDir, world);
        if (c.op === 'upgrade') {
          t.is(cur, '1.0.0', 'back on the previous version');
          t.is(backend.running.get('sbc')?.version, '1.0.0', 'the previous version is what runs');
        }
      });
      if (c.leaves.mount || c.leaves.loop) t.true(logs.some((l) => /cleaned a stale mount/.test(l)), logs.join('\n'));

      // and it completes the work
      if (c.op === 'install') {
        const r = await agent.install('sbc@1.0.0');
        t.is(r.current, '1.0.0');
      } else {
        const [r] = await agent.upgrade('sbc');
        t.like(r, { from: '1.0.0', to: '2.0.0', status: 'upgraded' });
      }
      const [st] = await agent.status('sbc');
      t.like(st, { current: target, running: true, health: 'healthy', pending_upgrade: null, last_error: null });
      if (c.op === 'upgrade') t.is(st.previous, '1.0.0');
      t.is(backend.running.get('sbc')?.version, target);
      t.is(await hostnameOn(join(agent.state.versionDir('sbc', target), 'disk.img')), 'site-a', 'the new version is configured');
      const checks = await agent.verify('sbc');
      t.true(checks.length > 0 && checks.every((v) => v.ok), JSON.stringify(checks.map((v) => v.problems)));
      t.deepEqual(await loopsUnder(host.dir), []);
      t.deepEqual(await mountsUnder(host.stateDir), []);
      t.false(existsSync(join(agent.state.applianceDir('sbc'), '.staging')), 'no staging left');
      t.false(existsSync(join(agent.state.versionDir('sbc', target), 'done.log')), 'no install journal left in the version');
      await rm(host.dir, { recursive: true, force: true });
    });
  });
}
