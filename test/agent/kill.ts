// kill -9 of the agent at a chosen point: the agent runs in a child process
// (fixtures/agent-child.ts) and is killed when a line of its output matches.
import { execa } from 'execa';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DomainSpec } from '../../client-agent/backends/types.js';
import type { ChildArgs } from './fixtures/agent-child.js';

const here = dirname(fileURLToPath(import.meta.url));

export interface Killed {
  /** stdout and stderr lines up to the kill */
  lines: string[];
  /** guests the child's backend had running when it died (they outlive it, as xl domains do) */
  running: DomainSpec[];
}

/**
 * Runs the child until a line of stdout or stderr matches `when`, then kill -9.
 * `pauseAt` sets LOOPSHIP_TEST_PAUSE_AT: the child stops there and says so on stderr.
 */
export async function killAt(args: ChildArgs, when: RegExp | { test(line: string): boolean }, opts: { pauseAt?: string } = {}): Promise<Killed> {
  const env = opts.pauseAt ? { LOOPSHIP_TEST_PAUSE_AT: opts.pauseAt } : {};
  const child = execa('node', ['--import', 'tsx', join(here, 'fixtures', 'agent-child.ts'), JSON.stringify(args)], { reject: false, buffer: false, env, timeout: 180_000 });
  const lines: string[] = [];
  const running = new Map<string, DomainSpec>();
  for (const s of args.running ?? []) running.set(s.name, s);
  await new Promise<void>((res, rej) => {
    const onData = () => {
      let buf = '';
      return (d: Buffer) => {
        buf += d.toString();
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          lines.push(line);
          const start = /^BACKEND start (.*)$/.exec(line);
          if (start) {
            const spec = JSON.parse(start[1]) as DomainSpec;
            running.set(spec.name, spec);
          }
          const stop = /^BACKEND stop (.*)$/.exec(line);
          if (stop) running.delete(stop[1]);
          if (when.test(line)) {
            child.kill('SIGKILL');
            res();
          }
        }
      };
    };
    child.stdout!.on('data', onData());
    child.stderr!.on('data', onData());
    // (also when it never gets there: the timeout ends it)
    child.on('exit', () => rej(new Error(`child exited before ${when}: ${lines.join('\n')}`)));
  });
  const r = await child;
  if (r.signal !== 'SIGKILL') throw new Error(`child was not killed: ${r.signal}`);
  return { lines, running: [...running.values()] };
}
