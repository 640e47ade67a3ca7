/** `node-ksm tune`, `boost` and `restore`: the commands that change the machine's settings. */
import { boost, boostState, restore } from '../boost';
import { configure, readSettings, type KsmSettings } from '../control';
import { snakeCase } from '../procfs';
import { UsageError, parseCount, type Options, type Values, str } from './args';
import { table } from './format';

/** tune's flags: kebab-case of the sysfs names, `-ms` for millisecs, as operators type them. */
export const TUNE_FLAGS: Record<string, Exclude<keyof KsmSettings, 'advisorMode'>> = {
  run: 'run',
  'pages-to-scan': 'pagesToScan',
  'sleep-ms': 'sleepMillisecs',
  'merge-across-nodes': 'mergeAcrossNodes',
  'use-zero-pages': 'useZeroPages',
  'max-page-sharing': 'maxPageSharing',
  'stable-node-chains-prune-ms': 'stableNodeChainsPruneMillisecs',
  'smart-scan': 'smartScan',
  'advisor-max-cpu': 'advisorMaxCpu',
  'target-scan-time': 'advisorTargetScanTime',
  'advisor-min-pages-to-scan': 'advisorMinPagesToScan',
  'advisor-max-pages-to-scan': 'advisorMaxPagesToScan',
};

export const TUNE_OPTIONS: Options = {
  ...Object.fromEntries(Object.keys(TUNE_FLAGS).map((f) => [f, { type: 'string' as const }])),
  advisor: { type: 'string' },
};

export function tuneSettings(values: Values): Partial<KsmSettings> {
  const partial: Record<string, unknown> = {};
  for (const [flag, name] of Object.entries(TUNE_FLAGS)) {
    const v = str(values, flag);
    if (v !== undefined) partial[name] = parseCount(v, flag);
  }
  const advisor = str(values, 'advisor');
  if (advisor !== undefined) {
    if (advisor !== 'none' && advisor !== 'scan-time')
      throw new UsageError(`--advisor must be none or scan-time (got "${advisor}")`);
    partial.advisorMode = advisor;
  }
  if (Object.keys(partial).length === 0) throw new UsageError('tune needs at least one setting to change');
  return partial;
}

export interface TuneReport {
  before: KsmSettings;
  after: KsmSettings;
  /** The knobs that were asked for, with their previous values. */
  previous: KsmSettings;
}

export function tune(partial: Partial<KsmSettings>): TuneReport {
  const before = readSettings();
  const previous = configure(partial);
  return { before, after: readSettings(), previous };
}

/** Lines "name  before -> after" for every knob that differs (or was asked for). */
export function renderChanges(before: KsmSettings, after: KsmSettings, asked: readonly string[] = []): string {
  const names = Object.keys(after).filter(
    (k) => asked.includes(k) || before[k as keyof KsmSettings] !== after[k as keyof KsmSettings],
  );
  if (names.length === 0) return '  (nothing changed)';
  return table(
    names.map((k) => [
      snakeCase(k),
      String(before[k as keyof KsmSettings] ?? '-'),
      '->',
      String(after[k as keyof KsmSettings] ?? '-'),
    ]),
    '  ',
  ).join('\n');
}

export interface BoostRun {
  boosted: KsmSettings;
  before: KsmSettings;
  after: KsmSettings;
  heldMs: number;
  /** Other holders (other processes) still boosting when this one let go. */
  otherHolders: number;
}

/**
 * Holds a boost until `forMs` passes or the signal aborts (Ctrl-C). boost.ts puts the
 * originals back on its own on SIGINT/SIGTERM/SIGHUP; release() is then a no-op.
 */
export async function holdBoost(
  options: { pagesToScan?: number; sleepMillisecs?: number; forMs?: number },
  signal: AbortSignal,
  onBoosted: (settings: KsmSettings, before: KsmSettings) => void,
): Promise<BoostRun> {
  const before = readSettings();
  const start = Date.now();
  const handle = await boost({ pagesToScan: options.pagesToScan, sleepMillisecs: options.sleepMillisecs });
  try {
    onBoosted(handle.settings, before);
    await new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      // A signal listener does not keep Node alive; without a timer the process would
      // exit at once (and boost.ts's exit handler would quietly restore).
      const timer = setTimeout(done, options.forMs ?? 2 ** 31 - 1);
      const keepAlive = options.forMs === undefined ? setInterval(() => {}, 2 ** 30) : undefined;
      function done(): void {
        clearTimeout(timer);
        clearInterval(keepAlive);
        resolve();
      }
      signal.addEventListener('abort', done, { once: true });
    });
  } finally {
    await handle.release();
  }
  const state = boostState();
  return {
    boosted: handle.settings,
    before,
    after: readSettings(),
    heldMs: Date.now() - start,
    otherHolders: state?.holders.filter((h) => h.alive).length ?? 0,
  };
}

export { restore };
