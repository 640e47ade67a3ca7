/**
 * What bench/merge-vs-c.mts and bench/policies.mts share: the C baseline, the machine-wide
 * test lock, a guard that puts every KSM knob back, and a sampler of the kernel's own
 * counters that says where the time of a merge went.
 *
 * Both benchmarks change /sys/kernel/mm/ksm, which is global to the machine. They hold
 * the test lock (/run/node-ksm/tests.lock, the one test/helpers/ksm.ts takes) so that test
 * runs neither disturb the figures nor are disturbed, and they use the test harness's own
 * raw snapshot/restore (test/helpers/sysfs.ts), which does not depend on the code being
 * measured. While they run, the snapshot is also on disk where the test harness looks for
 * it, so a benchmark killed with SIGKILL is put right by the next holder of the lock.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { restore, snapshot, type Snapshot } from '../test/helpers/sysfs.js';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '..');
export const CBIN = path.join(here, 'bin/merge');
const KSM = '/sys/kernel/mm/ksm';
const LOCK_DIR = '/run/node-ksm';
const LOCK_FILE = `${LOCK_DIR}/tests.lock`;
const SNAPSHOT_FILE = `${LOCK_DIR}/tests.snapshot.json`;

/** Compiles bench/merge.c into bench/bin/merge. */
export function compileC(): void {
  fs.mkdirSync(path.dirname(CBIN), { recursive: true });
  execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-o', CBIN, path.join(here, 'merge.c')], { stdio: 'inherit' });
}

/** dist/ is what `import ... from 'node-ksm'` loads: it must be there and not older than lib/. */
export function checkDist(): void {
  const built = path.join(root, 'dist/index.js');
  if (!fs.existsSync(built)) throw new Error('dist/ is missing: run "npm run build:ts" first');
  const newest = fs
    .readdirSync(path.join(root, 'lib'), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .reduce((t, f) => Math.max(t, fs.statSync(path.join(root, 'lib', f)).mtimeMs), 0);
  if (newest > fs.statSync(built).mtimeMs) {
    process.stderr.write('warning: lib/ is newer than dist/: run "npm run build:ts" to measure the current code\n');
  }
}

/** Wall-clock milliseconds with sub-millisecond precision, comparable across processes. */
export const epochMs = (): number => performance.timeOrigin + performance.now();

export const median = (xs: readonly number[]): number => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length === 0
    ? NaN
    : v.length % 2 === 1
      ? v[(v.length - 1) / 2]!
      : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};

/**
 * Takes the machine-wide test lock, through util-linux flock(1) in a child that holds it
 * until its stdin closes (when this process lets go or dies, however it dies). Then does
 * what the test harness does on taking it: a snapshot left on disk means its writer died
 * with the scanner changed, and is written back first.
 */
export async function lockTests(): Promise<() => void> {
  fs.mkdirSync(LOCK_DIR, { recursive: true });
  const slow = setTimeout(() => process.stderr.write(`waiting for ${LOCK_FILE} (a test run holds it) ...\n`), 2000);
  const holder = spawn('flock', ['-x', LOCK_FILE, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    readline.createInterface({ input: holder.stdout }).once('line', () => resolve());
    holder.once('exit', (code) => reject(new Error(`flock exited (${code}) before taking ${LOCK_FILE}`)));
    holder.once('error', reject);
  }).finally(() => clearTimeout(slow));
  if (fs.existsSync(SNAPSHOT_FILE)) {
    restore(JSON.parse(fs.readFileSync(SNAPSHOT_FILE, 'utf8')) as Snapshot);
    fs.rmSync(SNAPSHOT_FILE, { force: true });
    process.stderr.write(`a test process died holding changed KSM settings; restored them from ${SNAPSHOT_FILE}\n`);
  }
  return () => holder.stdin.end();
}

/**
 * Runs `fn` under the test lock with every writable knob put back afterwards, also on
 * SIGINT/SIGTERM; fails (exit code 1) if anything still differs at the end.
 */
export async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  const unlock = await lockTests();
  const before = snapshot();
  fs.writeFileSync(SNAPSHOT_FILE, JSON.stringify(before));
  const children = new Set<ChildProcess>();
  trackChildren = children;
  const onSignal = (sig: NodeJS.Signals) => {
    for (const c of children) c.kill('SIGKILL');
    restore(before);
    fs.rmSync(SNAPSHOT_FILE, { force: true });
    unlock();
    process.kill(process.pid, sig);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await fn();
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const c of children) c.kill('SIGKILL');
    restore(before);
    const after = snapshot();
    fs.rmSync(SNAPSHOT_FILE, { force: true });
    unlock();
    const changed = Object.keys(before).filter((k) => before[k] !== after[k]);
    if (changed.length > 0) {
      process.stderr.write(`KSM settings differ after the benchmark: ${changed.join(', ')}\n`);
      process.exitCode = 1;
    }
  }
}

let trackChildren: Set<ChildProcess> | undefined;

export interface Child {
  proc: ChildProcess;
  /** The first JSON line the child prints. */
  result: Promise<Record<string, unknown>>;
  /** Resolves when it has exited (rejects on a non-zero exit). */
  exited: Promise<void>;
}

/** Spawns a child whose stdout carries JSON lines; its stdin stays open until `end()`. */
export function start(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Child {
  const proc = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'inherit'] });
  trackChildren?.add(proc);
  let stdout = '';
  const result = new Promise<Record<string, unknown>>((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      stdout += `${line}\n`;
      if (line.startsWith('{')) resolve(JSON.parse(line) as Record<string, unknown>);
    });
    proc.once('exit', (code, sig) => reject(new Error(`${cmd} exited (${code ?? sig}) without a result: ${stdout}`)));
  });
  const exited = new Promise<void>((resolve, reject) => {
    proc.once('exit', (code, sig) => {
      trackChildren?.delete(proc);
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} exited (${code ?? sig})`));
    });
  });
  result.catch(() => {});
  exited.catch(() => {});
  return { proc, result, exited };
}

/** Runs a child to its end and returns its JSON line. */
export async function run(cmd: string, args: readonly string[], env?: NodeJS.ProcessEnv) {
  const c = start(cmd, args, env);
  c.proc.stdin!.end();
  const [r] = await Promise.all([c.result, c.exited]);
  return r;
}

const readNumber = (file: string): number => {
  try {
    return Number.parseInt(fs.readFileSync(file, 'utf8'), 10);
  } catch {
    return NaN;
  }
};

export interface Sample {
  /** epochMs() of the sample. */
  t: number;
  fullScans: number;
  pagesScanned: number;
  pagesToScan: number;
  /** The watched process's ksm_rmap_items, ksm_merging_pages and ksm_zero_pages (NaN before it exists). */
  rmapItems: number;
  merging: number;
  zero: number;
}

/**
 * Reads the kernel's counters every `periodMs` (the scanner's full_scans, pages_scanned,
 * pages_to_scan, and one process's ksm_stat) and keeps them, for lining up what ksmd did
 * with what a process saw. Costs about 100 µs of CPU per sample: only for the phase view.
 */
export class Sampler {
  readonly samples: Sample[] = [];
  private pid = 0;
  private running = false;
  private loop: Promise<void> | undefined;
  constructor(readonly periodMs = 2) {}

  watch(pid: number): void {
    this.pid = pid;
  }

  sample(): Sample {
    let rmapItems = NaN;
    let merging = NaN;
    let zero = NaN;
    if (this.pid > 0) {
      try {
        const text = fs.readFileSync(`/proc/${this.pid}/ksm_stat`, 'utf8');
        const field = (name: string) => Number(new RegExp(`^${name}\\s+(-?\\d+)`, 'm').exec(text)?.[1] ?? NaN);
        rmapItems = field('ksm_rmap_items');
        merging = field('ksm_merging_pages');
        zero = field('ksm_zero_pages');
        if (Number.isNaN(merging)) merging = readNumber(`/proc/${this.pid}/ksm_merging_pages`);
      } catch {
        // not started yet, or gone
      }
    }
    const s: Sample = {
      t: epochMs(),
      fullScans: readNumber(`${KSM}/full_scans`),
      pagesScanned: readNumber(`${KSM}/pages_scanned`),
      pagesToScan: readNumber(`${KSM}/pages_to_scan`),
      rmapItems,
      merging,
      zero: Number.isNaN(zero) ? 0 : Math.max(0, zero),
    };
    this.samples.push(s);
    return s;
  }

  start(): void {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        this.sample();
        await sleep(this.periodMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }

  /** The first sample at or after `from` that satisfies `test`. */
  first(test: (s: Sample) => boolean, from = -Infinity): Sample | undefined {
    return this.samples.find((s) => s.t >= from && test(s));
  }
}

/**
 * Where one merge's time went, from the sampler's view of the kernel's counters:
 * - setup: from the start (the madvise, or the waitForMerge call) until the boost was in
 *   force (pages_to_scan at its boosted value);
 * - reach: until ksmd first visited the memory (its rmap items appeared: a new mm goes in
 *   behind ksmd's cursor, so this is the rest of the scan in progress, over everything else);
 * - first pass: until every page had its rmap item (ksmd records each page's checksum and
 *   merges nothing on its first visit);
 * - merge pass: until `ratio` of the pages were merged (the second visit merges);
 * - confirm: until the waiting side said so (its polling period and its own checks).
 * Each phase also counts the full scans that ended in it.
 */
export interface Phases {
  setup: number;
  reach: number;
  firstPass: number;
  mergePass: number;
  confirm: number;
  scans: { reach: number; firstPass: number; mergePass: number; confirm: number };
}

export function phases(s: Sampler, t0: number, t1: number, pages: number, want: number, boosted: number): Phases {
  const at = (x: Sample | undefined, fallback: Sample) => x ?? fallback;
  const last = s.samples.at(-1)!;
  const boost = at(
    s.first((x) => x.pagesToScan === boosted, t0),
    last,
  );
  const reach = at(
    s.first((x) => x.rmapItems > 0, boost.t),
    last,
  );
  const pass = at(
    s.first((x) => x.rmapItems >= pages, reach.t),
    last,
  );
  const target = at(
    s.first((x) => x.merging + x.zero >= want, pass.t),
    last,
  );
  const startScans = at(
    s.first(() => true, t0),
    last,
  ).fullScans;
  const endScans = at(
    s.first(() => true, t1),
    last,
  ).fullScans;
  const ms = (a: number, b: number) => Math.max(0, b - a);
  return {
    setup: ms(t0, Math.min(boost.t, t1)),
    reach: ms(Math.max(t0, boost.t), Math.min(reach.t, t1)),
    firstPass: ms(reach.t, Math.min(pass.t, t1)),
    mergePass: ms(pass.t, Math.min(target.t, t1)),
    confirm: ms(Math.min(target.t, t1), t1),
    scans: {
      reach: reach.fullScans - startScans,
      firstPass: pass.fullScans - reach.fullScans,
      mergePass: target.fullScans - pass.fullScans,
      confirm: endScans - target.fullScans,
    },
  };
}

/** Medians of each phase over several runs. */
export function medianPhases(list: readonly Phases[]): Phases {
  const m = (f: (p: Phases) => number) => median(list.map(f));
  return {
    setup: m((p) => p.setup),
    reach: m((p) => p.reach),
    firstPass: m((p) => p.firstPass),
    mergePass: m((p) => p.mergePass),
    confirm: m((p) => p.confirm),
    scans: {
      reach: m((p) => p.scans.reach),
      firstPass: m((p) => p.scans.firstPass),
      mergePass: m((p) => p.scans.mergePass),
      confirm: m((p) => p.scans.confirm),
    },
  };
}

export function renderPhases(label: string, p: Phases): string {
  const f = (ms: number, scans?: number) =>
    `${ms.toFixed(0).padStart(6)} ms${scans === undefined ? '' : ` (${scans} scans)`}`.padEnd(22);
  return `  ${label.padEnd(28)} setup ${f(p.setup)} reach ${f(p.reach, p.scans.reach)} first pass ${f(p.firstPass, p.scans.firstPass)} merge pass ${f(p.mergePass, p.scans.mergePass)} confirm ${f(p.confirm, p.scans.confirm)}`;
}

/** ksmd's CPU seconds from /proc/<pid>/stat (utime + stime at USER_HZ = 100). */
export function ksmdCpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export function findKsmd(): number {
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/comm`, 'utf8').trim() === 'ksmd') return Number(e);
    } catch {
      // gone
    }
  }
  throw new Error('ksmd is not visible in /proc');
}

/** Page p gets the xorshift stream of (seed, p mod pages/2): the same bytes as merge.c. */
export function fillDuplicates(buf: Uint8Array, seed: number, pageSize: number): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const perPage = pageSize / 4;
  const half = buf.byteLength / pageSize / 2;
  for (let p = 0; p * perPage < words.length; p++) {
    let x = (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul((p % half) + 1, 0x85ebca6b)) >>> 0 || 1;
    for (let i = p * perPage, end = i + perPage; i < end; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
  }
}
