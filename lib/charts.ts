/**
 * The charts node-ksm draws, on the engine in svg.ts:
 * - `benchChart`: scanner policies side by side, memory saved and ksmd's CPU over time
 *   in two aligned panels, so "merged fastest" and "idled cheapest" are read off one
 *   picture. It takes per-policy samples `{ t, savedBytes, cpuPercent }`, the shape both
 *   `runBenchmark` and the VM bench produce.
 * - `watchChart` over a `WatchHistory`: memory saved and ksmd CPU against the clock, for
 *   any length of run in bounded memory.
 */
import { renderChart, type ChartBand, type ChartLine, type Point } from './svg';

export interface BenchChartSample {
  /** Seconds since the data was in place. */
  t: number;
  /** Bytes KSM saved at that moment. */
  savedBytes: number;
  /** ksmd's share of one core since the previous sample, in percent. */
  cpuPercent: number;
}

export interface BenchChartSeries {
  /** What the series is, for the legend (e.g. "pages_to_scan 10000, sleep 0"). */
  name: string;
  samples: readonly BenchChartSample[];
  /** Seconds until the merge target was reached (marked with a dot); null when it never was. */
  mergeSeconds?: number | null;
  /** ksmd's CPU once merging had finished, in percent of one core (shown in the legend). */
  idleCpuPercent?: number;
}

export interface BenchChartInput {
  /** Says the workload, e.g. "Scanner policies: 3 workers × 64 MiB of identical pages". */
  title: string;
  subtitle?: string;
  series: readonly BenchChartSeries[];
  /**
   * The time axis: 'auto' (default) is logarithmic when the fastest merge and the end of
   * the run are more than 10× apart, so 0.4 s and 30 s are both readable.
   */
  timeScale?: 'auto' | 'log' | 'linear';
  /** Canvas width in px (default 960). */
  width?: number;
}

const seconds = (s: number) => (s < 10 ? `${+s.toFixed(1)} s` : `${Math.round(s)} s`);
const percent = (p: number) => `${p < 10 ? +p.toFixed(1) : Math.round(p)} %`;

function legendLabel(s: BenchChartSeries): string {
  const parts: string[] = [];
  if (s.mergeSeconds !== undefined)
    parts.push(s.mergeSeconds === null ? 'not merged' : `merged ${seconds(s.mergeSeconds)}`);
  if (s.idleCpuPercent !== undefined) parts.push(`idle ${percent(s.idleCpuPercent)}`);
  return parts.length === 0 ? s.name : `${s.name}: ${parts.join(', ')}`;
}

/**
 * ksmd's CPU as the mean over `buckets` equal stretches of the axis: samples 100 ms apart
 * count whole clock ticks (10 ms), so single samples jump by 10 points; the mean over a
 * stretch is what the scanner cost there. Each sample counts for the time since the one
 * before. Points are (start of stretch, mean), for a step line.
 */
function cpuSteps(samples: readonly BenchChartSample[], edges: readonly number[]): Point[] {
  const out: Point[] = [];
  let j = 0;
  let prevT = 0;
  for (let b = 1; b < edges.length && j < samples.length; b++) {
    let busy = 0;
    let span = 0;
    const start = prevT;
    while (j < samples.length && (samples[j]!.t <= edges[b]! || b === edges.length - 1)) {
      const s = samples[j++]!;
      busy += s.cpuPercent * (s.t - prevT);
      span += s.t - prevT;
      prevT = s.t;
    }
    if (span > 0) out.push([start, busy / span]);
  }
  const last = out[out.length - 1];
  if (last !== undefined) out.push([prevT, last[1]]);
  return out;
}

function timeRange(series: readonly BenchChartSeries[]): { first: number; end: number; fastest: number } {
  let first = Infinity;
  let end = 0;
  let fastest = Infinity;
  for (const s of series) {
    const a = s.samples[0];
    const z = s.samples[s.samples.length - 1];
    if (a !== undefined && a.t > 0 && a.t < first) first = a.t;
    if (z !== undefined && z.t > end) end = z.t;
    if (typeof s.mergeSeconds === 'number' && s.mergeSeconds > 0 && s.mergeSeconds < fastest) fastest = s.mergeSeconds;
  }
  if (!Number.isFinite(first)) first = 0.1;
  return {
    first,
    end: Math.max(end, first * 10),
    fastest: Math.max(Number.isFinite(fastest) ? fastest : first, first),
  };
}

/** The saved bytes at time t: from the first sample at or after t. */
function savedAt(samples: readonly BenchChartSample[], t: number): number {
  for (const s of samples) if (s.t >= t - 1e-9) return s.savedBytes;
  return samples[samples.length - 1]?.savedBytes ?? 0;
}

/** Memory saved and ksmd CPU over time, one colour per policy, in two aligned panels. */
export function benchChart(input: BenchChartInput): string {
  const { first, end, fastest } = timeRange(input.series);
  const log = input.timeScale === 'log' || (input.timeScale !== 'linear' && end / fastest > 10);
  const lo = log ? first : 0;
  const buckets = 120;
  const edges = Array.from({ length: buckets + 1 }, (_, k) =>
    log ? lo * (end / lo) ** (k / buckets) : lo + ((end - lo) * k) / buckets,
  );
  edges[0] = 0;
  const saved: ChartLine[] = input.series.map((s, key) => ({
    key,
    points: s.samples.map((p) => [p.t, p.savedBytes] as const),
    markers: typeof s.mergeSeconds === 'number' ? [[s.mergeSeconds, savedAt(s.samples, s.mergeSeconds)]] : [],
  }));
  const cpu: ChartLine[] = input.series.map((s, key) => ({ key, points: cpuSteps(s.samples, edges), step: true }));
  return renderChart({
    title: input.title,
    subtitle: input.subtitle,
    width: input.width,
    legend: input.series.map((s) => ({ label: legendLabel(s) })),
    panels: [
      {
        title: 'Memory saved',
        note: '● merge target reached',
        y: { kind: 'bytes' },
        lines: saved,
        height: 220,
      },
      { title: 'ksmd CPU', y: { kind: 'linear', unit: '% of one core', min: 0, max: 10 }, lines: cpu, height: 180 },
    ],
    x: {
      kind: log ? 'log-seconds' : 'seconds',
      min: lo,
      max: end,
      title: 'time since the data was in place',
    },
  });
}

// ---------------------------------------------------------------------------------------
// watch

export interface WatchPoint {
  /** Start and end of the interval the point covers, ms since the epoch. */
  startMs: number;
  endMs: number;
  /** Samples merged into this point. */
  samples: number;
  savedLast: number;
  savedMin: number;
  savedMax: number;
  /** Sum of cpuPercent × ms over the samples that knew ksmd's CPU, and that time. */
  cpuPercentMs: number;
  cpuMs: number;
  cpuMin: number;
  cpuMax: number;
}

export interface WatchInput {
  /** ms since the epoch, at the end of the sample's interval. */
  timeMs: number;
  /** Length of the interval the sample covers, ms. */
  intervalMs: number;
  savedBytes: number;
  /** ksmd's share of a core over the interval, percent; undefined when unknown. */
  cpuPercent?: number;
}

/**
 * The history `watch` charts, in bounded memory for any length of run: at most
 * `capacity` points. When full, neighbouring points merge pairwise (halving the
 * resolution of the whole history, so every part of the run keeps the same detail), and
 * each later point takes twice as many samples. A point keeps what a chart of it needs:
 * the last, lowest and highest saved bytes, and ksmd's CPU as a time-weighted mean with
 * its range.
 */
export class WatchHistory {
  readonly capacity: number;
  private points: WatchPoint[] = [];
  /** Samples per point for new samples (a power of two). */
  private stride = 1;
  /** Samples added over the whole run. */
  count = 0;

  constructor(capacity = 2048) {
    if (!Number.isInteger(capacity) || capacity < 4) throw new RangeError('capacity must be an integer >= 4');
    this.capacity = capacity - (capacity % 2);
  }

  add(s: WatchInput): void {
    this.count++;
    const cpu = s.cpuPercent;
    const known = cpu !== undefined && Number.isFinite(cpu);
    const last = this.points[this.points.length - 1];
    if (last !== undefined && last.samples < this.stride) {
      last.endMs = s.timeMs;
      last.samples++;
      last.savedLast = s.savedBytes;
      last.savedMin = Math.min(last.savedMin, s.savedBytes);
      last.savedMax = Math.max(last.savedMax, s.savedBytes);
      if (known) {
        last.cpuPercentMs += cpu * s.intervalMs;
        last.cpuMs += s.intervalMs;
        last.cpuMin = Math.min(last.cpuMin, cpu);
        last.cpuMax = Math.max(last.cpuMax, cpu);
      }
      return;
    }
    if (this.points.length >= this.capacity) this.halve();
    this.points.push({
      startMs: s.timeMs - s.intervalMs,
      endMs: s.timeMs,
      samples: 1,
      savedLast: s.savedBytes,
      savedMin: s.savedBytes,
      savedMax: s.savedBytes,
      cpuPercentMs: known ? cpu * s.intervalMs : 0,
      cpuMs: known ? s.intervalMs : 0,
      cpuMin: known ? cpu : Infinity,
      cpuMax: known ? cpu : -Infinity,
    });
  }

  private halve(): void {
    const merged: WatchPoint[] = [];
    for (let i = 0; i < this.points.length; i += 2) {
      const a = this.points[i]!;
      const b = this.points[i + 1];
      merged.push(
        b === undefined
          ? a
          : {
              startMs: a.startMs,
              endMs: b.endMs,
              samples: a.samples + b.samples,
              savedLast: b.savedLast,
              savedMin: Math.min(a.savedMin, b.savedMin),
              savedMax: Math.max(a.savedMax, b.savedMax),
              cpuPercentMs: a.cpuPercentMs + b.cpuPercentMs,
              cpuMs: a.cpuMs + b.cpuMs,
              cpuMin: Math.min(a.cpuMin, b.cpuMin),
              cpuMax: Math.max(a.cpuMax, b.cpuMax),
            },
      );
    }
    this.points = merged;
    this.stride *= 2;
  }

  /** The points, oldest first (the array itself: do not change it). */
  get values(): readonly WatchPoint[] {
    return this.points;
  }

  /** Samples each point holds now. */
  get samplesPerPoint(): number {
    return this.stride;
  }
}

export interface WatchChartOptions {
  /** Who is watched, for the title (default: "this host"). */
  host?: string;
  intervalMs: number;
  width?: number;
}

function clock(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Memory saved and ksmd CPU against the clock, from a watch history. */
export function watchChart(history: WatchHistory, options: WatchChartOptions): string {
  const pts = history.values;
  const first = pts[0];
  const last = pts[pts.length - 1];
  const start = first?.startMs ?? Date.now();
  const end = last?.endMs ?? start + options.intervalMs;
  const aggregated = history.samplesPerPoint > 1 || pts.some((p) => p.samples > 1);
  const saved: ChartLine = { key: 0, points: pts.map((p) => [p.endMs, p.savedLast] as const) };
  const withCpu = pts.filter((p) => p.cpuMs > 0);
  // A step per point: ksmd's CPU is a mean over the point's interval, not a value at an instant.
  const cpuPoints: Point[] = withCpu.map((p) => [p.startMs, p.cpuPercentMs / p.cpuMs] as const);
  const lastCpu = withCpu[withCpu.length - 1];
  if (lastCpu !== undefined) cpuPoints.push([lastCpu.endMs, lastCpu.cpuPercentMs / lastCpu.cpuMs]);
  const cpu: ChartLine = { key: 1, step: true, points: cpuPoints };
  const bands: { saved: ChartBand[]; cpu: ChartBand[] } = { saved: [], cpu: [] };
  if (aggregated) {
    bands.saved.push({ key: 0, points: pts.map((p) => [p.endMs, p.savedMin, p.savedMax] as const) });
    bands.cpu.push({ key: 1, points: withCpu.map((p) => [p.endMs, p.cpuMin, p.cpuMax] as const) });
  }
  const every =
    options.intervalMs >= 1000 ? `${+(options.intervalMs / 1000).toFixed(1)} s` : `${options.intervalMs} ms`;
  const detail = aggregated ? `, ${history.samplesPerPoint} per point; shading: their range` : '';
  return renderChart({
    title: `KSM on ${options.host ?? 'this host'}: memory saved and ksmd CPU`,
    subtitle: `${clock(start)} to ${clock(end)}, a sample every ${every} (${history.count.toLocaleString('en-US')} samples${detail})`,
    width: options.width,
    legend: [{ label: 'memory saved by KSM' }, { label: 'ksmd CPU' }],
    panels: [
      { title: 'Memory saved', y: { kind: 'bytes' }, lines: [saved], bands: bands.saved, height: 220 },
      {
        title: 'ksmd CPU',
        y: { kind: 'linear', unit: '% of one core', min: 0, max: 5 },
        lines: [cpu],
        bands: bands.cpu,
        height: 160,
      },
    ],
    x: { kind: 'clock', min: start, max: end, title: 'time' },
  });
}
