/**
 * `node-ksm watch`: saved bytes, ksmd's CPU and full scans sampled every interval, drawn
 * in place in the terminal, and written as an SVG chart at the end: the graph operators
 * otherwise draw by hand from `grep . /sys/kernel/mm/ksm/*`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as asciichart from 'asciichart';
import { WatchHistory, watchChart } from '../charts';
import { systemStats, type SystemStats } from '../stats';
import { formatBytes, formatCount, formatSeconds } from './format';
import { ksmdCpuSeconds } from '../ksmd';

export interface WatchSample {
  /** Milliseconds since the watch started. */
  timeMs: number;
  /** ksmd's share of one CPU over the last interval, in percent (undefined without ksmd). */
  ksmdCpuPercent?: number;
  stats: SystemStats;
}

export interface WatchOptions {
  intervalMs: number;
  durationMs?: number;
  svgFile?: string;
  json: boolean;
  out: NodeJS.WriteStream;
  signal: AbortSignal;
}

function unitFor(max: number): { div: number; unit: string } {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (i < units.length - 1 && max >= 1024 ** (i + 1)) i++;
  return { div: 1024 ** i, unit: units[i]! };
}

/** The last few saved-bytes values, for the terminal chart (which is one column per sample). */
const RECENT = 512;

function renderFrame(recent: readonly number[], last: WatchSample, opts: WatchOptions, columns: number): string {
  const s = last.stats;
  const width = Math.max(10, columns - 14);
  const saved = recent.slice(-width);
  let max = 0;
  for (const v of saved) if (v > max) max = v;
  const { div, unit } = unitFor(max);
  const chart = asciichart.plot(
    saved.map((v) => v / div),
    { height: 10, format: (v: number) => `${v.toFixed(1).padStart(8)} ${unit.padEnd(3)}` },
  );
  const cpu = last.ksmdCpuPercent === undefined ? 'unknown' : `${last.ksmdCpuPercent.toFixed(1)}%`;
  const state = s.run === 1 ? 'running' : `stopped (run=${s.run})`;
  return [
    `node-ksm watch: every ${formatSeconds(opts.intervalMs / 1000)}, ${formatSeconds(last.timeMs / 1000)} so far (Ctrl-C to stop)`,
    `KSM ${state}; pages_to_scan=${s.pagesToScan} sleep_millisecs=${s.sleepMillisecs}${s.advisorMode === 'scan-time' ? ' (advisor: scan-time)' : ''}`,
    `saved ${formatBytes(s.savedBytes)}   ksmd CPU ${cpu}   full scans ${formatCount(s.fullScans ?? 0)}   ` +
      `shared ${formatCount(s.pagesShared ?? 0)} sharing ${formatCount(s.pagesSharing ?? 0)} unshared ${formatCount(s.pagesUnshared ?? 0)}`,
    '',
    'saved bytes',
    chart,
    '',
  ].join('\n');
}

function line(sample: WatchSample): string {
  const s = sample.stats;
  const cpu = sample.ksmdCpuPercent === undefined ? '-' : `${sample.ksmdCpuPercent.toFixed(1)}%`;
  return `${(sample.timeMs / 1000).toFixed(1)}s saved ${formatBytes(s.savedBytes)} ksmd ${cpu} full_scans ${s.fullScans ?? 0} pages_sharing ${s.pagesSharing ?? 0}`;
}

/**
 * Writes the chart of `history` to `file` through a temporary file and a rename, so the
 * file is always a whole chart, also while the watch runs or if it is killed mid-write.
 */
export function writeSvg(file: string, history: WatchHistory, intervalMs: number): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, watchChart(history, { intervalMs, host: os.hostname() }));
  fs.renameSync(tmp, file);
}

/** How often the SVG is rewritten while the watch runs, so a killed watch leaves its chart. */
const SVG_EVERY_MS = 60_000;

/** Reads one sample: the stats now and ksmd's CPU since the previous read. */
function sampler(start: number): () => WatchSample {
  let cpuBefore = ksmdCpuSeconds();
  let timeBefore = start;
  return () => {
    const now = Date.now();
    const cpuNow = ksmdCpuSeconds();
    const sample: WatchSample = {
      timeMs: now - start,
      ksmdCpuPercent:
        cpuNow !== undefined && cpuBefore !== undefined && now > timeBefore
          ? Math.max(0, ((cpuNow - cpuBefore) / ((now - timeBefore) / 1000)) * 100)
          : undefined,
      stats: systemStats(),
    };
    cpuBefore = cpuNow;
    timeBefore = now;
    return sample;
  };
}

export interface WatchResult {
  /** Samples taken. */
  count: number;
  /** The last one, if any. */
  last?: WatchSample;
  /** Everything the chart draws, in bounded memory. */
  history: WatchHistory;
}

/**
 * Samples until the duration is over or the signal aborts. Memory stays bounded however
 * long it runs: the chart's history merges old points (WatchHistory), the terminal keeps
 * only the last columns. With `svgFile` the chart is written at once (so a path that
 * cannot be written fails now, not after a day), every minute, and at the end.
 */
export async function watch(opts: WatchOptions): Promise<WatchResult> {
  const history = new WatchHistory();
  const recent: number[] = [];
  const tty = !opts.json && opts.out.isTTY === true;
  const start = Date.now();
  const read = sampler(start);
  const result: WatchResult = { count: 0, history };
  const svg = () => opts.svgFile !== undefined && writeSvg(opts.svgFile, history, opts.intervalMs);
  svg();
  let lastSvg = start;
  if (tty) opts.out.write('\x1b[?25l');
  try {
    // Samples land on a fixed schedule (start + k × interval), so a duration gives a
    // predictable number of them however long each read takes.
    for (let k = 1; opts.durationMs === undefined || k * opts.intervalMs <= opts.durationMs; k++) {
      const wait = start + k * opts.intervalMs - Date.now();
      try {
        if (wait > 0) await sleep(wait, undefined, { signal: opts.signal });
      } catch {
        break;
      }
      if (opts.signal.aborted) break;
      const sample = read();
      result.count++;
      result.last = sample;
      history.add({
        timeMs: start + sample.timeMs,
        intervalMs: opts.intervalMs,
        savedBytes: sample.stats.savedBytes,
        cpuPercent: sample.ksmdCpuPercent,
      });
      recent.push(sample.stats.savedBytes);
      if (recent.length > RECENT) recent.splice(0, recent.length - RECENT);
      if (opts.json) opts.out.write(`${JSON.stringify(sample)}\n`);
      else if (tty) opts.out.write(`\x1b[H\x1b[2J${renderFrame(recent, sample, opts, opts.out.columns ?? 80)}`);
      else opts.out.write(`${line(sample)}\n`);
      if (Date.now() - lastSvg >= SVG_EVERY_MS) {
        svg();
        lastSvg = Date.now();
      }
    }
  } finally {
    if (tty) opts.out.write('\x1b[?25h');
    svg();
  }
  return result;
}
