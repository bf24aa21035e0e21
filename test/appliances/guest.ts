// Appliance guests for the acceptance tests: build a recipe (or reuse an earlier build),
// write host settings into a copy of its image the way the agent does (settings checked
// by the agent's own validation, written by its configure code through a loop mount),
// and boot it with the agent's QEMU arguments plus what a test needs on top: ports
// forwarded from the host, UEFI firmware for a framebuffer, a QMP socket for screenshots
// and key presses.
import { execa } from 'execa';
import { access, copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { qemuArgs, qmpCommand } from '../../client-agent/backends/qemu.js';
import { stableMac, type DomainSpec } from '../../client-agent/backends/types.js';
import { withMountedImage } from '../../client-agent/mount.js';
import { writeHostSettings } from '../../client-agent/configure.js';
import { resolveSettings } from '../../client-agent/settings.js';
import { StateDir } from '../../client-agent/state.js';
import { defaultExec } from '../../client-agent/exec.js';
import type { Manifest } from '../../format/index.js';
import { loadRecipe, type Recipe } from '../../builder/index.js';
import { parsePpm, type Rgb } from './pixels.js';

export const ROOT = process.cwd();

export interface BuiltImage {
  recipe: Recipe;
  digest: string;
  image: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  /** seconds the build took; 0 when an earlier build was reused */
  buildSeconds: number;
}

/**
 * The recipe's image, kernel and initrd. With LOOPSHIP_APPLIANCE_CACHE=<dir>, a build is
 * kept there under the recipe digest and reused while the recipe is unchanged (for
 * working on the tests); otherwise it is built into `work`.
 */
export async function builtImage(recipeDir: string, work: string): Promise<BuiltImage> {
  const loaded = await loadRecipe(recipeDir);
  const cacheRoot = process.env.LOOPSHIP_APPLIANCE_CACHE;
  const cached = cacheRoot ? join(cacheRoot, `${loaded.recipe.name}-${loaded.digest.slice(0, 16)}`) : null;
  const files = (dir: string) => ({ image: join(dir, 'disk.img'), kernel: join(dir, 'kernel'), initrd: join(dir, 'initrd'), cmdlineFile: join(dir, 'cmdline') });
  if (cached && (await access(join(cached, 'cmdline')).then(() => true, () => false))) {
    const f = files(cached);
    return { recipe: loaded.recipe, digest: loaded.digest, ...f, cmdline: (await readFile(f.cmdlineFile, 'utf8')).trim(), buildSeconds: 0 };
  }
  const { build } = await import('../../builder/index.js');
  const t0 = Date.now();
  const r = await build({ recipe: recipeDir, output: { kind: 'image' }, workDir: work, keepWork: true });
  const buildSeconds = (Date.now() - t0) / 1000;
  const out = { image: r.image.path!, kernel: r.kernel.path!, initrd: r.initrd.path! };
  if (!cached) return { recipe: loaded.recipe, digest: loaded.digest, ...out, cmdline: r.cmdline, buildSeconds };
  await mkdir(cached, { recursive: true });
  const f = files(cached);
  await execa('cp', ['--sparse=always', out.image, f.image]);
  await copyFile(out.kernel, f.kernel);
  await copyFile(out.initrd, f.initrd);
  await writeFile(f.cmdlineFile, r.cmdline + '\n'); // written last: marks the entry complete
  return { recipe: loaded.recipe, digest: loaded.digest, ...f, cmdline: r.cmdline, buildSeconds };
}

/**
 * A sparse copy of the built image with host settings written in, as `loopship-agent
 * configure` does: declared defaults applied, every value checked by its declared type.
 */
export async function configuredDisk(built: BuiltImage, dir: string, given: Record<string, string>): Promise<{ disk: string; settings: Record<string, string> }> {
  await mkdir(dir, { recursive: true });
  const disk = join(dir, 'disk.img');
  await execa('cp', ['--sparse=always', built.image, disk]);
  const manifest = { name: built.recipe.name, version: built.recipe.version, settings: built.recipe.settings } as unknown as Manifest;
  const settings = resolveSettings(manifest.settings, given, built.recipe.name);
  const state = new StateDir(join(dir, 'state'));
  await state.init();
  await withMountedImage({ exec: defaultExec, state }, disk, built.recipe.name, (mp) =>
    writeHostSettings(mp, manifest, settings, { host: 'acceptance', configuredAt: new Date().toISOString() }),
  );
  return { disk, settings };
}

export interface GuestOptions {
  name: string;
  dir: string;
  built: BuiltImage;
  disk: string;
  memory?: number;
  vcpus?: number;
  /** host port on 127.0.0.1 -> guest TCP port */
  forwards?: { host: number; guest: number }[];
  /** boot through UEFI firmware: its GOP framebuffer is the display the cloud kernel can drive (efifb) */
  uefi?: boolean;
}

export interface Guest {
  name: string;
  pid: number;
  consoleLog: string;
  qmpSocket: string;
  startedAt: number;
  console(): Promise<string>;
  /** resolves with the first console line matching `re`, from the match on */
  waitConsole(re: RegExp, timeoutMs: number): Promise<string>;
  qmp(execute: string, args?: Record<string, unknown>): Promise<unknown>;
  screenshot(): Promise<Rgb>;
  /** types text on the guest keyboard (letters, digits, a few symbols; "\n" = Enter, "\t" = Tab) */
  type(text: string): Promise<void>;
  stop(): Promise<void>;
}

export const OVMF = '/usr/share/ovmf/OVMF.fd';

/** The agent's qemu arguments for this appliance, with the test's additions. */
export function guestArgs(o: GuestOptions, files: { pidFile: string; qmpSocket: string; consoleLog: string }): string[] {
  const r = o.built.recipe;
  const spec: DomainSpec = {
    name: o.name, version: r.version, type: r.boot.type, kernel: o.built.kernel, initrd: o.built.initrd, disk: o.disk, dataDisk: null,
    cmdline: o.built.cmdline, memory: o.memory ?? r.xen.memory, vcpus: o.vcpus ?? r.xen.vcpus, nics: 1, macs: [stableMac('acceptance', o.name)],
  };
  const args = qemuArgs(spec, files, ['tcg']);
  const nic = args.indexOf('-nic') + 1;
  args[nic] += (o.forwards ?? []).map((f) => `,hostfwd=tcp:127.0.0.1:${f.host}-:${f.guest}`).join('');
  if (o.uefi) args.push('-bios', OVMF);
  return args;
}

export async function startGuest(o: GuestOptions): Promise<Guest> {
  await mkdir(o.dir, { recursive: true });
  const files = { pidFile: join(o.dir, `${o.name}.pid`), qmpSocket: join(o.dir, `${o.name}.qmp`), consoleLog: join(o.dir, `${o.name}.console.log`) };
  for (const f of Object.values(files)) await rm(f, { force: true });
  const startedAt = Date.now();
  await execa('qemu-system-x86_64', guestArgs(o, files), { timeout: 60_000 });
  const pid = Number((await readFile(files.pidFile, 'utf8')).trim());
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const qmp = (execute: string, args?: Record<string, unknown>) => qmpCommand(files.qmpSocket, execute, 30_000, args);
  const readConsole = () => readFile(files.consoleLog, 'utf8').catch(() => '');
  const guest: Guest = {
    name: o.name,
    pid,
    startedAt,
    consoleLog: files.consoleLog,
    qmpSocket: files.qmpSocket,
    console: readConsole,
    async waitConsole(re, timeoutMs) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const line = (await readConsole()).split('\n').find((l) => re.test(l));
        // from the match on: a getty prompt without a newline may share the line
        if (line !== undefined) return line.slice(line.search(re)).trim();
        if (!alive()) throw new Error(`${o.name}: qemu exited while waiting for ${re}; console tail:\n${(await readConsole()).slice(-3000)}`);
        if (Date.now() > end) throw new Error(`${o.name}: no console line matching ${re} within ${timeoutMs / 1000} s; tail:\n${(await readConsole()).slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    },
    qmp,
    async screenshot() {
      const file = join(o.dir, `${o.name}.screen.ppm`);
      await rm(file, { force: true });
      await qmp('screendump', { filename: file });
      return parsePpm(await readFile(file));
    },
    async type(text) {
      for (const ch of text) {
        const keys = keysFor(ch);
        await qmp('send-key', { keys: keys.map((k) => ({ type: 'qcode', data: k })), 'hold-time': 60 });
        await new Promise((r) => setTimeout(r, 120));
      }
    },
    async stop() {
      if (!alive()) return;
      await qmp('quit').catch(() => {});
      for (let i = 0; i < 50 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
      if (alive()) process.kill(pid, 'SIGKILL');
    },
  };
  return guest;
}

/** QEMU key codes for one character of US-layout text. */
export function keysFor(ch: string): string[] {
  if (/^[a-z0-9]$/.test(ch)) return [ch];
  if (/^[A-Z]$/.test(ch)) return ['shift', ch.toLowerCase()];
  const named: Record<string, string[]> = {
    '\n': ['ret'], '\t': ['tab'], ' ': ['spc'], '-': ['minus'], '_': ['shift', 'minus'], '.': ['dot'], ',': ['comma'],
    '/': ['slash'], '!': ['shift', '1'], '@': ['shift', '2'], '#': ['shift', '3'], '=': ['equal'], '+': ['shift', 'equal'],
  };
  const k = named[ch];
  if (!k) throw new Error(`no key for ${JSON.stringify(ch)}`);
  return k;
}

/** A command in the guest over SSH as root (the key went in through ssh.authorized_keys). */
export async function guestSsh(port: number, key: string, command: string, timeoutMs = 120_000): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const r = await execa('ssh', [
    '-i', key, '-p', String(port), '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'ConnectTimeout=20', '-o', 'LogLevel=ERROR', 'root@127.0.0.1', command,
  ], { reject: false, timeout: timeoutMs });
  return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 };
}

export async function sshKeyPair(dir: string): Promise<{ key: string; pub: string }> {
  const key = join(dir, 'id_ed25519');
  await rm(key, { force: true });
  await rm(`${key}.pub`, { force: true });
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'acceptance', '-f', key]);
  return { key, pub: (await readFile(`${key}.pub`, 'utf8')).trim() };
}

/** A crypt(3) SHA-512 hash, as a site would put into users.password_hashes. */
export async function passwordHash(password: string): Promise<string> {
  return (await execa('openssl', ['passwd', '-6', '-stdin'], { input: password })).stdout.trim();
}
