import { beforeEach, describe, expect, it, vi } from 'vitest';
import { boostState } from '../lib/boost';
import { configure } from '../lib/control';
import { alloc, free, pageSize } from '../lib/memory';
import { processStats } from '../lib/stats';
import { waitForMerge } from '../lib/wait';
import { lockedAndReleased, matching } from './helpers/expect';
import { fillPages, requireKsm } from './helpers/ksm';

// What waitForMerge does, in order: the real boost() and bufferStats(), observed.
const calls: string[] = [];
vi.mock('../lib/boost', async (original) => {
  const m = await original<typeof import('../lib/boost')>();
  return {
    ...m,
    boost: async (...args: Parameters<typeof m.boost>) => {
      const h = await m.boost(...args);
      calls.push('boosted');
      return h;
    },
  };
});
vi.mock('../lib/buffer-stats', async (original) => {
  const m = await original<typeof import('../lib/buffer-stats')>();
  return {
    ...m,
    bufferStats: (...args: Parameters<typeof m.bufferStats>) => {
      calls.push('measured');
      return m.bufferStats(...args);
    },
  };
});

const MiB = 1024 * 1024;

function duplicates(bytes: number, seed: number): [Buffer, Buffer] {
  const a = alloc(bytes);
  const b = alloc(bytes);
  fillPages(a, seed, pageSize);
  fillPages(b, seed, pageSize);
  return [a, b];
}

function unique(bytes: number, seed: number): Buffer {
  const c = alloc(bytes);
  fillPages(c, seed, pageSize);
  return c;
}

describe('waitForMerge: arguments', () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it('rejects bad arguments', async () => {
    await expect(waitForMerge('everything' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(waitForMerge(new ArrayBuffer(8) as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(waitForMerge('process', null as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(waitForMerge('process', { ratio: 0 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(waitForMerge('process', { ratio: 1.5 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(waitForMerge('process', { ratio: NaN })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(waitForMerge('process', { timeoutMs: -1 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(waitForMerge('process', { signal: {} as never })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARG_TYPE',
    });
    await expect(waitForMerge('process', { onProgress: 1 as never })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARG_TYPE',
    });
    await expect(waitForMerge('process', { boost: 1 as never })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARG_TYPE',
    });
  });

  it('a buffer outside mergeable memory is an error, not an endless wait', async () => {
    const plain = Buffer.alloc(16 * pageSize, 1);
    await expect(waitForMerge(plain)).rejects.toMatchObject({
      code: 'ERR_INVALID_ARG_VALUE',
      message: matching(/markMergeable/),
    });
  });

  it('an aborted signal rejects with its reason at once', async () => {
    const reason = new Error('not now');
    await expect(waitForMerge('process', { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  });
});

describe('waitForMerge: with the kernel', { timeout: 900_000 }, () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it('with ksmd off and boost: false, rejects with ERR_KSM_DISABLED at once', () =>
    lockedAndReleased(async () => {
      const prev = configure({ run: 0 });
      const [a, b] = duplicates(MiB, 1);
      try {
        let progress = 0;
        await expect(waitForMerge(a, { onProgress: () => progress++ })).rejects.toMatchObject({
          name: 'KsmError',
          code: 'ERR_KSM_DISABLED',
          message: matching(/boost: true/),
        });
        await expect(waitForMerge('process')).rejects.toMatchObject({ code: 'ERR_KSM_DISABLED' });
        expect(progress).toBe(0);
      } finally {
        configure(prev);
        free(a);
        free(b);
      }
    }));

  it('boost: true boosts before it measures when nothing is merged yet, and not at all when the target already is', () =>
    lockedAndReleased(async () => {
      // This test file runs in a process of its own, and nothing merged before this test.
      expect(processStats().mergingPages ?? 0).toBe(0);
      const [a, b] = duplicates(4 * MiB, 9);
      try {
        calls.length = 0;
        const r = await waitForMerge(a, { boost: true, timeoutMs: 300_000 });
        expect(r.reason).toBe('ratio');
        // ksmd was on its way while the buffer was first measured.
        expect(calls.slice(0, 2)).toEqual(['boosted', 'measured']);
        calls.length = 0;
        const again = await waitForMerge(b, { boost: true, ratio: 0.9 });
        expect(again).toMatchObject({ reason: 'ratio', fullScans: 0 });
        expect(calls).toEqual(['measured']);
      } finally {
        free(a);
        free(b);
      }
    }));

  it('duplicate buffers: resolves when merged, with exact figures', () =>
    lockedAndReleased(async () => {
      const [a, b] = duplicates(8 * MiB, 2);
      try {
        const seen: number[] = [];
        const r = await waitForMerge(a, {
          boost: true,
          timeoutMs: 300_000,
          onProgress: (p) => seen.push(p.mergedPages),
        });
        expect(r.reason).toBe('ratio');
        expect(r.ratio).toBeGreaterThanOrEqual(0.95);
        expect(r.totalPages).toBe((8 * MiB) / pageSize);
        expect(r.stats).toMatchObject({ bytes: 8 * MiB, residentPages: r.totalPages });
        expect((r.stats as { mergedPages: number }).mergedPages).toBeGreaterThanOrEqual(0.95 * r.totalPages);
        expect(r.elapsedMs).toBeGreaterThan(0);
        for (const n of seen) expect(n).toBeLessThanOrEqual(r.totalPages);
        // The boost is held only while waiting (checked again by lockedAndReleased()).
        expect(boostState()).toBeNull();
        // Already merged: resolves at once, without ksmd.
        const again = await waitForMerge(b, { ratio: 0.9 });
        expect(again).toMatchObject({ reason: 'ratio', fullScans: 0 });
      } finally {
        free(a);
        free(b);
      }
    }));

  it('random data: resolves after quiet full scans with a low ratio, not a timeout', () =>
    lockedAndReleased(async () => {
      const c = unique(4 * MiB, 3);
      try {
        const r = await waitForMerge(c, { boost: true, timeoutMs: 600_000 });
        expect(r.reason).toBe('stable');
        expect(r.complete).toBe(true);
        expect(r.ratio).toBeLessThan(0.05);
        expect(r.fullScans).toBeGreaterThanOrEqual(3);
      } finally {
        free(c);
      }
    }));

  it("'process': the share of the process's mergeable memory", () =>
    lockedAndReleased(async () => {
      const [a, b] = duplicates(8 * MiB, 4);
      const c = unique(2 * MiB, 5);
      try {
        // 16 MiB of duplicates and 2 MiB of unique data: at most 8/9 can merge.
        const r = await waitForMerge('process', { boost: true, ratio: 0.75, timeoutMs: 300_000 });
        expect(r.reason).toBe('ratio');
        expect(r.ratio).toBeGreaterThanOrEqual(0.75);
        expect(r.totalPages).toBeGreaterThanOrEqual((18 * MiB) / pageSize);
        expect(r.stats).toMatchObject({ pid: process.pid });
        expect((r.stats as { mergingPages: number }).mergingPages).toBe(
          r.mergedPages - ((r.stats as { zeroPages?: number }).zeroPages ?? 0),
        );
      } finally {
        free(a);
        free(b);
        free(c);
      }
    }));

  it('abort while boosting: rejects with the signal reason and releases the boost', () =>
    lockedAndReleased(async () => {
      const c = unique(4 * MiB, 6);
      try {
        const controller = new AbortController();
        const reason = new Error('enough');
        const waiting = waitForMerge(c, { boost: true, signal: controller.signal, ratio: 1 });
        controller.abort(reason);
        await expect(waiting).rejects.toBe(reason);
      } finally {
        free(c);
      }
    }));

  it('abort while polling a slow scanner: rejects with the signal reason', () =>
    lockedAndReleased(async () => {
      // The kernel's default pace (100 pages per 20 ms): 16 MiB takes seconds per full scan.
      const prev = configure({ run: 1, advisorMode: 'none', pagesToScan: 100, sleepMillisecs: 20 });
      const c = unique(16 * MiB, 8);
      try {
        const controller = new AbortController();
        const reason = new Error('enough');
        const waiting = waitForMerge(c, { signal: controller.signal });
        setTimeout(() => controller.abort(reason), 300);
        await expect(waiting).rejects.toBe(reason);
      } finally {
        free(c);
        configure(prev);
      }
    }));

  it('timeout: ERR_KSM_TIMEOUT with the figures', () =>
    lockedAndReleased(async () => {
      const c = unique(MiB, 7);
      try {
        await expect(waitForMerge(c, { boost: true, timeoutMs: 0 })).rejects.toMatchObject({
          code: 'ERR_KSM_TIMEOUT',
          message: matching(/of 256 pages merged/),
        });
      } finally {
        free(c);
      }
    }));
});
