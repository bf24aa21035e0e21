// The one door to the outside world's programs (losetup, mount, xl, qemu...). Injected
// everywhere so tests can record calls or fake faults without mocking what is under test.
import { execa } from 'execa';
import { ExecError } from '../format/index.js';

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** kill the program after this long */
  timeoutMs?: number;
  env?: Record<string, string | undefined>;
  input?: string;
}

export type Exec = (file: string, args: readonly string[], opts?: ExecOptions) => Promise<ExecResult>;

/** Runs a program and returns its exit code and output; never throws for a non-zero exit. */
export const defaultExec: Exec = async (file, args, opts = {}) => {
  try {
    const r = await execa(file, [...args], {
      reject: false,
      timeout: opts.timeoutMs,
      env: opts.env,
      input: opts.input,
      stdin: opts.input === undefined ? 'ignore' : undefined,
      stripFinalNewline: true,
    });
    if (r.failed && r.exitCode === undefined) {
      // not started at all (ENOENT...) or killed by the timeout
      throw new ExecError(`${file}: ${r.shortMessage}`, { where: file, cause: r.cause });
    }
    return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
  } catch (err) {
    if (err instanceof ExecError) throw err;
    throw new ExecError(`${file}: ${(err as Error).message}`, { where: file, cause: err });
  }
};

/** Runs a program that must succeed; its stderr becomes the error message. */
export async function run(exec: Exec, file: string, args: readonly string[], opts?: ExecOptions): Promise<string> {
  const r = await exec(file, args, opts);
  if (r.exitCode !== 0) {
    const detail = (r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ');
    throw new ExecError(`${file} ${args.join(' ')} failed with exit code ${r.exitCode}${detail ? `: ${detail}` : ''}`, { where: file });
  }
  return r.stdout;
}
