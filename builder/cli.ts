// `loopship build`: recipe -> signed package tar (--out) or straight into a repository
// directory (--repo). Per-stage progress with elapsed time on stderr, a summary at the
// end; --json prints the summary as JSON on stdout for CI.
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import cliProgress from 'cli-progress';
import { UsageError } from '../format/index.js';
import { Keystore, readPassphrase, readPrivateKey, type SigningKey } from '../keys/index.js';
import { build, type BuildOutput, type BuildReporter, type BuildResult, type StageName } from './build.js';
import { DEFAULT_CACHE_DIR } from './cache.js';

interface BuildCliOptions {
  out?: string;
  repo?: string;
  channel?: string;
  imageOnly?: boolean;
  keys?: string;
  publisher?: string;
  publisherKey?: string;
  passphraseFile?: string;
  mirror?: string;
  cacheDir: string;
  cache: boolean;
  workDir?: string;
  keepWork?: boolean;
  imageDir?: string;
  zstdLevel?: number;
  json?: boolean;
}

const fmtSec = (s: number) => (s >= 60 ? `${Math.floor(s / 60)}m${(s % 60).toFixed(0).padStart(2, '0')}s` : `${s.toFixed(1)}s`);
const fmtMiB = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** Stage lines on stderr; on a terminal, a live elapsed-time line and a progress bar for packaging. */
export function stderrReporter(opts: { quiet?: boolean; tty?: boolean } = {}): BuildReporter & { close(): void } {
  const tty = opts.tty ?? !!process.stderr.isTTY;
  const write = (s: string) => {
    if (!opts.quiet || tty) process.stderr.write(s);
  };
  let timer: NodeJS.Timeout | null = null;
  let started = 0;
  let detail = '';
  let bar: cliProgress.SingleBar | null = null;
  const clearLine = () => tty && process.stderr.write('\r\x1b[2K');
  const stopTimer = () => {
    if (timer) clearInterval(timer);
    timer = null;
  };
  return {
    stageStart(stage) {
      started = performance.now();
      detail = '';
      if (tty) {
        timer = setInterval(() => {
          if (bar) return;
          clearLine();
          process.stderr.write(`[${stage}] ${fmtSec((performance.now() - started) / 1000)} ${detail}`.slice(0, (process.stderr.columns || 100) - 1));
        }, 250);
      } else write(`[${stage}] started\n`);
    },
    stageStep(stage: StageName, d: string) {
      detail = d.trim();
      if (!tty && stage !== 'bootstrap') write(`[${stage}] ${detail}\n`);
    },
    stageProgress(stage, done, total) {
      if (!tty) return;
      if (!bar) {
        stopTimer();
        clearLine();
        bar = new cliProgress.SingleBar({ stream: process.stderr, format: `[${stage}] [{bar}] {percentage}% {value}/{total} MiB {duration_formatted}`, hideCursor: true }, cliProgress.Presets.shades_classic);
        bar.start(Math.ceil(total / 2 ** 20), 0);
      }
      bar.update(Math.floor(done / 2 ** 20));
    },
    stageEnd(stage, seconds, note) {
      stopTimer();
      if (bar) {
        bar.stop();
        bar = null;
      }
      clearLine();
      write(`[${stage}] done in ${fmtSec(seconds)}${note ? ` (${note})` : ''}\n`);
    },
    close() {
      stopTimer();
      bar?.stop();
    },
  };
}

/** The build summary as printed (human) or emitted (--json). */
export function summary(r: BuildResult): Record<string, unknown> {
  return {
    name: r.name,
    version: r.version,
    recipe_digest: r.recipeDigest,
    manifest_sha256: r.manifestSha256,
    bootstrap: r.bootstrap,
    image: { apparent: r.image.size, content: r.image.fsBytes, files: r.image.files, uuid: r.uuid, path: r.image.path, made_in: r.image.madeIn },
    kernel: r.kernel,
    initrd: r.initrd,
    cmdline: r.cmdline,
    packages: r.packages.length,
    chunks: r.stats ? { total: r.stats.chunks, new: r.stats.newChunks, reused: r.stats.chunks - r.stats.newChunks, compressed: r.stats.compressed, new_compressed: r.stats.newCompressed } : undefined,
    out: r.tarPath,
    published: r.published,
    source_date_epoch: r.sourceDateEpoch,
    stages: Object.fromEntries(r.stages.map((s) => [s.stage, Number(s.seconds.toFixed(2))])),
    wall_seconds: Number(r.wallSeconds.toFixed(2)),
    work_dir: r.workDir,
  };
}

function humanSummary(r: BuildResult): string {
  const lines = [`built ${r.name} ${r.version} in ${fmtSec(r.wallSeconds)} (bootstrap ${r.bootstrap === 'cache' ? 'from cache' : 'by debootstrap'})`];
  lines.push(`  image      ${fmtMiB(r.image.size)} apparent, ${fmtMiB(r.image.fsBytes)} content, ${r.image.files} files, UUID ${r.uuid}`);
  if (r.stats) {
    lines.push(`  chunks     ${r.stats.chunks} (${r.stats.newChunks} new, ${r.stats.chunks - r.stats.newChunks} reused), ${fmtMiB(r.stats.compressed)} compressed, ${fmtMiB(r.stats.newCompressed)} new`);
  }
  lines.push(`  packages   ${r.packages.length} installed; kernel ${r.kernel.version}`);
  lines.push(`  stages     ${r.stages.map((s) => `${s.stage} ${fmtSec(s.seconds)}`).join(', ')}`);
  if (r.tarPath) lines.push(`  package    ${r.tarPath}`);
  if (r.manifestSha256) lines.push(`  manifest   sha256 ${r.manifestSha256}`);
  if (r.published) lines.push(`  published  index version ${r.published.indexVersion}${r.published.unchanged ? ' (already published)' : ''}`);
  if (r.workDir) lines.push(`  work dir   ${r.workDir} (disk.img, vmlinuz, initrd.img in out/)`);
  return lines.join('\n') + '\n';
}

async function publisherKey(o: BuildCliOptions, passphrase: string | undefined, store: Keystore | null): Promise<SigningKey> {
  if (o.publisherKey) return readPrivateKey(await readFile(o.publisherKey, 'utf8'), passphrase, o.publisherKey);
  if (!store) throw new UsageError('signing needs --keys KEYDIR (with --publisher NAME) or --publisher-key FILE');
  return store.signer(store.find('publisher', o.publisher), passphrase); // a key file, or gpg-agent for a gpg entry
}

export function register(program: Command): void {
  program
    .command('build')
    .description('build a recipe into a signed appliance package: debootstrap, chroot steps, ext4 image, kernel + initrd, chunks, signature')
    .argument('<recipe>', 'recipe directory (holding recipe.yaml) or recipe YAML file')
    .option('--out <file.tar>', 'write a package tar (publish it later with `loopship publish`)')
    .option('--repo <dir>', 'write chunks and manifest straight into this repository directory and add the version to its index')
    .option('--channel <name>', 'with --repo: also point this channel at the new version')
    .option('--image-only', 'stop after the image: no signing; keeps disk.img, vmlinuz, initrd.img in the work directory')
    .option('--keys <dir>', 'key directory (loopship keys init): publisher key, and index keys for --repo')
    .option('--publisher <name>', 'which publisher key of --keys signs the manifest (default: the first active one)')
    .option('--publisher-key <file>', 'armored OpenPGP private key to sign with, instead of --keys')
    .option('--passphrase-file <file>', 'passphrase of the private keys (else LOOPSHIP_PASSPHRASE)')
    .option('--mirror <url>', 'Debian mirror (default: the one this host\'s apt sources use)')
    .option('--cache-dir <dir>', 'cache of bootstrapped base systems', DEFAULT_CACHE_DIR)
    .option('--no-cache', 'neither use nor fill the bootstrap cache (a clean build)')
    .option('--work-dir <dir>', 'where the scratch directory is created (default /var/tmp)')
    .option('--keep-work', 'keep the scratch directory (image, kernel, initrd) after the build')
    .option('--image-dir <dir>', 'where the image file is made when not kept (default: /dev/shm when the image fits in memory, else the work directory)')
    .option('--zstd-level <n>', 'zstd level for chunks (higher: smaller, slower)', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > 19) throw new UsageError(`--zstd-level must be an integer from 1 to 19, got ${v}`);
      return n;
    })
    .option('--json', 'print the build summary as JSON on stdout')
    .addHelpText('after', `
Exit codes: 0 built, 1 build failed (the message names the stage), 2 bad recipe or usage.
Progress goes to stderr; with --json, stdout holds only the summary.
SOURCE_DATE_EPOCH, when set, fixes the build time and the clamp for file times.
Examples:
  loopship build recipes/tiny --out tiny.tar --keys ~/loopship-keys
  loopship build recipes/tiny --repo /srv/repo --channel stable --keys ~/loopship-keys --json`)
    .action(async (recipePath: string, o: BuildCliOptions) => {
      const targets = [o.out, o.repo, o.imageOnly].filter(Boolean).length;
      if (targets !== 1) throw new UsageError('give exactly one of --out FILE.tar, --repo DIR or --image-only');
      if (o.channel && !o.repo) throw new UsageError('--channel only applies with --repo');
      if (o.keys && o.publisherKey) throw new UsageError('give --keys or --publisher-key, not both');
      const passphrase = await readPassphrase(o.passphraseFile);
      const store = o.keys ? await Keystore.open(o.keys) : null;
      let output: BuildOutput;
      if (o.imageOnly) output = { kind: 'image' };
      else if (o.out) output = { kind: 'tar', tarPath: o.out, publisherKey: await publisherKey(o, passphrase, store) };
      else {
        if (!store) throw new UsageError('--repo needs --keys KEYDIR: the index must be re-signed with the index key');
        output = { kind: 'repo', repoDir: o.repo!, channel: o.channel, publisherKey: await publisherKey(o, passphrase, store), indexKeys: await store.signers('index', passphrase) };
      }
      const reporter = stderrReporter();
      try {
        const result = await build({
          recipe: recipePath,
          output,
          mirror: o.mirror,
          cacheDir: o.cacheDir,
          noCache: !o.cache,
          workDir: o.workDir,
          keepWork: o.keepWork,
          imageDir: o.imageDir,
          zstdLevel: o.zstdLevel,
          reporter,
        });
        if (o.json) process.stdout.write(JSON.stringify(summary(result)) + '\n');
        else process.stderr.write(humanSummary(result));
      } finally {
        reporter.close();
      }
    });
}
