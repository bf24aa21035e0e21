// Staged rollouts (FORMAT.md, "Rollouts"). A rollout lives in the signed index beside the
// channel it moves; each host decides alone, from the index and its own clock, whether it
// is in an open stage: no decision server, so a static mirror or CDN serves rollouts too.
// The operator's moves (start, pause, resume, abort, finish) are pure changes of an image
// entry here; RepositoryWriter signs the result.
import { createHash, randomBytes } from 'node:crypto';
import { LoopshipError, UsageError } from './errors.js';
import { compareVersions, asOneLine, type IndexImage, type Rollout, type RolloutStage } from './schema.js';
import { parseWindows } from './windows.js';


/** Who a host is, for a rollout: its name (the one its reports carry), site and groups. */
export interface HostPlace {
  host: string;
  site?: string | null;
  groups?: readonly string[];
}

/** What a host makes of a rollout: the version it should run now, and why not `to` when it is not. */
export interface Placement {
  version: string;
  /** true when this host takes the rollout's new version now */
  taking: boolean;
  /** why the host stays on `from` (null when it takes `to`) */
  reason: string | null;
  /** where the host sits, 0 <= bucket < 100: it takes `to` once an open stage reaches past it */
  bucket: number;
  /** the highest open stage (0-based), -1 before the first opens */
  stage: number;
  /** the windows that stage switches in (each host's local time), when it sets any */
  window: string[] | null;
}

/**
 * A host's stable place in a rollout: the same host always lands in the same spot of the
 * same rollout, whatever the order hosts poll in, and another rollout shuffles anew.
 */
export function rolloutBucket(rolloutId: string, host: string): number {
  const d = createHash('sha256').update(`loopship/rollout\0${rolloutId}\0${host.toLowerCase()}`).digest();
  return (d.readUInt32BE(0) / 2 ** 32) * 100;
}

/** The highest stage open at `now` (a paused rollout stands still at its pause), and the share of hosts it opens to. */
export function openStage(r: Rollout, now: Date): { stage: number; percent: number } {
  const cutoff = r.state !== 'running' && r.stopped ? Date.parse(r.stopped.at) : now.getTime();
  let stage = -1;
  for (let i = 0; i < r.stages.length; i++) {
    const opens = r.stages[i].opens;
    if (opens === null || Date.parse(opens) > cutoff) break;
    stage = i;
  }
  return { stage, percent: stage < 0 ? 0 : r.stages[stage].percent };
}

/** The stage after the open ones, if any: when it opens, in words. */
export function nextStage(r: Rollout, now: Date): string | null {
  const { stage } = openStage(r, now);
  const next = r.stages[stage + 1];
  if (!next) return null;
  const when = r.state === 'paused' ? 'when the rollout is resumed' : next.opens === null ? 'when an operator opens it (rollout resume)' : `at ${next.opens}`;
  return `stage ${stage + 2} of ${r.stages.length} (${next.percent}%) opens ${when}`;
}

export function placeHost(r: Rollout, place: HostPlace, now: Date): Placement {
  const bucket = rolloutBucket(r.id, place.host);
  const { stage, percent } = openStage(r, now);
  const window = stage >= 0 ? r.stages[stage].window ?? null : null;
  const stay = (reason: string): Placement => ({ version: r.from, taking: false, reason, bucket, stage, window });
  if (r.state === 'aborted') return stay(`the rollout of ${r.to} was aborted (${r.stopped?.reason ?? 'no reason given'})`);
  if (r.sites && !(place.site && r.sites.includes(place.site))) {
    return stay(`the rollout of ${r.to} is for the sites ${r.sites.join(', ')}; this host's site is ${place.site ?? 'not set (report.site in agent.yaml)'}`);
  }
  if (r.groups && !(place.groups ?? []).some((g) => r.groups!.includes(g))) {
    return stay(`the rollout of ${r.to} is for the groups ${r.groups.join(', ')}; this host is in ${place.groups?.length ? place.groups.join(', ') : 'none (groups in agent.yaml)'}`);
  }
  if (bucket < percent) return { version: r.to, taking: true, reason: null, bucket, stage, window };
  const where = stage < 0 ? 'no stage is open yet' : `stage ${stage + 1} of ${r.stages.length} is open to ${percent}% of hosts`;
  const paused = r.state === 'paused' ? `; paused: ${r.stopped?.reason}` : '';
  const next = nextStage(r, now);
  return stay(`outside the open stages of the rollout of ${r.to}: ${where}, this host's place is ${bucket.toFixed(2)}%${paused}${next ? `; next: ${next}` : ''}`);
}

// ---------- the operator's moves ----------

export interface StageSpec {
  percent: number;
  /** hosts switch only inside these windows while it is the highest open stage */
  window?: string[];
  /** absolute opening time; absent: `afterSeconds` after the stage before, or manual */
  opens?: Date;
  afterSeconds?: number;
  manual?: boolean;
}

const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400 };

/** "90s", "30m", "4h", "2d", "1w" -> seconds. */
export function parseDuration(text: string, where = 'duration'): number {
  const m = /^\s*(\d{1,6})\s*([smhdw])\s*$/.exec(text);
  if (!m) throw new UsageError(`expected a duration such as 30m, 4h or 2d, got ${JSON.stringify(text)}`, { where });
  return Number(m[1]) * DURATION_UNITS[m[2]];
}

/**
 * `1,10,50,100` with `every` (e.g. 4h: each stage that long after the one before; without
 * it, each later stage waits for `rollout resume`). A stage may say when itself:
 * `10@manual`, `50@+4h`, `100@2026-12-08T22:00:00Z`. The first stage opens at once unless it
 * names a time.
 */
export function parseStages(text: string, every?: string): StageSpec[] {
  const everySeconds = every === undefined ? undefined : parseDuration(every, '--every');
  const parts = text.split(',').map((p) => p.trim());
  if (!parts.length || parts.some((p) => !p)) throw new UsageError(`expected stages such as 1,10,50,100, got ${JSON.stringify(text)}`, { where: '--stages' });
  return parts.map((p, i) => {
    const m = /^(\d{1,3})%?(?:@(.+))?$/.exec(p);
    if (!m) throw new UsageError(`stage ${JSON.stringify(p)}: expected a percentage, optionally @manual, @+DURATION or @TIME`, { where: '--stages' });
    const percent = Number(m[1]);
    const when = m[2];
    if (when === undefined) return i === 0 || everySeconds === undefined ? { percent, manual: i > 0 } : { percent, afterSeconds: everySeconds };
    if (when === 'manual') return { percent, manual: true };
    if (when.startsWith('+')) return { percent, afterSeconds: parseDuration(when.slice(1), `--stages ${p}`) };
    const t = new Date(when);
    if (!/^\d{4}-\d\d-\d\dT/.test(when) || Number.isNaN(t.getTime())) throw new UsageError(`stage ${JSON.stringify(p)}: ${JSON.stringify(when)} is not a time such as 2026-12-08T22:00:00Z`, { where: '--stages' });
    return { percent, opens: t };
  });
}

export interface StartRollout {
  to: string;
  stages: StageSpec[];
  sites?: string[];
  groups?: string[];
  halt?: Rollout['halt'];
  /** every stage switches only inside these windows (each host's local time), unless its StageSpec sets its own */
  window?: string[];
  /** for tests: a fixed id (else random) */
  id?: string;
}

/** The halt rule a rollout gets unless it says otherwise: 2 failures among the first 20 hosts, or 5% after. */
export const DEFAULT_HALT: NonNullable<Rollout['halt']> = { failures: 2, of_first: 20, percent: 5 };

/** Stages whose time follows from the one before get it once that one has a time. */
function schedule(stages: RolloutStage[]): void {
  for (let i = 1; i < stages.length; i++) {
    const prev = stages[i - 1].opens;
    const st = stages[i];
    if (st.opens === null && st.after_seconds !== undefined && prev !== null) st.opens = new Date(Date.parse(prev) + st.after_seconds * 1000).toISOString();
  }
}

function requireRollout(image: IndexImage, name: string, channel: string): Rollout {
  const r = image.rollouts?.[channel];
  if (!r) throw new LoopshipError('NOT_FOUND', `${name}: channel ${channel} has no rollout`, { where: `${name}/${channel}` });
  return r;
}

/** Starts a rollout of `to` on `channel`, from the version the channel names. Changes `image`. */
export function startRollout(image: IndexImage, name: string, channel: string, opts: StartRollout, now: Date): Rollout {
  const from = image.channels[channel];
  const where = `${name}/${channel}`;
  if (!from) throw new LoopshipError('NOT_FOUND', `${name} has no channel ${channel} to roll out on (promote a first version to it)`, { where });
  if (!image.versions[opts.to]) throw new LoopshipError('NOT_FOUND', `${name} has no version ${opts.to}`, { where });
  if (image.rollouts?.[channel]) {
    const r = image.rollouts[channel];
    throw new LoopshipError('CONFLICT', `channel ${channel} of ${name} already has a rollout (${r.from} -> ${r.to}, ${r.state}): finish or abort it first`, { where });
  }
  if (compareVersions(opts.to, from) <= 0) {
    throw new UsageError(`${opts.to} is not newer than ${from}, which channel ${channel} names: hosts do not move back on a rollout (to go back, republish the old content as a new version)`, { where });
  }
  for (const w of [opts.window, ...opts.stages.map((s) => s.window)]) {
    try {
      if (w) parseWindows(w, 'window');
    } catch (e) {
      throw new UsageError((e as Error).message, { where });
    }
  }
  const stages: RolloutStage[] = opts.stages.map((s, i) => ({
    percent: s.percent,
    opens: s.opens ? s.opens.toISOString() : i === 0 && !s.manual && s.afterSeconds === undefined ? now.toISOString() : null,
    ...(s.afterSeconds !== undefined ? { after_seconds: s.afterSeconds } : {}),
    ...(s.window ?? opts.window ? { window: s.window ?? opts.window } : {}),
  }));
  if (stages[0].opens === null && opts.stages[0].afterSeconds !== undefined) stages[0].opens = new Date(now.getTime() + opts.stages[0].afterSeconds * 1000).toISOString();
  schedule(stages);
  const r: Rollout = {
    id: opts.id ?? randomBytes(16).toString('hex'),
    from,
    to: opts.to,
    started: now.toISOString(),
    state: 'running',
    stages,
    ...(opts.sites?.length ? { sites: [...opts.sites] } : {}),
    ...(opts.groups?.length ? { groups: [...opts.groups] } : {}),
    halt: opts.halt ?? DEFAULT_HALT,
  };
  (image.rollouts ??= {})[channel] = r;
  return r;
}

export function pauseRollout(image: IndexImage, name: string, channel: string, why: { reason: string; by: string }, now: Date): Rollout {
  const r = requireRollout(image, name, channel);
  if (r.state !== 'running') throw new LoopshipError('CONFLICT', `the rollout on ${name}/${channel} is ${r.state}, not running`, { where: `${name}/${channel}` });
  r.state = 'paused';
  r.stopped = { at: now.toISOString(), reason: asOneLine(why.reason, 1000), by: asOneLine(why.by, 200) };
  return r;
}

/**
 * A paused rollout goes on where it stopped (stages still to come keep their spacing, moved
 * by the time it stood still); a running one opens its next stage that waits for an operator.
 */
export function resumeRollout(image: IndexImage, name: string, channel: string, now: Date, baseline?: Rollout['halt_baseline']): { rollout: Rollout; opened: number | null } {
  const r = requireRollout(image, name, channel);
  const where = `${name}/${channel}`;
  if (r.state === 'aborted') throw new LoopshipError('CONFLICT', `the rollout on ${where} was aborted: start a new one`, { where });
  if (r.state === 'paused') {
    const at = Date.parse(r.stopped!.at);
    const shift = now.getTime() - at;
    for (const st of r.stages) if (st.opens !== null && Date.parse(st.opens) > at) st.opens = new Date(Date.parse(st.opens) + shift).toISOString();
    r.state = 'running';
    delete r.stopped;
    // the failures that halted it were seen: the halt rule counts anew from here
    if (baseline) r.halt_baseline = baseline;
    return { rollout: r, opened: null };
  }
  const { stage } = openStage(r, now);
  const next = r.stages[stage + 1];
  if (!next) throw new LoopshipError('CONFLICT', `every stage of the rollout on ${where} is open: rollout finish moves the channel to ${r.to}`, { where });
  if (next.opens !== null) throw new LoopshipError('CONFLICT', `nothing to resume on ${where}: stage ${stage + 2} opens by itself at ${next.opens}`, { where });
  next.opens = now.toISOString();
  schedule(r.stages);
  return { rollout: r, opened: stage + 1 };
}

/** Hosts go back to `from`, each as far as its own consent to a downgrade goes (client-agent/policy.ts). */
export function abortRollout(image: IndexImage, name: string, channel: string, why: { reason: string; by: string }, now: Date): Rollout {
  const r = requireRollout(image, name, channel);
  if (r.state === 'aborted') throw new LoopshipError('CONFLICT', `the rollout on ${name}/${channel} is already aborted`, { where: `${name}/${channel}` });
  r.state = 'aborted';
  r.stopped = { at: now.toISOString(), reason: asOneLine(why.reason, 1000), by: asOneLine(why.by, 200) };
  return r;
}

/**
 * Ends a rollout: a complete one (every stage open, the last to 100%) moves its channel to
 * `to`; an aborted one leaves the channel on `from`. Anything else needs `force`.
 */
export function finishRollout(image: IndexImage, name: string, channel: string, now: Date, force = false): { rollout: Rollout; channel: string } {
  const r = requireRollout(image, name, channel);
  const where = `${name}/${channel}`;
  const { stage, percent } = openStage(r, now);
  const complete = r.state === 'running' && stage === r.stages.length - 1 && percent === 100;
  if (!complete && r.state !== 'aborted' && !force) {
    throw new LoopshipError('CONFLICT', `the rollout on ${where} is not complete (${r.state}, open to ${percent}%): resume it until every stage is open, or finish --force to move every host now`, { where });
  }
  if (r.state !== 'aborted') image.channels[channel] = r.to;
  delete image.rollouts![channel];
  if (!Object.keys(image.rollouts!).length) delete image.rollouts;
  return { rollout: r, channel: image.channels[channel] };
}

/** A channel moved by hand (promote, publish --channel) ends the rollout on it. */
export function dropRollout(image: IndexImage, channel: string): Rollout | undefined {
  const r = image.rollouts?.[channel];
  if (!r) return undefined;
  delete image.rollouts![channel];
  if (!Object.keys(image.rollouts!).length) delete image.rollouts;
  return r;
}

/** Whether the hosts that took `to` failed often enough to stop the rollout (its halt rule). */
export function shouldHalt(halt: NonNullable<Rollout['halt']>, took: number, failed: number): boolean {
  if (failed === 0) return false;
  if (took <= halt.of_first) return failed >= halt.failures;
  return failed * 100 > halt.percent * took;
}

