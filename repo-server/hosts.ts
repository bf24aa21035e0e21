// Per-host credentials. A site token may enrol each host name once: the server answers a
// fresh random token for that host and keeps only its sha256, one file per host:
//   STATE_DIR/hosts/                      0700
//   STATE_DIR/hosts/SITE/                 0700
//   STATE_DIR/hosts/SITE/HOST.json        0600  {site, host, token_sha256, enrolled_at}
// written atomically and exclusively (temp file, fsync, link(2) to the final name, which
// fails if another enrolment won), so the first enrolment of a name is the only one until
// an operator revokes it (`loopship hosts revoke`). Every check reads the file: an
// enrolment in another `serve --workers` process or a revocation counts at once, with no
// cache to go stale. A host token names its site and host (`lsh1:SITE:HOST:SECRET`) so
// that the file is found without a scan; only the secret part is a secret.
import { constants } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import * as z from 'zod';
import { LoopshipError } from '../format/index.js';
import { createFileExclusive, fsyncDir } from '../base/atomic.js';
import { ApiError } from './api-error.js';
import { hostName, siteName, hostFileStem } from './reports.js';

export interface HostIdentity {
  site: string;
  host: string;
}

export interface Enrolment extends HostIdentity {
  /** the host's bearer token: shown once, never stored here */
  token: string;
  enrolled_at: string;
}

/** What the API needs (injected, so tests can use another). */
export interface HostCredentials {
  enrol(site: string, host: string): Promise<Enrolment>;
  /** the host a token belongs to, or null (unknown, revoked, malformed) */
  authenticate(token: string): Promise<HostIdentity | null>;
  /** true when there was an enrolment to remove; the name stays barred until allow() */
  revoke(site: string, host: string): Promise<boolean>;
  /** lifts a revocation: the site token may enrol the name again; true when there was one */
  allow(site: string, host: string): Promise<boolean>;
}

export interface FileHostRegistryOptions {
  /** enrolled hosts in all (limits.max_hosts) */
  maxHosts: number;
  /** enrolled hosts per site (limits.max_hosts_per_site), checked first */
  maxHostsPerSite: number;
  now?: () => Date;
}

const TOKEN_PREFIX = 'lsh1';
const SECRET = /^[A-Za-z0-9_-]{43}$/; // 32 random bytes, base64url

const HostRecord = z.strictObject({
  site: siteName,
  host: hostName,
  token_sha256: z.string().regex(/^[0-9a-f]{64}$/),
  enrolled_at: z.string(),
});

/** `lsh1:SITE:HOST:SECRET` split, or null when it is not a host token at all. */
export function parseHostToken(token: string): HostIdentity | null {
  const parts = token.split(':');
  if (parts.length !== 4 || parts[0] !== TOKEN_PREFIX || !SECRET.test(parts[3])) return null;
  const [, site, host] = parts;
  if (!siteName.safeParse(site).success || !hostName.safeParse(host).success) return null;
  return { site, host };
}

export const isHostToken = (token: string): boolean => parseHostToken(token) !== null;

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

export class FileHostRegistry implements HostCredentials {
  readonly dir: string;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    stateDir: string,
    private readonly opts: FileHostRegistryOptions,
  ) {
    this.dir = path.join(stateDir, 'hosts');
  }

  /** The registry under `stateDir`, as it is on disk (nothing created: for `loopship hosts`). */
  static at(stateDir: string, opts: FileHostRegistryOptions): FileHostRegistry {
    return new FileHostRegistry(stateDir, opts);
  }

  /** The server's registry: STATE_DIR/hosts made (0700) if need be. */
  static async open(stateDir: string, opts: FileHostRegistryOptions): Promise<FileHostRegistry> {
    const reg = new FileHostRegistry(stateDir, opts);
    await mkdir(reg.dir, { recursive: true, mode: 0o700 });
    await chmod(reg.dir, 0o700); // also when an older run or a hand made it looser
    return reg;
  }

  /** The record's path; names are validated first, so nothing outside `dir` is reachable. */
  file(site: string, host: string): string {
    if (!siteName.safeParse(site).success) throw new ApiError(400, 'BAD_REQUEST', `invalid site name ${JSON.stringify(site)}`);
    if (!hostName.safeParse(host).success) throw new ApiError(400, 'BAD_REQUEST', `invalid host name ${JSON.stringify(host)}`);
    return path.join(this.dir, site, `${hostFileStem(host)}.json`);
  }

  /** Enrolled host names of `site` (or of every site). */
  async count(site?: string): Promise<number> {
    const sites = site !== undefined ? [site] : (await readdir(this.dir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
    let n = 0;
    for (const s of sites) {
      const names = await readdir(path.join(this.dir, s)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return [] as string[];
        throw err;
      });
      n += names.filter((f) => f.endsWith('.json') && !f.startsWith('.')).length;
    }
    return n;
  }

  enrol(site: string, host: string): Promise<Enrolment> {
    // one enrolment at a time in this process: the limit checks and the create go together
    const run = this.queue.catch(() => {}).then(() => this.enrolNow(site, host));
    this.queue = run;
    return run;
  }

  /** The mark a revocation leaves: the name stays barred (a revoked host would enrol itself again with the site token). */
  revokedMark(site: string, host: string): string {
    return path.join(this.dir, site, `${hostFileStem(host)}.revoked`);
  }

  private async enrolNow(site: string, host: string): Promise<Enrolment> {
    const file = this.file(site, host);
    if (await this.read(file)) throw enrolled(site, host);
    const mark = await lstat(this.revokedMark(site, host)).catch(() => null);
    if (mark) {
      throw new ApiError(403, 'HOST_REVOKED', `host ${host} of site ${site} was revoked (${mark.mtime.toISOString()}); it may enrol again only after an operator runs: loopship hosts allow ${site} ${host}`);
    }
    const { maxHostsPerSite, maxHosts } = this.opts;
    if ((await this.count(site)) >= maxHostsPerSite) {
      throw new ApiError(507, 'STORE_FULL', `site ${site} has enrolled its limit of ${maxHostsPerSite} hosts (limits.max_hosts_per_site); host ${host} not enrolled`);
    }
    if ((await this.count()) >= maxHosts) {
      throw new ApiError(507, 'STORE_FULL', `the server has enrolled its limit of ${maxHosts} hosts (limits.max_hosts); host ${host} of site ${site} not enrolled`);
    }
    const token = `${TOKEN_PREFIX}:${site}:${host}:${randomBytes(32).toString('base64url')}`;
    const enrolledAt = (this.opts.now?.() ?? new Date()).toISOString();
    const record = { site, host, token_sha256: sha256(token).toString('hex'), enrolled_at: enrolledAt };
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    if (!(await createExclusive(file, JSON.stringify(record, null, 2) + '\n'))) throw enrolled(site, host);
    return { site, host, token, enrolled_at: enrolledAt };
  }

  async authenticate(token: string): Promise<HostIdentity | null> {
    const claimed = parseHostToken(token);
    if (!claimed) return null;
    const record = await this.read(this.file(claimed.site, claimed.host));
    if (!record || record.site !== claimed.site || record.host.toLowerCase() !== claimed.host.toLowerCase()) return null;
    if (!timingSafeEqual(sha256(token), Buffer.from(record.token_sha256, 'hex'))) return null;
    return { site: record.site, host: record.host };
  }

  async revoke(site: string, host: string): Promise<boolean> {
    const file = this.file(site, host);
    // lstat, not read: a damaged record (or a planted symlink) must be removable too
    if (!(await lstat(file).catch(() => null))) return false;
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    // the mark first: between the two steps the name is barred either way
    await createExclusive(this.revokedMark(site, host), JSON.stringify({ site, host, revoked_at: (this.opts.now?.() ?? new Date()).toISOString() }) + '\n').catch(() => false);
    await rm(file, { force: true });
    await fsyncDir(path.dirname(file));
    return true;
  }

  async allow(site: string, host: string): Promise<boolean> {
    const mark = this.revokedMark(site, host);
    if (!(await lstat(mark).catch(() => null))) return false;
    await rm(mark, { force: true });
    await fsyncDir(path.dirname(mark));
    return true;
  }

  /** The record in `file`, or null when there is none; never follows a symlink. */
  private async read(file: string): Promise<z.infer<typeof HostRecord> | null> {
    let text: string;
    try {
      const fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      try {
        if (!(await fh.stat()).isFile()) throw new Error('not a regular file');
        text = await fh.readFile('utf8');
      } finally {
        await fh.close();
      }
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new LoopshipError('IO', `cannot read a host enrolment (${(cause as Error).message})`, { where: file, cause });
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = undefined;
    }
    const r = HostRecord.safeParse(value);
    if (!r.success) throw new LoopshipError('IO', 'a host enrolment file is damaged (revoke it to enrol the host again)', { where: file });
    return r.data;
  }
}

const enrolled = (site: string, host: string) =>
  new ApiError(409, 'HOST_ENROLLED', `host ${host} of site ${site} is already enrolled; its own token must be used (a re-installed host: an operator runs loopship hosts revoke ${site} ${host}, then loopship hosts allow ${site} ${host})`);

/** Writes `data` as `file` (0600) only if no such file exists; false if one did. */
async function createExclusive(file: string, data: string): Promise<boolean> {
  try {
    return await createFileExclusive(file, data, { mode: 0o600 });
  } catch (err) {
    throw new LoopshipError('IO', `cannot store the host enrolment (${(err as Error).message})`, { where: file, cause: err });
  }
}
