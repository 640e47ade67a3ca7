/**
 * How long until N MiB of duplicate pages are merged: `waitForMerge(buf, { boost: true })`
 * against bench/merge.c (mmap, fill, madvise, poll /proc/self/ksm_merging_pages) under the
 * same boost (BOOST_POLICY, taken before the C program starts, so the C side pays nothing
 * for it). Each run is a fresh process per side, side by side, alternating which goes
 * first; both fill their memory first and start the clock when they mark it mergeable,
 * so ksmd meets both the same way: a new mm behind its cursor. Between runs the scanner
 * is at the kernel's defaults (100 pages every 20 ms, smart_scan=1), as on a machine
 * nobody tuned. Also the time under those defaults, bounded by --default-limit.
 *
 *   node --import tsx bench/merge-vs-c.mts [--mib 256,1024] [--runs 5] [--ratio 0.95]
 *        [--phases] [--c-poll-ms 2] [--default-limit 120] [--json bench/out/merge-vs-c.json]
 *
 * --phases samples the kernel's counters every 2 ms (about 5 % of a core, on both sides)
 * and prints where each side's time went: set-up, ksmd reaching the memory, its first
 * pass, its merging pass, and confirming (see Phases in bench/merge-lib.mts).
 *
 * Needs root, a C compiler and a built dist/ (npm run build:ts). Holds the test lock and
 * puts every knob back as it found it (also on Ctrl-C).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BOOST_POLICY, alloc, boost, configure, pageSize, readSettings, setMergeable, waitForMerge } from 'node-ksm';
import {
  CBIN,
  Sampler,
  checkDist,
  compileC,
  epochMs,
  fillDuplicates,
  guarded,
  here,
  median,
  medianPhases,
  phases,
  renderPhases,
  run,
  start,
  type Phases,
} from './merge-lib.mjs';

const self = fileURLToPath(import.meta.url);

interface RunResult {
  ms: number;
  merged: number;
  pages: number;
  done: boolean;
  /** Wall-clock ms of the start (madvise / setMergeable) and of the end. */
  t0: number;
  t1: number;
  phases?: Phases;
}

async function jsChild([mib, ratio, seed, timeoutMs]: string[]): Promise<void> {
  const buf = alloc(Number(mib) * 2 ** 20, { mergeable: false });
  fillDuplicates(buf, Number(seed), pageSize);
  const t0 = epochMs();
  const m0 = performance.now();
  setMergeable(buf, true);
  try {
    const r = await waitForMerge(buf, { boost: true, ratio: Number(ratio), timeoutMs: Number(timeoutMs) });
    const ms = performance.now() - m0;
    const out = { ms, merged: r.mergedPages, pages: r.totalPages, done: r.reason === 'ratio', t0, t1: t0 + ms };
    console.log(JSON.stringify(out));
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_KSM_TIMEOUT') throw err;
    const ms = performance.now() - m0;
    console.log(JSON.stringify({ ms, merged: 0, pages: buf.length / pageSize, done: false, t0, t1: t0 + ms }));
  }
}

/** waitForMerge without a boost, under whatever the scanner is set to: for the kernel-defaults row. */
async function slowChild([mib, ratio, seed, timeoutMs]: string[]): Promise<void> {
  const buf = alloc(Number(mib) * 2 ** 20, { mergeable: false });
  fillDuplicates(buf, Number(seed), pageSize);
  const m0 = performance.now();
  setMergeable(buf, true);
  let merged = 0;
  try {
    const r = await waitForMerge(buf, {
      ratio: Number(ratio),
      timeoutMs: Number(timeoutMs),
      onProgress: (p) => (merged = p.mergedPages),
    });
    console.log(JSON.stringify({ ms: performance.now() - m0, merged: r.mergedPages, pages: r.totalPages, done: true }));
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_KSM_TIMEOUT') throw err;
    const ms = performance.now() - m0;
    console.log(JSON.stringify({ ms, merged, pages: buf.length / pageSize, done: false }));
  }
}

const KERNEL_DEFAULTS = { advisorMode: 'none', run: 1, pagesToScan: 100, sleepMillisecs: 20, smartScan: 1 } as const;

/** The kernel's defaults, for the knobs this kernel has. */
function idleScanner(): void {
  const have = readSettings();
  const s: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(KERNEL_DEFAULTS)) if (have[k as keyof typeof have] !== undefined) s[k] = v;
  configure(s);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mib: { type: 'string', default: '256,1024' },
      runs: { type: 'string', default: '5' },
      ratio: { type: 'string', default: '0.95' },
      phases: { type: 'boolean', default: false },
      'c-poll-ms': { type: 'string', default: '2' },
      'default-limit': { type: 'string', default: '120' },
      json: { type: 'string', default: path.join(here, 'out/merge-vs-c.json') },
    },
  });
  const sizes = values.mib.split(',').map(Number);
  const runs = Number(values.runs);
  const ratio = Number(values.ratio);
  const cPollMs = values['c-poll-ms'];
  const defaultLimitMs = Number(values['default-limit']) * 1000;
  checkDist();
  compileC();

  // The test lock is held one side at a time: tests of other work on the machine may run
  // between runs (their restores done before the next snapshot), never during one.
  const report = await (async () => {
    const bySize = [];
    for (const mib of sizes) {
      const pages = (mib * 2 ** 20) / pageSize;
      const want = Math.ceil(ratio * pages);
      const c: RunResult[] = [];
      const js: RunResult[] = [];
      for (let i = 0; i < runs; i++) {
        for (const side of i % 2 === 0 ? (['c', 'js'] as const) : (['js', 'c'] as const)) {
          const r = await guarded(async () => {
            idleScanner();
            // A fresh seed per run and side: pages left in the stable tree by an earlier run
            // cannot make a later one look faster.
            const seed = String(1000 * mib + 10 * i + (side === 'c' ? 1 : 2));
            const sampler = values.phases ? new Sampler(2) : undefined;
            let r: RunResult;
            if (side === 'c') {
              const handle = await boost();
              try {
                const child = start(CBIN, [String(mib), String(ratio), cPollMs, '120000', seed]);
                child.proc.stdin!.end();
                sampler?.watch(child.proc.pid!);
                sampler?.start();
                r = (await child.result) as unknown as RunResult;
                await child.exited;
              } finally {
                await handle.release();
              }
            } else {
              const child = start(process.execPath, [
                '--import',
                'tsx',
                self,
                'js-child',
                String(mib),
                String(ratio),
                seed,
                '120000',
              ]);
              child.proc.stdin!.end();
              sampler?.watch(child.proc.pid!);
              sampler?.start();
              r = (await child.result) as unknown as RunResult;
              await child.exited;
            }
            if (sampler) {
              await sampler.stop();
              r.phases = phases(sampler, r.t0, r.t1, pages, want, BOOST_POLICY.pagesToScan);
            }
            return r;
          });
          (side === 'c' ? c : js).push(r);
          process.stderr.write(
            `${mib} MiB run ${i + 1} ${side.padEnd(2)}: ${r.ms.toFixed(0)} ms (${r.merged}/${r.pages} merged)\n`,
          );
        }
      }
      bySize.push({ mib, c, js });
    }
    let slow: RunResult | undefined;
    if (defaultLimitMs > 0) {
      slow = await guarded(async () => {
        idleScanner();
        const args = [String(sizes[0]), String(ratio), '7', String(defaultLimitMs)];
        return (await run(process.execPath, ['--import', 'tsx', self, 'slow-child', ...args])) as unknown as RunResult;
      });
    }
    return { bySize, slow };
  })();

  const out = {
    ratio,
    runs,
    busy: true,
    boosted: BOOST_POLICY,
    cPollMs: Number(cPollMs),
    sizes: report.bySize.map(({ mib, c, js }) => {
      const cMs = median(c.map((r) => r.ms));
      const jsMs = median(js.map((r) => r.ms));
      return {
        mib,
        cMedianMs: Math.round(cMs),
        jsMedianMs: Math.round(jsMs),
        jsOverC: +(jsMs / cMs).toFixed(3),
        c: c.map((r) => Math.round(r.ms)),
        js: js.map((r) => Math.round(r.ms)),
        allMerged: [...c, ...js].every((r) => r.done),
        ...(values.phases
          ? { phases: { c: medianPhases(c.map((r) => r.phases!)), js: medianPhases(js.map((r) => r.phases!)) } }
          : {}),
      };
    }),
    defaultSettings: report.slow && {
      mib: sizes[0]!,
      ms: Math.round(report.slow.ms),
      done: report.slow.done,
      mergedShare: +(report.slow.merged / report.slow.pages).toFixed(3),
      limitMs: defaultLimitMs,
    },
  };
  fs.mkdirSync(path.dirname(values.json), { recursive: true });
  fs.writeFileSync(values.json, `${JSON.stringify(out, null, 2)}\n`);

  console.log(
    `merge duplicate pages to ${ratio * 100} %, boosted (${JSON.stringify(BOOST_POLICY)}), median of ${runs}, C polling every ${cPollMs} ms:`,
  );
  console.log('  size      C (merge.c)   waitForMerge({ boost })   ratio   (goal <= 1.1)');
  for (const s of out.sizes) {
    console.log(
      `  ${`${s.mib} MiB`.padEnd(9)} ${`${s.cMedianMs} ms`.padStart(11)}   ${`${s.jsMedianMs} ms`.padStart(23)}   ${s.jsOverC.toFixed(2)}x` +
        `   C ${s.c.join('/')}  js ${s.js.join('/')}${s.allMerged ? '' : '  (some runs did not merge!)'}`,
    );
  }
  if (values.phases) {
    console.log('where the time went (medians; see Phases in bench/merge-lib.mts):');
    for (const s of out.sizes) {
      console.log(renderPhases(`${s.mib} MiB C`, s.phases!.c));
      console.log(renderPhases(`${s.mib} MiB waitForMerge`, s.phases!.js));
    }
  }
  if (out.defaultSettings) {
    const d = out.defaultSettings;
    const boosted = out.sizes[0]!.jsMedianMs;
    const mibPerS = (ms: number) => ((d.mib / ms) * 1000).toFixed(1);
    console.log(
      d.done
        ? `  kernel defaults, ${d.mib} MiB: ${d.ms} ms (${mibPerS(d.ms)} MiB/s) = ${(d.ms / boosted).toFixed(0)}x the boosted time`
        : `  kernel defaults, ${d.mib} MiB: not done after ${d.limitMs / 1000} s (${(d.mergedShare * 100).toFixed(1)} % merged)`,
    );
  }
  console.log(`(wrote ${path.relative(process.cwd(), values.json)})`);
}

const mode = process.argv[2];
if (mode === 'js-child') await jsChild(process.argv.slice(3));
else if (mode === 'slow-child') await slowChild(process.argv.slice(3));
else await main();
