// Which moves between versions a host makes by itself. A channel is the repository's word,
// signed by an online key (the server's index key, moved by a publisher token): enough to
// move a host forward, never back. Going to an older version needs the host's own consent:
// its agent.yaml names that exact version, or allows downgrades for the appliance.
import { compareVersions, type Hold } from '../format/index.js';
import type { ApplianceConfig } from './config.js';

export type MoveDecision = { move: true } | { move: false; reason: string };

export interface Move {
  name: string;
  from: string | null;
  to: string;
  /** where `to` came from: a channel of the index (or its newest version), or a version agent.yaml (or the command line) names */
  via: { channel: string; rollout?: RolloutPlace } | { newest: true } | { version: string } | { hold: Hold };
}

/** A host's place in the rollout on its channel, as the agent keeps it in state.json. */
export interface RolloutPlace {
  id: string;
  from: string;
  to: string;
  taking: boolean;
  reason: string | null;
}

export function decideMove(m: Move, cfg: ApplianceConfig | undefined): MoveDecision {
  if (!m.from || compareVersions(m.to, m.from) >= 0) return { move: true };
  if ('version' in m.via) return { move: true };
  if (cfg?.allow_downgrade) return { move: true };
  const word = 'hold' in m.via
    ? `${m.via.hold.by} holds this host on ${m.to} (${m.via.hold.reason})`
    : !('channel' in m.via)
    ? `the repository's newest version is ${m.to}`
    : m.via.rollout?.reason
      ? `${m.via.rollout.reason}, so channel ${m.via.channel} names ${m.to} again`
      : `channel ${m.via.channel} names ${m.to}`;
  return {
    move: false,
    reason: `${word}, older than the installed ${m.from}: not downgrading on the repository's word ` +
      `(to go back, republish the old content as a new version, or set allow_downgrade: true for ${m.name} in agent.yaml)`,
  };
}
