/**
 * Waiting for ksmd to merge a buffer or the whole process, adding as little as possible
 * to the time the scanner itself takes (bench/merge-vs-c.mts compares it with a C program
 * that only polls ksm_merging_pages, phase by phase).
 *
 * - The boost is taken first, before the target is measured, when the process has
 *   nothing merged yet (so the target cannot already be at its ratio): ksmd starts on its
 *   way (a new mm is put behind its cursor, so it first finishes the scan in progress)
 *   while the smaps walk runs.
 * - Polling reads two tiny files kept open (/proc/self/ksm_merging_pages and
 *   full_scans, re-read with pread: ~4 µs each). The period adapts: every 10 ms while
 *   nothing moves, and, while pages merge, from the merge rate, down to 1 ms as the
 *   target nears; never so often that polling takes more than 5 % of a core, so a
 *   counter that costs more to read (older kernels, see mergingPages) is read less often.
 * - Re-reading /proc/self/smaps every few milliseconds walks every page table of the
 *   process, and was measured to make a 256 MiB merge take twice as long as the C
 *   program; so the exact figures (bufferStats / processStats + smaps) are computed only
 *   when the cheap counter says the target may be reached, at most once per full scan
 *   for the "nothing more will merge" check, and for the result.
 */
import fs from 'node:fs';
import { boost as takeBoost, type BoostHandle } from './boost';
import { native } from './binding';
import { KernelFile } from './counters';
import { KsmError, fromFsError, invalidArgType, outOfRange, validateBoolean, validateInteger } from './errors';
import { pageSize } from './memory';
import { parseKsmStat, parseSmaps } from './procfs';
import { bufferStats, type BufferStats } from './buffer-stats';
import { KSM_SYSFS, mergingPages, processStats, readIfExists, type ProcessStats } from './stats';

/** What {@link WaitOptions.onProgress} is told as merging goes on. */
export interface WaitProgress {
  /** Merged pages of the target; between exact checks an estimate from the process's counter. */
  mergedPages: number;
  /** The pages that could merge (see `waitForMerge`). */
  totalPages: number;
  ratio: number;
  /** Full scans ksmd completed since the wait began. */
  fullScans: number;
  elapsedMs: number;
}

/** Options of {@link waitForMerge}. */
export interface WaitOptions {
  /** The merged share to wait for, in (0, 1] (default 0.95). */
  ratio?: number;
  /** Reject with ERR_KSM_TIMEOUT after this long (default: no limit). */
  timeoutMs?: number;
  /** Reject with `signal.reason` when aborted. */
  signal?: AbortSignal;
  /** Called as merging progresses (at most every 100 ms). */
  onProgress?: (progress: WaitProgress) => void;
  /** Hold a boost() while waiting (default false). */
  boost?: boolean;
}

/** How {@link waitForMerge} ended, with exact figures. */
export interface WaitResult {
  /** Merged share of the target's mergeable pages, exact. */
  ratio: number;
  mergedPages: number;
  totalPages: number;
  /**
   * Nothing more will merge: either every page is merged, or two full scans passed
   * with no change (the rest of the data is not duplicated, as far as ksmd can see).
   */
  complete: boolean;
  /** 'ratio': the target share was reached; 'stable': two quiet full scans came first. */
  reason: 'ratio' | 'stable';
  /** Full scans ksmd completed while waiting. */
  fullScans: number;
  elapsedMs: number;
  /** bufferStats(target) for a buffer, processStats() for 'process'. */
  stats: BufferStats | ProcessStats;
}

/** The poll period while nothing moves (and the longest while pages do). */
const QUIET_POLL_MS = 10;
/** The shortest poll period, as the target nears while pages merge. */
const FAST_POLL_MS = 1;
/** Polling may take at most 1/20 of a core: the period is at least 20 times a reading's cost. */
const POLL_COST_SHARE = 20;
/** How often ksmd's `run` is checked (it may be stopped while we wait). */
const RUN_CHECK_MS = 100;
const PROGRESS_MS = 100;
/**
 * Exact checks that the cheap counter did not ask for: at most this often, and at most
 * 5 % of the time (an exact check of a 256 MiB buffer reads smaps, ~10 ms, and competes
 * with ksmd for the page tables it walks).
 */
const EXACT_EVERY_MS = 1000;
/**
 * A change seen at full_scans = c may have happened as late as during scan c + 1 (the one
 * in progress when the counter was read: full_scans is read after it), so the two quiet
 * scans are c + 2 and c + 3: stable once the counter reaches c + 3. The scan in progress
 * when the wait begins counts as a change point for the same reason. This is the
 * earliest the kernel's counters can prove "two full scans with no change"; the wait
 * sees it within a poll, polling faster as the next full scan is due.
 */
const QUIET_SCANS = 3;

interface Exact {
  merged: number;
  total: number;
  stats: BufferStats | ProcessStats;
}

/**
 * The cheap counters one wait polls, kept open for its duration: full_scans, run, and
 * the process's merged pages (/proc/self/ksm_merging_pages, Linux 5.19+; elsewhere
 * mergingPages(), whatever it costs there: the cost is measured and the poll period
 * follows it).
 */
class Counters {
  private readonly fullScans = new KernelFile(`${KSM_SYSFS}/full_scans`);
  private readonly runFile = new KernelFile(`${KSM_SYSFS}/run`);
  private readonly merging = new KernelFile('/proc/self/ksm_merging_pages');
  /** Milliseconds one poll's readings took (a moving average). */
  cost = 0;

  scans(): number {
    return this.fullScans.number() ?? 0;
  }

  run(): number | undefined {
    return this.runFile.number();
  }

  merged(): number {
    const n = this.merging.number();
    return n !== undefined || !this.merging.gone ? (n ?? 0) : mergingPages();
  }

  /** full_scans and the merged pages, read in this order (see QUIET_SCANS), timed. */
  poll(): { scans: number; merged: number } {
    const t = performance.now();
    const merged = this.merged();
    const scans = this.scans();
    const ms = performance.now() - t;
    this.cost = this.cost === 0 ? ms : 0.8 * this.cost + 0.2 * ms;
    return { scans, merged };
  }

  close(): void {
    this.fullScans.close();
    this.runFile.close();
    this.merging.close();
  }
}

/**
 * For the process, the pages that could merge are the resident anonymous pages of its
 * mergeable VMAs (smaps `Anonymous:` where VmFlags has `mg`; KSM only merges anonymous
 * pages, including the copied-on-write pages of private file mappings), plus the pages
 * already merged into the zero page, which smaps no longer counts. Not ksm_rmap_items,
 * though it is cheaper: ksmd creates an rmap item only when it first visits a page, so
 * before its first full scan over new memory it undercounts, and a barely started scan
 * would look finished.
 */
function exactProcess(): Exact {
  const stats = processStats();
  let anon = 0;
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/smaps', 'utf8');
  } catch (err) {
    throw fromFsError(err);
  }
  for (const vma of parseSmaps(text)) if (vma.vmFlags.includes('mg')) anon += vma.bytes.Anonymous ?? 0;
  const zero = Math.max(0, stats.zeroPages ?? 0);
  return { merged: (stats.mergingPages ?? 0) + zero, total: Math.round(anon / pageSize) + zero, stats };
}

/**
 * For a buffer, the pages that could merge are its resident pages (pages never touched
 * hold no memory to save), and merged are its KSM pages plus those merged into the zero
 * page.
 */
function exactBuffer(buf: ArrayBufferView): Exact {
  const stats = bufferStats(buf);
  if (!stats.mergeable && stats.pages > 0) {
    const err = new TypeError(
      'The "target" buffer is not in mergeable memory (MADV_MERGEABLE), so it will never merge: allocate it with alloc() or mark it with markMergeable()',
    );
    (err as NodeJS.ErrnoException).code = 'ERR_INVALID_ARG_VALUE';
    throw err;
  }
  return { merged: stats.mergedPages + (stats.zeroPages ?? 0), total: stats.residentPages, stats };
}

const share = (e: Exact) => (e.total === 0 ? 1 : Math.min(1, e.merged / e.total));

function result(e: Exact, reason: 'ratio' | 'stable', fullScans: number, elapsedMs: number): WaitResult {
  return {
    ratio: share(e),
    mergedPages: e.merged,
    totalPages: e.total,
    complete: reason === 'stable' || e.merged >= e.total,
    reason,
    fullScans,
    elapsedMs,
    stats: e.stats,
  };
}

/** Rejects with the signal's own reason (whatever the caller aborted with), as the API promises. */
function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function disabled(run: number | undefined): KsmError {
  return new KsmError(
    `ksmd is not running (run=${run}), so nothing will merge. Pass { boost: true } to run it fast while waiting, ` +
      `hold a boost(), or start it as root: echo 1 > ${KSM_SYSFS}/run`,
    'ERR_KSM_DISABLED',
  );
}

function validate(target: unknown, options: unknown) {
  if (target !== 'process' && !ArrayBuffer.isView(target)) {
    throw invalidArgType('target', "'process' or an instance of Buffer, TypedArray or DataView", target);
  }
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const o = options as WaitOptions;
  const ratio = o.ratio ?? 0.95;
  if (typeof ratio !== 'number') throw invalidArgType('options.ratio', 'of type number', ratio);
  if (!(ratio > 0 && ratio <= 1)) throw outOfRange('options.ratio', '> 0 and <= 1', ratio);
  if (o.timeoutMs !== undefined) validateInteger(o.timeoutMs, 'options.timeoutMs', 0, 2 ** 31 - 1);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal))
    throw invalidArgType('options.signal', 'an instance of AbortSignal', o.signal);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function')
    throw invalidArgType('options.onProgress', 'of type function', o.onProgress);
  const boost = o.boost === undefined ? false : validateBoolean(o.boost, 'options.boost');
  return { ratio, timeoutMs: o.timeoutMs, signal: o.signal, onProgress: o.onProgress, boost };
}

/**
 * True when the process has nothing merged, so no target in it can be at its ratio yet
 * (unless it holds no page at all, which the first exact check finds as well).
 */
function nothingMerged(): boolean {
  try {
    const stat = readIfExists('/proc/self/ksm_stat');
    const f = stat === undefined ? undefined : parseKsmStat(stat);
    if (f?.mergingPages !== undefined) return f.mergingPages + Math.max(0, f.zeroPages ?? 0) === 0;
    // Older kernels: mergingPages() is the process's counter, or one that moves with it
    // (see stats.ts); zero means nothing of the process is merged either way.
    return mergingPages() === 0;
  } catch {
    return false;
  }
}

/**
 * Waits until ksmd has merged `ratio` of the target's mergeable pages, or until two full
 * scans pass with no change (merging is then as complete as the data allows, and the
 * result says so with reason 'stable' and its ratio), and resolves with exact figures.
 * `target` is a buffer (its resident pages) or 'process' (the resident anonymous pages
 * of all its mergeable memory).
 *
 * Rejects at once with ERR_KSM_DISABLED when ksmd is not running and `boost` is false
 * (or if it is stopped while waiting); with ERR_KSM_TIMEOUT after `timeoutMs`; with
 * `signal.reason` when aborted. `boost: true` holds a boost() only while waiting: taken
 * before anything else when nothing of the process is merged yet (so that ksmd starts
 * at once), released before the promise settles.
 *
 * With smart_scan=1 (the kernel's default, not used while boosted), pages that failed to
 * merge are skipped for several scans, so 'stable' may come before everything that
 * could merge has.
 */
export async function waitForMerge(
  target: 'process' | ArrayBufferView = 'process',
  options: WaitOptions = {},
): Promise<WaitResult> {
  const o = validate(target, options);
  native();
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  if (o.signal?.aborted) throw o.signal.reason;
  const exact = target === 'process' ? exactProcess : () => exactBuffer(target);
  const counters = new Counters();
  try {
    // Measured first unless boosting first is safe: a target that is already merged must
    // not cost a boost, and a buffer that can never merge is an error even when ksmd is off.
    let first: Exact | undefined;
    let base = 0;
    if (!o.boost || !nothingMerged()) {
      base = counters.merged();
      first = exact();
      if (share(first) >= o.ratio) return result(first, 'ratio', 0, elapsed());
    }
    const run = counters.run();
    if (run !== 1 && !o.boost) throw disabled(run);
    const handle: BoostHandle | undefined = o.boost ? await takeBoost() : undefined;
    try {
      if (first === undefined) {
        // ksmd is already on its way; this smaps walk runs meanwhile.
        base = counters.merged();
        first = exact();
        if (share(first) >= o.ratio) return result(first, 'ratio', 0, elapsed());
      }
      return await poll(exact, first, base, counters, o, elapsed);
    } finally {
      await handle?.release();
    }
  } finally {
    counters.close();
  }
}

/** The time until `full_scans` should next move, from the pace of the last ones (Infinity when unknown). */
class ScanClock {
  private at = 0;
  private value = -1;
  private period = Infinity;

  see(scans: number, now: number): void {
    if (this.value >= 0 && scans > this.value) {
      const p = (now - this.at) / (scans - this.value);
      this.period = this.period === Infinity ? p : 0.5 * this.period + 0.5 * p;
    }
    if (scans !== this.value) {
      this.value = scans;
      this.at = now;
    }
  }

  /** Milliseconds until the next scan is expected to end (0 if overdue). */
  untilNext(now: number): number {
    return Math.max(0, this.at + this.period - now);
  }
}

/**
 * The wait itself: cheap counters, polled adaptively (see nextPeriod), an exact count of the target only when
 * they say it may be done, has gone quiet, or has not been looked at for a while.
 *
 * One loop over a dozen variables that each iteration reads and moves together (the last
 * exact count and the counter it was based on, the merge rate, the scan clock): split into
 * functions, they would travel as one mutable record, which reads worse than this.
 */
// eslint-disable-next-line max-lines-per-function -- one loop's shared state: see above
async function poll(
  exact: () => Exact,
  first: Exact,
  firstBase: number,
  counters: Counters,
  o: ReturnType<typeof validate>,
  elapsed: () => number,
): Promise<WaitResult> {
  const deadline = o.timeoutMs === undefined ? Infinity : o.timeoutMs;
  const scans0 = counters.scans();
  let last = first;
  // The process counter when `last` was taken (read before it: merges during the walk
  // are then counted twice, which asks for an exact check too early, never too late):
  // between exact checks, the target's merged pages are estimated as last.merged plus
  // the process's merges since.
  let base = firstBase;
  let counter = counters.merged();
  // Quiet scans are counted on the cheap counter: if the whole process merged nothing
  // for two full scans, neither did the target. Should other memory of the process keep
  // changing, exact checks (rarely: see EXACT_EVERY_MS) count them for the target alone.
  let counterChangeScan = scans0;
  let exactChangeScan = scans0;
  let lastScans = scans0;
  let lastAt = elapsed();
  let exactCost = 0;
  let trigger = 0; // estimate at which an exact check is worth it again
  const report = progressReporter(o.onProgress, scans0);
  let runCheckedAt = elapsed();
  // The merge rate (pages per ms) while pages move, for the time the target is still away.
  let rate = 0;
  let changedAt = -Infinity;
  let counterAt = elapsed();
  let period = FAST_POLL_MS;
  const clock = new ScanClock();
  clock.see(scans0, elapsed());
  const finish = (e: Exact, reason: 'ratio' | 'stable', scans: number) => result(e, reason, scans - scans0, elapsed());

  for (;;) {
    const left = deadline - elapsed();
    if (left <= 0) throw timedOut(o, last, lastScans - scans0);
    await delay(Math.min(period, left), o.signal);
    const { scans, merged: now } = counters.poll();
    const at = elapsed();
    clock.see(scans, at);
    if (now !== counter) {
      const dt = at - counterAt;
      const r = dt > 0 ? Math.max(0, now - counter) / dt : 0;
      // Weighted towards the latest reading: ksmd's pace changes as it moves between mms.
      rate = rate === 0 ? r : 0.5 * rate + 0.5 * r;
      counter = now;
      counterChangeScan = scans;
      changedAt = at;
    }
    counterAt = at;
    const estimate = last.merged + (now - base);
    const needed = Math.ceil(o.ratio * last.total);
    const quiet = scans >= counterChangeScan + QUIET_SCANS;
    const periodic = scans !== lastScans && at - lastAt >= Math.max(EXACT_EVERY_MS, 20 * exactCost);
    const check = (estimate >= needed && estimate >= trigger) || quiet || periodic;
    if (check) {
      const t = elapsed();
      const nextBase = counters.merged();
      const e = exact();
      base = nextBase;
      lastAt = elapsed();
      exactCost = lastAt - t;
      if (e.merged !== last.merged) exactChangeScan = scans;
      last = e;
      lastScans = scans;
      if (share(e) >= o.ratio) return finish(e, 'ratio', scans);
      if (quiet || scans >= exactChangeScan + QUIET_SCANS) return finish(e, 'stable', scans);
      // The estimate overshot (other memory of the process merged): wait for as many
      // more merges as the target still lacks before looking again.
      if (estimate >= needed) trigger = estimate + (Math.ceil(o.ratio * e.total) - e.merged);
    } else if (at - runCheckedAt >= RUN_CHECK_MS) {
      runCheckedAt = at;
      const r = counters.run();
      if (r !== 1) throw disabled(r);
    }
    report(at, check ? last.merged : Math.max(0, Math.min(estimate, last.total)), check, last.total, scans);
    period = nextPeriod();

    function nextPeriod(): number {
      const floor = Math.max(FAST_POLL_MS, POLL_COST_SHARE * counters.cost);
      let p = QUIET_POLL_MS;
      // Pages moving recently: poll so as to see the target within a fraction of the
      // time it is still away.
      const goal = Math.max(needed, trigger) - (last.merged + (counter - base));
      if (rate > 0 && at - changedAt < 2 * QUIET_POLL_MS) p = Math.min(p, goal / rate / 2);
      // The end of the next full scan proves "two quiet scans": be there when it comes.
      if (scans + 1 >= counterChangeScan + QUIET_SCANS) p = Math.min(p, clock.untilNext(at) / 2 + floor);
      return Math.min(QUIET_POLL_MS, Math.max(floor, p));
    }
  }
}

function timedOut(o: ReturnType<typeof validate>, last: Exact, fullScans: number): KsmError {
  return new KsmError(
    `waitForMerge timed out after ${o.timeoutMs} ms: ${last.merged} of ${last.total} pages merged ` +
      `(${(share(last) * 100).toFixed(1)} %, wanted ${(o.ratio * 100).toFixed(1)} %) after ${fullScans} full scans`,
    'ERR_KSM_TIMEOUT',
  );
}

/**
 * Calls onProgress at most every PROGRESS_MS, and then only with news (a changed figure,
 * or one from an exact count).
 */
function progressReporter(
  onProgress: WaitOptions['onProgress'],
  scans0: number,
): (at: number, merged: number, exact: boolean, total: number, scans: number) => void {
  let reportedAt = -Infinity;
  let reported = -1;
  return (at, merged, exact, total, scans) => {
    if (!onProgress || at - reportedAt < PROGRESS_MS || (merged === reported && !exact)) return;
    reportedAt = at;
    reported = merged;
    onProgress({
      mergedPages: merged,
      totalPages: total,
      ratio: total === 0 ? 1 : merged / total,
      fullScans: scans - scans0,
      elapsedMs: at,
    });
  };
}
