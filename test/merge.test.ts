/**
 * The kernel really merges what node-ksm marks mergeable: duplicate pages become one
 * copy-on-write page, writes get a private copy back, unmarking unmerges, and
 * process-wide merging reaches memory that was never madvised.
 */
import fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { binding } from '../lib/binding';
import { alloc, free, pageSize, processMerging, setMergeable, setProcessMerging } from '../lib/memory';
import { processStats } from '../lib/stats';
import { SANITIZED, fillPages, pollUntil, requireKsm, smapsKsmBytes, withFastKsm } from './helpers/ksm';
import { skipIf } from './helpers/skips';

const MiB = 1 << 20;

/** KSM pages among the pages of a view (exact, from kpageflags; the tests run as root). */
function ksmPages(view: Uint8Array): number {
  const s = binding!.pageStates(view, 0, view.byteLength);
  if (s.ksm === null) throw new Error('kpageflags is not readable: these tests need root');
  return s.ksm;
}

function range(buf: Uint8Array): [bigint, bigint] {
  const start = binding!.addressOf(buf);
  return [start, start + BigInt(buf.byteLength)];
}

const live: Uint8Array[] = [];
beforeEach((ctx) => requireKsm(ctx));
afterEach(() => {
  for (const b of live.splice(0)) free(b);
});

describe('merging duplicate pages', () => {
  it('merges two identical 64 MiB buffers and leaves distinct pages alone', async () => {
    const size = 64 * MiB;
    const pages = size / pageSize;
    const a = alloc(size);
    const b = alloc(size);
    const c = alloc(size);
    live.push(a, b, c);
    fillPages(a, 1, pageSize);
    fillPages(b, 1, pageSize);
    fillPages(c, 2, pageSize);
    expect(a.equals(b)).toBe(true);
    const before = processStats().mergingPages ?? 0;

    await withFastKsm(async () => {
      const merged = await pollUntil(() => ksmPages(a) >= 0.95 * pages && ksmPages(b) >= 0.95 * pages, 60_000);
      expect(merged, `a: ${ksmPages(a)}, b: ${ksmPages(b)} of ${pages} pages merged`).toBe(true);
    });

    // /proc/self/ksm_stat counts every mapping of a KSM page: both copies of each pair.
    const stats = processStats();
    expect(stats.mergingPages! - before).toBeGreaterThanOrEqual(Math.floor(0.95 * 2 * pages));
    expect(ksmPages(c)).toBeLessThanOrEqual(pages * 0.01);
    // smaps over all three buffers: the duplicates' bytes, and (near) nothing of c.
    const lo = [a, b, c].map((x) => range(x)[0]).reduce((x, y) => (x < y ? x : y));
    const hi = [a, b, c].map((x) => range(x)[1]).reduce((x, y) => (x > y ? x : y));
    const smaps = smapsKsmBytes(lo, hi);
    expect(smaps).toBeGreaterThanOrEqual(0.95 * 2 * size);
    expect(smaps).toBeLessThanOrEqual(2 * size + 0.01 * size);
  });

  it('gives a written merged page its own copy again (copy-on-write)', async () => {
    const size = 4 * MiB;
    const a = alloc(size);
    const b = alloc(size);
    live.push(a, b);
    fillPages(a, 7, pageSize);
    fillPages(b, 7, pageSize);
    const pages = size / pageSize;
    await withFastKsm(async () => {
      expect(await pollUntil(() => ksmPages(a) === pages && ksmPages(b) === pages, 60_000)).toBe(true);
      // Stop the scanner before writing, so that nothing merges the page back under us.
    });
    const page3 = a.subarray(3 * pageSize, 4 * pageSize);
    const original = Buffer.from(b.subarray(3 * pageSize, 4 * pageSize));
    page3.fill(0x5a, 0, 100);
    expect(ksmPages(page3)).toBe(0);
    expect(ksmPages(a)).toBe(pages - 1);
    expect(page3.subarray(0, 100).every((x) => x === 0x5a)).toBe(true);
    expect(page3.subarray(100).equals(original.subarray(100))).toBe(true);
    expect(b.subarray(3 * pageSize, 4 * pageSize).equals(original)).toBe(true);
  });

  it('unmerges when a buffer is made unmergeable (no two pages share a frame)', async () => {
    const size = 4 * MiB;
    const a = alloc(size);
    live.push(a);
    // Every page of `a` is the same page: merging maps them all onto one frame.
    const page = Buffer.alloc(pageSize);
    fillPages(page, 9, pageSize);
    for (let off = 0; off < size; off += pageSize) page.copy(a, off);
    const pages = size / pageSize;
    await withFastKsm(async () => {
      expect(await pollUntil(() => ksmPages(a) === pages, 60_000)).toBe(true);
    });
    // One KSM page serves at most max_page_sharing mappings; beyond that the kernel
    // chains duplicates of the stable page.
    const maxSharing = Number(fs.readFileSync('/sys/kernel/mm/ksm/max_page_sharing', 'utf8'));
    expect(binding!.pageStates(a, 0, size).frames).toBeLessThanOrEqual(Math.ceil(pages / maxSharing));
    setMergeable(a, false);
    const after = binding!.pageStates(a, 0, size);
    expect(after.ksm).toBe(0);
    expect(after.present).toBe(pages);
    expect(after.frames).toBe(pages);
    expect(a.subarray(5 * pageSize, 6 * pageSize).equals(page)).toBe(true);
  });
});

describe('process-wide merging (PR_SET_MEMORY_MERGE)', () => {
  it('merges memory that was never madvised, and unmerges when turned off', async (ctx) => {
    skipIf(ctx, SANITIZED ? 'unmerging walks the sanitizer shadow for minutes' : null, 'sanitizer');
    const size = 8 * MiB;
    // Plain Node memory: large Buffers come from malloc'd (mmap'd) memory, not from alloc().
    const a = Buffer.allocUnsafeSlow(size + pageSize);
    const b = Buffer.allocUnsafeSlow(size + pageSize);
    // Page-aligned windows of the same content in each.
    const offA = Number((BigInt(pageSize) - (binding!.addressOf(a) % BigInt(pageSize))) % BigInt(pageSize));
    const offB = Number((BigInt(pageSize) - (binding!.addressOf(b) % BigInt(pageSize))) % BigInt(pageSize));
    const wa = a.subarray(offA, offA + size);
    const wb = b.subarray(offB, offB + size);
    fillPages(wa, 11, pageSize);
    fillPages(wb, 11, pageSize);
    const pages = size / pageSize;
    const was = processMerging();
    try {
      setProcessMerging(true);
      expect(processMerging()).toBe(true);
      expect(processStats().mergeAny).toBe(true);
      await withFastKsm(async () => {
        const ok = await pollUntil(() => ksmPages(wa) >= 0.95 * pages && ksmPages(wb) >= 0.95 * pages, 60_000);
        expect(ok, `a: ${ksmPages(wa)}, b: ${ksmPages(wb)} of ${pages}`).toBe(true);
      });
      setProcessMerging(false);
      expect(processMerging()).toBe(false);
      expect(ksmPages(wa)).toBe(0);
      expect(ksmPages(wb)).toBe(0);
    } finally {
      setProcessMerging(was);
    }
  });
});
