// Bounded concurrency, in one place: `parallel` for a list of I/O-bound items (chunk reads
// and syncs, downloads), so every such loop stops the same way on its first failure; a
// Semaphore where items arrive by callback and only how many are held is bounded.

/** Runs `fn` over items with at most `n` in flight; after the first failure no new item starts, and it is thrown once the running ones end. */
export async function parallel<T>(items: readonly T[], n: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (next < items.length && failed === undefined) {
      const i = next++;
      try {
        await fn(items[i], i);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  if (failed !== undefined) throw failed;
}

/**
 * A counting semaphore, for work that arrives by callback (frames of a stream) rather than
 * as a list: it bounds how many are held at once, whoever produces them.
 */
export class Semaphore {
  private readonly waiters: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiters.push(r));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }
}
