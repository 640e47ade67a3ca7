// Arena and alloc against the Buffer baselines, pattern by pattern, on several Node
// versions. Every side of every pattern runs in its own fresh child process
// (bench/arena-child.mts), writes each buffer it gets whole, and takes turns with the
// other sides for several rounds (the order rotates each round, so no side is always
// first or last on a busy machine); a ratio is taken between the sides of one round and
// the median over rounds reported, so a machine whose speed drifts moves both sides alike.
//
// Patterns (16 KiB buffers unless said): request = live set 0<->1, one allocation per
// event-loop turn; batch-N = N allocated, then all N given back; ring-20000 = 20,000 live,
// each operation gives back the oldest; random = a ring of 256 with sizes log-uniform
// from 1 KiB to 1 MiB. All but request yield to the event loop every 1,024 operations.
// Sides: Arena allocUnsafe and alloc (zeroed), node-ksm alloc (a mapping per buffer),
// Buffer.allocUnsafeSlow and Buffer.alloc (given back by dropping them for the GC).
// Like for like: allocUnsafe against allocUnsafeSlow (neither zeroes), alloc against
// Buffer.alloc (both zero).
//
// Then, on this Node: memory at steady state (20,000 x 16 KiB under random churn), and
// how much of 1 GiB released at once an arena still holds after 10 s idle.
//
//   npm run build:ts && node --import tsx bench/arena.mts [--nodes 20,24,26] [--rounds 5]
//     [--ops 100000] [--patterns request,batch-64] [--sides ...] [--metric wall|cpu]
//     [--no-memory | --no-speed] [--json FILE]
// --metric cpu compares the CPU time of each side's process (all its threads) instead of
// wall time: on a machine other work is loading, it moves less.
// A Node version other than this process's comes from scripts/node-dist.sh (the official
// build, from the npm registry); the addon is Node-API, so one build serves them all.
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { PATTERNS, SIDES, type Pattern, type Side } from './arena-child.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const CHILD = fileURLToPath(new URL('arena-child.mts', import.meta.url));
if (!existsSync(new URL('../dist/arena.js', import.meta.url))) {
  console.error('bench/arena: dist/arena.js is missing; run "npm run build:ts" first');
  process.exit(1);
}

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '20,24,26' },
    rounds: { type: 'string', default: '5' },
    ops: { type: 'string', default: '100000' },
    patterns: { type: 'string', default: PATTERNS.join(',') },
    sides: { type: 'string', default: SIDES.join(',') },
    metric: { type: 'string', default: 'wall' },
    'no-memory': { type: 'boolean', default: false },
    'no-speed': { type: 'boolean', default: false },
    'idle-mib': { type: 'string', default: '1024' },
    json: { type: 'string' },
  },
});
const rounds = Number(values.rounds);
const baseOps = Number(values.ops);
const patterns = values.patterns.split(',') as Pattern[];
const sides = values.sides.split(',') as Side[];
for (const p of patterns) if (!PATTERNS.includes(p)) throw new Error(`unknown pattern ${p}: ${PATTERNS.join(', ')}`);
for (const s of sides) if (!SIDES.includes(s)) throw new Error(`unknown side ${s}: ${SIDES.join(', ')}`);
if (values.metric !== 'wall' && values.metric !== 'cpu') throw new Error('--metric is wall or cpu');
const metric = values.metric === 'cpu' ? 'cpuNsPerOp' : 'nsPerOp';

/** The node binary of a major version: this one, or the official build. */
function nodeBinary(major: string): string {
  if (process.versions.node.split('.')[0] === major) return process.execPath;
  return execFileSync('bash', [`${root}scripts/node-dist.sh`, major], { encoding: 'utf8' }).trim();
}

function child(node: string, ...args: (string | number)[]): Record<string, unknown> {
  const out = execFileSync(node, ['--expose-gc', '--import', 'tsx', CHILD, ...args.map(String)], {
    cwd: root,
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  return JSON.parse(out.trim().split('\n').pop()!) as Record<string, unknown>;
}

/** Fewer operations where one costs ten times more, to keep each child near a second. */
function opsFor(pattern: Pattern, side: Side): number {
  let ops = baseOps;
  if (pattern === 'random') ops /= 8;
  if (side === 'alloc') ops /= 10;
  return Math.ceil(ops);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const PAIRS: [string, Side, Side][] = [
  ['Arena allocUnsafe / Buffer.allocUnsafeSlow', 'arena.allocUnsafe', 'allocUnsafeSlow'],
  ['Arena alloc / Buffer.alloc', 'arena.alloc', 'Buffer.alloc'],
  ['alloc (a mapping each) / Buffer.alloc', 'alloc', 'Buffer.alloc'],
];
const LABEL: Record<Pattern, string> = {
  request: 'request (live 0↔1, a turn each)',
  'batch-1': 'batch of 1',
  'batch-64': 'batches of 64',
  'batch-1024': 'batches of 1,024',
  'ring-20000': 'ring of 20,000',
  random: 'random 1 KiB–1 MiB, ring of 256',
};

type Samples = Record<string, Partial<Record<Side, number[]>>>;
const results: Record<string, { version: string; ns: Samples }> = {};
const started = Date.now();
for (const major of values['no-speed'] ? [] : values.nodes.split(',')) {
  const node = nodeBinary(major);
  const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
  const ns: Samples = {};
  for (const pattern of patterns) {
    const samples: Partial<Record<Side, number[]>> = {};
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < sides.length; k++) {
        const side = sides[(k + r) % sides.length]!;
        const res = child(node, 'speed', pattern, side, opsFor(pattern, side));
        (samples[side] ??= []).push(res[metric] as number);
      }
    }
    ns[pattern] = samples;
    process.stderr.write(`${version} ${pattern}: done (${Math.round((Date.now() - started) / 1000)} s)\n`);
  }
  results[major] = { version, ns };
}

const majors = Object.keys(results);
const us = (x: number): string => (x / 1000).toFixed(x < 10_000 ? 2 : 1);
if (majors.length > 0)
  console.log(
    `\nEach side in a fresh process, ${rounds} rounds, sides rotating; every buffer written whole. ` +
      `Cells: median of the per-round ratios (median µs per operation, this side / baseline), ` +
      `${metric === 'cpuNsPerOp' ? 'CPU time of each process' : 'wall time'}.`,
  );
const ratioTable: Record<string, Record<string, Record<string, number>>> = {};
for (const [title, a, b] of PAIRS) {
  if (majors.length === 0 || !sides.includes(a) || !sides.includes(b)) continue;
  console.log(`\n${title}`);
  console.log(`| pattern | ${majors.map((m) => `Node ${results[m]!.version.slice(1)}`).join(' | ')} |`);
  console.log(`|---|${majors.map(() => '---|').join('')}`);
  ratioTable[title] = {};
  for (const pattern of patterns) {
    const cells = majors.map((m) => {
      const s = results[m]!.ns[pattern]!;
      const ratio = median(s[a]!.map((x, i) => x / s[b]![i]!));
      (ratioTable[title]![pattern] ??= {})[m] = ratio;
      return `${ratio.toFixed(2)}× (${us(median(s[a]!))} / ${us(median(s[b]!))})`;
    });
    console.log(`| ${LABEL[pattern]} | ${cells.join(' | ')} |`);
  }
}

let memory: Record<string, unknown> | undefined;
if (!values['no-memory']) {
  console.log(
    `\nNode ${process.version}: steady state, 20,000 live buffers of 16 KiB after 100,000 random release+alloc`,
  );
  console.log('| side | process RssAnon over live pages | arena chunks RSS (+ allocator metadata) over live pages |');
  console.log('|---|---|---|');
  memory = {};
  for (const side of ['allocUnsafeSlow', 'Buffer.alloc', 'arena.alloc', 'alloc'] as const) {
    const m = child(process.execPath, 'memory', side);
    memory[side] = m;
    const pct = (x: unknown): string => `${((x as number) * 100).toFixed(2)} %`;
    const chunks = m.chunkOverhead === undefined ? '' : `${pct(m.chunkOverhead)} (+ ${pct(m.metadataOverhead)})`;
    console.log(`| ${side} | ${pct(m.processOverhead)} | ${chunks} |`);
  }
  const mib = Number(values['idle-mib']);
  const idle = child(process.execPath, 'idle', mib, 10);
  memory.idle = idle;
  const samples = idle.samples as { s: number; resident: number; dirty: number }[];
  console.log(
    `\nIdle: ${mib} MiB of 16 KiB arena buffers (default options) released at once; arena chunks resident, MiB, ` +
      `by second: ${samples.map((x) => (x.resident / 2 ** 20).toFixed(1)).join(' ')}` +
      `\n  after 10 s: ${((idle.residentShare as number) * 100).toFixed(2)} % of ${mib} MiB (goal ≤ 2 %)`,
  );
}

if (values.json) {
  writeFileSync(values.json, JSON.stringify({ rounds, metric, results, ratios: ratioTable, memory }, null, 2));
}
