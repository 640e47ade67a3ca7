#!/usr/bin/env node
/**
 * How long until 256 MiB of duplicate pages are merged: waitForMerge(buf, { boost: true })
 * against bench/merge.c (mmap, fill, madvise, poll /proc/self/ksm_merging_pages), each
 * run in its own fresh process, under the same boosted settings (BOOST_POLICY), side by
 * side in one run, alternating. Also the time under the kernel's default settings
 * (pages_to_scan=100, sleep_millisecs=20, smart_scan=1), bounded by --default-limit.
 *
 *   node bench/merge-vs-c.mjs [--mib 256] [--runs 5] [--ratio 0.95] [--default-limit 120]
 *
 * Needs root and a C compiler. Holds the test lock (/run/node-ksm/tests.lock) so it does
 * not fight test runs, and puts every knob back as it found it (also on Ctrl-C).
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const LIB = path.join(here, 'out/lib');
const CBIN = path.join(here, 'bin/merge');
const ADDON = path.join(root, 'build/Release/ksm.node');
const POLL_MS = 10; // the C side polls as often as waitForMerge does

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

/** Page p gets the xorshift stream of (seed 1, p mod pages/2): the same bytes as merge.c. */
function fill(buf, pageSize) {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const perPage = pageSize / 4;
  const half = buf.byteLength / pageSize / 2;
  for (let p = 0; p * perPage < words.length; p++) {
    let x = (Math.imul(2, 0x9e3779b1) ^ Math.imul((p % half) + 1, 0x85ebca6b)) >>> 0 || 1;
    for (let i = p * perPage, end = i + perPage; i < end; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
  }
}

async function jsChild([mib, ratio, boost, timeoutMs]) {
  const ksm = require(path.join(LIB, 'index.js'));
  const buf = ksm.alloc(Number(mib) * 1024 * 1024);
  fill(buf, ksm.pageSize);
  let merged = 0;
  const t0 = performance.now();
  try {
    const r = await ksm.waitForMerge(buf, {
      boost: boost === '1',
      ratio: Number(ratio),
      timeoutMs: Number(timeoutMs),
      onProgress: (p) => (merged = p.mergedPages),
    });
    const ms = performance.now() - t0;
    console.log(JSON.stringify({ ms, merged: r.mergedPages, pages: r.totalPages, done: true, reason: r.reason }));
  } catch (err) {
    if (err.code !== 'ERR_KSM_TIMEOUT') throw err;
    console.log(JSON.stringify({ ms: performance.now() - t0, merged, pages: buf.length / ksm.pageSize, done: false }));
  }
}

function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, {
      env: { ...process.env, NODE_KSM_BINARY: ADDON },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('exit', (code) =>
      code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`${cmd} exited with ${code}`)),
    );
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const mib = arg('mib', 256);
  const runs = arg('runs', 5);
  const ratio = arg('ratio', 0.95);
  const defaultLimitMs = arg('default-limit', 120) * 1000;

  // Compiled here rather than in dist/, which other runs may be rebuilding.
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
    if (!fs.existsSync(path.join(LIB, 'wait.js'))) throw err;
  }
  fs.mkdirSync(path.dirname(CBIN), { recursive: true });
  execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-o', CBIN, path.join(here, 'merge.c')], { stdio: 'inherit' });

  process.env.NODE_KSM_BINARY = ADDON;
  const ksm = require(path.join(LIB, 'index.js'));
  const { binding } = require(path.join(LIB, 'binding.js'));

  fs.mkdirSync('/run/node-ksm', { recursive: true });
  const lockFd = fs.openSync('/run/node-ksm/tests.lock', 'a');
  process.stderr.write('waiting for /run/node-ksm/tests.lock ...\n');
  while (!binding.flock(lockFd, 2)) await new Promise((r) => setTimeout(r, 50));

  const before = ksm.readSettings();
  const putBack = () => {
    const { advisorMode, run: r, pagesToScan, ...rest } = before;
    ksm.configure({ advisorMode: 'none' });
    ksm.configure({ ...rest, ...(advisorMode === 'none' ? { pagesToScan } : {}), advisorMode });
    ksm.configure({ run: r });
  };
  const onSignal = (sig) => {
    try {
      putBack();
    } finally {
      process.kill(process.pid, sig);
    }
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const c = [];
  const js = [];
  let slow;
  try {
    for (let i = 0; i < runs; i++) {
      const order = i % 2 === 0 ? ['c', 'js'] : ['js', 'c'];
      for (const side of order) {
        if (side === 'c') {
          const handle = await ksm.boost();
          try {
            c.push(await run(CBIN, [String(mib), String(ratio), String(POLL_MS), '120000']));
          } finally {
            await handle.release();
          }
        } else {
          js.push(
            await run(process.execPath, [
              fileURLToPath(import.meta.url),
              'js-child',
              String(mib),
              String(ratio),
              '1',
              '120000',
            ]),
          );
        }
        const last = side === 'c' ? c.at(-1) : js.at(-1);
        process.stderr.write(
          `run ${i + 1} ${side.padEnd(2)}: ${last.ms.toFixed(0)} ms (${last.merged}/${last.pages} merged)\n`,
        );
      }
    }
    // The kernel's defaults, as a machine that nobody tuned has them.
    const prev = ksm.configure({ advisorMode: 'none', pagesToScan: 100, sleepMillisecs: 20, smartScan: 1, run: 1 });
    try {
      slow = await run(process.execPath, [
        fileURLToPath(import.meta.url),
        'js-child',
        String(mib),
        String(ratio),
        '0',
        String(defaultLimitMs),
      ]);
    } finally {
      ksm.configure(prev);
    }
  } finally {
    putBack();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    const after = ksm.readSettings();
    binding.flock(lockFd, 0);
    fs.closeSync(lockFd);
    if (JSON.stringify(after) !== JSON.stringify(before)) {
      console.error('settings differ after the benchmark!', { before, after });
      process.exitCode = 1;
    }
  }

  const cMs = median(c.map((r) => r.ms));
  const jsMs = median(js.map((r) => r.ms));
  const mibPerS = (ms) => ((mib / ms) * 1000).toFixed(0);
  const result = {
    mib,
    ratio,
    runs,
    boosted: ksm.BOOST_POLICY,
    cMedianMs: Math.round(cMs),
    cMinMs: Math.round(Math.min(...c.map((r) => r.ms))),
    jsMinMs: Math.round(Math.min(...js.map((r) => r.ms))),
    jsMedianMs: Math.round(jsMs),
    jsOverC: Number((jsMs / cMs).toFixed(3)),
    c: c.map((r) => Math.round(r.ms)),
    js: js.map((r) => Math.round(r.ms)),
    defaultSettings: {
      ms: Math.round(slow.ms),
      done: slow.done,
      mergedShare: Number((slow.merged / slow.pages).toFixed(3)),
      limitMs: defaultLimitMs,
    },
  };
  fs.mkdirSync(path.join(here, 'out'), { recursive: true });
  fs.writeFileSync(path.join(here, 'out/merge-vs-c.json'), `${JSON.stringify(result, null, 2)}\n`);
  console.log(
    `merge ${mib} MiB of duplicate pages to ${ratio * 100} %, boosted (${JSON.stringify(ksm.BOOST_POLICY)}), median of ${runs}:`,
  );
  console.log(`  C (merge.c)                      ${cMs.toFixed(0).padStart(7)} ms  ${mibPerS(cMs)} MiB/s`);
  console.log(
    `  waitForMerge(buf, {boost: true}) ${jsMs.toFixed(0).padStart(7)} ms  ${mibPerS(jsMs)} MiB/s  = ${(jsMs / cMs).toFixed(2)}x C (goal <= 1.25)`,
  );
  const slowText = slow.done
    ? `${slow.ms.toFixed(0)} ms  ${mibPerS(slow.ms)} MiB/s  = ${(slow.ms / jsMs).toFixed(0)}x the boosted time`
    : `not done after ${(defaultLimitMs / 1000).toFixed(0)} s: ${((slow.merged / slow.pages) * 100).toFixed(1)} % merged (~${((slow.merged * ksm.pageSize) / 2 ** 20 / (slow.ms / 1000)).toFixed(1)} MiB/s)`;
  console.log(
    `  fastest runs: C ${result.cMinMs} ms, waitForMerge ${result.jsMinMs} ms = ${(result.jsMinMs / result.cMinMs).toFixed(2)}x`,
  );
  console.log(`  kernel defaults (no boost)       ${slowText}`);
}

if (process.argv[2] === 'js-child') await jsChild(process.argv.slice(3));
else await main();
