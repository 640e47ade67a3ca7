/**
 * `node-ksm bench`: the seed's experiment (identical VMs, default vs. boosted scanning)
 * reproduced on one machine, with autotune and the kernel's advisor alongside, as a
 * table, a JSON file and an SVG chart. It changes the machine's KSM settings while it
 * runs (root only) and puts them all back, also on Ctrl-C.
 */
import fs from 'node:fs';
import os from 'node:os';
import {
  DEFAULT_POLICIES,
  runBenchmark,
  summary,
  type BenchPolicy,
  type BenchProgress,
  type BenchReport,
} from '../benchmark';
import { benchChart } from '../charts';
import type { KsmSettings } from '../control';
import { UsageError, parseCount, parseDuration, str, type Options, type Values } from './args';
import { formatBytes, formatSeconds, table } from './format';

export const BENCH_USAGE =
  'node-ksm bench [--workers 4] [--mib 256] [--policies default,1000,10000,100000,advisor,autotune]\n' +
  '               [--runs 1] [--limit 3m] [--idle 10s] [--target-scan-time 2] [--json FILE|-] [--svg FILE]\n' +
  '  Each policy: K workers fill N MiB each of the same pages; time until 95 % are merged, bytes saved,\n' +
  '  ksmd CPU while merging and over --idle after. Numbers are pages_to_scan with sleep 0; advisor is\n' +
  '  the scan-time advisor with --target-scan-time. --limit caps each policy; --runs repeats them all\n' +
  '  (alternating the order) and reports medians. Changes the machine-wide\n' +
  '  KSM settings while it runs (other KSM users see them) and restores them all at the end.';

/** `--json` takes a file here (the issue's `--json FILE`); `-` prints the JSON instead of the table. */
export const BENCH_OPTIONS: Options = {
  workers: { type: 'string', short: 'k' },
  mib: { type: 'string', short: 'm' },
  policies: { type: 'string' },
  limit: { type: 'string' },
  runs: { type: 'string' },
  idle: { type: 'string' },
  'target-scan-time': { type: 'string' },
  json: { type: 'string' },
  svg: { type: 'string' },
};

export interface BenchArgs {
  workers: number;
  mib: number;
  policies: string[];
  limitMs: number;
  runs: number;
  idleMs: number;
  advisorTargetScanTime: number;
  jsonFile?: string;
  svgFile?: string;
}

export function benchArgs(v: Values): BenchArgs {
  const policies = (str(v, 'policies') ?? DEFAULT_POLICIES.join(','))
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  for (const p of policies) {
    if (!['default', 'advisor', 'autotune'].includes(p) && !/^[1-9]\d*$/.test(p)) {
      throw new UsageError(`--policies: "${p}" is not default, advisor, autotune or a pages_to_scan number`);
    }
  }
  if (policies.length === 0) throw new UsageError('--policies needs at least one policy');
  const workers = parseCount(str(v, 'workers') ?? '4', 'workers', 2);
  if (workers > 256) throw new UsageError('--workers must be at most 256 (max_page_sharing)');
  return {
    workers,
    mib: parseCount(str(v, 'mib') ?? '256', 'mib', 1),
    policies,
    limitMs: parseDuration(str(v, 'limit') ?? '3m', 'limit'),
    runs: parseCount(str(v, 'runs') ?? '1', 'runs', 1),
    idleMs: parseDuration(str(v, 'idle') ?? '10s', 'idle'),
    advisorTargetScanTime: parseCount(str(v, 'target-scan-time') ?? '2', 'target-scan-time', 1),
    jsonFile: str(v, 'json'),
    svgFile: str(v, 'svg'),
  };
}

const pct = (n: number) => `${n.toFixed(1)} %`;

export function renderBench(report: BenchReport): string {
  const rows = [['policy', 'merged 95 % in', 'saved', 'ksmd CPU merging', 'ksmd CPU idle', 'merged']];
  for (const r of report.results) {
    rows.push([
      r.policy,
      r.mergeSeconds === null ? `> ${formatSeconds(report.limitMs / 1000)}` : formatSeconds(r.mergeSeconds),
      formatBytes(r.savedBytes),
      pct(r.mergeCpuPercent),
      pct(r.idleCpuPercent),
      `${(r.mergedRatio * 100).toFixed(1)} %`,
    ]);
  }
  const notes = report.results
    .filter((r) => r.disturbed)
    .map((r) => `! ${r.policy}: settings changed during the run (${r.disturbed}); its figures are suspect.`);
  return [
    `${report.workers} workers x ${report.mib} MiB of identical pages${report.runs > 1 ? `, median of ${report.runs} runs` : ''}. ksmd CPU in % of one core (clock ticks: ${report.clockTicks.source});`,
    `idle: over the ${formatSeconds(report.idleMs / 1000)} after merging finished (no merges for 1 s). Changing global settings: other KSM users saw these policies.`,
    ...table(rows),
    ...notes,
  ].join('\n');
}

/** What a policy is, in the words of the kernel's knobs, for the chart's legend. */
export function describePolicy(policy: BenchPolicy, settings?: KsmSettings): string {
  if (policy === 'default') return 'kernel default (100 pages / 20 ms)';
  if (policy === 'advisor') return `kernel advisor (${settings?.advisorTargetScanTime ?? 2} s target)`;
  if (policy === 'autotune') return 'node-ksm autotune';
  return `pages_to_scan ${policy}, sleep 0`;
}

/** The bench chart: memory saved and ksmd CPU over time per policy, in two aligned panels. */
export function benchSvg(report: BenchReport): string {
  const runs = report.runs > 1 ? `median of ${report.runs} runs` : 'one run';
  return benchChart({
    title: `Scanner policies: ${report.workers} workers × ${report.mib} MiB of identical pages`,
    subtitle: `${runs}; merge target 95 % of the pages; idle: the ${report.idleMs / 1000} s after merging; Linux ${os.release()}, ${os.availableParallelism()} CPUs`,
    series: report.results.map((r) => ({
      name: describePolicy(r.policy, r.settings),
      samples: r.samples,
      mergeSeconds: r.mergeSeconds,
      idleCpuPercent: r.idleCpuPercent,
    })),
  });
}

function progressLine(p: BenchProgress): string {
  const head = `[${p.index + 1}/${p.of}] ${p.policy}`;
  if (p.phase === 'cleanup' || p.phase === 'filling') return `${head}: ${p.phase}`;
  const width = 20;
  const filled = Math.round(Math.min(1, p.mergedRatio) * width);
  return `${head}: ${p.phase} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(p.mergedRatio * 100).toFixed(0)} % merged, ${formatSeconds(p.elapsedMs / 1000)}, ksmd ${p.cpuPercent.toFixed(0)} %`;
}

/**
 * Runs the bench and reports it: the table on stdout (or the JSON with `--json -`), the
 * JSON array and the SVG to their files, progress on stderr.
 */
export async function benchCommand(
  v: Values,
  signal: AbortSignal,
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WriteStream = process.stderr,
): Promise<BenchReport> {
  const a = benchArgs(v);
  const tty = err.isTTY === true;
  let lastPhase = '';
  const report = await runBenchmark({
    workers: a.workers,
    mib: a.mib,
    policies: a.policies,
    limitMs: a.limitMs,
    runs: a.runs,
    idleMs: a.idleMs,
    advisorTargetScanTime: a.advisorTargetScanTime,
    signal,
    onProgress: (p) => {
      const key = `${p.index}:${p.phase}`;
      if (tty) err.write(`\r\x1b[K${progressLine(p)}`);
      else if (key !== lastPhase) err.write(`${progressLine(p)}\n`);
      lastPhase = key;
    },
  }).finally(() => {
    if (tty) err.write('\r\x1b[K');
  });
  const json = `${JSON.stringify(summary(report), null, 2)}\n`;
  if (a.jsonFile !== undefined && a.jsonFile !== '-') fs.writeFileSync(a.jsonFile, json);
  if (a.svgFile !== undefined) fs.writeFileSync(a.svgFile, benchSvg(report));
  if (a.jsonFile === '-') out.write(json);
  else out.write(`${renderBench(report)}\n`);
  return report;
}
