// The keyspace: keys holding strings, hashes, lists or sets, expiry (lazy + active),
// approximate LRU eviction under maxmemory, and values and elements at or above
// `threshold` bytes in a node-ksm Arena.
//
// Keys are JS strings in latin1 (one char per byte: binary safe, and a Map key). Values
// are Buffers that are never written after they are stored (APPEND and INCR store a new
// one), so replies may queue plain ones by reference.
import { Arena, pageSize } from 'node-ksm';
import { OWN_BUFFER } from './resp.mjs';

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

/** Value types, as TYPE names them (TYPE_NAMES[type]). */
export const T_STRING = 0;
export const T_HASH = 1;
export const T_LIST = 2;
export const T_SET = 3;
export type ValueType = typeof T_STRING | typeof T_HASH | typeof T_LIST | typeof T_SET;
export const TYPE_NAMES = ['string', 'hash', 'list', 'set'] as const;

/**
 * Redis 7.0's default thresholds for its compact encodings (hash-max-listpack-entries,
 * hash-max-listpack-value, set-max-intset-entries): they decide OBJECT ENCODING and, as
 * in Redis, the order replies list a small hash or set in.
 */
export const HASH_MAX_LISTPACK_ENTRIES = 512;
export const HASH_MAX_LISTPACK_VALUE = 64;
export const SET_MAX_INTSET_ENTRIES = 512;

/** How a string value was made, for OBJECT ENCODING (see stringEncoding). */
export const ENC_AUTO = 0;
export const ENC_RAW = 1;
export const ENC_NOINT = 2;

/**
 * A hash: fields (latin1 strings) to values. Values are Buffers, in the Arena from
 * `threshold` bytes on like string values. A Map keeps insertion order, which is the
 * order of Redis's listpack encoding; `listpack` turns false for good once the hash
 * outgrows it, as Redis converts to a hashtable and never back.
 */
export class HashValue {
  map = new Map<string, Buffer>();
  listpack = true;
}

/** A set of latin1 strings. `intset` while Redis would keep it as an intset (every member an int64, few). */
export class SetValue {
  set = new Set<string>();
  intset = true;
}

/**
 * A list: a ring buffer of Buffers (O(1) at both ends, like Redis's quicklist), elements
 * in the Arena from `threshold` bytes on.
 */
export class ListValue {
  #a: (Buffer | undefined)[] = new Array<Buffer | undefined>(8);
  #head = 0;
  length = 0;

  at(i: number): Buffer {
    return this.#a[(this.#head + i) & (this.#a.length - 1)]!;
  }

  setAt(i: number, b: Buffer): void {
    this.#a[(this.#head + i) & (this.#a.length - 1)] = b;
  }

  #grow(): void {
    if (this.length < this.#a.length) return;
    const items = this.toArray(0, this.length);
    this.#a = new Array<Buffer | undefined>(this.#a.length * 2);
    for (let i = 0; i < items.length; i++) this.#a[i] = items[i];
    this.#head = 0;
  }

  push(b: Buffer): void {
    this.#grow();
    this.#a[(this.#head + this.length) & (this.#a.length - 1)] = b;
    this.length++;
  }

  unshift(b: Buffer): void {
    this.#grow();
    this.#head = (this.#head - 1) & (this.#a.length - 1);
    this.#a[this.#head] = b;
    this.length++;
  }

  shift(): Buffer {
    const b = this.#a[this.#head]!;
    this.#a[this.#head] = undefined;
    this.#head = (this.#head + 1) & (this.#a.length - 1);
    this.length--;
    return b;
  }

  pop(): Buffer {
    const i = (this.#head + this.length - 1) & (this.#a.length - 1);
    const b = this.#a[i]!;
    this.#a[i] = undefined;
    this.length--;
    return b;
  }

  /** Elements [start, end). */
  toArray(start: number, end: number): Buffer[] {
    const out: Buffer[] = [];
    for (let i = start; i < end; i++) out.push(this.at(i));
    return out;
  }

  /** Replaces every element (the middle-of-the-list edits: LINSERT, LREM, LTRIM). */
  replace(items: Buffer[]): void {
    let cap = 8;
    while (cap < items.length) cap *= 2;
    this.#a = new Array<Buffer | undefined>(cap);
    for (let i = 0; i < items.length; i++) this.#a[i] = items[i];
    this.#head = 0;
    this.length = items.length;
  }
}

export type Value = Buffer | HashValue | ListValue | SetValue;

export interface Entry {
  key: string;
  /** T_STRING, T_HASH, T_LIST or T_SET */
  type: ValueType;
  /** null once deleted (a tombstone in `order`) */
  value: Value | null;
  /** A string value in the Arena (elements of the other types: see Store.inArena). */
  inArena: boolean;
  /** How a string value was made: ENC_AUTO, ENC_RAW or ENC_NOINT. */
  enc: number;
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
  /**
   * The string value is this entry's alone (allocated for it by setBytes, shared with no
   * other key, below OWN_BUFFER so replies copy it): a SET of the same length may
   * overwrite it in place instead of allocating. Whatever shares it clears this first.
   */
  exclusive: boolean;
}

/** A live entry: what get() and lookupRead() return. */
export type LiveEntry = Entry & { value: Value };

/** Something WATCHing keys (a client): EXEC fails once `dirty`. */
export interface Watcher {
  dirty: boolean;
  /** Keys watched, each with whether it was already logically expired when WATCHed. */
  watched: Map<string, { expired: boolean }>;
}

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

/** Redis's string2ll on a stored value: canonical int64 text. */
function isInt64Text(b: Buffer): boolean {
  const n = b.length;
  if (n === 0 || n > 20) return false;
  let i = 0;
  if (b[0] === 45) {
    if (n === 1) return false;
    i = 1;
  }
  if (b[i] === 48) return n === 1;
  for (; i < n; i++) if (b[i]! < 48 || b[i]! > 57) return false;
  if (n < 19) return true;
  const v = BigInt(b.toString('latin1'));
  return v <= MAX_INT64 && v >= MIN_INT64;
}

/** OBJECT ENCODING of a string, as Redis 7.0 would have encoded the same value made the same way. */
export function stringEncoding(e: Entry): string {
  const v = e.value as Buffer;
  if (e.enc === ENC_RAW) return 'raw';
  if (e.enc === ENC_AUTO && isInt64Text(v)) return 'int';
  return v.length <= 44 ? 'embstr' : 'raw';
}

/** Whether a member can live in an intset. */
export function isIntsetMember(m: string): boolean {
  return isInt64Text(Buffer.from(m, 'latin1'));
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
  /** Clients WATCHing each key (see touch()). */
  watchers = new Map<string, Set<Watcher>>();
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
      const v = e.value as Buffer;
      this.arenaValues--;
      this.arenaBytes -= v.length;
      this.#arenaFree(v);
    } else if (e.type !== T_STRING) {
      const v = e.value;
      if (v instanceof HashValue) for (const b of v.map.values()) this.freeElement(b);
      else if (v instanceof ListValue) for (let i = 0; i < v.length; i++) this.freeElement(v.at(i));
    }
    e.value = null;
  }

  // ---- Elements of hashes and lists: Buffers like string values, in the Arena from `threshold` on ----

  /** Whether an element (hash value, list element) lives in the Arena: decided by its length alone. */
  inArena(b: Buffer): boolean {
    return b.length >= this.threshold;
  }

  /** An element to store, from a command argument (see #own). */
  element(arg: Buffer): Buffer {
    const { value, inArena } = this.#own(arg);
    if (inArena) {
      this.arenaValues++;
      this.arenaBytes += value.length;
    }
    return value;
  }

  /** An element is gone (deleted, replaced or popped): its Arena pages go back once no reply refers to them. */
  freeElement(b: Buffer): void {
    if (b.length < this.threshold) return;
    this.arenaValues--;
    this.arenaBytes -= b.length;
    this.#arenaFree(b);
  }

  /** Bytes an element counts for against maxmemory. */
  elementCost(b: Buffer): number {
    return b.length >= this.threshold ? Math.ceil(b.length / pageSize) * pageSize : b.length + BUFFER_OVERHEAD;
  }

  /** Bytes a hash field or set member counts for besides its value. */
  memberCost(m: string): number {
    return m.length + 48;
  }

  /** A new key holding an empty hash, list or set (the caller adds elements and calls changed()). */
  create(key: string, type: ValueType): LiveEntry {
    const value = type === T_HASH ? new HashValue() : type === T_LIST ? new ListValue() : new SetValue();
    const e: Entry = {
      key,
      type,
      value,
      inArena: false,
      enc: ENC_AUTO,
      expireAt: 0,
      lru: ++this.clock,
      seq: this.seq++,
      slot: this.order.length,
      cost: ENTRY_OVERHEAD + key.length,
      exclusive: false,
    };
    this.map.set(key, e);
    this.order.push(e);
    this.used += e.cost;
    return e as LiveEntry;
  }

  /**
   * A hash, list or set changed: `delta` bytes more (or fewer) against maxmemory, the
   * key's WATCHers see the write, and an empty collection takes its key with it (as
   * in Redis, no key holds an empty hash, list or set).
   */
  changed(e: Entry, delta: number): void {
    e.cost += delta;
    this.used += delta;
    if (this.watchers.size !== 0) this.touch(e.key);
    const v = e.value;
    const size = v instanceof HashValue ? v.map.size : v instanceof SetValue ? v.set.size : (v as ListValue).length;
    if (size === 0) this.delete(e.key);
  }

  /** Moves a key's entry to another name (RENAME), keeping its value, TTL and type. */
  rename(e: Entry, to: string): void {
    this.delete(to);
    const from = e.key;
    this.map.delete(from);
    if (e.expireAt !== 0) this.expires.delete(from);
    if (this.watchers.size !== 0) this.touch(from);
    this.used -= e.cost;
    // A new entry (a new SCAN position), as Redis adds the key anew.
    const moved: Entry = { ...e, key: to, seq: this.seq++, slot: this.order.length };
    moved.cost = e.cost - from.length + to.length;
    e.value = null;
    this.tombstones++;
    this.map.set(to, moved);
    this.order.push(moved);
    this.used += moved.cost;
    if (moved.expireAt !== 0) this.expires.add(to);
    if (this.watchers.size !== 0) this.touch(to);
  }

  /** A copy of a value under another key (COPY); the caller has removed `to` if it existed. */
  copy(e: Entry, to: string): void {
    const v = e.value!;
    if (e.type === T_STRING) {
      // The copy may keep the same buffer (#own): neither key overwrites it in place now.
      e.exclusive = false;
      this.set(to, v as Buffer, e.expireAt);
      (this.map.get(to) as Entry).enc = e.enc;
      return;
    }
    const d = this.create(to, e.type);
    let cost = 0;
    if (v instanceof HashValue) {
      const h = d.value as HashValue;
      h.listpack = v.listpack;
      for (const [f, b] of v.map) {
        h.map.set(f, this.element(b));
        cost += this.memberCost(f) + this.elementCost(b);
      }
    } else if (v instanceof ListValue) {
      const l = d.value as ListValue;
      for (let i = 0; i < v.length; i++) {
        const b = v.at(i);
        l.push(this.element(b));
        cost += this.elementCost(b);
      }
    } else {
      const st = d.value as SetValue;
      st.intset = (v as SetValue).intset;
      for (const m of (v as SetValue).set) {
        st.set.add(m);
        cost += this.memberCost(m);
      }
    }
    if (e.expireAt !== 0) this.setExpire(d, e.expireAt);
    this.changed(d, cost);
  }

  // ---- WATCH ----

  watch(w: Watcher, key: string): void {
    if (w.watched.has(key)) return;
    const e = this.map.get(key);
    w.watched.set(key, { expired: e !== undefined && e.expireAt !== 0 && e.expireAt <= Date.now() });
    let set = this.watchers.get(key);
    if (set === undefined) this.watchers.set(key, (set = new Set()));
    set.add(w);
  }

  unwatchAll(w: Watcher): void {
    for (const key of w.watched.keys()) {
      const set = this.watchers.get(key);
      if (set === undefined) continue;
      set.delete(w);
      if (set.size === 0) this.watchers.delete(key);
    }
    w.watched.clear();
    w.dirty = false;
  }

  /** A key was written (or deleted, or expired): EXEC of every client WATCHing it will fail. */
  touch(key: string): void {
    const set = this.watchers.get(key);
    if (set === undefined) return;
    for (const w of set) {
      const wk = w.watched.get(key);
      // Already expired when WATCHed, and now deleted: logically no change (Redis's touchWatchedKey).
      if (wk !== undefined && wk.expired && !this.map.has(key)) {
        wk.expired = false;
        continue;
      }
      w.dirty = true;
    }
  }

  /** Whether a key WATCHed while it was live has expired since (Redis's isWatchedKeyExpired). */
  watchedKeyExpired(w: Watcher): boolean {
    const now = Date.now();
    for (const [key, wk] of w.watched) {
      if (wk.expired) continue;
      const e = this.map.get(key);
      if (e !== undefined && e.expireAt !== 0 && e.expireAt <= now) return true;
    }
    return false;
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

  /** get() without touching the LRU clock (OBJECT, TTL-like lookups that Redis makes with LOOKUP_NOTOUCH). */
  peek(key: string): LiveEntry | undefined {
    const e = this.map.get(key) as LiveEntry | undefined;
    if (e === undefined) return undefined;
    if (e.expireAt !== 0 && e.expireAt <= Date.now()) {
      this.delete(key);
      this.stats.expiredKeys++;
      return undefined;
    }
    return e;
  }

  /**
   * Samples of the LRU clock against wall time, taken by tick() (10 per second): they
   * turn an entry's `lru` into a time for OBJECT IDLETIME without a clock read per access.
   */
  #clockTimes: number[] = [];
  #clockValues: number[] = [];

  tick(now = Date.now()): void {
    if (this.#clockValues.length >= 100_000) {
      this.#clockValues.splice(0, 50_000);
      this.#clockTimes.splice(0, 50_000);
    }
    this.#clockValues.push(this.clock);
    this.#clockTimes.push(now);
  }

  /** About when an entry was last touched: the first tick at which the clock had passed its `lru`. */
  lastAccess(e: Entry): number {
    const v = this.#clockValues;
    let lo = 0;
    let hi = v.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (v[mid]! < e.lru) lo = mid + 1;
      else hi = mid;
    }
    return lo < v.length ? this.#clockTimes[lo]! : Date.now();
  }

  /** A random live key (RANDOMKEY), or undefined when there is none. */
  randomKey(): string | undefined {
    const now = Date.now();
    for (let tries = 0; tries < 100 && this.map.size > 0; tries++) {
      const e = this.order[Math.floor(Math.random() * this.order.length)]!;
      if (e.value === null) continue;
      if (e.expireAt !== 0 && e.expireAt <= now) {
        this.delete(e.key);
        this.stats.expiredKeys++;
        continue;
      }
      return e.key;
    }
    for (const key of this.map.keys()) if (this.peek(key) !== undefined) return key;
    return undefined;
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
    let e = this.map.get(key);
    if (e !== undefined && e.expireAt !== 0 && e.expireAt <= Date.now()) {
      this.delete(key);
      this.stats.expiredKeys++;
      e = undefined;
    }
    if (e !== undefined && e.exclusive && (e.value as Buffer).length === len) {
      // The same length over a value nothing else refers to: no allocation, and no
      // garbage (a cache rewriting fixed-size records, counters, sessions).
      src.copy(e.value as Buffer, 0, start, end);
      if (this.watchers.size !== 0) this.touch(key);
      if (e.expireAt !== 0) this.setExpire(e, 0);
      e.enc = ENC_AUTO;
      e.lru = ++this.clock;
      return;
    }
    const inArena = len >= this.threshold;
    const value = inArena ? this.#arenaAlloc(len) : Buffer.allocUnsafe(len);
    src.copy(value, 0, start, end);
    this.#put(e, key, value, inArena, 0).exclusive = !inArena && len < OWN_BUFFER;
  }

  /** `expireAt` as for set(). */
  setOwned(key: string, value: Buffer, inArena: boolean, expireAt: number | undefined): void {
    this.#put(this.map.get(key), key, value, inArena, expireAt);
  }

  /** Stores value under key, in e (the key's entry) or a new entry when e is undefined; returns the entry. */
  #put(e: Entry | undefined, key: string, value: Buffer, inArena: boolean, expireAt: number | undefined): Entry {
    if (e === undefined) {
      e = {
        key,
        type: T_STRING,
        value,
        inArena,
        enc: ENC_AUTO,
        expireAt: 0,
        lru: 0,
        seq: this.seq++,
        slot: this.order.length,
        cost: 0,
        exclusive: false,
      };
      this.map.set(key, e);
      this.order.push(e);
    } else {
      this.used -= e.cost;
      this.#freeValue(e);
      e.type = T_STRING;
      e.value = value;
      e.inArena = inArena;
      e.enc = ENC_AUTO;
      e.exclusive = false;
    }
    if (this.watchers.size !== 0) this.touch(key);
    if (inArena) {
      this.arenaValues++;
      this.arenaBytes += value.length;
    }
    if (expireAt !== undefined) this.setExpire(e, expireAt);
    e.lru = ++this.clock;
    e.cost = this.#cost(key, value, inArena);
    this.used += e.cost;
    return e;
  }

  setExpire(e: Entry, expireAt: number): void {
    if (this.watchers.size !== 0) this.touch(e.key);
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
    if (this.watchers.size !== 0) this.touch(key);
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
    // FLUSHALL touches the WATCHed keys that exist (Redis's touchAllWatchedKeysInDb).
    for (const key of this.watchers.keys()) if (this.map.has(key)) this.touch(key);
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
