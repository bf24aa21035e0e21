// Where a signing key lives. A key need not be a file openpgp.js holds in memory: a
// `Signer` is anything that returns one detached armored OpenPGP signature over bytes.
// `GpgSigner` asks GnuPG (`gpg --detach-sign`), so any key gpg-agent can use signs for
// loopship: a key in a GNUPGHOME, an OpenPGP smartcard or YubiKey behind scdaemon, a
// PKCS#11 token behind gnupg-pkcs11-scd (docs/key-custody.md). The signature gpg makes is
// checked before it is used: one packet, by this key (or one of its subkeys), over these bytes.
import { spawn } from 'node:child_process';
import type * as OpenPGP from 'openpgp';
import { LoopshipError } from '../format/errors.js';

export interface Signer {
  /** fingerprint of the primary key, 40 (v4) or 64 (v6) lowercase hex digits: the one root.json lists */
  readonly fingerprint: string;
  /** where the key lives, for messages (e.g. `gpg:<fpr> (GNUPGHOME /x)`) */
  readonly description: string;
  /** one detached armored OpenPGP signature over exactly `data` */
  sign(data: Uint8Array): Promise<string>;
}

/** What signs: a private key openpgp.js holds (a key file), or an external signer. */
export type SigningKey = OpenPGP.PrivateKey | Signer;

let loading: Promise<typeof OpenPGP> | undefined;
const pgp = (): Promise<typeof OpenPGP> => (loading ??= import('openpgp'));

export function isSigner(k: SigningKey): k is Signer {
  return typeof (k as Signer).sign === 'function' && typeof (k as Signer).fingerprint === 'string';
}

export function signingKeyFingerprint(k: SigningKey): string {
  return isSigner(k) ? k.fingerprint : k.getFingerprint().toLowerCase();
}

/** Merges detached armored signatures into one armor holding all their signature packets. */
export async function mergeSignatures(armored: string[]): Promise<string> {
  const openpgp = await pgp();
  const list = new openpgp.PacketList<OpenPGP.SignaturePacket>();
  for (const a of armored) {
    const sig = await openpgp.readSignature({ armoredSignature: a });
    for (const p of sig.packets) list.push(p as OpenPGP.SignaturePacket);
  }
  return new openpgp.Signature(list).armor();
}

/** Result of running gpg: exit code, stdout bytes, stderr text. */
export interface ExecResult {
  exitCode: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs gpg. `input` goes to stdin; `passphrase`, when given, to file descriptor 3 (--passphrase-fd 3). */
export type GpgExec = (file: string, args: string[], opts: { input?: Uint8Array; passphrase?: string; env: NodeJS.ProcessEnv; timeoutMs: number }) => Promise<ExecResult>;

export const spawnExec: GpgExec = (file, args, opts) =>
  new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: opts.env, stdio: ['pipe', 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    const timer = setTimeout(() => child.kill('SIGTERM'), opts.timeoutMs);
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ exitCode: code, stdout: Buffer.concat(out), stderr: err + (signal ? `\n(killed by ${signal} after ${opts.timeoutMs} ms)` : '') });
    });
    const fd3 = child.stdio[3] as NodeJS.WritableStream;
    fd3.on('error', () => {}); // gpg may not read it
    fd3.end(opts.passphrase !== undefined ? opts.passphrase + '\n' : '');
    child.stdin!.on('error', () => {});
    child.stdin!.end(opts.input ? Buffer.from(opts.input) : undefined);
  });

export interface GpgSignerOptions {
  /** GNUPGHOME (`--homedir`); default: $GNUPGHOME, else ~/.gnupg */
  homedir?: string;
  /** the gpg binary; default `gpg` on PATH */
  gpg?: string;
  /** PIN or passphrase handed to gpg-agent via --pinentry-mode loopback; default: gpg-agent's own pinentry */
  passphrase?: string;
  /** hash of the signature (--digest-algo); default SHA512 (fits Ed25519, RSA, NIST curves up to P-521) */
  digestAlgo?: string;
  /** a card may wait for a touch or a PIN: give up after this long (default 120 s) */
  timeoutMs?: number;
  exec?: GpgExec;
}

/**
 * Signs through GnuPG with the key `fingerprint` (a primary key fingerprint; gpg picks its
 * signing subkey when it has one, which verifiers accept as the primary key's signature).
 */
export class GpgSigner implements Signer {
  readonly fingerprint: string;
  private publicKeyCache?: Promise<{ key: OpenPGP.PublicKey; armored: string }>;

  constructor(
    fingerprint: string,
    private readonly opts: GpgSignerOptions = {},
  ) {
    const fpr = fingerprint.replace(/\s+/g, '').toLowerCase();
    if (!/^([0-9a-f]{40}|[0-9a-f]{64})$/.test(fpr)) throw new LoopshipError('USAGE', `a gpg key is named by its full fingerprint (40 or 64 hex digits), not ${JSON.stringify(fingerprint)}`);
    this.fingerprint = fpr;
  }

  get description(): string {
    return `gpg:${this.fingerprint}${this.opts.homedir ? ` (GNUPGHOME ${this.opts.homedir})` : ''}`;
  }

  private run(args: string[], input?: Uint8Array, passphrase?: string): Promise<ExecResult> {
    const env = { ...process.env };
    if (this.opts.homedir) env.GNUPGHOME = this.opts.homedir;
    const base = ['--batch', '--no-tty', '--yes'];
    if (this.opts.homedir) base.push('--homedir', this.opts.homedir);
    return (this.opts.exec ?? spawnExec)(this.opts.gpg ?? 'gpg', [...base, ...args], { input, passphrase, env, timeoutMs: this.opts.timeoutMs ?? 120_000 }).catch((cause) => {
      throw new LoopshipError('KEY_INVALID', `cannot run ${this.opts.gpg ?? 'gpg'} (${(cause as Error).message}); install gnupg`, { where: this.description, cause });
    });
  }

  /** The key's public half, as `gpg --export --armor` gives it (cached). */
  publicKey(): Promise<{ key: OpenPGP.PublicKey; armored: string }> {
    return (this.publicKeyCache ??= (async () => {
      const r = await this.run(['--armor', '--export', '--export-options', 'export-minimal', this.fingerprint]);
      const armored = r.stdout.toString('utf8');
      if (r.exitCode !== 0 || !armored.includes('BEGIN PGP PUBLIC KEY BLOCK')) {
        throw new LoopshipError('KEY_INVALID', `gpg has no public key ${this.fingerprint}${r.stderr ? `: ${r.stderr.trim()}` : ''}`, { where: this.description });
      }
      const openpgp = await pgp();
      const key = await openpgp.readKey({ armoredKey: armored });
      if (key.getFingerprint().toLowerCase() !== this.fingerprint) {
        throw new LoopshipError('KEY_INVALID', `gpg exported key ${key.getFingerprint()} for ${this.fingerprint} (give the primary key's full fingerprint)`, { where: this.description });
      }
      return { key, armored: key.armor() };
    })()).catch((err) => {
      this.publicKeyCache = undefined;
      throw err;
    });
  }

  async sign(data: Uint8Array): Promise<string> {
    const { key } = await this.publicKey();
    const args = ['--local-user', this.fingerprint, '--digest-algo', this.opts.digestAlgo ?? 'SHA512', '--armor', '--detach-sign', '--output', '-'];
    if (this.opts.passphrase !== undefined) args.unshift('--pinentry-mode', 'loopback', '--passphrase-fd', '3');
    const r = await this.run(args, data, this.opts.passphrase);
    const armored = r.stdout.toString('utf8');
    if (r.exitCode !== 0 || !armored.includes('BEGIN PGP SIGNATURE')) {
      throw new LoopshipError('SIGNATURE_INVALID', `gpg did not sign (exit ${r.exitCode}): ${r.stderr.trim() || 'no output'}`, { where: this.description });
    }
    // Trust but check: exactly one signature, by this key, valid over these bytes.
    const openpgp = await pgp();
    const signature = await openpgp.readSignature({ armoredSignature: armored });
    if (signature.packets.length !== 1) throw new LoopshipError('SIGNATURE_INVALID', `gpg made ${signature.packets.length} signatures, expected 1`, { where: this.description });
    const verified = await openpgp.verify({ message: await openpgp.createMessage({ binary: data }), signature, verificationKeys: [key], format: 'binary' });
    try {
      await verified.signatures[0].verified;
    } catch (cause) {
      throw new LoopshipError('SIGNATURE_INVALID', `gpg's signature does not verify with key ${this.fingerprint}: ${(cause as Error).message}`, { where: this.description, cause });
    }
    return armored;
  }
}
