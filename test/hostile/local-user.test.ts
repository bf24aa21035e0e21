// What a local user without root on dom0 can do to the agent: run processes, and name them.
// xenconsoled's command line is how the agent knows where guest consoles are logged (the
// ready marker is read there); a process of anyone else named "xenconsoled" is not it.
import test from 'ava';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XlBackend } from '../../client-agent/backends/xl.js';

const XENCONSOLED = '/usr/lib/xen-4.17/bin/xenconsoled';

/** A /proc holding these processes: pid -> [real uid, comm, argv]. */
async function proc(t: import('ava').ExecutionContext, procs: Record<number, [number, string, string[]]>): Promise<{ procDir: string; consoleDir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'hostile-proc-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const procDir = join(dir, 'proc');
  for (const [pid, [uid, comm, argv]] of Object.entries(procs)) {
    await mkdir(join(procDir, pid), { recursive: true });
    await writeFile(join(procDir, pid, 'comm'), `${comm}\n`);
    await writeFile(join(procDir, pid, 'cmdline'), argv.join('\0') + '\0');
    // /proc/PID/status as the kernel writes it: real, effective, saved and fs uid
    await writeFile(join(procDir, pid, 'status'), `Name:\t${comm}\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t${pid}\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\nGid:\t${uid}\t${uid}\t${uid}\t${uid}\n`);
  }
  return { procDir, consoleDir: join(dir, 'console') };
}

const backend = (procDir: string, consoleDir: string) => {
  let clock = 0;
  return new XlBackend({ procDir, consoleDir, toolstackTimeoutMs: 3000, now: () => clock, sleep: async (ms) => void (clock += ms) });
};

test('a user\'s process named xenconsoled, with the arguments the agent wants, is not taken for xenconsoled (none runs: refused)', async (t) => {
  const { procDir, consoleDir } = await proc(t, { 1: [0, 'systemd', ['/sbin/init']], 4242: [1000, 'xenconsoled', ['/tmp/xenconsoled', '--log=guest', '--log-dir=CONSOLE']] });
  // its argv names the agent's console dir exactly
  await writeFile(join(procDir, '4242', 'cmdline'), ['/tmp/xenconsoled', '--log=guest', `--log-dir=${consoleDir}`].join('\0') + '\0');
  await t.throwsAsync(backend(procDir, consoleDir).checkConsoleLogging(), { message: /xenconsoled is not running/ });
});

test('a user\'s process named xenconsoled that says consoles go elsewhere does not stop boots: root\'s xenconsoled decides', async (t) => {
  const { procDir, consoleDir } = await proc(t, { 1: [0, 'systemd', ['/sbin/init']], 300: [1000, 'xenconsoled', ['/tmp/xenconsoled', '--log=none']], 412: [0, 'xenconsoled', [XENCONSOLED, '--log=guest', '--log-dir=CONSOLE']] });
  await writeFile(join(procDir, '412', 'cmdline'), [XENCONSOLED, '--log=guest', `--log-dir=${consoleDir}`].join('\0') + '\0');
  await t.notThrowsAsync(backend(procDir, consoleDir).checkConsoleLogging());
});

// qemu backend: the pid file names the appliance's qemu, checked against its command line; a
// recycled pid is anyone's, and anyone can put the pid file's path in a command line of theirs.
// The agent took such a process for the running appliance (never started it; signalled it to stop).
test.serial('a user\'s process holding the pid a qemu pid file names, with that path in its command line, is not the appliance', async (t) => {
  const { QemuBackend } = await import('../../client-agent/backends/qemu.js');
  const { execa } = await import('execa');
  const dir = await mkdtemp(join(tmpdir(), 'hostile-qemu-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const backend = new QemuBackend({ runDir: join(dir, 'run'), logDir: join(dir, 'log') });
  await mkdir(join(dir, 'run'));
  const pidFile = join(dir, 'run', 'sbc.pid');
  const user = execa('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', '-c', 'sleep 30', pidFile], { reject: false });
  t.teardown(() => void user.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 300)); // setpriv has exec'd sh by now
  await writeFile(pidFile, `${user.pid}\n`);
  t.false(await backend.isRunning('sbc'));
  t.is(await backend.instanceId('sbc'), null);
});

// The lock a killed agent left names its pid; a user's process on that pid (recycled: anyone
// can make processes until one gets it) kept every later agent run refused as "another
// loopship-agent is running", for as long as that user liked.
test.serial('a stale lock naming a pid a user\'s process now has is taken over, not taken for a running agent', async (t) => {
  const { StateDir } = await import('../../client-agent/state.js');
  const { execa } = await import('execa');
  const dir = await mkdtemp(join(tmpdir(), 'hostile-lock-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const state = new StateDir(join(dir, 'state'));
  await state.init();
  const user = execa('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sleep', '30'], { reject: false });
  t.teardown(() => void user.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 300));
  await writeFile(state.lockFile, `${user.pid}\n`, { mode: 0o600 });
  const release = await state.lock();
  t.is((await import('node:fs/promises').then((f) => f.readFile(state.lockFile, 'utf8'))).trim(), String(process.pid));
  await release();
  // a live process of ours still holds it
  const ours = execa('sleep', ['30'], { reject: false });
  t.teardown(() => void ours.kill('SIGKILL'));
  await writeFile(state.lockFile, `${ours.pid}\n`, { mode: 0o600 });
  await t.throwsAsync(state.lock(), { message: new RegExp(`another loopship-agent \\(pid ${ours.pid}\\) is running`) });
});

// systemd applies StateDirectoryMode= to /var/lib/loopship when it starts the unit (some
// versions on every start, to an existing directory too): 0755 there undid the agent's 0700
// until its next start-up check tightened it again.
test('the systemd unit asks for the state directory 0700, as the agent and the package make it', async (t) => {
  const { readFile } = await import('node:fs/promises');
  const unit = await readFile(new URL('../../client-agent/loopship-agent.service', import.meta.url), 'utf8');
  t.regex(unit, /^StateDirectory=loopship$/m);
  t.regex(unit, /^StateDirectoryMode=0700$/m);
});
