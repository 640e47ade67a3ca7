/** Assertions shared by the test files. */
import { expect } from 'vitest';
import { boostState } from '../../lib/boost';
import { readSettings } from '../../lib/control';
import { lockKsm } from './ksm';

/**
 * `expect.stringMatching`, typed: vitest declares its asymmetric matchers as `any`, which
 * the type-aware lint rightly refuses to see assigned into an expected object.
 */
export const matching = (pattern: RegExp): unknown => expect.stringMatching(pattern);

/** `expect.any`, typed for the same reason. */
export const matchingAny = (ctor: abstract new (...args: never[]) => unknown): unknown => expect.any(ctor);

/** `fn` throws an instance of `ctor` whose `code` is `code`. */
export function expectCode(fn: () => unknown, ctor: new (...args: never[]) => Error, code: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ${ctor.name} ${code}`).toBeInstanceOf(ctor);
  expect((caught as { code?: string }).code).toBe(code);
}

/**
 * Runs fn under the test lock; every boost it takes must be released by the end, and the
 * settings must be back as they were.
 */
export async function lockedAndReleased<T>(fn: () => Promise<T>): Promise<T> {
  const unlock = await lockKsm();
  const before = readSettings();
  try {
    return await fn();
  } finally {
    try {
      expect(boostState()).toBeNull();
      expect(readSettings()).toEqual(before);
    } finally {
      unlock();
    }
  }
}
