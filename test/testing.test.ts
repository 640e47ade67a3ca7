import { AssertionError } from 'node:assert';
import { beforeEach, describe, expect, it } from 'vitest';
import { readSettings } from '../lib/control';
import { alloc, free, pageSize } from '../lib/memory';
import { expectMerged, toBeMerged, withKsm, type KsmMatchers } from '../lib/testing';
import { lockedAndReleased } from './helpers/expect';
import { fillPages, requireKsm } from './helpers/ksm';

declare module 'vitest' {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any, @typescript-eslint/no-empty-object-type
  interface Assertion<T = any> extends KsmMatchers<T> {}
}
expect.extend({ toBeMerged });

const MiB = 1024 * 1024;

function buffers(): { dup: Buffer; twin: Buffer; rand: Buffer; free(): void } {
  const dup = alloc(4 * MiB);
  const twin = alloc(4 * MiB);
  const rand = alloc(MiB);
  fillPages(dup, 21, pageSize);
  fillPages(twin, 21, pageSize);
  fillPages(rand, 22, pageSize);
  return { dup, twin, rand, free: () => [dup, twin, rand].forEach((b) => free(b)) };
}

describe('node-ksm/testing', { timeout: 900_000 }, () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it('withKsm boosts around fn and restores after, also when fn throws', () =>
    lockedAndReleased(async () => {
      const inside = await withKsm(() => readSettings());
      expect(inside).toMatchObject({ run: 1, sleepMillisecs: 0, smartScan: 0 });
      const failure = new Error('inside');
      await expect(withKsm(() => Promise.reject(failure))).rejects.toBe(failure);
      await expect(withKsm('no' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    }));

  it('expectMerged resolves with the figures for duplicates, throws an AssertionError for unique data', () =>
    lockedAndReleased(async () => {
      const b = buffers();
      try {
        const r = await expectMerged(b.dup);
        expect(r.ratio).toBeGreaterThanOrEqual(0.95);
        const err = await expectMerged(b.rand, 0.5).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(AssertionError);
        expect(err).toMatchObject({ code: 'ERR_ASSERTION', expected: 0.5, operator: '>=' });
        expect((err as Error).message).toMatch(
          /expected at least 50\.0 % of the buffer merged, but 0 of 256 resident pages merged/,
        );
      } finally {
        b.free();
      }
    }));

  it('expectMerged with a time limit that is too short fails as an assertion', () =>
    lockedAndReleased(async () => {
      const b = buffers();
      try {
        const err = await expectMerged(b.rand, 0.5, { timeoutMs: 0 }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(AssertionError);
        expect((err as Error).message).toMatch(/timed out/);
      } finally {
        b.free();
      }
    }));

  it('toBeMerged works as a vitest matcher, with .not', () =>
    lockedAndReleased(async () => {
      const b = buffers();
      try {
        await expect(b.dup).toBeMerged();
        await expect(b.rand).not.toBeMerged(0.5);
        await expect(expect(b.rand).toBeMerged(0.5)).rejects.toThrow(/0 of 256 resident pages merged/);
        await expect(expect(b.twin).not.toBeMerged()).rejects.toThrow(/expected the buffer not to be merged/);
      } finally {
        b.free();
      }
    }));
});
