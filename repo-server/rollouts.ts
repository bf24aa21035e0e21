// Rollouts as `loopship rollout` and the server run them: an operator's request becomes one
// of format/rollout.ts's moves on the writer (which re-signs the index); each rollout's status
// is shown with the fleet's reports beside it; and the halt rule is applied as reports arrive.
import * as z from 'zod';
import {
  imageVersion, siteName, groupName, rolloutId, oneLine, openStage, nextStage, parseStages, startRollout, pauseRollout, resumeRollout, abortRollout,
  finishRollout, shouldHalt,
  type Index, type IndexImage, type Rollout, type RepositoryWriter,
} from '../format/index.js';
import type { FleetReport, StoredReport } from './reports.js';

export type RolloutWriter = Pick<RepositoryWriter, 'changeImage' | 'currentIndex'>;

/** Who the server names as having paused a rollout by its halt rule. */
export const HALT_RULE_BY = 'loopship serve (halt rule)';

export const RolloutRequestSchema = z.discriminatedUnion('op', [
  z.strictObject({
    op: z.literal('start'),
    to: imageVersion,
    /** as `--stages`: 1,10,50,100 or 10@manual,50@+4h,100@2026-12-08T22:00:00Z */
    stages: z.string().min(1).max(500),
    every: z.string().max(20).optional(),
    sites: z.array(siteName).min(1).max(256).optional(),
    groups: z.array(groupName).min(1).max(256).optional(),
    halt: z.strictObject({ failures: z.number().int().min(1), of_first: z.number().int().min(1), percent: z.number().min(0).max(100) }).optional(),
    /** hosts switch only inside these windows, in their local time (e.g. "Mon-Fri 22:00-05:00") */
    window: z.array(z.string().max(100)).min(1).max(8).optional(),
    id: rolloutId.optional(),
  }),
  z.strictObject({ op: z.literal('pause'), reason: oneLine(1000).optional() }),
  z.strictObject({ op: z.literal('abort'), reason: oneLine(1000).optional() }),
  z.strictObject({ op: z.literal('resume') }),
  z.strictObject({ op: z.literal('finish'), force: z.boolean().optional() }),
]);
export type RolloutRequest = z.infer<typeof RolloutRequestSchema>;
export const ROLLOUT_OPS = ['start', 'pause', 'resume', 'abort', 'finish'] as const;

/** What the fleet says about one rollout: who took the new version, who failed on it, who waits. */
export interface FleetTally {
  took: number;
  failed: { host: string; site: string; error: string | null }[];
  waiting: number;
}

export interface RolloutView {
  name: string;
  channel: string;
  id: string;
  from: string;
  to: string;
  state: Rollout['state'];
  started: string;
  stopped: Rollout['stopped'] | null;
  /** 1-based; 0 before the first stage opens */
  stage: number;
  stages: Rollout['stages'];
  percent: number;
  next: string | null;
  /** every stage open, to all hosts: `rollout finish` moves the channel */
  complete: boolean;
  sites: string[] | null;
  groups: string[] | null;
  halt: Rollout['halt'] | null;
  fleet: FleetTally | null;
}

/** Counts the reports of hosts running `name` against a rollout (hosts report their own place and failures). */
export function tallyFleet(r: Rollout, name: string, reports: readonly StoredReport[]): FleetTally {
  const t: FleetTally = { took: 0, failed: [], waiting: 0 };
  for (const { report } of reports) {
    for (const a of report.appliances) {
      if (a.name !== name) continue;
      const rolledBack = a.failed_versions?.includes(r.to) ?? false;
      const onTo = a.version === r.to;
      if (onTo || rolledBack) t.took++;
      if (rolledBack || (onTo && a.health === 'unhealthy')) t.failed.push({ host: report.host, site: report.site, error: a.error ?? null });
      else if (a.rollout?.id === r.id && !a.rollout.taking) t.waiting++;
    }
  }
  return t;
}

export function viewRollout(name: string, channel: string, r: Rollout, now: Date, reports?: readonly StoredReport[]): RolloutView {
  const { stage, percent } = openStage(r, now);
  return {
    name, channel, id: r.id, from: r.from, to: r.to, state: r.state, started: r.started, stopped: r.stopped ?? null,
    stage: stage + 1, stages: r.stages, percent, next: r.state === 'aborted' ? null : nextStage(r, now),
    complete: r.state === 'running' && stage === r.stages.length - 1 && percent === 100,
    sites: r.sites ?? null, groups: r.groups ?? null, halt: r.halt ?? null,
    fleet: reports ? tallyFleet(r, name, reports) : null,
  };
}

export function viewRollouts(index: Index, now: Date, reports?: readonly StoredReport[]): RolloutView[] {
  return Object.entries(index.images).flatMap(([name, image]) =>
    Object.entries(image.rollouts ?? {}).map(([channel, r]) => viewRollout(name, channel, r, now, reports)));
}

export interface RolloutResult {
  index_version: number;
  /** the rollout after the move (finish: as it ended) */
  rollout: RolloutView;
  /** the version the channel names afterwards */
  channel_version: string;
}

/** Runs one request on the writer: the move, the signed index, and what it looks like now. */
export async function applyRollout(w: RolloutWriter, name: string, channel: string, req: RolloutRequest, by: string, reports?: () => readonly StoredReport[]): Promise<RolloutResult> {
  const stages = req.op === 'start' ? parseStages(req.stages, req.every) : undefined;
  const { indexVersion, result } = await w.changeImage(name, (image, now) => {
    const r = move(image, now);
    return { view: viewRollout(name, channel, r, now), channelVersion: image.channels[channel] };
  });
  return { index_version: indexVersion, rollout: result.view, channel_version: result.channelVersion };

  function move(image: IndexImage, now: Date): Rollout {
    switch (req.op) {
      case 'start':
        return startRollout(image, name, channel, { to: req.to, stages: stages!, sites: req.sites, groups: req.groups, halt: req.halt, window: req.window, id: req.id }, now);
      case 'pause':
        return pauseRollout(image, name, channel, { reason: req.reason ?? 'paused by an operator', by }, now);
      case 'abort':
        return abortRollout(image, name, channel, { reason: req.reason ?? 'aborted by an operator', by }, now);
      case 'resume': {
        const r = image.rollouts?.[channel];
        const t = r && reports ? tallyFleet(r, name, reports()) : undefined;
        return resumeRollout(image, name, channel, now, t && { took: t.took, failed: t.failed.length }).rollout;
      }
      case 'finish':
        return finishRollout(image, name, channel, now, req.force).rollout;
    }
  }
}

/**
 * The halt rule, applied as reports arrive: when hosts that took a running rollout's new
 * version fail (unhealthy on it, or rolled back from it) beyond the rollout's rule, the
 * rollout is paused - the index re-signed - with the hosts and their errors as the reason.
 */
export class RolloutWatch {
  private queue: Promise<void> = Promise.resolve();

  constructor(
    private readonly w: RolloutWriter,
    private readonly reports: () => readonly StoredReport[],
    private readonly log: { warn: (obj: object, msg: string) => void },
  ) {}

  /** Called with each stored report; checks are queued, one at a time. */
  observe(report: FleetReport): Promise<void> {
    // only a report that says something failed can tip a rollout over its rule
    if (!report.appliances.some((a) => a.health === 'unhealthy' || a.failed_versions?.length)) return this.queue;
    this.queue = this.queue.then(() => this.check(), (e) => this.log.warn({ err: (e as Error).message }, 'rollout halt check failed'));
    return this.queue;
  }

  private async check(): Promise<void> {
    const index = await this.w.currentIndex();
    for (const [name, image] of Object.entries(index.images)) {
      for (const [channel, r] of Object.entries(image.rollouts ?? {})) {
        if (r.state !== 'running' || !r.halt) continue;
        const t = tallyFleet(r, name, this.reports());
        const base = r.halt_baseline ?? { took: 0, failed: 0 };
        if (!shouldHalt(r.halt, t.took - base.took, t.failed.length - base.failed)) continue;
        const named = t.failed.slice(0, 5).map((f) => `${f.host} (${(f.error ?? 'unhealthy').slice(0, 120)})`).join(', ');
        const reason = `halted: ${t.failed.length} of ${t.took} hosts that took ${r.to} failed: ${named}${t.failed.length > 5 ? ', ...' : ''}`;
        await this.w.changeImage(name, (img, now) => pauseRollout(img, name, channel, { reason, by: HALT_RULE_BY }, now));
        this.log.warn({ image: name, channel, rollout: r.id, to: r.to, took: t.took, failed: t.failed.map((f) => f.host) }, 'rollout halted');
      }
    }
  }
}
