// npm run bench [-- name ...]: every benchmark in turn (or the named ones), one at a
// time so that none measures on a machine another one is loading. Each compares against
// a baseline measured in the same run, each side in its own fresh process; see the
// header of each script for what it measures and its flags.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const BENCHES = [
  ['alloc', 'alloc.mjs', 'alloc+fill+free vs Buffer.allocUnsafeSlow+fill+GC'],
  ['stats', 'stats.mjs', 'bufferStats(1 GiB) and processStats() vs alloc+fill of 1 GiB'],
  ['arena', 'arena.mjs', 'Arena vs Buffer.allocUnsafeSlow vs one mapping per buffer'],
  ['merge', 'merge-vs-c.mts', 'waitForMerge(boost) vs a C program, and kernel defaults'],
  ['policies', 'policies.mts', 'node-ksm bench: scanner policies incl. autotune and the advisor'],
  ['shared-dataset', 'shared-dataset.mjs', 'N workers x 512 MiB: PSS with and without node-ksm'],
  ['cache-server', 'cache-server.mjs', 'the example cache server vs redis-server'],
];

const wanted = process.argv.slice(2);
const unknown = wanted.filter((w) => !BENCHES.some(([name]) => name === w));
if (unknown.length > 0) {
  console.error(`unknown benchmark: ${unknown.join(', ')}\navailable: ${BENCHES.map(([n]) => n).join(', ')}`);
  process.exit(2);
}
if (!existsSync(join(here, '..', 'dist', 'index.js'))) {
  console.error('dist/ is missing: run "npm run build:ts" first');
  process.exit(1);
}
let failed = 0;
for (const [name, file, what] of BENCHES) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  console.log(`\n=== ${name}: ${what}`);
  const tsx = file.endsWith('.mts') ? ['--import', 'tsx'] : [];
  const r = spawnSync(process.execPath, [...tsx, join(here, file)], { stdio: 'inherit' });
  if (r.status !== 0) {
    failed++;
    console.log(`=== ${name} failed (${r.signal ?? `exit ${r.status}`})`);
  }
}
process.exit(failed > 0 ? 1 : 0);
