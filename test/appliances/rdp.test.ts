// Acceptance: the thin-client appliances do their job, not only boot.
// - sbc-desktop boots under QEMU with users, password hashes, the RDP port and an SSH key
//   given as host settings (nothing baked in); a real RDP client (xfreerdp in Xvfb) with a
//   wrong password gets xrdp's refusal and no session, with the right one an XFCE session.
// - thin-client boots next to it with broker.url pointing at it: the kiosk's X shows the
//   server's login screen full screen, and keys typed at the kiosk log a user in.
// Evidence from both sides: screenshots (colours, no OCR) and, inside the desktop server
// over SSH, sesman's log and the user's xfce4-session process.
// Slow (two image builds, two TCG boots): skipped with LOOPSHIP_FAST=1 or when not root.
// LOOPSHIP_APPLIANCE_CACHE=<dir> keeps the built images between runs while the recipes are unchanged.
import test from 'ava';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import net from 'node:net';
import { builtImage, configuredDisk, guestSsh, passwordHash, sshKeyPair, startGuest, type Guest, type BuiltImage, ROOT } from './guest.js';
import { encodePng, topColours, distinctColours, type Rgb } from './pixels.js';
import { isXfceDesktop, isXrdpLogin, isXrdpRefusal } from './screens.js';
import { startXvfb, startXfreerdp, waitRdp, type Display } from './rdp.js';

const slow = !process.env.LOOPSHIP_FAST && process.getuid?.() === 0;
const ARTIFACTS = process.env.LOOPSHIP_APPLIANCE_ARTIFACTS ?? '/var/tmp/loopship-appliances-last';
const PASSWORD = 'Correct-Horse-7';
const RDP_PORT_IN_GUEST = '3390'; // not xrdp's default: proves the host setting is applied

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

const describe = (img: Rgb) => JSON.stringify({ top: topColours(img, undefined, 4), distinct: distinctColours(img) });

async function saveShot(name: string, img: Rgb): Promise<string> {
  await mkdir(ARTIFACTS, { recursive: true });
  const p = join(ARTIFACTS, `${name}.png`);
  await writeFile(p, encodePng(img));
  return p;
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs / 1000} s${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, 3000));
  }
}

interface Ctx {
  work: string;
  sbc: Guest;
  thin: Guest;
  sbcBuilt: BuiltImage;
  thinBuilt: BuiltImage;
  rdpPort: number;
  sshPort: number;
  key: string;
  displays: Display[];
}
let ctx: Ctx | undefined;
/** what to undo at the end, newest first: also after a hook that failed half-way */
const cleanups: (() => Promise<unknown>)[] = [];

const serial = slow ? test.serial : test.serial.skip;

test.before(async (t) => {
  if (!slow) return;
  t.timeout(40 * 60_000);
  const work = await mkdtemp('/var/tmp/loopship-appliances-');
  cleanups.unshift(() => rm(work, { recursive: true, force: true }));
  const t0 = Date.now();
  const sbcBuilt = await builtImage(join(ROOT, 'recipes/sbc-desktop'), work);
  const thinBuilt = await builtImage(join(ROOT, 'recipes/thin-client'), work);
  t.log(`builds: sbc-desktop ${sbcBuilt.buildSeconds.toFixed(0)} s, thin-client ${thinBuilt.buildSeconds.toFixed(0)} s (0 = reused), total ${((Date.now() - t0) / 1000).toFixed(0)} s`);

  const { key, pub } = await sshKeyPair(work);
  const hash = await passwordHash(PASSWORD);
  const [rdpPort, sshPort] = [await freePort(), await freePort()];
  const sbcDisk = await configuredDisk(sbcBuilt, join(work, 'sbc'), {
    hostname: 'sbc-accept',
    users: 'alice,bob',
    'users.password_hashes': `alice:${hash},bob:${hash}`,
    'rdp.port': RDP_PORT_IN_GUEST,
    'ssh.authorized_keys': pub,
  });
  // QEMU's user network: the thin client reaches the host as 10.0.2.2, the host forwards to the desktop server
  const thinDisk = await configuredDisk(thinBuilt, join(work, 'thin'), { hostname: 'thin-accept', 'broker.url': `rdp://10.0.2.2:${rdpPort}` });
  const keepConsole = (g: Guest) => async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    await writeFile(join(ARTIFACTS, `${g.name}.console.log`), await g.console());
  };
  const sbc = await startGuest({ name: 'sbc-desktop', dir: join(work, 'sbc'), built: sbcBuilt, disk: sbcDisk.disk, forwards: [{ host: rdpPort, guest: Number(RDP_PORT_IN_GUEST) }, { host: sshPort, guest: 22 }] });
  cleanups.unshift(() => sbc.stop(), keepConsole(sbc));
  const thin = await startGuest({ name: 'thin-client', dir: join(work, 'thin'), built: thinBuilt, disk: thinDisk.disk, uefi: true });
  cleanups.unshift(() => thin.stop(), keepConsole(thin));
  ctx = { work, sbc, thin, sbcBuilt, thinBuilt, rdpPort, sshPort, key, displays: [] };
});

test.after.always(async () => {
  for (const d of ctx?.displays ?? []) await d.stop().catch(() => {});
  for (const undo of cleanups) await undo().catch(() => {});
});

serial('sbc-desktop: xrdp answers on the host-set port; a wrong password is refused, the right one gets an XFCE session', async (t) => {
  t.timeout(40 * 60_000);
  const c = ctx!;
  const ssh = (cmd: string) => guestSsh(c.sshPort, c.key, cmd);
  const alive = () => {
    try {
      process.kill(c.sbc.pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const rdpMs = await waitRdp(c.rdpPort, 25 * 60_000, alive);
  t.log(`sbc-desktop: boot to RDP answering ${((Date.now() - c.sbc.startedAt) / 1000).toFixed(0)} s`);
  t.truthy(rdpMs >= 0);
  const ready = await c.sbc.waitConsole(/LOOPSHIP-READY/, 10 * 60_000);
  t.regex(ready, /LOOPSHIP-READY hostname=sbc-accept version=1\.0\.0/);

  // inside: xrdp listens where the setting says, the users exist with the site's hash, nothing else has a password
  const inside = await until('SSH into the desktop server', 5 * 60_000, async () => {
    // listening sockets on the port (state 0A), from /proc: minbase has no ss or netstat
    const hexPort = Number(RDP_PORT_IN_GUEST).toString(16).toUpperCase().padStart(4, '0');
    const r = await ssh(`awk '$4 == "0A" {print $2}' /proc/net/tcp /proc/net/tcp6 | grep -c ':${hexPort}$'; id -nG alice; getent shadow alice | cut -d: -f2 | cut -c1-3; getent shadow root | cut -d: -f2`);
    return r.exitCode === 0 ? r.stdout.split('\n') : undefined;
  });
  t.is(Number(inside[0]) > 0, true, 'xrdp listens on the port from rdp.port');
  t.regex(inside[1], /\bsbc-users\b/);
  t.is(inside[2], '$6$', "alice's password is the hash from users.password_hashes");
  t.regex(inside[3], /^[!*]/, 'root has no password');
  const memUsed = async () => {
    const m = /Mem:\s+(\d+)\s+\d+\s+\d+\s+\d+\s+\d+\s+(\d+)/.exec((await ssh('free -m')).stdout);
    return m ? Number(m[1]) - Number(m[2]) : NaN;
  };
  const idle = await memUsed();

  const display = await startXvfb(join(c.work, 'xvfb'));
  c.displays.push(display);

  // wrong password: xrdp says the login failed; no session for alice
  const wrong = startXfreerdp(display.display, { port: c.rdpPort, user: 'alice', password: 'not-the-password' });
  const refused = await until("xrdp's refusal after a wrong password", 5 * 60_000, async () => {
    const img = await display.screenshot();
    return isXrdpRefusal(img) ? img : undefined;
  });
  const authfail = await until('sesman logging the refused login', 2 * 60_000, async () => {
    const r = await ssh("grep -h -i -E 'AUTHFAIL|authentication failed|login failed' /var/log/xrdp-sesman.log /var/log/xrdp.log 2>/dev/null | grep -i alice | tail -1");
    return r.stdout.trim() || undefined;
  });
  t.log(`wrong password: ${authfail}`);
  t.is((await ssh('pgrep -u alice -c xfce4-session')).stdout.trim(), '0', 'no session for a wrong password');
  t.log(`login screen: ${await saveShot('sbc-wrong-password', refused)} ${describe(refused)}`);
  await wrong.stop();

  // right password: the session starts and the client shows the XFCE desktop
  const right = startXfreerdp(display.display, { port: c.rdpPort, user: 'alice', password: PASSWORD });
  const sessionPid = await until('xfce4-session for alice', 10 * 60_000, async () => (await ssh('pgrep -u alice xfce4-session')).stdout.trim() || undefined);
  t.regex(sessionPid, /^\d+$/);
  const desktop = await until('the XFCE desktop on the client', 10 * 60_000, async () => {
    const img = await display.screenshot();
    return isXfceDesktop(img) ? img : undefined;
  }).catch(async (err) => {
    const img = await display.screenshot();
    t.log(`last client screen: ${await saveShot('sbc-session-timeout', img)} ${describe(img)}; client: ${right.output().slice(-2000)}`);
    throw err;
  });
  t.log(`desktop: ${await saveShot('sbc-desktop-session', desktop)} ${describe(desktop)}`);
  t.true(isXfceDesktop(desktop));
  const granted = (await ssh("grep -h 'login successful for user alice' /var/log/xrdp.log | tail -1")).stdout.trim();
  t.regex(granted, /login successful for user alice/);
  const withSession = await memUsed();
  t.log(`sbc-desktop memory used (MemTotal - MemAvailable): idle ${idle} MiB, with one session ${withSession} MiB`);
  t.true(withSession > idle);
  await right.stop();
});

serial('thin-client: the kiosk shows the desktop server\'s login screen full screen and a user typing at it gets the desktop', async (t) => {
  t.timeout(40 * 60_000);
  const c = ctx!;
  const ssh = (cmd: string) => guestSsh(c.sshPort, c.key, cmd);
  const announced = await c.thin.waitConsole(/loopship-kiosk: broker=/, 25 * 60_000);
  t.is(announced, `loopship-kiosk: broker=10.0.2.2:${c.rdpPort} security=tls`);
  const ready = await c.thin.waitConsole(/LOOPSHIP-READY/, 10 * 60_000);
  t.regex(ready, /LOOPSHIP-READY hostname=thin-accept version=1\.0\.0/);
  await waitRdp(c.rdpPort, 25 * 60_000);

  const login = await until('xrdp login screen on the kiosk display', 10 * 60_000, async () => {
    const img = await c.thin.screenshot();
    return isXrdpLogin(img) ? img : undefined;
  }).catch(async (err) => {
    const img = await c.thin.screenshot().catch(() => null);
    if (img) t.log(`last kiosk screen: ${await saveShot('kiosk-timeout', img)} ${describe(img)}`);
    throw err;
  });
  t.log(`kiosk: ${await saveShot('kiosk-login', login)} ${describe(login)}`);
  t.true(isXrdpLogin(login));

  // a person at the kiosk: user name, Tab, password, Enter
  await c.thin.type(`bob\t${PASSWORD}\n`);
  await until('xfce4-session for bob (logged in at the kiosk)', 10 * 60_000, async () => (await ssh('pgrep -u bob xfce4-session')).stdout.trim() || undefined);
  const desktop = await until('the XFCE desktop on the kiosk display', 10 * 60_000, async () => {
    const img = await c.thin.screenshot();
    return isXfceDesktop(img) ? img : undefined;
  });
  t.log(`kiosk session: ${await saveShot('kiosk-desktop', desktop)} ${describe(desktop)}`);
  t.true(isXfceDesktop(desktop));
});
