#!/usr/bin/env node
/**
 * The README's policy figures: `node-ksm bench` (K workers x N MiB of identical pages;
 * kernel default, pages_to_scan 1000/10000/100000 with sleep 0, the scan-time advisor
 * and autotune, each measured in the same run), then the goals of issue 7 checked as
 * ratios against the baselines of that same run:
 *   - autotune's time to 95 % merged within 1.5x of the 100000/sleep 0 policy's;
 *   - autotune's idle ksmd CPU within 2 percentage points of the kernel default's;
 *   - against the advisor: better on one of the two axes and no worse on the other.
 *
 *   node bench/policies.mjs [--workers 4] [--mib 256] [--runs 1] [--limit 3m] [--idle 10s]
 *                           [--policies ...] [--json bench/policies.json] [--svg bench/policies.svg]
 *
 * Needs root. Compiles lib/ into bench/out/policies-lib (not dist/, which other runs
 * build too), holds the test lock (/run/node-ksm/tests.lock) so that test runs neither
 * disturb the figures nor are disturbed, and puts every KSM knob back (also on Ctrl-C).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const LIB = path.join(here, 'out/policies-lib');
const ADDON = path.join(root, 'build/Release/ksm.node');

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '4' },
    mib: { type: 'string', default: '256' },
    limit: { type: 'string', default: '3m' },
    runs: { type: 'string', default: '1' },
    idle: { type: 'string', default: '10s' },
    policies: { type: 'string', default: 'default,1000,10000,100000,advisor,autotune' },
    json: { type: 'string', default: path.join(here, 'policies.json') },
    svg: { type: 'string', default: path.join(here, 'policies.svg') },
  },
});

try {
  execFileSync(
    process.execPath,
    [
      path.join(root, 'node_modules/typescript/bin/tsc'),
      '-p',
      'tsconfig.json',
      '--outDir',
      LIB,
      '--declaration',
      'false',
      '--sourceMap',
      'false',
    ],
    { cwd: root, stdio: 'pipe' },
  );
} catch (err) {
  // Type errors elsewhere in lib/ still emit; only a missing output is fatal.
  if (!fs.existsSync(path.join(LIB, 'cli/bench.js'))) throw err;
}
// The compiled copy lives outside the package root, so point it at this checkout's addon.
process.env.NODE_KSM_BINARY ??= ADDON;
const { binding } = require(path.join(LIB, 'binding.js'));
const { benchCommand } = require(path.join(LIB, 'cli/bench.js'));

fs.mkdirSync('/run/node-ksm', { recursive: true });
const lockFd = fs.openSync('/run/node-ksm/tests.lock', 'a');
process.stderr.write('waiting for /run/node-ksm/tests.lock ...\n');
while (!binding.flock(lockFd, 2)) await new Promise((r) => setTimeout(r, 50));

const ac = new AbortController();
const stop = () => (ac.signal.aborted ? process.exit(130) : ac.abort(new Error('interrupted')));
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

let report;
try {
  const { json, svg, ...rest } = values;
  report = await benchCommand({ ...rest, json, svg }, ac.signal);
} catch (err) {
  if (!ac.signal.aborted) throw err;
  process.stderr.write('\nInterrupted; every KSM setting is back as it was.\n');
  process.exit(130);
} finally {
  binding.flock(lockFd, 0);
  fs.closeSync(lockFd);
}
process.stdout.write(`\nWrote ${values.json} and ${values.svg}\n\n`);

const by = Object.fromEntries(report.results.map((r) => [r.policy, r]));
const at = by.autotune;
const checks = [];
if (at && by['100000']) {
  const a = at.mergeSeconds;
  const b = by['100000'].mergeSeconds;
  const ratio = a !== null && b !== null ? a / b : Infinity;
  checks.push([`autotune time to merge / 100000's: ${ratio.toFixed(2)}x (goal <= 1.5x)`, ratio <= 1.5]);
}
if (at && by.default) {
  const d = at.idleCpuPercent - by.default.idleCpuPercent;
  checks.push([`autotune idle CPU - default's: ${d.toFixed(1)} percentage points (goal <= 2)`, d <= 2]);
}
if (at && by.advisor) {
  const time = (r) => r.mergeSeconds ?? Infinity;
  const faster = time(at) < time(by.advisor);
  const cheaper = at.idleCpuPercent < by.advisor.idleCpuPercent;
  const noSlower = time(at) <= time(by.advisor);
  const noCostlier = at.idleCpuPercent <= by.advisor.idleCpuPercent;
  checks.push([
    `against the advisor: time ${time(at)} s vs ${time(by.advisor)} s, idle CPU ${at.idleCpuPercent} % vs ${by.advisor.idleCpuPercent} % (goal: better on one, no worse on the other)`,
    (faster && noCostlier) || (cheaper && noSlower),
  ]);
}
for (const [text, ok] of checks) process.stdout.write(`${ok ? 'PASS' : 'FAIL'}  ${text}\n`);
