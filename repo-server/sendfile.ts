// Zero-copy response bodies: the optional native addon in native/ (sendfile(2) driven by
// Node's event loop) and the response-side protocol around it. Without the addon (not
// built, not Linux, or LOOPSHIP_NO_SENDFILE=1) static.ts copies bodies in JavaScript.
//
// Protocol per response: the headers go out through Node (res.write('') with a callback,
// which fires once the kernel has them), then the addon sends the body straight from the
// page cache to the socket while nothing else writes to it (Node attaches a pipelined
// response to the socket only after this one ends), then res.end(). If the client goes
// away the addon is cancelled (socket 'close'); if the file turns out shorter than the
// promised Content-Length, the connection is cut. Node's idle timer cannot see the
// addon's writes, so a 'timeout' during the body is answered by re-arming the timer when
// bytes moved since the last one, else by closing the socket as Node would.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import type { Socket } from 'node:net';
import type { ServerResponse } from 'node:http';

/** A running transfer (an opaque native handle). */
export type SendfileHandle = { readonly __sendfile: unique symbol };

export interface SendfileAddon {
  /** Sends what fits now; all sent: the count (no callback), else a handle and one callback later. Throws errors of the first attempt. */
  start(sockFd: number, fileFd: number, offset: number, length: number, cb: (err: NodeJS.ErrnoException | null, sent: number) => void): number | SendfileHandle;
  /** stops a transfer (no callback); its socket dup is closed */
  cancel(h: SendfileHandle): void;
  /** bytes sent so far */
  sent(h: SendfileHandle): number;
}

export interface BodyPath {
  addon: SendfileAddon | null;
  /** for the log: which path and why */
  why: string;
}

const ADDON = 'loopship_sendfile.node';
// from repo-server/ (tsx) and from dist/repo-server/ (compiled)
const CANDIDATES = [`./native/build/Release/${ADDON}`, `../../repo-server/native/build/Release/${ADDON}`];

let cached: BodyPath | undefined;

/**
 * The addon if it can be used here, loaded once per process. `candidates` (paths relative
 * to this module, tried in order) is for tests; only the default lookup is cached.
 */
export function loadSendfile(env: NodeJS.ProcessEnv = process.env, candidates?: string[]): BodyPath {
  if (env.LOOPSHIP_NO_SENDFILE === '1') return { addon: null, why: 'JS copy (LOOPSHIP_NO_SENDFILE=1)' };
  if (!candidates && cached) return cached;
  const found = find(candidates ?? CANDIDATES);
  if (!candidates) cached = found;
  return found;
}

function find(candidates: string[]): BodyPath {
  if (process.platform !== 'linux') return { addon: null, why: `JS copy (no sendfile addon on ${process.platform})` };
  const require = createRequire(import.meta.url);
  let lastErr = 'not built (npm run build:native)';
  for (const rel of candidates) {
    const file = new URL(rel, import.meta.url);
    if (!fs.existsSync(file)) continue;
    try {
      const addon = require(file.pathname) as SendfileAddon;
      if (typeof addon.start === 'function' && typeof addon.cancel === 'function' && typeof addon.sent === 'function') return { addon, why: 'sendfile (zero-copy addon)' };
      lastErr = `${file.pathname} is not the sendfile addon`;
    } catch (err) {
      lastErr = `cannot load ${file.pathname}: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  return { addon: null, why: `JS copy (sendfile addon ${lastErr})` };
}

/** The socket's descriptor when sendfile may write to it: an open, unencrypted stream socket. */
export function socketFd(socket: Socket | null | undefined): number | null {
  if (!socket || socket.destroyed || (socket as Socket & { encrypted?: boolean }).encrypted) return null;
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/** The client went away: nothing to report. */
export function isDisconnect(err: NodeJS.ErrnoException): boolean {
  return err.code === 'EPIPE' || err.code === 'ECONNRESET' || err.code === 'ENOTCONN' || err.code === 'ECONNABORTED';
}

export interface BodyHooks {
  /** closes the file descriptor (exactly once, whatever happens) */
  closeFd(): void;
  /** the socket cannot take sendfile after all: send the body the JS way (owns the fd from then on) */
  fallback(): void;
  /** a failure that is not the client's going away */
  onError(err: NodeJS.ErrnoException): void;
}

/**
 * Sends `length` bytes of the file from `offset` as the body of `res`, whose status and
 * headers are set (writeHead) but not yet sent.
 */
export function sendFileBody(res: ServerResponse, addon: SendfileAddon, fileFd: number, offset: number, length: number, hooks: BodyHooks): void {
  let state: 'headers' | 'body' | 'done' = 'headers';
  let handle: SendfileHandle | null = null;
  let socket: Socket | null = null;
  let lastSent = 0;

  const finish = () => {
    state = 'done';
    handle = null;
    res.off('close', onClose);
    res.off('timeout', onTimeout);
    socket?.off('close', onClose);
    hooks.closeFd();
  };
  const fail = (err: NodeJS.ErrnoException) => {
    finish();
    if (!isDisconnect(err)) hooks.onError(err);
    res.destroy(); // the status line is out: a short body is the only way to say it failed
  };
  // the socket is gone (client away, server closing, timed out): stop before closing the fd
  function onClose() {
    if (state === 'done') return;
    if (handle) addon.cancel(handle);
    finish();
  }
  function onTimeout() {
    if (!handle || !socket) return;
    const now = addon.sent(handle);
    if (now > lastSent) {
      lastSent = now;
      socket.setTimeout(socket.timeout ?? 0); // re-arm: the client is slow, not gone
    } else {
      socket.destroy();
    }
  }
  const done = (err: NodeJS.ErrnoException | null) => {
    if (state !== 'body') return;
    if (err) return fail(err);
    finish();
    res.end();
  };

  res.on('close', onClose);
  res.write('', (err) => {
    if (state !== 'headers') return;
    if (err) return onClose();
    socket = res.socket;
    const sfd = socketFd(socket);
    if (sfd === null || socket!.writableLength > 0) {
      state = 'done';
      res.off('close', onClose);
      return hooks.fallback();
    }
    let r: number | SendfileHandle;
    try {
      r = addon.start(sfd, fileFd, offset, length, done);
    } catch (e) {
      state = 'body';
      return fail(e as NodeJS.ErrnoException);
    }
    if (typeof r === 'number') {
      finish();
      res.end();
      return;
    }
    handle = r;
    state = 'body';
    socket!.on('close', onClose);
    res.on('timeout', onTimeout);
  });
}
