// The systemd units the project ships: the agent's (client-agent/) and the server's
// (packaging/server/: loopship serve, the daily re-signing of index.json). systemd's own
// checks: `systemd-analyze verify` finds nothing, and `systemd-analyze security` keeps the
// exposure of each below a ceiling, so a hardening directive dropped by mistake shows.
// Fast; skipped where systemd-analyze is missing (or too old for --offline).
import test from 'ava';
import { execa } from 'execa';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';

const top = fileURLToPath(new URL('../..', import.meta.url));
const analyze = await execa('systemd-analyze', ['--version'], { reject: false });
const version = Number(/systemd (\d+)/.exec(analyze.stdout ?? '')?.[1] ?? 0);
const maybe = version >= 252 ? test : test.skip; // --offline=yes: 252

const UNITS = {
  'loopship-agent.service': { file: 'client-agent/loopship-agent.service', ceiling: 4.5 },
  'loopship-serve.service': { file: 'packaging/server/loopship-serve.service', ceiling: 2.0 },
  'loopship-resign.service': { file: 'packaging/server/loopship-resign.service', ceiling: 1.0 },
  'loopship-resign.timer': { file: 'packaging/server/loopship-resign.timer', ceiling: null },
} as const;

/** The units in a scratch dir with their commands pointed at stubs (verify checks that they are executable). */
async function scratchUnits(): Promise<{ dir: string; env: Record<string, string> }> {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-units-'));
  const stub = join(dir, 'stub');
  await writeFile(stub, '#!/bin/sh\nexit 0\n');
  await chmod(stub, 0o755);
  for (const [name, { file }] of Object.entries(UNITS)) {
    const text = (await readFile(join(top, file), 'utf8')).replaceAll('/usr/local/bin/loopship ', `${stub} `).replaceAll('/usr/bin/loopship-agent ', `${stub} `);
    await writeFile(join(dir, name), text);
  }
  // Documentation=man:loopship-agent(8): verify runs man, which finds the page through MANPATH
  await mkdir(join(dir, 'man/man8'), { recursive: true });
  await copyFile(join(top, 'packaging/loopship-agent.8'), join(dir, 'man/man8/loopship-agent.8'));
  return { dir, env: { MANPATH: join(dir, 'man'), SYSTEMD_LOG_LEVEL: 'notice' } };
}

maybe('systemd-analyze verify finds nothing in the agent and server units', async (t) => {
  const { dir, env } = await scratchUnits();
  try {
    const r = await execa('systemd-analyze', ['verify', ...Object.keys(UNITS).map((n) => join(dir, n))], { reject: false, all: true, env, cwd: dir });
    t.is(r.exitCode, 0, r.all);
    // systemd's complaints about other units of this machine are not ours
    const ours = (r.all ?? '').split('\n').filter((l) => /loopship/.test(l));
    t.deepEqual(ours, [], r.all);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

maybe('systemd-analyze security: each service stays below its exposure ceiling', async (t) => {
  const { dir, env } = await scratchUnits();
  try {
    for (const [name, { ceiling }] of Object.entries(UNITS)) {
      if (ceiling === null) continue;
      const r = await execa('systemd-analyze', ['security', '--offline=yes', '--no-pager', join(dir, name)], { reject: false, all: true, env, cwd: dir });
      const score = Number(/Overall exposure level for \S+: ([0-9.]+)/.exec(r.all ?? '')?.[1]);
      t.true(Number.isFinite(score), `no score for ${name}:\n${r.all}`);
      t.true(score <= ceiling, `${name}: exposure ${score} > ${ceiling}:\n${r.all}`);
      t.log(`${name}: ${score}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the resign timer starts the resign service, which renews index.json as serve uses it', async (t) => {
  const timer = await readFile(join(top, 'packaging/server/loopship-resign.timer'), 'utf8');
  t.regex(timer, /^OnCalendar=daily$/m);
  t.regex(timer, /^Persistent=true$/m);
  const resign = await readFile(join(top, 'packaging/server/loopship-resign.service'), 'utf8');
  const serve = await readFile(join(top, 'packaging/server/loopship-serve.service'), 'utf8');
  const repo = (unit: string) => /--(?:dir|repo) (\S+)/.exec(unit)?.[1];
  t.is(repo(resign), '/srv/loopship/repo');
  t.is(repo(resign), repo(serve), 'the same repository');
  t.regex(resign, /repo resign .*--expires-days 30\b/);
  // what each writes is what it may write
  for (const unit of [resign, serve]) t.regex(unit, /^ReadWritePaths=\/srv\/loopship\/repo$/m);
  const sysusers = await readFile(join(top, 'packaging/server/loopship.sysusers'), 'utf8');
  t.regex(sysusers, /^u loopship /m);
  for (const unit of [resign, serve]) t.regex(unit, /^User=loopship$/m);
});
