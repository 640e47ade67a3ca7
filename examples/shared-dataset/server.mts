// Many workers, one copy: a node:cluster HTTP service whose workers each build the same
// large table in node-ksm memory, so that ksmd can fold the N copies into one.
//
//   npm run example:shared-dataset -- --workers 4 --mib 512 --port 8080 [--boost] [--no-ksm]
//
//   GET /item/:id        one record (add ?page to see whether its page is merged)
//   PUT /item/:id        {"features": [14 numbers]}: writes into this worker's copy only
//   GET /stats           this worker's processStats, the table's bufferStats, systemStats
//
// Each worker also listens on a port of its own (printed at start, and in /stats), so
// one worker can be asked directly: the shared port hands connections out round-robin.
import cluster, { type Worker } from 'node:cluster';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  alloc,
  boost,
  bufferStats,
  pageSize,
  processStats,
  systemStats,
  type BoostHandle,
  type SystemStats,
} from 'node-ksm';
import {
  DEFAULT_SEED,
  FEATURES,
  RECORD_BYTES,
  build,
  readItem,
  recordCount,
  writeItem,
  type Item,
} from './dataset.mjs';

const MiB = 1024 * 1024;
const USAGE = `Usage: npm run example:shared-dataset -- [options]
  --workers N     worker processes (default: available cores)
  --mib M         size of each worker's table in MiB (default 512)
  --port P        shared HTTP port (default 8080; 0 picks one)
  --host H        address to bind (default 127.0.0.1)
  --seed S        generator seed (default ${DEFAULT_SEED})
  --no-ksm        build the table in plain Buffers, for comparison
  --boost         run ksmd fast (needs root) until the copies have merged, then restore it
  --log json      one JSON object per line instead of text`;

interface Options {
  workers: number;
  bytes: number;
  port: number;
  host: string;
  seed: number;
  ksm: boolean;
  boost: boolean;
  json: boolean;
}

function options(): Options {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        workers: { type: 'string', default: String(os.availableParallelism()) },
        mib: { type: 'string', default: '512' },
        port: { type: 'string', default: '8080' },
        host: { type: 'string', default: '127.0.0.1' },
        seed: { type: 'string', default: String(DEFAULT_SEED) },
        'no-ksm': { type: 'boolean', default: false },
        boost: { type: 'boolean', default: false },
        log: { type: 'string', default: 'text' },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const int = (name: 'workers' | 'mib' | 'port' | 'seed', min: number, max: number) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < min || n > max)
      usage(`--${name} must be an integer from ${min} to ${max}, got ${values[name]}`);
    return n;
  };
  if (values.log !== 'text' && values.log !== 'json') usage(`--log must be text or json, got ${values.log}`);
  if (values['no-ksm'] && values.boost) usage('--boost has nothing to do with --no-ksm');
  return {
    workers: int('workers', 1, 256),
    bytes: int('mib', 1, 4095) * MiB,
    port: int('port', 0, 65535),
    host: values.host,
    seed: int('seed', 0, 2 ** 32 - 1),
    ksm: !values['no-ksm'],
    boost: values.boost,
    json: values.log === 'json',
  };
}

function usage(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

const opts = options();
const who = cluster.isPrimary ? 'primary' : `worker ${cluster.worker!.id}`;

/** One line per event: `text` for people, or the event's fields as JSON for scripts. */
function log(event: string, fields: Record<string, unknown>, text: string): void {
  if (opts.json) console.log(JSON.stringify({ event, pid: process.pid, ...fields }));
  else console.log(`[${who}] ${text}`);
}

const fmtMiB = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const page = pageSize || 4096; // pageSize is 0 where the addon cannot load (--no-ksm still works)
const errorText = (err: unknown) => {
  const e = err as { code?: string; name?: string; message?: string };
  return `${e.code ?? e.name}: ${e.message}`;
};

/** What a worker tells the primary: its table could not be built, or it is serving. */
type WorkerMessage =
  | { type: 'error'; message: string }
  | { type: 'ready'; port: number; directPort: number; buildMs: number; pages: number };

/** A statistic, or why it is not available here (no KSM, another kernel...). */
function attempt<T>(fn: () => T): T | { error: string } {
  try {
    return fn();
  } catch (err) {
    return { error: errorText(err) };
  }
}

// BigInt-free JSON; the stats hold only numbers, strings and booleans.
function reply(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

// ---------------------------------------------------------------- worker

/** A worker: builds its copy of the table, then serves it on the shared port and its own. */
class TableServer {
  readonly #self: Worker;
  readonly #data: Buffer;
  readonly #buildMs: number;
  readonly #records = recordCount(opts.bytes);
  readonly #shared = http.createServer((req, res) => this.handle(req, res));
  // exclusive: a port of this worker's own instead of the primary's shared handle.
  readonly #direct = http.createServer((req, res) => this.handle(req, res));

  constructor(self: Worker) {
    this.#self = self;
    const started = performance.now();
    this.#data = buildTable();
    this.#buildMs = performance.now() - started;
  }

  start(): void {
    this.#shared.listen({ port: opts.port, host: opts.host }, () =>
      this.#direct.listen({ port: 0, host: opts.host, exclusive: true }, () => {
        send({
          type: 'ready',
          port: (this.#shared.address() as AddressInfo).port,
          directPort: (this.#direct.address() as AddressInfo).port,
          buildMs: Math.round(this.#buildMs),
          pages: Math.ceil(opts.bytes / page),
        });
      }),
    );
    process.on('SIGTERM', () => process.exit(0));
  }

  handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    try {
      this.route(req, res);
    } catch (err) {
      reply(res, 500, { error: (err as Error).message });
    }
  }

  route(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
    if (path === '/stats') {
      if (req.method !== 'GET') return reply(res, 405, { error: 'use GET' }, { allow: 'GET' });
      return reply(res, 200, this.stats());
    }
    if (!path.startsWith('/item/')) return reply(res, 404, { error: 'try GET /item/:id or GET /stats' });
    const id = /^\d{1,10}$/.test(path.slice(6)) ? Number(path.slice(6)) : -1;
    if (id < 0 || id >= this.#records)
      return reply(res, 404, { error: `no item ${path.slice(6)}: ids are 0 to ${this.#records - 1}` });
    if (req.method === 'GET') {
      const item: Item & { worker?: number; page?: unknown } = readItem(this.#data, id);
      item.worker = this.#self.id;
      if (query.has('page')) item.page = this.pageOf(id);
      return reply(res, 200, item);
    }
    if (req.method === 'PUT') return this.update(req, res, id);
    reply(res, 405, { error: 'use GET or PUT' }, { allow: 'GET, PUT' });
  }

  /** Writes go to this worker's copy only: the kernel gives it a private copy of that page. */
  update(req: http.IncomingMessage, res: http.ServerResponse, id: number): void {
    const chunks: Buffer[] = [];
    let size = 0;
    // Too large: answer at once, then let the rest drain (destroying the socket mid-upload
    // would leave the client with a reset instead of the answer).
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= 4096) chunks.push(c);
      else reply(res, 413, { error: 'body over 4 KiB' }, { connection: 'close' });
    });
    req.on('end', () => {
      if (size > 4096) return;
      let features: unknown;
      try {
        ({ features } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { features: unknown });
      } catch {
        return reply(res, 400, { error: 'body must be JSON: {"features": [...]}' });
      }
      if (!Array.isArray(features) || features.length !== FEATURES || !features.every(Number.isFinite)) {
        return reply(res, 400, { error: `features must be an array of ${FEATURES} finite numbers` });
      }
      writeItem(this.#data, id, features as number[]);
      reply(res, 200, { ...readItem(this.#data, id), worker: this.#self.id, page: this.pageOf(id) });
    });
  }

  /** Whether the page holding record `id` is a KSM page (exact as root, else an estimate). */
  pageOf(id: number): { index: number; merged: boolean | null; method?: string } {
    const start = Math.floor((id * RECORD_BYTES) / page) * page;
    const s = attempt(() => bufferStats(this.#data.subarray(start, start + page)));
    return 'error' in s
      ? { index: start / page, merged: null, method: undefined }
      : { index: start / page, merged: s.mergedPages > 0, method: s.method };
  }

  stats() {
    return {
      worker: { id: this.#self.id, pid: process.pid, directPort: (this.#direct.address() as AddressInfo).port },
      mode: opts.ksm ? 'ksm' : 'plain',
      dataset: {
        bytes: opts.bytes,
        records: this.#records,
        seed: opts.seed,
        buildMs: Math.round(this.#buildMs),
        buffer: attempt(() => bufferStats(this.#data)),
      },
      process: attempt(() => processStats()),
      system: attempt(() => systemStats()),
    };
  }
}

function send(message: WorkerMessage): void {
  process.send!(message);
}

/** The worker's table, in node-ksm memory (or a plain Buffer with --no-ksm), filled. */
function buildTable(): Buffer {
  let data: Buffer;
  try {
    data = opts.ksm ? alloc(opts.bytes) : Buffer.allocUnsafeSlow(opts.bytes);
  } catch (err) {
    send({ type: 'error', message: errorText(err) });
    process.exit(1);
  }
  build(data, opts.seed);
  return data;
}

// ---------------------------------------------------------------- primary

/** A worker that has built its table and serves it. */
interface ReadyWorker {
  id: number;
  pid: number;
  port: number;
  directPort: number;
  buildMs: number;
  pages: number;
}

/** The merge watch's view of the copies at one moment. */
interface MergeSample {
  sys: SystemStats;
  merged: number;
  ratio: number;
}

/**
 * The primary: forks the workers, replaces one that dies after it was ready, watches the
 * copies merge once all are ready (boosting ksmd meanwhile with --boost), and on a signal
 * lets go of any boost before it stops the workers.
 */
class Primary {
  readonly #t0 = performance.now();
  /** Worker id -> what it said when ready. */
  readonly #ready = new Map<number, ReadyWorker>();
  /** Bumped whenever the set of workers changes, to restart the merge watch. */
  #generation = 0;
  #stopping = false;
  /** The BoostHandle while the merge watch holds one. */
  #boosted: BoostHandle | null = null;

  start(): void {
    log(
      'start',
      { workers: opts.workers, bytes: opts.bytes, mode: opts.ksm ? 'ksm' : 'plain', boost: opts.boost },
      `${opts.workers} workers × ${fmtMiB(opts.bytes)} in ${opts.ksm ? 'node-ksm (mergeable) memory' : 'plain Buffers (--no-ksm)'}`,
    );
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, () => void this.stop(0));
    for (let i = 0; i < opts.workers; i++) this.fork();
  }

  fork(): void {
    const w = cluster.fork();
    w.on('message', (msg: WorkerMessage) => this.onMessage(w, msg));
    w.on('exit', (code: number | null, signal: NodeJS.Signals | null) => this.onExit(w, code, signal));
  }

  onMessage(w: Worker, msg: WorkerMessage): void {
    if (msg.type === 'error') {
      log(
        'error',
        { worker: w.id, message: msg.message },
        `worker ${w.id} could not build its table: ${msg.message}` +
          (opts.ksm ? '\n  (run with --no-ksm to compare without node-ksm)' : ''),
      );
      return void this.stop(1);
    }
    if (msg.type !== 'ready') return;
    const { type: _, ...info } = msg;
    this.#ready.set(w.id, { id: w.id, pid: w.process.pid!, ...info });
    log(
      'worker-ready',
      { worker: w.id, workerPid: w.process.pid, ...info },
      `worker ${w.id} (pid ${w.process.pid}) built ${fmtMiB(opts.bytes)} in ${(msg.buildMs / 1000).toFixed(1)} s; ` +
        `http://${opts.host}:${msg.port} (direct :${msg.directPort})`,
    );
    if (this.#ready.size === opts.workers) this.allReady();
  }

  onExit(w: Worker, code: number | null, signal: NodeJS.Signals | null): void {
    const was = this.#ready.get(w.id);
    this.#ready.delete(w.id);
    this.#generation++;
    if (this.#stopping) return;
    if (!was) {
      // Died while building (out of memory?): a new worker would fail the same way.
      log(
        'error',
        { worker: w.id, code, signal },
        `worker ${w.id} exited (${signal ?? code}) before its table was built`,
      );
      return void this.stop(1);
    }
    log('worker-exit', { worker: w.id, code, signal }, `worker ${w.id} exited (${signal ?? code}); starting another`);
    this.fork();
  }

  allReady(): void {
    const all = [...this.#ready.values()];
    const workers = all.map(({ id, pid, directPort, buildMs }) => ({ id, pid, directPort, buildMs }));
    const port = all[0]!.port;
    const elapsedMs = performance.now() - this.#t0;
    log(
      'ready',
      { port, workers, elapsedMs: Math.round(elapsedMs) },
      `all ${workers.length} workers serve http://${opts.host}:${port} (${(elapsedMs / 1000).toFixed(1)} s after start)`,
    );
    if (!opts.ksm) return log('note', {}, 'plain Buffers: nothing will merge; each worker holds its own copy');
    if (workers.length < 2) return log('nothing-to-merge', {}, 'one worker: its table has no other copy to merge with');
    this.watchMerge(this.#generation, all).catch((err: Error) =>
      log('error', { message: err.message }, `merge watch failed: ${err.message}`),
    );
  }

  /**
   * Sums ksm_merging_pages over the workers (cheap: a tiny /proc file each) until every
   * page of every copy is merged, or three full scans pass with no change.
   */
  async watchMerge(gen: number, workers: ReadyWorker[]): Promise<void> {
    const total = workers.reduce((sum, w) => sum + w.pages, 0);
    const handle = opts.boost ? await boostForMerge() : null;
    this.#boosted = handle;
    const started = performance.now();
    const elapsed = () => Math.round(performance.now() - started);
    let hinted = false;
    let last = -1;
    let changeScan = -1;
    let shownAt = 0;
    let ms95: number | undefined;
    try {
      while (!this.#stopping && gen === this.#generation) {
        const { sys, merged, ratio } = sample(workers, total);
        if (ms95 === undefined && ratio >= 0.95) ms95 = elapsed();
        if (sys.run !== 1 && !hinted) hinted = hintStopped(sys, workers.length);
        if (merged !== last) {
          last = merged;
          changeScan = sys.fullScans ?? 0;
        }
        const complete = merged >= total;
        // A change seen during scan c may belong to scan c: quiet from c+1 on, stable at c+3.
        const stable = sys.run === 1 && (sys.fullScans ?? 0) >= changeScan + 3;
        if (complete || stable) {
          const fields = { elapsedMs: elapsed(), ms95, ratio, mergedPages: merged, totalPages: total, complete };
          return reportMerge({ ...fields, savedBytes: sys.savedBytes, boosted: handle !== null }, workers.length);
        }
        if (!opts.json && performance.now() - shownAt > 2000) {
          shownAt = performance.now();
          log('progress', {}, `merging: ${(ratio * 100).toFixed(1)} % after ${(elapsed() / 1000).toFixed(1)} s`);
        }
        await sleep(handle ? 100 : 500);
      }
    } finally {
      this.#boosted = null;
      await handle?.release();
    }
  }

  async stop(code: number): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#generation++;
    // Before anything else: a machine left boosted burns a core until someone notices.
    await this.#boosted
      ?.release()
      .catch((err: Error) =>
        log(
          'error',
          { message: err.message },
          `could not restore the KSM settings: ${err.message} (run: npx node-ksm restore)`,
        ),
      );
    await stopWorkers(Object.values(cluster.workers ?? {}).filter((w) => w !== undefined));
    process.exit(code);
  }
}

/** A boost for as long as the copies take to merge, or null (and a warning) without root. */
async function boostForMerge(): Promise<BoostHandle | null> {
  try {
    const handle = await boost();
    log(
      'boost',
      { settings: handle.settings },
      'ksmd boosted until the copies have merged (the settings come back afterwards)',
    );
    return handle;
  } catch (err) {
    const e = err as { code?: string; message: string };
    log(
      'warn',
      { code: e.code, message: e.message },
      `cannot boost (${e.code}): ${e.message}; using ksmd as configured`,
    );
    return null;
  }
}

/** The merged pages of all the copies now, and the machine's KSM figures. */
function sample(workers: ReadyWorker[], total: number): MergeSample {
  const sys = systemStats();
  let merged = 0;
  for (const w of workers) {
    const stats = attempt(() => processStats(w.pid));
    merged += ('error' in stats ? undefined : stats.mergingPages) ?? 0;
  }
  return { sys, merged, ratio: merged / total };
}

/** Says, once, how to start ksmd when it is off; returns true (hinted). */
function hintStopped(sys: SystemStats, copies: number): true {
  log(
    'hint',
    { run: sys.run },
    `ksmd is not running (run=${sys.run}), so the ${copies} copies stay ${copies} copies. Start it, as root:\n` +
      "    echo 1 > /sys/kernel/mm/ksm/run      (the kernel's default pace, about 8 MiB/s; raise pages_to_scan to go faster)\n" +
      '    npx node-ksm boost                   (fast until you stop it, then the settings come back)\n' +
      '  or restart this example with --boost (fast only until the copies have merged)',
  );
  return true;
}

/** The merge watch's last word: merged (95 % or more), or stalled below that. */
function reportMerge(
  fields: { elapsedMs: number; ms95: number | undefined; ratio: number; savedBytes: number; [k: string]: unknown },
  copies: number,
): void {
  const text = `${(fields.ratio * 100).toFixed(1)} % of ${copies} × ${fmtMiB(opts.bytes)} merged after ${(fields.elapsedMs / 1000).toFixed(1)} s`;
  if (fields.ratio >= 0.95) {
    const at95 = fields.ms95 !== undefined ? ` (95 % after ${(fields.ms95 / 1000).toFixed(1)} s)` : '';
    log('merged', fields, `${text}${at95}; the machine saves ${fmtMiB(fields.savedBytes)}`);
  } else {
    log('merge-stalled', fields, `${text}, and three full scans changed nothing more`);
  }
}

/** SIGTERM to every worker, SIGKILL to those still there after 5 s. */
async function stopWorkers(workers: Worker[]): Promise<void> {
  const running = (w: Worker) => w.process.exitCode === null && w.process.signalCode === null;
  for (const w of workers) w.process.kill('SIGTERM');
  const deadline = Date.now() + 5000;
  while (workers.some(running) && Date.now() < deadline) await sleep(50);
  for (const w of workers) if (running(w)) w.process.kill('SIGKILL');
}

if (cluster.isPrimary) new Primary().start();
else new TableServer(cluster.worker!).start();
