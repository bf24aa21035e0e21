// The shared read buffers of the static server: a hard cap, first come first served,
// and no way for a withdrawn request or an abandoned buffer to shrink the pool for good.
import test from 'ava';
import { BufferPool } from '../../repo-server/buffer-pool.js';

test('hands out at most max buffers; the next taker waits and gets the first one given back', (t) => {
  const pool = new BufferPool(1024, 2);
  const got: Buffer[] = [];
  pool.take((b) => got.push(b));
  pool.take((b) => got.push(b));
  t.is(got.length, 2);
  t.is(got[0].length, 1024);
  t.not(got[0], got[1]);
  let third: Buffer | undefined;
  pool.take((b) => (third = b));
  t.is(third, undefined);
  t.deepEqual(pool.stats(), { size: 1024, max: 2, allocated: 2, free: 0, waiting: 1 });
  pool.give(got[1]);
  t.is(third, got[1], 'the waiter gets the very buffer given back, no new allocation');
  pool.give(got[0]);
  pool.give(third!);
  t.deepEqual(pool.stats(), { size: 1024, max: 2, allocated: 2, free: 2, waiting: 0 });
  let again: Buffer | undefined;
  pool.take((b) => (again = b));
  t.true(again === got[0] || again === got[1], 'free buffers are reused');
});

test('a withdrawn wait is never served; waiters are served in order', (t) => {
  const pool = new BufferPool(16, 1);
  let held: Buffer | undefined;
  pool.take((b) => (held = b));
  const order: string[] = [];
  const cancelA = pool.take(() => order.push('a'));
  pool.take((b) => {
    order.push('b');
    pool.give(b);
  });
  pool.take(() => order.push('c'));
  cancelA();
  t.is(pool.stats().waiting, 2);
  pool.give(held!);
  t.deepEqual(order, ['b', 'c']);
});

test('forget: an abandoned buffer stops counting, so the pool can make another (for a waiter or later)', (t) => {
  const pool = new BufferPool(16, 1);
  let first: Buffer | undefined;
  pool.take((b) => (first = b));
  let waiter: Buffer | undefined;
  pool.take((b) => (waiter = b));
  t.is(waiter, undefined);
  pool.forget(); // `first` may still be read by a socket: it must not be handed out again
  t.truthy(waiter);
  t.not(waiter, first);
  t.deepEqual(pool.stats(), { size: 16, max: 1, allocated: 1, free: 0, waiting: 0 });
  pool.forget();
  t.is(pool.stats().allocated, 0);
  let later: Buffer | undefined;
  pool.take((b) => (later = b));
  t.truthy(later);
  t.not(later, first);
  t.not(later, waiter);
});

test('refuses a pool that could hold nothing', (t) => {
  t.throws(() => new BufferPool(0, 4), { instanceOf: RangeError });
  t.throws(() => new BufferPool(1024, 0), { instanceOf: RangeError });
});
