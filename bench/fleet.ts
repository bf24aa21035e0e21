// The fleet under a rollout (figures, not pass/fail): bench/agents.ts --rollout with 200 and
// with 1000 simulated agents, each run against its own fresh server, printed side by side.
//
//   node --import tsx bench/fleet.ts [--seconds 60] [--sizes 200,1000]
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { report, BENCH_DIR } from './report.js';

const { values: args } = parseArgs({ options: { seconds: { type: 'string' }, sizes: { type: 'string' } } });
const seconds = args.seconds ?? '60';
const sizes = (args.sizes ?? '200,1000').split(',').map(Number);
const rows = [];
for (const n of sizes) {
  const name = `fleet-${n}`;
  const r = await execa('node', ['--import', 'tsx', path.join(BENCH_DIR, 'agents.ts'), '--agents', String(n), '--seconds', seconds, '--rollout', '--name', name], { stdio: 'inherit', reject: false });
  if (r.exitCode !== 0) throw new Error(`bench/agents.ts --agents ${n} failed (exit ${r.exitCode})`);
  const f = JSON.parse(await readFile(path.join(BENCH_DIR, 'results', `${name}.json`), 'utf8'));
  const all = f.rows.find((x: { kind: string }) => x.kind === 'all');
  const rep = f.rows.find((x: { kind: string }) => x.kind === 'report');
  rows.push({
    agents: n, requests: f.requests, 'req/s': Math.round(f.requests_per_s), errors: f.errors, 'p50 ms': all['p50 ms'], 'p99 ms': all['p99 ms'], 'report p99 ms': rep?.['p99 ms'] ?? 0,
    'server RSS peak MiB': Math.round(f.server_peak_rss_vmhwm_mib), 'server CPU s': f.server_cpu_s, 'took new': f.rollout?.hosts_that_took_it ?? 0, 'stage at end': f.rollout?.stage_at_end ?? 0,
  });
}
await report('fleet', `simulated agents polling and reporting for ${seconds} s while a rollout runs (10%, 50%, 100%), one loopship serve`, rows, { sizes });
