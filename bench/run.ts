// `npm run bench`: every benchmark in turn (figures, not pass/fail), each printing its table
// and writing bench/results/<name>.json. Run on a quiet machine: the figures are ratios
// against a peer measured in the same run, but a busy machine still skews them.
//
//   npm run bench [-- only1 only2 ...]     e.g. npm run bench -- verify install
import { execa } from 'execa';
import path from 'node:path';
import { BENCH_DIR } from './report.js';

const ALL = ['verify', 'install', 'server', 'fleet', 'build', 'peers'];
const only = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const chosen = only.length ? ALL.filter((b) => only.includes(b)) : ALL;
let failed = 0;
for (const name of chosen) {
  process.stdout.write(`\n### bench/${name}.ts\n`);
  const r = await execa('node', ['--import', 'tsx', path.join(BENCH_DIR, `${name}.ts`)], { stdio: 'inherit', reject: false });
  if (r.exitCode !== 0) {
    failed++;
    process.stdout.write(`bench/${name}.ts failed (exit ${r.exitCode})\n`);
  }
}
process.exitCode = failed ? 1 : 0;
