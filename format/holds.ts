// Hosts an operator holds on a version (FORMAT.md, "Holds"): part of the signed index like
// rollouts, so a static mirror serves them too. The index names no host: each hold is keyed
// by a digest of the host name, which only the host itself (and whoever knows its name) matches.
import { createHash } from 'node:crypto';
import { LoopshipError } from './errors.js';
import { asOneLine, type IndexImage, type Hold } from './schema.js';

export type { Hold };

export function holdKey(host: string): string {
  return createHash('sha256').update(`loopship/hold\0${host.toLowerCase()}`).digest('hex');
}

export function holdFor(image: IndexImage | undefined, host: string): Hold | undefined {
  return image?.holds?.[holdKey(host)];
}

/** Holds `host` on `version` (a published one). Changes `image`. */
export function holdHost(image: IndexImage, name: string, host: string, hold: Omit<Hold, 'at'>, now: Date): Hold {
  if (!image.versions[hold.version]) throw new LoopshipError('NOT_FOUND', `${name} has no version ${hold.version}`, { where: `${name}/${host}` });
  const h: Hold = { version: hold.version, reason: asOneLine(hold.reason, 500), by: asOneLine(hold.by, 200), at: now.toISOString() };
  (image.holds ??= {})[holdKey(host)] = h;
  return h;
}

/** Lets `host` follow its channel again. */
export function releaseHost(image: IndexImage, name: string, host: string): Hold {
  const key = holdKey(host);
  const h = image.holds?.[key];
  if (!h) throw new LoopshipError('NOT_FOUND', `${name}: host ${host} is not held`, { where: `${name}/${host}` });
  delete image.holds![key];
  if (!Object.keys(image.holds!).length) delete image.holds;
  return h;
}
