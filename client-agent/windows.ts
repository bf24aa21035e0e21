// When an upgrade may switch: the windows agent.yaml sets for a host or an appliance, and
// those of the rollout stage that let this host in (format/windows.ts holds the rules).
import { parseWindows, isOpen, nextOpening, describeTime, localTimeZone, type MaintenanceWindow } from '../format/index.js';

/** The windows that apply to one appliance: its own, else the host's; null when neither sets any (any time). */
export function windowsFor(
  host: { windows?: readonly string[]; timezone?: string },
  appliance: { windows?: readonly string[]; timezone?: string } | undefined,
): { windows: MaintenanceWindow[]; tz: string } | null {
  const texts = appliance?.windows ?? host.windows;
  if (!texts) return null;
  return { windows: parseWindows(texts), tz: appliance?.timezone ?? host.timezone ?? localTimeZone() };
}

/** Whether an upgrade of `name` to `to` may switch at `now`, and if not, what its status says. */
export type SwitchDecision = { switch: true } | { switch: false; opens: string | null; reason: string };

export function decideSwitch(
  host: { windows?: readonly string[]; timezone?: string },
  appliance: { windows?: readonly string[]; timezone?: string } | undefined,
  now: Date,
  move: { name: string; to: string },
  stageWindow?: readonly string[] | null,
): SwitchDecision {
  const w = windowsFor(host, appliance);
  if (!w || isOpen(w.windows, now, w.tz)) return stageWindow ? decideStage(stageWindow, appliance?.timezone ?? host.timezone ?? localTimeZone(), now, move) : { switch: true };
  const opens = nextOpening(w.windows, now, w.tz);
  const when = opens ? `next opens ${describeTime(opens, w.tz)}` : 'no window opens in the next 9 days';
  return {
    switch: false,
    opens: opens?.toISOString() ?? null,
    reason: `${move.to} is downloaded and verified, waiting for a maintenance window (${w.windows.map((x) => x.text).join(', ')}) to switch: ` +
      `${when} (to switch now: loopship-agent upgrade ${move.name} --ignore-window)`,
  };
}

/** A rollout stage that switches only inside its windows (the signed index's; the host's local time). */
function decideStage(texts: readonly string[], tz: string, now: Date, move: { name: string; to: string }): SwitchDecision {
  const windows = parseWindows(texts, 'rollout stage window');
  if (isOpen(windows, now, tz)) return { switch: true };
  const opens = nextOpening(windows, now, tz);
  const when = opens ? `next opens ${describeTime(opens, tz)}` : 'no window opens in the next 9 days';
  return {
    switch: false,
    opens: opens?.toISOString() ?? null,
    reason: `${move.to} is downloaded and verified; its rollout stage switches only inside ${texts.join(', ')} (this host's time): ${when} (to switch now: loopship-agent upgrade ${move.name} --ignore-window)`,
  };
}
