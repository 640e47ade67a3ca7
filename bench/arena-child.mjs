// One side of bench/arena.mjs in a fresh process: prints one JSON line.
//   node --expose-gc bench/arena-child.mjs speed <side> <fill|bare> <ops>
//   node --expose-gc bench/arena-child.mjs memory <side>
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const ksm = require('../dist/index.js');
const [what, side, mode, opsText] = process.argv.slice(2);
const SIZE = 16 * 1024;
const page = ksm.pageSize;

function maker() {
  if (side === 'allocUnsafeSlow') return { alloc: () => Buffer.allocUnsafeSlow(SIZE), release: () => {} };
  // Zero-filled like an arena buffer: the like-for-like baseline.
  if (side === 'alloc') return { alloc: () => Buffer.alloc(SIZE), release: () => {} };
  if (side === 'mmap') return { alloc: () => ksm.alloc(SIZE), release: (b) => ksm.free(b) };
  if (side === 'arena') {
    const arena = new ksm.Arena();
    return { arena, alloc: () => arena.alloc(SIZE), release: (b) => arena.release(b) };
  }
  if (side === 'arenaUnsafe') {
    const arena = new ksm.Arena();
    return { arena, alloc: () => arena.allocUnsafe(SIZE), release: (b) => arena.release(b) };
  }
  throw new Error(`unknown side ${side}`);
}

// Every 1,024 operations (one turn of the ring) the loop yields to the event loop, as a
// service allocating per request does. That is also when Node runs the finalizers of
// detached external buffers (queued as native immediates): a loop that never yielded
// would leave that work for after the clock stops, and pile it up in memory.
const turn = () => new Promise((resolve) => setImmediate(resolve));

async function speed() {
  const ops = Number(opsText);
  const m = maker();
  const ring = Array.from({ length: 1024 }, () => m.alloc());
  const step = (i) => {
    const slot = i & 1023;
    m.release(ring[slot]);
    const buf = m.alloc();
    if (mode === 'fill') buf.fill(i & 0xff);
    ring[slot] = buf;
  };
  // Warm up the JIT and the allocator.
  for (let i = 0; i < Math.min(ops, 20_000); i++) {
    step(i);
    if ((i & 1023) === 1023) await turn();
  }
  await turn();
  const start = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) {
    step(i);
    if ((i & 1023) === 1023) await turn();
  }
  await turn(); // the last turn's finalizers count too
  const ns = Number(process.hrtime.bigint() - start);
  return { side, mode, ops, nsPerOp: ns / ops };
}

const rssAnon = () => Number(/RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
function chunkRss() {
  // Resident bytes of MADV_MERGEABLE mappings: the arena's chunks in this process.
  let total = 0;
  let mergeable = false;
  let rss = 0;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      if (mergeable) total += rss;
      mergeable = false;
      rss = 0;
    } else if (line.startsWith('Rss:')) rss = Number(/(\d+)/.exec(line)[1]) * 1024;
    else if (line.startsWith('VmFlags:')) mergeable = / mg\b/.test(line);
  }
  return mergeable ? total + rss : total;
}

function memory() {
  const live = 20_000;
  const m = maker();
  globalThis.gc();
  const before = rssAnon();
  const bufs = Array.from({ length: live }, (_, i) => m.alloc().fill(i & 0xff));
  let x = 12345;
  for (let i = 0; i < 100_000; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const k = x % live;
    m.release(bufs[k]);
    bufs[k] = m.alloc().fill(i & 0xff);
  }
  globalThis.gc();
  const livePages = live * Math.ceil(SIZE / page) * page;
  const result = { side, livePages, processOverhead: (rssAnon() - before) / livePages - 1 };
  if (m.arena) {
    result.chunkOverhead = chunkRss() / livePages - 1;
    // The allocator's typed arrays: 4 Int32Arrays + 1 Uint8Array per chunk page.
    result.metadataOverhead = ((m.arena.stats().mappedBytes / page) * 17) / livePages;
    result.stats = m.arena.stats();
  }
  return result;
}

console.log(JSON.stringify(what === 'speed' ? await speed() : memory()));
