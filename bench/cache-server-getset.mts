// Does the working tree's cache server serve plain GET and SET as fast as a baseline's
// (main by default)? Both servers run the same way (node --import tsx), one at a time,
// alternating A B A B so that drift on a shared machine hits both sides alike, each
// measured with redis-benchmark -t set,get (one test per redis-benchmark run). Prints
// medians of req/s and of the server's CPU time per request (utime + stime from
// /proc/PID/stat): on a machine shared with other work, throughput follows the load,
// while CPU per request mostly does not.
//
//   node --import tsx bench/cache-server-getset.mts [--ref main] [--tree REF] [--runs 3] [--requests 100000]
//
// --tree compares another ref instead of the working tree (to tell whose change cost what).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';

const run = promisify(execFile);
const { values: opts } = parseArgs({
  options: {
    ref: { type: 'string', default: 'main' },
    tree: { type: 'string' },
    runs: { type: 'string', default: '3' },
    requests: { type: 'string', default: '100000' },
  },
});
const root = path.resolve(import.meta.dirname, '..');
const RUNS = Number(opts.runs);
const N = opts.requests;

/** The baseline's examples/cache-server, unpacked inside the package so that 'node-ksm' resolves. */
async function unpackBaseline(ref: string): Promise<{ dir: string; server: string }> {
  const dir = fs.mkdtempSync(path.join(root, '.bench-baseline-'));
  dirs.push(dir);
  const { stdout } = await run('git', ['-C', root, 'archive', '--format=tar', ref, 'examples/cache-server'], {
    encoding: 'buffer',
    maxBuffer: 64 << 20,
  });
  const tar = spawn('tar', ['-x', '-C', dir], { stdio: ['pipe', 'inherit', 'inherit'] });
  tar.stdin.end(stdout);
  await new Promise((r) => tar.once('exit', r));
  const base = path.join(dir, 'examples/cache-server');
  const server = fs.existsSync(path.join(base, 'server.mts'))
    ? path.join(base, 'server.mts')
    : path.join(base, 'server.mjs');
  return { dir, server };
}

const children = new Set<ChildProcess>();
const dirs: string[] = [];
// Interrupted: no server or unpacked baseline left behind.
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    for (const p of children) p.kill('SIGKILL');
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    process.exit(1);
  });
}

async function start(server: string): Promise<{ proc: ChildProcess; port: number }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', server, '--port', '0'], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    proc.once('exit', (code) => reject(new Error(`${server} exited (${code})`)));
  });
  return { proc, port: Number(/:(\d+) pid=/.exec(line)![1]) };
}

const TICK_US = 1e6 / 100; // USER_HZ

/** utime + stime of a process, in µs. */
function cpuUs(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_US;
}

/** req/s and the server's CPU µs per request for one redis-benchmark test. */
async function benchmark(port: number, pid: number, test: string, pipeline: number): Promise<[number, number]> {
  const cpu0 = cpuUs(pid);
  const { stdout } = await run('redis-benchmark', [
    '-p',
    String(port),
    '-t',
    test,
    '-n',
    N,
    '-c',
    '50',
    '-d',
    '1024',
    '-P',
    String(pipeline),
    '-r',
    '10000',
    '--csv',
  ]);
  const cpu = (cpuUs(pid) - cpu0) / Number(N);
  const m = /^"[A-Z]+","([0-9.]+)"/m.exec(stdout.split('\n').slice(1).join('\n'));
  return [m === null ? 0 : Number(m[1]), cpu];
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

const baseline = await unpackBaseline(opts.ref);
const other = opts.tree === undefined ? null : await unpackBaseline(opts.tree);
const TREE = opts.tree ?? 'this tree';
const sides = [
  { name: opts.ref, server: baseline.server },
  { name: TREE, server: other?.server ?? path.join(root, 'examples/cache-server/server.mts') },
];
const results = new Map<string, number[]>();
const cpus = new Map<string, number[]>();
try {
  for (let r = 0; r < RUNS; r++) {
    for (const side of r % 2 === 0 ? sides : [...sides].reverse()) {
      const s = await start(side.server);
      try {
        for (const p of [1, 16]) {
          for (const t of ['set', 'get']) {
            const [rps, cpu] = await benchmark(s.port, s.proc.pid!, t, p);
            const k = `${side.name}|${t.toUpperCase()} 1 KiB, pipeline ${p}`;
            results.set(k, [...(results.get(k) ?? []), rps]);
            cpus.set(k, [...(cpus.get(k) ?? []), cpu]);
          }
        }
      } finally {
        s.proc.kill('SIGTERM');
        await new Promise((res) => s.proc.once('exit', res));
      }
    }
  }
} finally {
  fs.rmSync(baseline.dir, { recursive: true, force: true });
  if (other !== null) fs.rmSync(other.dir, { recursive: true, force: true });
}

const cases = [...new Set([...results.keys()].map((k) => k.split('|')[1]!))];
console.log(
  `\n| case (50 clients, ${N} requests, ${RUNS} runs, medians) | ${opts.ref} req/s | ${TREE} req/s | ratio | ${opts.ref} CPU µs/req | ${TREE} CPU µs/req | CPU ratio |`,
);
console.log('|---|---|---|---|---|---|---|');
for (const c of cases) {
  const a = median(results.get(`${opts.ref}|${c}`) ?? [0]);
  const b = median(results.get(`${TREE}|${c}`) ?? [0]);
  const ca = median(cpus.get(`${opts.ref}|${c}`) ?? [0]);
  const cb = median(cpus.get(`${TREE}|${c}`) ?? [0]);
  console.log(
    `| ${c} | ${a.toFixed(0)} | ${b.toFixed(0)} | ${(b / a).toFixed(2)} | ${ca.toFixed(2)} | ${cb.toFixed(2)} | ${(cb / ca).toFixed(2)} |`,
  );
}
