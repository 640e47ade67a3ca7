#!/usr/bin/env -S node --import tsx
// A Redis-protocol cache whose values live in mergeable memory (node-ksm Arena).
//
//   npm run cache-server -- --port 6390 [--bind 127.0.0.1] [--maxmemory 1gb]
//     [--maxmemory-policy allkeys-lru|volatile-lru|noeviction] [--maxclients 10000]
//     [--requirepass secret] [--proto-max-bulk-len 512mb] [--ksm-threshold 4096]
//     [--workers N] [--gc-every 4mb] [--idle-reclaim 500]
//
// Binds to loopback unless told otherwise: merged pages are a timing side channel
// between processes, and a cache is no place to serve anyone who can reach the port.
import cluster from 'node:cluster';
import net, { type AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import { KsmError, pageSize, trimHeap } from 'node-ksm';
import { E, parseMemory, resolve, type Command } from './commands.mjs';
import { FAST_GET, ProtocolError, RespParser, Writer } from './resp.mjs';
import { Store, T_STRING, type Policy, type Watcher } from './store.mjs';

/** Replies buffered before they are handed to the socket mid-batch. */
const FLUSH_AT = 256 * 1024;
/** Stop reading from a client whose unsent replies exceed this, until they drain. */
const OUTPUT_LIMIT = 4 * 1024 * 1024;
/**
 * Graceful shutdown waits this long for clients to take their last replies, then closes
 * what is left and exits: SIGTERM is honoured within a second, also while a client that
 * does not read its replies keeps sending (its writes would never finish).
 */
const SHUTDOWN_GRACE_MS = 750;

const USAGE = `usage: node --import tsx examples/cache-server/server.mts [--port 6379] [--bind 127.0.0.1]
  [--maxmemory 0] [--maxmemory-policy allkeys-lru|volatile-lru|noeviction] [--maxclients 10000]
  [--requirepass PASSWORD] [--proto-max-bulk-len 512mb] [--client-query-buffer-limit 1gb]
  [--ksm-threshold ${pageSize}] [--workers 1] [--gc-every 4mb] [--idle-reclaim 500]`;

export interface Config {
  port: number;
  bind: string;
  maxmemory: number;
  policy: Policy;
  maxclients: number;
  requirepass: string | null;
  protoMaxBulkLen: number;
  /** Redis's client-query-buffer-limit: a client whose pending input passes this is closed. */
  queryBufferLimit: number;
  threshold: number;
  workers: number;
  gcEvery: number;
  idleReclaim: number;
}

function fail(msg: string): never {
  process.stderr.write(`cache-server: ${msg}\n${USAGE}\n`);
  process.exit(1);
}

const OPTIONS = {
  port: { type: 'string', default: '6379' },
  bind: { type: 'string', default: '127.0.0.1' },
  maxmemory: { type: 'string', default: '0' },
  'maxmemory-policy': { type: 'string', default: 'allkeys-lru' },
  maxclients: { type: 'string', default: '10000' },
  requirepass: { type: 'string' },
  'proto-max-bulk-len': { type: 'string', default: '512mb' },
  'client-query-buffer-limit': { type: 'string', default: '1gb' },
  'ksm-threshold': { type: 'string', default: String(pageSize) },
  workers: { type: 'string', default: '1' },
  'gc-every': { type: 'string', default: '4mb' },
  'idle-reclaim': { type: 'string', default: '500' },
  help: { type: 'boolean', default: false },
} as const;

function parseConfig(argv: string[]): Config {
  let values: ReturnType<typeof parseArgs<{ args: string[]; options: typeof OPTIONS }>>['values'];
  try {
    ({ values } = parseArgs({
      args: argv,
      options: OPTIONS,
    }));
  } catch (err) {
    fail((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  type Name =
    | 'port'
    | 'maxclients'
    | 'workers'
    | 'idle-reclaim'
    | 'maxmemory'
    | 'proto-max-bulk-len'
    | 'client-query-buffer-limit'
    | 'ksm-threshold'
    | 'gc-every';
  const int = (name: Name, min: number, max: number): number => {
    const n = Number(values[name]);
    if (!/^[0-9]+$/.test(values[name]) || n < min || n > max)
      fail(`--${name} must be an integer from ${min} to ${max}`);
    return n;
  };
  const mem = (name: Name, min: number): number => {
    const n = parseMemory(values[name]);
    if (n === undefined || n < min) fail(`--${name} must be a memory size (like 100mb) of at least ${min}`);
    return n;
  };
  const policy = values['maxmemory-policy'].toLowerCase();
  if (!['allkeys-lru', 'volatile-lru', 'noeviction'].includes(policy))
    fail('--maxmemory-policy must be allkeys-lru, volatile-lru or noeviction');
  return {
    port: int('port', 0, 65535),
    bind: values.bind,
    maxmemory: mem('maxmemory', 0),
    policy: policy as Policy,
    maxclients: int('maxclients', 1, 1e9),
    requirepass: values.requirepass || null,
    protoMaxBulkLen: mem('proto-max-bulk-len', 1024 * 1024),
    queryBufferLimit: mem('client-query-buffer-limit', 1024 * 1024),
    threshold: mem('ksm-threshold', 1),
    workers: int('workers', 1, 1024),
    gcEvery: mem('gc-every', 0),
    idleReclaim: int('idle-reclaim', 0, 3_600_000),
  };
}

/**
 * GC on demand (see CacheServer.churn and CacheServer.reclaimTick). Node has `gc` only
 * behind --expose-gc; turning the flag on at run time gives it to contexts made
 * afterwards, so one vm context is made to fetch it. Public APIs only (node:v8, node:vm),
 * and nothing else changes: the main context never sees a global `gc`.
 */
const gc = ((): ((opts?: { type: 'minor' | 'major' }) => void) => {
  v8.setFlagsFromString('--expose-gc');
  const fn = vm.runInNewContext('gc') as (opts?: { type: 'minor' | 'major' }) => void;
  v8.setFlagsFromString('--no-expose-gc');
  return fn;
})();
const collectYoung = (): void => gc({ type: 'minor' });

/**
 * Test seam for out-of-memory handling: CACHE_SERVER_FAIL_ALLOC="3,7" makes the 3rd and the
 * 7th allocation from the store's Arena throw ENOMEM, as its mmap does when memory runs
 * out. Unset (always, outside tests) nothing is wrapped, so it costs nothing.
 */
function injectAllocFailures(store: Store, spec: string): void {
  const failing = new Set(spec.split(',').map((n) => Number(n.trim())));
  const arena = store.arena;
  const real = arena.allocUnsafe.bind(arena);
  let calls = 0;
  arena.allocUnsafe = (size: number) => {
    calls++;
    if (failing.has(calls))
      throw new KsmError(`mmap: Cannot allocate memory (CACHE_SERVER_FAIL_ALLOC, allocation ${calls})`, 'ENOMEM', {
        errno: -12,
        syscall: 'mmap',
      });
    return real(size);
  };
}

/** Traffic after which a quiet spell gives memory back (CacheServer.reclaimTick). */
const RECLAIM_AFTER = 16 * 1024 * 1024;
/** Less than this much traffic in one 100 ms tick counts as quiet (INFO, PING, stray GETs). */
const QUIET_PER_TICK = 64 * 1024;

let nextClientId = 1;

/**
 * Lines to stderr, at most LOG_BURST a second, so that a client that keeps provoking
 * errors cannot flood the log (or the disk behind it); the next line says how many were
 * left out.
 */
const LOG_BURST = 10;
let logWindow = 0;
let logged = 0;
let unlogged = 0;
function log(message: string): void {
  const now = Math.floor(Date.now() / 1000);
  if (now !== logWindow) {
    if (unlogged > 0) process.stderr.write(`cache-server: (${unlogged} log lines left out)\n`);
    logWindow = now;
    logged = 0;
    unlogged = 0;
  }
  if (logged++ < LOG_BURST) process.stderr.write(`cache-server: ${message}\n`);
  else unlogged++;
}

/** An allocation failed (mmap ENOMEM, V8 out of ArrayBuffer memory): the command gets -OOM. */
function outOfMemory(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  return (
    e?.code === 'ENOMEM' ||
    e?.code === 'ERR_MEMORY_ALLOCATION_FAILED' ||
    (err instanceof RangeError && /allocation failed|Array buffer/i.test(String(e?.message)))
  );
}

/** The reply for a command that threw: Redis's OOM prefix for memory, ERR otherwise. */
function failureReply(name: string, err: unknown): string {
  const why = err instanceof Error ? err.message : String(err);
  return outOfMemory(err) ? `OOM out of memory running '${name}' (${why})` : `ERR internal error in '${name}': ${why}`;
}

/** Clients whose replies wait for the end of this turn of the event loop. */
const pending: Client[] = [];
let flushScheduled = false;
function flushPending(): void {
  flushScheduled = false;
  for (let i = 0; i < pending.length; i++) {
    const c = pending[i]!;
    c.queued = false;
    c.flush();
  }
  pending.length = 0;
}

/**
 * The one buffer every client's socket reads land in, except the rest of a large value
 * once its header has been parsed, which lands in the value's own buffer
 * (RespParser.readTarget). 256 KiB: libuv reads again at once whenever a read fills the
 * buffer, so a 64 KiB SET (65.6 KiB with its header) took two reads into 64 KiB, and
 * three when its header was read apart from its value into 4 KiB; into 256 KiB it takes
 * one, as into redis-server's query buffer once it has grown. redis-benchmark SET 64 KiB,
 * pipeline 1, 50 clients, against redis-server in the same runs: 0.56-0.63x with 64 KiB,
 * 0.85-0.96x with 256 KiB; pipelined 1 KiB SETs no different. Reads are handled one at a
 * time, and nothing outlives its read: keys become strings, values are copied into the
 * store and replies into the writer's buffers (arguments this small are never sent by
 * reference), and the parser copies what it holds of it before the next read (unshare).
 */
const READ_BUFFER = Buffer.allocUnsafeSlow(256 * 1024);
/** Read with 'data' events anyway (see adopt()). */
const DATA_READS = process.env.CACHE_SERVER_READS === 'data';

/**
 * Node reads into buffers of the caller's choosing (the `onread` option) only for sockets
 * constructed with that option, which a server's connections never are. So connections
 * arrive paused (pauseOnConnect) and their handle moves to a socket constructed with
 * `onread`: no buffer is allocated per read (so no garbage for V8 and the C heap to
 * hold), and the bulk of a large value is read straight into its Arena buffer. Measured
 * against reading 'data' chunks, redis-benchmark, 50 clients, same runs: SET 64 KiB pipeline 1 12.7-15.2k
 * req/s against 10.4-11.5k; SET 1 KiB pipeline 16 370-390k against 320-370k.
 *
 * Returns null when there is no handle to move (another runtime), or with
 * CACHE_SERVER_READS=data (for comparison): that connection is read with 'data' events.
 */
interface OnRead {
  buffer: () => Uint8Array;
  callback: (n: number, buf: Uint8Array) => boolean | void;
}

/** What adopt() relies on: the handle (a libuv stream wrap) behind a Socket. Not public API. */
type WithHandle = net.Socket & { _handle: { readStart?: unknown } | null };

function adopt(orig: net.Socket, onread: OnRead): net.Socket | null {
  const handle = (orig as WithHandle)._handle;
  if (DATA_READS || handle == null || typeof handle.readStart !== 'function') return null;
  (orig as WithHandle)._handle = null;
  const socket = new net.Socket({
    handle,
    allowHalfOpen: true,
    readable: true,
    writable: true,
    onread,
  } as net.SocketConstructorOpts);
  // The old socket object lets go without closing the handle; the server's count of
  // connections (unused here: Client keeps its own) drops with it.
  orig.destroy();
  return socket;
}

/**
 * Commands that run at once inside MULTI instead of being queued (Redis's processCommand).
 * RESET and QUIT are by name: they are looked up the same way as any other.
 */
const UNQUEUED = new Set(['exec', 'discard', 'multi', 'watch', 'quit', 'reset']);

export class Client implements Watcher {
  srv: CacheServer;
  store: Store;
  parser: RespParser;
  socket: net.Socket;
  id: number;
  addr: string;
  since: number;
  name: string | null;
  lastCommand: string;
  authenticated: boolean;
  w: Writer;
  blocked: boolean;
  closing: boolean;
  eof: boolean;
  queued: boolean;
  laddr: string;
  lastActive: number;
  /** Commands queued since MULTI, or null outside a transaction. */
  multi: Buffer[][] | null = null;
  /**
   * Bytes of the arguments queued by MULTI: memory the client holds, counted against
   * client-query-buffer-limit with its pending input (as Redis 7.2+ counts
   * mstate.argv_len_sums; 7.0 let a MULTI queue grow without bound).
   */
  multiBytes = 0;
  /** A command was refused while queueing: EXEC answers EXECABORT. */
  multiError = false;
  /** A WATCHed key was written: EXEC answers a null array. */
  dirty = false;
  watched = new Map<string, { expired: boolean }>();

  constructor(srv: CacheServer, orig: net.Socket) {
    this.srv = srv;
    this.store = srv.store;
    this.parser = new RespParser({
      maxBulkLen: srv.config.protoMaxBulkLen,
      allocLarge: (len) => this.store.allocInbound(len),
    });
    const socket =
      adopt(orig, {
        buffer: () => this.parser.readTarget() ?? READ_BUFFER,
        callback: (n, buf) => this.onRead(n, buf as Buffer),
      }) ?? orig;
    this.socket = socket;
    this.id = nextClientId++;
    this.addr = `${socket.remoteAddress}:${socket.remotePort}`;
    this.laddr = `${socket.localAddress}:${socket.localPort}`;
    this.since = Date.now();
    this.lastActive = this.since;
    this.name = null;
    this.lastCommand = 'NULL';
    this.authenticated = srv.config.requirepass === null;
    this.w = new Writer(socket, srv.store);
    this.parser.authenticated = this.authenticated;
    this.blocked = false;
    this.closing = false;
    this.eof = false;
    this.queued = false;

    socket.setNoDelay(true);
    if (socket === orig) {
      socket.on('data', (chunk: Buffer) => this.onData(chunk));
      socket.resume();
    }
    socket.on('drain', () => {
      if (!this.blocked) return;
      this.blocked = false;
      socket.resume();
      this.run();
    });
    socket.on('end', () => {
      this.eof = true;
      this.run();
    });
    // A reset or a write to a closed peer: the 'close' that follows cleans up.
    socket.on('error', () => {});
    socket.on('close', () => this.dispose());
  }

  /** A read of `n` bytes into `buf`: READ_BUFFER, or the large value being received. */
  onRead(n: number, buf: Buffer): void {
    // Nothing was allocated for this read: traffic, but no churn.
    this.srv.stats.netIn += n;
    this.srv.traffic += n;
    if (this.closing) return; // after QUIT, a protocol error or SHUTDOWN: input is ignored
    if (buf === READ_BUFFER) {
      this.parser.feed(READ_BUFFER.subarray(0, n));
      this.run();
      this.parser.unshare(READ_BUFFER);
    } else {
      this.parser.filled(n);
      this.run();
    }
    if (this.parser.held + this.multiBytes > this.srv.config.queryBufferLimit) this.overLimit();
  }

  /** A chunk from a 'data' event: a fresh buffer for every read. */
  onData(chunk: Buffer): void {
    this.srv.stats.netIn += chunk.length;
    this.srv.traffic += chunk.length;
    this.srv.churn(chunk.length);
    if (this.closing) return;
    this.parser.feed(chunk);
    this.run();
    if (this.parser.held + this.multiBytes > this.srv.config.queryBufferLimit) this.overLimit();
  }

  /**
   * The pending command passed client-query-buffer-limit: as Redis does, log it and close
   * the connection without a reply (what the client sent so far is dropped with it).
   */
  overLimit(): void {
    const p = this.parser;
    const head = p.buf.subarray(p.pos, p.pos + 64).toString('latin1');
    log(
      `Closing client that reached max query buffer length: id=${this.id} addr=${this.addr} ` +
        `qbuf=${p.held} multi-mem=${this.multiBytes} (qbuf initial bytes: ${JSON.stringify(head)})`,
    );
    this.srv.stats.queryBufferClosed++;
    this.closing = true;
    // The replies of commands already run go first (the kernel takes them now), so that
    // where the limit falls does not depend on how the input was split into reads.
    this.flush();
    this.socket.destroy();
  }

  authenticate(): void {
    this.authenticated = true;
    this.parser.authenticated = true;
  }

  /** A command is running in slices (see slices()): this client's next commands wait for it. */
  busy = false;
  /**
   * Above 0 while commands must run to completion at once, as inside EXEC: slices() then
   * does all the work in one go.
   */
  atomic = 0;

  /**
   * Runs `step` until it returns true: the first time now, then, if it is not done, on
   * later turns of the event loop, so that a long command (KEYS over a large key space)
   * lets the other clients in between its slices instead of making them wait for all of
   * it, as Redis does. This client's own later commands wait, in order. `step` should
   * return after a few milliseconds of work, and write its reply only in its last call.
   */
  slices(name: string, step: () => boolean): void {
    if (this.atomic > 0) {
      while (!step());
      return;
    }
    if (step()) return;
    this.busy = true;
    const turn = (): void => {
      if (this.socket.destroyed) return;
      this.w.mark();
      let done = true;
      try {
        done = step();
      } catch (err) {
        this.failed(name, err);
      }
      if (!done) {
        setImmediate(turn);
        return;
      }
      this.busy = false;
      this.run();
    };
    setImmediate(turn);
  }

  /** Runs every complete command received, in order, until the input or the output limit runs out. */
  run(): void {
    const w = this.w;
    const parser = this.parser;
    while (!this.blocked && !this.closing && !this.busy) {
      // Inside MULTI even GET and SET are queued: no fast path.
      const fast = this.multi === null ? parser.fast() : 0;
      if (fast !== 0) {
        this.execFast(fast);
        if (w.size >= FLUSH_AT) this.flush();
        continue;
      }
      let argv: Buffer[] | null;
      try {
        argv = parser.next();
      } catch (err) {
        if (err instanceof ProtocolError) w.error(`ERR Protocol error: ${err.message}`);
        else {
          // Not the client's doing, and the parser's state is not to be trusted: answer
          // and close this connection only.
          log(`error parsing input of client id=${this.id} addr=${this.addr}: ${(err as Error)?.stack ?? String(err)}`);
          w.error(failureReply('parser', err));
        }
        this.closeAfterReply();
        break;
      }
      if (argv === null) break;
      if (parser.failure !== null) {
        // A bulk of this command could not be allocated; its bytes were skipped.
        const err = parser.failure;
        parser.failure = null;
        this.srv.stats.commands++;
        w.error(failureReply(argv.length > 0 ? argv[0]!.toString('latin1').toLowerCase() : '', err));
      } else this.exec(argv);
      if (parser.large.length > 0) {
        for (const b of parser.large) this.store.dropInbound(b);
        parser.large.length = 0;
      }
      if (w.size >= FLUSH_AT) this.flush();
    }
    if ((this.eof || this.closing) && !this.blocked && !this.busy) {
      this.flush();
      this.socket.destroySoon();
    } else if (w.size > 0 && !this.queued) {
      this.queued = true;
      pending.push(this);
      if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(flushPending);
      }
    } else this.flush();
  }

  flush(): void {
    const n = this.w.size;
    if (n === 0) return;
    this.srv.stats.netOut += n;
    this.srv.traffic += n;
    if (this.w.fresh > 0) {
      this.srv.churn(this.w.fresh);
      this.w.fresh = 0;
    }
    this.w.flush();
    if (this.socket.writableLength > OUTPUT_LIMIT && !this.closing) {
      this.blocked = true;
      this.socket.pause();
    }
  }

  exec(argv: Buffer[]): void {
    const srv = this.srv;
    const cmd = resolve(argv);
    srv.stats.commands++;
    this.lastActive = Date.now();
    if (typeof cmd === 'string') return this.reject(cmd);
    this.lastCommand = cmd.name;
    if (!this.authenticated && !cmd.noauth) return this.reject(E.noauth);
    const queue = this.multi !== null && !UNQUEUED.has(cmd.name);
    // Queueing takes memory too: under maxmemory, Redis refuses any command to queue.
    if ((cmd.denyoom || queue) && this.store.maxmemory !== 0 && !this.store.evict()) return this.reject(E.oom);
    if (queue) {
      for (const a of argv) this.multiBytes += a.length;
      // Each command as it is queued, not only each read: one read may bring several.
      if (this.multiBytes > srv.config.queryBufferLimit) return this.overLimit();
      // Copies: the arguments are views of a read buffer that the next read reuses, or
      // inbound Arena buffers that go back once this command returns.
      this.multi!.push(argv.map((a) => Buffer.from(a)));
      this.w.simple('QUEUED');
      return;
    }
    this.w.mark();
    try {
      cmd.fn!(this, argv);
    } catch (err) {
      this.failed(cmd.name, err);
    }
  }

  /**
   * A command threw (an allocation failed, or a bug): its half-written reply is taken
   * back and it gets an error; the connection, the other clients and everything already
   * acknowledged carry on.
   */
  failed(name: string, err: unknown): void {
    this.w.rollback();
    this.srv.stats.commandErrors++;
    if (!outOfMemory(err))
      log(`error in '${name}' from client id=${this.id} addr=${this.addr}: ${(err as Error)?.stack ?? String(err)}`);
    this.w.error(failureReply(name, err));
  }

  /** An error for a command that was not run: inside MULTI it dooms the transaction (EXECABORT). */
  reject(msg: string): void {
    if (this.multi !== null) this.multiError = true;
    this.w.error(msg);
  }

  /** Runs a command EXEC took from the queue (checked when it was queued). */
  execQueued(argv: Buffer[]): void {
    const cmd = resolve(argv) as Command;
    this.lastCommand = cmd.name;
    // Each queued command fails on its own: EXEC's array keeps one reply per command.
    this.w.mark();
    // A transaction runs as one: no command of it may yield (Client.slices).
    this.atomic++;
    try {
      cmd.fn!(this, argv);
    } catch (err) {
      this.failed(cmd.name, err);
    } finally {
      this.atomic--;
    }
  }

  discardMulti(): void {
    this.multi = null;
    this.multiError = false;
    this.multiBytes = 0;
  }

  /**
   * What exec() does for a plain GET or SET (see RespParser.fast), from the key and value
   * bytes in the parser's buffer, without an argument list. Only reached when the client is
   * authenticated; SET honours maxmemory like every denyoom command.
   */
  execFast(kind: number): void {
    const store = this.store;
    const parser = this.parser;
    const buf = parser.buf;
    this.srv.stats.commands++;
    const key = buf.toString('latin1', parser.keyStart, parser.keyEnd);
    if (kind === FAST_GET) {
      this.lastCommand = 'get';
      const e = store.lookupRead(key);
      if (e === undefined) this.w.nil();
      else if (e.type !== T_STRING) this.w.error(E.wrongType);
      else this.w.bulk(e.value as Buffer, e.inArena);
      return;
    }
    this.lastCommand = 'set';
    if (store.maxmemory !== 0 && !store.evict()) return this.w.error(E.oom);
    try {
      store.setBytes(key, buf, parser.valueStart, parser.valueEnd);
    } catch (err) {
      this.w.mark();
      return this.failed('set', err);
    }
    this.w.ok();
  }

  closeAfterReply(): void {
    this.closing = true;
  }

  dispose(): void {
    this.srv.clients.delete(this);
    this.store.unwatchAll(this);
    this.w.discard();
    const held = this.parser.dispose();
    if (held !== null) this.store.dropInbound(held);
    for (const b of this.parser.large) this.store.dropInbound(b);
    this.parser.large.length = 0;
    this.srv.onClientGone();
  }
}

export interface ServerStats {
  connections: number;
  commands: number;
  netIn: number;
  netOut: number;
  rejected: number;
  /** Commands answered with an error because they threw (see Client.failed). */
  commandErrors: number;
  /** Clients closed for passing client-query-buffer-limit. */
  queryBufferClosed: number;
}

export class CacheServer {
  config: Config;
  store: Store;
  clients = new Set<Client>();
  started = Date.now();
  workerId: number;
  stats: ServerStats = {
    connections: 0,
    commands: 0,
    netIn: 0,
    netOut: 0,
    rejected: 0,
    commandErrors: 0,
    queryBufferClosed: 0,
  };
  stopping: boolean;
  gcEvery: number;
  sinceGc: number;
  gcPending: boolean;
  traffic: number;
  trafficSeen: number;
  trafficAtReclaim: number;
  quietSince: number;
  reclaims: number;
  server: net.Server;
  cron: NodeJS.Timeout;

  constructor(config: Config) {
    this.config = config;
    this.store = new Store({ threshold: config.threshold, maxmemory: config.maxmemory, policy: config.policy });
    const failAlloc = process.env.CACHE_SERVER_FAIL_ALLOC;
    if (failAlloc) injectAllocFailures(this.store, failAlloc);
    this.workerId = cluster.isWorker ? cluster.worker!.id : 0;
    this.resetStats();
    this.stats.connections = 0;
    this.stopping = false;
    this.gcEvery = config.gcEvery;
    this.sinceGc = 0;
    this.gcPending = false;
    this.traffic = 0;
    this.trafficSeen = 0;
    this.trafficAtReclaim = 0;
    this.quietSince = Date.now();
    this.reclaims = 0;
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    // Redis's serverCron at hz 10: active expiry and evictions after CONFIG SET.
    this.cron = setInterval(() => {
      this.store.tick();
      this.store.activeExpire();
      this.store.evict();
      this.reclaimTick();
    }, 100);
    this.cron.unref();
  }

  /**
   * Counts bytes of short-lived buffers (socket reads where they come as 'data' chunks,
   * and the writer's new reply buffers) and asks V8 for a young-generation GC after every
   * `--gc-every` of them, once this turn of the event loop is over. Reads in place (see
   * adopt()) and large values sent by reference allocate nothing.
   *
   * Why: every 'data' chunk is a fresh buffer from the C heap (malloc), garbage as soon as
   * it is parsed, but freed only when V8 next collects -- and V8 lets up to ~32 MiB of
   * such buffers pile up first. glibc keeps the heap's high-water mark resident, so
   * loading 125 MiB of values left 15-30 MiB of heap behind. A scavenge every 4 MiB keeps
   * the pile, and so the high-water mark, small; it costs well under a millisecond when
   * little survives, which is the case for buffers already parsed.
   */
  churn(n: number): void {
    if (this.gcEvery === 0) return;
    this.sinceGc += n;
    if (this.sinceGc < this.gcEvery || this.gcPending) return;
    this.gcPending = true;
    setImmediate(() => {
      this.gcPending = false;
      this.sinceGc = 0;
      collectYoung();
    });
  }

  /**
   * After a burst (RECLAIM_AFTER of traffic since the last time), once the server has been
   * quiet for `--idle-reclaim` ms: one full GC, so that every socket buffer of the burst
   * is dead and freed, then trimHeap(), so that glibc gives their pages back. glibc keeps
   * freed heap pages resident (redis-server's jemalloc, by contrast, purges them in the
   * background): loading 125 MiB of values left 6.5-7.6 MiB of C heap resident, 3.6-3.8
   * MiB after this. A full GC pauses in proportion to the live JS heap (keys, entries),
   * so it runs only when no client is sending much, and at most once per burst.
   */
  reclaimTick(): void {
    if (this.config.idleReclaim === 0) return;
    const now = Date.now();
    if (this.traffic - this.trafficSeen >= QUIET_PER_TICK) this.quietSince = now;
    this.trafficSeen = this.traffic;
    if (this.traffic - this.trafficAtReclaim < RECLAIM_AFTER || now - this.quietSince < this.config.idleReclaim) return;
    this.trafficAtReclaim = this.traffic;
    gc();
    trimHeap();
    this.reclaims++;
  }

  resetStats(): void {
    this.stats = {
      connections: this.stats.connections,
      commands: 0,
      netIn: 0,
      netOut: 0,
      rejected: 0,
      commandErrors: 0,
      queryBufferClosed: 0,
    };
    Object.assign(this.store.stats, { expiredKeys: 0, evictedKeys: 0, hits: 0, misses: 0 });
  }

  accept(socket: net.Socket): void {
    this.stats.connections++;
    if (this.stopping || this.clients.size >= this.config.maxclients) {
      this.stats.rejected++;
      socket.on('error', () => {});
      socket.end(`-${E.maxclients}\r\n`);
      return;
    }
    this.clients.add(new Client(this, socket));
  }

  listen(): Promise<AddressInfo> {
    return new Promise((resolvePromise, reject) => {
      this.server.once('error', reject);
      this.server.listen({ port: this.config.port, host: this.config.bind, exclusive: false }, () => {
        this.server.off('error', reject);
        resolvePromise(this.server.address() as AddressInfo);
      });
    });
  }

  /** Stop accepting, let every client take the replies it is owed, then exit. */
  shutdown(why: string): void {
    if (cluster.isWorker && why === 'SHUTDOWN') {
      // One SHUTDOWN stops the whole server, every worker: the primary signals them all.
      process.send!({ cmd: 'shutdown' });
    }
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.cron);
    this.server.close();
    for (const c of this.clients) {
      c.closing = true;
      c.blocked = false;
      c.socket.resume();
      c.flush();
      c.socket.destroySoon();
    }
    setTimeout(() => {
      for (const c of this.clients) c.socket.destroy();
      process.exit(0);
    }, SHUTDOWN_GRACE_MS).unref();
    this.onClientGone();
  }

  onClientGone(): void {
    if (this.stopping && this.clients.size === 0) process.exit(0);
  }
}

async function serve(config: Config): Promise<void> {
  const srv = new CacheServer(config);
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => srv.shutdown(sig));
  let addr: AddressInfo;
  try {
    addr = await srv.listen();
  } catch (err) {
    fail(`cannot listen on ${config.bind}:${config.port}: ${(err as Error).message}`);
  }
  srv.config.port = addr.port;
  if (cluster.isWorker) process.send!({ cmd: 'listening', port: addr.port });
  else process.stdout.write(`cache-server listening on ${addr.address}:${addr.port} pid=${process.pid} workers=1\n`);
}

interface WorkerMessage {
  cmd?: string;
  port?: number;
}

/**
 * Worker restarts: a worker that dies is started again after a delay that doubles with
 * each crash in a row (RESPAWN_FIRST_MS up to RESPAWN_MAX_MS; a worker that stayed up for
 * RESPAWN_STABLE_MS resets it), and after GIVE_UP_CRASHES crashes within GIVE_UP_WINDOW_MS
 * the primary stops the rest and exits 1: a worker that cannot start (a bad option, no
 * memory, a bug hit at once) must not turn into a fork loop that hides the cause.
 */
const RESPAWN_FIRST_MS = 100;
const RESPAWN_MAX_MS = 10_000;
const RESPAWN_STABLE_MS = 30_000;
const GIVE_UP_CRASHES = 5;
const GIVE_UP_WINDOW_MS = 60_000;

function primary(config: Config): void {
  let stopping = false;
  let announced = false;
  const ready = new Set<number>();
  const startedAt = new Map<number, number>();
  const crashes: number[] = [];
  let delay = RESPAWN_FIRST_MS;
  const respawns = new Set<NodeJS.Timeout>();
  const fork = (): void => {
    const w = cluster.fork();
    startedAt.set(w.id, Date.now());
    w.on('message', (m: WorkerMessage | undefined) => {
      if (m?.cmd === 'shutdown') stop();
      if (m?.cmd === 'listening') {
        ready.add(w.id);
        // Workers share one port: with --port 0 the first worker's random port is everyone's.
        if (config.port === 0) config.port = m.port!;
        if (!announced && ready.size === config.workers) {
          announced = true;
          const pids = Object.values(cluster.workers!)
            .map((x) => x!.process.pid)
            .join(',');
          process.stdout.write(
            `cache-server listening on ${config.bind}:${m.port!} pid=${process.pid} workers=${config.workers} worker_pids=${pids}\n`,
          );
        }
      }
    });
  };
  const stop = (code = 0): void => {
    if (stopping) return;
    stopping = true;
    process.exitCode = code;
    for (const t of respawns) clearTimeout(t);
    respawns.clear();
    const live = Object.values(cluster.workers!);
    if (live.length === 0) process.exit(code);
    for (const w of live) w!.process.kill('SIGTERM');
  };
  cluster.on('exit', (w, code, signal) => {
    ready.delete(w.id);
    const lived = Date.now() - (startedAt.get(w.id) ?? 0);
    startedAt.delete(w.id);
    if (stopping) {
      if (Object.keys(cluster.workers!).length === 0) process.exit(process.exitCode ?? 0);
      return;
    }
    const now = Date.now();
    crashes.push(now);
    while (crashes.length > 0 && now - crashes[0]! > GIVE_UP_WINDOW_MS) crashes.shift();
    if (crashes.length >= GIVE_UP_CRASHES) {
      process.stderr.write(
        `cache-server: workers exited ${crashes.length} times within ${GIVE_UP_WINDOW_MS / 1000} s ` +
          `(the last, pid ${w.process.pid}: ${signal ?? `exit code ${code}`}); giving up\n`,
      );
      stop(1);
      return;
    }
    if (lived >= RESPAWN_STABLE_MS) delay = RESPAWN_FIRST_MS;
    process.stderr.write(
      `cache-server: worker ${w.process.pid} exited (${signal ?? code}); starting another in ${delay} ms\n`,
    );
    const t = setTimeout(() => {
      respawns.delete(t);
      if (!stopping) fork();
    }, delay);
    respawns.add(t);
    delay = Math.min(delay * 2, RESPAWN_MAX_MS);
  });
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => stop());
  for (let i = 0; i < config.workers; i++) fork();
}

// pageSize is 0 when node-ksm's native addon did not load: there is no Arena to serve from.
if (!pageSize) fail('the node-ksm native addon is not loaded (run npm rebuild, or see the node-ksm README)');
const config = parseConfig(process.argv.slice(2));
if (cluster.isPrimary && config.workers > 1) {
  // Round-robin hand-off by the primary: each connection lands on one worker's store.
  primary(config);
} else {
  await serve(config);
}
