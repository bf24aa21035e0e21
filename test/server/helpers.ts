// Shared fixtures for the server tests: a small repository tree on disk, raw HTTP
// requests (no URL normalisation, so traversal attempts reach the server as written),
// and a whole-tree hash to prove that nothing changed.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, readlink, writeFile, lstat } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

export const sha256hex = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

export async function tempDir(prefix = 'loopship-server-'): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), prefix));
}

export interface FixtureRepo {
  dir: string;
  chunk: { rel: string; sha: string; bytes: Buffer };
  files: Record<string, Buffer>;
}

/** A repository-shaped tree with arbitrary (unsigned) content: enough to test serving. */
export async function makeFixtureRepo(): Promise<FixtureRepo> {
  const dir = await tempDir('loopship-repo-');
  const files: Record<string, Buffer> = {};
  const put = async (rel: string, data: Buffer) => {
    await mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await writeFile(path.join(dir, rel), data);
    files[rel] = data;
  };
  const bytes = randomBytes(3 * 1024 * 1024 + 123);
  const sha = sha256hex(bytes); // name only needs to look right; the server does not check it
  const chunk = { rel: `chunks/${sha.slice(0, 2)}/${sha}`, sha, bytes };
  await put(chunk.rel, bytes);
  await put('root.json', Buffer.from('{"type":"loopship/root"}\n'));
  await put('root.json.asc', Buffer.from('-----BEGIN PGP SIGNATURE-----\n'));
  await put('root/1.json', Buffer.from('{"version":1}\n'));
  await put('index.json', Buffer.from('{"type":"loopship/index","version":1}\n'));
  await put('index.json.asc', Buffer.from('sig\n'));
  const m = Buffer.from('{"type":"loopship/manifest"}\n');
  await put(`manifests/${sha256hex(m)}.json`, m);
  await put('packages/demo_1.0_amd64.tar', randomBytes(10_000));
  await writeFile(path.join(dir, '.secret'), 'dot file');
  await writeFile(path.join(dir, 'chunks', '.hidden'), 'dot file');
  return { dir, chunk, files };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request with the path sent byte for byte as given. */
export function rawRequest(url: string, opts: { method?: string; path: string; headers?: Record<string, string>; body?: Buffer | string }): Promise<RawResponse> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: opts.method ?? 'GET', path: opts.path, headers: opts.headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** sha256 over every path, type, mode-independent content and link target in a tree. */
export async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  async function walk(rel: string): Promise<void> {
    const entries = (await readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const full = path.join(dir, r);
      const st = await lstat(full);
      if (e.isSymbolicLink()) h.update(`L ${r} -> ${await readlink(full)}\n`);
      else if (e.isDirectory()) {
        h.update(`D ${r}\n`);
        await walk(r);
      } else h.update(`F ${r} ${st.size} ${sha256hex(await readFile(full))}\n`);
    }
  }
  await walk('');
  return h.digest('hex');
}
