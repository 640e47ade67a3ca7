// One side of bench/arena.mts in a fresh process: prints one JSON line.
//   node --expose-gc --import tsx bench/arena-child.mts speed <pattern> <side> <ops>
//   node --expose-gc --import tsx bench/arena-child.mts memory <side>
//   node --expose-gc --import tsx bench/arena-child.mts idle <MiB> <seconds>
// Needs the compiled library (npm run build:ts): 'node-ksm' resolves to dist/.
import { readFileSync } from 'node:fs';
import { setImmediate as turn, setTimeout as sleep } from 'node:timers/promises';
import { Arena, alloc, free, pageSize } from 'node-ksm';

export const SIDES = ['allocUnsafeSlow', 'Buffer.alloc', 'arena.allocUnsafe', 'arena.alloc', 'alloc'] as const;
export type Side = (typeof SIDES)[number];
export const PATTERNS = ['request', 'batch-1', 'batch-64', 'batch-1024', 'ring-20000', 'random'] as const;
export type Pattern = (typeof PATTERNS)[number];

const KiB = 1024;
const SIZE = 16 * KiB;

interface Maker {
  get(size: number): Buffer;
  put(buf: Buffer): void;
  arena?: Arena;
}

function maker(side: Side): Maker {
  switch (side) {
    // A Buffer is given back by dropping it: the GC frees it, as in a service.
    case 'allocUnsafeSlow':
      return { get: (n) => Buffer.allocUnsafeSlow(n), put: () => {} };
    case 'Buffer.alloc':
      return { get: (n) => Buffer.alloc(n), put: () => {} };
    case 'alloc':
      return { get: (n) => alloc(n), put: (b) => void free(b) };
    case 'arena.alloc': {
      const arena = new Arena();
      return { arena, get: (n) => arena.alloc(n), put: (b) => arena.release(b) };
    }
    case 'arena.allocUnsafe': {
      const arena = new Arena();
      return { arena, get: (n) => arena.allocUnsafe(n), put: (b) => arena.release(b) };
    }
  }
}

/** Sizes of the 'random' pattern: log-uniform from 1 KiB to 1 MiB, the same for every side. */
const RANDOM_SIZES = (() => {
  let x = 0x2545f491;
  return Array.from({ length: 4096 }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return Math.floor(KiB * 2 ** ((10 * (x >>> 0)) / 2 ** 32));
  });
})();

/**
 * Runs `ops` operations of a pattern; an operation is one buffer allocated and written
 * whole, and (now or later) given back. Every pattern but 'request' yields to the event
 * loop once per 1,024 operations, as a service allocating per request does; 'request'
 * yields after each. Yielding is also when Node runs the finalizers of detached external
 * buffers and the arena's purge timer: a loop that never yielded would time neither.
 */
async function run(pattern: Pattern, m: Maker, ops: number, first: number): Promise<void> {
  if (pattern === 'request') {
    for (let i = first; i < first + ops; i++) {
      const b = m.get(SIZE);
      b.fill(i & 0xff);
      m.put(b);
      await turn();
    }
    return;
  }
  if (pattern.startsWith('batch-')) {
    const n = Number(pattern.slice('batch-'.length));
    const live: Buffer[] = [];
    for (let i = first; i < first + ops; i++) {
      live.push(m.get(SIZE).fill(i & 0xff));
      if (live.length === n) {
        for (const b of live) m.put(b);
        live.length = 0;
      }
      if ((i & 1023) === 1023) await turn();
    }
    for (const b of live) m.put(b);
    return;
  }
  // A steady ring: each operation gives back the oldest buffer and allocates one.
  const random = pattern === 'random';
  const ring = rings.get(m) ?? [];
  rings.set(m, ring);
  const length = random ? 256 : 20_000;
  const sizeOf = (i: number): number => (random ? RANDOM_SIZES[i & 4095]! : SIZE);
  while (ring.length < length) ring.push(m.get(sizeOf(ring.length)).fill(1));
  for (let i = first; i < first + ops; i++) {
    const slot = i % length;
    m.put(ring[slot]!);
    ring[slot] = m.get(sizeOf(i)).fill(i & 0xff);
    if ((i & 1023) === 1023) await turn();
  }
}
const rings = new Map<Maker, Buffer[]>();

async function speed(pattern: Pattern, side: Side, ops: number): Promise<object> {
  const m = maker(side);
  // Warm up the JIT, the allocator and (for rings) fill the live set, untimed.
  const warm = Math.min(ops, 20_000);
  await run(pattern, m, warm, 0);
  await turn();
  const start = process.hrtime.bigint();
  const cpu = process.cpuUsage();
  await run(pattern, m, ops, warm);
  await turn(); // the last turn's finalizers count too
  const ns = Number(process.hrtime.bigint() - start);
  // CPU time of the whole process (GC threads included), which other processes on a busy
  // machine move less than wall time.
  const used = process.cpuUsage(cpu);
  const cpuNs = (used.user + used.system) * 1000;
  return { pattern, side, ops, nsPerOp: ns / ops, cpuNsPerOp: cpuNs / ops, node: process.version };
}

const rssAnon = (): number => Number(/RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * KiB;

/** Resident bytes of MADV_MERGEABLE mappings: the arena's chunks in this process. */
function chunkRss(): number {
  let total = 0;
  let mergeable = false;
  let rss = 0;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      if (mergeable) total += rss;
      mergeable = false;
      rss = 0;
    } else if (line.startsWith('Rss:')) rss = Number(/(\d+)/.exec(line)![1]) * KiB;
    else if (line.startsWith('VmFlags:')) mergeable = / mg\b/.test(line);
  }
  return mergeable ? total + rss : total;
}

/** Steady state: 20,000 live 16 KiB buffers after 100,000 random release+alloc. */
function memory(side: Side): object {
  const live = 20_000;
  const m = maker(side);
  globalThis.gc!();
  const before = rssAnon();
  const bufs = Array.from({ length: live }, (_, i) => m.get(SIZE).fill(i & 0xff));
  let x = 12345;
  for (let i = 0; i < 100_000; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const k = x % live;
    m.put(bufs[k]!);
    bufs[k] = m.get(SIZE).fill(i & 0xff);
  }
  globalThis.gc!();
  const livePages = live * Math.ceil(SIZE / pageSize) * pageSize;
  const result: Record<string, unknown> = { side, livePages, processOverhead: (rssAnon() - before) / livePages - 1 };
  if (m.arena) {
    const s = m.arena.stats();
    result.chunkOverhead = chunkRss() / livePages - 1;
    // The allocator's typed arrays: 4 Int32Arrays + 1 Uint8Array per chunk page.
    result.metadataOverhead = ((s.mappedBytes / pageSize) * 17) / livePages;
    result.stats = s;
  }
  return result;
}

/**
 * `mib` of 16 KiB buffers live and written, all released, then `seconds` of idleness: how
 * much of it the arena (default options) still holds resident, sampled every second.
 */
async function idle(mib: number, seconds: number): Promise<object> {
  const arena = new Arena();
  const count = (mib * KiB * KiB) / SIZE;
  const bufs = Array.from({ length: count }, (_, i) => arena.allocUnsafe(SIZE).fill(i & 0xff));
  const live = chunkRss();
  for (const b of bufs) arena.release(b);
  bufs.length = 0;
  const samples = [{ s: 0, resident: chunkRss(), dirty: arena.stats().dirtyBytes }];
  for (let s = 1; s <= seconds; s++) {
    await sleep(1000);
    samples.push({ s, resident: chunkRss(), dirty: arena.stats().dirtyBytes });
  }
  const bytes = mib * KiB * KiB;
  return { mib, live, samples, residentShare: samples.at(-1)!.resident / bytes, stats: arena.stats() };
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const [what, a, b, c] = process.argv.slice(2);
  let out: object;
  if (what === 'speed') out = await speed(a as Pattern, b as Side, Number(c));
  else if (what === 'memory') out = memory(a as Side);
  else if (what === 'idle') out = await idle(Number(a), Number(b));
  else throw new Error(`unknown measurement ${what}`);
  console.log(JSON.stringify(out));
}
