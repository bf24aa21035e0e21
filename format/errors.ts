// One small tree of error classes shared by every component. Each error carries a
// machine-readable code (for --json output and tests), the file it is about when
// there is one, and the underlying cause.

export type ErrorCode =
  // input the user gave us
  | 'USAGE'
  | 'CONFIG_INVALID'
  | 'RECIPE_INVALID'
  | 'KEY_INVALID'
  | 'KEY_PASSPHRASE'
  // repository metadata and content (the verifier)
  | 'METADATA_INVALID'
  | 'METADATA_TOO_LARGE'
  | 'TOO_LARGE'
  | 'SIGNATURE_INVALID'
  | 'SIGNATURE_THRESHOLD'
  | 'UNKNOWN_KEY'
  | 'EXPIRED'
  | 'ROLLBACK'
  | 'ROOT_CHAIN'
  | 'WRONG_REPOSITORY'
  | 'DIGEST_MISMATCH'
  | 'SIZE_MISMATCH'
  | 'MIX_AND_MATCH'
  | 'CHUNK_INVALID'
  | 'NOT_FOUND'
  | 'PACKAGE_INVALID'
  // the outside world
  | 'FETCH_FAILED'
  | 'EXEC_FAILED'
  | 'LOCKED'
  | 'CONFLICT'
  | 'IO'
  /** something in the agent's state dir it did not make (a planted symlink, hard link, fifo...) */
  | 'STATE_UNSAFE'
  | 'INTERNAL';

export class LoopshipError extends Error {
  readonly code: ErrorCode;
  /** The file, URL or field the error is about, when there is one. */
  readonly where?: string;

  constructor(code: ErrorCode, message: string, options: { where?: string; cause?: unknown } = {}) {
    super(options.where ? `${options.where}: ${message}` : message, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.where = options.where;
  }

  toJSON(): Record<string, unknown> {
    return { error: this.name, code: this.code, where: this.where, message: this.message };
  }
}

/** Anything a repository served that must not be trusted: the verifier throws these. */
export class VerificationError extends LoopshipError {}
export class MetadataError extends VerificationError {}
export class SignatureError extends VerificationError {}
export class ExpiredError extends VerificationError {}
export class RollbackError extends VerificationError {}
export class RootChainError extends VerificationError {}
export class DigestError extends VerificationError {}
export class PackageError extends VerificationError {}
/** Files of another repository (same keys, other repository id): never mixed with ours. */
export class RepositoryMismatchError extends VerificationError {
  constructor(message: string, options: { where?: string; cause?: unknown } = {}) {
    super('WRONG_REPOSITORY', message, options);
  }
}

/** The network or disk did not give us what we asked for (not an attack, maybe transient). */
export class FetchError extends LoopshipError {
  readonly status?: number;
  constructor(message: string, options: { where?: string; cause?: unknown; status?: number; code?: ErrorCode } = {}) {
    super(options.code ?? 'FETCH_FAILED', message, options);
    this.status = options.status;
  }
}

export class UsageError extends LoopshipError {
  constructor(message: string, options: { where?: string; cause?: unknown } = {}) {
    super('USAGE', message, options);
  }
}

export class ConfigError extends LoopshipError {
  constructor(message: string, options: { where?: string; cause?: unknown } = {}) {
    super('CONFIG_INVALID', message, options);
  }
}

export class ExecError extends LoopshipError {
  constructor(message: string, options: { where?: string; cause?: unknown } = {}) {
    super('EXEC_FAILED', message, options);
  }
}

/** Exit codes the CLIs use, so scripts can tell failures apart. */
export const EXIT = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  VERIFICATION: 3,
  FETCH: 4,
  LOCKED: 5,
} as const;

export function exitCodeFor(err: unknown): number {
  // the code decides, whatever class carried it (a LoopshipError('USAGE') is a usage error too)
  if (err instanceof UsageError || (err instanceof LoopshipError && (err.code === 'USAGE' || err.code === 'CONFIG_INVALID' || err.code === 'RECIPE_INVALID'))) return EXIT.USAGE;
  if (err instanceof VerificationError) return EXIT.VERIFICATION;
  if (err instanceof FetchError) return EXIT.FETCH;
  if (err instanceof LoopshipError && err.code === 'LOCKED') return EXIT.LOCKED;
  return EXIT.FAILURE;
}
