// Staged rollouts (format/rollout.ts): where a host stands, the operator's moves as changes of
// an image entry, and what the index schema lets through. Pure: an injected clock.
import test from 'ava';
import {
  rolloutBucket, placeHost, openStage, parseStages, startRollout, pauseRollout, resumeRollout, abortRollout, finishRollout, dropRollout, shouldHalt,
  IndexSchema, parseMetadata, serialize, MetadataError, UsageError, holdKey, holdFor, holdHost, releaseHost, type IndexImage, type Index,
} from '../../format/index.js';

const T0 = new Date('2026-12-06T10:00:00Z');
const at = (minutes: number) => new Date(T0.getTime() + minutes * 60_000);
const ID = '00112233445566778899aabbccddeeff';

function image(): IndexImage {
  const v = (n: string) => ({ manifest: n.repeat(64).slice(0, 64), size: 100, arch: 'amd64' as const, published: T0.toISOString() });
  return { versions: { '1.0': v('a'), '1.1': v('b'), '0.9': v('c') }, channels: { stable: '1.0' } };
}
const hosts = (n: number) => Array.from({ length: n }, (_, i) => `host-${String(i).padStart(3, '0')}.site.example`);

test('a host has one place in a rollout, the same every time; another rollout shuffles hosts anew', (t) => {
  const b = rolloutBucket(ID, 'xen-17.example');
  t.is(rolloutBucket(ID, 'xen-17.example'), b);
  t.is(rolloutBucket(ID, 'XEN-17.example'), b); // DNS names are case-blind
  t.true(b >= 0 && b < 100);
  const other = 'ffeeddccbbaa99887766554433221100';
  const names = hosts(1000);
  const inFirst = names.filter((h) => rolloutBucket(ID, h) < 10);
  const inOther = names.filter((h) => rolloutBucket(other, h) < 10);
  // about 10% each (binomial, n=1000: sd 9.5), and not the same hosts
  t.true(inFirst.length > 60 && inFirst.length < 140, String(inFirst.length));
  t.true(inOther.length > 60 && inOther.length < 140, String(inOther.length));
  const common = inFirst.filter((h) => inOther.includes(h)).length;
  t.true(common < inFirst.length / 2, `${common} of ${inFirst.length} in both`);
});

test('stages open by the clock: hosts below the open share take the new version, the rest stay and say why', (t) => {
  const img = image();
  const r = startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('10,50,100', '1h'), id: ID }, T0);
  t.deepEqual(r.stages.map((s) => s.opens), [T0.toISOString(), at(60).toISOString(), at(120).toISOString()]);
  t.is(img.channels.stable, '1.0'); // the channel names `from` until the rollout is finished
  const names = hosts(200);
  const taking = (now: Date) => names.filter((h) => placeHost(r, { host: h }, now).taking);
  const early = taking(at(1));
  const mid = taking(at(61));
  t.true(early.length > 5 && early.length < 40, String(early.length));
  t.true(mid.length > 70 && mid.length < 130, String(mid.length));
  t.true(early.every((h) => mid.includes(h)), 'a host in an earlier stage stays in');
  t.is(taking(at(121)).length, 200);
  t.is(taking(at(-1)).length, 0);
  const out = names.find((h) => !early.includes(h))!;
  const p = placeHost(r, { host: out }, at(1));
  t.is(p.version, '1.0');
  t.regex(p.reason!, /^outside the open stages of the rollout of 1\.1: stage 1 of 3 is open to 10% of hosts, this host's place is \d+\.\d\d%; next: stage 2 of 3 \(50%\) opens at 2026-12-06T11:00:00\.000Z$/);
  t.deepEqual(placeHost(r, { host: early[0] }, at(1)), { version: '1.1', taking: true, reason: null, bucket: rolloutBucket(ID, early[0]), stage: 0, window: null });
});

test('sites and groups limit a rollout; hosts outside them stay on the old version', (t) => {
  const img = image();
  const r = startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('100'), sites: ['berlin'], groups: ['canary'], id: ID }, T0);
  t.true(placeHost(r, { host: 'a', site: 'berlin', groups: ['canary', 'x'] }, T0).taking);
  t.regex(placeHost(r, { host: 'a', site: 'paris', groups: ['canary'] }, T0).reason!, /for the sites berlin; this host's site is paris/);
  t.regex(placeHost(r, { host: 'a', site: null, groups: ['canary'] }, T0).reason!, /this host's site is not set/);
  t.regex(placeHost(r, { host: 'a', site: 'berlin' }, T0).reason!, /for the groups canary; this host is in none/);
});

test('manual stages wait for resume; stages after them keep their spacing from when they open', (t) => {
  const img = image();
  const r = startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('5,25,50@+30m,100@+30m'), id: ID }, T0);
  t.deepEqual(r.stages.map((s) => s.opens), [T0.toISOString(), null, null, null]);
  t.is(openStage(r, at(600)).percent, 5);
  t.throws(() => resumeRollout(img, 'tiny', 'stable', at(-5)), { message: /stage 1 opens by itself at 2026-12-06T10:00:00.000Z/ });
  const { opened } = resumeRollout(img, 'tiny', 'stable', at(100));
  t.is(opened, 1);
  t.deepEqual(r.stages.map((s) => s.opens), [T0.toISOString(), at(100).toISOString(), at(130).toISOString(), at(160).toISOString()]);
  const e = t.throws(() => resumeRollout(img, 'tiny', 'stable', at(101)));
  t.regex(e!.message, /nothing to resume on tiny\/stable: stage 3 opens by itself at/);
});

test('pause stands a rollout still; resume goes on with the remaining stages moved by the pause', (t) => {
  const img = image();
  const r = startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('10,50,100', '1h'), id: ID }, T0);
  pauseRollout(img, 'tiny', 'stable', { reason: '2 hosts failed\nhealth', by: 'ops' }, at(30));
  t.is(r.stopped!.reason, '2 hosts failed health'); // one line, whatever the caller sends
  t.is(openStage(r, at(500)).percent, 10, 'no stage opens while paused');
  t.regex(placeHost(r, { host: hosts(50).find((h) => rolloutBucket(ID, h) > 10)! }, at(500)).reason!, /paused: 2 hosts failed health; next: stage 2 of 3 \(50%\) opens when the rollout is resumed/);
  t.throws(() => pauseRollout(img, 'tiny', 'stable', { reason: 'x', by: 'y' }, at(31)), { message: /is paused, not running/ });
  resumeRollout(img, 'tiny', 'stable', at(90), { took: 3, failed: 2 });
  t.deepEqual(r.halt_baseline, { took: 3, failed: 2 }, 'the halt rule counts anew from the resume');
  t.is(r.state, 'running');
  t.is(r.stopped, undefined);
  t.deepEqual(r.stages.map((s) => s.opens), [T0.toISOString(), at(120).toISOString(), at(180).toISOString()]);
});

test('abort sends hosts back to the old version; finish moves the channel only when complete (or forced)', (t) => {
  const img = image();
  const r = startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('100'), id: ID }, T0);
  t.true(placeHost(r, { host: 'h' }, T0).taking);
  const done = finishRollout(structuredClone(img), 'tiny', 'stable', T0);
  t.is(done.channel, '1.1');
  abortRollout(img, 'tiny', 'stable', { reason: 'bad build', by: 'ops' }, at(5));
  const p = placeHost(r, { host: 'h' }, at(6));
  t.deepEqual([p.version, p.taking, p.reason], ['1.0', false, 'the rollout of 1.1 was aborted (bad build)']);
  t.throws(() => resumeRollout(img, 'tiny', 'stable', at(7)), { message: /was aborted: start a new one/ });
  t.is(finishRollout(img, 'tiny', 'stable', at(8)).channel, '1.0');
  t.is(img.rollouts, undefined);

  const img2 = image();
  startRollout(img2, 'tiny', 'stable', { to: '1.1', stages: parseStages('10,100'), id: ID }, T0);
  t.throws(() => finishRollout(img2, 'tiny', 'stable', T0), { message: /not complete \(running, open to 10%\)/ });
  t.is(finishRollout(img2, 'tiny', 'stable', T0, true).channel, '1.1');
});

test('a rollout starts only forward, from the channel, one at a time', (t) => {
  const img = image();
  t.throws(() => startRollout(img, 'tiny', 'stable', { to: '0.9', stages: parseStages('100') }, T0), { message: /0\.9 is not newer than 1\.0/ });
  t.throws(() => startRollout(img, 'tiny', 'testing', { to: '1.1', stages: parseStages('100') }, T0), { message: /no channel testing/ });
  t.throws(() => startRollout(img, 'tiny', 'stable', { to: '2.0', stages: parseStages('100') }, T0), { message: /no version 2\.0/ });
  startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('100') }, T0);
  t.regex(img.rollouts!.stable.id, /^[0-9a-f]{32}$/);
  t.throws(() => startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('100') }, T0), { message: /already has a rollout/ });
  t.truthy(dropRollout(img, 'stable'));
  t.is(img.rollouts, undefined);
});

test('stage texts: percentages, @manual, @+duration, @time, --every; bad ones name themselves', (t) => {
  t.deepEqual(parseStages('1,10%,100'), [{ percent: 1, manual: false }, { percent: 10, manual: true }, { percent: 100, manual: true }]);
  t.deepEqual(parseStages('1,10', '2h'), [{ percent: 1, manual: false }, { percent: 10, afterSeconds: 7200 }]);
  t.deepEqual(parseStages('5@2026-12-08T22:00:00Z,50@manual,100@+1d'), [
    { percent: 5, opens: new Date('2026-12-08T22:00:00Z') }, { percent: 50, manual: true }, { percent: 100, afterSeconds: 86400 },
  ]);
  t.throws(() => parseStages('10,,100'), { message: /expected stages such as/ });
  t.throws(() => parseStages('ten'), { message: /stage "ten": expected a percentage/ });
  t.throws(() => parseStages('10@tomorrow'), { message: /"tomorrow" is not a time/ });
  t.throws(() => parseStages('10', '3 weeks'), { message: /expected a duration such as 30m/ });
});

test('the halt rule: N failures among the first hosts, then a share', (t) => {
  const halt = { failures: 2, of_first: 20, percent: 5 };
  t.false(shouldHalt(halt, 20, 1));
  t.true(shouldHalt(halt, 3, 2));
  t.true(shouldHalt(halt, 20, 2));
  t.false(shouldHalt(halt, 100, 5));
  t.true(shouldHalt(halt, 100, 6));
  t.false(shouldHalt(halt, 0, 0));
});

function indexWith(img: IndexImage): Index {
  return { type: 'loopship/index', spec_version: 1, version: 3, expires: at(60 * 24).toISOString(), root_version: 1, images: { tiny: img } };
}

test('the index schema: a rollout round-trips; one that names another start, unknown versions or shrinking stages is refused', (t) => {
  const img = image();
  startRollout(img, 'tiny', 'stable', { to: '1.1', stages: parseStages('10,50,100', '1h'), sites: ['berlin'], id: ID }, T0);
  const parsed = parseMetadata('index', serialize(indexWith(img)), 'index.json');
  t.deepEqual(parsed.images.tiny.rollouts, img.rollouts);
  const bad = (f: (i: IndexImage) => void, msg: RegExp) => {
    const copy = structuredClone(img);
    f(copy);
    const e = t.throws(() => parseMetadata('index', serialize(indexWith(copy)), 'index.json'), { instanceOf: MetadataError });
    t.regex(e!.message, msg);
  };
  bad((i) => { i.channels.stable = '0.9'; }, /rollouts\.stable\.from.*starts from the version its channel names \(0\.9\)/);
  bad((i) => { i.rollouts!.stable.to = '7.0'; }, /rollout to unknown version 7\.0/);
  bad((i) => { i.rollouts!.stable.stages[2].percent = 40; }, /stages\.2\.percent.*stages grow/);
  bad((i) => { i.rollouts!.stable.stages[2].opens = T0.toISOString(); i.rollouts!.stable.stages[1].opens = at(9).toISOString(); }, /stages\.2\.opens.*cannot open before/);
  bad((i) => { i.rollouts!.stable.state = 'paused'; }, /stopped.*present exactly when/);
  bad((i) => { i.rollouts!.stable.stopped = { at: T0.toISOString(), reason: 'a\nb', by: 'x' }; i.rollouts!.stable.state = 'paused'; }, /reason.*one line/);
  bad((i) => { i.rollouts!.stable.sites = ['../x']; }, /sites/);
  bad((i) => { i.rollouts!.stable.id = 'not-hex'; }, /rollout id/);
  bad((i) => { i.rollouts!.stable.stages[0].window = ['Mon-Fri 25:00-05:00']; }, /stages\.0\.window.*25:00 is not a time of day/);
  t.throws(() => startRollout(image(), 'tiny', 'stable', { to: '1.1', stages: parseStages('100'), window: ['Someday 22:00-05:00'] }, T0), { instanceOf: UsageError, message: /unknown day "Someday"/ });
  const w = image();
  const wr = startRollout(w, 'tiny', 'stable', { to: '1.1', stages: parseStages('10,100'), window: ['Sat,Sun 00:00-24:00'], id: ID }, T0);
  t.deepEqual(wr.stages.map((st) => st.window), [['Sat,Sun 00:00-24:00'], ['Sat,Sun 00:00-24:00']]);
  t.deepEqual(placeHost(wr, { host: 'h' }, T0).window, ['Sat,Sun 00:00-24:00']);
  t.true(IndexSchema.safeParse(indexWith(image())).success, 'an index without rollouts is as before');
});

test('holds: keyed by a digest of the host name (no name in the index), on a published version; release ends them', async (t) => {
  const img = image();
  const h = holdHost(img, 'tiny', 'Xen-07.Site.example', { version: '1.0', reason: 'ticket\n42', by: 'ops' }, T0);
  t.deepEqual(h, { version: '1.0', reason: 'ticket 42', by: 'ops', at: T0.toISOString() });
  t.deepEqual(Object.keys(img.holds!), [holdKey('xen-07.site.example')]);
  t.regex(holdKey('x'), /^[0-9a-f]{64}$/);
  t.false(JSON.stringify(img).toLowerCase().includes('xen-07'), 'the index does not name the host');
  t.is(holdFor(img, 'xen-07.site.example'), h);
  t.is(holdFor(img, 'xen-08.site.example'), undefined);
  t.deepEqual(parseMetadata('index', serialize(indexWith(img)), 'index.json').images.tiny.holds, img.holds);
  t.throws(() => holdHost(img, 'tiny', 'h', { version: '7.0', reason: 'r', by: 'b' }, T0), { message: /no version 7\.0/ });
  const bad = structuredClone(img);
  bad.holds![holdKey('xen-07.site.example')].version = '7.0';
  t.throws(() => parseMetadata('index', serialize(indexWith(bad)), 'index.json'), { message: /holds\.[0-9a-f]{64}\.version.*hold on unknown version 7\.0/ });
  releaseHost(img, 'tiny', 'XEN-07.site.example');
  t.is(img.holds, undefined);
  t.throws(() => releaseHost(img, 'tiny', 'xen-07.site.example'), { message: /is not held/ });
});
