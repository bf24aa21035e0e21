// A disk that fills up during an upgrade: the state dir is a small tmpfs, sbc 1.0.0 is
// installed and running, and something else fills the disk once the download of 2.0.0 has
// begun, or just as its image is mounted to be configured. (A disk already full before the
// install is in faults.test.ts.) Each time: the upgrade fails with an error that says the
// disk is full and where; the running 1.0.0 is neither stopped nor changed, still current
// and still verifies; no loop device or mount is left; the state file is intact; and once
// the space is back, the next run completes the upgrade with a clean, configured image.
import test from 'ava';
import { execa } from 'execa';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Agent } from '../../client-agent/agent.js';
import { defaultExec, type Exec } from '../../client-agent/exec.js';
import { listMounts } from '../../client-agent/mount.js';
import { createFetcher, type Fetcher } from '../../format/index.js';
import { makeRepo, type Fixture } from '../helpers/repo.js';
import { FakeBackend } from './fakes.js';
import { publishExt4 } from './ext4.js';
import { sha256File, sha256Of, loopsUnder, mountsUnder } from './helpers.js';

const worldP = (async () => {
  const fx = await makeRepo();
  await publishExt4(fx, 'sbc', '1.0.0', { channel: 'stable' });
  const v2 = await publishExt4(fx, 'sbc', '2.0.0', { channel: 'stable', motd: 'two', bulkFiles: 80 });
  return { fx, v2Sha: sha256Of(await readFile(v2.image)) };
})();
test.after.always(async () => (await worldP.catch(() => null))?.fx.cleanup());

/** Fills the file system holding `dir` to the last byte. */
async function fill(dir: string): Promise<void> {
  await execa('dd', ['if=/dev/zero', `of=${join(dir, 'filler-1m')}`, 'bs=1M'], { reject: false });
  await execa('dd', ['if=/dev/zero', `of=${join(dir, 'filler-4k')}`, 'bs=4k'], { reject: false });
}

interface Case {
  when: 'download' | 'configure';
  /** the agent's fetcher and exec, with the moment the disk fills up */
  deps(fillNow: () => Promise<void>): { createFetcher?: (s: string) => Fetcher; exec?: Exec };
  message: RegExp;
}

const CASES: Case[] = [
  {
    when: 'download',
    // once the space check has passed and the first bytes of 2.0.0 are asked for
    deps: (fillNow) => ({
      createFetcher: (s) => {
        const f = createFetcher(s);
        let filled = false;
        const once = async (path: string) => {
          if (!filled && /^(packs|chunks)\//.test(path)) {
            filled = true;
            await fillNow();
          }
        };
        return { source: f.source, get: async (p, max) => (await once(p), f.get(p, max)), stream: async (p, max, o) => (await once(p), f.stream(p, max, o)) };
      },
    }),
    message: /install failed: ENOSPC: no space left on device, write \(disk full\)/,
  },
  {
    when: 'configure',
    // as the new version's boot disk is mounted: its holes need blocks of the full disk
    deps: (fillNow) => ({
      exec: async (cmd, args, opts) => {
        if (cmd === 'mount' && args.includes('ext4')) await fillNow();
        return defaultExec(cmd, args, opts);
      },
    }),
    // not "image full": the image has room, the disk under its file has none
    message: /cannot write \/etc\/hostname into the image: ENOSPC \(the image has [\d.]+ MiB free: the disk holding the image file is full\)/,
  },
];

for (const c of CASES) {
  test.serial(`disk full during the ${c.when} of an upgrade: clear error, 1.0.0 untouched and running, recovers when space returns`, async (t) => {
    const { fx, v2Sha } = await worldP;
    const dir = await mkdtemp(join(fx.dir, `full-${c.when}-`));
    await writeFile(join(dir, 'root.asc'), fx.rootKeyArmored);
    const configPath = join(dir, 'agent.yaml');
    await writeFile(configPath, `repos: [${fx.repoDir}]\ntrust: { root_key_file: ${join(dir, 'root.asc')} }\nhealth_timeout_s: 30\nappliances:\n  - name: sbc\n    settings: { hostname: site-a }\n`);
    const disk = join(dir, 'disk');
    await mkdir(disk);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'loopship-test', disk]);
    t.teardown(async () => {
      for (const l of await loopsUnder(disk)) await execa('losetup', ['-d', l.name], { reject: false });
      for (const m of (await listMounts()).filter((m) => m.startsWith(resolve(disk))).reverse()) await execa('umount', ['-l', m], { reject: false });
    });
    const stateDir = join(disk, 'state');
    const backend = new FakeBackend(join(dir, 'console'));
    const first = new Agent({ configPath, stateDir, backend, host: 'dom0-test' });
    t.true((await first.install('sbc@1.0.0')).health?.ready);
    const v1 = first.state.versionDir('sbc', '1.0.0');
    const before = { verified: await sha256File(join(v1, 'verified.img')), boot: await sha256File(join(v1, 'disk.img')), state: await readFile(join(stateDir, 'state.json'), 'utf8') };

    let filled = false;
    const logs: string[] = [];
    const agent = new Agent({ configPath, stateDir, backend, host: 'dom0-test', log: (l) => logs.push(l), ...c.deps(async () => { filled = true; await fill(disk); }) });
    const err = await t.throwsAsync(agent.upgrade('sbc'));
    t.true(filled, 'the disk filled up during the step');
    t.regex(err!.message, c.message);
    t.regex(`${err!.message} ${(err as { where?: string }).where ?? ''}`, new RegExp(stateDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'the error names where');

    // nothing lost: 1.0.0 is current, running, unchanged; no loop or mount left; state file intact
    t.is(await agent.state.currentVersion('sbc'), '1.0.0');
    t.deepEqual(backend.starts.map((s) => s.version), ['1.0.0'], 'the running guest was not restarted');
    t.is(backend.running.get('sbc')?.version, '1.0.0');
    t.is(await sha256File(join(v1, 'verified.img')), before.verified);
    t.is(await sha256File(join(v1, 'disk.img')), before.boot);
    t.deepEqual(await loopsUnder(disk), []);
    t.deepEqual(await mountsUnder(stateDir), []);
    const st = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8'));
    t.is(st.appliances.sbc.pending_upgrade, null);
    t.is(st.appliances.sbc.health, 'healthy');
    t.true((await agent.verify('sbc')).every((v) => v.ok));

    // the space comes back: the next run completes, the new image verified and consistent
    await rm(join(disk, 'filler-1m'), { force: true });
    await rm(join(disk, 'filler-4k'), { force: true });
    const again = new Agent({ configPath, stateDir, backend, host: 'dom0-test' });
    const [r] = await again.upgrade('sbc');
    t.like(r, { from: '1.0.0', to: '2.0.0', status: 'upgraded' });
    const v2 = again.state.versionDir('sbc', '2.0.0');
    t.is(await sha256File(join(v2, 'verified.img')), v2Sha);
    t.is((await execa('debugfs', ['-R', 'cat /etc/hostname', join(v2, 'disk.img')])).stdout.trim(), 'site-a');
    const fsck = await execa('e2fsck', ['-fn', join(v2, 'disk.img')], { reject: false });
    t.is(fsck.exitCode, 0, `the boot disk is a clean file system:\n${fsck.stdout}\n${fsck.stderr}`);
    t.like((await again.status('sbc'))[0], { current: '2.0.0', previous: '1.0.0', health: 'healthy', running: true });
    t.true((await again.verify('sbc')).every((v) => v.ok));
  });
}
