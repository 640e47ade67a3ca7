/**
 * `node-ksm/testing`: helpers for your own integration tests on KSM-enabled Linux (root,
 * writable /sys/kernel/mm/ksm).
 *
 * ```ts
 * import { alloc } from 'node-ksm';
 * import { withKsm, expectMerged, toBeMerged } from 'node-ksm/testing';
 *
 * test('two copies of the table share memory', async () => {
 *   await withKsm(async () => {
 *     const a = alloc(size), b = alloc(size);
 *     load(a); load(b);
 *     await expectMerged(a);            // throws an AssertionError with the figures
 *   });
 * });
 *
 * // vitest matcher (in a setup file):
 * expect.extend({ toBeMerged });
 * declare module 'vitest' {
 *   interface Assertion<T = any> extends KsmMatchers<T> {}
 *   interface AsymmetricMatchersContaining extends KsmMatchers {}
 * }
 * // then: await expect(buf).toBeMerged(0.9);
 * ```
 *
 * This module never imports vitest (not even its types), so it costs nothing to users
 * of other test runners. Boosting is machine-wide: if several test files run at once,
 * boosts share one fast scanner and the originals return after the last.
 *
 * @module node-ksm/testing
 */
import { AssertionError } from 'node:assert';
import { boost, type BoostOptions } from './boost';
import { KsmError } from './errors';
import { waitForMerge, type WaitResult } from './wait';

export { boost, restore, type BoostOptions } from './boost';
export { waitForMerge, type WaitResult } from './wait';

/** Runs `fn` with the scanner boosted, and releases the boost afterwards, even when fn throws. */
export async function withKsm<T>(fn: () => Promise<T> | T, options?: BoostOptions): Promise<T> {
  if (typeof fn !== 'function') {
    const err = new TypeError(`The "fn" argument must be of type function. Received ${typeof fn}`);
    (err as NodeJS.ErrnoException).code = 'ERR_INVALID_ARG_TYPE';
    throw err;
  }
  const handle = await boost(options);
  try {
    return await fn();
  } finally {
    await handle.release();
  }
}

/** Options of {@link expectMerged}: how long to wait for the merge, and how to stop waiting. */
export interface ExpectMergedOptions {
  /** Give up (failing the assertion) after this long (default 60 s). */
  timeoutMs?: number;
  /** Boost the scanner while waiting (default true: tests should not wait on the kernel's slow defaults). */
  boost?: boolean;
  signal?: AbortSignal;
}

function percent(r: number): string {
  return `${(r * 100).toFixed(1)} %`;
}

/** The assertion: resolves with the wait's result, or an AssertionError saying why not. */
async function check(
  buf: unknown,
  ratio: number,
  options: ExpectMergedOptions,
): Promise<{ pass: boolean; result?: WaitResult; message: string }> {
  let result: WaitResult;
  try {
    result = await waitForMerge(buf as ArrayBufferView, {
      ratio,
      timeoutMs: options.timeoutMs ?? 60_000,
      boost: options.boost ?? true,
      signal: options.signal,
    });
  } catch (err) {
    if (err instanceof KsmError && err.code === 'ERR_KSM_TIMEOUT') {
      return { pass: false, message: `expected at least ${percent(ratio)} of the buffer merged, but ${err.message}` };
    }
    throw err;
  }
  const figures =
    `${result.mergedPages} of ${result.totalPages} resident pages merged (${percent(result.ratio)}) ` +
    `after ${result.fullScans} full scans in ${Math.round(result.elapsedMs)} ms`;
  if (result.ratio >= ratio)
    return { pass: true, result, message: `expected the buffer not to be merged, but ${figures}` };
  return {
    pass: false,
    result,
    message:
      `expected at least ${percent(ratio)} of the buffer merged, but ${figures}; ` +
      `ksmd merged nothing more for two full scans, so the other pages have no identical twin in mergeable memory`,
  };
}

/**
 * Waits for ksmd to merge `ratio` of `buf`'s resident pages (boosting while it waits,
 * unless `boost: false`) and resolves with the figures; throws an `AssertionError`
 * (`code: 'ERR_ASSERTION'`) that states them when the share is not reached before
 * merging stops or the time runs out.
 */
export async function expectMerged(
  buf: ArrayBufferView,
  ratio = 0.95,
  options: ExpectMergedOptions = {},
): Promise<WaitResult> {
  const { pass, result, message } = await check(buf, ratio, options);
  if (!pass) {
    throw new AssertionError({
      message,
      actual: result?.ratio,
      expected: ratio,
      operator: '>=',
      stackStartFn: expectMerged,
    });
  }
  return result!;
}

/** The part of vitest's/jest's matcher context that toBeMerged uses. */
export interface MatcherContext {
  isNot?: boolean;
}

/** What {@link toBeMerged} returns to the test runner, as vitest and jest matchers do. */
export interface MatcherResult {
  pass: boolean;
  message: () => string;
  actual?: unknown;
  expected?: unknown;
}

/**
 * A vitest (and jest) matcher: `await expect(buf).toBeMerged(ratio?, options?)`. It is
 * asynchronous, so the `await` is needed. Register it with `expect.extend({ toBeMerged })`
 * and declare its type as shown at the top of this module.
 */
export async function toBeMerged(
  this: MatcherContext | void,
  received: unknown,
  ratio = 0.95,
  options: ExpectMergedOptions = {},
): Promise<MatcherResult> {
  const { pass, result, message } = await check(received, ratio, options);
  return { pass, message: () => message, actual: result?.ratio, expected: ratio };
}

/** The matcher's type, for `declare module 'vitest' { interface Assertion<T> extends KsmMatchers<T> {} }`. */
export interface KsmMatchers<R = unknown> {
  toBeMerged(ratio?: number, options?: ExpectMergedOptions): Promise<R>;
}
