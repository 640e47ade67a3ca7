// Arena vs Buffer.allocUnsafeSlow vs one mapping per buffer (lib/memory.ts alloc), for
// 16 KiB buffers. Each side runs in its own fresh child process (bench/arena-child.mjs),
// the sides take turns for several rounds, and each is reported as a ratio
// to allocUnsafeSlow measured in the same run. Needs the compiled library:
//   npm run build:ts && node bench/arena.mjs [--rounds 5] [--ops 100000]
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
if (!existsSync(new URL('../dist/arena.js', import.meta.url))) {
  console.error('bench/arena: dist/arena.js is missing; run "npm run build:ts" first');
  process.exit(1);
}
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const rounds = arg('rounds', 5);
const ops = arg('ops', 100_000);
const sides = ['allocUnsafeSlow', 'alloc', 'arena', 'arenaUnsafe', 'mmap'];

function child(...args) {
  const out = execFileSync(process.execPath, ['--expose-gc', `${here}arena-child.mjs`, ...args.map(String)], {
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  return JSON.parse(out.trim().split('\n').pop());
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const speed = {};
// Ratios are taken within a round (the sides of one round run back to back), then the
// median over rounds: a machine whose speed drifts between rounds moves both sides of a
// ratio alike.
const roundRatios = {};
for (const mode of ['fill', 'bare']) {
  const samples = Object.fromEntries(sides.map((s) => [s, []]));
  for (let r = 0; r < rounds; r++) {
    // Rotate the order so no side always runs first (or last) on a busy machine.
    for (let k = 0; k < sides.length; k++) {
      const side = sides[(k + r) % sides.length];
      // One mapping per buffer is ~10x slower: fewer operations keep the run short.
      samples[side].push(child('speed', side, mode, side === 'mmap' ? Math.ceil(ops / 5) : ops).nsPerOp);
    }
  }
  speed[mode] = Object.fromEntries(sides.map((s) => [s, median(samples[s])]));
  roundRatios[mode] = (a, b) => median(samples[a].map((x, i) => x / samples[b][i]));
}

console.log(
  `16 KiB buffers, 1,024 live in a ring, yielding to the event loop every 1,024 operations; each side in a fresh\n` +
    `process, ${rounds} rounds; times are medians, ratios the median of each round's ratio`,
);
console.log(`Node ${process.version}`);
// Like for like: arena.alloc zero-fills (as Buffer.alloc does), arena.allocUnsafe does not
// (as allocUnsafeSlow does not).
const cols = [
  ['allocUnsafeSlow', 'allocUnsafeSlow'],
  ['Buffer.alloc', 'alloc'],
  ['arena.alloc', 'arena'],
  ['arena.allocUnsafe', 'arenaUnsafe'],
  ['alloc (mmap)', 'mmap'],
];
const ratios = [
  ['allocUnsafe/unsafeSlow', 'arenaUnsafe', 'allocUnsafeSlow'],
  ['alloc/Buffer.alloc', 'arena', 'alloc'],
  ['alloc/unsafeSlow', 'arena', 'allocUnsafeSlow'],
  ['alloc/mmap', 'arena', 'mmap'],
];
console.log(
  `alloc + release (ns per op)       ${cols.map(([h]) => h.padStart(18)).join('')}${ratios.map(([h]) => h.padStart(24)).join('')}`,
);
for (const [mode, label] of [
  ['fill', 'with a 16 KiB write'],
  ['bare', 'without touching the memory'],
]) {
  const s = speed[mode];
  console.log(
    `  ${label.padEnd(31)}${cols.map(([, k]) => s[k].toFixed(0).padStart(18)).join('')}` +
      ratios.map(([, a, b]) => `${roundRatios[mode](a, b).toFixed(2)}x`.padStart(24)).join(''),
  );
}
console.log('\nSteady state: 20,000 live buffers of 16 KiB after 100,000 random release+alloc (+ 16 KiB write)');
console.log(
  '  side              process RssAnon over live pages   arena chunks RSS (+ allocator metadata) over live pages',
);
const memory = {};
for (const side of sides.filter((s) => s !== 'arenaUnsafe')) {
  memory[side] = child('memory', side);
  const m = memory[side];
  console.log(
    `  ${side.padEnd(16)} ${`${(m.processOverhead * 100).toFixed(2)} %`.padStart(20)} ${m.chunkOverhead === undefined ? '' : `${(m.chunkOverhead * 100).toFixed(2)} % (+ ${(m.metadataOverhead * 100).toFixed(2)} %)`.padStart(32)}`,
  );
}
console.log('  (process RssAnon also holds the V8 heap: Buffer objects and churn garbage, alike for all sides)');
if (memory.arena.stats) console.log(`  arena stats: ${JSON.stringify(memory.arena.stats)}`);
const ratioTable = Object.fromEntries(
  ['fill', 'bare'].map((mode) => [mode, Object.fromEntries(ratios.map(([h, a, b]) => [h, roundRatios[mode](a, b)]))]),
);
console.log(JSON.stringify({ speed, ratios: ratioTable, memory }));
