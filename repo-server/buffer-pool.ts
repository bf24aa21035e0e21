// A bounded set of equal read buffers shared by every response that streams a big file
// or range. Reusing them spares an allocation (and the garbage collector's work) per
// step. At most `max` are counted at once; a response that finds none free waits its
// turn. A buffer whose socket write is still pending (a slow client) is lent out: it
// stops counting, so one slow client never holds up the others, and comes back (adopt)
// when the write is done.

export interface PoolStats {
  /** bytes per buffer */
  size: number;
  /** the most buffers that may exist at once */
  max: number;
  /** buffers that exist and count against max (free or in use) */
  allocated: number;
  free: number;
  waiting: number;
}

export class BufferPool {
  private readonly freeList: Buffer[] = [];
  private readonly waiting: ((b: Buffer) => void)[] = [];
  private allocated = 0;

  constructor(
    readonly size: number,
    readonly max: number,
  ) {
    if (!(size > 0 && max > 0)) throw new RangeError(`invalid buffer pool ${max} x ${size}`);
  }

  /**
   * Hands a buffer to `use`, now or when one is given back; the returned function
   * withdraws a request still waiting (a client that went away).
   */
  take(use: (b: Buffer) => void): () => void {
    const b = this.freeList.pop() ?? (this.allocated < this.max ? (this.allocated++, Buffer.allocUnsafeSlow(this.size)) : undefined);
    if (b) {
      use(b);
      return () => {};
    }
    this.waiting.push(use);
    return () => {
      const i = this.waiting.indexOf(use);
      if (i >= 0) this.waiting.splice(i, 1);
    };
  }

  /** A buffer nobody reads or writes any more: to the first waiter, else kept for later. */
  give(b: Buffer): void {
    const next = this.waiting.shift();
    if (next) next(b);
    else this.freeList.push(b);
  }

  /**
   * A buffer that must not be reused (a socket write may still be reading it when its
   * client went away): it stops counting, the garbage collector frees it, and a new one
   * may be made in its place, so an abandoned buffer can never shrink the pool for good.
   */
  forget(): void {
    this.allocated--;
    const next = this.waiting.shift();
    if (next) {
      this.allocated++;
      next(Buffer.allocUnsafeSlow(this.size));
    }
  }

  /** A buffer given up with forget() whose write is done: kept if the pool has room, else left to the collector. */
  adopt(b: Buffer): void {
    if (this.allocated >= this.max || b.length !== this.size) return;
    this.allocated++;
    this.give(b);
  }

  stats(): PoolStats {
    return { size: this.size, max: this.max, allocated: this.allocated, free: this.freeList.length, waiting: this.waiting.length };
  }
}
