// `loopship hosts revoke|allow SITE HOST`: the operator's half of enrolment. revoke removes
// the host's credential from the server's state directory (the running server reads it on
// every request, so it counts at once) and bars the name: a revoked host holds the site
// token too and would enrol itself again. allow lifts the bar for a re-installed host.
import type { Command } from 'commander';
import { LoopshipError, UsageError } from '../format/index.js';
import { DEFAULT_STATE_DIR } from './config.js';
import { FileHostRegistry } from './hosts.js';
import { hostName, siteName } from './reports.js';

/** The site and host named on the command line, checked, and the registry in the server's state dir. */
function registryFor(site: string, host: string, stateDir: string): FileHostRegistry {
  if (!siteName.safeParse(site).success) throw new UsageError(`invalid site name "${site}" (letters, digits, ".", "_", "-")`);
  if (!hostName.safeParse(host).success) throw new UsageError(`invalid host name "${host}" (a DNS host name)`);
  return FileHostRegistry.at(stateDir, { maxHosts: Infinity, maxHostsPerSite: Infinity });
}

export function registerHostsCommands(program: Command): Command {
  const hosts = program.command('hosts').description("the fleet's hosts: their report credentials (revoke, allow) and operator holds (hold, release)");
  // both verbs take SITE HOST and the server's state dir, and print one line or one JSON object
  const verb = (name: string, description: string, act: (r: FileHostRegistry, site: string, host: string) => Promise<{ json: Record<string, unknown>; text: string }>) =>
    hosts
      .command(name)
      .description(description)
      .argument('<site>', 'site name (as in server.yaml sites:)')
      .argument('<host>', 'host name')
      .option('--state-dir <dir>', "the server's state directory", DEFAULT_STATE_DIR)
      .option('--json', 'machine-readable output')
      .action(async (site: string, host: string, o: { stateDir: string; json?: boolean }) => {
        const out = await act(registryFor(site, host, o.stateDir), site, host);
        process.stdout.write(o.json ? JSON.stringify({ site, host, ...out.json }) + '\n' : out.text + '\n');
      });
  verb('revoke', "revoke a host's credential: its token stops working, and the name may not enrol again until allowed", async (registry, site, host) => {
    if (!(await registry.revoke(site, host))) {
      throw new LoopshipError('NOT_FOUND', `host ${host} of site ${site} is not enrolled`, { where: registry.file(site, host) });
    }
    return { json: { revoked: true }, text: `revoked host ${host} of site ${site}: its token is refused, and the name may not enrol again until: loopship hosts allow ${site} ${host}` };
  });
  verb('allow', 'let a revoked host name enrol again with the site token (a re-installed host)', async (registry, site, host) => {
    if (!(await registry.allow(site, host))) {
      throw new LoopshipError('NOT_FOUND', `host ${host} of site ${site} is not revoked`, { where: registry.revokedMark(site, host) });
    }
    return { json: { allowed: true }, text: `host ${host} of site ${site} may enrol again with the site token` };
  });
  return hosts;
}
