// The RDP side of the acceptance tests: whether an RDP server really answers on a port,
// and a real RDP client (FreeRDP's xfreerdp from Debian) running in a virtual X display
// (Xvfb) whose screen the test reads back.
import { execa, type ResultPromise } from 'execa';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { parseXwd, type Rgb } from './pixels.js';

/**
 * Sends an X.224 Connection Request (with an RDP negotiation request for TLS) and resolves
 * true on a Connection Confirm. A plain TCP connect proves nothing through QEMU's user
 * networking: the host side accepts even when nothing listens in the guest.
 */
export function rdpAnswers(port: number, host = '127.0.0.1', timeoutMs = 10_000): Promise<boolean> {
  return new Promise((resolve) => {
    const negReq = Buffer.from([0x01, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00]); // TYPE_RDP_NEG_REQ, PROTOCOL_SSL
    const x224 = Buffer.concat([Buffer.from([6 + negReq.length, 0xe0, 0, 0, 0, 0, 0]), negReq]);
    const tpkt = Buffer.concat([Buffer.from([0x03, 0x00, 0x00, 4 + x224.length]), x224]);
    const sock = connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    let got = Buffer.alloc(0);
    sock.on('connect', () => sock.write(tpkt));
    sock.on('data', (d) => {
      got = Buffer.concat([got, d]);
      // TPKT version 3, then the X.224 length indicator and the CC code 0xD0
      if (got.length >= 6) done(got[0] === 0x03 && (got[5] & 0xf0) === 0xd0);
    });
    sock.on('error', () => done(false));
    sock.on('close', () => done(false));
  });
}

export async function waitRdp(port: number, timeoutMs: number, alive: () => boolean = () => true): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (await rdpAnswers(port)) return Date.now() - t0;
    if (!alive()) throw new Error('the guest stopped before its RDP server answered');
    await new Promise((r) => setTimeout(r, 2000));
  }
  throw new Error(`no RDP server answered on port ${port} within ${timeoutMs / 1000} s`);
}

export interface Display {
  display: string;
  screenshot(): Promise<Rgb>;
  stop(): Promise<void>;
}

/** An Xvfb display whose screen is a file we can read (-fbdir writes it as XWD). */
export async function startXvfb(dir: string, size = '1024x768'): Promise<Display> {
  await mkdir(dir, { recursive: true });
  const proc = execa('Xvfb', ['-displayfd', '3', '-screen', '0', `${size}x24`, '-fbdir', dir, '-nolisten', 'tcp', '-noreset'], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    reject: false,
  });
  const display = await new Promise<string>((resolve, reject) => {
    let out = '';
    const fd3 = proc.stdio[3] as NodeJS.ReadableStream;
    fd3.on('data', (d) => {
      out += d.toString();
      if (out.includes('\n')) resolve(`:${out.trim()}`);
    });
    proc.then((r) => reject(new Error(`Xvfb exited: ${r.stderr}`)));
  });
  return {
    display,
    screenshot: async () => parseXwd(await readFile(join(dir, 'Xvfb_screen0'))),
    stop: async () => {
      proc.kill('SIGTERM');
      await proc;
      await rm(join(dir, 'Xvfb_screen0'), { force: true });
    },
  };
}

export interface RdpClient {
  proc: ResultPromise;
  output(): string;
  stop(): Promise<void>;
}

/** xfreerdp in `display`, logging in with the given credentials (the server may refuse them). */
export function startXfreerdp(display: string, o: { port: number; user?: string; password?: string; size?: string; extra?: string[] }): RdpClient {
  let out = '';
  const args = [
    `/v:127.0.0.1:${o.port}`, '/cert:ignore', '/sec:tls', `/size:${o.size ?? '1024x768'}`, '-grab-keyboard', '/log-level:INFO',
    ...(o.user ? [`/u:${o.user}`] : []), ...(o.password !== undefined ? [`/p:${o.password}`] : []), ...(o.extra ?? []),
  ];
  const proc = execa('xfreerdp', args, { env: { DISPLAY: display, HOME: '/tmp' }, reject: false, all: true, stdin: 'ignore' });
  proc.all?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return {
    proc,
    output: () => out,
    stop: async () => {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await proc;
      clearTimeout(t);
    },
  };
}
