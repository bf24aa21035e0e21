// Health check: the guest reached its ready state when its console prints the manifest's
// ready marker. We follow the console log as it grows (no fixed sleeps) and give up at
// the timeout, or as soon as the domain is gone.
import { open, stat } from 'node:fs/promises';
import { watch } from 'node:fs';
import { dirname, basename } from 'node:path';

export interface WaitReadyOptions {
  logPath: string;
  marker: string;
  /** read from this byte offset (the log's size before this boot) */
  fromOffset?: number;
  timeoutMs: number;
  /** polled now and then: false (gone) or 'restarted' (a new instance) ends the wait early */
  isAlive?: () => Promise<boolean | 'restarted'>;
  /** how often isAlive is asked (default 1000 ms) */
  aliveEveryMs?: number;
  signal?: AbortSignal;
}

export interface WaitReadyResult {
  ready: boolean;
  reason: 'marker' | 'timeout' | 'stopped' | 'restarted' | 'aborted';
  ms: number;
  /** the last console lines, for the report when not ready */
  tail: string;
  /** the console line holding the marker (the guest may report facts on it) */
  line?: string;
}

export async function fileSize(path: string): Promise<number> {
  return stat(path).then((s) => s.size, () => 0);
}

export async function waitReady(o: WaitReadyOptions): Promise<WaitReadyResult> {
  const t0 = Date.now();
  let offset = o.fromOffset ?? 0;
  let window = ''; // what we have read, bounded: the marker may straddle two reads
  const keep = Math.max(4096, o.marker.length * 2);
  let wake: () => void = () => {};
  let watcher: ReturnType<typeof watch> | null = null;
  try {
    watcher = watch(dirname(o.logPath), (_ev, f) => {
      if (!f || f === basename(o.logPath)) wake();
    });
  } catch {
    watcher = null; // directory not there yet: polling below still finds the file
  }
  let lastAlive = 0;
  let markerSeen: number | null = null;
  try {
    for (;;) {
      const size = await fileSize(o.logPath);
      if (size < offset) offset = 0; // the log was truncated or replaced: read it afresh
      if (size > offset) {
        const fh = await open(o.logPath, 'r');
        try {
          while (offset < size) {
            const buf = Buffer.alloc(Math.min(1024 * 1024, size - offset));
            const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
            if (bytesRead === 0) break;
            offset += bytesRead;
            window = (window + buf.subarray(0, bytesRead).toString('latin1')).slice(-keep - bytesRead);
            const at = window.lastIndexOf(o.marker);
            if (at >= 0) {
              markerSeen ??= Date.now();
              const eol = window.indexOf('\n', at);
              // the whole line: what follows the marker is often what a test or a human wants
              if (eol >= 0) return { ready: true, reason: 'marker', ms: Date.now() - t0, tail: tailOf(window), line: lineAt(window, at, eol) };
            }
            window = window.slice(-keep);
          }
        } finally {
          await fh.close();
        }
      }
      const elapsed = Date.now() - t0;
      // a marker line never finished by a newline still counts, after a moment
      if (markerSeen !== null && Date.now() - markerSeen > 2000) {
        const at = window.lastIndexOf(o.marker);
        return { ready: true, reason: 'marker', ms: elapsed, tail: tailOf(window), line: lineAt(window, Math.max(0, at), window.length) };
      }
      if (elapsed >= o.timeoutMs) return { ready: false, reason: 'timeout', ms: elapsed, tail: tailOf(window) };
      if (o.signal?.aborted) return { ready: false, reason: 'aborted', ms: elapsed, tail: tailOf(window) };
      if (o.isAlive && Date.now() - lastAlive > (o.aliveEveryMs ?? 1000)) {
        lastAlive = Date.now();
        const alive = await o.isAlive();
        if (alive !== true) {
          // one last read: the marker may have been written just before it stopped
          // (not after a restart: that marker would be the new instance's)
          if (alive === false && (await fileSize(o.logPath)) > offset) continue;
          return { ready: false, reason: alive === false ? 'stopped' : 'restarted', ms: Date.now() - t0, tail: tailOf(window) };
        }
      }
      // wake on a change of the file, or re-check after a short while (watch can miss events)
      await new Promise<void>((res) => {
        const t = setTimeout(res, Math.min(250, o.timeoutMs - elapsed));
        wake = () => {
          clearTimeout(t);
          res();
        };
      });
    }
  } finally {
    watcher?.close();
  }
}

function lineAt(text: string, at: number, eol: number): string {
  return text.slice(text.lastIndexOf('\n', at) + 1, eol).replace(/[^\x20-\x7e\t]/g, '').trim();
}

function tailOf(text: string): string {
  return text.split(/\r?\n/).slice(-10).join('\n').replace(/[^\x20-\x7e\n\t]/g, '');
}
