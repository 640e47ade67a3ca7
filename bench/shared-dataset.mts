// Many workers, one copy: examples/shared-dataset with N workers × M MiB, node-ksm
// against plain Buffers (--no-ksm), side by side in one run.
//
//   1. memory: for each N, each side in a fresh service: total PSS of the workers once the
//      node-ksm side has merged (boosted with the library's boost(), released after).
//   2. merge time: from "all workers started" to "merged", with the default boost policy.
//   3. lookups: GET /item/:id throughput against both services, running at once and
//      loaded in turn (alternating, each load in a fresh process); ratio node-ksm / plain
//      of each side's best round, as bench/alloc.mjs does, to damp a shared machine's noise.
//
//   node --import tsx bench/shared-dataset.mts [--workers 1,2,4,8] [--mib 512] [--load-workers 2]
//        [--seconds 5] [--rounds 5] [--connections 16] [--parts memory,lookups] [--json FILE]
//
// Needs root (boost). Runs are sequential: 8 × 512 MiB of plain copies is 4 GiB.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pageSize, support } from 'node-ksm';
// The tests' lock needs flock(2), which only the addon has (see lockTests).
import { binding } from '../dist/binding.js';
import { RECORD_BYTES } from '../examples/shared-dataset/dataset.mjs';

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2,4,8' },
    mib: { type: 'string', default: '512' },
    'load-workers': { type: 'string', default: '2' },
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '5' },
    parts: { type: 'string', default: 'memory,lookups' },
    connections: { type: 'string', default: '16' },
    json: { type: 'string' },
  },
});
const counts = values.workers.split(',').map(Number);
const mib = Number(values.mib);
const MiB = 1024 * 1024;
const bytes = mib * MiB;
const loadWorkers = Number(values['load-workers']);
const SERVER = fileURLToPath(new URL('../examples/shared-dataset/server.mts', import.meta.url));
const LOAD = fileURLToPath(new URL('./shared-dataset-load.mts', import.meta.url));

type Side = 'ksm' | 'plain';
/** One line of the example's --log json output. */
type Event = { event: string; [k: string]: unknown };
/** The example's "ready" event. */
interface Ready extends Event {
  port: number;
  elapsedMs: number;
  workers: Array<{ id: number; pid: number }>;
}
/** The example's "merged" event. */
interface Merged extends Event {
  elapsedMs: number;
  ms95?: number;
  ratio: number;
}
interface Service {
  child: ChildProcess;
  next(name: 'ready', timeoutMs?: number): Promise<Ready>;
  next(name: 'merged', timeoutMs?: number): Promise<Merged>;
  stop(): Promise<void>;
}
interface MemoryRow {
  workers: number;
  side: Side;
  startMs: number;
  mergeMs?: number;
  merge95Ms?: number;
  mergedRatio?: number;
  pssTotal: number;
  pssData: number;
  pssOther: number;
}

const s = support();
if (!s.available || !s.canConfigure) {
  console.error(`bench/shared-dataset needs KSM and root (it boosts ksmd while merging):\n  ${s.reasons.join('\n  ')}`);
  process.exit(1);
}

/**
 * The tests' machine-wide lock (test/helpers/ksm.ts), held for each run: a test that
 * snapshots the KSM settings while this bench is boosted would put the boost back after
 * the bench released it; and a test's fast scanner would eat the CPU of a measurement.
 */
async function lockTests(): Promise<() => void> {
  const addon = binding!; // support().available above: the addon is loaded
  fs.mkdirSync('/run/node-ksm', { recursive: true });
  const fd = fs.openSync('/run/node-ksm/tests.lock', 'a');
  while (!addon.flock(fd, 2)) await sleep(50);
  return () => {
    addon.flock(fd, 0);
    fs.closeSync(fd);
  };
}

function memAvailable(): number {
  return Number(/MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;
}

/** The example, started as users start it, in its own process group. */
function startService(workers: number, side: Side): Service {
  const args = [
    '--import',
    'tsx',
    SERVER,
    '--workers',
    String(workers),
    '--mib',
    String(mib),
    '--port',
    '0',
    '--log',
    'json',
  ];
  args.push(...(side === 'ksm' ? ['--boost'] : ['--no-ksm']));
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
  const events: Event[] = [];
  let wake = () => {};
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    events.push(JSON.parse(line) as Event);
    wake();
  });
  let exited = false;
  child.on('exit', () => {
    exited = true;
    wake();
  });
  return {
    child,
    async next(name: string, timeoutMs = 600_000): Promise<never> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = events.find((x) => x.event === name);
        if (e) return e as never;
        const bad = events.find((x) => x.event === 'error' || x.event === 'merge-stalled');
        if (bad || exited || Date.now() > deadline)
          throw new Error(`${side} × ${workers}: no "${name}" (${JSON.stringify(bad ?? { exited })})`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 500);
        });
      }
    },
    /** SIGTERM first, so that the primary lets go of its boost itself; then the whole group. */
    async stop() {
      if (!exited) child.kill('SIGTERM');
      for (let i = 0; i < 100 && !exited; i++) await sleep(100);
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    },
  };
}

/** PSS of a process, split into the table (its mapping: the only one that large) and the rest. */
function pss(pid: number): { total: number; data: number; other: number } {
  let total = 0;
  let data = 0;
  let size = 0;
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    let m = /^Size:\s+(\d+) kB/.exec(line);
    if (m) size = Number(m[1]) * 1024;
    m = /^Pss:\s+(\d+) kB/.exec(line);
    if (m) {
      const b = Number(m[1]) * 1024;
      total += b;
      if (size >= bytes) data += b;
    }
  }
  return { total, data, other: total - data };
}

const fmt = (b: number) => `${(b / MiB).toFixed(0)} MiB`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function memoryRun(workers: number, side: Side): Promise<MemoryRow> {
  const need = workers * bytes * 1.2 + 1024 * MiB;
  if (memAvailable() < need)
    throw new Error(`${workers} × ${mib} MiB needs about ${fmt(need)}; only ${fmt(memAvailable())} available`);
  const unlock = await lockTests();
  const svc = startService(workers, side);
  try {
    const ready = await svc.next('ready');
    let merged: Merged | null = null;
    if (side === 'ksm' && workers > 1) merged = await svc.next('merged');
    const per = ready.workers.map((w) => pss(w.pid));
    const sum = (k: 'total' | 'data' | 'other') => per.reduce((a, p) => a + p[k], 0);
    return {
      workers,
      side,
      startMs: ready.elapsedMs,
      mergeMs: merged?.elapsedMs,
      merge95Ms: merged?.ms95,
      mergedRatio: merged?.ratio,
      pssTotal: sum('total'),
      pssData: sum('data'),
      pssOther: sum('other'),
    };
  } finally {
    await svc.stop();
    unlock();
  }
}

function load(port: number, seconds = values.seconds): number {
  const out = execFileSync(
    process.execPath,
    [
      '--import',
      'tsx',
      LOAD,
      '--port',
      String(port),
      '--records',
      String(bytes / RECORD_BYTES),
      '--seconds',
      String(seconds),
      '--connections',
      values.connections,
    ],
    { encoding: 'utf8' },
  );
  return (JSON.parse(out) as { rps: number }).rps;
}

async function throughput() {
  const unlock = await lockTests();
  const ksm = startService(loadWorkers, 'ksm');
  const plain = startService(loadWorkers, 'plain');
  try {
    const ports = { ksm: (await ksm.next('ready')).port, plain: (await plain.next('ready')).port };
    if (loadWorkers > 1) await ksm.next('merged');
    // One unrecorded load each first: the first seconds of a fresh service are JIT warm-up.
    for (const side of ['plain', 'ksm'] as const) load(ports[side], '2');
    const rps: Record<Side, number[]> = { ksm: [], plain: [] };
    for (let r = 0; r < Number(values.rounds); r++) {
      for (const side of r % 2 ? (['ksm', 'plain'] as const) : (['plain', 'ksm'] as const))
        rps[side].push(load(ports[side]));
    }
    const best = (xs: number[]) => Math.max(...xs);
    return {
      workers: loadWorkers,
      ksmRps: best(rps.ksm),
      plainRps: best(rps.plain),
      ratio: best(rps.ksm) / best(rps.plain),
      medianRatio: median(rps.ksm) / median(rps.plain),
      rounds: rps,
    };
  } finally {
    await ksm.stop();
    await plain.stop();
    unlock();
  }
}

const parts = values.parts.split(',');
const table: MemoryRow[] = [];
if (parts.includes('memory')) {
  for (const n of counts) {
    for (const side of ['plain', 'ksm'] as const) {
      const r = await memoryRun(n, side);
      table.push(r);
      console.log(
        `${String(n).padStart(2)} × ${mib} MiB ${side.padEnd(5)}: PSS ${fmt(r.pssTotal).padStart(9)} (table ${fmt(r.pssData)}, rest ${fmt(r.pssOther)})` +
          (r.mergeMs !== undefined
            ? `, merged ${(r.mergedRatio! * 100).toFixed(1)} % in ${(r.mergeMs / 1000).toFixed(1)} s (95 % in ${(r.merge95Ms! / 1000).toFixed(1)} s)`
            : '') +
          `, started in ${(r.startMs / 1000).toFixed(1)} s`,
      );
    }
  }
  const last = Math.max(...counts);
  const k = table.find((r) => r.workers === last && r.side === 'ksm')!;
  const p = table.find((r) => r.workers === last && r.side === 'plain')!;
  console.log(
    `${last} workers: the tables' PSS is ${(k.pssData / bytes).toFixed(3)} × one copy with node-ksm ` +
      `(goal <= 1.15), ${(p.pssData / bytes).toFixed(2)} × without; ordinary heap ${fmt(k.pssOther)} / ${fmt(p.pssOther)}`,
  );
}
let lookups: Awaited<ReturnType<typeof throughput>> | undefined;
if (parts.includes('lookups')) {
  lookups = await throughput();
  const rounds = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(' ');
  console.log(
    `lookups, ${lookups.workers} workers (best of ${values.rounds} × ${values.seconds} s): node-ksm ${lookups.ksmRps.toFixed(0)} req/s, ` +
      `plain ${lookups.plainRps.toFixed(0)} req/s, ratio ${lookups.ratio.toFixed(3)} (goal >= 0.95; medians ${lookups.medianRatio.toFixed(3)}; ` +
      `rounds ${rounds(lookups.rounds.ksm)} / ${rounds(lookups.rounds.plain)})`,
  );
}
if (values.json) {
  const summary = {
    bench: 'shared-dataset',
    mib,
    pageSize,
    memory: table,
    lookups,
    goals: 'node-ksm table PSS <= 1.15 × one copy; lookups ratio >= 0.95',
  };
  fs.writeFileSync(values.json, `${JSON.stringify(summary, null, 2)}\n`);
}
