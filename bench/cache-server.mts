// examples/cache-server against Debian's redis-server, side by side in one run, each
// server in its own fresh process:
//
//   memory      500 keys x 256 KiB. Duplicates (5 distinct blobs): PSS of three servers
//               holding the same data -- this project's server, redis-server, and
//               redis-server run under `node-ksm run` (process-wide merging, as systemd's
//               MemoryKSM=yes) -- after one boost() during which ksmd merges both mergeable
//               servers. Goals: ours <= 0.25x redis-server, <= 0.5x redis-server under
//               node-ksm run. Unique values (nothing to merge): ours <= 1.3x redis-server.
//   throughput  redis-benchmark GET and SET, 1 KiB and 64 KiB values, 50 clients,
//               pipeline 1 and 16: goal >= 0.75x redis-server's requests/s in each case.
//   keys        KEYS over 1M keys (200k with --quick) while another client PINGs every
//               millisecond: how long KEYS takes and the longest a PING waits (redis-server
//               answers nobody until KEYS is done; this server runs it in slices of a few
//               ms with other clients served in between). Goal: no longer than redis-server.
//
//   node --import tsx bench/cache-server.mts [--json FILE] [--quick] [--only memory|throughput|keys]
//     [--server-args="--idle-reclaim 0 ..."]   (extra options for this project's server)
//
// PSS against PSS: a merged page is shared, and PSS is what it costs each process that maps
// it; redis-server's PSS is its RSS less its share of shared library pages. Our server runs
// as plain JavaScript, compiled from the example's TypeScript into a temporary directory
// with TypeScript's own transpiler, as a service would deploy it: under `node --import tsx`
// the loader's thread alone adds ~30 MiB of PSS, which is the tool, not the server.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import ts from 'typescript';
import { boost, processStats, systemStats } from 'node-ksm';

const { values: opts } = parseArgs({
  options: {
    json: { type: 'string' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    'server-args': { type: 'string', default: '' },
  },
});
if (opts.only !== undefined && !['memory', 'throughput', 'keys'].includes(opts.only))
  throw new Error('--only takes memory, throughput or keys');
const part = (name: string) => opts.only === undefined || opts.only === name;
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLE = path.join(ROOT, 'examples/cache-server');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const KiB = 1024;
const MiB = 1024 * KiB;
const children = new Set<ChildProcess>();
const THROUGHPUT_GOAL = 0.75;

if (!fs.existsSync(CLI)) {
  console.error('bench/cache-server: dist/ is missing; run "npm run build:ts" first');
  process.exit(1);
}

/**
 * The example as plain JavaScript in a temporary directory: every .mts transpiled to .mjs
 * (its imports already name .mjs files), and `node-ksm` resolving to this checkout through
 * a node_modules link. Returns the server's path.
 */
function compileServer(): { server: string; dir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cache-server-bench-'));
  const names = fs.readdirSync(EXAMPLE, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.mts'));
  for (const name of names) {
    const source = fs.readFileSync(path.join(EXAMPLE, name), 'utf8');
    const { outputText } = ts.transpileModule(source, {
      fileName: name,
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    });
    const out = path.join(dir, name.replace(/\.mts$/, '.mjs'));
    fs.mkdirSync(path.dirname(out), { recursive: true });
    // The shebang names tsx; the copy is plain JavaScript.
    fs.writeFileSync(out, outputText.replace(/^#!.*\n/, ''));
  }
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(ROOT, path.join(dir, 'node_modules', 'node-ksm'), 'dir');
  return { server: path.join(dir, 'server.mjs'), dir };
}

interface Rollup {
  rss: number;
  pss: number;
}

function rollup(pid: number): Rollup {
  const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const get = (f: string) => Number(new RegExp(`^${f}:\\s+(\\d+) kB`, 'm').exec(text)![1]) * KiB;
  return { rss: get('Rss'), pss: get('Pss') };
}

/** PSS by kind of mapping: the C heap, other anonymous memory (V8, the Arena), files. */
function pssByKind(pid: number): { heap: number; anon: number; file: number } {
  const out = { heap: 0, anon: 0, file: 0 };
  let kind: keyof typeof out = 'anon';
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[1]!.trim();
      kind = name === '[heap]' ? 'heap' : name === '' || name.startsWith('[') ? 'anon' : 'file';
      continue;
    }
    const m = /^Pss:\s+(\d+) kB/.exec(line);
    if (m) out[kind] += Number(m[1]) * KiB;
  }
  return out;
}

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

function track(proc: ChildProcess): ChildProcess {
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

type Name = 'node-ksm' | 'redis' | 'redis-run';

interface Server {
  name: Name;
  /** The process spawned (for redis-run: node-ksm run, which forwards SIGTERM). */
  proc: ChildProcess;
  /** The process holding the data. */
  pid: number;
  port: number;
}

const compiled: { current: { server: string; dir: string } | null } = { current: null };

async function startOurs(): Promise<Server> {
  compiled.current ??= compileServer();
  const args = [compiled.current.server, '--port', '0', ...opts['server-args'].split(' ').filter(Boolean)];
  const proc = track(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] }));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    proc.once('exit', (code) => reject(new Error(`cache-server exited (${code})`)));
  });
  return { name: 'node-ksm', proc, pid: proc.pid!, port: Number(/:(\d+) pid=/.exec(line)![1]) };
}

const REDIS_ARGS = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'];

/** redis-server, or (merged) redis-server under `node-ksm run`, whose --json line names redis's pid. */
async function startRedis(merged = false): Promise<Server> {
  const port = await freePort();
  const redisArgs = ['--port', String(port), ...REDIS_ARGS];
  let proc: ChildProcess;
  let pid: number;
  if (merged) {
    proc = track(
      spawn(process.execPath, [CLI, 'run', '--json', '--', 'redis-server', ...redisArgs], {
        stdio: ['ignore', 'ignore', 'pipe'],
      }),
    );
    pid = await new Promise<number>((resolve, reject) => {
      let err = '';
      proc.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /^\{"event":"started".*$/m.exec(err);
        if (m) resolve((JSON.parse(m[0]) as { pid: number }).pid);
      });
      proc.once('exit', (code) => reject(new Error(`node-ksm run redis-server exited (${code}): ${err}`)));
    });
  } else {
    proc = track(spawn('redis-server', redisArgs, { stdio: 'ignore' }));
    pid = proc.pid!;
  }
  for (let i = 0; i < 100; i++) {
    try {
      await command(port, ['PING']);
      return { name: merged ? 'redis-run' : 'redis', proc, pid, port };
    } catch {
      await sleep(50);
    }
  }
  throw new Error('redis-server did not start');
}

async function stop(server: Server): Promise<void> {
  if (server.proc.exitCode !== null || server.proc.signalCode !== null) return;
  const exited = new Promise((r) => server.proc.once('exit', r));
  server.proc.kill('SIGTERM');
  await exited;
}

function frame(args: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(a);
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** One command on a fresh connection; resolves with the raw reply text (a bulk's payload). */
function command(port: number, args: Array<string | Buffer>): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('error', reject);
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      const m = /^\$(\d+)\r\n/.exec(got);
      if ((m && got.length >= m[0].length + Number(m[1]) + 2) || (!m && got.endsWith('\r\n') && got[0] !== '$')) {
        s.destroy();
        resolve(m ? got.slice(m[0].length, m[0].length + Number(m[1])) : got);
      }
    });
    s.write(frame(args));
  });
}

/** Pipelined SETs over one connection, at most 32 in flight; waits for every +OK. */
async function load(port: number, count: number, valueOf: (i: number) => Buffer): Promise<void> {
  const s = net.connect(port, '127.0.0.1');
  await new Promise((r) => s.once('connect', r));
  let ok = 0;
  let tail = '';
  let wake: (() => void) | null = null;
  s.on('data', (d: Buffer) => {
    const text = tail + d.toString('latin1');
    ok += text.split('+OK\r\n').length - 1;
    tail = text.slice(text.lastIndexOf('\n') + 1);
    wake?.();
  });
  const waitFor = async (target: number) => {
    while (ok < target) await new Promise<void>((r) => (wake = r));
  };
  for (let i = 0; i < count; i++) {
    if (i - ok >= 32) await waitFor(i - 16);
    s.write(frame(['SET', `key:${i}`, valueOf(i)]));
  }
  await waitFor(count);
  s.destroy();
}

async function info(port: number, section: string): Promise<Record<string, string>> {
  return Object.fromEntries(
    (await command(port, ['INFO', section]))
      .split('\r\n')
      .filter((l) => l.includes(':'))
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]),
  );
}

const KEYS = 500;
const VALUE = 256 * KiB;

interface MemoryResult {
  label: 'duplicates' | 'unique';
  logicalBytes: number;
  /** PSS and RSS after merging (duplicates) or after loading (unique), per server. */
  after: Partial<Record<Name, Rollup>>;
  before: Partial<Record<Name, Rollup>>;
  /** After, by kind of mapping, per server. */
  byKind: Partial<Record<Name, { heap: number; anon: number; file: number }>>;
  /** node-ksm run itself (the wrapper process), which systemd's MemoryKSM=yes would not need. */
  wrapperPss?: number;
  /** Share of our values merged, and redis-server's merging pages under node-ksm run. */
  merged: number | null;
  redisRunMergingBytes?: number;
  mergeMs: number | null;
}

/**
 * Holds one boost until our server's values are merged (its own count) and redis-server
 * under node-ksm run stops gaining merged pages for two full scans: both merge during the
 * same fast scanning.
 */
async function mergeBoth(ours: Server, redisRun: Server | null): Promise<{ merged: number; ms: number }> {
  const t0 = Date.now();
  const handle = await boost();
  try {
    let merged = 0;
    let last = -1;
    let stableSince = systemStats().fullScans ?? 0;
    for (let i = 0; i < 480; i++) {
      const k = await info(ours.port, 'ksm');
      merged = Number(k.ksm_process_merged_bytes) / (KEYS * VALUE);
      const scans = systemStats().fullScans ?? 0;
      let redisDone = true;
      if (redisRun !== null) {
        const now = processStats(redisRun.pid).mergingPages ?? 0;
        if (now !== last) {
          last = now;
          stableSince = scans;
        }
        redisDone = now > 0 && scans - stableSince >= 2;
      }
      if (merged >= 0.99 && redisDone) break;
      await sleep(250);
    }
    return { merged, ms: Date.now() - t0 };
  } finally {
    await handle.release();
  }
}

async function memoryCase(label: 'duplicates' | 'unique', valueOf: (i: number) => Buffer): Promise<MemoryResult> {
  const servers: Server[] = [];
  try {
    const ours = await startOurs();
    servers.push(ours);
    const redis = await startRedis();
    servers.push(redis);
    const redisRun = label === 'duplicates' ? await startRedis(true) : null;
    if (redisRun) servers.push(redisRun);
    for (const s of servers) await load(s.port, KEYS, valueOf);
    await sleep(500);
    const before = Object.fromEntries(servers.map((s) => [s.name, rollup(s.pid)]));
    let merged: number | null = null;
    let mergeMs: number | null = null;
    if (label === 'duplicates') {
      try {
        ({ merged, ms: mergeMs } = await mergeBoth(ours, redisRun));
      } catch (err) {
        process.stderr.write(`no KSM merge: ${(err as Error).message}\n`);
      }
    }
    const after = Object.fromEntries(servers.map((s) => [s.name, rollup(s.pid)]));
    return {
      label,
      logicalBytes: KEYS * VALUE,
      before,
      after,
      byKind: Object.fromEntries(servers.map((s) => [s.name, pssByKind(s.pid)])),
      wrapperPss: redisRun ? rollup(redisRun.proc.pid!).pss : undefined,
      merged,
      redisRunMergingBytes: redisRun ? (processStats(redisRun.pid).mergedBytes ?? 0) : undefined,
      mergeMs,
    };
  } finally {
    for (const s of servers) await stop(s);
  }
}

/** utime + stime of a process, in microseconds. */
function cpuMicros(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS;
}
/** USER_HZ, the unit of utime and stime: 100 on every Linux configuration in use. */
const CLOCK_TICKS = 100;

/** One redis-benchmark run of one operation: requests/s, and the server's CPU time per request. */
function benchmark(
  server: Server,
  op: 'SET' | 'GET',
  size: number,
  pipeline: number,
  n: number,
): Promise<{ rps: number; cpuUs: number }> {
  const args = ['-h', '127.0.0.1', '-p', String(server.port), '-t', op.toLowerCase(), '-d', String(size), '-c', '50'];
  args.push('-P', String(pipeline), '-n', String(n), '-r', '1000', '--csv');
  const cpu0 = cpuMicros(server.pid);
  return new Promise((resolve, reject) =>
    execFile('redis-benchmark', args, { maxBuffer: 16 * MiB }, (e, stdout) => {
      if (e) return reject(new Error(`redis-benchmark failed: ${e.message}`));
      const m = new RegExp(`^"${op}","([\\d.]+)"`, 'm').exec(stdout);
      if (!m) return reject(new Error(`redis-benchmark printed no ${op} figure: ${stdout}`));
      resolve({ rps: Number(m[1]), cpuUs: (cpuMicros(server.pid) - cpu0) / n });
    }),
  );
}

interface ThroughputRow {
  op: 'SET' | 'GET';
  size: number;
  pipeline: number;
  /** Best requests/s of the measured runs. */
  ours: number;
  redis: number;
  /** The server's CPU time per request (utime + stime), median of the measured runs, in µs. */
  oursCpuUs: number;
  redisCpuUs: number;
}

async function throughput(): Promise<ThroughputRow[]> {
  const ours = await startOurs();
  const redis = await startRedis();
  const q = opts.quick ? 0.2 : 1;
  const cases: Array<[number, number, number]> = [
    [1 * KiB, 1, 60_000],
    [1 * KiB, 16, 400_000],
    [64 * KiB, 1, 10_000],
    [64 * KiB, 16, 16_000],
  ];
  const rows: ThroughputRow[] = [];
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  try {
    for (const [size, pipeline, n] of cases) {
      const requests = Math.round(n * q);
      // First one unmeasured run per side: steady state is what a long-running server
      // serves, and this server is JIT-compiled (its first 10,000 SETs of 64 KiB ran ~25 %
      // slower than later ones). Then ABBA order: drift and bursts of load on a shared
      // machine hit both sides alike. Requests/s: the best run per side; CPU per request
      // (which load moves much less): the median.
      for (const s of [ours, redis]) {
        await command(s.port, ['FLUSHALL']);
        for (const op of ['SET', 'GET'] as const) await benchmark(s, op, size, pipeline, requests);
      }
      const runs = {
        'node-ksm': {
          SET: [] as Array<{ rps: number; cpuUs: number }>,
          GET: [] as Array<{ rps: number; cpuUs: number }>,
        },
        redis: { SET: [] as Array<{ rps: number; cpuUs: number }>, GET: [] as Array<{ rps: number; cpuUs: number }> },
      };
      for (const s of [ours, redis, redis, ours]) {
        await command(s.port, ['FLUSHALL']);
        for (const op of ['SET', 'GET'] as const)
          runs[s.name as 'node-ksm' | 'redis'][op].push(await benchmark(s, op, size, pipeline, requests));
      }
      for (const op of ['SET', 'GET'] as const) {
        const o = runs['node-ksm'][op];
        const r = runs.redis[op];
        rows.push({
          op,
          size,
          pipeline,
          ours: Math.max(...o.map((x) => x.rps)),
          redis: Math.max(...r.map((x) => x.rps)),
          oursCpuUs: median(o.map((x) => x.cpuUs)),
          redisCpuUs: median(r.map((x) => x.cpuUs)),
        });
      }
    }
  } finally {
    await stop(ours);
    await stop(redis);
  }
  return rows;
}

interface KeysRow {
  pattern: string;
  matched: number;
  ours: { keysMs: number; maxPingWaitMs: number };
  redis: { keysMs: number; maxPingWaitMs: number };
}

/** SETs of key:0 .. key:count-1 (value "v") over one connection, written as fast as it takes them. */
async function loadKeys(port: number, count: number): Promise<void> {
  const s = net.connect(port, '127.0.0.1');
  await new Promise((r) => s.once('connect', r));
  let ok = 0;
  let tail = '';
  const all = new Promise<void>((resolve) =>
    s.on('data', (d: Buffer) => {
      const text = tail + d.toString('latin1');
      ok += text.split('+OK\r\n').length - 1;
      tail = text.slice(text.lastIndexOf('\n') + 1);
      if (ok === count) resolve();
    }),
  );
  for (let i = 0; i < count; i += 10_000) {
    const parts: Buffer[] = [];
    for (let k = i; k < Math.min(count, i + 10_000); k++) parts.push(frame(['SET', `key:${k}`, 'v']));
    if (!s.write(Buffer.concat(parts))) await new Promise((r) => s.once('drain', r));
  }
  await all;
  s.destroy();
}

/** KEYS on one connection while another PINGs every millisecond. */
async function keysProbe(
  port: number,
  pattern: string,
): Promise<{ keysMs: number; maxPingWaitMs: number; matched: number }> {
  const connect = async () => {
    const s = net.connect(port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    return s;
  };
  const a = await connect();
  const b = await connect();
  let sentAt: number | null = null;
  let maxWait = 0;
  b.on('data', () => {
    if (sentAt !== null) maxWait = Math.max(maxWait, performance.now() - sentAt);
    sentAt = null;
  });
  const pinger = setInterval(() => {
    if (sentAt === null) {
      sentAt = performance.now();
      b.write('PING\r\n');
    }
  }, 1);
  const t0 = performance.now();
  // A PING after KEYS on the same connection marks the end of its reply (no key here
  // holds "+PONG"): the reader looks at the head and the tail of each chunk only, so that
  // this process, which also times the other client's PINGs, stays idle.
  const matched = await new Promise<number>((resolve) => {
    let head = '';
    let tail = '';
    a.on('data', (d: Buffer) => {
      if (head.length < 32) head += d.toString('latin1', 0, Math.min(d.length, 32));
      tail = (tail + d.toString('latin1', Math.max(0, d.length - 16))).slice(-16);
      if (tail.endsWith('+PONG\r\n')) resolve(Number(/^\*(\d+)\r\n/.exec(head)![1]));
    });
    a.write(Buffer.concat([frame(['KEYS', pattern]), frame(['PING'])]));
  });
  const keysMs = performance.now() - t0;
  clearInterval(pinger);
  // A PING sent while KEYS ran is answered after it: wait for that answer too.
  while (sentAt !== null) await sleep(1);
  a.destroy();
  b.destroy();
  return { keysMs, maxPingWaitMs: maxWait, matched };
}

async function keysCase(): Promise<KeysRow[]> {
  const count = opts.quick ? 200_000 : 1_000_000;
  const ours = await startOurs();
  const redis = await startRedis();
  const rows: KeysRow[] = [];
  try {
    await loadKeys(ours.port, count);
    await loadKeys(redis.port, count);
    for (const pattern of ['*', 'key:1*', 'nomatch*', '*a*a*a*a*a*b', '*[0-9]9?9']) {
      // Once unmeasured each (JIT, caches), then ABBA three times; the median per side
      // (on a shared machine one run can stall for a scheduling slice either way).
      await keysProbe(ours.port, pattern);
      await keysProbe(redis.port, pattern);
      type Probe = { keysMs: number; maxPingWaitMs: number };
      const runs: { ours: Probe[]; redis: Probe[] } = { ours: [], redis: [] };
      let matched = -1;
      for (let round = 0; round < 3; round++) {
        for (const [name, s] of [
          ['ours', ours],
          ['redis', redis],
          ['redis', redis],
          ['ours', ours],
        ] as const) {
          const m = await keysProbe(s.port, pattern);
          runs[name].push(m);
          if (matched >= 0 && m.matched !== matched)
            throw new Error(`KEYS ${pattern}: ${m.matched} against ${matched}`);
          matched = m.matched;
        }
      }
      const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
      const summary = (xs: Probe[]): Probe => ({
        keysMs: median(xs.map((x) => x.keysMs)),
        maxPingWaitMs: median(xs.map((x) => x.maxPingWaitMs)),
      });
      const r = { ours: summary(runs.ours), redis: summary(runs.redis) };
      rows.push({ pattern, matched, ...r });
    }
  } finally {
    await stop(ours);
    await stop(redis);
  }
  return rows;
}

const mib = (b: number | undefined) => (b === undefined ? '-' : (b / MiB).toFixed(1));
const started = Date.now();
const loadBefore = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
try {
  const blobs = Array.from({ length: 5 }, () => crypto.randomBytes(VALUE));
  const dup = part('memory') ? await memoryCase('duplicates', (i) => blobs[i % 5]!) : null;
  const uniq = part('memory') ? await memoryCase('unique', () => crypto.randomBytes(VALUE)) : null;
  const tput = part('throughput') ? await throughput() : [];
  const keys = part('keys') ? await keysCase() : [];

  const mark = (ok: boolean) => (ok ? 'ok' : 'MISSED');
  if (dup || uniq) {
    const table = [['memory, 500 x 256 KiB', 'node-ksm cache', 'redis-server', 'ratio', 'goal', '']];
    for (const m of [dup, uniq]) {
      if (m === null) continue;
      const ours = m.after['node-ksm']!.pss;
      const redis = m.after.redis!.pss;
      const goal = m.label === 'duplicates' ? 0.25 : 1.3;
      table.push([
        `${m.label === 'duplicates' ? 'from 5 blobs, merged' : 'unique'}`,
        `PSS ${mib(ours)} MiB`,
        `PSS ${mib(redis)} MiB`,
        `${(ours / redis).toFixed(2)}x`,
        `<= ${goal}x`,
        mark(ours / redis <= goal),
      ]);
      const run = m.after['redis-run'];
      if (run !== undefined) {
        table.push([
          '  against redis-server under node-ksm run',
          `PSS ${mib(ours)} MiB`,
          `PSS ${mib(run.pss)} MiB`,
          `${(ours / run.pss).toFixed(2)}x`,
          '<= 0.5x',
          mark(ours / run.pss <= 0.5),
        ]);
      }
    }
    print(table);
  }
  if (tput.length > 0) {
    const table = [
      [
        'throughput, 50 clients',
        'node-ksm cache',
        'redis-server',
        'ratio',
        'goal',
        '',
        'CPU/request: ours',
        'redis',
        'ratio',
      ],
    ];
    for (const t of tput) {
      const ratio = t.ours / t.redis;
      table.push([
        `${t.op} ${t.size / KiB} KiB, pipeline ${t.pipeline}`,
        `${Math.round(t.ours)} req/s`,
        `${Math.round(t.redis)} req/s`,
        `${ratio.toFixed(2)}x`,
        `>= ${THROUGHPUT_GOAL}x`,
        mark(ratio >= THROUGHPUT_GOAL),
        `${t.oursCpuUs.toFixed(1)} us`,
        `${t.redisCpuUs.toFixed(1)} us`,
        `${(t.oursCpuUs / t.redisCpuUs).toFixed(2)}x`,
      ]);
    }
    print(table);
  }
  if (keys.length > 0) {
    const table = [['KEYS, longest PING wait', 'node-ksm cache', 'redis-server', 'ratio', 'goal', '']];
    for (const k of keys) {
      const ratio = k.ours.maxPingWaitMs / Math.max(1, k.redis.maxPingWaitMs);
      table.push([
        `KEYS ${k.pattern} (${k.matched} keys)`,
        `${Math.round(k.ours.maxPingWaitMs)} ms (KEYS ${Math.round(k.ours.keysMs)})`,
        `${Math.round(k.redis.maxPingWaitMs)} ms (KEYS ${Math.round(k.redis.keysMs)})`,
        `${ratio.toFixed(2)}x`,
        '<= 1x',
        mark(ratio <= 1),
      ]);
    }
    print(table);
  }
  if (dup) {
    const k = dup.byKind['node-ksm']!;
    const anon = (n: Name) => {
      const x = dup.byKind[n];
      return x === undefined ? undefined : x.heap + x.anon;
    };
    console.log(
      `\nduplicates: ${(100 * (dup.merged ?? 0)).toFixed(0)} % of our values merged in ${((dup.mergeMs ?? 0) / 1000).toFixed(1)} s ` +
        `(one boost for both mergeable servers); redis-server under node-ksm run had ${mib(dup.redisRunMergingBytes)} MiB in merged pages.\n` +
        `Before merging, PSS: ours ${mib(dup.before['node-ksm']?.pss)}, redis-server ${mib(dup.before.redis?.pss)}, ` +
        `under node-ksm run ${mib(dup.before['redis-run']?.pss)} MiB. RSS after: ours ${mib(dup.after['node-ksm']?.rss)}, ` +
        `redis-server ${mib(dup.after.redis?.rss)}, under node-ksm run ${mib(dup.after['redis-run']?.rss)} MiB.\n` +
        `Our PSS after merging: C heap ${mib(k.heap)}, other anonymous (V8, Arena) ${mib(k.anon)}, files ${mib(k.file)} MiB. ` +
        `Anonymous memory alone (no shared files): ours ${mib(anon('node-ksm'))}, redis-server ${mib(anon('redis'))}, ` +
        `under node-ksm run ${mib(anon('redis-run'))} MiB.\n` +
        `node-ksm run's own process (not counted above): PSS ${mib(dup.wrapperPss)} MiB.`,
    );
  }
  console.log(
    `\nLoad average ${loadBefore} before, ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} after; ` +
      `${os.cpus().length} CPUs; run took ${((Date.now() - started) / 1000).toFixed(0)} s.`,
  );
  if (opts.json)
    fs.writeFileSync(
      opts.json,
      `${JSON.stringify({ memory: [dup, uniq].filter(Boolean), throughput: tput, keys, loadBefore }, null, 2)}\n`,
    );
} finally {
  for (const c of children) c.kill('SIGKILL');
  if (compiled.current) fs.rmSync(compiled.current.dir, { recursive: true, force: true });
}

function print(table: string[][]): void {
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  console.log('');
  for (const row of table)
    console.log(row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
}
