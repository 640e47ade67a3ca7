/**
 * Mergeable memory: page-aligned private anonymous mappings handed out as Buffers,
 * madvise on any ArrayBuffer, and process-wide merging (prctl).
 */
import { constants as bufferConstants } from 'node:buffer';
import { binding, native } from './binding';
import { KsmError, invalidArgType, validateBoolean, validateInteger } from './errors';

/** The system's page size (`sysconf(_SC_PAGESIZE)`); 0 where KSM is unsupported. */
export const pageSize: number = binding?.pageSize ?? 0;

/** The largest `size` that `alloc` accepts: the largest Buffer this Node can make. */
export const maxAllocSize: number = bufferConstants.MAX_LENGTH;

/** Options of {@link alloc}. */
export interface AllocOptions {
  /** Mark the mapping `MADV_MERGEABLE` (default true). */
  mergeable?: boolean;
}

/** Memory node-ksm can be handed: any view (Buffer, TypedArray, DataView) or an ArrayBuffer. */
export type BinaryLike = ArrayBufferView | ArrayBuffer;

function isBinary(value: unknown): value is BinaryLike {
  return ArrayBuffer.isView(value) || value instanceof ArrayBuffer;
}

/**
 * Every ArrayBuffer an Arena hands out carries, under this symbol, where it is (chunk slot
 * and first page), or ARENA_RELEASED once given back. While attached the addon recognises
 * an arena buffer by its address; once detached only this mark says it was ours. A
 * property, not a WeakMap: a WeakMap entry per buffer cost ~3 us per alloc+release
 * (ephemeron write barriers and GC work), more than half of the arena's time. Changing
 * it can only make release() refuse the buffer: the arena checks the mark against its
 * own record of which buffer holds that run.
 */
export const arenaMark = Symbol('node-ksm arena buffer');
export const ARENA_RELEASED = -1;
/** A zero-length arena buffer: it has no pages, so nothing the addon could recognise. */
export const ARENA_EMPTY = -2;
type Marked = ArrayBuffer & { [arenaMark]?: unknown };

/** The arena mark of an ArrayBuffer: a number if an Arena made it, else undefined. */
export function arenaMarkOf(ab: ArrayBuffer): number | undefined {
  const id = (ab as Marked)[arenaMark];
  return typeof id === 'number' ? id : undefined;
}

/** An arena buffer that holds no memory any more: released, or detached by free(). */
export function deadArenaView(ab: ArrayBuffer, info: unknown): boolean {
  const id = arenaMarkOf(ab);
  return id === ARENA_RELEASED || (id !== undefined && id >= 0 && info === null);
}

/**
 * A view's offset and length, or 0 and 0 when it has none to give: a DataView whose
 * getters throw because its ArrayBuffer was detached, or (resizable) shrunk to end before
 * the view does. (A TypedArray reports 0 and 0 then by itself.)
 */
export function viewRange(buf: ArrayBufferView | ArrayBuffer): { byteOffset: number; byteLength: number } {
  if (buf instanceof ArrayBuffer) return { byteOffset: 0, byteLength: buf.byteLength };
  try {
    return { byteOffset: buf.byteOffset, byteLength: buf.byteLength };
  } catch {
    return { byteOffset: 0, byteLength: 0 };
  }
}

/** The ArrayBuffer behind a view (or the ArrayBuffer itself). */
export function arrayBufferOf(value: unknown, name = 'buffer'): ArrayBuffer {
  if (value instanceof ArrayBuffer) return value;
  if (ArrayBuffer.isView(value) && value.buffer instanceof ArrayBuffer) return value.buffer;
  throw invalidArgType(name, 'an instance of Buffer, TypedArray, DataView or ArrayBuffer', value);
}

/** Turns an `EINVAL` from madvise/prctl into the reason a person can act on. */
function unsupportedIfEinval(err: unknown, what: string): unknown {
  if (err instanceof KsmError && err.code === 'EINVAL') {
    return new KsmError(`${what}: this kernel does not support it (${err.message})`, 'ERR_KSM_UNSUPPORTED', {
      errno: err.errno,
      syscall: err.syscall,
      cause: err,
    });
  }
  return err;
}

/**
 * A zero-filled Buffer of `size` bytes at the start of its own private anonymous
 * mapping (page aligned, rounded up to whole pages), `MADV_MERGEABLE` unless
 * `mergeable: false`, and `MADV_NOHUGEPAGE`. Freed by `free()` or by the GC.
 */
export function alloc(size: number, options: AllocOptions = {}): Buffer {
  validateInteger(size, 'size', 0, maxAllocSize);
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const mergeable = options.mergeable === undefined ? true : validateBoolean(options.mergeable, 'options.mergeable');
  const b = native();
  let ab: ArrayBuffer;
  try {
    ab = b.alloc(size, mergeable);
  } catch (err) {
    throw unsupportedIfEinval(err, 'MADV_MERGEABLE');
  }
  return Buffer.from(ab, b.mode === 'window' ? b.info(ab)!.bufferOffset : 0, size);
}

/** `alloc` + a copy of a string (in `encoding`, default utf8), ArrayBuffer or view. */
export function from(data: string | BinaryLike, encoding?: BufferEncoding, options?: AllocOptions): Buffer {
  if (typeof data === 'string') {
    if (encoding !== undefined && !Buffer.isEncoding(encoding)) {
      throw invalidArgType('encoding', 'a valid Buffer encoding', encoding);
    }
    const buf = alloc(Buffer.byteLength(data, encoding), options);
    buf.write(data, 0, encoding);
    return buf;
  }
  if (!isBinary(data)) throw invalidArgType('data', 'a string, Buffer, TypedArray, DataView or ArrayBuffer', data);
  // A detached buffer (one that free() or a transfer took) reads as length 0, so it copies
  // as nothing, as does a view its resizable buffer no longer reaches.
  const { byteOffset, byteLength } = viewRange(data);
  const bytes =
    byteLength === 0
      ? new Uint8Array(0)
      : data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : new Uint8Array(data.buffer, byteOffset, byteLength);
  const buf = alloc(bytes.byteLength, options);
  buf.set(bytes);
  return buf;
}

/**
 * Unmaps a buffer from `alloc` now and detaches its ArrayBuffer, so every view of it
 * reads as length 0. Returns true if this call freed it, false if it was already freed.
 * A buffer that node-ksm did not allocate gets `ERR_KSM_NOT_OWNED`.
 */
export function free(buf: BinaryLike): boolean {
  const ab = arrayBufferOf(buf);
  const b = native();
  const id = arenaMarkOf(ab);
  if (id === undefined) return b.free(ab);
  // An arena buffer is detached (its pages stay the arena's until release()); one that is
  // released, empty, or detached already has nothing left to free.
  return id >= 0 && b.info(ab) !== null ? b.free(ab) : false;
}

/** True if node-ksm allocated this buffer (freed or not). */
export function isKsmBuffer(buf: unknown): boolean {
  if (binding === null || !isBinary(buf)) return false;
  const ab = buf instanceof ArrayBuffer ? buf : buf.buffer;
  return ab instanceof ArrayBuffer && (arenaMarkOf(ab) !== undefined || binding.info(ab) !== null);
}

/**
 * `MADV_MERGEABLE` (on) or `MADV_UNMERGEABLE` (off) over the whole allocation behind
 * `buf`. Turning it off unmerges: every merged page gets its own copy again.
 */
export function setMergeable(buf: BinaryLike, on: boolean): void {
  const ab = arrayBufferOf(buf);
  validateBoolean(on, 'on');
  const b = native();
  const info = b.info(ab);
  if (deadArenaView(ab, info) || info?.freed) throw new KsmError('This buffer has already been freed', 'ERR_KSM_FREED');
  if (info === null) throw new KsmError('This buffer was not allocated by node-ksm', 'ERR_KSM_NOT_OWNED');
  if (info.freed) throw new KsmError('This buffer has already been freed', 'ERR_KSM_FREED');
  try {
    b.madvise(ab, 0, info.extent, on ? b.advice.MERGEABLE : b.advice.UNMERGEABLE);
  } catch (err) {
    throw unsupportedIfEinval(err, on ? 'MADV_MERGEABLE' : 'MADV_UNMERGEABLE');
  }
}

/**
 * Marks the page-aligned interior of any ArrayBuffer or view mergeable (or, with
 * `on = false`, unmergeable) and says which bytes it covered: `{ offset, length }`
 * relative to the view; `length` is 0 when the view holds no whole page.
 */
export function markMergeable(view: BinaryLike, on = true): { offset: number; length: number } {
  if (!isBinary(view)) throw invalidArgType('view', 'an instance of Buffer, TypedArray, DataView or ArrayBuffer', view);
  // The addon cannot locate a SharedArrayBuffer's memory (bufferStats refuses it the same way).
  if (!(view instanceof ArrayBuffer) && !(view.buffer instanceof ArrayBuffer)) {
    throw invalidArgType(
      'view',
      'an instance of Buffer, TypedArray, DataView or ArrayBuffer over an ArrayBuffer (not a SharedArrayBuffer)',
      view,
    );
  }
  validateBoolean(on, 'on');
  try {
    return native().markMergeable(view, on);
  } catch (err) {
    throw unsupportedIfEinval(err, 'MADV_MERGEABLE');
  }
}

/** `prctl(PR_SET_MEMORY_MERGE)`: make all of this process's anonymous memory mergeable (Linux 6.4+). */
export function setProcessMerging(on: boolean): void {
  validateBoolean(on, 'on');
  try {
    native().setProcessMerging(on);
  } catch (err) {
    throw unsupportedIfEinval(err, 'PR_SET_MEMORY_MERGE');
  }
}

/** `prctl(PR_GET_MEMORY_MERGE)`: whether process-wide merging is on. */
export function processMerging(): boolean {
  try {
    return native().processMerging();
  } catch (err) {
    throw unsupportedIfEinval(err, 'PR_GET_MEMORY_MERGE');
  }
}

/**
 * Gives the free pages of the C heap back to the system (glibc `malloc_trim(0)`). Node
 * reads every socket chunk into a fresh C-heap buffer and frees it only when V8 collects
 * the Buffer; glibc keeps the pages of freed blocks resident unless they sit at the very
 * top of the heap, so after a burst of I/O a process can hold many MiB of free heap. Call
 * it when the process goes quiet (after a GC, so that dead Buffers are freed first).
 * Returns false, doing nothing, where the C library has no such call (musl).
 * node-ksm's own buffers need no call: after a burst of them freed without yielding to the
 * event loop, the addon trims once their records are finalized.
 */
export function trimHeap(): boolean {
  return native().trimHeap();
}
