import test from 'ava';
import { mkdtemp, writeFile, appendFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitReady } from '../../client-agent/health.js';

async function log(t: import('ava').ExecutionContext) {
  const dir = await mkdtemp(join(tmpdir(), 'agent-health-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'console.log');
}

test('the marker is found as the console grows, also split across two writes', async (t) => {
  const path = await log(t);
  setTimeout(() => void writeFile(path, 'Booting...\nsystemd[1]: Started ssh.\nLOOPSHIP-RE'), 100);
  setTimeout(() => void appendFile(path, 'ADY hostname=a\n'), 300);
  const r = await waitReady({ logPath: path, marker: 'LOOPSHIP-READY', timeoutMs: 10_000 });
  t.true(r.ready);
  t.is(r.reason, 'marker');
  t.true(r.ms >= 250 && r.ms < 5000, `${r.ms} ms`);
});

test('a marker from an earlier boot (before the offset) does not count; timeout gives the last lines', async (t) => {
  const path = await log(t);
  await writeFile(path, 'old boot\nLOOPSHIP-READY\n');
  const offset = 'old boot\nLOOPSHIP-READY\n'.length;
  setTimeout(() => void appendFile(path, 'new boot\nKernel panic - not syncing\n'), 50);
  const r = await waitReady({ logPath: path, marker: 'LOOPSHIP-READY', fromOffset: offset, timeoutMs: 600 });
  t.false(r.ready);
  t.is(r.reason, 'timeout');
  t.regex(r.tail, /Kernel panic/);
  t.notRegex(r.tail, /old boot/);
});

test('a guest that stops ends the wait early', async (t) => {
  const path = await log(t);
  await writeFile(path, 'starting\n');
  let alive = true;
  setTimeout(() => { alive = false; }, 100);
  const r = await waitReady({ logPath: path, marker: 'LOOPSHIP-READY', timeoutMs: 30_000, isAlive: async () => alive });
  t.false(r.ready);
  t.is(r.reason, 'stopped');
  t.true(r.ms < 5000);
});

test('isAlive is asked no more often than aliveEveryMs (an xl exec is costly in dom0)', async (t) => {
  const path = await log(t);
  await writeFile(path, 'booting\n');
  let asks = 0;
  const r = await waitReady({ logPath: path, marker: 'LOOPSHIP-READY', timeoutMs: 1500, aliveEveryMs: 600, isAlive: async () => { asks++; return true; } });
  t.is(r.reason, 'timeout');
  // at once, then at most every 0.6 s (not at each 250 ms re-check)
  t.true(asks >= 1 && asks <= 2, `${asks} asks in 1.5 s`);
  // and the interval is the caller's, not the default 1 s (which would ask again at ~1 s):
  // longer than the wait, only the first ask
  let late = 0;
  await waitReady({ logPath: path, marker: 'LOOPSHIP-READY', timeoutMs: 1500, aliveEveryMs: 5000, isAlive: async () => { late++; return true; } });
  t.is(late, 1, `${late} asks with a 5 s interval in a 1.5 s wait`);
});

test('a log that does not exist yet is waited for', async (t) => {
  const path = await log(t);
  setTimeout(() => void writeFile(path, 'LOOPSHIP-READY\n'), 200);
  t.true((await waitReady({ logPath: path, marker: 'LOOPSHIP-READY', timeoutMs: 10_000 })).ready);
});

test('the ready line is complete when returned (what follows the marker is reported)', async (t) => {
  const path = await log(t);
  setTimeout(() => void writeFile(path, 'login: LOOPSHIP-READY'), 50);
  setTimeout(() => void appendFile(path, ' hostname=a version=2\r\nmore\n'), 400);
  const r = await waitReady({ logPath: path, marker: 'LOOPSHIP-READY', timeoutMs: 10_000 });
  t.true(r.ready);
  t.is(r.line, 'login: LOOPSHIP-READY hostname=a version=2');
});
