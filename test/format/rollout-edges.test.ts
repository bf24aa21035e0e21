// The edges of format/rollout.ts that a mutation run found unguarded: the exact place hash,
// every refusal's message and where, boundaries of the halt rule, stage texts, and what a
// move leaves in the image entry. Pure and fast (npm run test:fast, the mutation command).
import test from 'ava';
import { createHash } from 'node:crypto';
import {
  rolloutBucket, placeHost, openStage, nextStage, parseStages, parseDuration, startRollout, pauseRollout, resumeRollout, abortRollout, finishRollout,
  dropRollout, shouldHalt, LoopshipError, UsageError, type IndexImage,
} from '../../format/index.js';

const T0 = new Date('2026-12-06T10:00:00Z');
const at = (minutes: number) => new Date(T0.getTime() + minutes * 60_000);
const ID = '00112233445566778899aabbccddeeff';

function image(): IndexImage {
  const v = (n: string) => ({ manifest: n.repeat(64), size: 100, arch: 'amd64' as const, published: T0.toISOString() });
  return { versions: { '1.0': v('a'), '1.1': v('b') }, channels: { stable: '1.0', beta: '1.0' } };
}
const start = (img: IndexImage, stages: string, extra: Record<string, unknown> = {}, ch = 'stable') =>
  startRollout(img, 'tiny', ch, { to: '1.1', stages: parseStages(stages), id: ID, ...extra }, T0);
const refusal = (t: import('ava').ExecutionContext, f: () => unknown, message: RegExp, where: string, cls: new (...a: never[]) => Error = LoopshipError) => {
  const e = t.throws(f, { instanceOf: cls }) as LoopshipError;
  t.is(e.where, where);
  t.true(e.message.startsWith(`${where}: `), e.message);
  t.regex(e.message.slice(where.length + 2), message);
};

test('a host\'s place is the first 4 bytes of sha256("loopship/rollout\\0" id "\\0" lowercase host), as FORMAT.md says', (t) => {
  const d = createHash('sha256').update(`loopship/rollout\0${ID}\0xen-17.example`).digest();
  t.is(rolloutBucket(ID, 'Xen-17.EXAMPLE'), (d.readUInt32BE(0) / 2 ** 32) * 100);
});

test('where a host stands, in words: no stage open yet, the last stage not at 100%, aborted, groups', (t) => {
  const img = image();
  const r = start(img, '10@2026-12-06T12:00:00Z,50@+1h');
  const early = placeHost(r, { host: 'h' }, T0);
  t.is(early.stage, -1);
  t.regex(early.reason!, /^outside the open stages of the rollout of 1\.1: no stage is open yet, this host's place is \d+\.\d\d%; next: stage 1 of 2 \(10%\) opens at 2026-12-06T12:00:00\.000Z$/);
  // every stage open and the last one not at 100%: those left out have no next stage
  const out = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'].find((h) => rolloutBucket(ID, h) >= 50)!;
  t.regex(placeHost(r, { host: out }, at(300)).reason!, /stage 2 of 2 is open to 50% of hosts, this host's place is \d+\.\d\d%$/);
  t.is(nextStage(r, at(300)), null);
  t.is(nextStage(r, T0), 'stage 1 of 2 (10%) opens at 2026-12-06T12:00:00.000Z');
  const g = start(image(), '100', { groups: ['canary'] });
  t.is(placeHost(g, { host: 'h', groups: ['main', 'lab'] }, T0).reason, 'the rollout of 1.1 is for the groups canary; this host is in main, lab');
  t.is(placeHost(g, { host: 'h' }, T0).reason, 'the rollout of 1.1 is for the groups canary; this host is in none (groups in agent.yaml)');
  const s = start(image(), '100', { sites: ['berlin', 'paris'] });
  t.is(placeHost(s, { host: 'h', site: 'rome' }, T0).reason, 'the rollout of 1.1 is for the sites berlin, paris; this host\'s site is rome');
  const a = start(image(), '100');
  t.is(placeHost({ ...a, state: 'aborted', stopped: undefined }, { host: 'h' }, T0).reason, 'the rollout of 1.1 was aborted (no reason given)');
});

test('an aborted or paused rollout stands still at its stop: stages due later do not open', (t) => {
  const img = image();
  const r = start(img, '10,100@+1h');
  abortRollout(img, 'tiny', 'stable', { reason: 'bad', by: 'ops' }, at(5));
  t.deepEqual(openStage(r, at(600)), { stage: 0, percent: 10 });
  t.is(nextStage(r, at(600)), 'stage 2 of 2 (100%) opens at 2026-12-06T11:00:00.000Z');
  const p = start(image(), '10,100@+1h');
  const pi = { versions: image().versions, channels: { stable: '1.0' }, rollouts: { stable: p } } as IndexImage;
  pauseRollout(pi, 'tiny', 'stable', { reason: 'r', by: 'b' }, at(5));
  t.is(nextStage(p, at(600)), 'stage 2 of 2 (100%) opens when the rollout is resumed');
  const m = start(image(), '10,100@manual');
  t.is(nextStage(m, T0), 'stage 2 of 2 (100%) opens when an operator opens it (rollout resume)');
});

test('durations and stage texts: units, anchors, spaces; bad ones say where', (t) => {
  t.is(parseDuration('90s'), 90);
  t.is(parseDuration(' 30m '), 1800);
  t.is(parseDuration('4 h'), 14400);
  t.is(parseDuration('2d'), 172800);
  t.is(parseDuration('1w'), 604800);
  for (const bad of ['x4h', '4hx', '4xh', '4', 'h', '1234567s']) {
    refusal(t, () => parseDuration(bad, '--every'), /^expected a duration such as 30m, 4h or 2d, got "/, '--every', UsageError);
  }
  t.is(t.throws(() => parseDuration('nope'))!.message, 'duration: expected a duration such as 30m, 4h or 2d, got "nope"');
  t.deepEqual(parseStages('10, 50 ,100'), [{ percent: 10, manual: false }, { percent: 50, manual: true }, { percent: 100, manual: true }]);
  for (const bad of ['x10', '10x', '10@', '1000']) {
    refusal(t, () => parseStages(bad), /^stage "[^"]*": expected a percentage, optionally @manual, @\+DURATION or @TIME$/, '--stages', UsageError);
  }
  refusal(t, () => parseStages(''), /^expected stages such as 1,10,50,100, got ""$/, '--stages', UsageError);
  refusal(t, () => parseStages('10@2026-13-45T00:00:00Z'), /^stage "10@2026-13-45T00:00:00Z": "2026-13-45T00:00:00Z" is not a time such as 2026-12-08T22:00:00Z$/, '--stages', UsageError);
  refusal(t, () => parseStages('10@12345'), /"12345" is not a time/, '--stages', UsageError);
  refusal(t, () => parseStages('10@+3 weeks'), /expected a duration such as 30m/, '--stages 10@+3 weeks', UsageError);
  t.deepEqual(parseStages('5,10', '1h')[1], { percent: 10, afterSeconds: 3600 });
});

test('start: where the first stage opens, stages with their own time keep it, refusals say what and where', (t) => {
  t.is(start(image(), '10@manual,100').stages[0].opens, null, 'a manual first stage waits');
  t.is(start(image(), '10@+30m,100').stages[0].opens, at(30).toISOString());
  t.is(start(image(), '10,100').stages[0].opens, T0.toISOString());
  const timed = start(image(), '10,50@+1h,100@2026-12-09T00:00:00Z');
  t.deepEqual(timed.stages.map((s) => s.opens), [T0.toISOString(), at(60).toISOString(), '2026-12-09T00:00:00.000Z']);
  t.deepEqual(start(image(), '10,50@manual,100@+1h').stages.map((s) => s.opens), [T0.toISOString(), null, null]);
  const img = image();
  refusal(t, () => startRollout(img, 'tiny', 'dev', { to: '1.1', stages: parseStages('100') }, T0), /^tiny has no channel dev to roll out on \(promote a first version to it\)$/, 'tiny/dev');
  refusal(t, () => startRollout(img, 'tiny', 'stable', { to: '3.0', stages: parseStages('100') }, T0), /^tiny has no version 3\.0$/, 'tiny/stable');
  refusal(t, () => startRollout(img, 'tiny', 'stable', { to: '1.0', stages: parseStages('100') }, T0), /^1\.0 is not newer than 1\.0, which channel stable names: hosts do not move back on a rollout/, 'tiny/stable', UsageError);
  refusal(t, () => startRollout(img, 'tiny', 'stable', { to: '1.1', stages: [{ percent: 100, window: ['Funday 01:00-02:00'] }] }, T0), /unknown day "Funday"/, 'tiny/stable', UsageError);
  start(img, '100');
  refusal(t, () => start(img, '100'), /^channel stable of tiny already has a rollout \(1\.0 -> 1\.1, running\): finish or abort it first$/, 'tiny/stable');
});

test('pause, resume, abort: each refusal names the rollout; a stop\'s reason and who are one bounded line', (t) => {
  const img = image();
  refusal(t, () => pauseRollout(img, 'tiny', 'stable', { reason: 'r', by: 'b' }, T0), /^tiny: channel stable has no rollout$/, 'tiny/stable');
  t.is(dropRollout(img, 'stable'), undefined);
  const r = start(img, '10,100@manual');
  pauseRollout(img, 'tiny', 'stable', { reason: 'a\n\n\tb' + 'x'.repeat(2000), by: 'o'.repeat(300) }, at(1));
  t.is(r.stopped!.reason.slice(0, 4), 'a b' + 'x');
  t.is(r.stopped!.reason.length, 1000);
  t.is(r.stopped!.by.length, 200);
  refusal(t, () => pauseRollout(img, 'tiny', 'stable', { reason: 'r', by: 'b' }, at(2)), /^the rollout on tiny\/stable is paused, not running$/, 'tiny/stable');
  const back = resumeRollout(img, 'tiny', 'stable', at(3));
  t.deepEqual(back, { rollout: r, opened: null });
  t.false('halt_baseline' in r, 'no baseline without a tally');
  t.is(r.stages[0].opens, T0.toISOString(), 'a stage open before the pause keeps its time');
  t.is(resumeRollout(img, 'tiny', 'stable', at(4)).opened, 1);
  refusal(t, () => resumeRollout(img, 'tiny', 'stable', at(5)), /^every stage of the rollout on tiny\/stable is open: rollout finish moves the channel to 1\.1$/, 'tiny/stable');
  abortRollout(img, 'tiny', 'stable', { reason: 'bad', by: 'b'.repeat(300) }, at(6));
  t.is(r.stopped!.by.length, 200);
  refusal(t, () => abortRollout(img, 'tiny', 'stable', { reason: 'r', by: 'b' }, at(7)), /^the rollout on tiny\/stable is already aborted$/, 'tiny/stable');
  refusal(t, () => resumeRollout(img, 'tiny', 'stable', at(8)), /^the rollout on tiny\/stable was aborted: start a new one$/, 'tiny/stable');
});

test('finish: only a running rollout with every stage open to 100%; another channel\'s rollout stays', (t) => {
  const img = image();
  start(img, '10,50@+1m');
  start(img, '100', {}, 'beta');
  refusal(t, () => finishRollout(img, 'tiny', 'stable', at(10)), /^the rollout on tiny\/stable is not complete \(running, open to 50%\): resume it until every stage is open, or finish --force/, 'tiny/stable');
  const paused = structuredClone(img);
  pauseRollout(paused, 'tiny', 'beta', { reason: 'r', by: 'b' }, at(1));
  refusal(t, () => finishRollout(paused, 'tiny', 'beta', at(10)), /not complete \(paused, open to 100%\)/, 'tiny/beta');
  const early = structuredClone(img);
  early.rollouts!.beta.stages[0].opens = at(60).toISOString();
  refusal(t, () => finishRollout(early, 'tiny', 'beta', at(10)), /not complete \(running, open to 0%\)/, 'tiny/beta');
  t.deepEqual(finishRollout(img, 'tiny', 'beta', at(10)).channel, '1.1');
  t.deepEqual(Object.keys(img.rollouts!), ['stable'], 'the other channel\'s rollout is still there');
  t.is(img.channels.stable, '1.0');
  t.truthy(dropRollout(img, 'stable'));
  t.is(img.rollouts, undefined);
});

test('the halt rule at its edges', (t) => {
  const halt = { failures: 2, of_first: 20, percent: 4 };
  t.false(shouldHalt(halt, 20, 1), 'within the first 20, one failure of two allowed');
  t.true(shouldHalt(halt, 20, 2));
  t.true(shouldHalt(halt, 21, 1), 'past the first 20: more than 4%');
  t.false(shouldHalt(halt, 25, 1), 'exactly 4% is not more than 4%');
  t.true(shouldHalt({ failures: 1, of_first: 1, percent: 0 }, 1, 1));
  t.false(shouldHalt({ failures: 1, of_first: 0, percent: 0 }, 5, 0), 'no failure, no halt, whatever the share');
});
