// Holding a host back: an operator's request becomes a hold in the signed index
// (format/holds.ts), which the host finds under a digest of its own name.
import * as z from 'zod';
import { imageName, imageVersion, oneLine, holdHost, releaseHost, UsageError, type Hold } from '../format/index.js';
import { hostName, type StoredReport } from './reports.js';
import type { RolloutWriter } from './rollouts.js';

export const HoldRequestSchema = z.strictObject({
  /** default: the version the host last reported for this image */
  version: imageVersion.optional(),
  reason: oneLine(500).optional(),
});
export type HoldRequest = z.infer<typeof HoldRequestSchema>;

export interface HoldResult {
  index_version: number;
  image: string;
  host: string;
  hold: Hold | null;
}

/** The version `host` last reported running for `name`, if any. */
function reportedVersion(reports: readonly StoredReport[], name: string, host: string): string | undefined {
  const r = reports.find((s) => s.report.host.toLowerCase() === host.toLowerCase());
  return r?.report.appliances.find((a) => a.name === name)?.version ?? undefined;
}

export async function applyHold(w: RolloutWriter, name: string, host: string, req: HoldRequest | null, by: string, reports: readonly StoredReport[] = []): Promise<HoldResult> {
  imageName.parse(name);
  if (!hostName.safeParse(host).success) throw new UsageError(`invalid host name ${JSON.stringify(host)} (a DNS host name)`);
  if (req === null) {
    const { indexVersion } = await w.changeImage(name, (image) => releaseHost(image, name, host));
    return { index_version: indexVersion, image: name, host, hold: null };
  }
  const version = req.version ?? reportedVersion(reports, name, host);
  if (!version) throw new UsageError(`host ${host} has not reported a version of ${name}: give the version to hold it on`);
  const { indexVersion, result } = await w.changeImage(name, (image, now) => holdHost(image, name, host, { version, reason: req.reason ?? 'held by an operator', by }, now));
  return { index_version: indexVersion, image: name, host, hold: result };
}
