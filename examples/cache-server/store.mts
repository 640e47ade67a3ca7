// The keyspace: string keys and values, expiry (lazy + active), approximate LRU eviction
// under maxmemory, and values at or above `threshold` bytes in a node-ksm Arena.
//
// Keys are JS strings in latin1 (one char per byte: binary safe, and a Map key). Values
// are Buffers that are never written after they are stored (APPEND and INCR store a new
// one), so replies may queue plain ones by reference.
import { Arena, pageSize } from 'node-ksm';

/**
 * Estimated bytes per key besides its name and value: the Map slot, the Entry object,
 * its slot in `order` and the Set slot of a TTL. Counted so that maxmemory holds for
 * many tiny keys too; the value store is what matters and is counted exactly.
 */
const ENTRY_OVERHEAD = 112;
/** A small Buffer's object and view, on top of its bytes. */
const BUFFER_OVERHEAD = 80;
/**
 * Arena buffers given up by deleted or overwritten values are kept, up to this many bytes
 * in all, for the next value of exactly the same length: a SET that replaces a value of
 * the same size (the usual case for a cache of fixed-size blobs) then skips the Arena's
 * allocator and its zeroing of reused pages, ~25 us per 64 KiB value. Safe because no
 * Arena buffer is ever seen outside the store: replies copy them (resp.mts).
 */
const SPARE_MAX = 1024 * 1024;
/** Keys sampled per eviction (Redis's maxmemory-samples) and the candidate pool kept between evictions. */
const SAMPLES = 5;
const POOL_SIZE = 16;
/** Active expiry: like Redis at hz 10, 20 keys per round, another round while > 25 % of them were expired. */
const EXPIRE_KEYS_PER_LOOP = 20;

export const MAX_INT64 = 2n ** 63n - 1n;
export const MIN_INT64 = -(2n ** 63n);

export type Policy = 'allkeys-lru' | 'volatile-lru' | 'noeviction';

export interface Entry {
  key: string;
  /** null once deleted (a tombstone in `order`) */
  value: Buffer | null;
  inArena: boolean;
  /** ms since the epoch, 0 = none */
  expireAt: number;
  /** access clock */
  lru: number;
  /** insertion sequence: the SCAN cursor */
  seq: number;
  /** index in `order` */
  slot: number;
  /** bytes counted against maxmemory */
  cost: number;
}

/** A live entry: what get() and lookupRead() return. */
export type LiveEntry = Entry & { value: Buffer };

export interface StoreOptions {
  /** values of at least this many bytes live in the Arena */
  threshold?: number;
  /** 0 = no limit */
  maxmemory?: number;
  policy?: Policy;
}

export interface KeyspaceStats {
  expiredKeys: number;
  evictedKeys: number;
  hits: number;
  misses: number;
}

export class Store {
  threshold: number;
  maxmemory: number;
  policy: Policy;
  arena = new Arena();
  map = new Map<string, Entry>();
  /** Keys with a TTL, walked by the active expiry cycle. */
  expires = new Set<string>();
  expireCursor: SetIterator<string> = this.expires.values();
  /**
   * Entries in insertion order, with tombstones: random sampling for eviction, and
   * a SCAN cursor (seq) that compaction cannot invalidate, since it keeps the order.
   */
  order: Entry[] = [];
  tombstones = 0;
  seq = 1;
  clock = 0;
  /** eviction candidates, oldest last */
  pool: Entry[] = [];
  used = 0;
  /** Bytes and count of values in the Arena (logical bytes, as stored). */
  arenaValues = 0;
  arenaBytes = 0;
  /** Arena buffers the parser filled with a bulk that no command has adopted yet. */
  inbound = new WeakSet<Buffer>();
  /** released Arena buffers by length, see SPARE_MAX */
  spare = new Map<number, Buffer[]>();
  spareBytes = 0;
  /** Arena buffers a reply refers to (see pin()), with how many replies do. */
  pins = new Map<Buffer, number>();
  /** Pinned buffers whose value is gone: given back when the last reply lets go. */
  freeWhenUnpinned = new Set<Buffer>();
  stats: KeyspaceStats = { expiredKeys: 0, evictedKeys: 0, hits: 0, misses: 0 };

  constructor({ threshold = pageSize, maxmemory = 0, policy = 'allkeys-lru' }: StoreOptions = {}) {
    this.threshold = threshold;
    this.maxmemory = maxmemory;
    this.policy = policy;
  }

  /** An Arena buffer of `len` bytes: a spare one of that length if there is one. */
  #arenaAlloc(len: number): Buffer {
    const list = this.spare.get(len);
    // allocUnsafe: the parser writes every byte of it before any command can see it (a
    // spare is reused the same way); only the padding after it must be zero, for KSM.
    if (list === undefined) return this.arena.allocUnsafe(len);
    const b = list.pop()!;
    if (list.length === 0) this.spare.delete(len);
    this.spareBytes -= len;
    return b;
  }

  /**
   * A reply is about to send Arena buffer `b` by reference (Writer.bulk): until unpin(),
   * its pages are not given back or reused, even if its value is deleted or overwritten
   * by a later command of the same batch, or while the socket still holds the write.
   */
  pin(b: Buffer): void {
    this.pins.set(b, (this.pins.get(b) ?? 0) + 1);
  }

  /** The replies that pinned these buffers are written (or dropped). */
  unpin(bufs: Buffer[]): void {
    for (const b of bufs) {
      const n = this.pins.get(b)! - 1;
      if (n > 0) {
        this.pins.set(b, n);
        continue;
      }
      this.pins.delete(b);
      if (this.freeWhenUnpinned.delete(b)) this.#arenaFree(b);
    }
  }

  /** Gives an Arena buffer back: kept as a spare while they fit in SPARE_MAX, else to the Arena. */
  #arenaFree(b: Buffer): void {
    if (this.pins.has(b)) {
      this.freeWhenUnpinned.add(b);
      return;
    }
    const len = b.length;
    if (len === 0 || this.spareBytes + len > SPARE_MAX) return this.arena.release(b);
    const list = this.spare.get(len);
    if (list === undefined) this.spare.set(len, [b]);
    else list.push(b);
    this.spareBytes += len;
  }

  /** A buffer for an incoming bulk of `len` bytes: in the Arena when it will be stored there. */
  allocInbound(len: number): Buffer {
    if (len < this.threshold) return Buffer.allocUnsafeSlow(len);
    const b = this.#arenaAlloc(len);
    this.inbound.add(b);
    return b;
  }

  /** Gives back an inbound buffer no command took (no-op for anything else). */
  dropInbound(b: Buffer): void {
    if (this.inbound.has(b)) {
      this.inbound.delete(b);
      this.#arenaFree(b);
    }
  }

  /**
   * A value ready to store, from a command argument: inbound Arena buffers are taken as
   * they are (no copy), anything else is copied (arguments are views of socket chunks).
   */
  #own(b: Buffer): { value: Buffer; inArena: boolean } {
    if (this.inbound.has(b)) {
      this.inbound.delete(b);
      return { value: b, inArena: true };
    }
    if (b.length >= this.threshold) {
      const a = this.#arenaAlloc(b.length);
      b.copy(a);
      return { value: a, inArena: true };
    }
    // A fresh buffer of its own, never a view that keeps a 64 KiB socket chunk alive.
    const whole = b.byteOffset === 0 && b.length === b.buffer.byteLength;
    return { value: whole ? b : Buffer.from(b), inArena: false };
  }

  #cost(key: string, value: Buffer, inArena: boolean): number {
    const v = inArena ? Math.ceil(value.length / pageSize) * pageSize : value.length + BUFFER_OVERHEAD;
    return ENTRY_OVERHEAD + key.length + v;
  }

  #freeValue(e: Entry): void {
    if (e.inArena) {
      this.arenaValues--;
      this.arenaBytes -= e.value!.length;
      this.#arenaFree(e.value!);
    }
    e.value = null;
  }

  /** The live entry for key, expiring it lazily; touches its LRU clock. */
  get(key: string): LiveEntry | undefined {
    const e = this.map.get(key) as LiveEntry | undefined;
    if (e === undefined) return undefined;
    if (e.expireAt !== 0 && e.expireAt <= Date.now()) {
      this.delete(key);
      this.stats.expiredKeys++;
      return undefined;
    }
    e.lru = ++this.clock;
    return e;
  }

  /** get() that counts keyspace hits and misses (read commands). */
  lookupRead(key: string): LiveEntry | undefined {
    const e = this.get(key);
    if (e === undefined) this.stats.misses++;
    else this.stats.hits++;
    return e;
  }

  /**
   * Stores `arg` (a command argument, or a Buffer made for it) under key.
   * `expireAt`: undefined keeps the existing TTL (KEEPTTL), 0 clears it.
   */
  set(key: string, arg: Buffer, expireAt: number | undefined): void {
    const { value, inArena } = this.#own(arg);
    this.setOwned(key, value, inArena, expireAt);
  }

  /**
   * A plain SET (no TTL) of the bytes src[start..end), copied: no view of src is kept.
   * An expired old value is expired first and counted, as get() before set() would.
   */
  setBytes(key: string, src: Buffer, start: number, end: number): void {
    const len = end - start;
    const inArena = len >= this.threshold;
    const value = inArena ? this.#arenaAlloc(len) : Buffer.allocUnsafe(len);
    src.copy(value, 0, start, end);
    let e = this.map.get(key);
    if (e !== undefined && e.expireAt !== 0 && e.expireAt <= Date.now()) {
      this.delete(key);
      this.stats.expiredKeys++;
      e = undefined;
    }
    this.#put(e, key, value, inArena, 0);
  }

  /** `expireAt` as for set(). */
  setOwned(key: string, value: Buffer, inArena: boolean, expireAt: number | undefined): void {
    this.#put(this.map.get(key), key, value, inArena, expireAt);
  }

  /** Stores value under key, in e (the key's entry) or a new entry when e is undefined. */
  #put(e: Entry | undefined, key: string, value: Buffer, inArena: boolean, expireAt: number | undefined): void {
    if (e === undefined) {
      e = { key, value, inArena, expireAt: 0, lru: 0, seq: this.seq++, slot: this.order.length, cost: 0 };
      this.map.set(key, e);
      this.order.push(e);
    } else {
      this.used -= e.cost;
      this.#freeValue(e);
      e.value = value;
      e.inArena = inArena;
    }
    if (inArena) {
      this.arenaValues++;
      this.arenaBytes += value.length;
    }
    if (expireAt !== undefined) this.setExpire(e, expireAt);
    e.lru = ++this.clock;
    e.cost = this.#cost(key, value, inArena);
    this.used += e.cost;
  }

  setExpire(e: Entry, expireAt: number): void {
    e.expireAt = expireAt;
    if (expireAt === 0) this.expires.delete(e.key);
    else this.expires.add(e.key);
  }

  delete(key: string): boolean {
    const e = this.map.get(key);
    if (e === undefined) return false;
    this.map.delete(key);
    if (e.expireAt !== 0) this.expires.delete(key);
    this.used -= e.cost;
    this.#freeValue(e);
    this.tombstones++;
    if (this.tombstones > 1024 && this.tombstones * 2 > this.order.length) this.#compact();
    return true;
  }

  #compact(): void {
    const live = this.order.filter((e) => e.value !== null);
    live.forEach((e, i) => {
      e.slot = i;
    });
    this.order = live;
    this.tombstones = 0;
  }

  flush(): void {
    for (const e of this.order) if (e.value !== null) this.#freeValue(e);
    this.map.clear();
    this.expires.clear();
    this.expireCursor = this.expires.values();
    this.order = [];
    this.pool = [];
    this.tombstones = 0;
    this.used = 0;
  }

  get size(): number {
    return this.map.size;
  }

  /**
   * SCAN: up to about `count` live keys with seq ≥ cursor, and the next cursor (0 at the end).
   * Keys present for the whole iteration are returned at least once: the cursor is an
   * insertion sequence, which deletions and compaction never reorder.
   */
  scan(cursor: number, count: number, match: ((key: string) => boolean) | null): { next: number; keys: string[] } {
    const order = this.order;
    let lo = 0;
    let hi = order.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (order[mid]!.seq < cursor) lo = mid + 1;
      else hi = mid;
    }
    const keys: string[] = [];
    const now = Date.now();
    let i = lo;
    for (let visited = 0; i < order.length && visited < count; i++) {
      const e = order[i]!;
      if (e.value === null) continue;
      visited++;
      if (e.expireAt !== 0 && e.expireAt <= now) continue;
      if (match === null || match(e.key)) keys.push(e.key);
    }
    return { next: i < order.length ? order[i]!.seq : 0, keys };
  }

  /** One active expiry cycle: at most `budgetMs`, sampled like Redis. */
  activeExpire(budgetMs = 25): void {
    const deadline = performance.now() + budgetMs;
    const now = Date.now();
    for (;;) {
      let sampled = 0;
      let expired = 0;
      while (sampled < EXPIRE_KEYS_PER_LOOP) {
        const r = this.expireCursor.next();
        if (r.done) {
          this.expireCursor = this.expires.values();
          if (this.expires.size === 0 || sampled === 0) return;
          break;
        }
        sampled++;
        const e = this.map.get(r.value);
        if (e !== undefined && e.expireAt !== 0 && e.expireAt <= now) {
          this.delete(r.value);
          this.stats.expiredKeys++;
          expired++;
        }
      }
      if (expired * 4 <= sampled || performance.now() > deadline) return;
    }
  }

  /**
   * Evicts until `used` is within maxmemory. False when it cannot get there (noeviction,
   * or no candidate left): the caller refuses commands that would add memory.
   */
  evict(): boolean {
    if (this.maxmemory === 0 || this.used <= this.maxmemory) return true;
    if (this.policy === 'noeviction') return false;
    const volatile = this.policy === 'volatile-lru';
    while (this.used > this.maxmemory) {
      const victim = this.#candidate(volatile);
      if (victim === undefined) return false;
      this.delete(victim.key);
      this.stats.evictedKeys++;
    }
    return true;
  }

  /** Redis's approximate LRU: sample a few random keys into a pool of the idlest, take the idlest. */
  #candidate(volatile: boolean): Entry | undefined {
    const order = this.order;
    const live = this.map.size;
    if (live === 0) return undefined;
    for (let s = 0, tries = 0; s < SAMPLES && tries < SAMPLES * 8; tries++) {
      const e = order[Math.floor(Math.random() * order.length)]!;
      if (e.value === null || (volatile && e.expireAt === 0)) continue;
      s++;
      if (!this.pool.includes(e)) this.pool.push(e);
    }
    this.pool.sort((a, b) => b.lru - a.lru);
    if (this.pool.length > POOL_SIZE) this.pool.splice(0, this.pool.length - POOL_SIZE);
    while (this.pool.length > 0) {
      const e = this.pool.pop()!;
      // Deleted, or replaced by a new entry under the same key, since it was sampled.
      if (e.value !== null && this.map.get(e.key) === e) return e;
    }
    // The samples all missed (mostly tombstones, or few volatile keys): any key will do.
    for (const k of volatile ? this.expires : this.map.keys()) return this.map.get(k);
    return undefined;
  }
}
