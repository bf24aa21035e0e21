// Builds the optional sendfile addon (npm run build:native, part of npm run build).
// Optional: without it `loopship serve` copies file bodies in JavaScript, so a failed
// build warns and exits 0. Offline: node-gyp is npm's own copy and the headers are the
// ones the Node installation ships (nodesource's nodejs has /usr/include/node), so
// node-gyp never needs to download them. Skipped when the addon is newer than its sources
// (several people build in one tree).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, 'build/Release/loopship_sendfile.node');
const sources = ['sendfile.c', 'binding.gyp'].map((f) => path.join(here, f));
const say = (msg) => process.stderr.write(`build:native: ${msg}\n`);

if (process.platform !== 'linux') {
  say(`skipped on ${process.platform} (sendfile addon is Linux-only); serve copies bodies in JS`);
  process.exit(0);
}
const mtime = (f) => fs.statSync(f, { throwIfNoEntry: false })?.mtimeMs ?? 0;
if (!process.argv.includes('--force') && mtime(out) > Math.max(...sources.map(mtime))) process.exit(0);

const prefix = path.resolve(path.dirname(process.execPath), '..');
const gyp = [
  process.env.npm_config_node_gyp,
  path.join(prefix, 'lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'),
].find((f) => f && fs.existsSync(f));
if (!gyp) {
  say('node-gyp not found (it comes with npm); serve copies bodies in JS');
  process.exit(0);
}
const args = [gyp, 'rebuild', '--loglevel=warn'];
// local headers, so node-gyp has nothing to download
if (fs.existsSync(path.join(prefix, 'include/node/node_api.h'))) args.push(`--nodedir=${prefix}`);
const r = spawnSync(process.execPath, args, { cwd: here, encoding: 'utf8' });
if (r.status !== 0 || !fs.existsSync(out)) {
  process.stderr.write((r.stdout ?? '') + (r.stderr ?? ''));
  say(`could not build the sendfile addon (exit ${r.status ?? r.signal}); serve copies bodies in JS. Needs gcc, make and python3 (scripts/setup.sh)`);
  process.exit(0);
}
say(`built ${path.relative(process.cwd(), out)}`);
