// Shared CLI runner: turns thrown errors into one readable line (or JSON with --json)
// and a meaningful exit code (see EXIT in format/errors.ts).
import type { Command } from 'commander';
import { CommanderError } from 'commander';
import { LoopshipError, exitCodeFor, EXIT } from '../format/errors.js';

/** Commander copies exitOverride to subcommands only when they are made after it: set it on all. */
function overrideExits(cmd: Command): void {
  cmd.exitOverride();
  cmd.configureOutput({ outputError: (str, write) => write(str) });
  for (const sub of cmd.commands) overrideExits(sub);
}

export async function runCli(program: Command, argv = process.argv): Promise<void> {
  // a usage error of the parser (missing argument, unknown option) exits 2 like any other
  overrideExits(program);
  const json = argv.includes('--json');
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version arrive here too, with exit code 0
      process.exitCode = err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
      return;
    }
    const code = exitCodeFor(err);
    if (json) {
      const body = err instanceof LoopshipError ? err.toJSON() : { error: 'Error', code: 'INTERNAL', message: String((err as Error)?.message ?? err) };
      process.stdout.write(JSON.stringify(body) + '\n');
    }
    const msg = err instanceof LoopshipError ? err.message : (err as Error)?.stack ?? String(err);
    process.stderr.write(`${program.name()}: error: ${msg}\n`);
    if (process.env.LOOPSHIP_DEBUG && err instanceof Error && err.cause) process.stderr.write(`cause: ${String((err.cause as Error)?.stack ?? err.cause)}\n`);
    process.exitCode = code;
  }
}
