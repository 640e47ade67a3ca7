/**
 * The smoke test of an installed node-ksm: what a user's first program does. It imports
 * the package by name, so it tests whichever copy the project it runs in has installed.
 * scripts/test-tarball.sh compiles it with the repository's tsc into a project that
 * installed the release tarball (type-checking it against the tarball's own .d.ts files),
 * then runs the emitted smoke.mjs with each official Node: nothing but that project's
 * node_modules is there, no tsx and no compiler.
 *
 * It checks that the prebuilt binary was loaded (nothing built), merges two copies of the
 * same 8 MiB with a boosted scanner, reads the figures back per buffer and per process,
 * frees everything, and finds /sys/kernel/mm/ksm as it was. Needs root and KSM; run it
 * under the machine-wide test lock (/run/node-ksm/tests.lock) so no other test moves the
 * settings meanwhile. Prints one JSON line; exits 1 with the reason on any failure.
 *
 * Usage: node smoke.mjs [--prebuilt] [--no-compiler]
 *   --prebuilt      the binary must be the package's prebuild for this platform
 *   --no-compiler   no C/C++ compiler, make or python may be on PATH
 */
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import {
  alloc,
  bufferStats,
  free,
  pageSize,
  processStats,
  readSettings,
  support,
  systemStats,
  waitForMerge,
} from 'node-ksm';

const started = Date.now();
const args = new Set(process.argv.slice(2));
const require = createRequire(import.meta.url);
const packageJson = require.resolve('node-ksm/package.json');
const packageDir = path.dirname(packageJson);

if (args.has('--no-compiler')) {
  const tools = ['gcc', 'g++', 'cc', 'c++', 'clang', 'clang++', 'make', 'python3', 'python'];
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  const found = dirs.flatMap((d) => tools.map((t) => path.join(d, t))).filter((f) => fs.existsSync(f));
  deepStrictEqual(found, [], 'a compiler, make or python is on PATH');
}

// Which binary node-gyp-build resolves for this copy, as the package's loader asks it.
const gypBuild = createRequire(packageJson)('node-gyp-build') as { path(dir: string): string };
const binary = path.relative(packageDir, gypBuild.path(packageDir));
if (args.has('--prebuilt')) {
  strictEqual(binary, path.join('prebuilds', `${process.platform}-${process.arch}`, 'node-ksm.glibc.node'));
  strictEqual(fs.existsSync(path.join(packageDir, 'build')), false, 'the install built the addon');
}

const s = support();
if (!s.available || s.mode !== 'external' || !s.canConfigure)
  throw new Error(`KSM cannot be shown here: ${JSON.stringify(s)}`);

const settingsBefore = readSettings();
const pages = 2048;
const bytes = pages * pageSize;
const a = alloc(bytes);
const b = alloc(bytes);
const unique = alloc(256 * pageSize);
// Every page different from the others, each in a and b alike: a page of a can only merge
// with its twin in b, so the per-buffer figures count real pairs.
for (let i = 0; i < pages; i++) {
  a.fill(`page ${i} of the node-ksm smoke test `, i * pageSize, (i + 1) * pageSize);
  b.set(a.subarray(i * pageSize, (i + 1) * pageSize), i * pageSize);
}
randomFillSync(unique);

const result = await waitForMerge(b, { ratio: 1, boost: true, timeoutMs: 120_000 });
strictEqual(result.reason, 'ratio', `merging stopped short: ${JSON.stringify(result)}`);
const statsA = bufferStats(a);
const statsB = bufferStats(b);
strictEqual(statsA.mergedPages, pages, `a: ${JSON.stringify(statsA)}`);
strictEqual(statsA.mergedBytes, bytes);
strictEqual(statsB.mergedPages, pages, `b: ${JSON.stringify(statsB)}`);
strictEqual(bufferStats(unique).mergedPages, 0, 'random pages merged');
strictEqual(processStats().mergingPages, 2 * pages, 'the process counts both copies, and nothing else');
const saved = systemStats().savedBytes;

for (const buf of [a, b, unique]) {
  strictEqual(free(buf), true);
  strictEqual(buf.length, 0);
  strictEqual(free(buf), false);
}
deepStrictEqual(readSettings(), settingsBefore, 'boost left /sys/kernel/mm/ksm changed');

console.log(
  JSON.stringify({
    node: process.version,
    arch: process.arch,
    binary,
    mergedMiB: (2 * bytes) / 2 ** 20,
    waitMs: Math.round(result.elapsedMs),
    systemSavedMiB: Math.round(saved / 2 ** 20),
    settingsRestored: true,
    ms: Date.now() - started,
  }),
);
