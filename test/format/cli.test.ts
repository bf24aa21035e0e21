// The packaging CLI as a user runs it: keys init, repo init, verify; exit codes and --json.
import test from 'ava';
import { execa } from 'execa';
import { join } from 'node:path';
import { writeFile, readFile, stat } from 'node:fs/promises';
import { tempDir } from '../helpers/repo.js';

const loopship = (args: string[]) => execa('node', ['dist/bin/loopship.js', ...args], { reject: false });

test('keys init, repo init and verify from the command line; verify fails with exit 3 on tampering', async (t) => {
  const dir = await tempDir();
  const keys = join(dir, 'keys');
  const repo = join(dir, 'repo');
  const init = await loopship(['keys', 'init', '--dir', keys, '--json']);
  t.is(init.exitCode, 0, init.stderr);
  const created = JSON.parse(init.stdout).keys as { role: string; private_file: string; fingerprint: string; public_file: string }[];
  t.deepEqual(created.map((k) => k.role).sort(), ['index', 'publisher', 'root']);
  for (const k of created) t.is((await stat(join(keys, k.private_file))).mode & 0o777, 0o600);

  const r = await loopship(['repo', 'init', '--dir', repo, '--keys', keys]);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, /pin this root fingerprint on clients: [0-9a-f]{40}/);

  const rootPub = join(keys, created.find((k) => k.role === 'root')!.public_file);
  const ok = await loopship(['verify', '--repo', repo, '--root-key', rootPub]);
  t.is(ok.exitCode, 0, ok.stderr);
  t.regex(ok.stdout, /ok {2}index version 1, signed by the index role/);

  const fpr = created.find((k) => k.role === 'root')!.fingerprint;
  const byFpr = await loopship(['verify', '--repo', repo, '--root-fingerprint', fpr, '--json']);
  t.is(byFpr.exitCode, 0, byFpr.stderr);
  t.is(JSON.parse(byFpr.stdout).indexVersion, 1);

  await writeFile(join(repo, 'index.json'), (await readFile(join(repo, 'index.json'), 'utf8')).replace('"images": {}', '"images": { }'));
  const bad = await loopship(['verify', '--repo', repo, '--root-key', rootPub, '--json']);
  t.is(bad.exitCode, 3);
  t.is(JSON.parse(bad.stdout).code, 'UNKNOWN_KEY');
  t.regex(bad.stderr, /index\.json: no valid signature by any index key/);

  // a usage error raised below the CLI parser (a new mirror needs a pin) exits 2 like any other
  const noPin = await loopship(['mirror', '--from', repo, '--to', join(dir, 'mirror')]);
  t.is(noPin.exitCode, 2, noPin.stderr);
  t.regex(noPin.stderr, /is not a mirror yet: give the root key or fingerprint to pin/);

  const usage = await loopship(['verify', '--repo', repo]);
  t.is(usage.exitCode, 2);
  t.regex(usage.stderr, /exactly one of --root-key FILE or --root-fingerprint/);

  const again = await loopship(['keys', 'init', '--dir', keys]);
  t.not(again.exitCode, 0);
  t.regex(again.stderr, /keystore\.json: a key store already exists here/);
});

test('usage errors of the command-line parser exit 2 in every subcommand, naming what is wrong', async (t) => {
  const agent = (args: string[]) => execa('node', ['dist/bin/loopship-agent.js', ...args], { reject: false });
  const cases: [Promise<{ exitCode?: number; stderr: string }>, RegExp][] = [
    [loopship(['repo', 'init']), /required option '--dir <dir>' not specified/],
    [loopship(['serve', '--port', 'abc', '--repo', '/nonexistent']), /option '--port <n>' argument 'abc' is invalid\. expected a TCP port number \(0-65535\)/],
    [loopship(['verify', '--repo', '/nonexistent', '--no-such-option']), /unknown option '--no-such-option'/],
    [loopship(['no-such-command']), /unknown command 'no-such-command'/],
    [agent(['install']), /missing required argument 'spec'/],
    // an index valid for 0 days has expired when it is signed: every host would fail with exit 3
    [loopship(['repo', 'resign', '--dir', '/nonexistent', '--keys', '/nonexistent', '--expires-days', '0']), /option '--expires-days <n>' argument '0' is invalid\. expected whole days from 1 to 3650/],
    [loopship(['repo', 'init', '--dir', '/nonexistent', '--keys', '/nonexistent', '--expires-days', '2.5']), /argument '2\.5' is invalid/],
    [loopship(['keys', 'install-root', '--dir', '/nonexistent', '--repo', '/nonexistent', '--root', '/nonexistent', '--expires-days', '-1']), /argument '-1' is invalid/],
  ];
  for (const [p, message] of cases) {
    const r = await p;
    t.is(r.exitCode, 2, r.stderr);
    t.regex(r.stderr, message);
  }
  // --help and --version still exit 0
  t.is((await loopship(['repo', 'init', '--help'])).exitCode, 0);
  t.is((await agent(['--version'])).exitCode, 0);
});
