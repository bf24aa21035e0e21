#!/usr/bin/env node
// The packaging side's command line: keys, repo, build, publish, serve, promote, export, mirror, verify.
// Each component registers its own subcommands; this file only assembles them.
import { Command } from 'commander';
import { runCli } from './run.js';
import { packageVersion } from '../format/version.js';
import { registerKeysCommands } from '../keys/cli.js';
import { registerFormatCommands } from '../format/cli.js';

const program = new Command('loopship')
  .description('Build, sign, publish and verify loopback appliance images')
  .version(packageVersion());

registerKeysCommands(program);
registerFormatCommands(program);
// Components register lazily so that one missing optional part does not break the rest.
for (const mod of ['../builder/cli.js', '../repo-server/cli.js']) {
  try {
    const m = await import(mod);
    m.register(program);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err;
  }
}

await runCli(program);
