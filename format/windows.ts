// Maintenance windows (agent.yaml `windows:`, `timezone:`, and a rollout stage's `window` in
// the signed index): when the agent may stop, switch and reboot an appliance. Pure: the clock and the zone are arguments, Intl does the zone
// arithmetic (Node's full ICU), so tests can walk across DST changes.
//
// A window is "[DAYS] HH:MM-HH:MM" in the zone's local time, e.g. "Mon-Fri 22:00-05:00",
// "Sat,Sun 00:00-24:00", "03:00-04:00" (every day). An end at or before the start crosses
// midnight: it closes on the next day (Mon 22:00 to Tue 05:00).
//
// The one rule: a window is open exactly while the host's clock reads a time inside it. So
// it is never open while users were told it is not; across DST changes that means:
// - spring forward (02:00 -> 03:00): "02:30-04:00" opens at 03:00, the first time the clock
//   reads past 02:30; a window wholly inside the skipped hour does not open that day;
// - fall back (03:00 -> 02:00): the repeated hour is inside a window both times it happens
//   (such a window may open twice that night; the second time finds nothing left to do).
import { ConfigError } from './errors.js';

export interface MaintenanceWindow {
  /** as written in agent.yaml, for messages */
  text: string;
  /** ISO weekdays the window opens on: 1 = Monday .. 7 = Sunday */
  days: ReadonlySet<number>;
  /** minutes after local midnight: start 0..1439, end 1..1440 (24:00) */
  start: number;
  end: number;
}

const DAY_NAMES = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const FULL_NAMES = ['monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday'];
const SYNTAX = 'expected "[DAYS] HH:MM-HH:MM", e.g. "Mon-Fri 22:00-05:00", "Sat,Sun 00:00-24:00" or "03:00-04:00" (every day)';

function dayNumber(word: string, text: string, where: string): number {
  const w = word.toLowerCase();
  const i = DAY_NAMES.indexOf(w) >= 0 ? DAY_NAMES.indexOf(w) : FULL_NAMES.indexOf(w);
  if (i < 0) throw new ConfigError(`window "${text}": unknown day "${word}" (Mon, Tue, Wed, Thu, Fri, Sat, Sun)`, { where });
  return i + 1;
}

function minutes(hh: string, mm: string, text: string, where: string, isEnd: boolean): number {
  const h = Number(hh);
  const m = Number(mm);
  const max = isEnd ? 24 : 23;
  if (h > max || m > 59 || (h === 24 && m !== 0)) {
    throw new ConfigError(`window "${text}": ${hh}:${mm} is not a time of day (00:00 to ${isEnd ? '24:00' : '23:59'})`, { where });
  }
  return h * 60 + m;
}

/** One window's text; `where` names the agent.yaml field in errors. */
export function parseWindow(text: string, where = 'windows'): MaintenanceWindow {
  const m = /^\s*(?:([A-Za-z][A-Za-z,\s-]*?)\s+)?(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$/.exec(text);
  if (!m) throw new ConfigError(`window "${text}": ${SYNTAX}`, { where });
  const days = new Set<number>();
  if (m[1] === undefined) for (let d = 1; d <= 7; d++) days.add(d);
  else {
    for (const item of m[1].split(',')) {
      const parts = item.trim().split(/\s*-\s*/);
      if (parts.length > 2 || !parts[0]) throw new ConfigError(`window "${text}": cannot read the days "${m[1].trim()}" (${SYNTAX})`, { where });
      const from = dayNumber(parts[0], text, where);
      const to = parts.length === 2 ? dayNumber(parts[1], text, where) : from;
      // a range may wrap around the week end: Fri-Mon is Fri, Sat, Sun, Mon
      for (let d = from; ; d = (d % 7) + 1) {
        days.add(d);
        if (d === to) break;
      }
    }
  }
  const start = minutes(m[2], m[3], text, where, false);
  const end = minutes(m[4], m[5], text, where, true);
  if (start === end) throw new ConfigError(`window "${text}": starts and ends at the same time (a whole day is 00:00-24:00)`, { where });
  return { text, days, start, end };
}

export function parseWindows(texts: readonly string[], where = 'windows'): MaintenanceWindow[] {
  return texts.map((t, i) => parseWindow(t, `${where}.${i}`));
}

/** Throws a ConfigError naming `where` unless the zone is one Intl knows (an IANA name). */
export function checkTimeZone(tz: string, where = 'timezone'): string {
  try {
    formatter(tz);
  } catch {
    throw new ConfigError(`unknown time zone "${tz}" (expected an IANA name such as Europe/Berlin or America/New_York)`, { where });
  }
  return tz;
}

/** The host's own zone (TZ, else /etc/localtime, as Intl resolves it). */
export function localTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone;
}

// ---------- local time through Intl ----------

const formatters = new Map<string, Intl.DateTimeFormat>();
function formatter(tz: string): Intl.DateTimeFormat {
  let f = formatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz, hourCycle: 'h23', weekday: 'short',
      year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
    });
    formatters.set(tz, f);
  }
  return f;
}

interface Wall {
  /** the local date and time as if it were UTC, in ms (its difference to the instant is the offset) */
  asUtc: number;
  /** days since 1970-01-01 of the local date */
  day: number;
  weekday: number;
  minute: number;
}

const DAY_MS = 86_400_000;

function wall(t: number, tz: string): Wall {
  const p: Record<string, string> = {};
  for (const { type, value } of formatter(tz).formatToParts(new Date(t))) p[type] = value;
  const asUtc = Date.UTC(Number(p.year), Number(p.month) - 1, Number(p.day), Number(p.hour), Number(p.minute), Number(p.second));
  const day = Math.floor(asUtc / DAY_MS);
  return { asUtc, day, weekday: isoWeekday(day), minute: Number(p.hour) * 60 + Number(p.minute) };
}

const isoWeekday = (day: number): number => ((new Date(day * DAY_MS).getUTCDay() + 6) % 7) + 1;

/** The zone's offset from UTC at instant t, in ms (whole seconds: sub-second parts dropped). */
function offsetAt(t: number, tz: string): number {
  const s = Math.floor(t / 1000) * 1000;
  return wall(s, tz).asUtc - s;
}

/** Every instant at which the local clock reads `asUtc` (none in a spring gap, two in the repeated hour), earliest first. */
function instantsOf(asUtc: number, tz: string): number[] {
  const found = new Set<number>();
  for (const probe of [asUtc - DAY_MS, asUtc, asUtc + DAY_MS]) {
    const o = offsetAt(probe, tz);
    if (offsetAt(asUtc - o, tz) === o) found.add(asUtc - o);
  }
  return [...found].sort((a, b) => a - b);
}

/** Instants in [from, to) where the zone's offset changes (the clock jumps), to the second. */
function transitionsIn(from: number, to: number, tz: string): number[] {
  const out: number[] = [];
  const STEP = 6 * 3600_000; // zones change offset months apart, never twice in 6 hours
  for (let a = from; a < to; a += STEP) {
    const b = Math.min(a + STEP, to);
    if (offsetAt(a, tz) === offsetAt(b, tz)) continue;
    let lo = a; // offset(lo) is the old one, offset(hi) the new
    let hi = b;
    const old = offsetAt(a, tz);
    while (hi - lo > 1000) {
      const mid = Math.floor((lo + hi) / 2000) * 1000;
      if (mid <= lo) break;
      if (offsetAt(mid, tz) === old) lo = mid;
      else hi = mid;
    }
    out.push(hi);
  }
  return out;
}

// ---------- the questions the agent asks ----------

function openAt(w: MaintenanceWindow, l: Wall): boolean {
  if (w.end > w.start) return w.days.has(l.weekday) && l.minute >= w.start && l.minute < w.end;
  // crosses midnight: the evening part on its own day, the morning part on the next
  return (w.days.has(l.weekday) && l.minute >= w.start) || (w.days.has(((l.weekday + 5) % 7) + 1) && l.minute < w.end);
}

/** Is any of the windows open at `now` (the clock in zone `tz` reads a time inside it)? */
export function isOpen(windows: readonly MaintenanceWindow[], now: Date, tz: string): boolean {
  const l = wall(now.getTime(), tz);
  return windows.some((w) => openAt(w, l));
}

/**
 * When a window is next open: `now` itself while one is, else the first instant one opens
 * (within the next 9 days, enough for a weekly window whose next day is skipped by a DST
 * change; null for no windows at all).
 */
export function nextOpening(windows: readonly MaintenanceWindow[], now: Date, tz: string): Date | null {
  if (isOpen(windows, now, tz)) return now;
  const t0 = now.getTime();
  const today = wall(t0, tz).day;
  // a window opens where the clock reaches its start, or where a DST jump lands inside it
  const candidates = transitionsIn(t0, t0 + 9 * DAY_MS, tz);
  for (const w of windows) {
    for (let d = today; d <= today + 8; d++) {
      if (w.days.has(isoWeekday(d))) candidates.push(...instantsOf(d * DAY_MS + w.start * 60_000, tz));
    }
  }
  const first = candidates.filter((c) => c > t0 && isOpen(windows, new Date(c), tz)).sort((a, b) => a - b)[0];
  return first === undefined ? null : new Date(first);
}

/** "Mon 2026-12-07 22:00 +01:00 (Europe/Berlin)": the local time with its offset, unambiguous in the repeated hour too. */
export function describeTime(at: Date, tz: string): string {
  const l = wall(at.getTime(), tz);
  const off = Math.round((l.asUtc - Math.floor(at.getTime() / 1000) * 1000) / 60_000);
  const abs = Math.abs(off);
  const pad = (n: number) => String(n).padStart(2, '0');
  const date = new Date(l.day * DAY_MS).toISOString().slice(0, 10);
  return `${DAY_NAMES[l.weekday - 1].replace(/^./, (c) => c.toUpperCase())} ${date} ${pad(Math.floor(l.minute / 60))}:${pad(l.minute % 60)} ${off < 0 ? '-' : '+'}${pad(Math.floor(abs / 60))}:${pad(abs % 60)} (${tz})`;
}
