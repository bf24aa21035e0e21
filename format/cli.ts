// `loopship repo init|resign` and `loopship verify`: repository-level commands.
import { InvalidArgumentError, type Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { Keystore } from '../keys/keystore.js';
import { buildRoot, signRoot } from '../keys/root.js';
import { readPassphrase } from '../keys/passphrase.js';
import { RepositoryWriter } from './writer.js';
import { RepoClient, type RootPin } from './client.js';
import { createFetcher } from './fetcher.js';
import { UsageError } from './errors.js';
import { manifestChunks } from './package.js';
import { exportPackage, mirrorRepository } from './export.js';
import cliProgress from 'cli-progress';

/**
 * --expires-days: whole days, at least 1. 0 (or a negative number) would sign an index that has
 * already expired, and every host would refuse it with exit 3: a usage error (exit 2) instead.
 */
export function parseExpiresDays(v: string): number {
  if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > 3650) throw new InvalidArgumentError('expected whole days from 1 to 3650 (an index valid for 0 days has expired when it is signed)');
  return Number(v);
}

function parseTarget(spec: string): { name: string; version?: string; channel?: string } {
  const m = /^([^@:]+)(?:@(.+)|:(.+))?$/.exec(spec);
  if (!m) throw new UsageError(`expected NAME, NAME@VERSION or NAME:CHANNEL, got ${spec}`);
  return { name: m[1], version: m[2], channel: m[3] };
}

async function pinFrom(o: { rootKey?: string; rootFingerprint?: string }, required: boolean): Promise<RootPin | undefined> {
  if (o.rootKey && o.rootFingerprint) throw new UsageError('give only one of --root-key FILE or --root-fingerprint FPR');
  if (o.rootKey) return { keyArmored: await readFile(o.rootKey, 'utf8') };
  if (o.rootFingerprint) return { fingerprint: o.rootFingerprint };
  if (required) throw new UsageError('give exactly one of --root-key FILE or --root-fingerprint FPR');
  return undefined;
}

/** A progress bar on a terminal, nothing otherwise (logs and --json stay clean). */
function progressBar(label: string, json: boolean): { update(done: number, total: number): void; stop(): void } {
  if (json || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar({ stream: process.stderr, format: `${label} [{bar}] {value}/{total}`, hideCursor: true }, cliProgress.Presets.shades_classic);
  let started = false;
  return {
    update(done, total) {
      if (!started) (bar.start(total, 0), (started = true));
      bar.update(done);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

export function registerFormatCommands(program: Command): void {
  const repo = program.command('repo').description('create and maintain a repository directory');
  repo
    .command('init')
    .description('create an empty signed repository')
    .requiredOption('--dir <dir>', 'repository directory')
    .requiredOption('--keys <dir>', 'key directory (loopship keys init)')
    .option('--expires-days <n>', 'index validity', parseExpiresDays, 30)
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.keys);
      const passphrase = await readPassphrase(o.passphraseFile);
      const root = await buildRoot(store, 1);
      const signed = await signRoot(root, await store.signers('root', passphrase));
      await RepositoryWriter.init(o.dir, signed, { indexKeys: await store.signers('index', passphrase), expiresDays: o.expiresDays });
      const result = { dir: o.dir, rootVersion: 1, repository: root.repository, rootKeys: root.roles.root.keys };
      process.stdout.write(o.json ? JSON.stringify(result) + '\n' : `repository ${root.repository} created in ${o.dir}\npin this root fingerprint on clients: ${root.roles.root.keys.join(', ')}\n`);
    });
  repo
    .command('resign')
    .description('re-sign index.json with a fresh expiry (run daily from cron or a timer)')
    .requiredOption('--dir <dir>', 'repository directory')
    .requiredOption('--keys <dir>', 'key directory')
    .option('--expires-days <n>', 'index validity', parseExpiresDays, 30)
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.keys);
      const writer = new RepositoryWriter(o.dir, { indexKeys: await store.signers('index', await readPassphrase(o.passphraseFile)), expiresDays: o.expiresDays });
      const r = await writer.resign();
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `index version ${r.indexVersion}, valid until ${r.expires}\n`);
    });
  repo
    .command('packs')
    .description('write the pack files missing for published versions (repositories from before packs); needs no keys')
    .requiredOption('--dir <dir>', 'repository directory')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const r = await new RepositoryWriter(o.dir, { indexKeys: [] }).writeMissingPacks();
      const skipped = r.skipped.length ? `; skipped (a stored chunk differs from its manifest's csize): ${r.skipped.join(', ')}` : '';
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `wrote ${r.written.length} pack(s)${r.written.length ? `: ${r.written.join(', ')}` : ''}${skipped}\n`);
    });

  program
    .command('verify')
    .description('verify a repository (or one image) end to end against a pinned root key')
    .argument('[image]', 'NAME, NAME@VERSION or NAME:CHANNEL (default: every version of every image)')
    .requiredOption('--repo <url-or-dir>', 'repository URL or directory')
    .option('--root-key <file>', 'pinned root public key (armored)')
    .option('--root-fingerprint <fpr>', 'pinned root key fingerprint')
    .option('--no-chunks', 'check metadata only, not every chunk')
    .option('--json', 'machine-readable output')
    .action(async (spec: string | undefined, o) => {
      const pin = (await pinFrom(o, true))!;
      const fetcher = createFetcher(o.repo);
      const log = (line: string) => !o.json && process.stdout.write(line + '\n');
      const root = await RepoClient.pin(fetcher, pin);
      log(`ok  root version ${root.version} pinned (root keys: ${root.roles.root.keys.join(', ')})`);
      const client = new RepoClient({ fetchers: [fetcher], trustedRoot: root });
      const up = await client.update();
      log(`ok  root chain to version ${up.root.version}${up.rootsAccepted.length ? ` (accepted ${up.rootsAccepted.join(', ')})` : ''}, expires ${up.root.expires}`);
      log(`ok  index version ${up.index.version}, signed by the index role, expires ${up.index.expires}`);
      const targets: { name: string; version: string }[] = [];
      if (spec) {
        const t = parseTarget(spec);
        targets.push(client.resolve(t.name, t));
      } else {
        for (const [name, img] of Object.entries(up.index.images)) for (const version of Object.keys(img.versions)) targets.push({ name, version });
      }
      const images = [];
      for (const t of targets) {
        const { manifest, sha256 } = await client.manifest(t.name, t.version);
        let chunks = 0;
        let bytes = 0;
        if (o.chunks) {
          for (const c of manifestChunks(manifest)) {
            await client.chunk(c);
            chunks++;
            bytes += c.length;
          }
        }
        images.push({ name: t.name, version: t.version, manifest: sha256, chunksVerified: chunks, bytesVerified: bytes });
        log(`ok  ${t.name} ${t.version}: manifest ${sha256.slice(0, 16)}… signed by a publisher key${o.chunks ? `, ${chunks} chunks (${(bytes / 1048576).toFixed(1)} MiB) hash-verified` : ''}`);
      }
      if (o.json) process.stdout.write(JSON.stringify({ ok: true, rootVersion: up.root.version, indexVersion: up.index.version, images }, null, 2) + '\n');
      else log(`verified ${images.length} image version(s)`);
    });

  program
    .command('export')
    .description('write one image version as an offline package tar (USB, sneakernet), verified on the way')
    .argument('<image>', 'NAME, NAME@VERSION or NAME:CHANNEL')
    .requiredOption('--repo <url-or-dir>', 'repository URL or directory')
    .requiredOption('--out <file>', 'package tar to write')
    .option('--root-key <file>', 'pinned root public key (armored)')
    .option('--root-fingerprint <fpr>', 'pinned root key fingerprint')
    .option('--with-metadata', 'include the root chain and signed index, so receivers can verify offline and advance their trust')
    .option('--json', 'machine-readable output')
    .action(async (spec: string, o) => {
      const t = parseTarget(spec);
      const bar = progressBar('chunks', o.json);
      const r = await exportPackage({ fetcher: createFetcher(o.repo), pin: (await pinFrom(o, true))!, name: t.name, version: t.version, channel: t.channel, out: o.out, withMetadata: o.withMetadata, onProgress: bar.update });
      bar.stop();
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `${r.name} ${r.version}: ${r.chunks} chunks, ${(r.bytes / 1048576).toFixed(1)} MiB written to ${r.out}\n`);
    });

  program
    .command('mirror')
    .description('copy a repository into a directory (only new chunks, everything verified); serve it with any HTTP server')
    .requiredOption('--from <url-or-dir>', 'repository to copy')
    .requiredOption('--to <dir>', 'mirror directory')
    .option('--root-key <file>', 'pinned root public key (needed the first time)')
    .option('--root-fingerprint <fpr>', 'pinned root key fingerprint (needed the first time)')
    .option('--concurrency <n>', 'parallel chunk downloads', (v) => parseInt(v, 10), 8)
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const bar = progressBar('chunks', o.json);
      const r = await mirrorRepository({ from: createFetcher(o.from), to: o.to, pin: await pinFrom(o, false), concurrency: o.concurrency, onProgress: bar.update });
      bar.stop();
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `mirrored index version ${r.indexVersion} (root ${r.rootVersion}): ${r.manifests} manifests, ${r.newChunks} of ${r.chunks} chunks new (${(r.newBytes / 1048576).toFixed(1)} MiB)\n`);
    });
}
