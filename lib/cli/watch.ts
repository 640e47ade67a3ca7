/**
 * `node-ksm watch`: saved bytes, ksmd's CPU and full scans sampled every interval, drawn
 * in place in the terminal, and written as an SVG chart at the end: the graph operators
 * otherwise draw by hand from `grep . /sys/kernel/mm/ksm/*`.
 */
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import * as asciichart from 'asciichart';
import { systemStats, type SystemStats } from '../stats';
import { lineChart } from '../svg';
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

function renderFrame(samples: WatchSample[], opts: WatchOptions, columns: number): string {
  const last = samples[samples.length - 1]!;
  const s = last.stats;
  const width = Math.max(10, columns - 14);
  const saved = samples.slice(-width).map((x) => x.stats.savedBytes);
  const { div, unit } = unitFor(Math.max(...saved));
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

export function writeSvg(file: string, samples: WatchSample[]): void {
  const svg = lineChart({
    title: `KSM saved bytes and ksmd CPU (${samples.length} samples)`,
    x: samples.map((s) => s.timeMs / 1000),
    series: [
      {
        name: 'saved bytes',
        values: samples.map((s) => s.stats.savedBytes),
        color: '#1f77b4',
        axis: 'left',
        min: 0,
        max: Math.max(1 << 20, ...samples.map((s) => s.stats.savedBytes)),
        format: formatBytes,
      },
      {
        name: 'ksmd CPU %',
        values: samples.map((s) => s.ksmdCpuPercent ?? 0),
        color: '#d62728',
        axis: 'right',
        min: 0,
        max: Math.max(1, ...samples.map((s) => s.ksmdCpuPercent ?? 0)),
        format: (v) => `${+v.toFixed(v < 10 ? 1 : 0)}%`,
      },
    ],
  });
  fs.writeFileSync(file, svg);
}

/** Samples until the duration is over or the signal aborts; returns the samples. */
export async function watch(opts: WatchOptions): Promise<WatchSample[]> {
  const samples: WatchSample[] = [];
  const tty = !opts.json && opts.out.isTTY === true;
  const start = Date.now();
  let cpuBefore = ksmdCpuSeconds();
  let timeBefore = start;
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
      const now = Date.now();
      const cpuNow = ksmdCpuSeconds();
      const sample: WatchSample = {
        timeMs: now - start,
        ksmdCpuPercent:
          cpuNow !== undefined && cpuBefore !== undefined
            ? Math.max(0, ((cpuNow - cpuBefore) / ((now - timeBefore) / 1000)) * 100)
            : undefined,
        stats: systemStats(),
      };
      cpuBefore = cpuNow;
      timeBefore = now;
      samples.push(sample);
      if (opts.json) opts.out.write(`${JSON.stringify(sample)}\n`);
      else if (tty) opts.out.write(`\x1b[H\x1b[2J${renderFrame(samples, opts, opts.out.columns ?? 80)}`);
      else opts.out.write(`${line(sample)}\n`);
    }
  } finally {
    if (tty) opts.out.write('\x1b[?25h');
    if (opts.svgFile !== undefined) writeSvg(opts.svgFile, samples);
  }
  return samples;
}
