/**
 * Merge fast, idle cheap. The kernel's defaults merge ~8 MiB/s and cost ~1 % of a core;
 * a boosted scanner merges ~100x faster but keeps a core busy for as long as it stands,
 * even with nothing left to merge. Autotune holds the scanner at the low-cost setting
 * while nothing changes and boosts the moment there is work, then backs off once two
 * full scans bring no change, or sooner once what the boost found is merged and nothing
 * changes any more (see WorkDetector).
 *
 * Work is seen in cheap places only: the global counters of /sys/kernel/mm/ksm (ksmd
 * finding new pages, pages settling, merges), kept open and re-read with pread
 * (counters.ts: ~4 µs a file), and, for new processes with mergeable memory, the last
 * pid the kernel handed out (/proc/loadavg) and the ksm_stat of each process started
 * since, for its first seconds. ksmd puts a new mm behind its cursor, so at 100 pages per
 * 20 ms it may reach new memory only after a whole idle scan of everything else; the
 * process check boosts before that, and the boost is not given up before ksmd has been
 * over that process's memory. What costs while idle is mostly waking up (~200 µs of CPU
 * a wake-up on a loaded VM, ~20 µs on bare metal): autotune reads the counters every
 * 200 ms, the last pid (one pread) every 50 ms, and young processes' ksm_stat as often
 * as every 25 ms only while there are such processes to watch.
 *
 * The boosted state is a boost() handle (boost.ts), so autotune and other boost holders
 * share one record of the settings, and a crash while boosted is undone by the next
 * boost() or `node-ksm restore`.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { native } from './binding';
import { boost, boostState, holdSync, type BoostHandle } from './boost';
import { readSettings, type KsmSettings, type KsmSettingName } from './control';
import { KernelFile, KernelFiles } from './counters';
import { invalidArgType, validateInteger } from './errors';
import { parseKsmStat, parseKsmSysfs, snakeCase } from './procfs';
import { KSM_SYSFS } from './stats';

/** Where autotune stands ({@link AutotuneHandle.state}). */
export type AutotuneState =
  /** Low-cost scanning, watching for work. */
  | 'idle'
  /** Fast scanning (a boost() is held) until two full scans bring no change. */
  | 'boosted'
  /** An operator set advisor_mode=scan-time: the kernel's advisor owns the scanner; autotune does nothing. */
  | 'advisor'
  /** Someone else changed the settings (a manual `tune`): autotune stopped adjusting. */
  | 'overridden'
  /** Reading or writing the settings failed; autotune stopped adjusting (see `error`). */
  | 'failed'
  /** stop() has run. */
  | 'stopped';

/** A change of {@link AutotuneState}, with its reason ({@link AutotuneOptions.onChange}, 'change'). */
export interface AutotuneEvent {
  state: AutotuneState;
  previous: AutotuneState;
  /** Why, in words for an operator. */
  reason: string;
  /** Milliseconds since startAutotune(). */
  timeMs: number;
  /** The scanner settings after the change. */
  settings: KsmSettings;
}

/** Options of {@link startAutotune}. */
export interface AutotuneOptions {
  /** Low-cost settings. Default: the settings found at start when they cost no more than the kernel's defaults, else the defaults (100 pages every 20 ms). */
  idle?: { pagesToScan?: number; sleepMillisecs?: number };
  /** Boosted settings (default pages_to_scan 100000, sleep 0, smart_scan 0). */
  boost?: { pagesToScan?: number; sleepMillisecs?: number };
  /**
   * How often the counters are read and new processes looked for while idle (default
   * 200 ms). A look costs a timer wake-up and about a dozen preads of tiny files: ~50 µs of
   * CPU, ~250 µs on a loaded VM where a wake-up alone costs ~200 µs.
   */
  idleIntervalMs?: number;
  /**
   * How often, at most, while idle, processes started in the last 5 s are checked for
   * new mergeable memory (default 25 ms: in a process's first 200 ms; after that every
   * eighth of its age, so memory marked 1 s after the start is noticed ~60 ms after the
   * madvise on average). Only while there are such processes: on a host that starts none,
   * autotune reads the counters every idleIntervalMs and, in between, every 50 ms, only the
   * last pid the kernel handed out (one pread of /proc/loadavg).
   */
  watchIntervalMs?: number;
  /** ... and while boosted (default 25 ms), when the end of the work is worth noticing at once. */
  boostedIntervalMs?: number;
  /** Pages of change (new, settled or merged) that count as work (default 256). */
  thresholdPages?: number;
  /** Full scans without work before backing off (default 2). */
  quietScans?: number;
  /** Or back off sooner: this long without work once the boost has merged what it found (default 100 ms; see WorkDetector). */
  quietMs?: number;
  /**
   * Boost when a process started in the last 5 s gains mergeable memory (default true;
   * needs ksm_stat's ksm_mergeable, Linux 6.14+), and keep the boost until ksmd has been
   * over that process's memory.
   */
  watchProcesses?: boolean;
  /** boost.ts state directory (default /run/node-ksm). */
  stateDir?: string;
  /** Called on every change of state (also emitted as 'change'). */
  onChange?: (event: AutotuneEvent) => void;
}

/** A running autotune ({@link startAutotune}); emits 'change' with each {@link AutotuneEvent}. */
export interface AutotuneHandle extends EventEmitter {
  readonly state: AutotuneState;
  /** The settings found at start; stop() puts back those autotune changed and nobody else did. */
  readonly originals: KsmSettings;
  readonly idleSettings: KsmSettings;
  readonly boostSettings: KsmSettings;
  /** Every change of state so far. */
  readonly history: readonly AutotuneEvent[];
  /** Set in state 'failed'. */
  readonly error: Error | undefined;
  /** Stops watching, releases the boost if held, restores the originals. Idempotent. */
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** The kernel's own defaults: the cost autotune idles at unless the operator chose lower. */
export const KERNEL_DEFAULT_SCAN = { pagesToScan: 100, sleepMillisecs: 20 } as const;
/** The boosted settings autotune uses unless told otherwise ({@link AutotuneOptions.boost}). */
export const AUTOTUNE_BOOST = { pagesToScan: 100_000, sleepMillisecs: 0, smartScan: 0 } as const;

/** The knobs autotune and boost() write, and so the ones it watches for other writers. */
const WATCHED: readonly KsmSettingName[] = ['run', 'advisorMode', 'pagesToScan', 'sleepMillisecs', 'smartScan'];

export interface AutotuneCounters {
  fullScans: number;
  pagesShared: number;
  pagesSharing: number;
  pagesUnshared: number;
  pagesVolatile: number;
  zeroPages: number;
  /** Pages ksmd has looked at since boot (undefined on kernels without pages_scanned, 6.8+). */
  pagesScanned?: number;
}

/** ksmd's counters from the parsed sysfs (missing files count as 0). */
export function countersOf(s: Record<string, unknown>): AutotuneCounters {
  const n = (k: string) => (typeof s[k] === 'number' ? s[k] : 0);
  return {
    fullScans: n('fullScans'),
    pagesShared: n('pagesShared'),
    pagesSharing: n('pagesSharing'),
    pagesUnshared: n('pagesUnshared'),
    pagesVolatile: n('pagesVolatile'),
    zeroPages: n('ksmZeroPages'),
    pagesScanned: typeof s.pagesScanned === 'number' ? s.pagesScanned : undefined,
  };
}

/**
 * The counters autotune decides on and the knobs it watches for other writers, kept open
 * for the life of the handle (counters.ts): one reading is 11 preads, ~50 µs of CPU,
 * where reading every file of /sys/kernel/mm/ksm anew cost ~1 ms.
 */
const SYSFS_FILES = [
  'pages_scanned',
  'pages_shared',
  'pages_sharing',
  'pages_unshared',
  'pages_volatile',
  'ksm_zero_pages',
  // After the counters: a change seen in them happened before this full_scans was read,
  // so during the scan in progress at the latest (see WorkDetector).
  'full_scans',
  'run',
  'advisor_mode',
  'pages_to_scan',
  'sleep_millisecs',
  'smart_scan',
] as const;

class SysfsReader {
  private readonly files = new KernelFiles(
    Object.fromEntries(SYSFS_FILES.map((f) => [f, `${KSM_SYSFS}/${f}`])) as Record<
      (typeof SYSFS_FILES)[number],
      string
    >,
  );

  read(): { counters: AutotuneCounters; settings: KsmSettings } {
    const texts: Record<string, string> = {};
    for (const f of SYSFS_FILES) {
      const t = this.files.file(f).text();
      if (t !== undefined) texts[f] = t;
    }
    const parsed = parseKsmSysfs(texts);
    return {
      counters: countersOf(parsed as unknown as Record<string, unknown>),
      settings: pick(parsed as KsmSettings),
    };
  }

  close(): void {
    this.files.close();
  }
}

/** Every page ksmd tracks has one rmap item, in exactly one of these four counts. */
const tracked = (c: AutotuneCounters) => c.pagesShared + c.pagesSharing + c.pagesUnshared + c.pagesVolatile;

/**
 * The work between two readings, or undefined when there was none worth a boost: new
 * pages ksmd found (rmap items created), pages that stopped changing (volatile → a tree:
 * now merge candidates) and merges. Falls (memory freed, processes gone) are not work.
 * Churn, pages flipping between volatile and unshared, nets out to ~0 and stays below
 * the threshold, so a busy cache does not keep the scanner boosted.
 */
export function workBetween(a: AutotuneCounters, b: AutotuneCounters, thresholdPages: number): string | undefined {
  const found = tracked(b) - tracked(a);
  const settled = tracked(b) - b.pagesVolatile - (tracked(a) - a.pagesVolatile);
  const merged = b.pagesSharing + b.zeroPages - (a.pagesSharing + a.zeroPages);
  if (found >= thresholdPages) return `ksmd found ${found} new mergeable pages`;
  if (merged >= thresholdPages) return `${merged} pages merged`;
  if (settled >= thresholdPages) return `${settled} pages stopped changing`;
  return undefined;
}

/** Pages ksmd must have looked at (pages_scanned) without finding work for quietMs to count. */
const QUIET_SCANNED_PAGES = 2048;

/**
 * The decision, as a pure state machine over counter readings (tested on made-up
 * sequences). Idle: work since the last full-scan boundary → boost.
 *
 * Boosted, three ways back: a full scan that found nothing at all (a boost on a process
 * that marked only a page or two); `quietScans` full scans in a row without work (the
 * rule that is always right, but a boosted full scan over a GiB of merged pages takes
 * seconds of a whole core); or, sooner, once this boost has seen work, `quietMs` without
 * any, while no page it found is still waiting for ksmd's second look (pages_volatile
 * back within `thresholdPages` of where it stood when the boost began, and a full scan
 * begun since the last new page was found: ksmd merges a page only when its checksum
 * held still since the previous visit, so freshly found pages sit in pages_volatile
 * until the next pass). Without that condition, the time ksmd spends over old memory
 * between its first and second pass over new memory would look quiet.
 *
 * The kernel puts a newly registered mm just behind ksmd's cursor: the first full-scan
 * boundary after the boost closes a scan that did not reach it, and only the second
 * closes one that went over everything. "Found nothing" waits for that second boundary,
 * and while the caller knows of memory ksmd has not been over yet (`awaiting`: a new
 * process whose ksm_rmap_items is still 0), neither early way back is taken.
 */
export class WorkDetector {
  private base: AutotuneCounters | undefined;
  private start: AutotuneCounters | undefined;
  private prev: AutotuneCounters | undefined;
  /** The first reading of the scan in progress. */
  private scanStart: AutotuneCounters | undefined;
  private quiet = 0;
  private sawWork = false;
  private lastWorkAt = 0;
  private scannedAtWork: number | undefined;
  private lastFoundScan = -Infinity;
  constructor(
    readonly thresholdPages: number,
    readonly quietScans: number,
    readonly quietMs = 100,
  ) {}

  /** Forget the history (on every change of state). */
  reset(c: AutotuneCounters, nowMs = 0): void {
    this.base = this.start = this.prev = this.scanStart = c;
    this.quiet = 0;
    this.sawWork = false;
    this.lastWorkAt = nowMs;
    this.scannedAtWork = c.pagesScanned;
    this.lastFoundScan = -Infinity;
  }

  /** Idle: a reason to boost, or undefined. */
  idle(c: AutotuneCounters): string | undefined {
    if (this.base === undefined) this.reset(c);
    const work = workBetween(this.base!, c, this.thresholdPages);
    // Slow drift (a little churn every scan) must not add up to a boost over hours.
    if (c.fullScans !== this.base!.fullScans) this.base = c;
    return work;
  }

  /** Boosted: a reason to back off, or undefined. `awaiting`: memory ksmd has not been over yet. */
  boosted(c: AutotuneCounters, nowMs = 0, awaiting = false): string | undefined {
    if (this.base === undefined) this.reset(c, nowMs);
    // Per reading, a smaller step counts: the merge tail is a trickle.
    const step = Math.max(1, Math.ceil(this.thresholdPages / 8));
    if (workBetween(this.prev!, c, step) !== undefined) {
      this.sawWork = true;
      this.lastWorkAt = nowMs;
      this.scannedAtWork = c.pagesScanned;
    }
    // New pages found in this scan, net of those gone (churn and frees are not new
    // memory); across a boundary, what came since the last reading counts for the new scan.
    const from = c.fullScans === this.scanStart!.fullScans ? this.scanStart! : this.prev!;
    if (tracked(c) - tracked(from) >= this.thresholdPages) this.lastFoundScan = c.fullScans;
    if (c.fullScans !== this.scanStart!.fullScans) this.scanStart = c;
    this.prev = c;
    const waiting = c.pagesVolatile - this.start!.pagesVolatile;
    // Quiet means ksmd looked and found nothing, not that it did not run (a loaded
    // machine can keep ksmd, at nice 5, off the CPU for longer than quietMs).
    const looked =
      c.pagesScanned === undefined ||
      this.scannedAtWork === undefined ||
      c.pagesScanned - this.scannedAtWork >= QUIET_SCANNED_PAGES;
    if (
      !awaiting &&
      this.sawWork &&
      nowMs - this.lastWorkAt >= this.quietMs &&
      looked &&
      waiting < this.thresholdPages &&
      c.fullScans > this.lastFoundScan
    ) {
      return `no change for ${Math.round(nowMs - this.lastWorkAt)} ms and no new page waiting for a second look`;
    }
    const scans = c.fullScans - this.base!.fullScans;
    if (scans <= 0) return undefined;
    if (!awaiting && !this.sawWork && c.fullScans >= this.start!.fullScans + 2)
      return 'a full scan found nothing to do';
    // Several scans inside one reading (little memory): all of them were as quiet as the reading.
    if (workBetween(this.base!, c, this.thresholdPages) === undefined) this.quiet += scans;
    else this.quiet = 0;
    this.base = c;
    return this.quiet >= this.quietScans ? `${this.quiet} full scans with no change` : undefined;
  }
}

/** How long a new process is watched for gaining mergeable memory. */
const YOUNG_MS = 5000;
/**
 * A young process is looked at again after an eighth of its age (but at least
 * watchIntervalMs apart, at most a second): soon after it starts, when most processes
 * mark their memory, often; later, seldom. Each is read ~35 times over its first 5 s,
 * so a host that starts processes all the time costs little more than one that does not.
 */
const RECHECK_AGE_SHARE = 8;
/**
 * While idle, how often the last pid handed out is read to find new processes (one pread
 * of /proc/loadavg; the counters are read only every idleIntervalMs).
 */
const SPAWN_CHECK_MS = 50;
/** At most this many young processes are watched at once (a fork storm costs no more). */
const MAX_YOUNG = 256;

/** The last pid the kernel handed out, from /proc/loadavg ("0.00 0.01 0.05 1/123 4567"). */
function lastPid(text: string | undefined): number | undefined {
  const m = text === undefined ? null : / (\d+)\s*$/.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** New pids checked one by one (a thread or a process); more than this at once, /proc is listed. */
const MAX_PROBED = 64;

/** Whether `pid` is a process (a thread group leader), not a thread of one; false when it is gone. */
function isProcess(pid: number): boolean {
  try {
    const m = /^Tgid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m !== null && Number(m[1]) === pid;
  } catch {
    return false;
  }
}

/** Process ids in /proc (thread group leaders only: threads are not listed). */
function listPids(): number[] {
  try {
    return fs
      .readdirSync('/proc')
      .filter((e) => e.charCodeAt(0) <= 57)
      .map(Number)
      .filter(Number.isInteger);
  } catch {
    return [];
  }
}

/**
 * New processes with mergeable memory: processes started since the last look, checked
 * for a few seconds after they appear (a process marks memory mergeable some time after
 * it starts). Whether any started at all is one pread of /proc/loadavg (its last pid);
 * only then is /proc listed, and each young process's ksm_stat is kept open.
 */
class ProcessWatch {
  private readonly loadavg = new KernelFile('/proc/loadavg');
  private last: number | undefined;
  private readonly young = new Map<number, { since: number; next: number; stat: KernelFile }>();
  private constructor(private readonly minGapMs: number) {
    this.last = lastPid(this.loadavg.text());
  }

  static create(minGapMs: number): ProcessWatch | undefined {
    try {
      if (!/^ksm_mergeable/m.test(fs.readFileSync('/proc/self/ksm_stat', 'utf8'))) return undefined;
    } catch {
      return undefined;
    }
    return new ProcessWatch(minGapMs);
  }

  /**
   * Processes among the pids handed out in (from, to]: the kernel hands pids out in
   * increasing order (threads take them too) and wraps at pid_max. A few are checked one
   * by one (each once); a burst or a wrap lists /proc instead.
   */
  private started(from: number | undefined, to: number | undefined): number[] {
    if (from === undefined || to === undefined) return [];
    if (to > from && to - from <= MAX_PROBED) {
      const out: number[] = [];
      for (let pid = from + 1; pid <= to; pid++) if (isProcess(pid)) out.push(pid);
      return out;
    }
    return listPids().filter((p) => (from < to ? p > from && p <= to : p > from || p <= to));
  }

  /**
   * Whether a full look is due: the kernel handed out a pid since the last look, or a
   * young process is due. One pread of /proc/loadavg when neither.
   */
  pending(now: number): boolean {
    return lastPid(this.loadavg.text()) !== this.last || this.nextDue() <= now + 1;
  }

  /** When a young process is next due for a look (Infinity when none is watched). */
  nextDue(): number {
    let due = Infinity;
    for (const y of this.young.values()) due = Math.min(due, y.next);
    return due;
  }

  /** A young process that now has mergeable memory, or undefined. `all`: look at every one, due or not. */
  poll(now: number, all = false): { pid: number; reason: string } | undefined {
    const last = lastPid(this.loadavg.text());
    if (last !== this.last) {
      for (const pid of this.started(this.last, last)) {
        if (pid === process.pid || this.young.has(pid)) continue;
        if (this.young.size >= MAX_YOUNG) this.drop(this.young.keys().next().value!);
        this.young.set(pid, { since: now, next: now, stat: new KernelFile(`/proc/${pid}/ksm_stat`) });
      }
      this.last = last;
    }
    let found: { pid: number; reason: string } | undefined;
    for (const [pid, y] of this.young) {
      if (now - y.since > YOUNG_MS) {
        this.drop(pid);
        continue;
      }
      // Timers fire a little early or late: what is due within a millisecond is due now.
      if (y.next > now + 1 && !all) continue;
      y.next = now + Math.min(1000, Math.max(this.minGapMs, (now - y.since) / RECHECK_AGE_SHARE));
      let text: string | undefined;
      try {
        text = y.stat.text();
      } catch {
        text = undefined; // another user's process: not ours to watch
      }
      if (text === undefined) {
        this.drop(pid);
        continue;
      }
      if (/^ksm_mergeable:?\s+yes/m.test(text)) {
        this.drop(pid);
        found ??= { pid, reason: `process ${pid} has new mergeable memory` };
      }
    }
    return found;
  }

  private drop(pid: number): void {
    this.young.get(pid)?.stat.close();
    this.young.delete(pid);
  }

  close(): void {
    this.loadavg.close();
    for (const pid of [...this.young.keys()]) this.drop(pid);
  }
}

/**
 * Processes whose new mergeable memory a boost is for. Each is awaited until ksmd has
 * been over its memory twice: its ksm_rmap_items grew (first visit: ksmd records each
 * page's checksum) and a whole full scan began and ended after the last growth (second
 * visit: the pages whose checksum held still are merged or put in the unstable tree).
 * With F the full_scans value read after the last growth was seen, that growth happened
 * in scan F + 1 at the latest, the second visit in scan F + 2: done once full_scans
 * reaches F + 2. Also done when it is gone, or when a whole full scan (and one more
 * boundary, for the readings' order) passed without ksmd finding a page of it (it marked
 * memory it never touched).
 */
class Awaited {
  private readonly fullScans = new KernelFile(`${KSM_SYSFS}/full_scans`);
  private readonly pids = new Map<number, { stat: KernelFile; since: number; items: number; grewAt: number }>();

  add(pid: number, fullScans: number): void {
    if (!this.pids.has(pid))
      this.pids.set(pid, { stat: new KernelFile(`/proc/${pid}/ksm_stat`), since: fullScans, items: 0, grewAt: -1 });
  }

  /** Whether ksmd has yet to go over the memory of any of these processes. */
  pending(): boolean {
    if (this.pids.size === 0) return false;
    const items = new Map<number, number | undefined>();
    for (const [pid, a] of this.pids) {
      let n: number | undefined;
      try {
        const text = a.stat.text();
        n = text === undefined || text.trim() === '' ? undefined : (parseKsmStat(text).rmapItems ?? undefined);
      } catch {
        n = undefined; // unreadable: do not hold the boost for it
      }
      items.set(pid, n);
    }
    // Read after the processes' counters (see the class comment).
    const scans = this.fullScans.number() ?? 0;
    for (const [pid, a] of this.pids) {
      const n = items.get(pid);
      if (n !== undefined && n > a.items) {
        a.items = n;
        a.grewAt = scans;
      }
      // A process whose memory keeps growing is the detector's to judge (found pages are
      // work): a few scans are the most it holds the boost by itself.
      const done =
        n === undefined || (a.items > 0 ? scans >= a.grewAt + 2 : scans >= a.since + 3) || scans >= a.since + 6;
      if (done) {
        a.stat.close();
        this.pids.delete(pid);
      }
    }
    return this.pids.size > 0;
  }

  clear(): void {
    for (const a of this.pids.values()) a.stat.close();
    this.pids.clear();
  }

  close(): void {
    this.clear();
    this.fullScans.close();
  }
}

function pick(s: KsmSettings, names: readonly KsmSettingName[] = WATCHED): KsmSettings {
  const out: Record<string, unknown> = {};
  for (const k of names) if (s[k] !== undefined) out[k] = s[k];
  return out;
}

function differences(expected: KsmSettings, actual: KsmSettings): string[] {
  return (Object.keys(expected) as KsmSettingName[])
    .filter((k) => actual[k] !== expected[k])
    .map((k) => `${snakeCase(k)} ${expected[k]} -> ${actual[k]}`);
}

const matches = (expected: KsmSettings | undefined, actual: KsmSettings) =>
  expected !== undefined && differences(expected, actual).length === 0;

/** Cheaper than the kernel's defaults, or as cheap: pages per millisecond of sleep. */
const isLowCost = (s: KsmSettings) =>
  s.pagesToScan !== undefined &&
  s.sleepMillisecs !== undefined &&
  s.pagesToScan * KERNEL_DEFAULT_SCAN.sleepMillisecs <= KERNEL_DEFAULT_SCAN.pagesToScan * s.sleepMillisecs;

function validateOptions(options: unknown): AutotuneOptions {
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const o = options as AutotuneOptions;
  for (const [key, group] of [
    ['idle', o.idle],
    ['boost', o.boost],
  ] as const) {
    if (group === undefined) continue;
    if (group === null || typeof group !== 'object') throw invalidArgType(`options.${key}`, 'of type object', group);
    if (group.pagesToScan !== undefined)
      validateInteger(group.pagesToScan, `options.${key}.pagesToScan`, 1, 2 ** 32 - 1);
    if (group.sleepMillisecs !== undefined)
      validateInteger(group.sleepMillisecs, `options.${key}.sleepMillisecs`, 0, 2 ** 32 - 1);
  }
  if (o.idleIntervalMs !== undefined) validateInteger(o.idleIntervalMs, 'options.idleIntervalMs', 10, 60_000);
  if (o.boostedIntervalMs !== undefined) validateInteger(o.boostedIntervalMs, 'options.boostedIntervalMs', 10, 60_000);
  if (o.watchIntervalMs !== undefined) validateInteger(o.watchIntervalMs, 'options.watchIntervalMs', 10, 60_000);
  if (o.thresholdPages !== undefined) validateInteger(o.thresholdPages, 'options.thresholdPages', 1);
  if (o.quietScans !== undefined) validateInteger(o.quietScans, 'options.quietScans', 1, 1000);
  if (o.quietMs !== undefined) validateInteger(o.quietMs, 'options.quietMs', 0, 3_600_000);
  if (o.watchProcesses !== undefined && typeof o.watchProcesses !== 'boolean')
    throw invalidArgType('options.watchProcesses', 'of type boolean', o.watchProcesses);
  if (o.stateDir !== undefined && (typeof o.stateDir !== 'string' || o.stateDir === ''))
    throw invalidArgType('options.stateDir', 'a non-empty string', o.stateDir);
  if (o.onChange !== undefined && typeof o.onChange !== 'function')
    throw invalidArgType('options.onChange', 'of type function', o.onChange);
  return o;
}

class Autotune extends EventEmitter implements AutotuneHandle {
  state: AutotuneState = 'stopped';
  readonly originals: KsmSettings;
  readonly idleSettings: KsmSettings;
  readonly boostSettings: KsmSettings;
  readonly history: AutotuneEvent[] = [];
  error: Error | undefined;
  private readonly started = performance.now();
  private readonly detector: WorkDetector;
  private readonly procs: ProcessWatch | undefined;
  private readonly sysfs = new SysfsReader();
  private readonly awaited = new Awaited();
  private handle: BoostHandle | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** When the counters were last read (performance.now()). */
  private lastTick = performance.now();
  private ticking: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private mismatches = 0;
  /** The hold on the idle settings (see the constructor). */
  private idleHold: BoostHandle | undefined;

  constructor(private readonly o: AutotuneOptions) {
    super();
    this.detector = new WorkDetector(o.thresholdPages ?? 256, o.quietScans ?? 2, o.quietMs ?? 100);
    const current = readSettings();
    // A boost held by someone else is not the operator's setting: its originals are.
    const live = boostState({ stateDir: o.stateDir });
    const base = live && live.holders.some((h) => h.alive) ? { ...current, ...live.originals } : current;
    this.originals = pick(base);
    this.boostSettings = {
      run: 1,
      advisorMode: 'none',
      ...pick({ ...AUTOTUNE_BOOST, ...o.boost }, ['pagesToScan', 'sleepMillisecs', 'smartScan']),
    };
    if (current.smartScan === undefined) delete this.boostSettings.smartScan;
    if (current.advisorMode === undefined) delete this.boostSettings.advisorMode;
    if (current.advisorMode === 'scan-time') {
      // The operator chose the kernel's own auto-tuning; two tuners would fight.
      this.idleSettings = pick(current);
      this.boostSettings = {};
      this.change(
        'advisor',
        'advisor_mode is scan-time (set by the operator): the kernel advisor sets pages_to_scan, so autotune leaves the scanner to it',
      );
      return;
    }
    const scan = o.idle ?? (isLowCost(base) ? {} : KERNEL_DEFAULT_SCAN);
    const idle: KsmSettings = {
      run: 1,
      pagesToScan: scan.pagesToScan ?? (o.idle ? KERNEL_DEFAULT_SCAN.pagesToScan : base.pagesToScan),
      sleepMillisecs: scan.sleepMillisecs ?? (o.idle ? KERNEL_DEFAULT_SCAN.sleepMillisecs : base.sleepMillisecs),
    };
    // Held like a boost (run=1 and the idle pace), so that an autotune killed without
    // stopping is undone by the next restore(), `run` included.
    this.idleHold = holdSync(
      {
        pagesToScan: idle.pagesToScan,
        sleepMillisecs: idle.sleepMillisecs,
        ...(current.smartScan !== undefined ? { smartScan: current.smartScan } : {}),
      },
      o.stateDir,
    );
    this.idleSettings = pick(readSettings());
    this.procs = o.watchProcesses === false ? undefined : ProcessWatch.create(o.watchIntervalMs ?? 25);
    this.detector.reset(this.sysfs.read().counters);
    this.change(
      'idle',
      `watching for work at pages_to_scan=${this.idleSettings.pagesToScan} sleep_millisecs=${this.idleSettings.sleepMillisecs}`,
    );
    this.schedule();
  }

  private change(state: AutotuneState, reason: string): void {
    let settings: KsmSettings = {};
    try {
      settings = this.sysfs.read().settings;
    } catch {
      // reported as it is: the event matters more than the snapshot
    }
    const event: AutotuneEvent = {
      state,
      previous: this.state,
      reason,
      timeMs: Math.round(performance.now() - this.started),
      settings,
    };
    this.state = state;
    this.history.push(event);
    if (this.history.length > 1000) this.history.splice(0, this.history.length - 1000);
    try {
      this.o.onChange?.(event);
      this.emit('change', event);
    } catch {
      // A listener's bug must not stop the scanner from being put back.
    }
  }

  private schedule(): void {
    if (this.state !== 'idle' && this.state !== 'boosted') return;
    const now = performance.now();
    const watch = this.o.watchIntervalMs ?? 25;
    let ms = this.o.boostedIntervalMs ?? 25;
    if (this.state === 'idle') {
      const full = this.lastTick + (this.o.idleIntervalMs ?? 200) - now;
      const due = (this.procs?.nextDue() ?? Infinity) - now;
      // New pids are looked for more often than the counters (a pread, no sysfs), so a
      // process that marks memory right after it starts is not left for a whole interval.
      const spawn = this.procs ? Math.max(watch, SPAWN_CHECK_MS) : Infinity;
      ms = Math.max(0, Math.min(full, Math.max(watch, due), spawn));
    }
    this.timer = setTimeout(() => {
      const at = performance.now();
      const light =
        this.state === 'idle' &&
        this.procs !== undefined &&
        at < this.lastTick + (this.o.idleIntervalMs ?? 200) - 1 &&
        !this.procs.pending(at);
      if (light) {
        if (!this.stopping) this.schedule();
        return;
      }
      this.lastTick = at;
      this.ticking = this.tick().finally(() => {
        this.ticking = undefined;
        if (!this.stopping) this.schedule();
      });
    }, ms);
  }

  private async tick(): Promise<void> {
    try {
      const { counters: c, settings } = this.sysfs.read();
      if (!this.settingsAreOurs(settings)) {
        // boost.ts keeps the knobs the operator changed and puts the rest back to the idle settings.
        if (this.state === 'overridden') await this.releaseBoost();
        return;
      }
      const now = performance.now();
      if (this.state === 'idle') {
        let work = this.detector.idle(c);
        if (work === undefined) {
          const found = this.procs?.poll(now);
          if (found) {
            this.awaited.add(found.pid, c.fullScans);
            work = found.reason;
          }
        }
        if (work !== undefined) await this.enterBoost(work);
      } else {
        // The fast scan covers processes that appear meanwhile (a new mm goes behind
        // ksmd's cursor: the boost lasts until ksmd has been over it); their flags are
        // used up here so they do not trigger a second boost right after this one ends.
        const found = this.procs?.poll(now);
        if (found) this.awaited.add(found.pid, c.fullScans);
        const quiet = this.detector.boosted(c, now, this.awaited.pending());
        if (quiet === undefined) return;
        // A process that marked memory since its last look would find the scanner slow
        // again: look at all of them before letting go.
        const late = this.procs?.poll(now, true);
        if (late) this.awaited.add(late.pid, c.fullScans);
        else await this.leaveBoost(quiet);
      }
    } catch (err) {
      this.error = err instanceof Error ? err : new Error(String(err));
      await this.releaseBoost().catch(() => {});
      this.change('failed', `autotune stopped adjusting: ${this.error.message}`);
    }
  }

  /**
   * Never fight a manual tune: settings that are neither ours nor a boost holder's, on
   * two readings in a row (a boost holder elsewhere may be half way through a change),
   * mean someone else decided; autotune lets go and says so.
   */
  private settingsAreOurs(actual: KsmSettings): boolean {
    const expected = this.state === 'boosted' ? this.handle?.settings : this.idleSettings;
    let ok = matches(expected === undefined ? undefined : pick(expected), actual);
    if (!ok) {
      const applied = boostState({ stateDir: this.o.stateDir });
      if (applied && applied.holders.some((h) => h.alive)) ok = matches(pick(applied.applied), actual);
    }
    if (ok) {
      this.mismatches = 0;
      return true;
    }
    if (++this.mismatches < 2) return false;
    const what = differences(pick(expected ?? {}), actual).join(', ');
    const advisor = actual.advisorMode === 'scan-time' ? ' (the scan-time advisor was turned on)' : '';
    this.change(
      'overridden',
      `settings changed by someone else${advisor}: ${what}; autotune stopped adjusting and leaves them as they are`,
    );
    return false;
  }

  private async releaseBoost(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.release();
  }

  private async enterBoost(reason: string): Promise<void> {
    const b = this.boostSettings;
    this.handle = await boost({
      pagesToScan: b.pagesToScan,
      sleepMillisecs: b.sleepMillisecs,
      smartScan: b.smartScan,
      stateDir: this.o.stateDir,
    });
    if (this.stopping) return; // stop() releases it
    this.detector.reset(this.sysfs.read().counters, performance.now());
    this.change('boosted', reason);
  }

  private async leaveBoost(reason: string): Promise<void> {
    await this.releaseBoost();
    this.awaited.clear();
    this.detector.reset(this.sysfs.read().counters);
    this.change('idle', reason);
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearTimeout(this.timer);
      await this.ticking;
      try {
        await this.releaseBoost();
        // The last holder puts back what it found, except knobs someone changed since
        // (theirs to keep); with other holders alive, their settings stay.
        const idle = this.idleHold;
        this.idleHold = undefined;
        await idle?.release();
        this.change('stopped', 'stopped; original settings restored');
      } finally {
        this.sysfs.close();
        this.procs?.close();
        this.awaited.close();
      }
    })();
    return this.stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/**
 * Starts autotuning the machine's KSM scanner (root; ERR_KSM_PERMISSION otherwise):
 * runs ksmd at the idle settings, boosts while there is work, and backs off after two
 * quiet full scans. If the operator set advisor_mode=scan-time, the handle starts in
 * state 'advisor' and changes nothing. If someone else changes the settings, it goes to
 * 'overridden' and stops adjusting. `stop()` restores the settings found at start.
 * The timer keeps the process alive until stop().
 */
export function startAutotune(options: AutotuneOptions = {}): AutotuneHandle {
  const o = validateOptions(options);
  native();
  return new Autotune(o);
}
