/**
 * Waiting for ksmd to merge a buffer or the whole process. The waiting has to be cheap:
 * re-reading /proc/self/smaps every few milliseconds walks every page table of the
 * process and was measured to make a 256 MiB merge take twice as long as a C program
 * doing the same; polling /proc/self/ksm_merging_pages and full_scans (two tiny files)
 * kept it level with C. So the exact figures (bufferStats / processStats + smaps) are
 * computed only when the cheap counters say the target may be reached, once per full
 * scan for the "nothing more will merge" check, and for the result.
 */
import fs from 'node:fs';
import { boost as takeBoost, type BoostHandle } from './boost';
import { native } from './binding';
import { readSettings } from './control';
import { KsmError, fromFsError, invalidArgType, outOfRange, validateBoolean, validateInteger } from './errors';
import { pageSize } from './memory';
import { parseInteger, parseSmaps } from './procfs';
import { bufferStats, type BufferStats } from './buffer-stats';
import { KSM_SYSFS, mergingPages, processStats, type ProcessStats } from './stats';

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

const POLL_MS = 10;
const PROGRESS_MS = 100;
/**
 * Exact checks that the cheap counter did not ask for: at most this often, and at most
 * 5 % of the time (an exact check of a 256 MiB buffer reads smaps, ~40 ms, and competes
 * with ksmd for the page tables it walks).
 */
const EXACT_EVERY_MS = 1000;
/**
 * A change seen at full_scans = c may have happened as late as during scan c, so the
 * two quiet scans are c+1 and c+2: stable once the counter reaches c+3. The scan in
 * progress when the wait begins counts as a change point for the same reason.
 */
const QUIET_SCANS = 3;

interface Exact {
  merged: number;
  total: number;
  stats: BufferStats | ProcessStats;
}

function readKnob(name: 'full_scans' | 'run'): number | undefined {
  try {
    return parseInteger(fs.readFileSync(`${KSM_SYSFS}/${name}`, 'utf8'));
  } catch (err) {
    throw fromFsError(err);
  }
}

const readFullScans = () => readKnob('full_scans') ?? 0;

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
 * Waits until ksmd has merged `ratio` of the target's mergeable pages, or until two full
 * scans pass with no change (merging is then as complete as the data allows, and the
 * result says so with reason 'stable' and its ratio), and resolves with exact figures.
 * `target` is a buffer (its resident pages) or 'process' (the resident anonymous pages
 * of all its mergeable memory).
 *
 * Rejects at once with ERR_KSM_DISABLED when ksmd is not running and `boost` is false
 * (or if it is stopped while waiting); with ERR_KSM_TIMEOUT after `timeoutMs`; with
 * `signal.reason` when aborted. `boost: true` holds a boost() only while waiting.
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
  // Measured first: a buffer that can never merge is an error even when ksmd is off.
  const first = exact();
  if (share(first) >= o.ratio) return result(first, 'ratio', 0, elapsed());
  const run = readSettings().run;
  if (run !== 1 && !o.boost) throw disabled(run);
  let handle: BoostHandle | undefined;
  if (o.boost) {
    handle = await takeBoost();
  }
  try {
    return await poll(exact, first, o, elapsed);
  } finally {
    await handle?.release();
  }
}

/**
 * The wait itself: cheap counters every POLL_MS, an exact count of the target only when
 * they say it may be done, has gone quiet, or has not been looked at for a while.
 */
async function poll(
  exact: () => Exact,
  first: Exact,
  o: ReturnType<typeof validate>,
  elapsed: () => number,
): Promise<WaitResult> {
  const deadline = o.timeoutMs === undefined ? Infinity : o.timeoutMs;
  const scans0 = readFullScans();
  let last = first;
  // The process counter when `last` was taken: between exact checks, the target's merged
  // pages are estimated as last.merged plus the process's merges since.
  let base = mergingPages();
  let counter = base;
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
  const finish = (e: Exact, reason: 'ratio' | 'stable', scans: number) => result(e, reason, scans - scans0, elapsed());

  for (let polls = 1; ; polls++) {
    const left = deadline - elapsed();
    if (left <= 0) throw timedOut(o, last, lastScans - scans0);
    await delay(Math.min(POLL_MS, left), o.signal);
    const scans = readFullScans();
    const now = mergingPages();
    if (now !== counter) {
      counter = now;
      counterChangeScan = scans;
    }
    const estimate = last.merged + (now - base);
    const needed = Math.ceil(o.ratio * last.total);
    const at = elapsed();
    const quiet = scans >= counterChangeScan + QUIET_SCANS;
    const periodic = scans !== lastScans && at - lastAt >= Math.max(EXACT_EVERY_MS, 20 * exactCost);
    const check = (estimate >= needed && estimate >= trigger) || quiet || periodic;
    if (check) {
      const t = elapsed();
      const e = exact();
      base = mergingPages();
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
    } else if (polls % 10 === 0) {
      const r = readKnob('run');
      if (r !== 1) throw disabled(r);
    }
    report(at, check ? last.merged : Math.max(0, Math.min(estimate, last.total)), check, last.total, scans);
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
