#!/usr/bin/env node
// The dom0 agent's command line; the commands live in client-agent/.
import { Command } from 'commander';
import { runCli } from './run.js';
import { packageVersion } from '../format/version.js';
import { register } from '../client-agent/cli.js';

const program = new Command('loopship-agent')
  .description('Fetch, verify, install, configure, boot and upgrade loopship appliances on this host')
  .version(packageVersion());
register(program);
await runCli(program);
