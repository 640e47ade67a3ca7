/**
 * Merge fast, idle cheap. The kernel's defaults merge ~8 MiB/s and cost ~1 % of a core;
 * a boosted scanner merges ~100x faster but keeps a core busy for as long as it stands,
 * even with nothing left to merge. Autotune holds the scanner at the low-cost setting
 * while nothing changes and boosts the moment there is work, then backs off once two
 * full scans bring no change, or sooner once what the boost found is merged and nothing
 * changes any more (see WorkDetector).
 *
 * Work is seen in cheap places only: the global counters of /sys/kernel/mm/ksm (ksmd
 * finding new pages, pages settling, merges) and, for new processes with mergeable
 * memory, /proc/<pid>/ksm_stat of pids not seen before. ksmd puts a new mm behind its
 * cursor, so at 100 pages per 20 ms it may reach new memory only after a whole idle scan
 * of everything else; the process check boosts before that.
 *
 * The boosted state is a boost() handle (boost.ts), so autotune and other boost holders
 * share one record of the settings, and a crash while boosted is undone by the next
 * boost() or `node-ksm restore`.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { native } from './binding';
import { boost, boostState, type BoostHandle } from './boost';
import { configure, readSettings, type KsmSettings, type KsmSettingName } from './control';
import { invalidArgType, validateInteger } from './errors';
import { parseKsmSysfs, snakeCase } from './procfs';
import { readKsmSysfsFiles } from './stats';

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
  /** How often the counters are read while idle (default 200 ms) ... */
  idleIntervalMs?: number;
  /** ... and while boosted (default 50 ms), when quiet scans are worth noticing at once. */
  boostedIntervalMs?: number;
  /** Pages of change (new, settled or merged) that count as work (default 256). */
  thresholdPages?: number;
  /** Full scans without work before backing off (default 2). */
  quietScans?: number;
  /** Or back off sooner: this long without work once the boost has merged what it found (default 150 ms; see WorkDetector). */
  quietMs?: number;
  /** Boost when a new process with mergeable memory appears (default true; needs ksm_stat's ksm_mergeable, Linux 6.14+). */
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
  };
}

const readCounters = () => countersOf(parseKsmSysfs(readKsmSysfsFiles()) as unknown as Record<string, unknown>);

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

/**
 * The decision, as a pure state machine over counter readings (tested on made-up
 * sequences). Idle: work since the last full-scan boundary → boost.
 *
 * Boosted, three ways back: a full scan that found nothing at all (a boost on a
 * process that marked only a page or two); `quietScans` full scans in a row without work (the rule that
 * is always right, but a boosted full scan over a GiB of merged pages takes seconds of a
 * whole core); or, sooner, once this boost has seen work, `quietMs` without any, while
 * no page it found is still waiting for ksmd's second look (pages_volatile back within
 * `thresholdPages` of where it stood when the boost began: ksmd merges a page only when
 * its checksum held still since the previous visit, so freshly found pages sit in
 * pages_volatile until the next pass). Without that condition, the time ksmd spends
 * over old memory between its first and second pass over new memory would look quiet.
 */
export class WorkDetector {
  private base: AutotuneCounters | undefined;
  private start: AutotuneCounters | undefined;
  private prev: AutotuneCounters | undefined;
  private quiet = 0;
  private sawWork = false;
  private lastWorkAt = 0;
  constructor(
    readonly thresholdPages: number,
    readonly quietScans: number,
    readonly quietMs = 150,
  ) {}

  /** Forget the history (on every change of state). */
  reset(c: AutotuneCounters, nowMs = 0): void {
    this.base = this.start = this.prev = c;
    this.quiet = 0;
    this.sawWork = false;
    this.lastWorkAt = nowMs;
  }

  /** Idle: a reason to boost, or undefined. */
  idle(c: AutotuneCounters): string | undefined {
    if (this.base === undefined) this.reset(c);
    const work = workBetween(this.base!, c, this.thresholdPages);
    // Slow drift (a little churn every scan) must not add up to a boost over hours.
    if (c.fullScans !== this.base!.fullScans) this.base = c;
    return work;
  }

  /** Boosted: a reason to back off, or undefined. */
  boosted(c: AutotuneCounters, nowMs = 0): string | undefined {
    if (this.base === undefined) this.reset(c, nowMs);
    // Per reading, a smaller step counts: the merge tail is a trickle.
    if (workBetween(this.prev!, c, Math.max(1, Math.ceil(this.thresholdPages / 8))) !== undefined) {
      this.sawWork = true;
      this.lastWorkAt = nowMs;
    }
    this.prev = c;
    const waiting = c.pagesVolatile - this.start!.pagesVolatile;
    if (this.sawWork && nowMs - this.lastWorkAt >= this.quietMs && waiting < this.thresholdPages) {
      return `no change for ${Math.round(nowMs - this.lastWorkAt)} ms and no new page waiting for a second look`;
    }
    const scans = c.fullScans - this.base!.fullScans;
    if (scans <= 0) return undefined;
    // A new mm goes in behind ksmd's cursor, so one full scan has passed over whatever
    // the boost was for; if that found nothing (a process that marked a page or two),
    // the boost was not worth it.
    if (!this.sawWork && c.fullScans > this.start!.fullScans) return 'a full scan found nothing to do';
    // Several scans inside one reading (little memory): all of them were as quiet as the reading.
    if (workBetween(this.base!, c, this.thresholdPages) === undefined) this.quiet += scans;
    else this.quiet = 0;
    this.base = c;
    return this.quiet >= this.quietScans ? `${this.quiet} full scans with no change` : undefined;
  }
}

/**
 * New processes with mergeable memory: pids not seen before, checked for a few seconds
 * after they appear (a process marks memory mergeable some time after it starts).
 */
class ProcessWatch {
  private known = new Set<number>();
  private young = new Map<number, number>();
  private constructor() {}

  static create(): ProcessWatch | undefined {
    try {
      if (!/^ksm_mergeable/m.test(fs.readFileSync('/proc/self/ksm_stat', 'utf8'))) return undefined;
    } catch {
      return undefined;
    }
    const w = new ProcessWatch();
    for (const pid of w.pids()) w.known.add(pid);
    return w;
  }

  private pids(): number[] {
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

  /** A new process that has mergeable memory, or undefined. */
  poll(now: number): string | undefined {
    const pids = this.pids();
    const alive = new Set(pids);
    for (const pid of pids) {
      if (this.known.has(pid)) continue;
      this.known.add(pid);
      this.young.set(pid, now);
    }
    for (const pid of this.known) if (!alive.has(pid)) this.known.delete(pid);
    let found: string | undefined;
    for (const [pid, since] of this.young) {
      if (now - since > 3000 || !alive.has(pid)) {
        this.young.delete(pid);
        continue;
      }
      let text: string;
      try {
        text = fs.readFileSync(`/proc/${pid}/ksm_stat`, 'utf8');
      } catch {
        this.young.delete(pid);
        continue;
      }
      if (/^ksm_mergeable:?\s+yes/m.test(text)) {
        this.young.delete(pid);
        found ??= `process ${pid} has new mergeable memory`;
      }
    }
    return found;
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
  private handle: BoostHandle | undefined;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private mismatches = 0;

  constructor(private readonly o: AutotuneOptions) {
    super();
    this.detector = new WorkDetector(o.thresholdPages ?? 256, o.quietScans ?? 2, o.quietMs ?? 150);
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
    const write = pick(idle);
    for (const k of Object.keys(write) as KsmSettingName[]) if (current[k] === write[k]) delete write[k];
    if (Object.keys(write).length > 0) configure(write);
    this.idleSettings = pick(readSettings());
    this.procs = o.watchProcesses === false ? undefined : ProcessWatch.create();
    this.detector.reset(readCounters());
    this.change(
      'idle',
      `watching for work at pages_to_scan=${this.idleSettings.pagesToScan} sleep_millisecs=${this.idleSettings.sleepMillisecs}`,
    );
    this.schedule();
  }

  private change(state: AutotuneState, reason: string): void {
    let settings: KsmSettings = {};
    try {
      settings = pick(readSettings());
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
    const ms = this.state === 'boosted' ? (this.o.boostedIntervalMs ?? 50) : (this.o.idleIntervalMs ?? 200);
    this.timer = setTimeout(() => {
      this.ticking = this.tick().finally(() => {
        this.ticking = undefined;
        if (!this.stopping) this.schedule();
      });
    }, ms);
  }

  private async tick(): Promise<void> {
    try {
      const sysfs = parseKsmSysfs(readKsmSysfsFiles());
      const settings = pick(sysfs as KsmSettings);
      if (!this.settingsAreOurs(settings)) {
        // boost.ts keeps the knobs the operator changed and puts the rest back to the idle settings.
        if (this.state === 'overridden') await this.releaseBoost();
        return;
      }
      const c = countersOf(sysfs as unknown as Record<string, unknown>);
      if (this.state === 'idle') {
        const work = this.detector.idle(c) ?? this.procs?.poll(performance.now());
        if (work !== undefined) await this.enterBoost(work);
      } else {
        // The fast scan covers processes that appear meanwhile; their flags are used up
        // here so they do not trigger a second boost right after this one ends.
        this.procs?.poll(performance.now());
        const quiet = this.detector.boosted(c, performance.now());
        if (quiet !== undefined) await this.leaveBoost(quiet);
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
    this.detector.reset(readCounters(), performance.now());
    this.change('boosted', reason);
  }

  private async leaveBoost(reason: string): Promise<void> {
    await this.releaseBoost();
    this.detector.reset(readCounters());
    this.change('idle', reason);
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearTimeout(this.timer);
      await this.ticking;
      await this.releaseBoost();
      if (this.state !== 'advisor') {
        // Put back what autotune set, except knobs someone changed since (theirs to keep).
        const current = readSettings();
        const back: KsmSettings = {};
        for (const k of Object.keys(this.originals) as KsmSettingName[]) {
          if (current[k] === this.idleSettings[k] && current[k] !== this.originals[k])
            (back as Record<string, unknown>)[k] = this.originals[k];
        }
        if (Object.keys(back).length > 0) configure(back);
      }
      this.change('stopped', 'stopped; original settings restored');
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
