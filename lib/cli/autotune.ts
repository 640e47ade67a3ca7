/**
 * `node-ksm autotune`: a foreground daemon (run it under systemd) that keeps ksmd at the
 * low-cost setting while nothing changes and boosts it while there is work. It says
 * every change of state on stdout, and on Ctrl-C/SIGTERM puts the original settings back.
 */
import { startAutotune, type AutotuneEvent, type AutotuneOptions } from '../autotune';
import { snakeCase } from '../procfs';
import { parseCount, parseDuration, str, type Options, type Values } from './args';

export const AUTOTUNE_USAGE =
  'node-ksm autotune [--idle-pages-to-scan N] [--idle-sleep-ms N] [--pages-to-scan 100000] [--sleep-ms 0]\n' +
  '                  [--interval 200ms] [--watch-interval 25ms] [--threshold PAGES] [--quiet-scans 2] [--json]\n' +
  '  --interval: how often the counters are read while idle; --watch-interval: how often, at most, processes\n' +
  '  started in the last 5 s are checked for new mergeable memory (only while there are such processes).\n' +
  '  Runs until Ctrl-C/SIGTERM, then restores the settings it found. Idle settings default to the\n' +
  "  current ones when they cost no more than the kernel's defaults (100 pages every 20 ms), else those.\n" +
  '  With advisor_mode=scan-time set it leaves the scanner to the kernel advisor and exits; if someone\n' +
  '  changes the settings while it runs (node-ksm tune), it stops adjusting, says so and exits.';

export const AUTOTUNE_OPTIONS: Options = {
  'idle-pages-to-scan': { type: 'string' },
  'idle-sleep-ms': { type: 'string' },
  'pages-to-scan': { type: 'string' },
  'sleep-ms': { type: 'string' },
  interval: { type: 'string' },
  'watch-interval': { type: 'string' },
  threshold: { type: 'string' },
  'quiet-scans': { type: 'string' },
};

export function autotuneOptions(v: Values): AutotuneOptions {
  const num = (flag: string, min = 0) => {
    const text = str(v, flag);
    return text === undefined ? undefined : parseCount(text, flag, min);
  };
  const idlePages = num('idle-pages-to-scan', 1);
  const idleSleep = num('idle-sleep-ms');
  const interval = str(v, 'interval');
  const watch = str(v, 'watch-interval');
  return {
    idle:
      idlePages === undefined && idleSleep === undefined
        ? undefined
        : { pagesToScan: idlePages, sleepMillisecs: idleSleep },
    boost: { pagesToScan: num('pages-to-scan', 1), sleepMillisecs: num('sleep-ms') },
    idleIntervalMs: interval === undefined ? undefined : Math.max(10, parseDuration(interval, 'interval')),
    watchIntervalMs: watch === undefined ? undefined : Math.max(10, parseDuration(watch, 'watch-interval')),
    thresholdPages: num('threshold', 1),
    quietScans: num('quiet-scans', 1),
  };
}

export function renderEvent(e: AutotuneEvent): string {
  const knobs = (['pagesToScan', 'sleepMillisecs', 'smartScan', 'advisorMode'] as const)
    .filter((k) => e.settings[k] !== undefined)
    .map((k) => `${snakeCase(k)}=${e.settings[k]}`)
    .join(' ');
  return `${new Date().toISOString()} ${e.state}: ${e.reason}${knobs && e.state !== 'stopped' ? ` (${knobs})` : ''}`;
}

/**
 * Runs autotune until the signal aborts, or until it stops on its own (advisor on,
 * settings overridden: resolves; failure: rejects). Returns the final state.
 */
export async function autotuneCommand(
  v: Values,
  signal: AbortSignal,
  out: NodeJS.WritableStream = process.stdout,
): Promise<AutotuneEvent['state']> {
  const options = autotuneOptions(v);
  const print = (e: AutotuneEvent) => out.write(`${v.json ? JSON.stringify(e) : renderEvent(e)}\n`);
  let finished: (() => void) | undefined;
  const done = new Promise<void>((resolve) => (finished = resolve));
  const handle = startAutotune({
    ...options,
    onChange: (e) => {
      print(e);
      if (e.state === 'advisor' || e.state === 'overridden' || e.state === 'failed') finished?.();
    },
  });
  if (handle.state === 'advisor') finished!();
  const onAbort = () => finished?.();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await done;
  } finally {
    signal.removeEventListener('abort', onAbort);
    await handle.stop();
  }
  if (handle.state === 'stopped' && handle.error) throw handle.error;
  return handle.history.at(-2)?.state ?? handle.state;
}
