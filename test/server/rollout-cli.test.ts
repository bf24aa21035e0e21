// `loopship rollout` on a repository directory, as an operator runs it: start, status (text
// and --json), pause, resume, finish; usage errors exit 2 before any key is asked for.
import test from 'ava';
import { execa } from 'execa';
import { makeRepo, makePackage, publish } from '../helpers/repo.js';

const loopship = (args: string[]) => execa('node', ['dist/bin/loopship.js', ...args], { reject: false });

test('rollout start/status/pause/resume/finish on a repository directory', async (t) => {
  const fx = await makeRepo();
  t.teardown(fx.cleanup);
  await publish(fx, (await makePackage(fx, { name: 'tiny', version: '1.0.0' })).tarPath, 'stable');
  await publish(fx, (await makePackage(fx, { name: 'tiny', version: '1.1.0', seed: 'b' })).tarPath);
  const where = ['--repo', fx.repoDir, '--keys', fx.keysDir];

  const bad = await loopship(['rollout', 'start', 'tiny', '1.1.0', '--stages', '10,,100', ...where]);
  t.is(bad.exitCode, 2, bad.stderr);
  t.regex(bad.stderr, /--stages: expected stages such as 1,10,50,100/);
  const older = await loopship(['rollout', 'start', 'tiny', '1.0.0', '--stages', '100', ...where]);
  t.is(older.exitCode, 2, older.stderr);
  t.regex(older.stderr, /1\.0\.0 is not newer than 1\.0\.0/);

  const start = await loopship(['rollout', 'start', 'tiny', '1.1.0', '--stages', '10,100@manual', '--sites', 'berlin', '--halt', '3/50,2%', ...where]);
  t.is(start.exitCode, 0, start.stderr);
  t.regex(start.stdout, /^rollout start: done \(index version \d+\)\ntiny\/stable: 1\.0\.0 -> 1\.1\.0, running\n {2}stage 1 of 2: open to 10% of hosts\n {2}next: stage 2 of 2 \(100%\) opens when an operator opens it/);
  t.regex(start.stdout, /sites: berlin\n {2}halts after 3 failure\(s\) among the first 50 hosts, then above 2%/);
  const again = await loopship(['rollout', 'start', 'tiny', '1.1.0', '--stages', '100', ...where]);
  t.is(again.exitCode, 1);
  t.regex(again.stderr, /already has a rollout/);

  const status = await loopship(['rollout', 'status', '--repo', fx.repoDir, '--json']);
  t.is(status.exitCode, 0, status.stderr);
  const [v] = JSON.parse(status.stdout).rollouts;
  t.like(v, { name: 'tiny', channel: 'stable', from: '1.0.0', to: '1.1.0', state: 'running', stage: 1, percent: 10, complete: false });

  t.is((await loopship(['rollout', 'pause', 'tiny', '--reason', 'looking at tickets', ...where])).exitCode, 0);
  const paused = await loopship(['rollout', 'status', 'tiny', '--repo', fx.repoDir]);
  t.regex(paused.stdout, /paused \(looking at tickets; by local /);
  t.is((await loopship(['rollout', 'resume', 'tiny', ...where])).exitCode, 0, 'un-paused');
  const early = await loopship(['rollout', 'finish', 'tiny', ...where]);
  t.is(early.exitCode, 1);
  t.regex(early.stderr, /not complete \(running, open to 10%\)/);
  const open = await loopship(['rollout', 'resume', 'tiny', ...where, '--json']);
  t.is(JSON.parse(open.stdout).rollout.percent, 100, 'the manual stage opened');
  const fin = await loopship(['rollout', 'finish', 'tiny', ...where]);
  t.is(fin.exitCode, 0, fin.stderr);
  t.regex(fin.stdout, /^finished: channel stable of tiny names 1\.1\.0/);
  t.is((await loopship(['rollout', 'status', '--repo', fx.repoDir])).stdout, 'no rollout under way');

  // an operator's hold, on a repository directory: the version must be given (no reports here)
  const noVersion = await loopship(['hosts', 'hold', 'tiny', 'xen-07', ...where]);
  t.is(noVersion.exitCode, 2, noVersion.stderr);
  t.regex(noVersion.stderr, /has not reported a version of tiny: give the version/);
  const hold = await loopship(['hosts', 'hold', 'tiny', 'xen-07', '--on', '1.0.0', '--reason', 'visit', ...where]);
  t.is(hold.exitCode, 0, hold.stderr);
  t.regex(hold.stdout, /^xen-07 is held on tiny 1\.0\.0 \(visit\); index version \d+$/);
  const release = await loopship(['hosts', 'release', 'tiny', 'xen-07', ...where, '--json']);
  t.is(JSON.parse(release.stdout).hold, null);
});
