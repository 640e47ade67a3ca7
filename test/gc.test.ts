/**
 * The garbage collector's side of ownership: dropped buffers are unmapped by their
 * finalizer, freed buffers are unmapped exactly once, and a late finalizer never
 * touches an address that a later alloc has reused.
 */
import fs from 'node:fs';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { binding } from '../lib/binding';
import { alloc, free, pageSize } from '../lib/memory';
import { skipIf } from './helpers/skips';

const gc = (globalThis as { gc?: () => void }).gc;

/** Full GCs with event-loop turns between them, so that deferred finalizers run. */
async function collect(): Promise<void> {
  for (let i = 0; i < 6; i++) {
    gc!();
    await tick();
    await tick();
  }
}

function mapsLines(): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').length;
}

function mappedAt(addr: bigint): boolean {
  return fs.readFileSync('/proc/self/maps', 'utf8').includes(`${addr.toString(16)}-`);
}

describe('garbage collection', () => {
  it('is exposed to the tests', () => {
    expect(typeof gc).toBe('function');
  });

  it('unmaps 10,000 dropped buffers', async () => {
    await collect();
    const base = binding!.counters();
    const baseLines = mapsLines();
    const addrs: bigint[] = [];
    (() => {
      const keep: Buffer[] = [];
      for (let i = 0; i < 10_000; i++) {
        // Alternate the flags so the kernel cannot join neighbours into one VMA.
        const b = alloc(pageSize * 2, { mergeable: i % 2 === 0 });
        b[0] = 1;
        keep.push(b);
        if (i % 1000 === 0) addrs.push(binding!.addressOf(b));
      }
      expect(binding!.counters().mappings - base.mappings).toBe(10_000);
      expect(mapsLines() - baseLines).toBeGreaterThan(5_000);
    })();
    await collect();
    expect(binding!.counters().mappings).toBe(base.mappings);
    expect(binding!.counters().mappedBytes).toBe(base.mappedBytes);
    expect(mapsLines() - baseLines).toBeLessThan(50);
    for (const a of addrs) expect(mappedAt(a)).toBe(false);
  });

  it('unmaps a freed buffer exactly once and its late finalizer leaves a reused address alone', async () => {
    await collect();
    const base = binding!.counters();
    // The kernel hands the same range to the next mapping of the same size, unless another
    // thread (V8's, the sanitizer's) maps something in between: then try again. Every
    // freed buffer is kept referenced until all the tries are done.
    let firsts: Buffer[] | null = [];
    let second: Buffer | undefined;
    let reused = false;
    for (let attempt = 0; attempt < 20 && !reused; attempt++) {
      if (second) free(second);
      const first = alloc(16 * pageSize);
      const addr = binding!.addressOf(first);
      free(first);
      firsts.push(first);
      second = alloc(16 * pageSize);
      reused = binding!.addressOf(second) === addr;
    }
    const kept = second!;
    kept.fill(0x42);
    // eslint-disable-next-line no-useless-assignment -- dropping the last references lets the GC collect them
    firsts = null;
    await collect();
    // The finalizers of the freed buffers ran (their regions are gone) without unmapping `second`.
    expect(binding!.counters().mappings).toBe(base.mappings + 1);
    expect(mappedAt(binding!.addressOf(kept))).toBe(true);
    expect(kept.every((x) => x === 0x42)).toBe(true);
    expect(reused, 'the test needs the address to be reused to mean anything').toBe(true);
    free(kept);
    await collect();
    expect(binding!.counters().mappings).toBe(base.mappings);
    expect(binding!.counters().mappedBytes).toBe(base.mappedBytes);
  });

  // Views need external ArrayBuffers (the arena's buffers); window mode has none.
  it('keeps a mapping alive while any view of it lives', async (ctx) => {
    skipIf(ctx, binding?.mode === 'window' ? 'views need external ArrayBuffers' : null, 'window');
    await collect();
    const base = binding!.counters();
    let owner: ArrayBuffer | null = binding!.alloc(8 * pageSize, true);
    const view = binding!.view(owner, pageSize, pageSize);
    view.fill(7);
    // eslint-disable-next-line no-useless-assignment -- dropping the last reference lets the GC collect it
    owner = null;
    await collect();
    // The owner ArrayBuffer is gone, the view still reads its memory.
    expect(view.every((x) => x === 7)).toBe(true);
    expect(binding!.counters().mappings).toBe(base.mappings + 1);
  });
});
