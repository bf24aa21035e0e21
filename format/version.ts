// loopship's version: what `--version` prints and the builder writes into manifests. The agent's Debian package stamps its own version into the
// bundle (packaging/bundle-agent.mjs defines LOOPSHIP_PACKAGE_VERSION), so a site sees what
// dpkg installed; from a checkout or dist/, package.json's. npm's npm_package_version is
// only set under `npm run` and named whatever package npm ran, so it is not used.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

declare const LOOPSHIP_PACKAGE_VERSION: string | undefined;

export function packageVersion(): string {
  if (typeof LOOPSHIP_PACKAGE_VERSION === 'string') return LOOPSHIP_PACKAGE_VERSION;
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(fileURLToPath(new URL(rel, import.meta.url)), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'loopship' && pkg.version) return pkg.version;
    } catch {
      /* the other layout (sources under tsx, dist/ compiled) */
    }
  }
  return 'unknown';
}
