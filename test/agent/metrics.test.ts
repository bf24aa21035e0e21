// The agent's textfile metrics (--metrics-file): what node-exporter's collector reads, checked
// by Prometheus' own promtool, and replaced atomically (never a half-written file).
import test from 'ava';
import { execa } from 'execa';
import { readFile, stat, readdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { renderAgentMetrics, writeAgentMetrics } from '../../client-agent/metrics.js';
import type { ApplianceStatus } from '../../client-agent/agent.js';

const base: ApplianceStatus = {
  name: 'sbc', current: '1.0.0', previous: null, installed: ['1.0.0'], running: true, health: 'healthy', verified: true,
  disk_bytes: 5 << 20, data_disk_bytes: 0, pending_upgrade: null, failed_versions: [], last_error: null, last_install: null,
  rollout: null, waiting: null, held: null,
};

test('the textfile exposition: versions, health, holds, waits, rollout place; promtool finds nothing', async (t) => {
  const text = await renderAgentMetrics([
    base,
    { ...base, name: 'kiosk', current: '2.0', running: false, health: 'unhealthy', failed_versions: ['2.1'], waiting: { to: '2.2', opens: null, reason: 'w' },
      rollout: { id: 'ab'.repeat(8), from: '2.0', to: '2.2', taking: false, reason: 'outside' }, held: { to: '1.9', reason: 'older' } },
  ], { ok: false, at: new Date('2026-12-06T10:00:00Z') });
  const r = await execa('promtool', ['check', 'metrics'], { input: text, reject: false });
  t.is(r.exitCode, 0, `${r.stdout}${r.stderr}`);
  t.is(`${r.stdout}${r.stderr}`.trim(), '');
  const lines = new Set(text.split('\n'));
  for (const l of [
    'loopship_agent_last_round_success 0',
    'loopship_agent_last_round_timestamp_seconds 1796551200',
    'loopship_agent_appliance_version_info{appliance="sbc",version="1.0.0"} 1',
    'loopship_agent_appliance_health{appliance="kiosk",health="unhealthy"} 1',
    'loopship_agent_appliance_health{appliance="kiosk",health="healthy"} 0',
    'loopship_agent_appliance_running{appliance="kiosk"} 0',
    'loopship_agent_appliance_failed_versions{appliance="kiosk"} 1',
    'loopship_agent_appliance_waiting_window{appliance="kiosk"} 1',
    'loopship_agent_appliance_outside_rollout{appliance="kiosk"} 1',
    'loopship_agent_appliance_held{appliance="kiosk"} 1',
    'loopship_agent_appliance_held{appliance="sbc"} 0',
    'loopship_agent_appliance_disk_bytes{appliance="sbc"} 5242880',
  ]) t.true(lines.has(l), l);
  t.regex(text, /^loopship_agent_info\{version="[^"]+"\} 1$/m);
});

test('the file is replaced whole, 0644, no temp file left; a planted link in its place is refused', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'loopship-metrics-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'loopship.prom');
  await writeAgentMetrics(file, [base], { ok: true, at: new Date() });
  await writeAgentMetrics(file, [{ ...base, current: '1.1.0' }], { ok: true, at: new Date() });
  t.regex(await readFile(file, 'utf8'), /version="1\.1\.0"/);
  t.is((await stat(file)).mode & 0o777, 0o644);
  t.deepEqual(await readdir(dir), ['loopship.prom']);
  const target = join(dir, 'target');
  await writeFile(target, 'keep');
  const { symlink, unlink } = await import('node:fs/promises');
  await unlink(file);
  await symlink(target, file);
  await t.throwsAsync(writeAgentMetrics(file, [base], { ok: true, at: new Date() }));
  t.is(await readFile(target, 'utf8'), 'keep');
});
