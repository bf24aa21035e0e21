// Maintenance windows (client-agent/windows.ts) on an injected clock: parsing and its errors,
// windows crossing midnight, and both DST changes in Europe/Berlin and America/New_York
// (open exactly while the local clock reads a time inside the window).
import test from 'ava';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseWindow, parseWindows, isOpen, nextOpening, describeTime, checkTimeZone } from '../../format/index.js';
import { windowsFor } from '../../client-agent/windows.js';
import { loadConfig } from '../../client-agent/config.js';

const at = (iso: string) => new Date(iso);
const W = (...texts: string[]) => parseWindows(texts);
const BER = 'Europe/Berlin';
const NY = 'America/New_York';

test('parse: days, ranges (wrapping the week end too), every day, 24:00', (t) => {
  const w = parseWindow('Mon-Fri 22:00-05:00');
  t.deepEqual([...w.days], [1, 2, 3, 4, 5]);
  t.is(w.start, 22 * 60);
  t.is(w.end, 5 * 60);
  t.deepEqual([...parseWindow('Sat,Sun 00:00-24:00').days], [6, 7]);
  t.is(parseWindow('Sat,Sun 00:00-24:00').end, 1440);
  t.deepEqual([...parseWindow('Fri-Mon 01:00-02:00').days].sort(), [1, 5, 6, 7]);
  t.deepEqual([...parseWindow('mon, wed , friday 1:00-2:30').days], [1, 3, 5]);
  t.is(parseWindow('03:00-04:00').days.size, 7);
});

test('parse errors name the window text and the field', (t) => {
  const cases: [string, RegExp][] = [
    ['Mon-Fri 25:00-05:00', /^windows: window "Mon-Fri 25:00-05:00": 25:00 is not a time of day \(00:00 to 23:59\)$/],
    ['Mon 22:00-24:30', /window "Mon 22:00-24:30": 24:30 is not a time of day \(00:00 to 24:00\)/],
    ['Mon 24:00-05:00', /24:00 is not a time of day \(00:00 to 23:59\)/],
    ['Mo-Fr 22:00-05:00', /window "Mo-Fr 22:00-05:00": unknown day "Mo" \(Mon, Tue/],
    ['Mon-Fri 22:00', /window "Mon-Fri 22:00": expected "\[DAYS\] HH:MM-HH:MM"/],
    ['every night', /window "every night": expected/],
    ['Mon-Tue-Wed 01:00-02:00', /cannot read the days "Mon-Tue-Wed"/],
    ['Mon 22:00-22:00', /starts and ends at the same time \(a whole day is 00:00-24:00\)/],
  ];
  for (const [text, re] of cases) t.throws(() => parseWindow(text), { message: re }, text);
  t.throws(() => parseWindows(['Sat 01:00-02:00', 'Sun 1-2'], 'appliances.0.windows'), { message: /^appliances\.0\.windows\.1: window "Sun 1-2"/ });
  t.throws(() => checkTimeZone('Europe/Berln'), { message: /^timezone: unknown time zone "Europe\/Berln" \(expected an IANA name/ });
  t.is(checkTimeZone(NY), NY);
});

test('a window crossing midnight closes on the next day; several windows add up', (t) => {
  const w = W('Mon-Fri 22:00-05:00', 'Sat,Sun 00:00-24:00');
  // 2026-12-07 is a Monday
  t.false(isOpen(w, at('2026-12-07T03:00:00Z'), 'UTC'), 'Mon 03:00: Sunday night is no weekday night');
  t.false(isOpen(w, at('2026-12-07T21:59:59Z'), 'UTC'));
  t.true(isOpen(w, at('2026-12-07T22:00:00Z'), 'UTC'));
  t.true(isOpen(w, at('2026-12-08T04:59:59Z'), 'UTC'), 'Tue 04:59: still Monday night');
  t.false(isOpen(w, at('2026-12-08T05:00:00Z'), 'UTC'));
  t.true(isOpen(w, at('2026-12-12T04:00:00Z'), 'UTC'), 'Sat 04:00: Friday night, and the weekend');
  t.true(isOpen(w, at('2026-12-13T23:59:00Z'), 'UTC'));
  t.false(isOpen(w, at('2026-12-14T00:00:00Z'), 'UTC'), 'Mon 00:00: the weekend is over, Monday night not begun');

  t.deepEqual(nextOpening(w, at('2026-12-07T12:00:00Z'), 'UTC'), at('2026-12-07T22:00:00Z'));
  t.deepEqual(nextOpening(w, at('2026-12-11T05:00:00Z'), 'UTC'), at('2026-12-11T22:00:00Z'));
  const open = at('2026-12-12T10:00:00Z');
  t.is(nextOpening(w, open, 'UTC'), open, 'open now: now');
  t.is(nextOpening([], open, 'UTC'), null);
  // the same windows in Berlin's winter time are an hour earlier in UTC
  t.deepEqual(nextOpening(w, at('2026-12-07T12:00:00Z'), BER), at('2026-12-07T21:00:00Z'));
  t.is(describeTime(at('2026-12-07T21:00:00Z'), BER), 'Mon 2026-12-07 22:00 +01:00 (Europe/Berlin)');
});

test('Europe/Berlin spring forward (Sun 2026-03-29, 02:00 -> 03:00): a window at 02:30 opens when the clock jumps past it', (t) => {
  const w = W('Sun 02:30-04:00');
  t.false(isOpen(w, at('2026-03-29T00:59:59Z'), BER), '01:59:59 CET');
  t.true(isOpen(w, at('2026-03-29T01:00:00Z'), BER), '03:00 CEST, the first time the clock reads past 02:30');
  t.true(isOpen(w, at('2026-03-29T01:59:59Z'), BER));
  t.false(isOpen(w, at('2026-03-29T02:00:00Z'), BER), '04:00 CEST');
  const next = nextOpening(w, at('2026-03-28T20:00:00Z'), BER)!;
  t.deepEqual(next, at('2026-03-29T01:00:00Z'));
  t.is(describeTime(next, BER), 'Sun 2026-03-29 03:00 +02:00 (Europe/Berlin)');
  // a window wholly inside the skipped hour: the clock never reads it that day, so it opens a week later
  const gap = W('Sun 02:00-02:30');
  for (let m = 0; m < 180; m += 5) t.false(isOpen(gap, new Date(Date.parse('2026-03-29T00:00:00Z') + m * 60_000), BER));
  t.deepEqual(nextOpening(gap, at('2026-03-28T20:00:00Z'), BER), at('2026-04-05T00:00:00Z'), 'Sun 2026-04-05 02:00 CEST');
  // a night window across the change closes at its wall-clock end, an hour shorter
  const night = W('Sat 22:00-06:00');
  t.true(isOpen(night, at('2026-03-28T21:00:00Z'), BER), 'Sat 22:00 CET');
  t.true(isOpen(night, at('2026-03-29T03:59:59Z'), BER), '05:59:59 CEST');
  t.false(isOpen(night, at('2026-03-29T04:00:00Z'), BER), '06:00 CEST');
});

test('Europe/Berlin fall back (Sun 2026-10-25, 03:00 -> 02:00): the hour that happens twice is inside the window both times', (t) => {
  const w = W('Sun 02:00-03:00');
  t.false(isOpen(w, at('2026-10-24T23:59:59Z'), BER), '01:59:59 CEST');
  t.true(isOpen(w, at('2026-10-25T00:00:00Z'), BER), '02:00 CEST');
  t.true(isOpen(w, at('2026-10-25T00:59:59Z'), BER), '02:59:59 CEST');
  t.true(isOpen(w, at('2026-10-25T01:00:00Z'), BER), '02:00 CET, the second time');
  t.true(isOpen(w, at('2026-10-25T01:59:59Z'), BER));
  t.false(isOpen(w, at('2026-10-25T02:00:00Z'), BER), '03:00 CET');
  t.deepEqual(nextOpening(w, at('2026-10-24T22:00:00Z'), BER), at('2026-10-25T00:00:00Z'), 'the first 02:00');

  // a short window in that hour opens twice; between the two, the next opening is the second
  const short = W('Sun 02:30-02:45');
  t.true(isOpen(short, at('2026-10-25T00:30:00Z'), BER));
  t.false(isOpen(short, at('2026-10-25T00:50:00Z'), BER));
  const second = nextOpening(short, at('2026-10-25T00:50:00Z'), BER)!;
  t.deepEqual(second, at('2026-10-25T01:30:00Z'));
  t.is(describeTime(second, BER), 'Sun 2026-10-25 02:30 +01:00 (Europe/Berlin)', 'the offset tells the two 02:30s apart');
  t.is(describeTime(at('2026-10-25T00:30:00Z'), BER), 'Sun 2026-10-25 02:30 +02:00 (Europe/Berlin)');
  // one that the clock re-enters as it is set back opens at the change itself
  const reentered = W('Sun 02:00-02:45');
  t.false(isOpen(reentered, at('2026-10-25T00:50:00Z'), BER), '02:50 CEST');
  t.deepEqual(nextOpening(reentered, at('2026-10-25T00:50:00Z'), BER), at('2026-10-25T01:00:00Z'), '02:00 CET');
});

test('America/New_York spring forward (Sun 2026-03-08, 02:00 -> 03:00) and fall back (Sun 2026-11-01, 02:00 -> 01:00)', (t) => {
  const spring = W('Sun 02:30-04:00');
  t.false(isOpen(spring, at('2026-03-08T06:59:59Z'), NY), '01:59:59 EST');
  t.true(isOpen(spring, at('2026-03-08T07:00:00Z'), NY), '03:00 EDT');
  t.deepEqual(nextOpening(spring, at('2026-03-08T00:00:00Z'), NY), at('2026-03-08T07:00:00Z'));
  // a night window meant to close at 02:30: the clock never reads 02:30 that night, so it closes at the jump
  const night = W('Sat 23:00-02:30');
  t.true(isOpen(night, at('2026-03-08T04:00:00Z'), NY), 'Sat 23:00 EST');
  t.true(isOpen(night, at('2026-03-08T06:59:59Z'), NY), '01:59:59 EST');
  t.false(isOpen(night, at('2026-03-08T07:00:00Z'), NY), '03:00 EDT');

  const fall = W('Sun 01:00-02:00');
  t.true(isOpen(fall, at('2026-11-01T05:00:00Z'), NY), '01:00 EDT');
  t.true(isOpen(fall, at('2026-11-01T06:30:00Z'), NY), '01:30 EST, the second time');
  t.false(isOpen(fall, at('2026-11-01T07:00:00Z'), NY), '02:00 EST');
  const short = W('Sun 01:30-01:45');
  const second = nextOpening(short, at('2026-11-01T05:50:00Z'), NY)!;
  t.deepEqual(second, at('2026-11-01T06:30:00Z'));
  t.is(describeTime(second, NY), 'Sun 2026-11-01 01:30 -05:00 (America/New_York)');
});

test('windowsFor: an appliance overrides the host (windows and timezone each); neither set: any time', (t) => {
  t.is(windowsFor({}, undefined), null);
  t.is(windowsFor({ timezone: BER }, { timezone: NY }), null, 'a zone alone is no window');
  const host = { windows: ['Mon-Fri 22:00-05:00'], timezone: BER };
  t.like(windowsFor(host, undefined), { tz: BER });
  t.is(windowsFor(host, undefined)!.windows[0].text, 'Mon-Fri 22:00-05:00');
  t.like(windowsFor(host, { timezone: NY }), { tz: NY });
  t.is(windowsFor(host, { windows: ['00:00-24:00'] })!.windows[0].days.size, 7);
  t.is(windowsFor({ windows: ['03:00-04:00'] }, undefined)!.tz, Intl.DateTimeFormat().resolvedOptions().timeZone, "default: the host's zone");
});

test('agent.yaml: windows and timezone at the top and per appliance; errors name the file, the field and the window', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'agent-win-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'agent.yaml');
  const head = `repos: [http://a/]\ntrust: {root_fingerprint: ${'ab'.repeat(20)}}\n`;
  await writeFile(path, head + 'windows: ["Mon-Fri 22:00-05:00", "Sat,Sun 00:00-24:00"]\ntimezone: Europe/Berlin\nappliances:\n  - { name: a, windows: ["03:00-04:00"], timezone: America/New_York }\n');
  const c = await loadConfig(path);
  t.deepEqual(c.windows, ['Mon-Fri 22:00-05:00', 'Sat,Sun 00:00-24:00']);
  t.is(c.appliances[0].timezone, NY);
  const bad: [string, RegExp][] = [
    ['windows: ["Mon-Fri 22:00-05:00", "Mon-Fri 25:00-05:00"]\n', /agent\.yaml: windows\.1: window "Mon-Fri 25:00-05:00": 25:00 is not a time of day/],
    ['appliances: [{ name: a, windows: ["Mo 01:00-02:00"] }]\n', /agent\.yaml: appliances\.0\.windows\.0: window "Mo 01:00-02:00": unknown day "Mo"/],
    ['timezone: Mars/Olympus\n', /agent\.yaml: timezone: unknown time zone "Mars\/Olympus"/],
    ['appliances: [{ name: a, timezone: CEST+1 }]\n', /appliances\.0\.timezone: unknown time zone/],
    ['windows: []\n', /windows: an empty list would never let an upgrade switch/],
    ['windows: "Mon 01:00-02:00"\n', /windows: .*array/i],
  ];
  for (const [extra, re] of bad) {
    await writeFile(path, head + extra);
    await t.throwsAsync(loadConfig(path), { message: re }, extra);
  }
});
