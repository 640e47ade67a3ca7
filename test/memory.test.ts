import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { expectCode } from './helpers/expect';
import { binding } from '../lib/binding';
import { DIST, ensureDist } from './helpers/dist';
import { SANITIZED } from './helpers/ksm';
import { KsmError } from '../lib/errors';
import { skipIf } from './helpers/skips';
import {
  alloc,
  free,
  from,
  isKsmBuffer,
  markMergeable,
  maxAllocSize,
  pageSize,
  processMerging,
  setMergeable,
  setProcessMerging,
} from '../lib/memory';

/** The /proc/self/maps line of the mapping that starts at the buffer. */
function mapsLineAt(buf: Buffer): string | undefined {
  const addr = binding!.addressOf(buf).toString(16);
  return fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${addr}-`));
}

/** The VmFlags of the smaps entry containing `buf`'s first byte. */
function vmFlagsAt(buf: Buffer): string[] {
  const addr = binding!.addressOf(buf);
  const text = fs.readFileSync('/proc/self/smaps', 'utf8');
  let inside = false;
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) inside = addr >= BigInt(`0x${m[1]}`) && addr < BigInt(`0x${m[2]}`);
    else if (inside && line.startsWith('VmFlags:')) return line.slice(8).trim().split(/\s+/);
  }
  return [];
}

/** Window mode: the runtime refuses external ArrayBuffers, buffers are windows of V8 memory. */
const WINDOW = binding?.mode === 'window';

describe('pageSize', () => {
  it('comes from the system', () => {
    // getconf asks sysconf(_SC_PAGESIZE) too, from another program.
    const fromGetconf = Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }));
    expect(pageSize).toBe(fromGetconf);
  });
});

describe('alloc', () => {
  it('returns a zero-filled, page-aligned Buffer of exactly size bytes in its own mapping', () => {
    const size = 3 * pageSize + 123;
    const buf = alloc(size);
    expect(Buffer.isBuffer(buf)).toBe(true);
    expect(buf.length).toBe(size);
    expect(binding!.addressOf(buf) % BigInt(pageSize)).toBe(0n);
    expect(buf.every((b) => b === 0)).toBe(true);
    expect(binding!.info(buf.buffer as ArrayBuffer)!.mappingLength).toBe(4 * pageSize);
    if (WINDOW) {
      free(buf);
      return;
    }
    const line = mapsLineAt(buf);
    expect(line).toBeDefined();
    // The mapping covers whole pages: 4 here (the kernel may join it with a neighbour,
    // so the VMA is at least that long).
    const [start, end] = line!
      .split(' ')[0]!
      .split('-')
      .map((h) => BigInt(`0x${h}`));
    expect(end! - start!).toBeGreaterThanOrEqual(BigInt(4 * pageSize));
    buf.fill(0xab);
    expect(buf[size - 1]).toBe(0xab);
    free(buf);
  });

  it('marks the mapping mergeable and no-hugepage, unless mergeable: false', () => {
    const m = alloc(4 * pageSize);
    // Window mode leaves the allocator's hugepage flag alone (it could not be undone).
    expect(vmFlagsAt(m)).toEqual(expect.arrayContaining(WINDOW ? ['mg'] : ['mg', 'nh']));
    const plain = alloc(4 * pageSize, { mergeable: false });
    if (!WINDOW) expect(vmFlagsAt(plain)).toContain('nh');
    expect(vmFlagsAt(plain)).not.toContain('mg');
    free(m);
    free(plain);
  });

  it('allows size 0 (one page mapped, nothing visible)', () => {
    const buf = alloc(0);
    expect(buf.length).toBe(0);
    expect(isKsmBuffer(buf)).toBe(true);
    expect(free(buf)).toBe(true);
  });

  it('rejects bad sizes and options with Node-style errors', () => {
    for (const bad of ['1', null, undefined, {}, 1n, [1]])
      expectCode(() => alloc(bad as never), TypeError, 'ERR_INVALID_ARG_TYPE');
    for (const bad of [-1, 1.5, NaN, Infinity, -Infinity, maxAllocSize + 1, 2 ** 64]) {
      expectCode(() => alloc(bad), RangeError, 'ERR_OUT_OF_RANGE');
    }
    expectCode(() => alloc(10, null as never), TypeError, 'ERR_INVALID_ARG_TYPE');
    expectCode(() => alloc(10, { mergeable: 'yes' as never }), TypeError, 'ERR_INVALID_ARG_TYPE');
  });

  it('reports an address-space failure as ENOMEM from mmap, and keeps working', () => {
    // maxAllocSize (4 GiB on Node 20) succeeds lazily; the native layer's own limit
    // is what the address space cannot hold.
    let caught: unknown;
    try {
      binding!.alloc(2 ** 52, true);
    } catch (err) {
      caught = err;
    }
    if (WINDOW) {
      // V8 would abort on a failed ArrayBuffer allocation: window mode refuses first.
      expect(caught).toBeInstanceOf(RangeError);
      expect(caught).toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    } else {
      expect(caught).toBeInstanceOf(KsmError);
      expect(caught).toMatchObject({ code: 'ENOMEM', errno: -12, syscall: 'mmap' });
    }
    const ok = alloc(pageSize);
    expect(ok.length).toBe(pageSize);
    free(ok);
  });
});

describe('from', () => {
  it('copies strings in an encoding, ArrayBuffers and views', () => {
    expect(from('héllo').toString()).toBe('héllo');
    expect(from('68656c6c6f', 'hex').toString()).toBe('hello');
    expect([...from(new Uint16Array([1, 2]).buffer)]).toEqual([1, 0, 2, 0]);
    const src = Buffer.from('abcdef');
    const copy = from(src.subarray(2, 4));
    expect(copy.toString()).toBe('cd');
    expect(isKsmBuffer(copy)).toBe(true);
    src[2] = 0x7a;
    expect(copy.toString()).toBe('cd');
  });

  it('copies nothing from a view its resizable buffer no longer reaches', () => {
    // A DataView's getters throw then (V8 calls it detached); a TypedArray reads as empty.
    const ab = new ArrayBuffer(2 * pageSize, { maxByteLength: 4 * pageSize }) as ArrayBuffer & {
      resize(n: number): void;
    };
    const dv = new DataView(ab, pageSize, 100);
    const u8 = new Uint8Array(ab, pageSize, 100);
    ab.resize(pageSize);
    expect(() => dv.byteLength).toThrow(TypeError);
    expect(from(dv).length).toBe(0);
    expect(from(u8).length).toBe(0);
  });

  it('rejects what it cannot copy', () => {
    expectCode(() => from(42 as never), TypeError, 'ERR_INVALID_ARG_TYPE');
    expectCode(() => from('x', 'klingon' as never), TypeError, 'ERR_INVALID_ARG_TYPE');
  });
});

describe('free', () => {
  it('unmaps now, detaches every view, and is idempotent', () => {
    const buf = alloc(2 * pageSize);
    const sub = buf.subarray(pageSize);
    const u32 = new Uint32Array(buf.buffer, 0, 4);
    const before = binding!.counters();
    if (!WINDOW) expect(mapsLineAt(buf)).toBeDefined();
    const addr = binding!.addressOf(buf).toString(16);
    expect(free(buf)).toBe(true);
    expect(binding!.counters().mappings).toBe(before.mappings - 1);
    expect(buf.length).toBe(0);
    expect(sub.length).toBe(0);
    expect(u32.length).toBe(0);
    expect(buf.buffer.byteLength).toBe(0);
    expect(sub[0]).toBeUndefined();
    if (!WINDOW) expect(fs.readFileSync('/proc/self/maps', 'utf8')).not.toContain(`${addr}-`);
    expect(free(buf)).toBe(false);
    expect(free(sub)).toBe(false);
  });

  it('refuses buffers it did not allocate', () => {
    for (const foreign of [Buffer.alloc(10), Buffer.allocUnsafeSlow(1 << 20), new Uint8Array(8), new ArrayBuffer(8)]) {
      expectCode(() => free(foreign), KsmError, 'ERR_KSM_NOT_OWNED');
    }
    for (const bad of [null, undefined, 'x', 1, {}, [], new SharedArrayBuffer(8)]) {
      expectCode(() => free(bad as never), TypeError, 'ERR_INVALID_ARG_TYPE');
    }
  });

  it('keeps use-after-free through a subarray harmless', () => {
    const buf = alloc(pageSize);
    const sub = buf.subarray(10, 20);
    free(buf);
    // Every access sees an empty, detached buffer: reads give nothing, writes throw.
    expect(sub[0]).toBeUndefined();
    expect(sub.toString('hex')).toBe('');
    expect(() => sub.fill(1)).toThrow(TypeError);
    expect(buf.write('hello')).toBe(0);
    expect(() => new DataView(buf.buffer)).toThrow(TypeError);
  });

  it('rejects a wrong receiver on the native functions', () => {
    const buf = alloc(pageSize);
    // Taken off their object on purpose: the native functions must not trust their receiver.
    // eslint-disable-next-line @typescript-eslint/unbound-method
    const { free: nativeFree, info } = binding!;
    expect(nativeFree.call({}, buf.buffer as ArrayBuffer)).toBe(true);
    expect(info.call(null, buf.buffer as ArrayBuffer)).toMatchObject({ freed: true });
    expectCode(() => nativeFree.call(buf, 'no' as never), TypeError, 'ERR_INVALID_ARG_TYPE');
  });
});

describe('setMergeable', () => {
  it('toggles MADV_MERGEABLE on the whole allocation', () => {
    const buf = alloc(8 * pageSize, { mergeable: false });
    setMergeable(buf.subarray(pageSize), true);
    expect(vmFlagsAt(buf)).toContain('mg');
    setMergeable(buf, false);
    expect(vmFlagsAt(buf)).not.toContain('mg');
    free(buf);
  });

  it('refuses freed, foreign and malformed arguments', () => {
    const buf = alloc(pageSize);
    free(buf);
    expectCode(() => setMergeable(buf, true), KsmError, 'ERR_KSM_FREED');
    expectCode(() => setMergeable(Buffer.alloc(10), true), KsmError, 'ERR_KSM_NOT_OWNED');
    const live = alloc(pageSize);
    expectCode(() => setMergeable(live, 1 as never), TypeError, 'ERR_INVALID_ARG_TYPE');
    expectCode(() => setMergeable('x' as never, true), TypeError, 'ERR_INVALID_ARG_TYPE');
    free(live);
  });
});

describe('markMergeable', () => {
  it('marks the page-aligned interior of any view and says which bytes it covered', () => {
    const big = Buffer.allocUnsafeSlow(16 * pageSize + 100);
    const addr = binding!.addressOf(big);
    const { offset, length } = markMergeable(big);
    const expectedOffset = Number((BigInt(pageSize) - (addr % BigInt(pageSize))) % BigInt(pageSize));
    expect(offset).toBe(expectedOffset);
    expect(length % pageSize).toBe(0);
    expect(length).toBeGreaterThanOrEqual(15 * pageSize);
    expect(offset + length).toBeLessThanOrEqual(big.length);
    expect(vmFlagsAt(big.subarray(offset))).toContain('mg');
    expect(markMergeable(big, false).length).toBe(length);
    expect(vmFlagsAt(big.subarray(offset))).not.toContain('mg');
  });

  it('covers nothing when the view holds no whole page', () => {
    expect(markMergeable(Buffer.alloc(100))).toEqual({ offset: 0, length: 0 });
    expect(markMergeable(new Uint8Array(0))).toEqual({ offset: 0, length: 0 });
  });

  it('rejects non-views', () => {
    for (const bad of [null, 'x', 5, {}, new SharedArrayBuffer(pageSize * 2)]) {
      expectCode(() => markMergeable(bad as never), TypeError, 'ERR_INVALID_ARG_TYPE');
    }
  });
});

describe('process merging', () => {
  it('round-trips through prctl', (ctx) => {
    // PR_SET_MEMORY_MERGE(0) walks the sanitizer's multi-TiB shadow mapping, for minutes.
    skipIf(ctx, SANITIZED ? 'unmerging walks the sanitizer shadow for minutes' : null, 'sanitizer');
    const was = processMerging();
    try {
      setProcessMerging(true);
      expect(processMerging()).toBe(true);
      setProcessMerging(false);
      expect(processMerging()).toBe(false);
    } finally {
      setProcessMerging(was);
    }
    expectCode(() => setProcessMerging(1 as never), TypeError, 'ERR_INVALID_ARG_TYPE');
  });
});

describe('trimHeap', () => {
  // In a fresh process, so that the C heap holds only what the child did. 64 MiB of
  // 32 KiB Buffers (malloc'd, below glibc's mmap threshold), all but the newest dropped
  // and collected: the newest pins the top of the heap, so glibc's own trimming of the
  // top cannot give the freed pages back, and trimHeap() must. Measured as the process's
  // RssAnon: glibc's main heap is usually [heap], but lives in anonymous mappings when
  // something sits where brk would grow.
  it('gives freed C-heap pages back to the system', (ctx) => {
    // The sanitizer's allocator keeps freed memory in quarantine, so nothing goes back.
    skipIf(ctx, SANITIZED ? 'the sanitizer allocator quarantines freed heap' : null, 'sanitizer');
    expect(ensureDist()).toBe(true);
    const script = `
      const { trimHeap } = require(${JSON.stringify(`${DIST}/memory.js`)});
      const rssAnon = () => Number(/RssAnon:\\s+(\\d+) kB/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
      const base = rssAnon();
      let keep = [];
      for (let i = 0; i < 2048; i++) keep.push(Buffer.allocUnsafeSlow(32 * 1024).fill(i & 255));
      const pin = keep.pop();
      const full = rssAnon();
      keep = null;
      // V8 frees dead ArrayBuffers' memory from a background sweeper after a GC, later on
      // a busy machine. Wait until Node's allocator has seen every one freed (its count,
      // memoryUsage().arrayBuffers, drops just before each free()), and only then trim:
      // a trim that ran while the sweeper was still freeing would return part of the
      // memory, and the rest would then be freed (and resident) with nothing to measure.
      const deadline = Date.now() + 10000;
      const settle = () => {
        gc();
        if (process.memoryUsage().arrayBuffers > 1024 * 1024 && Date.now() < deadline) return setTimeout(settle, 50);
        setTimeout(() => {
          const freed = rssAnon();
          const supported = trimHeap();
          const trimmed = rssAnon();
          const arrayBuffers = process.memoryUsage().arrayBuffers;
          console.log(JSON.stringify({ base, full, freed, trimmed, supported, arrayBuffers, pin: pin.length }));
        }, 50);
      };
      setTimeout(settle, 0);
    `;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const { base, full, freed, trimmed, supported, arrayBuffers } = JSON.parse(r.stdout.trim()) as Record<
      string,
      number
    >;
    expect(supported).toBe(true);
    const MiB = 1024 * 1024;
    const figures = `RssAnon ${base! >> 20} MiB at start, ${full! >> 20} full, ${freed! >> 20} freed, ${trimmed! >> 20} trimmed`;
    // V8 freed them all within 10 s (nothing but trimHeap() ran between freed and trimmed).
    expect(arrayBuffers, figures).toBeLessThanOrEqual(MiB);
    // The 64 MiB were resident, and still are once freed (glibc keeps them) ...
    expect(full! - base!, figures).toBeGreaterThan(60 * MiB);
    expect(freed! - base!, figures).toBeGreaterThan(50 * MiB);
    // ... until trimHeap() gives nearly all of it back.
    expect(trimmed!, figures).toBeLessThan(freed! - 50 * MiB);
  });
});
