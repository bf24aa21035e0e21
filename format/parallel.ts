// Bounded concurrency for I/O-bound loops (chunk reads and syncs, downloads): one helper,
// so every such loop stops the same way on its first failure.

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
