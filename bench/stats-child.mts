// One measurement of bench/stats.mts, in a fresh process so that no run inherits another's
// page tables, heap or warm caches. Prints one JSON line. Measures the compiled library
// (dist/, as it ships): the public entry, and mergingPages(), which only the library's
// own waitForMerge uses, from its module (bench/ may reach compiled internals: see
// .dependency-cruiser.cjs).
import { alloc, bufferStats, pageSize, processStats, systemStats, type BufferStatsOptions } from 'node-ksm';
import { mergingPages } from '../dist/stats.js';

const GiB = 1 << 30;
const mode = process.argv[2];
const ms = (fn: () => unknown) => {
  const t = performance.now();
  fn();
  return performance.now() - t;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const repeat = (n: number, fn: () => unknown) => median(Array.from({ length: n }, () => ms(fn)));

/** Distinct content in every page, as real data has (an xorshift stream per page). */
function fillPages(buf: Buffer): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const perPage = pageSize / 4;
  for (let p = 0; p * perPage < words.length; p++) {
    let x = Math.imul(p + 1, 0x85ebca6b) >>> 0 || 1;
    for (let i = p * perPage, end = i + perPage; i < end; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
  }
}

/** A bufferStats measurement: the method it used, and milliseconds per call. */
export interface Timed {
  method: string;
  ms: number;
}

/** What one child prints, by mode. */
export interface ChildResult {
  mode: string | undefined;
  uid: number;
  ms?: number;
  auto?: Timed;
  pagemap?: Timed;
  kpageflags?: Timed;
  part1MiB?: Timed;
  processStatsUs?: number;
  mergingPagesUs?: number;
  systemStatsUs?: number;
}

const out: ChildResult = { mode, uid: process.getuid!() };
if (mode === 'alloc-memset') {
  out.ms = ms(() => alloc(GiB).fill(0x5a));
} else if (mode === 'alloc-fillpages') {
  out.ms = ms(() => fillPages(alloc(GiB)));
} else if (mode === 'stats') {
  const buf = alloc(GiB);
  buf.fill(0x5a);
  const run = (options: BufferStatsOptions): Timed => {
    const method = bufferStats(buf, options).method;
    return { method, ms: repeat(5, () => bufferStats(buf, options)) };
  };
  out.auto = run({});
  out.pagemap = run({ method: 'pagemap' });
  if (process.getuid!() === 0) out.kpageflags = run({ method: 'kpageflags' });
  // 1 MiB inside the 1 GiB mapping, nothing merged: `mergeable` costs a walk of the whole
  // mapping in smaps (there is no cheaper way to read VmFlags).
  const part = buf.subarray(0, 1 << 20);
  out.part1MiB = { method: bufferStats(part).method, ms: repeat(5, () => bufferStats(part)) };
  const loop = (n: number, fn: () => unknown) =>
    (ms(() => {
      for (let i = 0; i < n; i++) fn();
    }) *
      1000) /
    n;
  out.processStatsUs = loop(2000, () => processStats());
  out.mergingPagesUs = loop(2000, () => mergingPages());
  out.systemStatsUs = loop(500, () => systemStats());
}
console.log(JSON.stringify(out));
