/**
 * Regenerates the charts the README shows (docs/img/bench.{svg,png}, docs/img/watch.{svg,png})
 * from a real run: `node-ksm bench` on the issue's workload (3 workers x 64 MiB of
 * identical pages, every policy) while `node-ksm watch` samples the host every second,
 * then rsvg-convert (Debian: librsvg2-bin) renders both to PNG. Prints the bench table.
 *
 *   npm run build:ts && node --import tsx scripts/readme-charts.mts [--workers 3] [--mib 64] [--out docs/img]
 *
 * Needs root; takes a few minutes. Holds the test lock (/run/node-ksm/tests.lock) so test
 * runs neither disturb the figures nor are disturbed; every KSM knob is put back.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (file: string) => path.join(root, 'dist', file);

const { binding } = require(dist('binding.js')) as typeof import('../lib/binding.ts');
const { runBenchmark, DEFAULT_POLICIES } = require(dist('benchmark.js')) as typeof import('../lib/benchmark.ts');
const { benchSvg, renderBench } = require(dist('cli/bench.js')) as typeof import('../lib/cli/bench.ts');
const { watch } = require(dist('cli/watch.js')) as typeof import('../lib/cli/watch.ts');

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '3' },
    mib: { type: 'string', default: '64' },
    out: { type: 'string', default: path.join(root, 'docs/img') },
  },
});
const out = path.resolve(values.out);
fs.mkdirSync(out, { recursive: true });

fs.mkdirSync('/run/node-ksm', { recursive: true });
const lockFd = fs.openSync('/run/node-ksm/tests.lock', 'a');
process.stderr.write('waiting for /run/node-ksm/tests.lock ...\n');
while (!binding!.flock(lockFd, 2)) await new Promise((r) => setTimeout(r, 50));

const ac = new AbortController();
const stop = () => (ac.signal.aborted ? process.exit(130) : ac.abort(new Error('interrupted')));
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

const watching = new AbortController();
const discard = new Writable({ write: (_chunk, _enc, done) => done() }) as unknown as NodeJS.WriteStream;
const watched = watch({
  intervalMs: 1000,
  svgFile: path.join(out, 'watch.svg'),
  json: false,
  out: discard,
  signal: watching.signal,
});
try {
  // A few quiet seconds first, so the watch chart starts from the host at rest.
  await new Promise((r) => setTimeout(r, 5000));
  const report = await runBenchmark({
    workers: Number(values.workers),
    mib: Number(values.mib),
    policies: DEFAULT_POLICIES,
    limitMs: 120_000,
    signal: ac.signal,
    onProgress: (p) => p.phase !== 'merging' && process.stderr.write(`${p.policy}: ${p.phase}\n`),
  });
  await new Promise((r) => setTimeout(r, 5000));
  fs.writeFileSync(path.join(out, 'bench.svg'), benchSvg(report));
  process.stdout.write(`${renderBench(report)}\n`);
} finally {
  watching.abort();
  await watched;
  binding!.flock(lockFd, 0);
  fs.closeSync(lockFd);
}
for (const name of ['bench', 'watch']) {
  execFileSync('rsvg-convert', ['--format', 'png', '-o', path.join(out, `${name}.png`), path.join(out, `${name}.svg`)]);
  process.stdout.write(`Wrote ${path.join(out, `${name}.svg`)} and .png\n`);
}
