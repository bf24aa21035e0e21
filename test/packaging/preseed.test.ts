// Fast checks of the examples (the chroot run of the late_command is in deb.test.ts).
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import YAML from 'yaml';
import { lateCommand } from './preseed.js';
import { cacheKey, hostMirror } from './debroot.js';
import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const top = fileURLToPath(new URL('../..', import.meta.url));

test('lateCommand joins continuation lines like debconf', (t) => {
  const cfg = '# c\nd-i preseed/late_command string \\\n  a=1; \\\n  echo "$a"\nd-i other string x\n';
  t.is(lateCommand(cfg), 'a=1;   echo "$a"');
  t.throws(() => lateCommand('d-i foo string x'), { message: /no "d-i preseed\/late_command string" line/ });
  t.throws(() => lateCommand('d-i preseed/late_command string a \\'), { message: /continuation/ });
});

test('the example late_command is valid sh and uses only the d-i interfaces the chroot test stands in for', async (t) => {
  const cmd = lateCommand(await readFile(join(top, 'examples/preseed/late_command.cfg'), 'utf8'));
  const r = await execa('sh', ['-n', '-c', cmd], { reject: false, all: true });
  t.is(r.exitCode, 0, r.all);
  t.regex(cmd, /in-target loopship-agent init /);
  t.regex(cmd, /in-target systemctl enable loopship-agent\.service/);
  t.notRegex(cmd, /debian\.org/); // no distribution mirror written into the example
});

test('the cloud-init example is #cloud-config YAML that installs, pins and enables', async (t) => {
  const text = await readFile(join(top, 'examples/cloud-init/user-data.yaml'), 'utf8');
  t.true(text.startsWith('#cloud-config\n'));
  const doc = YAML.parse(text);
  const agentYaml = doc.write_files.find((f: { path: string }) => f.path === '/etc/loopship/agent.yaml');
  t.truthy(agentYaml);
  t.true(Array.isArray(YAML.parse(agentYaml.content).appliances));
  const runcmd = JSON.stringify(doc.runcmd);
  // the package ships no agent.yaml, so the one written above is kept without --force-confold
  t.regex(runcmd, /apt-get -y install \/tmp\/loopship-agent\.deb/);
  t.regex(runcmd, /"loopship-agent","init"/);
  t.regex(runcmd, /"--root-fingerprint"/);
  t.regex(runcmd, /"systemctl","enable","--now","loopship-agent.service"/);
});

test('hostMirror reads deb822 and one-line apt sources; cacheKey depends on the package set only', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-apt-'));
  await mkdir(join(dir, 'sources.list.d'));
  await writeFile(join(dir, 'sources.list.d', 'x.sources'), 'Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://security.invalid/\nSuites: bookworm-security\n');
  t.is(await hostMirror('bookworm', dir), 'http://mirror.invalid/debian');
  await writeFile(join(dir, 'sources.list'), '# x\ndeb [arch=amd64] http://other.invalid/debian trixie main\n');
  t.is(await hostMirror('trixie', dir), 'http://other.invalid/debian');
  await t.throwsAsync(hostMirror('sid', dir), { message: /no apt source for suite sid/ });
  const a = cacheKey({ suite: 'bookworm', variant: 'minbase', include: ['a', 'b'] });
  t.is(a, cacheKey({ suite: 'bookworm', variant: 'minbase', include: ['b', 'a'] }));
  t.not(a, cacheKey({ suite: 'bookworm', variant: 'minbase', include: ['a'] }));
});

test('the man page covers every agent command', async (t) => {
  const man = await readFile(join(top, 'packaging/loopship-agent.8'), 'utf8');
  const help = await execa('node', [join(top, 'dist/bin/loopship-agent.js'), '--help']);
  const commands = [...help.stdout.matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1]).filter((c) => c !== 'help');
  t.true(commands.length >= 10, help.stdout);
  for (const c of commands) t.regex(man, new RegExp(`^\\.SS ${c.replace(/-/g, '\\\\-')}\\b`, 'm'), `${c} missing from the man page (node packaging/gen-man.mjs)`);
});
