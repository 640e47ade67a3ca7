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
import cluster from 'node:cluster';
import http from 'node:http';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { alloc, boost, bufferStats, pageSize, processStats, systemStats } from 'node-ksm';
import { DEFAULT_SEED, FEATURES, RECORD_BYTES, build, readItem, recordCount, writeItem } from './dataset.mjs';

const MiB = 1024 * 1024;
const USAGE = `Usage: node examples/shared-dataset/server.mjs [options]
  --workers N     worker processes (default: available cores)
  --mib M         size of each worker's table in MiB (default 512)
  --port P        shared HTTP port (default 8080; 0 picks one)
  --host H        address to bind (default 127.0.0.1)
  --seed S        generator seed (default ${DEFAULT_SEED})
  --no-ksm        build the table in plain Buffers, for comparison
  --boost         run ksmd fast (needs root) until the copies have merged, then restore it
  --log json      one JSON object per line instead of text`;

function options() {
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
    usage(err.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const int = (name, min, max) => {
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

function usage(message) {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

const opts = options();
const who = cluster.isPrimary ? 'primary' : `worker ${cluster.worker.id}`;

/** One line per event: `text` for people, or the event's fields as JSON for scripts. */
function log(event, fields, text) {
  if (opts.json) console.log(JSON.stringify({ event, pid: process.pid, ...fields }));
  else console.log(`[${who}] ${text}`);
}

const fmtMiB = (bytes) => `${(bytes / MiB).toFixed(1)} MiB`;
const page = pageSize || 4096; // pageSize is 0 where the addon cannot load (--no-ksm still works)

if (cluster.isPrimary) primary();
else worker();

// ---------------------------------------------------------------- worker

function worker() {
  const started = performance.now();
  let data;
  try {
    data = opts.ksm ? alloc(opts.bytes) : Buffer.allocUnsafeSlow(opts.bytes);
  } catch (err) {
    process.send({ type: 'error', message: `${err.code ?? err.name}: ${err.message}` });
    process.exit(1);
  }
  build(data, opts.seed);
  const buildMs = performance.now() - started;
  const records = recordCount(opts.bytes);

  const handler = (req, res) => {
    try {
      route(req, res);
    } catch (err) {
      reply(res, 500, { error: err.message });
    }
  };
  const route = (req, res) => {
    const q = req.url.indexOf('?');
    const path = q < 0 ? req.url : req.url.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : req.url.slice(q + 1));
    if (path === '/stats') {
      if (req.method !== 'GET') return reply(res, 405, { error: 'use GET' }, { allow: 'GET' });
      return reply(res, 200, stats());
    }
    if (!path.startsWith('/item/')) return reply(res, 404, { error: 'try GET /item/:id or GET /stats' });
    const id = /^\d{1,10}$/.test(path.slice(6)) ? Number(path.slice(6)) : -1;
    if (id < 0 || id >= records)
      return reply(res, 404, { error: `no item ${path.slice(6)}: ids are 0 to ${records - 1}` });
    if (req.method === 'GET') {
      const item = readItem(data, id);
      item.worker = cluster.worker.id;
      if (query.has('page')) item.page = pageOf(id);
      return reply(res, 200, item);
    }
    if (req.method === 'PUT') return update(req, res, id);
    reply(res, 405, { error: 'use GET or PUT' }, { allow: 'GET, PUT' });
  };

  /** Writes go to this worker's copy only: the kernel gives it a private copy of that page. */
  const update = (req, res, id) => {
    const chunks = [];
    let size = 0;
    // Too large: answer at once, then let the rest drain (destroying the socket mid-upload
    // would leave the client with a reset instead of the answer).
    req.on('data', (c) => {
      size += c.length;
      if (size <= 4096) chunks.push(c);
      else reply(res, 413, { error: 'body over 4 KiB' }, { connection: 'close' });
    });
    req.on('end', () => {
      if (size > 4096) return;
      let features;
      try {
        ({ features } = JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        return reply(res, 400, { error: 'body must be JSON: {"features": [...]}' });
      }
      if (!Array.isArray(features) || features.length !== FEATURES || !features.every(Number.isFinite)) {
        return reply(res, 400, { error: `features must be an array of ${FEATURES} finite numbers` });
      }
      writeItem(data, id, features);
      reply(res, 200, { ...readItem(data, id), worker: cluster.worker.id, page: pageOf(id) });
    });
  };

  /** Whether the page holding record `id` is a KSM page (exact as root, else an estimate). */
  const pageOf = (id) => {
    const start = Math.floor((id * RECORD_BYTES) / page) * page;
    const s = attempt(() => bufferStats(data.subarray(start, start + page)));
    return { index: start / page, merged: s.error ? null : s.mergedPages > 0, method: s.method };
  };

  const stats = () => ({
    worker: { id: cluster.worker.id, pid: process.pid, directPort: direct.address().port },
    mode: opts.ksm ? 'ksm' : 'plain',
    dataset: {
      bytes: opts.bytes,
      records,
      seed: opts.seed,
      buildMs: Math.round(buildMs),
      buffer: attempt(() => bufferStats(data)),
    },
    process: attempt(() => processStats()),
    system: attempt(() => systemStats()),
  });

  const shared = http.createServer(handler);
  // exclusive: a port of this worker's own instead of the primary's shared handle.
  const direct = http.createServer(handler);
  shared.listen({ port: opts.port, host: opts.host }, () =>
    direct.listen({ port: 0, host: opts.host, exclusive: true }, () => {
      process.send({
        type: 'ready',
        port: shared.address().port,
        directPort: direct.address().port,
        buildMs: Math.round(buildMs),
        pages: Math.ceil(opts.bytes / page),
      });
    }),
  );
  process.on('SIGTERM', () => process.exit(0));
}

/** A statistic, or why it is not available here (no KSM, another kernel...). */
function attempt(fn) {
  try {
    return fn();
  } catch (err) {
    return { error: `${err.code ?? err.name}: ${err.message}` };
  }
}

// BigInt-free JSON; the stats hold only numbers, strings and booleans.
function reply(res, status, body, headers = {}) {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

// ---------------------------------------------------------------- primary

function primary() {
  const t0 = performance.now();
  const ready = new Map(); // worker id -> what it said when ready
  let generation = 0; // bumped whenever the set of workers changes, to restart the merge watch
  let stopping = false;
  let boosted = null; // the BoostHandle while the merge watch holds one

  log(
    'start',
    { workers: opts.workers, bytes: opts.bytes, mode: opts.ksm ? 'ksm' : 'plain', boost: opts.boost },
    `${opts.workers} workers × ${fmtMiB(opts.bytes)} in ${opts.ksm ? 'node-ksm (mergeable) memory' : 'plain Buffers (--no-ksm)'}`,
  );

  const fork = () => {
    const w = cluster.fork();
    w.on('message', (msg) => {
      if (msg.type === 'error') {
        log(
          'error',
          { worker: w.id, message: msg.message },
          `worker ${w.id} could not build its table: ${msg.message}` +
            (opts.ksm ? '\n  (run with --no-ksm to compare without node-ksm)' : ''),
        );
        return stop(1);
      }
      if (msg.type !== 'ready') return;
      const { type: _, ...info } = msg;
      ready.set(w.id, { id: w.id, pid: w.process.pid, ...info });
      log(
        'worker-ready',
        { worker: w.id, workerPid: w.process.pid, ...info },
        `worker ${w.id} (pid ${w.process.pid}) built ${fmtMiB(opts.bytes)} in ${(msg.buildMs / 1000).toFixed(1)} s; ` +
          `http://${opts.host}:${msg.port} (direct :${msg.directPort})`,
      );
      if (ready.size === opts.workers) allReady();
    });
    w.on('exit', (code, signal) => {
      const was = ready.get(w.id);
      ready.delete(w.id);
      generation++;
      if (stopping) return;
      if (!was) {
        // Died while building (out of memory?): a new worker would fail the same way.
        log(
          'error',
          { worker: w.id, code, signal },
          `worker ${w.id} exited (${signal ?? code}) before its table was built`,
        );
        return stop(1);
      }
      log('worker-exit', { worker: w.id, code, signal }, `worker ${w.id} exited (${signal ?? code}); starting another`);
      fork();
    });
  };

  const allReady = () => {
    const workers = [...ready.values()].map(({ id, pid, directPort, buildMs }) => ({ id, pid, directPort, buildMs }));
    const port = ready.values().next().value.port;
    log(
      'ready',
      { port, workers, elapsedMs: Math.round(performance.now() - t0) },
      `all ${workers.length} workers serve http://${opts.host}:${port} (${((performance.now() - t0) / 1000).toFixed(1)} s after start)`,
    );
    if (!opts.ksm) return log('note', {}, 'plain Buffers: nothing will merge; each worker holds its own copy');
    if (workers.length < 2) return log('nothing-to-merge', {}, 'one worker: its table has no other copy to merge with');
    watchMerge(generation, [...ready.values()]).catch((err) =>
      log('error', { message: err.message }, `merge watch failed: ${err.message}`),
    );
  };

  /**
   * Sums ksm_merging_pages over the workers (cheap: a tiny /proc file each) until every
   * page of every copy is merged, or three full scans pass with no change.
   */
  const watchMerge = async (gen, workers) => {
    const total = workers.reduce((sum, w) => sum + w.pages, 0);
    let handle = null;
    if (opts.boost) {
      try {
        handle = boosted = await boost();
        log(
          'boost',
          { settings: handle.settings },
          'ksmd boosted until the copies have merged (the settings come back afterwards)',
        );
      } catch (err) {
        log(
          'warn',
          { code: err.code, message: err.message },
          `cannot boost (${err.code}): ${err.message}; using ksmd as configured`,
        );
      }
    }
    const started = performance.now();
    const elapsed = () => Math.round(performance.now() - started);
    let hinted = false;
    let last = -1;
    let changeScan = -1;
    let shownAt = 0;
    let ms95;
    try {
      for (;;) {
        if (stopping || gen !== generation) return;
        const sys = systemStats();
        let merged = 0;
        for (const w of workers) merged += attempt(() => processStats(w.pid)).mergingPages ?? 0;
        const ratio = merged / total;
        if (ms95 === undefined && ratio >= 0.95) ms95 = elapsed();
        if (sys.run !== 1 && !hinted) {
          hinted = true;
          log(
            'hint',
            { run: sys.run },
            `ksmd is not running (run=${sys.run}), so the ${workers.length} copies stay ${workers.length} copies. Start it, as root:\n` +
              "    echo 1 > /sys/kernel/mm/ksm/run      (the kernel's default pace, about 8 MiB/s; raise pages_to_scan to go faster)\n" +
              '    npx node-ksm boost                   (fast until you stop it, then the settings come back)\n' +
              '  or restart this example with --boost (fast only until the copies have merged)',
          );
        }
        if (merged !== last) {
          last = merged;
          changeScan = sys.fullScans;
        }
        const complete = merged >= total;
        // A change seen during scan c may belong to scan c: quiet from c+1 on, stable at c+3.
        const stable = sys.run === 1 && sys.fullScans >= changeScan + 3;
        if (complete || stable) {
          const fields = {
            elapsedMs: elapsed(),
            ms95,
            ratio,
            mergedPages: merged,
            totalPages: total,
            complete,
            savedBytes: sys.savedBytes,
            boosted: handle !== null,
          };
          const text = `${(ratio * 100).toFixed(1)} % of ${workers.length} × ${fmtMiB(opts.bytes)} merged after ${(fields.elapsedMs / 1000).toFixed(1)} s`;
          if (ratio >= 0.95)
            log(
              'merged',
              fields,
              `${text}${ms95 !== undefined ? ` (95 % after ${(ms95 / 1000).toFixed(1)} s)` : ''}; the machine saves ${fmtMiB(sys.savedBytes)}`,
            );
          else log('merge-stalled', fields, `${text}, and three full scans changed nothing more`);
          return;
        }
        if (!opts.json && performance.now() - shownAt > 2000) {
          shownAt = performance.now();
          log('progress', {}, `merging: ${(ratio * 100).toFixed(1)} % after ${(elapsed() / 1000).toFixed(1)} s`);
        }
        await sleep(handle ? 100 : 500);
      }
    } finally {
      boosted = null;
      await handle?.release();
    }
  };

  const stop = async (code) => {
    if (stopping) return;
    stopping = true;
    generation++;
    // Before anything else: a machine left boosted burns a core until someone notices.
    await boosted
      ?.release()
      .catch((err) =>
        log(
          'error',
          { message: err.message },
          `could not restore the KSM settings: ${err.message} (run: npx node-ksm restore)`,
        ),
      );
    const workers = Object.values(cluster.workers);
    for (const w of workers) w.process.kill('SIGTERM');
    const deadline = Date.now() + 5000;
    while (workers.some((w) => w.process.exitCode === null && w.process.signalCode === null) && Date.now() < deadline)
      await sleep(50);
    for (const w of workers)
      if (w.process.exitCode === null && w.process.signalCode === null) w.process.kill('SIGKILL');
    process.exit(code);
  };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => stop(0));

  for (let i = 0; i < opts.workers; i++) fork();
}
