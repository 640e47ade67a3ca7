// One fuzz seed: a seeded random sequence of node-ksm calls with valid and invalid
// arguments, in this process only (a crash takes down this seed, not the driver).
//
//   node --import tsx --expose-gc fuzz/child.mts SEED OPS [--trace]
//
// Exit 0: every call returned or threw a documented error, and every invariant held.
// Exit 3: an undocumented error or a broken invariant (details on stderr).
// Exit 4: mappings left behind after everything was freed and collected.
// Anything else (a signal, an abort, a sanitizer report) is a crash.
// --trace writes each operation to stderr before running it, so the last line before a
// crash names the call that crashed.
import os from 'node:os';
import fs from 'node:fs';
import { setImmediate as tick, setTimeout as sleep } from 'node:timers/promises';
// The library as users get it (the compiled package), and, for the raw calls the fuzzer
// makes to the addon itself, the compiled loader's binding: the one exception to
// "public entry points only" outside lib/ (see .dependency-cruiser.cjs).
import * as memory from 'node-ksm';
import { Arena, KsmError, bufferStats } from 'node-ksm';
import { binding as maybeBinding, type NativeBinding } from '../dist/binding.js';

const seed = Number(process.argv[2] ?? 1);
const totalOps = Number(process.argv[3] ?? 1000);
const trace = process.argv.includes('--trace');

function need<T>(value: T | null | undefined, message: string): T {
  if (value === null || value === undefined) {
    console.error(message);
    process.exit(2);
  }
  return value;
}
const binding: NativeBinding = need(maybeBinding, 'the native addon is not loaded');
const gc = need(globalThis.gc, 'run with --expose-gc');
const PAGE = memory.pageSize;

// --- seeded PRNG (sfc32 from a splitmix of the seed: a seed names one sequence) -------
let s0 = 0,
  s1 = 0,
  s2 = 0,
  s3 = 0;
{
  let x = seed >>> 0;
  const mix = () => {
    x = (x + 0x9e3779b9) | 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  s0 = mix();
  s1 = mix();
  s2 = mix();
  s3 = mix();
}
function rand(): number {
  const t = (((s0 + s1) | 0) + s3) | 0;
  s3 = (s3 + 1) | 0;
  s0 = s1 ^ (s1 >>> 9);
  s1 = (s2 + (s2 << 3)) | 0;
  s2 = (s2 << 21) | (s2 >>> 11);
  s2 = (s2 + t) | 0;
  return (t >>> 0) / 4294967296;
}
const int = (n: number) => Math.floor(rand() * n);
const chance = (p: number) => rand() < p;
const pick = <T,>(arr: readonly T[]): T | undefined => (arr.length === 0 ? undefined : arr[int(arr.length)]);

// --- what the run holds -----------------------------------------------------------------
/** Memory of any kind the fuzzer hands to the API. */
type Bytes = ArrayBuffer | SharedArrayBuffer | ArrayBufferView;
/** The byte every byte of a buffer holds, or null when unknown. */
type Fill = number | null;
interface Owned {
  buf: Buffer;
  fill: Fill;
  /** Bytes written (resident), counted against LIVE_CAP. */
  touched: number;
}
interface HeldArena {
  arena: Arena;
  bufs: Array<{ buf: Buffer; size: number; fill: Fill }>;
  live: number;
  liveBytes: number;
}
/** Buffers from alloc/from. */
const owned: Owned[] = [];
/** Anything freed/released, kept around to be used after free. */
const dead: Buffer[] = [];
/** Views of other things (subarrays, typed arrays, DataViews, bare ArrayBuffers). */
const views: Bytes[] = [];
/** Buffers node-ksm did not make. */
const foreign: Bytes[] = [];
const arenas: HeldArena[] = [];
let liveBytes = 0;
const LIVE_CAP = 192 * 1024 * 1024;

// --- the errors the API documents -------------------------------------------------------
const ERRNO = new Set(Object.keys(os.constants.errno));
const LIB_CODES = new Set([
  'ERR_KSM_UNSUPPORTED',
  'ERR_KSM_NOT_OWNED',
  'ERR_KSM_FREED',
  'ERR_KSM_DISABLED',
  'ERR_KSM_PERMISSION',
  'ERR_KSM_TIMEOUT',
  'ERR_KSM_PARSE',
  'ERR_KSM_CLOSED',
]);
const histogram: Record<string, number> = {};
/** An error with Node's or node-ksm's `code`. */
type CodedError = Error & { code: string };
function documented(err: unknown): err is CodedError {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return false;
  if (err instanceof KsmError) return LIB_CODES.has(code) || ERRNO.has(code);
  if (err instanceof RangeError) return code === 'ERR_OUT_OF_RANGE';
  if (err instanceof TypeError) return code === 'ERR_INVALID_ARG_TYPE' || code === 'ERR_INVALID_ARG_VALUE';
  return false;
}

class Violation extends Error {}
function check(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Violation(what);
}

let opIndex = 0;
let opName = '';
function fail(kind: string, detail: string): never {
  process.stderr.write(`FUZZ ${kind} seed=${seed} op=${opIndex} (${opName})\n${detail}\n`);
  process.exit(kind === 'LEAK' ? 4 : 3);
}

const stackOf = (err: unknown) => (err instanceof Error && err.stack !== undefined ? err.stack : String(err));

type Outcome<T> = { ok: true; value: T } | { ok: false; err: CodedError };
/** Runs one API call; documented errors are counted, anything else fails the seed. */
function call<T>(fn: () => T): Outcome<T> {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    if (err instanceof Violation) throw err;
    if (documented(err)) {
      const key = `${err.name}:${err.code}`;
      histogram[key] = (histogram[key] ?? 0) + 1;
      return { ok: false, err };
    }
    fail('UNDOCUMENTED-ERROR', stackOf(err));
  }
}

// --- values -----------------------------------------------------------------------------
/** byteLength that a detached DataView (whose getters throw) reports as 0. */
function lenOf(v: unknown): number {
  try {
    return (v as { byteLength?: number } | null | undefined)?.byteLength ?? 0;
  } catch {
    return 0;
  }
}

function describe(v: unknown): string {
  try {
    return describeUnsafe(v);
  } catch {
    return `detached ${(v as { constructor?: { name?: string } } | null | undefined)?.constructor?.name}`;
  }
}

function describeUnsafe(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'symbol' || typeof v === 'function') return typeof v;
  if (typeof v === 'boolean') return String(v);
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 20 ? `${v.slice(0, 20)}...` : v);
  if (v instanceof ArrayBuffer) return `ArrayBuffer(${v.byteLength})`;
  if (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer)
    return `SharedArrayBuffer(${v.byteLength})`;
  if (ArrayBuffer.isView(v))
    return `${v.constructor.name}(off=${v.byteOffset},len=${v.byteLength}${memory.isKsmBuffer(v) ? ',ksm' : ''})`;
  return Array.isArray(v) ? 'array' : 'object';
}

const WEIRD = (): unknown[] => [
  -1,
  -0,
  0.5,
  1.5,
  NaN,
  Infinity,
  -Infinity,
  2 ** 31,
  2 ** 32,
  2 ** 53,
  2 ** 53 + 2,
  2 ** 64,
  -(2 ** 63),
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  '4096',
  '',
  null,
  undefined,
  {},
  [],
  [4096],
  4096n,
  Symbol('x'),
  () => 1,
  true,
  false,
  new Date(0),
  { valueOf: () => 4096 },
  new Map(),
];

function sizeArg(): unknown {
  const r = rand();
  if (r < 0.45) return int(3 * PAGE + 1);
  if (r < 0.65) return PAGE * (1 + int(8));
  if (r < 0.75) return int(256 * 1024);
  if (r < 0.8) return (1 + int(64)) * 1024 * 1024; // large, mostly untouched
  if (r < 0.82) return memory.maxAllocSize; // valid, mapped lazily
  if (r < 0.85) return memory.maxAllocSize + 1 + int(2);
  return pick(WEIRD());
}

/** Any buffer-ish target the run holds, or a weird value. */
function anyTarget(): unknown {
  const r = rand();
  if (r < 0.3 && owned.length) return pick(owned)!.buf;
  if (r < 0.45 && dead.length) return pick(dead);
  if (r < 0.6 && views.length) return pick(views);
  if (r < 0.72 && foreign.length) return pick(foreign);
  if (r < 0.85) {
    const a = pick(arenas);
    const b = a && pick(a.bufs);
    if (b) return b.buf;
  }
  if (r < 0.9) return newForeign();
  return pick(WEIRD());
}

function newForeign(): Bytes {
  switch (int(11)) {
    case 9:
      return new ArrayBuffer(PAGE * (1 + int(3)) + int(PAGE), { maxByteLength: PAGE * 64 });
    case 10:
      return new Uint8Array(new ArrayBuffer(PAGE * 2, { maxByteLength: PAGE * 64 }));
    case 0:
      return Buffer.alloc(int(3 * PAGE));
    case 1:
      return Buffer.allocUnsafeSlow(PAGE * (1 + int(4)) + int(PAGE));
    case 2:
      return Buffer.from('small pooled buffer');
    case 3:
      return new ArrayBuffer(int(4 * PAGE));
    case 4:
      return new Float64Array(1 + int(2048));
    case 5:
      return new DataView(new ArrayBuffer(PAGE * 3), int(PAGE), int(PAGE));
    case 6:
      return new Uint8Array(new SharedArrayBuffer(PAGE * 2));
    case 7:
      return new SharedArrayBuffer(PAGE * 2);
    default: {
      // A detached ArrayBuffer, and a view of it.
      const ab = new ArrayBuffer(PAGE * 2);
      const view = new Uint16Array(ab, 2, 10);
      structuredClone(ab, { transfer: [ab] });
      return chance(0.5) ? ab : view;
    }
  }
}

function abOf(v: unknown): ArrayBufferLike | null {
  if (v instanceof ArrayBuffer) return v;
  if (ArrayBuffer.isView(v)) return v.buffer;
  return null;
}

/** Every view recorded over the same ArrayBuffer as `ab`. */
function sameBuffer(ab: ArrayBufferLike): Bytes[] {
  const out: Bytes[] = [];
  for (const o of owned) if (o.buf.buffer === ab) out.push(o.buf);
  for (const v of views) if (abOf(v) === ab) out.push(v);
  return out;
}

function detachedEverywhere(ab: ArrayBufferLike, what: string): void {
  check(ab.byteLength === 0, `${what}: its ArrayBuffer still has ${ab.byteLength} bytes`);
  for (const v of sameBuffer(ab)) check(lenOf(v) === 0, `${what}: a view of it still reads ${lenOf(v)} bytes`);
}

let memFd = -1;
/** /proc/self/mem, to read bytes no view reaches (an arena buffer's padding). */
function mem(): number {
  if (memFd < 0) memFd = fs.openSync('/proc/self/mem', 'r');
  return memFd;
}

function verifyFill(buf: ArrayBufferView, fill: Fill, what: string): void {
  if (fill === null || buf.byteLength === 0) return;
  const n = buf.byteLength;
  const u8 = buf instanceof Uint8Array ? buf : new Uint8Array(buf.buffer, buf.byteOffset, n);
  if (n <= 64 * 1024) {
    for (let i = 0; i < n; i++) if (u8[i] !== fill) check(false, `${what}: byte ${i} is ${u8[i]}, expected ${fill}`);
    return;
  }
  for (const i of [0, n - 1, int(n), int(n), int(n)])
    check(u8[i] === fill, `${what}: byte ${i} is ${u8[i]}, expected ${fill}`);
}

function dropOwned(i: number): Owned {
  const [o] = owned.splice(i, 1) as [Owned];
  liveBytes -= o.touched;
  return o;
}

// --- operations -------------------------------------------------------------------------
/** [weight, name, run]: an operation is drawn with probability weight / total. */
type Op = readonly [weight: number, name: string, run: () => unknown];
const OPS: Op[] = [
  [
    12,
    'alloc',
    () => {
      const size = sizeArg();
      const options = chance(0.8)
        ? chance(0.5)
          ? undefined
          : { mergeable: chance(0.5) }
        : pick([null, 1, 'x', { mergeable: 'yes' }, { mergeable: undefined }, {}]);
      opName = `alloc(${describe(size)}, ${describe(options)})`;
      const r = call(() => memory.alloc(size as number, options as memory.AllocOptions));
      if (!r.ok) return;
      const buf = r.value;
      check(buf.length === size, `alloc(${String(size)}) gave length ${buf.length}`);
      check(binding.addressOf(buf) % BigInt(PAGE) === 0n, 'alloc: not page aligned');
      check(memory.isKsmBuffer(buf), 'alloc: isKsmBuffer false');
      verifyFill(buf, 0, 'alloc: not zero-filled');
      owned.push({ buf, fill: 0, touched: 0 });
    },
  ],
  [
    5,
    'from',
    () => {
      let data: unknown;
      let encoding: unknown;
      switch (int(6)) {
        case 0:
          data = 'héllo '.repeat(int(2000));
          encoding = pick([undefined, 'utf8', 'latin1', 'base64', 'hex', 'ucs2', 'nope', 1]);
          break;
        case 1:
          data = newForeign();
          break;
        case 2:
          data = anyTarget();
          break;
        case 3:
          data = pick(WEIRD());
          break;
        case 4:
          data = new ArrayBuffer(int(3 * PAGE));
          break;
        default:
          data = pick(owned)?.buf ?? 'x';
      }
      // Copying a lazily mapped 4 GiB buffer would touch all of it.
      if (lenOf(data) > 16 * 1024 * 1024) data = 'too large to copy';
      opName = `from(${describe(data)}, ${describe(encoding)})`;
      const r = call(() => memory.from(data as string, encoding as BufferEncoding));
      if (r.ok) owned.push({ buf: r.value, fill: null, touched: r.value.length });
      if (r.ok) liveBytes += r.value.length;
    },
  ],
  [
    8,
    'free',
    () => {
      const t = anyTarget();
      opName = `free(${describe(t)})`;
      const ab = abOf(t);
      const info = ab instanceof ArrayBuffer ? binding.info(ab) : null;
      const r = call(() => memory.free(t as Buffer));
      if (!r.ok) return;
      // The addon knows an arena buffer only while attached; a released one frees as false.
      check(
        info !== null || (memory.isKsmBuffer(t) && r.value === false),
        'free succeeded on a buffer node-ksm did not allocate',
      );
      check(typeof r.value === 'boolean', 'free returned a non-boolean');
      check(ab !== null, 'free succeeded on something that holds no memory');
      detachedEverywhere(ab, 'after free');
      if (info?.owner) {
        // Every ArrayBuffer into the mapping (subarrays, other ArrayBuffers) is detached.
        for (const v of views) if (abOf(v) === ab) check(lenOf(v) === 0, 'view of a freed buffer');
      }
      const i = owned.findIndex((o) => o.buf.buffer === ab);
      if (i >= 0) dead.push(dropOwned(i).buf);
    },
  ],
  [
    5,
    'setMergeable',
    () => {
      const t = anyTarget();
      const on = chance(0.85) ? chance(0.5) : pick(WEIRD());
      opName = `setMergeable(${describe(t)}, ${describe(on)})`;
      call(() => memory.setMergeable(t as Buffer, on as boolean));
    },
  ],
  [
    5,
    'markMergeable',
    () => {
      const t = anyTarget();
      const on = chance(0.8) ? (chance(0.5) ? undefined : chance(0.5)) : pick(WEIRD());
      opName = `markMergeable(${describe(t)}, ${describe(on)})`;
      const r = call(() => memory.markMergeable(t as Buffer, on as boolean));
      if (!r.ok) return;
      const { offset, length } = r.value;
      check(
        Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0,
        'markMergeable: bad result',
      );
      check(
        length % PAGE === 0 && offset + length <= lenOf(t),
        `markMergeable: {${offset}, ${length}} outside a view of ${lenOf(t)}`,
      );
    },
  ],
  [
    6,
    'subarray',
    () => {
      const src = chance(0.7) ? pick(owned)?.buf : anyTarget();
      const ab = abOf(src);
      opName = `subarray(${describe(src)})`;
      if (ab === null || ab === undefined) return;
      const n = ab.byteLength;
      const off = chance(0.5) ? int(n + 1) : Math.min(n, PAGE * int(4));
      const len = int(n - off + 1);
      let v: Bytes;
      try {
        switch (int(5)) {
          case 0:
            v = Buffer.from(ab, off, len);
            break;
          case 1:
            v = new DataView(ab, off, len);
            break;
          case 2:
            v = new Float64Array(ab, off - (off % 8), Math.floor((n - (off - (off % 8))) / 8));
            break;
          case 3:
            v = ab;
            break;
          default:
            // Any typed array has subarray (a DataView has not).
            v =
              ArrayBuffer.isView(src) && 'subarray' in src
                ? (src as NodeJS.TypedArray).subarray(int((src as NodeJS.TypedArray).length + 1))
                : new Uint8Array(ab);
        }
      } catch {
        return; // JavaScript's own refusal (a detached source), not node-ksm's
      }
      views.push(v);
      if (views.length > 200) views.splice(0, 100);
    },
  ],
  [
    8,
    'read',
    () => {
      const o = pick(owned);
      if (o) {
        opName = `read(owned ${describe(o.buf)})`;
        verifyFill(o.buf, o.fill, 'read of an owned buffer');
      }
      const a = pick(arenas);
      const b = a && pick(a.bufs);
      if (b) {
        opName = `read(arena ${describe(b.buf)})`;
        verifyFill(b.buf, b.fill, 'read of an arena buffer');
      }
      // Anything, even freed: a freed view reads as length 0 and never touches the memory.
      const t = anyTarget();
      opName = `read(${describe(t)})`;
      if (ArrayBuffer.isView(t) && lenOf(t) > 0) {
        const u8 = new Uint8Array(t.buffer, t.byteOffset, Math.min(t.byteLength, 1024 * 1024));
        let sum = 0;
        for (let i = 0; i < u8.length; i += 512) sum += u8[i]!;
        return sum;
      }
    },
  ],
  [
    6,
    'write',
    () => {
      const byte = 1 + int(255);
      if (chance(0.6)) {
        const o = pick(owned);
        if (!o || o.buf.length === 0 || o.buf.length > 1024 * 1024) return;
        opName = `write(owned ${describe(o.buf)}, ${byte})`;
        o.buf.fill(byte);
        o.fill = byte;
        liveBytes += o.buf.length - o.touched;
        o.touched = o.buf.length;
      } else {
        const a = pick(arenas);
        const b = a && pick(a.bufs);
        if (!b || b.buf.length === 0 || b.buf.length > 1024 * 1024) return;
        opName = `write(arena ${describe(b.buf)}, ${byte})`;
        b.buf.fill(byte);
        b.fill = byte;
      }
    },
  ],
  [
    2,
    'new Arena',
    () => {
      const options = chance(0.85)
        ? {
            chunkSize: pick([undefined, PAGE, 4 * PAGE, 64 * 1024, 1024 * 1024, 2 ** 20 + 1]),
            mergeable: pick([undefined, true, false]),
            maxDirtyBytes: pick([undefined, 0, PAGE, 1 << 20]),
            // Released pages kept for reuse and returned by a timer: 0 (at once), ticks that
            // fire during the run, and never.
            purgeDelayMs: pick([undefined, 0, 1, 20, 600_000]),
          }
        : pick([
            null,
            1,
            { chunkSize: pick(WEIRD()) },
            { maxDirtyBytes: pick(WEIRD()) },
            { purgeDelayMs: pick(WEIRD()) },
            { mergeable: 1 },
          ]);
      const shown =
        options && typeof options === 'object'
          ? Object.entries(options)
              .map(([k, v]) => `${k}: ${describe(v)}`)
              .join(', ')
          : describe(options);
      opName = `new Arena(${shown})`;
      const r = call(() => new Arena(options as ConstructorParameters<typeof Arena>[0]));
      if (r.ok) arenas.push({ arena: r.value, bufs: [], live: 0, liveBytes: 0 });
      if (arenas.length > 6) closeArena(0);
    },
  ],
  [
    10,
    'arena.alloc',
    () => {
      const a = pick(arenas);
      if (!a) return;
      const size = chance(0.9) ? (chance(0.8) ? int(3 * PAGE) : int(2 * (a.arena.chunkSize ?? PAGE))) : sizeArg();
      opName = `arena.alloc(${describe(size)})${a.arena.closed ? ' [closed]' : ''}`;
      const r = call(() => a.arena.alloc(size as number));
      if (!r.ok) return;
      const buf = r.value;
      check(!a.arena.closed, 'alloc on a closed arena succeeded');
      check(buf.length === size, `arena.alloc(${String(size)}) gave ${buf.length}`);
      check(binding.addressOf(buf) % BigInt(PAGE) === 0n, 'arena.alloc: not page aligned');
      verifyFill(buf, 0, 'arena.alloc: not zero-filled (stale bytes from a released buffer)');
      // Zero to the end of its last page, so equal blobs make equal pages.
      // Zero bytes take no page: an empty ArrayBuffer that the addon has no record of.
      const info = binding.info(buf.buffer as ArrayBuffer);
      if (size > 0) check(info !== null && !info.freed, 'arena buffer unknown to the addon');
      else check(info === null, 'a zero-length arena buffer has a mapping');
      a.bufs.push({ buf, size, fill: 0 });
      a.live++;
      a.liveBytes += size;
      if (a.bufs.length > 400) release(a, 0);
    },
  ],
  [
    4,
    'arena.allocUnsafe',
    () => {
      const a = pick(arenas);
      if (!a) return;
      const size = chance(0.9) ? int(3 * PAGE) : sizeArg();
      opName = `arena.allocUnsafe(${describe(size)})${a.arena.closed ? ' [closed]' : ''}`;
      const r = call(() => a.arena.allocUnsafe(size as number));
      if (!r.ok) return;
      const buf = r.value;
      check(!a.arena.closed, 'allocUnsafe on a closed arena succeeded');
      check(buf.length === size, `arena.allocUnsafe(${String(size)}) gave ${buf.length}`);
      if (typeof size !== 'number') return;
      // Its bytes may be a released buffer's; its padding never (equal blobs, equal pages).
      const pad = (PAGE - (size % PAGE)) % PAGE;
      if (size > 0 && pad > 0) {
        const tail = Buffer.alloc(pad);
        fs.readSync(mem(), tail, 0, pad, binding.addressOf(buf) + BigInt(size));
        check(
          tail.every((x) => x === 0),
          'arena.allocUnsafe: padding not zero',
        );
      }
      a.bufs.push({ buf, size, fill: null });
      a.live++;
      a.liveBytes += size;
      if (a.bufs.length > 400) release(a, 0);
    },
  ],
  [
    1,
    'wait',
    async () => {
      // Lets purge timers fire between operations (they return and unmap what was released).
      const ms = pick([0, 1, 5, 30]);
      opName = `wait(${ms} ms)`;
      await sleep(ms);
      for (const a of arenas) {
        if (a.arena.closed) continue;
        const s = a.arena.stats();
        check(s.liveBuffers === a.live && s.liveBytes === a.liveBytes, 'arena stats moved while waiting');
        check(s.dirtyBytes <= s.freeBytes, 'more dirty bytes than free ones');
      }
    },
  ],
  [
    7,
    'arena.release',
    () => {
      const a = pick(arenas);
      if (!a) return;
      if (chance(0.85) && a.bufs.length) {
        release(a, int(a.bufs.length));
        return;
      }
      // Someone else's buffer, a released one, or garbage.
      const t = chance(0.5) ? anyTarget() : pick(dead);
      // Any view of a live buffer's ArrayBuffer stands for that buffer: release() acts on the
      // ArrayBuffer, as free() does.
      const ab = t instanceof ArrayBuffer ? t : ArrayBuffer.isView(t) ? t.buffer : undefined;
      const mine = a.bufs.findIndex((b) => b.buf === t || (ab !== undefined && b.buf.buffer === ab));
      if (mine >= 0) return release(a, mine);
      opName = `arena.release(${describe(t)})`;
      const r = call(() => a.arena.release(t as Buffer));
      if (r.ok) check(false, `release of a buffer that was not this arena's live buffer succeeded: ${describe(t)}`);
    },
  ],
  [
    2,
    'arena.stats',
    () => {
      const a = pick(arenas);
      if (!a) return;
      opName = 'arena.stats()';
      const s = a.arena.stats();
      if (a.arena.closed) return check(s.chunks === 0 && s.liveBuffers === 0, 'stats of a closed arena');
      check(s.liveBuffers === a.live, `stats.liveBuffers ${s.liveBuffers}, expected ${a.live}`);
      check(s.liveBytes === a.liveBytes, `stats.liveBytes ${s.liveBytes}, expected ${a.liveBytes}`);
      check(s.fragmentation >= 0 && s.fragmentation <= 1, 'fragmentation out of 0..1');
      check(s.freeBytes >= 0 && s.dirtyBytes >= 0 && s.mappedBytes >= 0, 'negative stats');
    },
  ],
  [
    1,
    'arena.close',
    () => {
      if (arenas.length) closeArena(int(arenas.length));
    },
  ],
  [
    3,
    'bufferStats',
    () => {
      const t = anyTarget();
      const options: unknown = chance(0.8)
        ? pick([
            undefined,
            {},
            { method: 'auto' },
            { method: 'pagemap' },
            { method: 'smaps' },
            { method: 'kpageflags' },
          ])
        : pick([null, 1, { method: 'x' }]);
      opName = `bufferStats(${describe(t)}, ${describe((options as { method?: unknown } | null | undefined)?.method ?? options)})`;
      const r = call(() => bufferStats(t as Buffer, options as memory.BufferStatsOptions));
      if (!r.ok) return;
      const s = r.value;
      check(s.bytes === lenOf(t), 'bufferStats.bytes');
      check(s.mergedPages <= s.pages && s.residentPages <= s.pages && s.mergedPages >= 0, 'bufferStats page counts');
    },
  ],
  [
    1,
    'isKsmBuffer',
    () => {
      const t = anyTarget();
      opName = `isKsmBuffer(${describe(t)})`;
      const r = call(() => memory.isKsmBuffer(t as Buffer));
      check(r.ok && typeof r.value === 'boolean', 'isKsmBuffer threw or returned a non-boolean');
    },
  ],
  [
    1,
    'processMerging',
    () => {
      opName = 'processMerging()';
      call(() => memory.processMerging());
    },
  ],
  [
    2,
    'transfer',
    () => {
      // A node-ksm buffer must never move (its memory would outlive free() elsewhere).
      const t = anyTarget();
      const ab = abOf(t);
      opName = `structuredClone(transfer ${describe(t)})`;
      if (!(ab instanceof ArrayBuffer) || binding.info(ab) === null) return;
      const before = ab.byteLength;
      let copy: ArrayBuffer | undefined;
      try {
        copy = structuredClone(ab, { transfer: [ab] });
      } catch (err) {
        const name = (err as { name?: string } | null)?.name;
        check(name === 'DataCloneError', `transfer threw ${name}`);
      }
      // External memory never moves: Node 20 sends a copy, Node >= 22 refuses (DataCloneError).
      check(ab.byteLength === before, 'a node-ksm ArrayBuffer was transferred (detached by structuredClone)');
      check(copy === undefined || copy !== ab, 'structuredClone returned the same ArrayBuffer');
    },
  ],
  [
    4,
    'native',
    () => {
      // The addon checks its arguments again: nothing passed straight to it may crash.
      const fn = pick([
        'view',
        'madvise',
        'free',
        'info',
        'pageStates',
        'markMergeable',
        'addressOf',
        'alloc',
      ] as const)!;
      const a = () => (chance(0.5) ? (abOf(anyTarget()) ?? anyTarget()) : anyTarget());
      const n = () => (chance(0.6) ? pick([0, PAGE, 2 * PAGE, int(4 * PAGE), PAGE * 1024]) : pick(WEIRD()));
      let args: unknown[];
      switch (fn) {
        case 'view':
          args = [a(), n(), n()];
          break;
        case 'madvise':
          args = [a(), n(), n(), chance(0.7) ? 1 + int(3) : pick([0, 4, -1, 2 ** 40, NaN, '1'])];
          break;
        case 'pageStates':
          args = [anyTarget(), n(), n()];
          break;
        case 'alloc':
          args = [chance(0.8) ? int(2 * PAGE) : pick(WEIRD()), chance(0.5)];
          break;
        case 'free':
        case 'info':
        case 'markMergeable':
        case 'addressOf':
          args = [a(), pick([true, false, undefined, 1])];
      }
      opName = `native.${fn}(${args.map(describe).join(', ')})`;
      // Straight to the addon, with whatever arguments were drawn: it must check them.
      // eslint-disable-next-line @typescript-eslint/unbound-method -- Reflect.apply gives it its receiver
      const r = call(() => Reflect.apply(binding[fn], binding, args) as unknown);
      if (r.ok && fn === 'alloc') {
        const ab = r.value as ArrayBuffer;
        const buf = Buffer.from(ab);
        check(ab.byteLength === args[0], 'native alloc length');
        owned.push({ buf, fill: 0, touched: 0 });
      }
      if (r.ok && fn === 'view') views.push(r.value as Buffer);
      if (r.ok && fn === 'madvise' && args[3] === binding.advice.DONTNEED) {
        // Legitimately zeroes pages of whatever mapping that was: contents are unknown now.
        for (const o of owned) o.fill = null;
        for (const a of arenas) for (const b of a.bufs) b.fill = null;
      }
    },
  ],
  [
    3,
    'drop',
    () => {
      // Forget something without freeing it: the GC's finalizer must unmap it.
      opName = 'drop';
      if (chance(0.5) && owned.length) dropOwned(int(owned.length));
      else if (views.length) views.splice(int(views.length), 1);
      if (dead.length > 100) dead.splice(0, 50);
      if (foreign.length > 50) foreign.splice(0, 25);
    },
  ],
  [
    1,
    'gc',
    () => {
      opName = 'gc()';
      gc();
    },
  ],
  [
    2,
    'resize',
    () => {
      // Resizable ArrayBuffers change length under views that node-ksm may be handed next.
      const f = pick(foreign);
      const ab = f && abOf(f);
      opName = `resize(${describe(ab)})`;
      // Only an ArrayBuffer can be resizable (a SharedArrayBuffer grows instead).
      if (ab instanceof ArrayBuffer && ab.resizable) ab.resize(int(ab.maxByteLength + 1));
    },
  ],
  [
    2,
    'keep foreign',
    () => {
      opName = 'keep foreign';
      foreign.push(newForeign());
    },
  ],
];

function release(a: HeldArena, i: number): void {
  const b = a.bufs[i]!;
  opName = `arena.release(${describe(b.buf)})${a.arena.closed ? ' [closed]' : ''}`;
  const r = call(() => a.arena.release(b.buf));
  a.bufs.splice(i, 1);
  dead.push(b.buf);
  if (!r.ok) {
    // A closed arena refuses; a buffer freed behind the arena's back is still its to release.
    check(a.arena.closed && r.err.code === 'ERR_KSM_CLOSED', `release of a live arena buffer failed: ${r.err.code}`);
    return;
  }
  check(b.buf.length === 0, 'a released arena buffer still has bytes');
  a.live--;
  a.liveBytes -= b.size;
}

function closeArena(i: number): void {
  const a = arenas[i]!;
  opName = 'arena.close()';
  a.arena.close();
  for (const b of a.bufs) check(b.buf.length === 0, 'an arena buffer still has bytes after close()');
  check(a.arena.closed, 'closed is false after close()');
  arenas.splice(i, 1);
  for (const b of a.bufs) dead.push(b.buf);
  // A closed arena stays referenced in `dead` use for a while: alloc/release must refuse.
  if (chance(0.5)) arenas.push({ arena: a.arena, bufs: [], live: 0, liveBytes: 0 });
}

const totalWeight = OPS.reduce((n, [w]) => n + w, 0);
function nextOp(): Op {
  let r = rand() * totalWeight;
  for (const op of OPS) {
    r -= op[0];
    if (r < 0) return op;
  }
  return OPS[0]!;
}

async function collect(): Promise<void> {
  for (let i = 0; i < 8; i++) {
    gc();
    await tick();
    await tick();
  }
}

// For narrowing a failure down by hand: FUZZ_DISABLE=gc,native skips those operations.
const disabled = new Set((process.env.FUZZ_DISABLE ?? '').split(',').filter(Boolean));
const profile: Record<string, number> | null = process.env.FUZZ_PROFILE ? {} : null;
const started = Date.now();
const baseline = binding.counters();

async function runOps(): Promise<void> {
  try {
    for (opIndex = 0; opIndex < totalOps; opIndex++) {
      const [, name, fn] = nextOp();
      opName = name;
      if (disabled.has(name)) continue;
      if (trace) fs.writeSync(2, `#${opIndex} ${name}\n`);
      const t0 = profile ? performance.now() : 0;
      const pending = fn();
      if (pending instanceof Promise) await pending;
      if (profile) profile[name] = (profile[name] ?? 0) + performance.now() - t0;
      if (trace && opName !== name) fs.writeSync(2, `   ${opName}\n`);
      // Keep touched memory bounded; most large buffers are never written.
      while (liveBytes > LIVE_CAP && owned.length) memory.free(dropOwned(0).buf);
      if (opIndex % 64 === 63) await tick(); // let deferred finalizers run mid-sequence too
    }
  } catch (err) {
    if (err instanceof Violation) fail('INVARIANT', stackOf(err));
    fail('UNDOCUMENTED-ERROR', stackOf(err));
  }
}

/** Everything the run held goes: half freed explicitly, half left to the GC. */
function teardown(): void {
  opIndex = totalOps;
  opName = 'teardown';
  for (const o of owned) if (chance(0.5)) memory.free(o.buf);
  for (const a of arenas) if (chance(0.5)) a.arena.close();
  owned.length = dead.length = views.length = foreign.length = arenas.length = 0;
}

// Each phase is its own function: a suspended async frame keeps its temporaries (the
// last buffer a loop looked at) alive, which would read as a leak.
await runOps();
teardown();
await collect();
let after = binding.counters();
for (let i = 0; i < 5 && (after.mappings !== baseline.mappings || after.regions !== baseline.regions); i++) {
  await sleep(50);
  await collect();
  after = binding.counters();
}
if (
  after.mappings !== baseline.mappings ||
  after.mappedBytes !== baseline.mappedBytes ||
  after.regions !== baseline.regions
) {
  fail('LEAK', `native counters before ${JSON.stringify(baseline)}, after teardown and GC ${JSON.stringify(after)}`);
}
if (profile) for (const k of Object.keys(profile)) profile[k] = Math.round(profile[k]!);
process.stdout.write(
  `${JSON.stringify({ seed, ops: totalOps, ms: Date.now() - started, errors: histogram, ...(profile ? { profile } : {}) })}\n`,
);
