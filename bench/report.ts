// Shared output for benchmarks: a readable table on stdout and a JSON file under
// bench/results/ (figures, not pass/fail), with the machine they came from.
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));

export function machine(): Record<string, unknown> {
  return { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, kernel: os.release() };
}

export type Row = Record<string, string | number>;

export function table(rows: Row[]): string {
  if (rows.length === 0) return '';
  const cols = Object.keys(rows[0]);
  const cell = (v: unknown) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : String(v));
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(width[i])).join('  ');
  return [line(cols), line(width.map((w) => '-'.repeat(w))), ...rows.map((r) => line(cols.map((c) => cell(r[c]))))].join('\n');
}

export async function report(name: string, title: string, rows: Row[], figures: Record<string, unknown> = {}): Promise<void> {
  process.stdout.write(`\n## ${title}\n\n${table(rows)}\n`);
  const dir = path.join(BENCH_DIR, 'results');
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, `${name}.json`), JSON.stringify({ name, title, date: new Date().toISOString(), machine: machine(), rows, ...figures }, null, 2) + '\n');
}

export function mibps(bytes: number, ms: number): number {
  return bytes / 2 ** 20 / (ms / 1000);
}
