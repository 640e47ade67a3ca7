/**
 * The one way a test skips. With KSM_REQUIRE=1 (as CI sets it) an environment that
 * cannot run a test is a failure, not a skip, unless the reason is of a kind on the
 * allowlist below. Every skip carries its reason, and test/helpers/skip-reporter.mts lists
 * them all at the end of the run (and .ci/run at the end of CI).
 *
 * This module is also loaded by the reporter in vitest's main process: no vitest imports.
 */

/**
 * Reasons a test may skip even under KSM_REQUIRE=1. Keep it short: each entry is a
 * property of the build or kernel being tested, never of a broken machine.
 */
export const ALLOWED = {
  /**
   * The running kernel predates the feature the test is about (node-ksm supports Linux
   * 5.10 on; the advisor came in 6.8, smart_scan in 6.7, ...). The suite must pass with
   * KSM_REQUIRE=1 on every supported kernel, and there these tests have nothing to test.
   */
  kernel: 'the kernel lacks the feature',
  /**
   * The AddressSanitizer build (npm run test:asan), whose shadow memory makes figures
   * about the address space, and prctl's walk over all of it, meaningless or minutes long.
   */
  sanitizer: 'meaningless under AddressSanitizer',
  /**
   * Window mode (npm run test:window): buffers are windows of V8-owned memory, so what
   * only external ArrayBuffers have (arenas, a mapping that outlives its views) is absent.
   */
  window: 'not available in window mode',
  /**
   * A capability even root lacks on this machine. This project's VMs (and so its CI) run
   * without CAP_SYS_RESOURCE, so no process can lower its oom_score_adj, which the one
   * test of an unmerge whose process the OOM killer may not take needs. Checked from
   * CapEff, never assumed from a failure.
   */
  capability: 'root lacks a capability here',
} as const;

export type AllowedSkip = keyof typeof ALLOWED;

export const KSM_REQUIRED = process.env.KSM_REQUIRE === '1';

/** What `ctx.skip` needs: the test context of a test or of a `beforeEach` hook. */
export interface SkipContext {
  skip: (note?: string) => void;
}

const TAG = /^\[allowed: ([a-z]+)\] /;

/**
 * Skips the running test with `reason`. Without `allowed` the reason is an environment
 * problem (no root, no cgroup, no redis-server, ...): with KSM_REQUIRE=1 it throws, so
 * the test fails with that reason. With `allowed`, one of the kinds in ALLOWED, it skips
 * in every mode.
 */
export function skipTest(ctx: SkipContext, reason: string, allowed?: AllowedSkip): never {
  if (allowed === undefined && KSM_REQUIRED) {
    throw new Error(
      `KSM_REQUIRE=1, and this test cannot run here: ${reason} (a skip is allowed only for the reasons in test/helpers/skips.ts)`,
    );
  }
  ctx.skip(allowed === undefined ? reason : `[allowed: ${allowed}] ${reason}`);
  // ctx.skip throws to stop the test; this is for the type checker and for a misuse.
  throw new Error(`ctx.skip did not stop the test: ${reason}`);
}

/** `skipTest` when `reason` is a string; nothing when it is null or undefined. */
export function skipIf(ctx: SkipContext, reason: string | null | undefined, allowed?: AllowedSkip): void {
  if (typeof reason === 'string') skipTest(ctx, reason, allowed);
}

/** The allowlisted kind named by a skip note, or undefined when the note names none. */
export function allowedKind(note: string | undefined): AllowedSkip | undefined {
  const kind = note === undefined ? undefined : TAG.exec(note)?.[1];
  return kind !== undefined && Object.hasOwn(ALLOWED, kind) ? (kind as AllowedSkip) : undefined;
}
