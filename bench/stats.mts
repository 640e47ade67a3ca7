// How much reading the statistics costs, against what making the memory costs.
//
//   npm run bench -- stats      (or: node --import tsx bench/stats.mts [rounds=3])
//
// Each measurement runs in a fresh child process (bench/stats-child.mts), rounds
// interleaved so drift hits both sides alike; figures are medians over the rounds.
// The baseline is alloc(1 GiB) + filling it (memset, the cheapest fill there is; a fill
// with distinct pages is shown too). The gate: bufferStats(1 GiB) takes at most 5 % of
// alloc + memset of the same 1 GiB. Run as root to see the kpageflags method; a round
// as user nobody shows what a process without root pays (pagemap).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ChildResult, Timed } from './stats-child.mjs';

const child = fileURLToPath(new URL('./stats-child.mts', import.meta.url));
// By URL: user nobody's child runs from / and could not resolve the package name.
const tsx = import.meta.resolve('tsx');
const rounds = Number(process.argv[2] ?? 3);
const isRoot = process.getuid!() === 0;

/** A child of mode 'stats': every figure is there. */
type StatsResult = Required<Pick<ChildResult, 'auto' | 'pagemap' | 'part1MiB'>> &
  ChildResult & { processStatsUs: number; mergingPagesUs: number; systemStatsUs: number };

function run(mode: string, asNobody = false): ChildResult {
  const r = spawnSync(process.execPath, ['--import', tsx, child, mode], {
    encoding: 'utf8',
    ...(asNobody ? { uid: 65534, gid: 65534, cwd: '/' } : {}),
  });
  if (r.status !== 0) throw new Error(`${mode} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as ChildResult;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const samples = {
  memset: [] as number[],
  fillPages: [] as number[],
  stats: [] as StatsResult[],
  nobody: [] as StatsResult[],
};
for (let i = 0; i < rounds; i++) {
  samples.memset.push(run('alloc-memset').ms!);
  samples.stats.push(run('stats') as StatsResult);
  samples.fillPages.push(run('alloc-fillpages').ms!);
  if (isRoot) samples.nobody.push(run('stats', true) as StatsResult);
}

const memset = median(samples.memset);
const fillPages = median(samples.fillPages);
const pick = (list: StatsResult[], f: (x: StatsResult) => number) => median(list.map(f));
const rows: Array<Record<string, string>> = [];
const row = (what: string, ms: number, method?: string) =>
  rows.push({
    what,
    method: method ?? '',
    'ms/call': ms.toFixed(2),
    '% of alloc+memset': ((100 * ms) / memset).toFixed(2),
  });
row('alloc(1 GiB) + memset (baseline)', memset);
row('alloc(1 GiB) + distinct pages', fillPages);
const s = samples.stats;
const first = s[0]!;
row(
  'bufferStats(1 GiB), auto',
  pick(s, (x) => x.auto.ms),
  first.auto.method,
);
if (first.kpageflags)
  row(
    'bufferStats(1 GiB), kpageflags',
    pick(s, (x) => (x.kpageflags as Timed).ms),
    'kpageflags',
  );
row(
  `bufferStats(1 GiB), pagemap${isRoot ? ' (as root: kpageflags read too)' : ''}`,
  pick(s, (x) => x.pagemap.ms),
  'pagemap',
);
row(
  'bufferStats(1 MiB of a 1 GiB mapping)',
  pick(s, (x) => x.part1MiB.ms),
  first.part1MiB.method,
);
if (samples.nobody.length) {
  const n = samples.nobody;
  row(
    'as nobody: bufferStats(1 GiB), auto',
    pick(n, (x) => x.auto.ms),
    n[0]!.auto.method,
  );
  row(
    'as nobody: bufferStats(1 GiB), pagemap',
    pick(n, (x) => x.pagemap.ms),
    'pagemap',
  );
}
console.table(rows);
const us = (f: (x: StatsResult) => number) => pick(s, f).toFixed(1);
console.log(
  `processStats(): ${us((x) => x.processStatsUs)} µs/call, mergingPages(): ${us((x) => x.mergingPagesUs)} µs/call, systemStats(): ${us((x) => x.systemStatsUs)} µs/call`,
);

const ratio = pick(s, (x) => x.auto.ms) / memset;
const ok = ratio <= 0.05;
console.log(
  `gate: bufferStats(1 GiB) = ${(100 * ratio).toFixed(2)} % of alloc + memset (limit 5 %): ${ok ? 'pass' : 'FAIL'}`,
);
console.log(
  JSON.stringify({ rounds, memsetMs: memset, fillPagesMs: fillPages, stats: samples.stats, nobody: samples.nobody }),
);
process.exitCode = ok ? 0 : 1;
