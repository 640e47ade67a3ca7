/**
 * Arena: many page-aligned, zero-padded buffers carved out of a few large mergeable
 * mappings ("chunks"), so a service can hold 100,000 blobs without 100,000 mappings
 * (one mmap per buffer costs syscalls per allocation and, once every other buffer is
 * freed, one VMA per survivor against vm.max_map_count = 65530).
 *
 * Why these choices:
 *
 * - Each buffer is its own external ArrayBuffer over its pages (`native.view`), not a
 *   slice of the chunk's ArrayBuffer. `release()` detaches it, so a released buffer reads
 *   as length 0 and can never see the pages after another buffer reuses them; and a view
 *   holds its mapping, so a buffer kept after the Arena is dropped is never freed memory.
 *   The views are light: no tag, wrap or weak reference per buffer (the addon knows an
 *   attached view by its address), which halves the cost of an allocation; so the arena
 *   keeps its live views itself, to detach them on `close()`.
 *
 * - Free space: a page-run allocator per chunk with boundary tags (O(1) coalescing with
 *   both neighbours on release) and segregated free lists (exact lists for 1..16 pages,
 *   then four lists per power of two), searched good-fit through a bitmap: the request
 *   is served from its own list if a run there fits, else from the head of the next
 *   non-empty larger list, and the rest of the run stays free. Chunks are tried in a
 *   fixed order (lowest slot first), which packs live data into the first chunks and
 *   lets the later ones drain and go back to the system: address-ordered fits are the
 *   policies with the least fragmentation in Johnstone & Wilson's allocator studies.
 *   Size classes alone (slabs) would need a slab per size for blobs of any size and
 *   strand memory in half-empty slabs; a run allocator reuses any hole for any size.
 *   Runs are whole pages because KSM merges whole pages: a blob must start on a page
 *   and its padding must be zero for two equal blobs to become equal pages.
 *
 * - Released pages are returned by time, not by emptiness (the model of jemalloc's
 *   dirty_decay_ms and mimalloc's purge delay): a released run stays resident ("dirty")
 *   and is reused first, zeroed with memset where a buffer must read as zero; pages unused
 *   for `purgeDelayMs` are returned with MADV_DONTNEED by an unref'd timer, and all of
 *   them at once when more than `maxDirtyBytes` are waiting. Refaulting a page costs far
 *   more than zeroing it (measured here: DONTNEED + refault of 16 KiB ~14 us, memset
 *   ~1 us), and a live set that empties (one request at a time, batches released
 *   together) used to pay that on every cycle when emptiness was the trigger. The timer
 *   ticks every quarter of the delay while pages are dirty and stops when none are; each
 *   page carries the tick it was released in, so a page is returned once unused for at
 *   least the delay and at most 1.25 times it.
 *   MADV_DONTNEED, not MADV_FREE: a lazily freed page stays in RSS (and in the cgroup's
 *   charge) until the kernel is short of memory, so nothing an operator reads would go
 *   down; the kernel skips pages mapped more than once, so a merged page (KSM) would stay
 *   mapped and keep its stable page alive; and it leaves the contents undefined (old
 *   bytes or zeros), where DONTNEED makes a returned page read as zero again, which is
 *   what keeps fresh runs and padding zero without a memset. A dirty page that ksmd
 *   merges in the meantime costs no more than any dirty page: it is counted in
 *   `maxDirtyBytes`, returned on the same schedule, and its reuse breaks the sharing with
 *   a copy-on-write fault instead of a memset.
 *
 * - An emptied chunk keeps its dirty pages like any other; once they are returned, one
 *   empty chunk is kept (it costs address space and one VMA, no memory), so a live set
 *   that oscillates around a chunk boundary does not mmap/munmap a whole chunk on each
 *   crossing, and any further empty chunk is unmapped. Allocations larger than a chunk
 *   get a mapping of their own (an `alloc` buffer).
 *
 * - Bookkeeping per buffer is one property on its ArrayBuffer (`arenaMark` in memory.ts:
 *   a small number naming the chunk and first page); the run's length and padding live in per-chunk typed arrays
 *   (17 bytes per page of chunk, about 0.4 %). Like malloc, the arena is explicit: a
 *   buffer dropped without `release()` keeps its pages until `close()`. (GC reclaim
 *   through a FinalizationRegistry would cost a registration per buffer and is not
 *   reliable: in this project's test runs its callbacks stopped for the whole process.)
 */
import { native, type NativeBinding } from './binding';
import { KsmError, invalidArgType, validateBoolean, validateInteger } from './errors';
import {
  ARENA_EMPTY,
  ARENA_RELEASED,
  arenaMark,
  arenaMarkOf,
  arrayBufferOf,
  maxAllocSize,
  type BinaryLike,
} from './memory';

/** Options of `new` {@link Arena}. */
export interface ArenaOptions {
  /** Bytes per chunk (rounded up to whole pages). Default 64 MiB. */
  chunkSize?: number;
  /** Mark chunks MADV_MERGEABLE (default true). */
  mergeable?: boolean;
  /**
   * Released bytes that may stay resident ("dirty": kept for reuse, zeroed when a buffer
   * that must read as zero gets them) while they wait for `purgeDelayMs`. Past it, every
   * dirty page is returned with MADV_DONTNEED at once. 0 returns every release at once.
   * Default 64 MiB.
   */
  maxDirtyBytes?: number;
  /**
   * How long released pages stay resident for reuse, in milliseconds: a background timer
   * (unref'd: it never keeps the process alive) returns the pages unused for that long
   * with MADV_DONTNEED, at most a quarter of the delay later, and an emptied chunk after
   * them. 0 returns every release at once, as `maxDirtyBytes: 0` does. Default 1000.
   */
  purgeDelayMs?: number;
}

/** What an {@link Arena} holds ({@link Arena.stats}). */
export interface ArenaStats {
  /** Mappings held, dedicated ones (allocations larger than a chunk) included. */
  chunks: number;
  /** Their total size. */
  mappedBytes: number;
  /** Buffers allocated and not yet released. */
  liveBuffers: number;
  /** The sum of their sizes, as requested. */
  liveBytes: number;
  /** Free pages inside chunks, in bytes (not resident, except `dirtyBytes`). */
  freeBytes: number;
  /**
   * External fragmentation, 0..1: the share of `freeBytes` outside the largest free run
   * of each chunk (0 when every chunk's free space is one run; near 1 when it is all
   * small holes between live buffers).
   */
  fragmentation: number;
  /**
   * Released pages still resident, waiting to be reused or returned (within
   * `purgeDelayMs`, and never more than `maxDirtyBytes`).
   */
  dirtyBytes: number;
}

/** Slots are encoded with the first page in one number: `slot + page * SLOT_SPAN`. */
const SLOT_SPAN = 65536;
/** Free lists: exact for 1..16 pages, then four per power of two up to 2^31 pages. */
const EXACT = 16;
const CLASSES = EXACT + 27 * 4;
/** Runs looked at in the request's own (inexact) list before moving to a larger one. */
const LIST_SCAN = 8;
const DEFAULT_MAX_DIRTY = 64 * 1024 * 1024;
const DEFAULT_PURGE_DELAY_MS = 1000;
/** setTimeout's longest delay. */
const MAX_DELAY_MS = 2 ** 31 - 1;
/**
 * The purge timer ticks every 1/TICKS of the delay; a page released during tick t is
 * returned on tick t + TICKS + 1, after at least the delay and at most (TICKS + 1)/TICKS
 * of it. Ticks are counted modulo STAMPS, and a page's stamp is its tick + 1 (0: clean),
 * so one byte per page holds it: no dirty page outlives TICKS + 1 ticks.
 */
const TICKS = 4;
const STAMPS = 255;

type Marked = ArrayBuffer & { [arenaMark]?: number };

/**
 * Best effort: a buffer frozen by its user keeps its old mark, and the ownership check
 * refuses it next time. (A plain store in a try: Reflect.set is a call into C++ each time.)
 */
function markReleased(ab: ArrayBuffer): void {
  try {
    (ab as Marked)[arenaMark] = ARENA_RELEASED;
  } catch {
    // frozen or sealed by its user
  }
}

function classOf(pages: number): number {
  if (pages <= EXACT) return pages - 1;
  const e = 31 - Math.clz32(pages);
  return EXACT + (e - 4) * 4 + ((pages >>> (e - 2)) & 3);
}

/** A mapping of its own for one allocation larger than a chunk: the buffer is its owner. */
interface Dedicated {
  dedicated: true;
  slot: number;
  size: number;
  pages: number;
  ab: ArrayBuffer;
}

interface Chunk {
  dedicated: false;
  slot: number;
  ab: ArrayBuffer;
  pages: number;
  usedPages: number;
  freePages: number;
  dirtyPages: number;
  /** Bounds of the dirty pages: none lies outside [dirtyLo, dirtyHi). */
  dirtyLo: number;
  dirtyHi: number;
  u8: Uint8Array;
  /** At each run's first page: +pages if allocated, -pages if free. */
  len: Int32Array;
  /** At each run's last page: its first page. */
  startOf: Int32Array;
  /** Free runs: list links by first page. Allocated runs: next[first] = padding bytes. */
  next: Int32Array;
  prev: Int32Array;
  bins: Int32Array;
  bitmap: Uint32Array;
  /**
   * Per page: 0 if clean (allocated, or free and not resident), else the stamp of the
   * tick it was released in (free, resident, holding a released buffer's bytes).
   */
  dirty: Uint8Array;
  /** The live buffer of each allocated run, by first page (detached by close()). */
  views: (ArrayBuffer | undefined)[];
  /**
   * Kept views: by first page of a released run whose pages are still dirty, the
   * ArrayBuffer its buffer was transferred to, still attached over those pages and held
   * only here, to be handed out again to an allocation of the same run and length.
   */
  kept: (ArrayBuffer | undefined)[];
  keptCount: number;
}

/**
 * `ArrayBuffer.prototype.transfer` (Node 21+): moves a backing store to a new ArrayBuffer
 * object without copying, and detaches the old one. Where it exists a released buffer is
 * transferred rather than detached, and the new ArrayBuffer kept for the next allocation of
 * the same run: creating and detaching an external ArrayBuffer goes through Node's
 * finalizer machinery (a record per buffer, a cross-thread wake-up of the event loop per
 * batch of detached buffers), a transfer does not.
 */
const canTransfer = typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === 'function';

/**
 * Many page-aligned buffers carved out of a few large mergeable mappings, so a service
 * can hold 100,000 blobs without 100,000 mappings (`vm.max_map_count` is 65530 by
 * default) and allocate them faster than one mapping each. Use {@link alloc} for a few
 * large, long-lived buffers; an Arena for many blobs.
 *
 * Each buffer starts on a page and is zero to the end of its last page, so identical
 * blobs merge fully, odd sizes included. An arena is explicit like `malloc`: a buffer
 * dropped without {@link Arena.release} keeps its pages until {@link Arena.close}.
 * Releasing twice gives `ERR_KSM_FREED`, a buffer from elsewhere `ERR_KSM_NOT_OWNED`,
 * using a closed arena `ERR_KSM_CLOSED`. Not available in window mode.
 */
export class Arena {
  /** Bytes per chunk, rounded up to whole pages. */
  readonly chunkSize: number;
  /** Whether the chunks are marked MADV_MERGEABLE. */
  readonly mergeable: boolean;
  /** The `maxDirtyBytes` in force (the option, or its default). */
  readonly maxDirtyBytes: number;
  /** The `purgeDelayMs` in force (the option, or its default). */
  readonly purgeDelayMs: number;
  readonly #b: NativeBinding;
  readonly #page: number;
  readonly #chunkPages: number;
  readonly #maxDirtyPages: number;
  /** Releases go back at once (a delay or cap of 0): no page is ever left dirty. */
  readonly #eager: boolean;
  /** Every chunk by slot; regular chunks also in #chunks, in slot order. */
  readonly #slots: (Chunk | Dedicated | undefined)[] = [];
  #chunks: Chunk[] = [];
  /** Live zero-length buffers (they have no pages, so no place in a chunk). */
  readonly #empty = new Set<ArrayBuffer>();
  /** The one empty, clean chunk kept mapped. */
  #spare: Chunk | null = null;
  #closed = false;
  #liveBuffers = 0;
  #liveBytes = 0;
  #dirtyPages = 0;
  /** The purge timer's tick count, modulo STAMPS. */
  #tick = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: ArenaOptions = {}) {
    if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
    const b = native();
    this.#b = b;
    this.#page = b.pageSize;
    const chunkSize =
      options.chunkSize === undefined
        ? 64 * 1024 * 1024
        : validateInteger(options.chunkSize, 'options.chunkSize', 1, maxAllocSize);
    this.#chunkPages = Math.ceil(chunkSize / this.#page);
    this.chunkSize = this.#chunkPages * this.#page;
    this.mergeable = options.mergeable === undefined ? true : validateBoolean(options.mergeable, 'options.mergeable');
    this.maxDirtyBytes =
      options.maxDirtyBytes === undefined
        ? DEFAULT_MAX_DIRTY
        : validateInteger(options.maxDirtyBytes, 'options.maxDirtyBytes');
    this.purgeDelayMs =
      options.purgeDelayMs === undefined
        ? DEFAULT_PURGE_DELAY_MS
        : validateInteger(options.purgeDelayMs, 'options.purgeDelayMs', 0, MAX_DELAY_MS);
    this.#maxDirtyPages = Math.floor(this.maxDirtyBytes / this.#page);
    this.#eager = this.#maxDirtyPages === 0 || this.purgeDelayMs === 0;
  }

  /** True once `close()` has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * A Buffer of exactly `size` bytes that starts on a page boundary and is zero to the
   * end of its last page. Give it back with `release()`.
   */
  alloc(size: number): Buffer {
    return this.#alloc(size, 0);
  }

  /**
   * Like `alloc()`, but like `Buffer.allocUnsafe()` its `size` bytes are not zeroed: they
   * may hold the bytes of a buffer this arena released before. Its padding, from `size` to
   * the end of its last page, is still zero, so equal contents still make equal pages.
   * For a buffer that is about to be written whole; saves a memset of its size.
   */
  allocUnsafe(size: number): Buffer {
    return this.#alloc(size, size);
  }

  /** `zeroFrom`: the first byte of the run that must read as zero (0, or `size` when unsafe). */
  #alloc(size: number, zeroFrom: number): Buffer {
    validateInteger(size, 'size', 0, maxAllocSize);
    if (this.#closed) throw new KsmError('This Arena has been closed', 'ERR_KSM_CLOSED');
    if (size === 0) return this.#allocEmpty();
    const b = this.#b;
    const page = this.#page;
    const pages = Math.ceil(size / page);
    if (pages > this.#chunkPages) return this.#allocDedicated(size, pages);

    const k = classOf(pages);
    let chunk: Chunk | undefined;
    let start = -1;
    for (const c of this.#chunks) {
      start = findRun(c, pages, k);
      if (start >= 0) {
        chunk = c;
        break;
      }
    }
    if (chunk === undefined) {
      chunk = this.#newChunk();
      start = 0;
    }
    if (chunk === this.#spare) this.#spare = null;
    const run = -chunk.len[start]!;
    removeFree(chunk, start, run);
    if (run > pages) insertFree(chunk, start + pages, run - pages);
    chunk.len[start] = pages;
    chunk.startOf[start + pages - 1] = start;
    chunk.next[start] = pages * page - size;
    chunk.usedPages += pages;
    chunk.freePages -= pages;
    if (chunk.dirtyPages > 0) this.#zeroDirty(chunk, start, pages, zeroFrom);

    let buf: Buffer;
    let ab = chunk.keptCount > 0 ? this.#takeKept(chunk, start, start + pages, size) : undefined;
    if (ab !== undefined) {
      buf = Buffer.from(ab, 0, size);
    } else {
      try {
        buf = b.view(chunk.ab, start * page, size);
      } catch (err) {
        // Its pages are clean now (fresh, or zeroed from `zeroFrom` on): free, not dirty.
        this.#freeRun(chunk, start, pages);
        if (chunk.usedPages === 0 && chunk.dirtyPages === 0) this.#retire(chunk);
        throw err;
      }
      ab = buf.buffer as ArrayBuffer;
    }
    (ab as Marked)[arenaMark] = chunk.slot + start * SLOT_SPAN;
    chunk.views[start] = ab;
    this.#liveBuffers++;
    this.#liveBytes += size;
    return buf;
  }

  /**
   * Gives a buffer's pages back to the arena and detaches it: it (and every view of its
   * ArrayBuffer) reads as length 0 from now on. `ERR_KSM_FREED` if it was already
   * released, `ERR_KSM_NOT_OWNED` if this arena did not allocate it.
   */
  release(buf: BinaryLike): void {
    const ab = arrayBufferOf(buf, 'buf');
    const id = arenaMarkOf(ab);
    if (id === undefined) throw new KsmError('This buffer was not allocated by an Arena', 'ERR_KSM_NOT_OWNED');
    if (this.#closed) throw new KsmError('This Arena has been closed', 'ERR_KSM_CLOSED');
    if (id === ARENA_RELEASED) throw new KsmError('This buffer has already been released', 'ERR_KSM_FREED');
    if (id === ARENA_EMPTY) {
      if (!this.#empty.delete(ab))
        throw new KsmError('This buffer was not allocated by this Arena', 'ERR_KSM_NOT_OWNED');
      markReleased(ab);
      this.#liveBuffers--;
      return;
    }
    // Whose: the chunk slot and page it names must hold this very buffer, in this arena.
    const slot = id % SLOT_SPAN;
    const start = (id - slot) / SLOT_SPAN;
    const chunk = this.#slots[slot];
    if (chunk === undefined || (chunk.dedicated ? chunk.ab !== ab : chunk.views[start] !== ab)) {
      throw new KsmError('This buffer was not allocated by this Arena', 'ERR_KSM_NOT_OWNED');
    }
    markReleased(ab);
    if (chunk.dedicated) {
      // It owns its mapping: this unmaps it (false if free() already did).
      this.#b.free(ab);
      this.#reclaim(chunk, start, undefined);
      return;
    }
    chunk.views[start] = undefined;
    let kept: ArrayBuffer | undefined;
    if (canTransfer && !this.#eager && !ab.detached) {
      try {
        kept = ab.transfer();
      } catch {
        // A runtime that refuses to move this backing store: detached below instead.
      }
    }
    if (kept === undefined && !this.#b.detachView(ab) && this.#b.viewAttached(chunk.ab, start * this.#page)) {
      // Detached before it came back, yet its view is still attached: something moved the
      // backing store to another ArrayBuffer (`buf.buffer.transfer()`), which still reaches
      // these pages. They stay allocated, counted as live, until close(), so that nothing
      // else is ever handed the bytes that ArrayBuffer can read and write.
      return;
    }
    this.#reclaim(chunk, start, kept);
  }

  stats(): ArenaStats {
    let chunks = 0;
    let mappedPages = 0;
    let freePages = 0;
    let largest = 0;
    for (const c of this.#slots) {
      if (c === undefined) continue;
      chunks++;
      mappedPages += c.pages;
      if (c.dedicated) continue;
      freePages += c.freePages;
      largest += largestFree(c);
    }
    return {
      chunks,
      mappedBytes: mappedPages * this.#page,
      liveBuffers: this.#liveBuffers,
      liveBytes: this.#liveBytes,
      freeBytes: freePages * this.#page,
      fragmentation: freePages === 0 ? 0 : 1 - largest / freePages,
      dirtyBytes: this.#dirtyPages * this.#page,
    };
  }

  /**
   * Unmaps every chunk now, dirty pages included. Every buffer the arena handed out reads
   * as length 0; `alloc` and `release` throw `ERR_KSM_CLOSED` from now on. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const c of this.#slots) {
      if (c === undefined) continue;
      if (!c.dedicated) {
        for (const view of c.views) if (view !== undefined) this.#b.detachView(view);
        this.#dropKept(c, 0, c.pages);
      }
      this.#b.free(c.ab);
    }
    this.#slots.length = 0;
    this.#empty.clear();
    this.#chunks = [];
    this.#spare = null;
    this.#liveBuffers = this.#liveBytes = 0;
    this.#dirtyPages = 0;
  }

  /**
   * Zero bytes need no page (and an external ArrayBuffer of length 0 keeps no address the
   * addon could recognise it by): an ordinary empty ArrayBuffer, counted as live.
   */
  #allocEmpty(): Buffer {
    const ab = new ArrayBuffer(0);
    (ab as Marked)[arenaMark] = ARENA_EMPTY;
    this.#empty.add(ab);
    this.#liveBuffers++;
    return Buffer.from(ab);
  }

  #allocDedicated(size: number, pages: number): Buffer {
    const slot = this.#freeSlot();
    const ab = this.#b.alloc(size, this.mergeable);
    this.#slots[slot] = { dedicated: true, slot, size, pages, ab };
    (ab as Marked)[arenaMark] = slot;
    this.#liveBuffers++;
    this.#liveBytes += size;
    return Buffer.from(ab, 0, size);
  }

  #freeSlot(): number {
    let slot = this.#slots.indexOf(undefined);
    if (slot < 0) slot = this.#slots.length;
    if (slot >= SLOT_SPAN) throw new KsmError(`An Arena holds at most ${SLOT_SPAN} chunks`, 'ENOMEM');
    return slot;
  }

  #newChunk(): Chunk {
    const slot = this.#freeSlot();
    const n = this.#chunkPages;
    const ab = this.#b.alloc(n * this.#page, this.mergeable);
    const chunk: Chunk = {
      slot,
      ab,
      pages: n,
      dedicated: false,
      usedPages: 0,
      freePages: n,
      dirtyPages: 0,
      dirtyLo: n,
      dirtyHi: 0,
      u8: new Uint8Array(ab),
      len: new Int32Array(n),
      startOf: new Int32Array(n),
      next: new Int32Array(n),
      prev: new Int32Array(n),
      bins: new Int32Array(CLASSES).fill(-1),
      bitmap: new Uint32Array(Math.ceil(CLASSES / 32)),
      dirty: new Uint8Array(n),
      views: new Array<ArrayBuffer | undefined>(n),
      kept: new Array<ArrayBuffer | undefined>(n),
      keptCount: 0,
    };
    insertFree(chunk, 0, n);
    this.#slots[slot] = chunk;
    const at = this.#chunks.findIndex((c) => c.slot > slot);
    this.#chunks.splice(at < 0 ? this.#chunks.length : at, 0, chunk);
    return chunk;
  }

  /**
   * The run at `start` of `chunk` goes back to the free space. Its buffer was detached, or
   * transferred to `kept`, which holds its pages until they are reused or returned.
   */
  #reclaim(chunk: Chunk | Dedicated, start: number, kept: ArrayBuffer | undefined): void {
    if (chunk.dedicated) {
      this.#liveBuffers--;
      this.#liveBytes -= chunk.size;
      this.#slots[chunk.slot] = undefined;
      return;
    }
    const pages = chunk.len[start]!;
    const end = start + pages;
    this.#liveBuffers--;
    this.#liveBytes -= pages * this.#page - chunk.next[start]!;
    if (this.#eager) {
      this.#b.madvise(chunk.ab, start * this.#page, pages * this.#page, this.#b.advice.DONTNEED);
    } else {
      // An allocated run's pages are all clean: each becomes dirty, stamped with this tick.
      chunk.dirty.fill(this.#tick + 1, start, end);
      chunk.dirtyPages += pages;
      if (start < chunk.dirtyLo) chunk.dirtyLo = start;
      if (end > chunk.dirtyHi) chunk.dirtyHi = end;
      this.#dirtyPages += pages;
      if (kept !== undefined) {
        chunk.kept[start] = kept;
        chunk.keptCount++;
      }
    }
    this.#freeRun(chunk, start, pages);
    if (this.#dirtyPages > this.#maxDirtyPages) this.#purgeAll();
    else if (chunk.usedPages === 0 && chunk.dirtyPages === 0) this.#retire(chunk);
    if (this.#timer === undefined && this.#dirtyPages > 0) this.#arm();
  }

  /** Marks [start, start+pages) free, merged with free neighbours. */
  #freeRun(chunk: Chunk, start: number, pages: number): void {
    chunk.usedPages -= pages;
    chunk.freePages += pages;
    let first = start;
    let end = start + pages;
    if (end < chunk.pages && chunk.len[end]! < 0) {
      const right = -chunk.len[end]!;
      removeFree(chunk, end, right);
      end += right;
    }
    if (first > 0) {
      const left = chunk.startOf[first - 1]!;
      if (chunk.len[left]! < 0) {
        removeFree(chunk, left, -chunk.len[left]!);
        first = left;
      }
    }
    insertFree(chunk, first, end - first);
  }

  /**
   * The kept view at `start` if it has `size` bytes, for an allocation of [start, end);
   * any other kept view on those pages is detached (the addon allows one attached view per
   * page, and none may reach a buffer it does not belong to).
   */
  #takeKept(chunk: Chunk, start: number, end: number, size: number): ArrayBuffer | undefined {
    let found: ArrayBuffer | undefined;
    const kept = chunk.kept;
    for (let p = start; p < end; p++) {
      const ab = kept[p];
      if (ab === undefined) continue;
      kept[p] = undefined;
      chunk.keptCount--;
      if (p === start && ab.byteLength === size) found = ab;
      else this.#b.detachView(ab);
    }
    return found;
  }

  /** Detaches the kept views on pages [from, to). */
  #dropKept(chunk: Chunk, from: number, to: number): void {
    const kept = chunk.kept;
    for (let p = from; p < to && chunk.keptCount > 0; p++) {
      const ab = kept[p];
      if (ab === undefined) continue;
      kept[p] = undefined;
      chunk.keptCount--;
      this.#b.detachView(ab);
    }
  }

  /**
   * An empty chunk with no dirty page (none of its pages is resident, and so no kept
   * view): kept as the one spare, or unmapped.
   */
  #retire(chunk: Chunk): void {
    if (chunk === this.#spare) return;
    if (this.#spare === null) {
      this.#spare = chunk;
      return;
    }
    this.#slots[chunk.slot] = undefined;
    this.#chunks.splice(this.#chunks.indexOf(chunk), 1);
    this.#b.free(chunk.ab);
  }

  /** Zeroes the dirty pages of a run being handed out (they held a released buffer). */
  #zeroDirty(chunk: Chunk, start: number, pages: number, zeroFrom: number): void {
    const page = this.#page;
    const end = start + pages;
    const from = start * page + zeroFrom;
    const dirty = chunk.dirty;
    for (let p = start; p < end; p++) {
      if (dirty[p] === 0) continue;
      let q = p;
      while (q < end && dirty[q] !== 0) dirty[q++] = 0;
      if (q * page > from) chunk.u8.fill(0, Math.max(p * page, from), q * page);
      chunk.dirtyPages -= q - p;
      this.#dirtyPages -= q - p;
      p = q;
    }
  }

  /**
   * Returns the dirty pages of `chunk` that were released at least `age` ticks ago (0:
   * all of them) with MADV_DONTNEED, each stretch of neighbouring pages in one call.
   */
  #purge(chunk: Chunk, age: number): void {
    const dirty = chunk.dirty;
    const page = this.#page;
    const dontneed = this.#b.advice.DONTNEED;
    const now = this.#tick;
    let lo = chunk.pages;
    let hi = 0;
    let from = -1;
    let purged = 0;
    const end = chunk.dirtyHi;
    for (let p = chunk.dirtyLo; p <= end; p++) {
      const s = p < end ? dirty[p]! : 0;
      // Age in ticks of a stamp: ticks count modulo STAMPS, and no stamp gets older than
      // TICKS + 1, so the difference taken modulo STAMPS is exact.
      const old = s !== 0 && (now - (s - 1) + STAMPS) % STAMPS >= age;
      if (old) {
        if (from < 0) from = p;
        dirty[p] = 0;
        continue;
      }
      if (from >= 0) {
        // A kept view over returned pages would only hold Node's records: it goes too.
        if (chunk.keptCount > 0) this.#dropKept(chunk, from, p);
        this.#b.madvise(chunk.ab, from * page, (p - from) * page, dontneed);
        purged += p - from;
        from = -1;
      }
      if (s !== 0) {
        if (p < lo) lo = p;
        hi = p + 1;
      }
    }
    chunk.dirtyPages -= purged;
    this.#dirtyPages -= purged;
    chunk.dirtyLo = lo;
    chunk.dirtyHi = hi;
  }

  /** Past `maxDirtyBytes`: every dirty page goes back now, and emptied chunks with them. */
  #purgeAll(): void {
    for (const chunk of [...this.#chunks]) {
      if (chunk.dirtyPages > 0) this.#purge(chunk, 0);
      if (chunk.usedPages === 0) this.#retire(chunk);
    }
  }

  /**
   * The timer holds the arena only weakly: an arena dropped without close() is collected
   * as before (its chunks unmapped by their finalizers), whatever its delay.
   */
  #arm(): void {
    const timer = setTimeout(Arena.#onTimer, Math.max(1, Math.ceil(this.purgeDelayMs / TICKS)), new WeakRef(this));
    timer.unref();
    this.#timer = timer;
  }

  static #onTimer(this: void, ref: WeakRef<Arena>): void {
    const arena = ref.deref();
    if (arena !== undefined) arena.#onTick();
  }

  /**
   * Every quarter of the delay while pages are dirty: returns those released more than
   * TICKS ticks ago (so unused for at least the delay), then any chunk they leave empty.
   */
  #onTick(): void {
    this.#timer = undefined;
    if (this.#closed) return;
    this.#tick = (this.#tick + 1) % STAMPS;
    for (const chunk of [...this.#chunks]) {
      if (chunk.dirtyPages > 0) this.#purge(chunk, TICKS + 1);
      if (chunk.usedPages === 0 && chunk.dirtyPages === 0) this.#retire(chunk);
    }
    if (this.#dirtyPages > 0) this.#arm();
  }
}

function insertFree(c: Chunk, start: number, pages: number): void {
  c.len[start] = -pages;
  c.startOf[start + pages - 1] = start;
  const k = classOf(pages);
  const head = c.bins[k]!;
  c.next[start] = head;
  c.prev[start] = -1;
  if (head >= 0) c.prev[head] = start;
  c.bins[k] = start;
  c.bitmap[k >>> 5]! |= 1 << (k & 31);
}

function removeFree(c: Chunk, start: number, pages: number): void {
  const k = classOf(pages);
  const p = c.prev[start]!;
  const n = c.next[start]!;
  if (p >= 0) c.next[p] = n;
  else c.bins[k] = n;
  if (n >= 0) c.prev[n] = p;
  if (c.bins[k]! < 0) c.bitmap[k >>> 5]! &= ~(1 << (k & 31));
}

/** First page of a free run of at least `pages` pages in c (good fit), or -1. */
function findRun(c: Chunk, pages: number, k: number): number {
  if (c.freePages < pages) return -1;
  let from = k;
  if (k >= EXACT) {
    let s = c.bins[k]!;
    for (let i = 0; s >= 0 && i < LIST_SCAN; i++, s = c.next[s]!) {
      if (-c.len[s]! >= pages) return s;
    }
    from = k + 1;
  }
  for (let w = from >>> 5; w < c.bitmap.length; w++) {
    let bits = c.bitmap[w]!;
    if (w === from >>> 5) bits &= ~0 << (from & 31);
    if (bits !== 0) return c.bins[(w << 5) + 31 - Math.clz32(bits & -bits)]!;
  }
  return -1;
}

function largestFree(c: Chunk): number {
  for (let w = c.bitmap.length - 1; w >= 0; w--) {
    const bits = c.bitmap[w]!;
    if (bits === 0) continue;
    let best = 0;
    for (let s = c.bins[(w << 5) + 31 - Math.clz32(bits)]!; s >= 0; s = c.next[s]!) best = Math.max(best, -c.len[s]!);
    return best;
  }
  return 0;
}
