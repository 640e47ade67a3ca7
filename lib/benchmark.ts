/**
 * The seed's experiment on one machine, in minutes: K worker processes each fill N MiB
 * of the same data into mergeable memory (like identical VMs), and each scanner policy
 * is timed until 95 % of their pages are merged, with what ksmd's CPU costs while
 * merging and over the idle time after. This changes the machine's global KSM settings
 * while it runs and puts every one of them back afterwards (also on SIGINT/SIGTERM, by
 * the caller aborting the signal); other KSM users on the machine see the policies too.
 * This is `node-ksm/bench`.
 *
 * @module node-ksm/bench
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAutotune, type AutotuneHandle, type AutotuneOptions } from './autotune';
import { native, packageRoot } from './binding';
import { configure, readSettings, type KsmSettings } from './control';
import { KsmError, invalidArgType, validateInteger } from './errors';
import { clockTicks, ksmdCpuSeconds, type ClockTicks } from './ksmd';
import { pageSize } from './memory';
import { parseInteger } from './procfs';
import { KSM_SYSFS } from './stats';

// BenchReport.clockTicks has this type: users of node-ksm/bench can name it.
export type { ClockTicks } from './ksmd';

/** `default`, a pages_to_scan number (with sleep 0), `advisor` or `autotune`. */
export type BenchPolicy = string;
export const DEFAULT_POLICIES: readonly BenchPolicy[] = ['default', '1000', '10000', '100000', 'advisor', 'autotune'];

export interface BenchOptions {
  /** Worker processes (default 4). */
  workers?: number;
  /** MiB each worker fills (default 256). */
  mib?: number;
  policies?: readonly BenchPolicy[];
  /** Merged share that counts as merged (default 0.95). */
  ratio?: number;
  /** Give up merging after this long per policy (default 180 s). */
  limitMs?: number;
  /** The idle window after merging, for ksmd's idle CPU (default 10 s). */
  idleMs?: number;
  /** Runs of each policy, alternating the order; the figures are medians (default 1). */
  runs?: number;
  /** Sampling period (default 100 ms). */
  sampleMs?: number;
  /** advisor_target_scan_time for the advisor policy, seconds (default 2). */
  advisorTargetScanTime?: number;
  /** Options for the autotune policy (stateDir, thresholds). */
  autotune?: AutotuneOptions;
  signal?: AbortSignal;
  onProgress?: (p: BenchProgress) => void;
}

export interface BenchProgress {
  policy: BenchPolicy;
  index: number;
  of: number;
  phase: 'filling' | 'merging' | 'finishing' | 'idle' | 'cleanup';
  elapsedMs: number;
  mergedRatio: number;
  cpuPercent: number;
}

export interface BenchSample {
  /** Seconds since the workers finished filling. */
  t: number;
  mergedPages: number;
  savedBytes: number;
  /** ksmd's share of one core since the previous sample. */
  cpuPercent: number;
}

export interface BenchResult {
  policy: BenchPolicy;
  /** Seconds from "all data in place" until `ratio` of the workers' pages were merged; null when the limit came first. */
  mergeSeconds: number | null;
  /** Bytes KSM saved among the workers when merging finished (present pages minus distinct page frames). */
  savedBytes: number;
  /** ksmd's CPU (% of one core) while merging. */
  mergeCpuPercent: number;
  /** ksmd's CPU (% of one core) over the idle window: `idleMs` from when merging finished (no merges for 1 s after the ratio was reached). */
  idleCpuPercent: number;
  /** Share of the workers' pages merged when merging finished. */
  mergedRatio: number;
  /** Seconds from "all data in place" until merging finished (the idle window starts here). */
  finishedSeconds: number;
  /** Seconds the workers took to fill their memory (the scanner running meanwhile). */
  fillSeconds: number;
  /** The settings the policy ran with (for autotune: its idle settings). */
  settings: KsmSettings;
  /** Runs of this policy the figures are the median of. */
  runs?: number;
  mergeSecondsRuns?: Array<number | null>;
  idleCpuPercentRuns?: number[];
  /** Set when someone else changed the settings during a run: its figures are suspect. */
  disturbed?: string;
  /** Autotune's changes of state, seconds since the data was in place. */
  transitions?: Array<{ t: number; state: string; reason: string }>;
  samples: BenchSample[];
}

export interface BenchReport {
  results: BenchResult[];
  workers: number;
  mib: number;
  pageSize: number;
  /** Runs of each policy. */
  runs: number;
  /** The idle window and the per-policy limit, milliseconds. */
  idleMs: number;
  limitMs: number;
  /** Where the clock-tick rate for ksmd's CPU came from. */
  clockTicks: ClockTicks;
  /** The settings found at the start, and put back at the end. */
  originals: KsmSettings;
}

/** ksmd's CPU seconds: half of what the benchmark measures, so not seeing it is an error. */
function ksmdCpu(): number {
  const s = ksmdCpuSeconds();
  if (s === undefined)
    throw new KsmError('ksmd is not visible in /proc, so its CPU cannot be measured', 'ERR_KSM_UNSUPPORTED');
  return s;
}

/**
 * The worker: plain JavaScript run with `node -e`, loading the same addon as this
 * process. Page p gets a xorshift stream seeded by (seed, p): pages differ within a
 * worker, and every worker holds the same pages, so merging saves (K-1)/K of them. It
 * says "ready" once filled and exits when its stdin closes (the bench, or its parent,
 * went away), so a crashed bench leaves no memory behind.
 */
const WORKER = `
const [addon, bytes, seed, page] = process.argv.slice(1).map((a, i) => (i === 0 ? a : Number(a)));
const b = require(addon);
const t0 = process.hrtime.bigint();
globalThis.mem = b.alloc(bytes, true);
const w = new Uint32Array(globalThis.mem);
const per = page / 4;
for (let p = 0; p * per < w.length; p++) {
  let x = (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(p + 1, 0x85ebca6b)) >>> 0 || 1;
  const end = Math.min(w.length, (p + 1) * per);
  for (let i = p * per; i < end; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; w[i] = x >>> 0; }
}
process.stdout.write('ready ' + Number(process.hrtime.bigint() - t0) / 1e6 + ' ' + b.addressOf(globalThis.mem) + '\\n');
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

function addonPath(): string {
  if (process.env.NODE_KSM_BINARY) return path.resolve(process.env.NODE_KSM_BINARY);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('node-gyp-build') as { path(dir: string): string }).path(packageRoot);
}

export interface Workers {
  pids: number[];
  /** Pages each worker holds. */
  pages: number;
  /** Sum of the workers' ksm_merging_pages. */
  mergedPages(): number;
  /**
   * Pages saved among the workers, exactly: their present pages minus the distinct
   * frames behind them (from /proc/<pid>/pagemap; needs root to see frame numbers).
   * Undefined when the frames are hidden.
   */
  savedPages(): number | undefined;
  kill(): Promise<void>;
}

/** One worker process, and its buffer's address once it says "ready". */
function spawnWorker(addon: string, bytes: number, seed: number): { proc: ChildProcess; address: Promise<bigint> } {
  const p = spawn(process.execPath, ['-e', WORKER, addon, String(bytes), String(seed), String(pageSize)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const address = new Promise<bigint>((resolve, reject) => {
    readline.createInterface({ input: p.stdout }).once('line', (line) => resolve(BigInt(line.split(' ')[2] ?? '0')));
    p.once('exit', (code, sig) =>
      reject(
        new Error(
          `bench worker exited (${code ?? sig}) before it was filled: ${stderr.trim().split('\n').pop() ?? ''}`,
        ),
      ),
    );
    p.once('error', reject);
  });
  return { proc: p, address };
}

/**
 * Starts `count` workers that each fill `mib` MiB with the same pages (seeded by `seed`:
 * a fresh seed per run, so pages left in the stable tree by an earlier run cannot make
 * this one look faster). Resolves once all are filled.
 */
export async function startWorkers(count: number, mib: number, seed: number, signal?: AbortSignal): Promise<Workers> {
  const bytes = mib * 1024 * 1024;
  const addon = addonPath();
  const procs: ChildProcess[] = [];
  let addresses: bigint[] = [];
  const kill = async () => {
    await Promise.all(
      procs.map((p) => {
        if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
        const gone = new Promise<void>((resolve) => p.once('exit', () => resolve()));
        p.kill('SIGKILL');
        return gone;
      }),
    );
  };
  try {
    const ready: Array<Promise<bigint>> = [];
    for (let i = 0; i < count; i++) {
      const w = spawnWorker(addon, bytes, seed);
      procs.push(w.proc);
      ready.push(w.address);
    }
    // The signal's own reason, as every AbortSignal user rejects with. The listener goes
    // once the workers are ready: one signal serves every run of a benchmark.
    let onAbort = (): void => {};
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(signal!.reason as Error);
      if (signal?.aborted) onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    try {
      addresses = await Promise.race([Promise.all(ready), aborted]);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  } catch (err) {
    await kill();
    throw err;
  }
  const pids = procs.map((p) => p.pid!);
  const pages = Math.ceil(bytes / pageSize);
  return {
    pids,
    pages,
    savedPages: () => savedPages(pids, addresses, pages),
    mergedPages: () => {
      let sum = 0;
      for (const pid of pids) {
        try {
          sum += parseInteger(fs.readFileSync(`/proc/${pid}/ksm_merging_pages`, 'utf8')) ?? 0;
        } catch {
          // a worker that died holds nothing merged
        }
      }
      return sum;
    },
    kill,
  };
}

const PFN_MASK = (1n << 55n) - 1n;
const PRESENT = 1n << 63n;

function savedPages(pids: number[], addresses: bigint[], pages: number): number | undefined {
  const frames = new Set<bigint>();
  let present = 0;
  const buf = Buffer.alloc(pages * 8);
  for (const [i, pid] of pids.entries()) {
    let fd: number;
    try {
      fd = fs.openSync(`/proc/${pid}/pagemap`, 'r');
    } catch {
      return undefined;
    }
    try {
      const n = fs.readSync(fd, buf, 0, buf.length, Number((addresses[i]! / BigInt(pageSize)) * 8n));
      for (let off = 0; off + 8 <= n; off += 8) {
        const e = buf.readBigUInt64LE(off);
        if ((e & PRESENT) === 0n) continue;
        const pfn = e & PFN_MASK;
        if (pfn === 0n) return undefined; // frame numbers hidden (not root)
        present++;
        frames.add(pfn);
      }
    } catch {
      return undefined;
    } finally {
      fs.closeSync(fd);
    }
  }
  return present - frames.size;
}

function readCounter(name: string): number {
  try {
    return parseInteger(fs.readFileSync(`${KSM_SYSFS}/${name}`, 'utf8')) ?? 0;
  } catch {
    return 0;
  }
}

/** No merges for this long after the ratio is reached: merging has finished. */
const FINISHED_MS = 1000;

const KERNEL_DEFAULTS: KsmSettings = { pagesToScan: 100, sleepMillisecs: 20, smartScan: 1 };

/** The settings a policy runs with, for the knobs this kernel has. */
export function policySettings(policy: BenchPolicy, current: KsmSettings, advisorTargetScanTime = 2): KsmSettings {
  const base: KsmSettings = { run: 1 };
  if (current.advisorMode !== undefined) base.advisorMode = 'none';
  let s: KsmSettings;
  if (policy === 'default' || policy === 'autotune') s = { ...base, ...KERNEL_DEFAULTS };
  else if (policy === 'advisor') {
    if (current.advisorMode === undefined)
      throw new KsmError('This kernel has no scan-time advisor (Linux 6.8+)', 'ERR_KSM_UNSUPPORTED');
    // smart_scan off as for the fixed policies: the comparison is about the rate, not about skipping.
    s = { run: 1, advisorMode: 'scan-time', advisorTargetScanTime, smartScan: 0 };
  } else if (/^\d+$/.test(policy) && Number(policy) >= 1 && Number(policy) <= 2 ** 32 - 1) {
    s = { ...base, pagesToScan: Number(policy), sleepMillisecs: 0, smartScan: 0 };
  } else {
    const err = new TypeError(`Unknown policy "${policy}": use default, a pages_to_scan number, advisor or autotune`);
    (err as NodeJS.ErrnoException).code = 'ERR_INVALID_ARG_VALUE';
    throw err;
  }
  if (current.smartScan === undefined) delete s.smartScan;
  return s;
}

/** The settings found at start, in a form configure() takes back. */
function restorable(s: KsmSettings): KsmSettings {
  const out = { ...s };
  if (out.advisorMode === 'scan-time') delete out.pagesToScan;
  if (out.run === 2) out.run = 0;
  return out;
}

function validate(options: unknown) {
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const o = options as BenchOptions;
  // Checked as unknown: Array.isArray would otherwise widen the declared type to any[].
  const policies: unknown = o.policies;
  const workers = o.workers === undefined ? 4 : validateInteger(o.workers, 'options.workers', 2, 256);
  const mib = o.mib === undefined ? 256 : validateInteger(o.mib, 'options.mib', 1, 1 << 20);
  if (
    policies !== undefined &&
    (!Array.isArray(policies) || policies.length === 0 || policies.some((p) => typeof p !== 'string'))
  ) {
    throw invalidArgType('options.policies', 'a non-empty array of strings', policies);
  }
  const ratio = o.ratio ?? 0.95;
  if (typeof ratio !== 'number' || !(ratio > 0 && ratio <= 1))
    throw new RangeError(`options.ratio must be > 0 and <= 1 (received ${String(ratio)})`);
  return {
    workers,
    mib,
    policies: [...(o.policies ?? DEFAULT_POLICIES)],
    ratio,
    runs: o.runs === undefined ? 1 : validateInteger(o.runs, 'options.runs', 1, 100),
    limitMs: o.limitMs === undefined ? 180_000 : validateInteger(o.limitMs, 'options.limitMs', 100, 2 ** 31 - 1),
    idleMs: o.idleMs === undefined ? 10_000 : validateInteger(o.idleMs, 'options.idleMs', 0, 2 ** 31 - 1),
    sampleMs: o.sampleMs === undefined ? 100 : validateInteger(o.sampleMs, 'options.sampleMs', 10, 60_000),
    advisorTargetScanTime:
      o.advisorTargetScanTime === undefined
        ? 2
        : validateInteger(o.advisorTargetScanTime, 'options.advisorTargetScanTime', 1),
    autotune: o.autotune,
    signal: o.signal,
    onProgress: o.onProgress,
  };
}

/**
 * Lets ksmd free the rmap items and stable nodes of workers that exited (it does so only
 * when it next visits their mm), so the next policy does not pay for that cleanup.
 */
async function settle(signal?: AbortSignal): Promise<void> {
  const current = readSettings();
  configure({
    ...(current.advisorMode !== undefined ? { advisorMode: 'none' as const } : {}),
    run: 1,
    pagesToScan: 10_000,
    sleepMillisecs: 0,
  });
  const start = readCounter('full_scans');
  const deadline = Date.now() + 10_000;
  while (readCounter('full_scans') < start + 2 && Date.now() < deadline && !signal?.aborted) await sleep(20);
}

/** Workers and the autotune handle a policy holds while it runs, for cleanup on any exit. */
interface Held {
  workers?: Workers;
  tuner?: AutotuneHandle;
}

type Validated = ReturnType<typeof validate>;
type Progress = (phase: BenchProgress['phase'], elapsedMs: number, mergedRatio: number, cpuPercent: number) => void;

/**
 * Runs each policy in turn and measures it. Every setting found at the start is put
 * back at the end, whether the run completes, fails or is aborted through `signal`.
 */
export async function runBenchmark(options: BenchOptions = {}): Promise<BenchReport> {
  const o = validate(options);
  native();
  const originals = readSettings();
  for (const p of o.policies) policySettings(p, originals, o.advisorTargetScanTime);
  const results: BenchResult[] = [];
  const held: Held = {};
  try {
    // Later rounds run the policies in reverse order, so a drift in the machine's load
    // does not always favour the same ones.
    const order = Array.from({ length: o.runs }, (_, r) =>
      r % 2 === 0 ? o.policies : [...o.policies].reverse(),
    ).flat();
    for (const [index, policy] of order.entries()) {
      if (o.signal?.aborted) throw o.signal.reason;
      const progress: Progress = (phase, elapsedMs, mergedRatio, cpuPercent) =>
        o.onProgress?.({ policy, index, of: order.length, phase, elapsedMs, mergedRatio, cpuPercent });
      results.push(await runPolicy(o, policy, originals, held, progress));
    }
    await settle(o.signal);
  } finally {
    await held.tuner?.stop().catch(() => {});
    await held.workers?.kill();
    configure(restorable(originals));
  }
  return {
    results: aggregate(results),
    workers: o.workers,
    mib: o.mib,
    runs: o.runs,
    idleMs: o.idleMs,
    limitMs: o.limitMs,
    pageSize,
    clockTicks: clockTicks(),
    originals,
  };
}

/** One policy: clean slate, its settings, workers filled, merging measured, all torn down. */
async function runPolicy(
  o: Validated,
  policy: BenchPolicy,
  originals: KsmSettings,
  held: Held,
  progress: Progress,
): Promise<BenchResult> {
  progress('cleanup', 0, 0, 0);
  await settle(o.signal);
  configure(restorable(originals));
  const settings = policySettings(policy, readSettings(), o.advisorTargetScanTime);
  configure(settings);
  // Someone else changing the settings mid-run (a test or a tune elsewhere) spoils the
  // figures; it is seen and reported rather than averaged in.
  const applied = watchedSettings(readSettings(), policy);
  const transitions: Array<{ at: number; state: string; reason: string }> = [];
  if (policy === 'autotune') {
    held.tuner = startAutotune({
      ...o.autotune,
      onChange: (e) => {
        transitions.push({ at: performance.now(), state: e.state, reason: e.reason });
        o.autotune?.onChange?.(e);
      },
    });
  }
  const fillStart = performance.now();
  progress('filling', 0, 0, 0);
  const workers = await startWorkers(o.workers, o.mib, Date.now() % 1_000_000, o.signal);
  held.workers = workers;
  const t0 = performance.now();
  const m = await measure(o, { policy, applied, workers, tuner: held.tuner, t0 }, progress);
  if (held.tuner) {
    await held.tuner.stop();
    held.tuner = undefined;
  }
  const total = workers.pages * o.workers;
  progress('cleanup', m.lastT * 1000, m.mergedAtEnd / total, 0);
  await workers.kill();
  held.workers = undefined;
  return {
    policy,
    mergeSeconds: m.mergeSeconds === null ? null : +m.mergeSeconds.toFixed(3),
    savedBytes: m.savedAtMerged,
    mergeCpuPercent: +m.mergeCpu.toFixed(1),
    idleCpuPercent: +m.idleCpu.toFixed(1),
    mergedRatio: +(m.mergedAtEnd / total).toFixed(4),
    finishedSeconds: +m.idleStart.toFixed(3),
    fillSeconds: +((t0 - fillStart) / 1000).toFixed(3),
    settings,
    ...(policy === 'autotune'
      ? { transitions: transitions.map(({ at, ...tr }) => ({ t: +((at - t0) / 1000).toFixed(3), ...tr })) }
      : {}),
    ...(m.disturbed !== undefined ? { disturbed: m.disturbed } : {}),
    samples: m.samples,
  };
}

/** What one policy's sampling found, and where it stands while it runs. */
interface Measurement {
  samples: BenchSample[];
  mergeSeconds: number | null;
  mergeCpu: number;
  savedAtMerged: number;
  mergedAtEnd: number;
  /** When the ratio (or the limit) was reached; Infinity before. */
  mergeEnd: number;
  /**
   * "After merging finished": from the last change of the workers' merged pages, once
   * none came for FINISHED_MS (or everything merged); the tail between the ratio and
   * that point belongs to neither figure. Infinity before.
   */
  idleStart: number;
  cpuAtIdle: number;
  cpuStart: number;
  lastCpu: number;
  lastT: number;
  lastMerged: number;
  lastChange: { t: number; cpu: number };
  idleCpu: number;
  disturbed?: string;
}

/** Samples every `sampleMs` until the policy has merged (or hit the limit) and idled for `idleMs`. */
async function measure(
  o: Validated,
  run: { policy: BenchPolicy; applied: KsmSettings; workers: Workers; tuner?: AutotuneHandle; t0: number },
  progress: Progress,
): Promise<Measurement> {
  const { policy, applied, workers, tuner, t0 } = run;
  const total = workers.pages * o.workers;
  const cpuStart = ksmdCpu();
  const m: Measurement = {
    samples: [],
    mergeSeconds: null,
    mergeCpu: 0,
    savedAtMerged: 0,
    mergedAtEnd: 0,
    mergeEnd: Infinity,
    idleStart: Infinity,
    cpuAtIdle: cpuStart,
    cpuStart,
    lastCpu: cpuStart,
    lastT: 0,
    lastMerged: -1,
    lastChange: { t: 0, cpu: cpuStart },
    idleCpu: 0,
  };
  for (;;) {
    await sleep(o.sampleMs, undefined, { signal: o.signal });
    const t = (performance.now() - t0) / 1000;
    const cpu = ksmdCpu();
    const merged = workers.mergedPages();
    // Cheap estimate for every sample (exact once each page is merged across all
    // workers); the result's savedBytes is counted exactly from the page frames.
    const savedBytes = Math.round((merged * (o.workers - 1)) / o.workers) * pageSize;
    const cpuPercent = t > m.lastT ? Math.max(0, ((cpu - m.lastCpu) / (t - m.lastT)) * 100) : 0;
    m.samples.push({ t: +t.toFixed(3), mergedPages: merged, savedBytes, cpuPercent: +cpuPercent.toFixed(1) });
    m.lastCpu = cpu;
    m.lastT = t;
    m.disturbed ??= disturbance(policy, applied, tuner, t);
    if (merged !== m.lastMerged) {
      m.lastMerged = merged;
      m.lastChange = { t, cpu };
    }
    if (m.mergeEnd === Infinity && (merged >= o.ratio * total || t * 1000 >= o.limitMs))
      markMerged(m, o, workers, { t, cpu, merged, savedBytes });
    if (m.mergeEnd !== Infinity && m.idleStart === Infinity) markFinished(m, o, workers, { t, cpu, merged });
    const phase = m.mergeEnd === Infinity ? 'merging' : m.idleStart === Infinity ? 'finishing' : 'idle';
    progress(phase, t * 1000, merged / total, cpuPercent);
    if (m.idleStart !== Infinity && t - m.idleStart >= o.idleMs / 1000) break;
  }
  const idleSeconds = m.lastT - m.idleStart;
  m.idleCpu = idleSeconds > 0 ? ((m.lastCpu - m.cpuAtIdle) / idleSeconds) * 100 : 0;
  return m;
}

/** Why this sample's figures are suspect (someone else changed the settings), if they are. */
function disturbance(
  policy: BenchPolicy,
  applied: KsmSettings,
  tuner: AutotuneHandle | undefined,
  t: number,
): string | undefined {
  if (tuner) {
    return tuner.state === 'overridden' || tuner.state === 'failed'
      ? `${tuner.history.at(-1)?.reason} (at ${t.toFixed(1)} s)`
      : undefined;
  }
  const now = watchedSettings(readSettings(), policy);
  const diff = (Object.keys(applied) as Array<keyof KsmSettings>).filter((k) => now[k] !== applied[k]);
  if (diff.length === 0) return undefined;
  return `${diff.map((k) => `${k} ${applied[k]} -> ${now[k]}`).join(', ')} by someone else at ${t.toFixed(1)} s`;
}

/** The ratio (or the limit) is reached: the merge figures are taken here. */
function markMerged(
  m: Measurement,
  o: Validated,
  workers: Workers,
  s: { t: number; cpu: number; merged: number; savedBytes: number },
): void {
  const total = workers.pages * o.workers;
  if (s.merged >= o.ratio * total) m.mergeSeconds = s.t;
  m.mergeEnd = s.t;
  m.mergeCpu = ((s.cpu - m.cpuStart) / Math.max(s.t, 1e-3)) * 100;
  const exact = workers.savedPages();
  m.savedAtMerged = exact === undefined ? s.savedBytes : exact * pageSize;
  m.mergedAtEnd = s.merged;
  // Not merged within the limit: the window shows what the policy costs meanwhile.
  if (m.mergeSeconds === null) {
    m.idleStart = s.t;
    m.cpuAtIdle = s.cpu;
  }
}

/** After the ratio: merging has finished once all is merged or nothing changed for FINISHED_MS. */
function markFinished(
  m: Measurement,
  o: Validated,
  workers: Workers,
  s: { t: number; cpu: number; merged: number },
): void {
  const total = workers.pages * o.workers;
  const all = s.merged >= total;
  const done = all || s.t - m.lastChange.t >= FINISHED_MS / 1000 || s.t - m.mergeEnd >= o.limitMs / 1000;
  if (!done) return;
  m.idleStart = all ? s.t : m.lastChange.t;
  m.cpuAtIdle = all ? s.cpu : m.lastChange.cpu;
  if (m.mergeSeconds !== null) {
    const exact = workers.savedPages();
    if (exact !== undefined) m.savedAtMerged = exact * pageSize;
    m.mergedAtEnd = s.merged;
  }
}

function watchedSettings(s: KsmSettings, policy: BenchPolicy): KsmSettings {
  const out: KsmSettings = {
    run: s.run,
    sleepMillisecs: s.sleepMillisecs,
    smartScan: s.smartScan,
    advisorMode: s.advisorMode,
  };
  // The advisor moves pages_to_scan itself.
  if (policy !== 'advisor') out.pagesToScan = s.pagesToScan;
  return out;
}

const median = (xs: number[]) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 === 1 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};

/**
 * One record per policy: with several runs, the median of each figure (a policy that
 * missed the limit counts as infinitely slow), and the samples and transitions of the
 * run with the median time to merge.
 */
function aggregate(raw: BenchResult[]): BenchResult[] {
  const byPolicy = new Map<string, BenchResult[]>();
  for (const r of raw) byPolicy.set(r.policy, [...(byPolicy.get(r.policy) ?? []), r]);
  return [...byPolicy.values()].map((runs) => {
    if (runs.length === 1) return { ...runs[0]!, runs: 1 };
    const time = (r: BenchResult) => r.mergeSeconds ?? Infinity;
    const sorted = [...runs].sort((a, b) => time(a) - time(b));
    const mid = sorted[(sorted.length - 1) >> 1]!;
    const m = median(runs.map(time));
    const disturbed = runs.map((r) => r.disturbed).filter((d) => d !== undefined);
    return {
      ...mid,
      mergeSeconds: Number.isFinite(m) ? +m.toFixed(3) : null,
      savedBytes: median(runs.map((r) => r.savedBytes)),
      mergeCpuPercent: +median(runs.map((r) => r.mergeCpuPercent)).toFixed(1),
      idleCpuPercent: +median(runs.map((r) => r.idleCpuPercent)).toFixed(1),
      runs: runs.length,
      mergeSecondsRuns: runs.map((r) => r.mergeSeconds),
      idleCpuPercentRuns: runs.map((r) => r.idleCpuPercent),
      ...(disturbed.length > 0 ? { disturbed: disturbed.join('; ') } : { disturbed: undefined }),
    };
  });
}

/** The JSON the CLI writes: one record per policy with the issue's fields first. */
export function summary(report: BenchReport): Array<Omit<BenchResult, 'samples' | 'settings'>> {
  return report.results.map((r) => {
    const rest: Partial<BenchResult> = { ...r };
    delete rest.samples;
    delete rest.settings;
    return rest as Omit<BenchResult, 'samples' | 'settings'>;
  });
}

export { benchChart, type BenchChartInput, type BenchChartSample, type BenchChartSeries } from './charts';
