// `loopship repo init|resign` and `loopship verify`: repository-level commands.
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { Keystore } from '../keys/keystore.js';
import { buildRoot, signRoot } from '../keys/root.js';
import { readPassphrase } from '../keys/passphrase.js';
import { RepositoryWriter } from './writer.js';
import { RepoClient, type RootPin } from './client.js';
import { createFetcher } from './fetcher.js';
import { UsageError } from './errors.js';
import { manifestChunks } from './package.js';

function parseTarget(spec: string): { name: string; version?: string; channel?: string } {
  const m = /^([^@:]+)(?:@(.+)|:(.+))?$/.exec(spec);
  if (!m) throw new UsageError(`expected NAME, NAME@VERSION or NAME:CHANNEL, got ${spec}`);
  return { name: m[1], version: m[2], channel: m[3] };
}

export function registerFormatCommands(program: Command): void {
  const repo = program.command('repo').description('create and maintain a repository directory');
  repo
    .command('init')
    .description('create an empty signed repository')
    .requiredOption('--dir <dir>', 'repository directory')
    .requiredOption('--keys <dir>', 'key directory (loopship keys init)')
    .option('--expires-days <n>', 'index validity', (v) => parseInt(v, 10), 30)
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.keys);
      const passphrase = await readPassphrase(o.passphraseFile);
      const root = await buildRoot(store, 1);
      const signed = await signRoot(root, await store.signingKeys('root', passphrase));
      await RepositoryWriter.init(o.dir, signed, { indexKeys: await store.signingKeys('index', passphrase), expiresDays: o.expiresDays });
      const result = { dir: o.dir, rootVersion: 1, rootKeys: root.roles.root.keys };
      process.stdout.write(o.json ? JSON.stringify(result) + '\n' : `repository created in ${o.dir}\npin this root fingerprint on clients: ${root.roles.root.keys.join(', ')}\n`);
    });
  repo
    .command('resign')
    .description('re-sign index.json with a fresh expiry (run daily from cron or a timer)')
    .requiredOption('--dir <dir>', 'repository directory')
    .requiredOption('--keys <dir>', 'key directory')
    .option('--expires-days <n>', 'index validity', (v) => parseInt(v, 10), 30)
    .option('--passphrase-file <file>', 'passphrase of the private keys')
    .option('--json', 'machine-readable output')
    .action(async (o) => {
      const store = await Keystore.open(o.keys);
      const writer = new RepositoryWriter(o.dir, { indexKeys: await store.signingKeys('index', await readPassphrase(o.passphraseFile)), expiresDays: o.expiresDays });
      const r = await writer.resign();
      process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `index version ${r.indexVersion}, valid until ${r.expires}\n`);
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
      if (!o.rootKey === !o.rootFingerprint) throw new UsageError('give exactly one of --root-key FILE or --root-fingerprint FPR');
      const pin: RootPin = o.rootKey ? { keyArmored: await readFile(o.rootKey, 'utf8') } : { fingerprint: o.rootFingerprint };
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
}
