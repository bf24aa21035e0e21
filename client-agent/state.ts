// The agent's state directory (default /var/lib/loopship):
//   trust/root.json, trust/index-version     pinned/last trusted root, highest index version seen
//   appliances/<name>/<version>/             verified.img (as signed) disk.img (booted copy) kernel initrd
//                                            manifest.json manifest.json.asc (complete only)
//   appliances/<name>/.staging/<version>/    an install in progress (resumable)
//   appliances/<name>/current                symlink to <version>, swapped by rename
//   appliances/<name>/data.img               persistent data disk, survives upgrades
//   state.json                               previous versions, health, failed upgrades, last error
//   lock                                     one agent at a time
//   mnt/, run/, log/                         loop mounts, qemu pid/QMP files, consoles
// A version directory exists only once complete: it is renamed into place from staging.
// The directory is the agent's alone (0700): state.json holds settings such as password
// hashes, and root must never write through an entry someone else planted in it.
import { mkdir, readdir, rm, stat, unlink } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as z from 'zod';
import { LoopshipError } from '../format/index.js';
import { imageName, imageVersion, compareVersions } from '../format/index.js';
import { writeFileAtomic, symlinkAtomic, readLinkOrNull, fsyncDir, ensureOwnDir, readOwnFile, createOwnFile, ioError } from './fsutil.js';
import { pauseAt } from './pause.js';

const applianceState = z.object({
  previous: z.string().nullable().default(null),
  health: z.enum(['unknown', 'starting', 'healthy', 'unhealthy']).default('unknown'),
  health_checked_at: z.string().nullable().default(null),
  settings: z.record(z.string(), z.string()).default({}),
  failed_versions: z.array(z.string()).default([]),
  /** an upgrade that was under way when the agent stopped: recovered on the next run */
  pending_upgrade: z.object({ from: z.string().nullable(), to: z.string(), started_at: z.string() }).nullable().default(null),
  last_error: z.string().nullable().default(null),
  last_install: z
    .object({ version: z.string(), fetchedBytes: z.number(), reusedBytes: z.number(), fullCompressedBytes: z.number(), fetchedChunks: z.number(), reusedChunks: z.number(), seconds: z.number() })
    .nullable()
    .default(null),
  /** result of the last `verify` of the current version */
  verified: z.boolean().nullable().default(null),
  /** a move the policy refused (policy.ts): its reason is also last_error, until the repository names the installed version again */
  held: z.object({ to: z.string(), reason: z.string() }).nullable().default(null),
  /** this host's place in the rollout on its channel (format/rollout.ts), while one is under way */
  rollout: z.object({ id: z.string(), from: z.string(), to: z.string(), taking: z.boolean(), reason: z.string().nullable() }).nullable().default(null),
  /** an operator holds this host on a version (format/holds.ts) */
  operator_hold: z.object({ version: z.string(), reason: z.string(), by: z.string() }).nullable().default(null),
  /** a move installed but not switched, outside the maintenance window (windows.ts): like held, its reason is also last_error */
  waiting: z.object({ to: z.string(), opens: z.string().nullable(), reason: z.string() }).nullable().default(null),
});
export type ApplianceState = z.infer<typeof applianceState>;

const stateSchema = z.object({
  version: z.literal(1).default(1),
  appliances: z.record(z.string(), applianceState).default({}),
  last_update: z.string().nullable().default(null),
  last_error: z.string().nullable().default(null),
});
export type AgentState = z.infer<typeof stateSchema>;

export const emptyApplianceState = (): ApplianceState => applianceState.parse({});

export class StateDir {
  constructor(readonly root: string) {}

  get trustDir(): string { return join(this.root, 'trust'); }
  get rootFile(): string { return join(this.trustDir, 'root.json'); }
  get indexVersionFile(): string { return join(this.trustDir, 'index-version'); }
  get stateFile(): string { return join(this.root, 'state.json'); }
  get lockFile(): string { return join(this.root, 'lock'); }
  get mntDir(): string { return join(this.root, 'mnt'); }
  get runDir(): string { return join(this.root, 'run'); }
  get logDir(): string { return join(this.root, 'log'); }
  get appliancesDir(): string { return join(this.root, 'appliances'); }

  applianceDir(name: string): string { return join(this.appliancesDir, imageName.parse(name)); }
  versionDir(name: string, version: string): string { return join(this.applianceDir(name), imageVersion.parse(version)); }
  stagingDir(name: string, version: string): string { return join(this.applianceDir(name), '.staging', imageVersion.parse(version)); }
  currentLink(name: string): string { return join(this.applianceDir(name), 'current'); }
  dataDisk(name: string): string { return join(this.applianceDir(name), 'data.img'); }

  /** Creates the directories 0700, or checks and tightens those there (refused when not ours). */
  async init(): Promise<void> {
    await ensureOwnDir(this.root, { followLink: true });
    for (const d of [this.trustDir, this.appliancesDir, this.mntDir, this.runDir, this.logDir]) await ensureOwnDir(d);
  }

  // ---------- trust ----------

  /**
   * The rollback floor; undefined only when there is no such file (a host that never saw an
   * index). A planted, unreadable or damaged one must not lower it quietly: it is an error.
   */
  async readIndexVersion(): Promise<number | undefined> {
    let text: string;
    try {
      text = (await readOwnFile(this.indexVersionFile)).toString('utf8').trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      if (err instanceof LoopshipError) throw err;
      throw ioError(err, this.indexVersionFile, 'cannot read the rollback floor');
    }
    const n = Number(text);
    if (!/^[1-9][0-9]*$/.test(text) || !Number.isSafeInteger(n)) {
      throw new LoopshipError('METADATA_INVALID', `holds ${JSON.stringify(text.slice(0, 40))}, not an index version: the rollback floor is unknown, so no index is taken (init --force resets it)`, { where: this.indexVersionFile });
    }
    return n;
  }

  async writeIndexVersion(v: number): Promise<void> {
    await writeFileAtomic(this.indexVersionFile, `${v}\n`, { mode: 0o644, mkdir: true });
  }

  // ---------- state.json ----------

  async readState(): Promise<AgentState> {
    let text: string;
    try {
      text = (await readOwnFile(this.stateFile)).toString('utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return stateSchema.parse({});
      throw err;
    }
    try {
      return stateSchema.parse(JSON.parse(text));
    } catch (cause) {
      // written atomically, so this is damage from outside: keep it for a human, start afresh
      await keepCopy(`${this.stateFile}.corrupt-${Date.now()}`, text).catch(() => {});
      return stateSchema.parse({});
    }
  }

  async writeState(s: AgentState): Promise<void> {
    // 0600: settings may hold secrets (users.password_hashes)
    await writeFileAtomic(this.stateFile, JSON.stringify(s, null, 2) + '\n', { mode: 0o600, mkdir: true });
  }

  /** Read-modify-write of one appliance's record (we hold the lock, so no race). */
  async updateAppliance(name: string, f: (a: ApplianceState) => void): Promise<ApplianceState> {
    const s = await this.readState();
    const a = s.appliances[name] ?? emptyApplianceState();
    f(a);
    s.appliances[name] = a;
    await this.writeState(s);
    return a;
  }

  // ---------- appliances and versions ----------

  async applianceNames(): Promise<string[]> {
    try {
      return (await readdir(this.appliancesDir, { withFileTypes: true }))
        .filter((d) => d.isDirectory() && imageName.safeParse(d.name).success)
        .map((d) => d.name)
        .sort();
    } catch {
      return [];
    }
  }

  /** Complete versions on disk, oldest first. */
  async installedVersions(name: string): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(this.applianceDir(name), { withFileTypes: true });
    } catch {
      return [];
    }
    return entries
      .filter((d) => d.isDirectory() && !d.name.startsWith('.') && imageVersion.safeParse(d.name).success)
      .map((d) => d.name)
      .sort(compareVersions);
  }

  async currentVersion(name: string): Promise<string | null> {
    const t = await readLinkOrNull(this.currentLink(name));
    return t && imageVersion.safeParse(t).success ? t : null;
  }

  /** Switches `current` to an installed version, atomically. */
  async setCurrent(name: string, version: string): Promise<void> {
    await stat(join(this.versionDir(name, version), 'manifest.json')).catch((cause) => {
      throw new LoopshipError('IO', `version ${version} is not installed`, { where: this.versionDir(name, version), cause });
    });
    await pauseAt('switch');
    await symlinkAtomic(version, this.currentLink(name));
  }

  async removeVersion(name: string, version: string): Promise<void> {
    // rename first so a crash mid-delete never leaves a half version that looks complete
    const dir = this.versionDir(name, version);
    const trash = join(this.applianceDir(name), `.trash-${version}-${process.pid}`);
    const { rename } = await import('node:fs/promises');
    await rename(dir, trash);
    await fsyncDir(this.applianceDir(name));
    await rm(trash, { recursive: true, force: true });
  }

  // ---------- the lock ----------

  /**
   * One agent at a time. The lock file holds the owner's pid; a lock whose process is
   * gone (kill -9, crash) is taken over. Returns the release function.
   */
  async lock(): Promise<() => Promise<void>> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fh = await createOwnFile(this.lockFile, 0o600);
        await fh.writeFile(`${process.pid}\n`);
        await fh.sync();
        await fh.close();
        let released = false;
        return async () => {
          if (released) return;
          released = true;
          await unlink(this.lockFile).catch(() => {});
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = await this.lockOwner();
      if (owner && ourProcessAlive(owner)) {
        throw new LoopshipError('LOCKED', `another loopship-agent (pid ${owner}) is running`, { where: this.lockFile });
      }
      // stale: its owner is gone
      await unlink(this.lockFile).catch(() => {});
    }
    throw new LoopshipError('LOCKED', 'could not take the lock', { where: this.lockFile });
  }

  /** The pid in the lock, 0 when unreadable (gone meanwhile, torn); a planted lock is an error, not a stale one. */
  private async lockOwner(): Promise<number> {
    try {
      return Number((await readOwnFile(this.lockFile)).toString('utf8').trim());
    } catch (err) {
      if (err instanceof LoopshipError) throw err;
      return 0;
    }
  }
}

/** A new file, 0600 like state.json (it is a copy of one), never through a planted name. */
async function keepCopy(path: string, text: string): Promise<void> {
  const fh = await createOwnFile(path, 0o600);
  try {
    await fh.writeFile(text);
  } finally {
    await fh.close();
  }
}

/**
 * A live process of the agent's user (real uid in /proc/PID/status): what a lock or a mount
 * record names after a crash is a recycled pid when it is anyone else's, and any local user
 * can make processes until one gets that pid.
 */
export function ourProcessAlive(pid: number): boolean {
  if (!processAlive(pid)) return false;
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return false; // gone meanwhile
  }
  return /^Uid:\s+(\d+)/m.exec(status)?.[1] === String(process.getuid?.() ?? 0);
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
