/**
 * Harness for tests that need the real KSM scanner. `withFastKsm(fn)` takes a
 * machine-wide lock (so test files, and test runs in other shells, never fight over the
 * global /sys/kernel/mm/ksm), turns a fast scanner on, runs fn, and restores every knob
 * in `finally` and on SIGINT/SIGTERM. Tests that cannot have KSM skip with the reason,
 * or fail when KSM_REQUIRE=1 (as CI sets it): see skips.ts.
 */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { binding } from '../../lib/binding';
import { skipTest, type SkipContext } from './skips';
import { canWrite, restore, snapshot, type Snapshot } from './sysfs';

/** Why KSM tests cannot run here, or null when they can. */
export function ksmUnavailable(): string | null {
  if (binding === null) return 'the native addon is not loaded';
  return canWrite();
}

/**
 * Call at the top of a test that needs KSM, or as `beforeEach(({ skip }) => requireKsm({ skip }))`
 * (vitest 4 reads a hook's parameter list, so pass the context's `skip` on explicitly):
 * skips with the reason, or throws when KSM_REQUIRE=1.
 */
export function requireKsm(ctx: SkipContext): void {
  const reason = ksmUnavailable();
  if (reason !== null) skipTest(ctx, `KSM unavailable: ${reason}`);
}

const LOCK_DIR = '/run/node-ksm';
const LOCK_FILE = `${LOCK_DIR}/tests.lock`;
/**
 * The settings withFastKsm found, on disk while it runs. The flock goes with a process
 * that is SIGKILLed (a vitest timeout, `timeout`, Ctrl-C twice) but its `finally` never
 * runs: the next holder of the lock finds this file and puts the settings back.
 */
export const SNAPSHOT_FILE = `${LOCK_DIR}/tests.snapshot.json`;

/** Exclusive machine-wide lock for tests that change /sys/kernel/mm/ksm. */
export async function lockKsm(timeoutMs = 600_000): Promise<() => void> {
  fs.mkdirSync(LOCK_DIR, { recursive: true });
  const fd = fs.openSync(LOCK_FILE, 'a');
  const deadline = Date.now() + timeoutMs;
  while (!binding!.flock(fd, 2)) {
    if (Date.now() > deadline) {
      fs.closeSync(fd);
      throw new Error(`Timed out waiting for ${LOCK_FILE}`);
    }
    await sleep(20);
  }
  recoverDeadHolder();
  return () => {
    binding!.flock(fd, 0);
    fs.closeSync(fd);
  };
}

/** Under the lock: a snapshot left on disk means its writer died holding fast settings. */
function recoverDeadHolder(): void {
  let text: string;
  try {
    text = fs.readFileSync(SNAPSHOT_FILE, 'utf8');
  } catch {
    return;
  }
  restore(JSON.parse(text) as Snapshot);
  fs.rmSync(SNAPSHOT_FILE, { force: true });
  process.stderr.write(
    `test harness: a test process died holding fast KSM settings; restored them from ${SNAPSHOT_FILE}\n`,
  );
}

/**
 * Fast settings for tests. smart_scan=0 because smart scan skips pages that did not
 * change in earlier scans, and pages written while the scanner runs can then stay
 * unmerged for hundreds of full scans; the advisor is off so pages_to_scan can be set.
 */
export const FAST: Snapshot = {
  advisor_mode: 'none',
  pages_to_scan: '10000',
  sleep_millisecs: '0',
  smart_scan: '0',
  run: '1',
};

function writeSettings(settings: Snapshot): void {
  const order = ['advisor_mode', 'pages_to_scan', 'sleep_millisecs', 'smart_scan', 'use_zero_pages', 'run'];
  for (const name of order) {
    const v = settings[name];
    if (v !== undefined && fs.existsSync(`/sys/kernel/mm/ksm/${name}`))
      fs.writeFileSync(`/sys/kernel/mm/ksm/${name}`, v);
  }
}

/**
 * Runs fn with the machine's KSM scanner on and fast, under the test lock; puts back
 * every knob afterwards. `settings` overrides FAST (e.g. `{ run: '0' }`).
 */
export async function withFastKsm<T>(fn: () => Promise<T> | T, settings: Snapshot = {}): Promise<T> {
  const unlock = await lockKsm();
  const before = snapshot();
  fs.writeFileSync(SNAPSHOT_FILE, JSON.stringify(before));
  const onSignal = (sig: NodeJS.Signals) => {
    restore(before);
    fs.rmSync(SNAPSHOT_FILE, { force: true });
    process.kill(process.pid, sig);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    writeSettings({ ...FAST, ...settings });
    return await fn();
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    try {
      restore(before);
      fs.rmSync(SNAPSHOT_FILE, { force: true });
    } finally {
      unlock();
    }
  }
}

/** Polls `check` until it returns a truthy value or the time is up (then returns the last value). */
export async function pollUntil<T>(check: () => T, timeoutMs: number, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let value = check();
  while (!value && Date.now() < deadline) {
    await sleep(intervalMs);
    value = check();
  }
  return value;
}

/**
 * Fills `buf` with pseudo-random pages: page p gets a stream seeded by (seed, p), so
 * every page differs from the others and two buffers filled with the same seed are
 * identical page for page.
 */
export function fillPages(buf: Uint8Array, seed: number, pageSize: number): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, Math.floor(buf.byteLength / 4));
  const perPage = pageSize / 4;
  for (let p = 0; p * perPage < words.length; p++) {
    let x = (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(p + 1, 0x85ebca6b)) >>> 0 || 1;
    const end = Math.min(words.length, (p + 1) * perPage);
    for (let i = p * perPage; i < end; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
  }
}

/** Bytes on the KSM: lines of /proc/self/smaps over the VMAs overlapping [start, end). */
export function smapsKsmBytes(start: bigint, end: bigint): number {
  const text = fs.readFileSync('/proc/self/smaps', 'utf8');
  let total = 0;
  let inRange = false;
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) {
      const s = BigInt(`0x${m[1]}`);
      const e = BigInt(`0x${m[2]}`);
      inRange = s < end && e > start;
      continue;
    }
    const k = /^KSM:\s+(\d+) kB/.exec(line);
    if (k && inRange) total += Number(k[1]) * 1024;
  }
  return total;
}

/**
 * Set by test/run-asan.sh. Under AddressSanitizer the process holds a multi-TiB shadow
 * mapping, and PR_SET_MEMORY_MERGE(0) walks all of it to unmerge, for minutes.
 */
export const SANITIZED = process.env.NODE_KSM_SANITIZED === '1';

/**
 * Skips a test that needs the native addon (a failure with KSM_REQUIRE=1); with
 * `underSanitizer`, also when running against the sanitizer build, saying why its figures
 * mean nothing there (allowed in every mode).
 */
export function requireNative(ctx: SkipContext, underSanitizer?: string): void {
  if (binding === null) skipTest(ctx, 'the native addon is not loaded');
  if (underSanitizer !== undefined && SANITIZED) skipTest(ctx, underSanitizer, 'sanitizer');
}
