/**
 * A fast KSM scanner for as long as anyone on the machine needs it, and the original
 * settings back when the last holder lets go. A boosted ksmd keeps a whole core busy even
 * after everything is merged, so leaving the machine boosted is a bug: the bookkeeping
 * lives in one JSON file under /run (tmpfs: gone after a reboot, like the settings) and
 * is only read or written under an flock, so holders in different processes cooperate.
 *
 * Holders are pid + start time, so a pid the kernel has handed to another process is not
 * taken for a live holder. The originals come back on the last release(); on exit,
 * SIGINT, SIGTERM or SIGHUP of a holding process (the handlers are installed by the first
 * boost() and stay until a signal arrives: removing them between boosts would drop a signal
 * that libuv had caught but not yet delivered, and the process would live on);
 * and after a SIGKILL, which no handler sees, on the next boost() or restore(), which
 * find the dead holder in the file.
 */
import fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from './binding';
import { configureKnown, type KsmSettings, type KsmSettingName } from './control';
import { KsmError, fromFsError, invalidArgType, validateBoolean, validateInteger } from './errors';
import { parseKsmSysfs, parseProcStat } from './procfs';
import { KSM_SYSFS, readIfExists } from './stats';

/** Options of {@link boost}: the fast settings to hold, and where the shared state lives. */
export interface BoostOptions {
  /** Pages ksmd scans per batch while boosted (default 10000). */
  pagesToScan?: number;
  /** Sleep between batches while boosted (default 0). */
  sleepMillisecs?: number;
  /** smart_scan while boosted (default 0; see BOOST_POLICY). */
  smartScan?: 0 | 1;
  /**
   * Where the machine-wide state (boost.json and its lock) lives: `NODE_KSM_STATE_DIR`
   * when set, else /run/node-ksm. Every process that boosts on the machine must use the
   * same directory, on a filesystem that is emptied at boot (tmpfs) like the settings.
   */
  stateDir?: string;
}

/**
 * A held boost ({@link boost}). Release it with `release()` or `await using`; the original
 * settings come back when the last holder on the machine lets go.
 */
export interface BoostHandle {
  /** Lets go of this boost; the originals come back if it was the last holder. Idempotent. */
  release(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
  /** The settings in force for all holders when this handle was taken. */
  readonly settings: KsmSettings;
}

/** One process holding a boost, as recorded in the machine-wide state file. */
export interface BoostHolder {
  pid: number;
  /** Start time of the process in clock ticks after boot (/proc/<pid>/stat field 22). */
  starttime: number;
  id: string;
  /** ISO time at which it took the boost. */
  since: string;
  /** What this holder asked for. */
  requested: KsmSettings;
  /** `'autotune'` for autotune's hold on its idle settings; absent for a boost. */
  purpose?: 'autotune';
}

/** The machine-wide boost record ({@link boostState}): the originals and who holds a boost. */
export interface BoostState {
  /** The state file. */
  file: string;
  /** The settings before the first holder boosted; they come back after the last. */
  originals: KsmSettings;
  /** The settings the holders put in force. */
  applied: KsmSettings;
  holders: Array<BoostHolder & { alive: boolean }>;
}

interface StateFile {
  version: 1;
  originals: KsmSettings;
  applied: KsmSettings;
  holders: BoostHolder[];
}

export const DEFAULT_STATE_DIR = '/run/node-ksm';

/** The state directory when no option names one: `NODE_KSM_STATE_DIR`, else /run/node-ksm. */
export function defaultStateDir(): string {
  const env = process.env.NODE_KSM_STATE_DIR;
  return env !== undefined && env !== '' ? env : DEFAULT_STATE_DIR;
}

/**
 * The boosted policy. run=1 with the advisor off (the scan-time advisor owns
 * pages_to_scan), a large batch and no sleep: ~100x the merge rate of the kernel's
 * defaults (100 pages every 20 ms). smart_scan=0 because smart scan skips pages that did
 * not merge in earlier scans, for more scans each time they fail: pages written while
 * the scanner runs (a buffer being filled) fail their first scans because their checksum
 * keeps changing, and were then seen left unmerged for hundreds of full scans (16 % of
 * a 64 MiB buffer's duplicate pairs after 300+ scans, against all of them in 0.5 s with
 * smart_scan=0). Smart scan saves CPU on a machine that scans forever; a boost is short
 * and exists to merge everything now.
 */
export const BOOST_POLICY = {
  run: 1,
  advisorMode: 'none',
  pagesToScan: 10_000,
  sleepMillisecs: 0,
  smartScan: 0,
} as const;

const LOCK_TIMEOUT_MS = 30_000;

function validateOptions(options: unknown): Required<Pick<BoostOptions, 'stateDir'>> & BoostOptions {
  if (options === undefined) return { stateDir: defaultStateDir() };
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const o = options as BoostOptions;
  if (o.pagesToScan !== undefined) validateInteger(o.pagesToScan, 'options.pagesToScan', 1, 2 ** 32 - 1);
  if (o.sleepMillisecs !== undefined) validateInteger(o.sleepMillisecs, 'options.sleepMillisecs', 0, 2 ** 32 - 1);
  if (o.smartScan !== undefined) validateInteger(o.smartScan, 'options.smartScan', 0, 1);
  if (o.stateDir !== undefined && (typeof o.stateDir !== 'string' || o.stateDir === '')) {
    throw invalidArgType('options.stateDir', 'a non-empty string', o.stateDir);
  }
  return { ...o, stateDir: o.stateDir ?? defaultStateDir() };
}

function stateDirOf(options: unknown): string {
  if (options !== undefined && (options === null || typeof options !== 'object'))
    throw invalidArgType('options', 'of type object', options);
  return validateOptions(options === undefined ? undefined : { stateDir: (options as BoostOptions).stateDir }).stateDir;
}

const statePath = (dir: string) => `${dir}/boost.json`;
const lockPath = (dir: string) => `${dir}/boost.lock`;

/** The start time of a live process, or undefined when it is gone (or a zombie: it has exited). */
function startTimeOf(pid: number): number | undefined {
  try {
    const stat = parseProcStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    return stat.state === 'Z' || stat.state === 'X' ? undefined : stat.starttime;
  } catch {
    return undefined;
  }
}

const isAlive = (h: BoostHolder) => startTimeOf(h.pid) === h.starttime;

let selfStart: number | undefined;
function self(): { pid: number; starttime: number } {
  selfStart ??= parseProcStat(fs.readFileSync('/proc/self/stat', 'utf8')).starttime;
  return { pid: process.pid, starttime: selfStart };
}

function readState(dir: string): StateFile | null {
  let text: string;
  try {
    text = fs.readFileSync(statePath(dir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw fromFsError(err);
  }
  try {
    const s = JSON.parse(text) as StateFile;
    if (s.version === 1 && Array.isArray(s.holders) && typeof s.originals === 'object') return s;
  } catch {
    // fall through
  }
  throw new KsmError(
    `${statePath(dir)} is not a node-ksm boost state file; remove it if the settings are as you want them`,
    'ERR_KSM_PARSE',
  );
}

/** Written to a temporary file and renamed, so a reader (or a crash) never sees half a file. */
function writeState(dir: string, state: StateFile): void {
  const tmp = `${statePath(dir)}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o644 });
    fs.renameSync(tmp, statePath(dir));
  } catch (err) {
    throw fromFsError(err);
  }
}

function removeState(dir: string): void {
  try {
    fs.unlinkSync(statePath(dir));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromFsError(err);
  }
}

/**
 * mkdir -p, but the directory itself first: Node's recursive mkdir reports ENOENT instead
 * of EROFS on a read-only filesystem, and the error must name the real cause.
 */
function makeDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { mode: 0o755 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    if (code !== 'ENOENT') throw err;
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  }
}

function openLock(dir: string): number {
  try {
    makeDir(dir);
    return fs.openSync(lockPath(dir), 'a', 0o644);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const fix =
      'set NODE_KSM_STATE_DIR (or the stateDir option) to a writable directory on tmpfs that every process ' +
      'boosting on this machine uses';
    if (e.code === 'EROFS') {
      throw new KsmError(
        `Cannot create ${lockPath(dir)}: ${e.path ?? dir} is on a read-only filesystem (EROFS), not a permission ` +
          `problem: ${fix}, or mount a tmpfs on ${dir}`,
        'EROFS',
        { errno: e.errno, syscall: e.syscall, path: e.path, cause: err },
      );
    }
    if (e.code === 'EACCES' || e.code === 'EPERM') {
      throw new KsmError(
        process.getuid?.() === 0
          ? `Cannot create ${lockPath(dir)} (${e.code}) although running as root (a security module or the ` +
              `directory's owner refuses it): ${fix}`
          : `Cannot create ${lockPath(dir)} (${e.code}): boosting KSM needs root (it changes /sys/kernel/mm/ksm for ` +
              'the whole machine)',
        'ERR_KSM_PERMISSION',
        { cause: err },
      );
    }
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') {
      throw new KsmError(
        `Cannot create ${lockPath(dir)} (${e.code}): a parent of ${dir} is missing or not a directory: ${fix}`,
        e.code,
        { errno: e.errno, syscall: e.syscall, path: e.path, cause: err },
      );
    }
    throw fromFsError(err);
  }
}

function lockTimeout(dir: string): KsmError {
  return new KsmError(`Timed out waiting for the lock on ${lockPath(dir)}`, 'ERR_KSM_TIMEOUT');
}

async function withLock<T>(dir: string, fn: () => T): Promise<T> {
  const b = native();
  const fd = openLock(dir);
  try {
    const deadline = Date.now() + LOCK_TIMEOUT_MS;
    while (!b.flock(fd, 2)) {
      if (Date.now() > deadline) throw lockTimeout(dir);
      await sleep(5);
    }
    return fn();
  } finally {
    fs.closeSync(fd); // closing the last descriptor drops the flock
  }
}

/** For exit and signal handlers, where nothing asynchronous runs any more. */
function withLockSync<T>(dir: string, fn: () => T, timeoutMs = 2000): T {
  const b = native();
  const fd = openLock(dir);
  try {
    const deadline = Date.now() + timeoutMs;
    const pause = new Int32Array(new SharedArrayBuffer(4));
    while (!b.flock(fd, 2)) {
      if (Date.now() > deadline) throw lockTimeout(dir);
      Atomics.wait(pause, 0, 0, 5);
    }
    return fn();
  } finally {
    fs.closeSync(fd);
  }
}

const BOOSTED_FILES = ['run', 'advisor_mode', 'pages_to_scan', 'sleep_millisecs', 'smart_scan'] as const;

/**
 * The five knobs a boost changes, as readSettings() would give them, read alone: every
 * file of /sys/kernel/mm/ksm costs ~1 ms, these a tenth of that, and a boost reads them
 * on the way in and on the way out (under the lock, where other holders wait).
 */
function readBoostedKnobs(): KsmSettings {
  const files: Record<string, string> = {};
  for (const name of BOOSTED_FILES) {
    const text = readIfExists(`${KSM_SYSFS}/${name}`);
    if (text !== undefined) files[name] = text;
  }
  return parseKsmSysfs(files) as KsmSettings;
}

/** The knobs boost changes that this kernel has. */
function boostedKnobs(current: KsmSettings): KsmSettingName[] {
  return (['run', 'advisorMode', 'pagesToScan', 'sleepMillisecs', 'smartScan'] as const).filter(
    (k) => current[k] !== undefined,
  );
}

/** What all holders together need: the most aggressive of their requests. */
function combine(holders: BoostHolder[], current: KsmSettings): KsmSettings {
  const target: KsmSettings = {};
  for (const k of boostedKnobs(current)) {
    const values = holders.map((h) => h.requested[k]).filter((v) => v !== undefined);
    if (k === 'run') target.run = 1;
    else if (k === 'advisorMode') target.advisorMode = 'none';
    else if (k === 'pagesToScan') target.pagesToScan = Math.max(...(values as number[]));
    else target[k] = Math.min(...(values as number[])) as 0 | 1;
  }
  return target;
}

/**
 * Puts back the originals, except knobs that someone changed after the boost applied
 * them (an administrator's later decision wins over our memory of the earlier one).
 */
function restoreOriginals(state: StateFile): KsmSettings {
  const current = readBoostedKnobs();
  const back: KsmSettings = {};
  for (const k of Object.keys(state.originals) as KsmSettingName[]) {
    if (current[k] === undefined || state.originals[k] === undefined) continue;
    if (state.applied[k] !== undefined && current[k] !== state.applied[k]) continue;
    (back as Record<string, unknown>)[k] = state.originals[k];
  }
  // Under the scan-time advisor pages_to_scan is the advisor's; entering scan-time resets it.
  if ((back.advisorMode ?? current.advisorMode) === 'scan-time') delete back.pagesToScan;
  configureKnown(back, current);
  return back;
}

function acquireLocked(dir: string, holder: BoostHolder): KsmSettings {
  let state = readState(dir);
  const current = readBoostedKnobs();
  if (state === null) {
    const originals: KsmSettings = {};
    for (const k of boostedKnobs(current)) (originals as Record<string, unknown>)[k] = current[k];
    state = { version: 1, originals, applied: {}, holders: [] };
  }
  // Dead holders (SIGKILL, OOM kill) are dropped; the originals they saw stay the originals.
  state.holders = state.holders.filter(isAlive);
  state.holders.push(holder);
  const target = combine(state.holders, current);
  // The file is written before the knobs: a crash in between leaves a dead holder,
  // which the next boost()/restore() cleans up, never boosted settings with no record.
  const recorded = { ...state, applied: { ...state.applied, ...target } };
  writeState(dir, recorded);
  try {
    configureKnown(target, current);
  } catch (err) {
    state.holders.pop();
    try {
      if (state.holders.length === 0) {
        restoreOriginals(state);
        removeState(dir);
      } else writeState(dir, state);
    } catch {
      try {
        // A knob that could not be written at all (not root, read-only sysfs) changed
        // nothing, so there is nothing to restore and no record to keep. Otherwise the
        // record stays, without this holder, so that restore() can finish the job.
        if (state.holders.length === 0 && err instanceof KsmError && err.code === 'ERR_KSM_PERMISSION')
          removeState(dir);
        else writeState(dir, state);
      } catch {
        // Nothing more can be done here; restore() reads whatever the file says.
      }
    }
    throw err;
  }
  state.applied = target;
  // Usually what was recorded before the writes already (the first holder): one write fewer.
  if (JSON.stringify(recorded.applied) !== JSON.stringify(target)) writeState(dir, state);
  return target;
}

function releaseLocked(dir: string, id: string): void {
  const state = readState(dir);
  if (state === null) return;
  state.holders = state.holders.filter((h) => h.id !== id && isAlive(h));
  if (state.holders.length === 0) {
    restoreOriginals(state);
    removeState(dir);
    return;
  }
  // Others still hold: relax to what they asked for, which may be less than we did.
  const current = readBoostedKnobs();
  const target = combine(state.holders, current);
  configureKnown(target, current);
  state.applied = target;
  writeState(dir, state);
}

// Handles held by this process, by id → state dir.
const held = new Map<string, string>();
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function releaseAllSync(): void {
  for (const [id, dir] of [...held]) {
    held.delete(id);
    try {
      withLockSync(dir, () => releaseLocked(dir, id));
    } catch {
      // Nothing can be reported on the way out; the next boost()/restore() finds the dead holder.
    }
  }
}

function onExit(): void {
  releaseAllSync();
}

function onSignal(signal: NodeJS.Signals): void {
  releaseAllSync();
  uninstall();
  // Re-raise so the process dies as it would have without us, unless the application
  // has handlers of its own for this signal: then what happens next is its decision.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

let installed = false;
function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', onExit);
  for (const s of SIGNALS) process.on(s, onSignal);
}

/**
 * Only when a signal has arrived. Between boosts the handlers stay: a signal that libuv has
 * caught but not yet delivered to JavaScript is dropped if its last listener goes away
 * (measured: 20 of 80 SIGTERMs lost by processes boosting and releasing in a loop), and
 * while no boost is held the handler does what the default action would.
 */
function uninstall(): void {
  if (!installed) return;
  installed = false;
  process.off('exit', onExit);
  for (const s of SIGNALS) process.off(s, onSignal);
}

/**
 * Boosts the scanner (BOOST_POLICY, or the options' values) until the handle is released.
 * Several holders, in this process or others, share one boost; the settings are the
 * most aggressive any of them asked for, and the originals come back after the last.
 * Needs root (ERR_KSM_PERMISSION otherwise).
 */
export async function boost(options?: BoostOptions): Promise<BoostHandle> {
  const o = validateOptions(options);
  native();
  const dir = o.stateDir;
  const requested: KsmSettings = {
    pagesToScan: o.pagesToScan ?? BOOST_POLICY.pagesToScan,
    sleepMillisecs: o.sleepMillisecs ?? BOOST_POLICY.sleepMillisecs,
    smartScan: o.smartScan ?? BOOST_POLICY.smartScan,
  };
  const holder: BoostHolder = { ...self(), id: randomUUID(), since: new Date().toISOString(), requested };
  // Registered before taking the lock, so a signal during the boost still restores.
  held.set(holder.id, dir);
  install();
  let settings: KsmSettings;
  try {
    settings = await withLock(dir, () => acquireLocked(dir, holder));
  } catch (err) {
    held.delete(holder.id);
    throw err;
  }
  return handleOf(dir, holder, settings);
}

/**
 * A hold taken synchronously, for autotune's idle settings (`run=1` and a slow scan): kept
 * in the same machine-wide record as boosts, so that when autotune dies without stopping
 * (SIGKILL, OOM), the next `restore()` or `boost()` release, or `node-ksm restore`, puts
 * back what it found, `run` included. While a boost is also held, the most aggressive
 * request wins, as between boosts.
 */
export function holdSync(requested: KsmSettings, stateDir: string | undefined): BoostHandle {
  const dir = stateDirOf(stateDir === undefined ? undefined : { stateDir });
  native();
  const holder: BoostHolder = {
    ...self(),
    id: randomUUID(),
    since: new Date().toISOString(),
    requested,
    purpose: 'autotune',
  };
  held.set(holder.id, dir);
  install();
  let settings: KsmSettings;
  try {
    settings = withLockSync(dir, () => acquireLocked(dir, holder));
  } catch (err) {
    held.delete(holder.id);
    throw err;
  }
  return handleOf(dir, holder, settings);
}

/** The handle of a hold that `boost` or `holdSync` took. */
function handleOf(dir: string, holder: BoostHolder, settings: KsmSettings): BoostHandle {
  let releasing: Promise<void> | undefined;
  const release = (): Promise<void> => {
    releasing ??= (async () => {
      if (!held.has(holder.id)) return; // already released by an exit/signal handler
      try {
        await withLock(dir, () => releaseLocked(dir, holder.id));
      } catch (err) {
        releasing = undefined; // may be retried
        throw err;
      }
      held.delete(holder.id);
    })();
    return releasing;
  };
  return Object.freeze({ settings: Object.freeze(settings), release, [Symbol.asyncDispose]: release });
}

/**
 * Puts the original settings back after a holder died without releasing (SIGKILL, OOM,
 * power to a container cut). Does nothing while a live holder remains, unless `force`.
 * `settings` are the values written back.
 */
export async function restore(options?: {
  stateDir?: string;
  force?: boolean;
}): Promise<{ restored: boolean; settings?: KsmSettings }> {
  const dir = stateDirOf(options);
  const force = options?.force === undefined ? false : validateBoolean(options.force, 'options.force');
  native();
  return withLock(dir, () => {
    const state = readState(dir);
    if (state === null) return { restored: false };
    const live = state.holders.filter(isAlive);
    if (live.length > 0 && !force) {
      if (live.length < state.holders.length) writeState(dir, { ...state, holders: live });
      return { restored: false };
    }
    const settings = restoreOriginals(state);
    removeState(dir);
    for (const h of live) if (h.pid === process.pid) held.delete(h.id);
    return { restored: true, settings };
  });
}

/** The state file as it is (no lock taken; it is replaced atomically), or null when nobody boosts. */
export function boostState(options?: { stateDir?: string }): BoostState | null {
  const dir = stateDirOf(options);
  const state = readState(dir);
  if (state === null) return null;
  return {
    file: statePath(dir),
    originals: state.originals,
    applied: state.applied,
    holders: state.holders.map((h) => ({ ...h, alive: isAlive(h) })),
  };
}
