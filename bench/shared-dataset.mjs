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
//   node bench/shared-dataset.mjs [--workers 1,2,4,8] [--mib 512] [--load-workers 2]
//        [--seconds 5] [--rounds 5] [--connections 16] [--parts memory,lookups] [--json FILE]
//
// Needs root (boost). Runs are sequential: 8 × 512 MiB of plain copies is 4 GiB.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const { support, pageSize } = require('../dist/index.js');
const { binding } = require('../dist/binding.js');
const { RECORD_BYTES } = await import('../examples/shared-dataset/dataset.mjs');

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
const SERVER = fileURLToPath(new URL('../examples/shared-dataset/server.mjs', import.meta.url));
const LOAD = fileURLToPath(new URL('./shared-dataset-load.mjs', import.meta.url));

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
async function lockTests() {
  fs.mkdirSync('/run/node-ksm', { recursive: true });
  const fd = fs.openSync('/run/node-ksm/tests.lock', 'a');
  while (!binding.flock(fd, 2)) await sleep(50);
  return () => {
    binding.flock(fd, 0);
    fs.closeSync(fd);
  };
}

function memAvailable() {
  return Number(/MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))[1]) * 1024;
}

/** The example, started as users start it, in its own process group. */
function startService(workers, side) {
  const args = [SERVER, '--workers', String(workers), '--mib', String(mib), '--port', '0', '--log', 'json'];
  args.push(...(side === 'ksm' ? ['--boost'] : ['--no-ksm']));
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
  const events = [];
  let wake = () => {};
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    events.push(JSON.parse(line));
    wake();
  });
  let exited = false;
  child.on('exit', () => {
    exited = true;
    wake();
  });
  return {
    child,
    async next(name, timeoutMs = 600_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = events.find((x) => x.event === name);
        if (e) return e;
        const bad = events.find((x) => x.event === 'error' || x.event === 'merge-stalled');
        if (bad || exited || Date.now() > deadline)
          throw new Error(`${side} × ${workers}: no "${name}" (${JSON.stringify(bad ?? { exited })})`);
        await new Promise((r) => {
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
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    },
  };
}

/** PSS of a process, split into the table (its mapping: the only one that large) and the rest. */
function pss(pid) {
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

const fmt = (b) => `${(b / MiB).toFixed(0)} MiB`;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function memoryRun(workers, side) {
  const need = workers * bytes * 1.2 + 1024 * MiB;
  if (memAvailable() < need)
    throw new Error(`${workers} × ${mib} MiB needs about ${fmt(need)}; only ${fmt(memAvailable())} available`);
  const unlock = await lockTests();
  const svc = startService(workers, side);
  try {
    const ready = await svc.next('ready');
    let merged = null;
    if (side === 'ksm' && workers > 1) merged = await svc.next('merged');
    const per = ready.workers.map((w) => pss(w.pid));
    const sum = (k) => per.reduce((a, p) => a + p[k], 0);
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

function load(port, seconds = values.seconds) {
  const out = execFileSync(
    process.execPath,
    [
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
  return JSON.parse(out).rps;
}

async function throughput() {
  const unlock = await lockTests();
  const ksm = startService(loadWorkers, 'ksm');
  const plain = startService(loadWorkers, 'plain');
  try {
    const ports = { ksm: (await ksm.next('ready')).port, plain: (await plain.next('ready')).port };
    if (loadWorkers > 1) await ksm.next('merged');
    // One unrecorded load each first: the first seconds of a fresh service are JIT warm-up.
    for (const side of ['plain', 'ksm']) load(ports[side], 2);
    const rps = { ksm: [], plain: [] };
    for (let r = 0; r < Number(values.rounds); r++) {
      for (const side of r % 2 ? ['ksm', 'plain'] : ['plain', 'ksm']) rps[side].push(load(ports[side]));
    }
    const best = (xs) => Math.max(...xs);
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
const table = [];
if (parts.includes('memory')) {
  for (const n of counts) {
    for (const side of ['plain', 'ksm']) {
      const r = await memoryRun(n, side);
      table.push(r);
      console.log(
        `${String(n).padStart(2)} × ${mib} MiB ${side.padEnd(5)}: PSS ${fmt(r.pssTotal).padStart(9)} (table ${fmt(r.pssData)}, rest ${fmt(r.pssOther)})` +
          (r.mergeMs !== undefined
            ? `, merged ${(r.mergedRatio * 100).toFixed(1)} % in ${(r.mergeMs / 1000).toFixed(1)} s (95 % in ${(r.merge95Ms / 1000).toFixed(1)} s)`
            : '') +
          `, started in ${(r.startMs / 1000).toFixed(1)} s`,
      );
    }
  }
  const last = Math.max(...counts);
  const k = table.find((r) => r.workers === last && r.side === 'ksm');
  const p = table.find((r) => r.workers === last && r.side === 'plain');
  console.log(
    `${last} workers: the tables' PSS is ${(k.pssData / bytes).toFixed(3)} × one copy with node-ksm ` +
      `(goal <= 1.15), ${(p.pssData / bytes).toFixed(2)} × without; ordinary heap ${fmt(k.pssOther)} / ${fmt(p.pssOther)}`,
  );
}
let lookups;
if (parts.includes('lookups')) {
  lookups = await throughput();
  const rounds = (xs) => xs.map((x) => x.toFixed(0)).join(' ');
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
