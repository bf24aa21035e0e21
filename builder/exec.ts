// The builder's only door to the outside world's programs. Injected everywhere so
// tests can make debootstrap, apt or mkfs fail on purpose without touching the code
// under test.
import { execa } from 'execa';
import { ExecError } from '../format/errors.js';

export interface ExecOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  input?: string;
  /** which build stage this is, for error messages */
  stage?: string;
  /** called with each output line (stdout+stderr), e.g. for a log file or progress */
  onLine?: (line: string) => void;
}

export interface ExecResult {
  stdout: string;
}

export type Exec = (file: string, args: readonly string[], opts?: ExecOptions) => Promise<ExecResult>;

const TAIL_LINES = 15;

// Children still running, so an interrupted build can stop them before it unmounts.
const running = new Set<{ kill(signal?: NodeJS.Signals): boolean }>();

/** Sends `signal` to every program defaultExec is currently running. */
export function killRunning(signal: NodeJS.Signals = 'SIGTERM'): number {
  for (const c of running) c.kill(signal);
  return running.size;
}

/** Runs a program; on failure throws an ExecError naming the stage, the command and the end of its output. */
export const defaultExec: Exec = async (file, args, opts = {}) => {
  const tail: string[] = [];
  const remember = (line: string) => {
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
    opts.onLine?.(line);
  };
  const child = execa(file, args, {
    env: { LC_ALL: 'C.UTF-8', ...opts.env },
    cwd: opts.cwd,
    input: opts.input,
    stdin: opts.input === undefined ? 'ignore' : undefined,
    reject: false,
    lines: false,
    buffer: { stdout: true, stderr: false, all: false },
    maxBuffer: 64 * 1024 * 1024,
  });
  child.stderr?.setEncoding('utf8');
  let partial = '';
  child.stderr?.on('data', (d: string) => {
    const lines = (partial + d).split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) remember(l);
  });
  running.add(child);
  let result;
  try {
    result = await child;
  } catch (cause) {
    throw execFailure(file, args, opts.stage, `could not run (${(cause as Error).message})`, [], cause);
  } finally {
    running.delete(child);
  }
  if (partial) remember(partial);
  if ((result as { code?: string }).code === 'ENOENT' || (result.failed && result.exitCode === undefined && /ENOENT/.test(String(result.message)))) {
    throw execFailure(file, args, opts.stage, `${file} is not installed (not found in PATH)`, [], result);
  }
  const stdout = typeof result.stdout === 'string' ? result.stdout : '';
  if (result.failed) {
    const outTail = stdout.split('\n').slice(-TAIL_LINES);
    const why = result.signal ? `killed by ${result.signal}` : `exited with status ${result.exitCode}`;
    throw execFailure(file, args, opts.stage, why, [...outTail, ...tail].filter((l) => l.trim()).slice(-TAIL_LINES), result);
  }
  return { stdout };
};

function execFailure(file: string, args: readonly string[], stage: string | undefined, why: string, tail: string[], cause: unknown): ExecError {
  const cmd = [file, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
  const shown = cmd.length > 300 ? cmd.slice(0, 300) + '...' : cmd;
  const detail = tail.length ? `\n  ${tail.join('\n  ')}` : '';
  return new ExecError(`${shown}: ${why}${detail}`, { where: stage ? `stage ${stage}` : undefined, cause });
}
