/**
 * Nothing leaks: a million alloc/free pairs, a hundred thousand buffers left to the
 * garbage collector, and a million arena operations, each in a fresh child process
 * with --expose-gc. After a warm-up (so V8's heap and the allocator have reached their
 * working size), /proc/self/maps and RSS are taken as the baseline; after the workload
 * and a full collection they must be back within 1 % of it, and the addon's own counters
 * (mappings, bytes, live ArrayBuffers) exactly where they were. An arena's figures are
 * taken once it has given its released pages back (its purge delay). And the C heap's
 * high-water mark: a burst of 200,000 alloc/free pairs that never yields, then one GC,
 * leaves RSS within 16 MiB of where it started without the caller trimming the heap.
 */
import { spawnSync } from 'node:child_process';
import { beforeAll, describe, expect, it } from 'vitest';
import { requireNative } from './helpers/ksm';
import { DIST, ensureDist } from './helpers/dist';

// The children load the compiled library.
beforeAll(() => {
  expect(ensureDist()).toBe(true);
}, 120_000);

const CHILD = `
const fs = require('node:fs');
const { setImmediate: tick } = require('node:timers/promises');
const m = require(${JSON.stringify(`${DIST}/memory.js`)});
const { Arena } = require(${JSON.stringify(`${DIST}/arena.js`)});
const { binding } = require(${JSON.stringify(`${DIST}/binding.js`)});
const page = m.pageSize;
const n = Number(process.argv[2]);
const mode = process.argv[1];

// Deterministic sizes and choices (xorshift), so a run can be repeated exactly.
let x = 0x9e3779b9;
const rnd = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (x >>> 0) / 4294967296);

function mapsLines() { return fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').length - 1; }
function rss() { return Number(fs.readFileSync('/proc/self/statm', 'utf8').split(' ')[1]) * page; }
async function collect() {
  for (let i = 0; i < 10; i++) { gc(); await tick(); await tick(); }
}

// Node runs the finalizers of external ArrayBuffers (and with them the addon's
// bookkeeping for each buffer, about 500 bytes) on a later turn of the event loop, also
// for freed buffers. A service yields between requests; so do these loops, every 1000
// operations. The 'sync' mode is the loop that never yields, checked separately.
const YIELD = mode === 'sync' ? Infinity : 1000;

async function allocFree(count) {
  for (let i = 0; i < count; i++) {
    const b = m.alloc(1 + Math.floor(rnd() * 3 * page), { mergeable: (i & 1) === 0 });
    b[0] = 1;
    m.free(b);
    if (i % YIELD === YIELD - 1) await tick();
  }
}

async function gcFinalized(count) {
  // In batches, so the live set stays bounded the way a service's would.
  for (let i = 0; i < count; i += 1000) {
    (() => {
      for (let j = 0; j < 1000; j++) {
        const b = m.alloc(1 + Math.floor(rnd() * 2 * page), { mergeable: (j & 1) === 0 });
        b[b.length - 1] = 1;
      }
    })();
    await tick();
  }
}

async function arenaOps(count, arena) {
  const live = [];
  for (let i = 0; i < count; i++) {
    if (i % YIELD === YIELD - 1) await tick();
    if (live.length < 2000 && (live.length === 0 || rnd() < 0.5)) {
      const b = arena.alloc(Math.floor(rnd() * (rnd() < 0.9 ? 2 * page : 40 * page)));
      if (b.length > 0) b[0] = 1;
      live.push(b);
    } else {
      const k = Math.floor(rnd() * live.length);
      arena.release(live[k]);
      live[k] = live[live.length - 1];
      live.pop();
    }
  }
  for (const b of live) arena.release(b);
}

// The figure of a burst: N pairs of alloc(64 KiB) + free in a loop that never yields, then
// the event loop's turn (the finalizers run) and one GC.
async function burst(count) {
  for (let i = 0; i < count; i++) {
    const b = m.alloc(64 * 1024);
    b[0] = 1;
    m.free(b);
  }
  await tick();
  await tick();
  gc();
  await tick();
}

/** An arena gives its released pages back within its purge delay: wait for that. */
async function arenaSettled() {
  for (let i = 0; i < 100 && globalThis.arena && globalThis.arena.stats().dirtyBytes > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function workload(count) {
  if (mode === 'allocfree' || mode === 'sync') await allocFree(count);
  else if (mode === 'gc') await gcFinalized(count);
  else {
    // One arena for the whole run, as a service would hold it; its chunks stay mapped.
    globalThis.arena ??= new Arena({ chunkSize: 4 * 2 ** 20 });
    await arenaOps(count, globalThis.arena);
  }
}

(async () => {
  const t0 = Date.now();
  if (mode === 'burst') {
    // A warm-up too small to matter (1,000 pairs) runs the code paths once, so the
    // baseline holds the pages of the node binary that they execute.
    await burst(1000);
    await collect();
    const before = { rss: rss() };
    await burst(n);
    const after = { rss: rss() };
    for (let i = 0; i < 10 && after.rss > before.rss + 2 ** 20; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after.rss = Math.min(after.rss, rss());
    }
    process.stdout.write(JSON.stringify({ mode, n, before, after, ms: Date.now() - t0 }) + '\\n');
    return;
  }
  // The warm-up brings V8's heap (its young generation grows with the allocation rate)
  // and malloc's to their working size, so the baseline is the steady state. In 'sync'
  // mode it is the same loop: the bookkeeping's peak is what the allocator keeps, and a
  // second equal peak must fit in the first one. alloc/free settles within a tenth.
  await workload(mode === 'allocfree' ? Math.ceil(n / 10) : n);
  await arenaSettled();
  await collect();
  const before = { maps: mapsLines(), rss: rss(), counters: binding.counters() };
  await workload(n);
  await arenaSettled();
  await collect();
  // V8 and malloc give pages back lazily (the sweeper and the memory reducer run in the
  // background), so a line or two of maps can still be on its way out here. The figures
  // are sampled for up to a second and the lowest kept: a leak stays high in every sample.
  const after = { maps: mapsLines(), rss: rss(), counters: binding.counters() };
  for (let i = 0; i < 10 && (after.maps > before.maps || after.rss > before.rss + 2 ** 20); i++) {
    await new Promise((r) => setTimeout(r, 100));
    await collect();
    after.maps = Math.min(after.maps, mapsLines());
    after.rss = Math.min(after.rss, rss());
  }
  process.stdout.write(JSON.stringify({ mode, n, before, after, ms: Date.now() - t0 }) + '\\n');
})();
`;

interface LeakReport {
  before: { maps: number; rss: number; counters: { mappings: number; mappedBytes: number; regions: number } };
  after: { maps: number; rss: number; counters: { mappings: number; mappedBytes: number; regions: number } };
  ms: number;
}

function run(mode: string, n: number): LeakReport {
  // A fixed, small young generation: V8 otherwise grows it with the allocation rate (by
  // megabytes, in steps) and shrinks it when it likes, which is V8's noise, not ours.
  const r = spawnSync(process.execPath, ['--expose-gc', '--max-semi-space-size=1', '-e', CHILD, mode, String(n)], {
    encoding: 'utf8',
    timeout: 300_000,
  });
  expect(r.signal, r.stderr).toBeNull();
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as LeakReport;
}

function expectBack(
  rep: LeakReport,
  ctx: { annotate: (m: string) => void },
  { rssFraction = 0.01, rssFloor = 2 * 2 ** 20, mapsFloor = 2 } = {},
): void {
  const { before, after } = rep;
  ctx.annotate(
    `maps ${before.maps} -> ${after.maps}, RSS ${(before.rss / 2 ** 20).toFixed(1)} -> ${(after.rss / 2 ** 20).toFixed(1)} MiB, ${rep.ms} ms`,
  );
  expect(after.counters).toEqual(before.counters);
  // 1 %, with a floor of two map lines and 2 MiB of RSS: below that the figures move by
  // themselves between identical rounds of the same workload (measured: repeated rounds of
  // 300,000 arena operations stay flat within 0.3 MiB, with an occasional 1.7 MiB step of
  // V8's heap that does not recur), which is malloc's and V8's noise, not a leak.
  expect(Math.abs(after.maps - before.maps)).toBeLessThanOrEqual(Math.max(mapsFloor, before.maps * 0.01));
  expect(after.rss - before.rss, `RSS ${before.rss} -> ${after.rss}`).toBeLessThanOrEqual(
    Math.max(rssFloor, before.rss * rssFraction),
  );
}

// The sanitizer's allocator keeps freed memory in quarantine: RSS means nothing there.
const skip = (ctx: { skip: (note?: string) => void }) =>
  requireNative(ctx, 'RSS is not comparable under AddressSanitizer');

describe('leaks', () => {
  it('1,000,000 alloc/free pairs leave maps and RSS at their baseline (1 %, 2 MiB floor)', (ctx) => {
    skip(ctx);
    expectBack(run('allocfree', 1_000_000), ctx);
  }, 300_000);

  it('100,000 buffers finalized by the GC leave maps and RSS at their baseline (1 %, 2 MiB floor)', (ctx) => {
    skip(ctx);
    expectBack(run('gc', 100_000), ctx);
  }, 300_000);

  it('200,000 alloc/free pairs in a loop that never yields reuse the memory of the previous such loop', (ctx) => {
    skip(ctx);
    // Each freed buffer's bookkeeping waits for the next event-loop turn, so the C heap
    // peaks at ~600 bytes per pair during the loop; a second loop of the same length must
    // not grow RSS again. A leak would be the whole peak again (~100 MiB); malloc's
    // placement of the second peak moves RSS by 1.9-2.4 MiB and the process's map lines
    // by up to 4, in mappings that are not the addon's (both seen in repeated runs):
    // 4 MiB and 8 lines here. The addon's own mappings are counted exactly
    // (after.counters).
    expectBack(run('sync', 200_000), ctx, { rssFraction: 0.03, rssFloor: 4 * 2 ** 20, mapsFloor: 8 });
  }, 300_000);

  it('a burst of 200,000 alloc(64 KiB)/free pairs and one GC leave RSS within 16 MiB, untrimmed by the caller', (ctx) => {
    skip(ctx);
    // The burst's records (~600 bytes a pair, ~120 MiB) are freed a turn after the loop;
    // glibc kept those pages resident (RSS stayed ~120 MiB up until trimHeap()) before the
    // addon trimmed the heap itself once a large burst's records were finalized. Measured
    // on a quiet machine: +8.6-8.8 MiB, of which 4 MiB are the node binary's code pages
    // that the burst and the GC run (plain Buffers: +5.4-7.1 MiB, the same 4 MiB in it);
    // +11.3 MiB, and once +16.0 MiB on CI, before the heap was trimmed again at the
    // burst's very end.
    const rep = run('burst', 200_000);
    const grew = rep.after.rss - rep.before.rss;
    void ctx.annotate(
      `RSS ${(rep.before.rss / 2 ** 20).toFixed(1)} -> ${(rep.after.rss / 2 ** 20).toFixed(1)} MiB (+${(grew / 2 ** 20).toFixed(1)}), ${rep.ms} ms`,
    );
    expect(grew, `RSS grew by ${(grew / 2 ** 20).toFixed(1)} MiB`).toBeLessThanOrEqual(16 * 2 ** 20);
  }, 300_000);

  it('1,000,000 arena operations leave maps and RSS at their baseline (1 %, 2 MiB floor)', (ctx) => {
    skip(ctx);
    expectBack(run('arena', 1_000_000), ctx);
  }, 300_000);
});
