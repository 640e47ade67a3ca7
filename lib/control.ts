/**
 * The writable knobs of /sys/kernel/mm/ksm, typed and validated, written in an order the
 * kernel accepts and rolled back when a multi-knob write fails half way. These settings
 * are global to the machine: whoever changes them owes the machine a restore (see
 * boost.ts, which does that bookkeeping across processes).
 */
import fs from 'node:fs';
import { native } from './binding';
import { KsmError, fromFsError, invalidArgType, validateInteger } from './errors';
import { parseKsmSysfs, snakeCase } from './procfs';
import { KSM_SYSFS, readKsmSysfsFiles } from './stats';

/**
 * The writable knobs in camelCase. Each is optional because kernels differ: a knob this
 * kernel lacks (smart_scan before 6.7, the advisor before 6.8, merge_across_nodes without
 * NUMA) is undefined in `readSettings()` and `ERR_KSM_UNSUPPORTED` in `configure()`.
 */
export interface KsmSettings {
  /** 0 stops ksmd, 1 runs it, 2 stops it and unmerges every merged page on the machine. */
  run?: 0 | 1 | 2;
  pagesToScan?: number;
  sleepMillisecs?: number;
  mergeAcrossNodes?: 0 | 1;
  useZeroPages?: 0 | 1;
  maxPageSharing?: number;
  stableNodeChainsPruneMillisecs?: number;
  smartScan?: 0 | 1;
  advisorMode?: 'none' | 'scan-time';
  advisorMaxCpu?: number;
  advisorTargetScanTime?: number;
  advisorMinPagesToScan?: number;
  advisorMaxPagesToScan?: number;
}

/** The name of one writable knob, as {@link KsmSettings} spells it. */
export type KsmSettingName = keyof KsmSettings;

const UINT = 2 ** 32 - 1;
const ULONG = Number.MAX_SAFE_INTEGER;

/** Each knob's accepted range, as the kernel's store function checks it. */
const RANGES: Record<Exclude<KsmSettingName, 'advisorMode'>, [number, number]> = {
  run: [0, 2],
  pagesToScan: [0, UINT],
  sleepMillisecs: [0, UINT],
  mergeAcrossNodes: [0, 1],
  useZeroPages: [0, 1],
  maxPageSharing: [2, 2 ** 31 - 1],
  stableNodeChainsPruneMillisecs: [0, UINT],
  smartScan: [0, 1],
  // The kernel takes any unsigned long but reads it as a percentage of one CPU.
  advisorMaxCpu: [0, 100],
  advisorTargetScanTime: [1, ULONG],
  advisorMinPagesToScan: [0, ULONG],
  advisorMaxPagesToScan: [0, ULONG],
};

export const SETTING_NAMES: readonly KsmSettingName[] = [...Object.keys(RANGES), 'advisorMode'] as KsmSettingName[];

/** Knobs the kernel refuses with EBUSY while any page is shared (remove_all_stable_nodes). */
const BUSY_KNOBS = new Set<KsmSettingName>(['mergeAcrossNodes', 'maxPageSharing']);

const sysfsDir = KSM_SYSFS;

/** The current value of every writable knob this kernel has. */
export function readSettings(): KsmSettings {
  native();
  const all = parseKsmSysfs(readKsmSysfsFiles(sysfsDir)) as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const name of SETTING_NAMES) if (all[name] !== undefined) out[name] = all[name];
  return out;
}

function invalidValue(name: string, reason: string, value: unknown): TypeError {
  const err = new TypeError(`The property '${name}' ${reason}. Received ${JSON.stringify(value) ?? String(value)}`);
  (err as NodeJS.ErrnoException).code = 'ERR_INVALID_ARG_VALUE';
  return err;
}

/** Validates a partial settings object; returns its defined entries. */
function validate(partial: unknown): Array<[KsmSettingName, number | string]> {
  if (partial === null || typeof partial !== 'object' || Array.isArray(partial)) {
    throw invalidArgType('settings', 'of type object', partial);
  }
  const out: Array<[KsmSettingName, number | string]> = [];
  for (const [key, value] of Object.entries(partial)) {
    if (value === undefined) continue;
    if (!(SETTING_NAMES as readonly string[]).includes(key)) {
      throw invalidValue(`settings.${key}`, `is not a KSM setting (known: ${SETTING_NAMES.join(', ')})`, value);
    }
    const name = key as KsmSettingName;
    if (name === 'advisorMode') {
      if (typeof value !== 'string') throw invalidArgType('settings.advisorMode', 'of type string', value);
      if (value !== 'none' && value !== 'scan-time')
        throw invalidValue('settings.advisorMode', "must be 'none' or 'scan-time'", value);
      out.push([name, value]);
      continue;
    }
    const [min, max] = RANGES[name];
    out.push([name, validateInteger(value, `settings.${name}`, min, max)]);
  }
  return out;
}

function permissionError(err: NodeJS.ErrnoException, file: string): KsmError {
  const fix =
    err.code === 'EROFS'
      ? `${sysfsDir} is mounted read-only (a container?): change KSM settings on the host, or run the container with a writable /sys`
      : `only root may change KSM settings: run this as root (or with CAP_SYS_ADMIN), or ask an administrator to run "node-ksm boost"`;
  return new KsmError(`Cannot write ${file} (${err.code}): ${fix}`, 'ERR_KSM_PERMISSION', {
    errno: err.errno,
    syscall: err.syscall,
    path: file,
    cause: err,
  });
}

function writeKnob(name: KsmSettingName, value: number | string): void {
  const file = `${sysfsDir}/${snakeCase(name)}`;
  try {
    fs.writeFileSync(file, String(value));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS') throw permissionError(e, file);
    if (e.code === 'EBUSY' && BUSY_KNOBS.has(name)) {
      throw new KsmError(
        `${file}: the kernel refuses to change ${snakeCase(name)} while pages are merged (EBUSY); ` +
          'unmerge everything first with configure({ run: 2 }) (this unmerges every process on the machine)',
        'EBUSY',
        { errno: e.errno, syscall: 'write', path: file, cause: err },
      );
    }
    throw fromFsError(err, `Cannot write ${value} to ${file}: ${e.message}`);
  }
}

/**
 * The order of writes. Stopping (run 0/2) comes first so that run=2 can clear the
 * shared pages that make merge_across_nodes/max_page_sharing EBUSY; leaving the advisor
 * comes before pages_to_scan, which the kernel refuses (EINVAL) under scan-time; the
 * advisor's min/max are ordered so min <= max holds in between; entering scan-time and
 * starting ksmd (run=1) come last, so the scanner starts with the new settings.
 */
function writeOrder(entries: Map<KsmSettingName, number | string>, current: KsmSettings): KsmSettingName[] {
  const order: KsmSettingName[] = [];
  const add = (name: KsmSettingName) => {
    if (entries.has(name) && !order.includes(name)) order.push(name);
  };
  if (entries.get('run') !== 1) add('run');
  if (entries.get('advisorMode') === 'none') add('advisorMode');
  for (const n of [
    'pagesToScan',
    'sleepMillisecs',
    'smartScan',
    'useZeroPages',
    'stableNodeChainsPruneMillisecs',
    'advisorMaxCpu',
    'advisorTargetScanTime',
  ] as const)
    add(n);
  const min = entries.get('advisorMinPagesToScan') as number | undefined;
  if (min !== undefined && min > (current.advisorMaxPagesToScan ?? Infinity)) add('advisorMaxPagesToScan');
  add('advisorMinPagesToScan');
  add('advisorMaxPagesToScan');
  add('mergeAcrossNodes');
  add('maxPageSharing');
  add('advisorMode');
  add('run');
  return order;
}

/**
 * Writes the given knobs (others are left alone) and returns the previous value of each
 * of them (plus pagesToScan when a change of advisorMode resets it), so
 * `configure(previous)` puts them back. Validation happens before anything is
 * written (TypeError ERR_INVALID_ARG_TYPE/ERR_INVALID_ARG_VALUE, RangeError
 * ERR_OUT_OF_RANGE); a knob this kernel lacks is ERR_KSM_UNSUPPORTED; no permission is
 * ERR_KSM_PERMISSION; the kernel refusing a value is a KsmError with its errno. If one
 * write fails, the knobs already written get their previous values back before the
 * error is thrown.
 *
 * `run: 2` unmerges every merged page of every process on the machine; it is written
 * only when asked for. `pagesToScan` can only be set with the advisor off (the scan-time
 * advisor owns it): pass `advisorMode: 'none'` too when the advisor is on. Leaving the
 * advisor resets pages_to_scan to the kernel's default (100) unless `pagesToScan` is given.
 */
export function configure(partial: Partial<KsmSettings>): KsmSettings {
  const entries = new Map(validate(partial));
  native();
  return configureFrom(entries, readSettings());
}

/**
 * configure() for a caller that has just read the knobs it changes (boost.ts, on its
 * hot path: reading every file of /sys/kernel/mm/ksm costs ~1 ms, the five knobs a
 * boost writes a tenth of that). `current` must hold at least the knobs in `partial`,
 * and the advisor's mode and min/max when those are written. Not part of the public API.
 */
export function configureKnown(partial: Partial<KsmSettings>, current: KsmSettings): KsmSettings {
  const entries = new Map(validate(partial));
  native();
  return configureFrom(entries, current);
}

function configureFrom(entries: Map<KsmSettingName, number | string>, current: KsmSettings): KsmSettings {
  for (const name of entries.keys()) {
    if (current[name] === undefined) {
      throw new KsmError(
        `This kernel has no ${sysfsDir}/${snakeCase(name)} (a newer kernel, or NUMA for merge_across_nodes, is needed)`,
        'ERR_KSM_UNSUPPORTED',
      );
    }
  }
  const advisorAfter = entries.get('advisorMode') ?? current.advisorMode;
  if (entries.has('pagesToScan') && advisorAfter === 'scan-time') {
    throw invalidValue(
      'settings.pagesToScan',
      "cannot be set while advisorMode is 'scan-time' (the advisor sets pages_to_scan itself); pass advisorMode: 'none' with it",
      entries.get('pagesToScan'),
    );
  }
  const minAfter = (entries.get('advisorMinPagesToScan') as number | undefined) ?? current.advisorMinPagesToScan;
  const maxAfter = (entries.get('advisorMaxPagesToScan') as number | undefined) ?? current.advisorMaxPagesToScan;
  if (
    (entries.has('advisorMinPagesToScan') || entries.has('advisorMaxPagesToScan')) &&
    minAfter !== undefined &&
    maxAfter !== undefined &&
    minAfter > maxAfter
  ) {
    throw new RangeError(`advisorMinPagesToScan (${minAfter}) must not exceed advisorMaxPagesToScan (${maxAfter})`);
  }

  const previous: Record<string, unknown> = {};
  for (const name of entries.keys()) previous[name] = current[name];
  // Leaving or entering the advisor resets pages_to_scan; bring it back too, when it was ours to set.
  const advisorChanges = entries.has('advisorMode') && entries.get('advisorMode') !== current.advisorMode;
  if (advisorChanges && current.advisorMode === 'none' && !entries.has('pagesToScan'))
    previous.pagesToScan = current.pagesToScan;
  // Under scan-time pages_to_scan was the advisor's, and going back to scan-time resets it.
  if (advisorChanges && current.advisorMode === 'scan-time') delete previous.pagesToScan;
  const written: KsmSettingName[] = [];
  try {
    for (const name of writeOrder(entries, current)) {
      const value = entries.get(name)!;
      // Equal values are skipped: rewriting them is a no-op at best, and for the EBUSY
      // knobs it would fail for nothing while pages are shared.
      if (current[name] === value && name !== 'pagesToScan') continue;
      writeKnob(name, value);
      written.push(name);
    }
  } catch (err) {
    const failed = rollback(written, previous);
    if (failed.length > 0 && err instanceof Error) {
      err.message += ` (and rolling back failed for ${failed.join(', ')}: the machine's KSM settings are now partly changed)`;
    }
    throw err;
  }
  return previous;
}

/** Puts back the previous values of `written`, in reverse order; returns what failed. */
function rollback(written: KsmSettingName[], previous: KsmSettings): string[] {
  const failed: string[] = [];
  for (const name of [...written].reverse()) {
    const value = previous[name];
    // run=2 is never written back: that would unmerge the machine a second time.
    if (value === undefined || (name === 'run' && value === 2)) continue;
    try {
      writeKnob(name, value);
    } catch {
      failed.push(snakeCase(name));
    }
  }
  return failed;
}
