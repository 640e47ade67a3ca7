/**
 * examples/cache-server against real clients: ioredis and Debian's redis-cli talk to a
 * server started as a child process on a free loopback port. Every command of the issue,
 * pipelining, the streaming parser and its limits, expiry, eviction, AUTH, binary-safe
 * values, graceful shutdown, workers; and duplicate values merged by the real kernel.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pageSize } from '../lib/memory';
import { requireKsm, withFastKsm } from './helpers/ksm';

const KiB = 1024;
const MiB = 1024 * KiB;

// ---- Harness: the server as a child process (--port 0: it prints the port it got) ----

const SERVER = path.resolve(__dirname, '../examples/cache-server/server.mts');
/** Node's arguments before the script: the server is TypeScript, run through tsx. */
const NODE_ARGS = ['--import', 'tsx'];

interface Server {
  port: number;
  /** The serving process (with --workers, the primary). */
  pid: number;
  workerPids: number[];
  proc: ChildProcess;
  stderr: () => string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
  /** SIGTERM, then SIGKILL after 10 s; resolves on exit. */
  stop: () => Promise<number | string>;
}

async function startServer(args: string[] = [], env: Record<string, string> = {}): Promise<Server> {
  const proc = spawn(process.execPath, [...NODE_ARGS, SERVER, '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | string>((resolve) =>
    proc.once('exit', (code, sig) => resolve(code ?? sig ?? -1)),
  );
  const line = await new Promise<string>((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    void exited.then((code) => reject(new Error(`cache-server exited (${code}) before listening: ${err}`)));
  });
  const m = /listening on \S+:(\d+) pid=(\d+)(?:.*worker_pids=([\d,]+))?/.exec(line);
  if (m === null) throw new Error(`unexpected first line from cache-server: ${line}`);
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    const code = await exited;
    clearTimeout(t);
    return code;
  };
  return {
    port: Number(m[1]),
    pid: Number(m[2]),
    workerPids: m[3] ? m[3].split(',').map(Number) : [],
    proc,
    stderr: () => err,
    exited,
    stop,
  };
}

/** redis-cli's output (raw mode, as when stdout is not a terminal). */
function cli(port: number, args: string[], input?: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      'redis-cli',
      ['-p', String(port), ...args],
      { encoding: 'latin1', maxBuffer: 64 << 20 },
      (e, stdout, stderr) => {
        if (e) reject(new Error(`redis-cli ${args.join(' ')}: ${e.message} ${stderr}`));
        else resolve(stdout);
      },
    );
    if (input !== undefined) child.stdin!.end(input);
  });
}

/**
 * Sends `data` (in the pieces given) over a fresh connection and collects everything the
 * server sends until `done(received)` says so or the server closes.
 */
async function raw(
  port: number,
  pieces: (string | Buffer)[],
  done: (got: Buffer) => boolean = () => false,
  opts: { closed?: boolean; gapMs?: number } = {},
): Promise<{ data: Buffer; closed: boolean }> {
  const s = net.connect(port, '127.0.0.1');
  await new Promise((r) => s.once('connect', r));
  const chunks: Buffer[] = [];
  let closed = false;
  const finished = new Promise<void>((resolve) => {
    s.on('data', (d) => {
      chunks.push(d);
      if (done(Buffer.concat(chunks))) resolve();
    });
    s.on('close', () => {
      closed = true;
      resolve();
    });
    s.on('error', () => {});
  });
  for (const p of pieces) {
    s.write(p);
    if (opts.gapMs) await sleep(opts.gapMs);
  }
  await Promise.race([finished, sleep(20_000)]);
  if (opts.closed && !closed) await Promise.race([new Promise((r) => s.once('close', r)), sleep(5000)]);
  s.destroy();
  return { data: Buffer.concat(chunks), closed };
}

/** A RESP2 multibulk request. */
function resp(...args: (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = typeof a === 'string' ? Buffer.from(a, 'latin1') : a;
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** `field:value` lines of an INFO reply. */
function parseInfo(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

/** Bytes from a field of /proc/<pid>/smaps_rollup (Pss, Rss, ...). */
function rollup(pid: number, field: string): number {
  const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  if (m === null) throw new Error(`no ${field} in smaps_rollup`);
  return Number(m[1]) * 1024;
}

/** Polls an async check until it returns truthy or time runs out (then returns its last value). */
async function pollAsync<T>(check: () => Promise<T>, timeoutMs: number, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let v = await check();
  while (!v && Date.now() < deadline) {
    await sleep(intervalMs);
    v = await check();
  }
  return v;
}

/** A raw connection that sends `count` GETs of `key` and reads nothing until resumed. */
async function stalledReader(port: number, key: string, count: number): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1');
  await new Promise((r) => s.once('connect', r));
  s.pause();
  s.write(Buffer.concat(Array.from({ length: count }, () => resp('GET', key))));
  return s;
}

function client(port: number, opts: Record<string, unknown> = {}): Redis {
  return new Redis({
    port,
    host: '127.0.0.1',
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    lazyConnect: false,
    ...opts,
  });
}

/** The error text of a rejected command ('' if it did not fail). */
async function errorOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('cache-server: commands over ioredis', () => {
  let srv: Server;
  let r: Redis;
  beforeAll(async () => {
    srv = await startServer();
    r = client(srv.port);
  });
  afterAll(async () => {
    r.disconnect();
    expect(await srv.stop()).toBe(0);
  });

  it('PING, ECHO, SELECT', async () => {
    expect(await r.ping()).toBe('PONG');
    expect(await r.ping('hi')).toBe('hi');
    expect(await r.echo('hello')).toBe('hello');
    expect(await r.select(0)).toBe('OK');
    expect(await errorOf(r.select(1))).toBe('ERR DB index is out of range');
    expect(await errorOf(r.call('select', 'x'))).toBe('ERR value is not an integer or out of range');
    expect(await errorOf(r.call('ping', 'a', 'b'))).toBe("ERR wrong number of arguments for 'ping' command");
  });

  it('SET with EX, PX, NX, XX, GET, KEEPTTL; GET, GETDEL, DEL, EXISTS', async () => {
    expect(await r.set('s1', 'v1')).toBe('OK');
    expect(await r.get('s1')).toBe('v1');
    expect(await r.set('s1', 'v2', 'NX')).toBeNull();
    expect(await r.set('s1', 'v2', 'XX')).toBe('OK');
    expect(await r.set('nope', 'v', 'XX')).toBeNull();
    expect(await r.exists('nope')).toBe(0);
    expect(await r.call('set', 's1', 'v3', 'GET')).toBe('v2');
    expect(await r.call('set', 'fresh', 'x', 'NX', 'GET')).toBeNull();
    expect(await r.set('s1', 'v', 'EX', 100)).toBe('OK');
    expect(await r.ttl('s1')).toBe(100);
    expect(await r.call('set', 's1', 'w', 'KEEPTTL')).toBe('OK');
    expect(await r.ttl('s1')).toBe(100);
    expect(await r.set('s1', 'w')).toBe('OK');
    expect(await r.ttl('s1')).toBe(-1);
    expect(await r.set('s2', 'v', 'PX', 100_000)).toBe('OK');
    expect(await r.pttl('s2')).toBeGreaterThan(99_000);
    expect(await errorOf(r.call('set', 'k', 'v', 'NX', 'XX'))).toBe('ERR syntax error');
    expect(await errorOf(r.call('set', 'k', 'v', 'EX', '10', 'PX', '10'))).toBe('ERR syntax error');
    expect(await errorOf(r.call('set', 'k', 'v', 'EX'))).toBe('ERR syntax error');
    expect(await errorOf(r.call('set', 'k', 'v', 'EX', 'ten'))).toBe('ERR value is not an integer or out of range');
    expect(await errorOf(r.call('set', 'k', 'v', 'EX', '0'))).toBe("ERR invalid expire time in 'set' command");
    expect(await errorOf(r.call('set', 'k', 'v', 'PX', '-5'))).toBe("ERR invalid expire time in 'set' command");
    expect(await r.getdel('s2')).toBe('v');
    expect(await r.getdel('s2')).toBeNull();
    expect(await r.exists('s1', 's1', 's2')).toBe(2);
    expect(await r.del('s1', 's2', 'fresh')).toBe(2);
    expect(await r.get('s1')).toBeNull();
  });

  it('MGET, MSET, APPEND, STRLEN, SETNX, SETEX, GETSET, TYPE', async () => {
    expect(await r.mset('m1', 'a', 'm2', 'b')).toBe('OK');
    expect(await r.mget('m1', 'missing', 'm2')).toEqual(['a', null, 'b']);
    expect(await errorOf(r.call('mset', 'a', 'b', 'c'))).toBe("ERR wrong number of arguments for 'mset' command");
    expect(await r.append('m1', 'bc')).toBe(3);
    expect(await r.append('newapp', 'xyz')).toBe(3);
    expect(await r.get('m1')).toBe('abc');
    expect(await r.strlen('m1')).toBe(3);
    expect(await r.strlen('missing')).toBe(0);
    expect(await r.setnx('m1', 'z')).toBe(0);
    expect(await r.setnx('m3', 'z')).toBe(1);
    expect(await r.setex('m4', 50, 'q')).toBe('OK');
    expect(await r.ttl('m4')).toBe(50);
    expect(await r.getset('m4', 'r')).toBe('q');
    expect(await r.ttl('m4')).toBe(-1);
    expect(await r.type('m4')).toBe('string');
    expect(await r.type('missing')).toBe('none');
  });

  it('INCR, DECR, INCRBY, DECRBY over the whole int64 range', async () => {
    expect(await r.incr('n')).toBe(1);
    expect(await r.incrby('n', 41)).toBe(42);
    expect(await r.decr('n')).toBe(41);
    expect(await r.decrby('n', 50)).toBe(-9);
    await r.set('big', '9223372036854775806');
    await r.incr('big'); // the reply is beyond a JS number's precision: read it back as a string
    expect(await r.get('big')).toBe('9223372036854775807');
    expect(await errorOf(r.incr('big'))).toBe('ERR increment or decrement would overflow');
    await r.set('txt', 'abc');
    expect(await errorOf(r.incr('txt'))).toBe('ERR value is not an integer or out of range');
    await r.set('lead', '007');
    expect(await errorOf(r.incr('lead'))).toBe('ERR value is not an integer or out of range');
    expect(await errorOf(r.call('incrby', 'n', '1.5'))).toBe('ERR value is not an integer or out of range');
    expect(await errorOf(r.call('decrby', 'n', '-9223372036854775808'))).toBe('ERR decrement would overflow');
  });

  it('EXPIRE, PEXPIRE (NX, XX, GT, LT), TTL, PTTL, PERSIST', async () => {
    await r.set('e', 'v');
    expect(await r.ttl('e')).toBe(-1);
    expect(await r.ttl('missing')).toBe(-2);
    expect(await r.pttl('missing')).toBe(-2);
    expect(await r.call('expire', 'e', 100, 'XX')).toBe(0);
    expect(await r.call('expire', 'e', 100, 'NX')).toBe(1);
    expect(await r.call('expire', 'e', 50, 'GT')).toBe(0);
    expect(await r.call('expire', 'e', 200, 'GT')).toBe(1);
    expect(await r.call('expire', 'e', 150, 'LT')).toBe(1);
    expect(await r.ttl('e')).toBe(150);
    expect(await r.pexpire('e', 20_000)).toBe(1);
    expect(await r.pttl('e')).toBeLessThanOrEqual(20_000);
    expect(await r.pttl('e')).toBeGreaterThan(15_000);
    expect(await r.persist('e')).toBe(1);
    expect(await r.persist('e')).toBe(0);
    expect(await r.expire('missing', 10)).toBe(0);
    expect(await errorOf(r.call('expire', 'e', 10, 'NX', 'XX'))).toBe(
      'ERR NX and XX, GT or LT options at the same time are not compatible',
    );
    expect(await errorOf(r.call('expire', 'e', 10, 'GT', 'LT'))).toBe(
      'ERR GT and LT options at the same time are not compatible',
    );
    expect(await errorOf(r.call('expire', 'e', 10, 'FOO'))).toBe('ERR Unsupported option FOO');
    expect(await errorOf(r.call('expire', 'e', '9223372036854775807'))).toBe(
      "ERR invalid expire time in 'expire' command",
    );
    // A time in the past deletes the key.
    expect(await r.expire('e', -1)).toBe(1);
    expect(await r.exists('e')).toBe(0);
  });

  it('expires keys lazily on access and actively when nobody asks', async () => {
    await r.set('lazy', 'v', 'PX', 30);
    await sleep(60);
    expect(await r.get('lazy')).toBeNull();
    const before = parseInfo(await r.info('stats')).expired_keys;
    const p = r.pipeline();
    for (let i = 0; i < 200; i++) p.set(`act:${i}`, 'v', 'PX', 20 + (i % 50));
    await p.exec();
    // Never touched again: only the active cycle can remove them.
    const gone = await pollAsync(
      async () =>
        (await r.keys('act:*')).length === 0 &&
        Number(parseInfo(await r.info('keyspace')).db0?.match(/expires=(\d+)/)?.[1] ?? 0) === 0,
      10_000,
    );
    expect(gone).toBe(true);
    expect(Number(parseInfo(await r.info('stats')).expired_keys) - Number(before)).toBeGreaterThanOrEqual(200);
  });

  it('DBSIZE, KEYS with glob patterns, SCAN with MATCH and COUNT, FLUSHALL', async () => {
    expect(await r.flushall()).toBe('OK');
    expect(await r.dbsize()).toBe(0);
    const p = r.pipeline();
    for (let i = 0; i < 1000; i++) p.set(`user:${i}`, String(i));
    p.set('hello', '1').set('hallo', '1').set('hxllo', '1').set('hllo', '1').set('h[a]llo', '1');
    await p.exec();
    expect(await r.dbsize()).toBe(1005);
    expect((await r.keys('h?llo')).sort()).toEqual(['hallo', 'hello', 'hxllo']);
    expect((await r.keys('h*llo')).sort()).toEqual(['h[a]llo', 'hallo', 'hello', 'hllo', 'hxllo']);
    expect((await r.keys('h[ae]llo')).sort()).toEqual(['hallo', 'hello']);
    expect((await r.keys('h[^e]llo')).sort()).toEqual(['hallo', 'hxllo']);
    expect((await r.keys('h[a-b]llo')).sort()).toEqual(['hallo']);
    expect(await r.keys('h\\[a\\]llo')).toEqual(['h[a]llo']);
    expect((await r.keys('user:1??')).length).toBe(100);

    // A full SCAN returns every key that stays, even while others are deleted and added.
    const seen = new Set<string>();
    let cursor = '0';
    let rounds = 0;
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', 'user:*', 'COUNT', 37);
      for (const k of keys) seen.add(k);
      if (rounds === 3) {
        for (let i = 900; i < 1000; i++) await r.del(`user:${i}`);
        for (let i = 0; i < 50; i++) await r.set(`other:${i}`, 'x');
      }
      cursor = next;
      rounds++;
    } while (cursor !== '0');
    for (let i = 0; i < 900; i++) expect(seen.has(`user:${i}`)).toBe(true);
    expect([...seen].every((k) => k.startsWith('user:'))).toBe(true);
    expect(rounds).toBeGreaterThan(10);
    expect(await errorOf(r.call('scan', 'abc'))).toBe('ERR invalid cursor');
    expect(await errorOf(r.call('scan', '0', 'COUNT', '0'))).toBe('ERR syntax error');
    expect(await errorOf(r.call('scan', '0', 'BOGUS', '1'))).toBe('ERR syntax error');
    expect(((await r.call('scan', '0', 'TYPE', 'list', 'COUNT', '5000')) as unknown[])[1]).toEqual([]);
    expect(await r.flushall()).toBe('OK');
    expect(await r.dbsize()).toBe(0);
    expect(await errorOf(r.call('flushall', 'NOW'))).toBe('ERR syntax error');
  });

  it('INFO sections, CONFIG GET/SET, COMMAND, CLIENT SETNAME/GETNAME', async () => {
    await r.set('ik', 'v');
    const all = parseInfo(await r.info());
    for (const f of [
      'redis_version',
      'connected_clients',
      'used_memory',
      'total_commands_processed',
      'db0',
      'ksm_values',
      'ksm_system_run',
    ]) {
      expect(all).toHaveProperty(f);
    }
    expect(all.process_id).toBe(String(srv.pid));
    // Per-value merge figures only when the ksm section is asked for by name.
    expect(all).not.toHaveProperty('ksm_value_merged_bytes');
    const ksm = parseInfo(await r.info('ksm'));
    expect(ksm).toHaveProperty('ksm_value_merged_bytes');
    expect(ksm).not.toHaveProperty('used_memory');
    const mem = await r.info('memory');
    expect(mem.startsWith('# Memory\r\n')).toBe(true);

    expect(await r.config('GET', 'maxmemory')).toEqual(['maxmemory', '0']);
    expect(await r.config('SET', 'maxmemory', '100mb')).toBe('OK');
    expect(await r.config('GET', 'maxmemory')).toEqual(['maxmemory', String(100 * MiB)]);
    expect(await r.config('SET', 'maxmemory', '0')).toBe('OK');
    expect(await r.config('GET', 'maxmemory*')).toEqual(['maxmemory', '0', 'maxmemory-policy', 'allkeys-lru']);
    expect(await errorOf(r.config('SET', 'maxmemory', 'lots'))).toBe(
      "ERR CONFIG SET failed (possibly related to argument 'maxmemory') - argument must be a memory value",
    );
    expect(await errorOf(r.config('SET', 'nosuch', '1'))).toBe(
      "ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'",
    );
    expect(await errorOf(r.call('config', 'get'))).toBe("ERR wrong number of arguments for 'config|get' command");
    expect(await errorOf(r.call('config', 'bogus'))).toBe("ERR unknown subcommand 'bogus'. Try CONFIG HELP.");
    expect(await errorOf(r.call('config'))).toBe("ERR wrong number of arguments for 'config' command");

    const count = (await r.call('command', 'count')) as number;
    expect(count).toBeGreaterThanOrEqual(40);
    expect(((await r.call('command')) as unknown[]).length).toBe(count);
    const [get] = (await r.call('command', 'info', 'get')) as unknown[][];
    expect(get!.slice(0, 6)).toEqual(['get', 2, ['readonly', 'fast'], 1, 1, 1]);

    expect(await r.client('GETNAME')).toBeNull();
    expect(await r.client('SETNAME', 'tester')).toBe('OK');
    expect(await r.client('GETNAME')).toBe('tester');
    expect(await errorOf(r.client('SETNAME', 'has space'))).toBe(
      'ERR Client names cannot contain spaces, newlines or special characters.',
    );
    expect(await errorOf(r.call('client', 'bogus'))).toBe("ERR unknown subcommand 'bogus'. Try CLIENT HELP.");
  });

  it("answers unknown commands and wrong arity with Redis's texts", async () => {
    expect(await errorOf(r.call('foo'))).toBe("ERR unknown command 'foo', with args beginning with: ");
    expect(await errorOf(r.call('FooBar', 'a', 'b c'))).toBe(
      "ERR unknown command 'FooBar', with args beginning with: 'a' 'b c' ",
    );
    // Sorted sets are out of scope: Redis's text for a command it does not know.
    expect(await errorOf(r.call('zadd', 'z', '1', 'x'))).toBe(
      "ERR unknown command 'zadd', with args beginning with: 'z' '1' 'x' ",
    );
    expect(await errorOf(r.call('get'))).toBe("ERR wrong number of arguments for 'get' command");
    expect(await errorOf(r.call('get', 'a', 'b'))).toBe("ERR wrong number of arguments for 'get' command");
    expect(await errorOf(r.call('set', 'a'))).toBe("ERR wrong number of arguments for 'set' command");
    expect(await errorOf(r.call('dbsize', 'x'))).toBe("ERR wrong number of arguments for 'dbsize' command");
    // The connection survives errors.
    expect(await r.ping()).toBe('PONG');
  });

  it('is binary safe for keys and values, small and in the Arena', async () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const key = Buffer.concat([Buffer.from('bin\r\n\0'), all]);
    await r.set(key, all);
    expect(await r.getBuffer(key)).toEqual(all);
    expect(await r.exists(key)).toBe(1);
    const sizes = [
      0,
      1,
      pageSize - 1,
      pageSize,
      pageSize + 1,
      16 * KiB - 1,
      16 * KiB,
      16 * KiB + 1,
      300 * KiB + 7,
      2 * MiB,
    ];
    const values = sizes.map((n) => crypto.randomBytes(n));
    const p = r.pipeline();
    values.forEach((v, i) => p.set(Buffer.from(`bv:${i}\0`), v));
    await p.exec();
    for (let i = 0; i < sizes.length; i++) {
      // Buffer.equals: vitest's deep equality walks a 2 MiB Buffer element by element.
      expect((await r.getBuffer(Buffer.from(`bv:${i}\0`)))!.equals(values[i]!), `value of ${sizes[i]} bytes`).toBe(
        true,
      );
      expect(await r.strlen(Buffer.from(`bv:${i}\0`))).toBe(sizes[i]);
    }
    // APPEND across the threshold moves a value into the Arena and keeps every byte.
    await r.set('grow', values[2]!);
    expect(await r.append('grow', all)).toBe(pageSize - 1 + 256);
    expect((await r.getBuffer('grow'))!.equals(Buffer.concat([values[2]!, all]))).toBe(true);
    const keys = await r.keysBuffer('bin*');
    expect(keys).toEqual([key]);
    const info = parseInfo(await r.info('ksm'));
    expect(Number(info.ksm_values)).toBeGreaterThanOrEqual(sizes.filter((n) => n >= pageSize).length);
  });

  it('pipelines thousands of commands and answers in order', async () => {
    const p = r.pipeline();
    const n = 5000;
    for (let i = 0; i < n; i++) {
      p.set(`p:${i}`, `v${i}`);
      p.get(`p:${i}`);
      p.incr('pcount');
    }
    const res = await p.exec();
    expect(res!.length).toBe(3 * n);
    for (let i = 0; i < n; i++) {
      expect(res![3 * i]).toEqual([null, 'OK']);
      expect(res![3 * i + 1]).toEqual([null, `v${i}`]);
      expect(res![3 * i + 2]).toEqual([null, i + 1]);
    }
  });
});

describe('cache-server: the wire protocol', () => {
  let srv: Server;
  beforeAll(async () => {
    srv = await startServer(['--proto-max-bulk-len', '1mb']);
  });
  afterAll(async () => {
    expect(await srv.stop()).toBe(0);
  });

  it('parses frames split at every byte, and large bulks streamed across chunks', async () => {
    const big = crypto.randomBytes(200 * KiB);
    const req = Buffer.concat([resp('SET', 'sk', big), resp('GET', 'sk'), resp('SET', 'small', 'x'), resp('PING')]);
    const expected = Buffer.concat([
      Buffer.from(`+OK\r\n$${big.length}\r\n`),
      big,
      Buffer.from('\r\n+OK\r\n+PONG\r\n'),
    ]);
    // Byte by byte through the headers, then in uneven slices.
    const pieces: Buffer[] = [];
    let at = 0;
    for (; at < 40; at++) pieces.push(req.subarray(at, at + 1));
    for (let step = 1; at < req.length; step = ((step * 7 + 3) % 9001) + 1) {
      pieces.push(req.subarray(at, at + step));
      at += step;
    }
    const { data } = await raw(srv.port, pieces, (got) => got.length >= expected.length);
    expect(data.equals(expected)).toBe(true);
    // One write holding many frames.
    const many = Buffer.concat(Array.from({ length: 1000 }, (_, i) => resp('ECHO', `m${i}`)));
    const want = Array.from({ length: 1000 }, (_, i) => `$${`m${i}`.length}\r\nm${i}\r\n`).join('');
    const r2 = await raw(srv.port, [many], (got) => got.length >= want.length);
    expect(r2.data.toString()).toBe(want);
  });

  it('a reply keeps its Arena value even if a later command of the batch overwrites or deletes it', async () => {
    // Large Arena values are sent by reference (the writer pins them, Writer in resp.mts):
    // a SET of the same length reuses a released buffer at once, so without the pin the
    // first GET would send the second value, or a detached (empty) buffer.
    const v1 = crypto.randomBytes(64 * KiB);
    const v2 = crypto.randomBytes(64 * KiB);
    const batch = Buffer.concat([
      resp('SET', 'pk', v1),
      resp('GET', 'pk'),
      resp('SET', 'pk', v2),
      resp('GET', 'pk'),
      resp('DEL', 'pk'),
      resp('SET', 'pk2', v1),
      resp('GET', 'pk2'),
    ]);
    const want = Buffer.concat([
      Buffer.from(`+OK\r\n$${v1.length}\r\n`),
      v1,
      Buffer.from(`\r\n+OK\r\n$${v2.length}\r\n`),
      v2,
      Buffer.from(`\r\n:1\r\n+OK\r\n$${v1.length}\r\n`),
      v1,
      Buffer.from('\r\n'),
    ]);
    const { data } = await raw(srv.port, [batch], (got) => got.length >= want.length);
    expect(data.equals(want)).toBe(true);
  });

  it('replies still queued for a client that does not read keep their Arena value while others delete and reuse it', async () => {
    const size = 256 * KiB;
    const v1 = crypto.randomBytes(size);
    const other = client(srv.port);
    await other.set('slow', v1);
    // 100 GETs (25 MiB of replies) from a client that reads nothing yet: the server sends
    // until the socket is full and stops reading at its output limit (4 MiB queued), so
    // dozens of replies wait in the socket, each referring to the value's pages.
    const hits = async () => Number(parseInfo(await other.info('stats')).keyspace_hits);
    const before = await hits();
    const s = await stalledReader(srv.port, 'slow', 100);
    // Until the server has answered (and queued) at least 16 of the GETs.
    expect(await pollAsync(async () => (await hits()) - before >= 16, 10_000)).toBe(true);
    // Meanwhile the value goes, and its pages would be the first to be reused.
    await other.del('slow');
    for (let i = 0; i < 20; i++) await other.set(`reuse:${i}`, crypto.randomBytes(size));
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.resume();
    const header = Buffer.from(`$${size}\r\n`);
    const nil = Buffer.from('$-1\r\n');
    let got = Buffer.alloc(0);
    let values = 0;
    let nils = 0;
    const deadline = Date.now() + 20_000;
    while (values + nils < 100 && Date.now() < deadline) {
      await sleep(20);
      got = Buffer.concat([got, ...chunks.splice(0)]);
      for (;;) {
        if (got.subarray(0, nil.length).equals(nil)) {
          nils++;
          got = got.subarray(nil.length);
        } else if (got.length >= header.length + size + 2) {
          // Every value reply is the value whole: queued before the DEL, sent after it.
          expect(got.subarray(0, header.length).equals(header)).toBe(true);
          expect(nils, 'a value after a nil').toBe(0);
          expect(got.subarray(header.length, header.length + size).equals(v1)).toBe(true);
          values++;
          got = got.subarray(header.length + size + 2);
        } else break;
      }
    }
    s.destroy();
    expect(values + nils).toBe(100);
    expect(values).toBeGreaterThanOrEqual(16);
    // Every pin went with its write, and the deleted value's pages went back.
    const mem = parseInfo(await other.info('memory'));
    expect([mem.arena_pinned_buffers, mem.arena_pinned_gone]).toEqual(['0', '0']);
    other.disconnect();
  });

  it('a client that disconnects with replies queued leaves no pinned value behind', async () => {
    const size = 256 * KiB;
    const other = client(srv.port);
    await other.set('gone', crypto.randomBytes(size));
    const s = await stalledReader(srv.port, 'gone', 100);
    const pinned = async () => Number(parseInfo(await other.info('memory')).arena_pinned_buffers) > 0;
    expect(await pollAsync(pinned, 10_000)).toBe(true);
    await other.del('gone');
    expect(Number(parseInfo(await other.info('memory')).arena_pinned_gone)).toBe(1);
    // Reset with megabytes of replies unsent: the socket calls back every queued write.
    s.resetAndDestroy();
    const mem = await pollAsync(async () => {
      const m = parseInfo(await other.info('memory'));
      return m.arena_pinned_buffers === '0' && m.arena_pinned_gone === '0' ? m : undefined;
    }, 5000);
    expect(mem, 'pins still held 5 s after the client went').toBeDefined();
    other.disconnect();
  });

  it('plain GET and SET, in any letter case, answer as every other command does', async () => {
    // Plain GET/SET frames are parsed on a shorter path (resp.mts fast()); anything else
    // about them -- options, arity, odd headers, unknown names -- goes the general way.
    const info0 = parseInfo(
      (
        await raw(srv.port, [resp('INFO', 'stats')], (g) => g.toString().endsWith('\r\n\r\n') || g.length > 500)
      ).data.toString(),
    );
    const frames = [
      resp('set', 'fk1', 'v1'),
      resp('SeT', 'fk2', ''),
      resp('GET', 'fk1'),
      resp('gEt', 'fk2'),
      resp('get', 'fk:none'),
      '*2\r\n$03\r\nGET\r\n$003\r\nfk1\r\n', // leading zeros, as Redis reads them
      resp('SET', 'fk3', 'x', 'NX'),
      resp('SET', 'fk3', 'y', 'NX'),
      resp('GET', 'fk3'),
      resp('GET'),
      resp('GET', 'a', 'b'),
      resp('SET', 'fk4'),
      resp('GEX', 'fk1'),
      resp('SET', 'bin\r\n', Buffer.from([0, 13, 10, 255])),
      resp('GET', 'bin\r\n'),
    ];
    const want = [
      '+OK\r\n',
      '+OK\r\n',
      '$2\r\nv1\r\n',
      '$0\r\n\r\n',
      '$-1\r\n',
      '$2\r\nv1\r\n',
      '+OK\r\n',
      '$-1\r\n',
      '$1\r\nx\r\n',
      "-ERR wrong number of arguments for 'get' command\r\n",
      "-ERR wrong number of arguments for 'get' command\r\n",
      "-ERR wrong number of arguments for 'set' command\r\n",
      "-ERR unknown command 'GEX', with args beginning with: 'fk1' \r\n",
      '+OK\r\n',
      '$4\r\n\x00\r\n\xff\r\n',
    ].join('');
    const { data } = await raw(
      srv.port,
      [Buffer.concat(frames.map((f) => Buffer.from(f)))],
      (g) => g.length >= want.length,
    );
    expect(data.toString('latin1')).toBe(want);
    const info1 = parseInfo(
      (
        await raw(srv.port, [resp('INFO', 'stats')], (g) => g.toString().endsWith('\r\n\r\n') || g.length > 500)
      ).data.toString(),
    );
    // 15 commands plus the INFO before; 5 GETs found their key, 1 did not (GET with wrong arity never looks).
    expect(Number(info1.total_commands_processed) - Number(info0.total_commands_processed)).toBe(16);
    expect(Number(info1.keyspace_hits) - Number(info0.keyspace_hits)).toBe(5);
    expect(Number(info1.keyspace_misses) - Number(info0.keyspace_misses)).toBe(1);
  });

  it.each([
    ["1000 bytes (a slice of Node's pool)", 1000, []],
    ['8000 bytes outside the Arena (a buffer of its own, which COPY may share)', 8000, ['--ksm-threshold', '65536']],
  ])(
    'a plain SET of the same length rewrites a value in place only where nothing else can see it: %s',
    async (_, size, args) => {
      // store.mts setBytes: same length over a value only this key holds. A reply queued
      // earlier in the batch, a COPY, a TTL and a WATCH must all see what Redis shows.
      const own = args.length > 0 ? await startServer(args) : null;
      const port = own?.port ?? srv.port;
      const a = crypto.randomBytes(size);
      const b = crypto.randomBytes(size);
      const c = crypto.randomBytes(size);
      const bulk = (x: Buffer | string) =>
        Buffer.concat([Buffer.from(`$${x.length}\r\n`), Buffer.from(x as Buffer), Buffer.from('\r\n')]);
      const frames = [
        resp('SET', 'ip1', a),
        resp('GET', 'ip1'), // queued, not yet sent, when the next SET rewrites the value
        resp('SET', 'ip1', b),
        resp('GET', 'ip1'),
        resp('COPY', 'ip1', 'ip2'),
        resp('SET', 'ip1', c), // must not show through ip2
        resp('GET', 'ip2'),
        resp('GET', 'ip1'),
        resp('SET', 'ip2', a), // nor the other way round
        resp('GET', 'ip1'),
        resp('SET', 'ip3', 'dddd'),
        resp('EXPIRE', 'ip3', '100'),
        resp('SET', 'ip3', 'eeee'), // a plain SET drops the TTL
        resp('TTL', 'ip3'),
        resp('GET', 'ip3'),
        resp('WATCH', 'ip3'),
        resp('SET', 'ip3', 'ffff'),
        resp('MULTI'),
        resp('GET', 'ip3'),
        resp('EXEC'), // the watched key was written
        resp('GET', 'ip3'),
        resp('SET', 'ip4', '12345'),
        resp('OBJECT', 'ENCODING', 'ip4'),
        resp('SET', 'ip4', 'abcde'),
        resp('OBJECT', 'ENCODING', 'ip4'),
      ];
      const want = Buffer.concat([
        Buffer.from('+OK\r\n'),
        bulk(a),
        Buffer.from('+OK\r\n'),
        bulk(b),
        Buffer.from(':1\r\n+OK\r\n'),
        bulk(b),
        bulk(c),
        Buffer.from('+OK\r\n'),
        bulk(c),
        Buffer.from('+OK\r\n:1\r\n+OK\r\n:-1\r\n'),
        bulk('eeee'),
        Buffer.from('+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n'),
        bulk('ffff'),
        Buffer.from('+OK\r\n'),
        bulk('int'),
        Buffer.from('+OK\r\n'),
        bulk('embstr'),
      ]);
      try {
        const { data } = await raw(port, [Buffer.concat(frames)], (g) => g.length >= want.length);
        expect(data.toString('latin1')).toBe(want.toString('latin1'));
      } finally {
        await own?.stop();
      }
    },
  );

  it('a replaced or deleted value never shows through a value that reuses its Arena buffer', async () => {
    // Released Arena buffers are kept for the next value of the same length (store.mts);
    // replies are copies, so a reply already queued keeps the old bytes.
    const v = Array.from({ length: 6 }, () => crypto.randomBytes(64 * KiB));
    const bulk = (b: Buffer) => Buffer.concat([Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n')]);
    const frames = [
      resp('SET', 'ra', v[0]!),
      resp('SET', 'rb', v[1]!),
      resp('GET', 'ra'),
      resp('DEL', 'ra'),
      resp('SET', 'rc', v[2]!), // takes ra's buffer
      resp('GET', 'rb'),
      resp('GET', 'rc'),
      resp('SET', 'rb', v[3]!), // rb's old buffer becomes a spare, and the new value is read into one
      resp('SET', 'ra', v[4]!),
      resp('GET', 'rc'),
      resp('GET', 'rb'),
      resp('GET', 'ra'),
      resp('SET', 'rc', v[5]!),
      resp('GET', 'ra'),
      resp('GET', 'rc'),
    ];
    const want = Buffer.concat([
      Buffer.from('+OK\r\n+OK\r\n'),
      bulk(v[0]!),
      Buffer.from(':1\r\n+OK\r\n'),
      bulk(v[1]!),
      bulk(v[2]!),
      Buffer.from('+OK\r\n+OK\r\n'),
      bulk(v[2]!),
      bulk(v[3]!),
      bulk(v[4]!),
      Buffer.from('+OK\r\n'),
      bulk(v[4]!),
      bulk(v[5]!),
    ]);
    const { data } = await raw(srv.port, [Buffer.concat(frames)], (g) => g.length >= want.length);
    expect(data.equals(want)).toBe(true);
    const mem = parseInfo(
      (
        await raw(srv.port, [resp('INFO', 'memory')], (g) => g.toString().endsWith('\r\n\r\n') || g.length > 2000)
      ).data.toString(),
    );
    expect(Number(mem.arena_spare_bytes)).toBeLessThanOrEqual(1 * MiB);
  });

  it('accepts inline commands with quoting', async () => {
    const { data } = await raw(
      srv.port,
      ['PING\r\n', '\r\n', 'SET "in line" \'it\\\'s\'\r\nGET "in line"\n', 'ECHO "a\\x41\\n"\r\n'],
      (g) => g.toString().endsWith('\r\n') && g.toString().split('\r\n').length >= 7,
    );
    expect(data.toString()).toBe("+PONG\r\n+OK\r\n$4\r\nit's\r\n$3\r\naA\n\r\n");
  });

  it("rejects malformed frames with Redis's protocol errors and closes", async () => {
    const cases: [string | Buffer, string][] = [
      ['*1\r\n$-3\r\n', 'ERR Protocol error: invalid bulk length'],
      ['*1\r\n$abc\r\n', 'ERR Protocol error: invalid bulk length'],
      [`*1\r\n$${2 * MiB}\r\n`, 'ERR Protocol error: invalid bulk length'],
      ['*x\r\n', 'ERR Protocol error: invalid multibulk length'],
      [`*${1024 * 1024 + 1}\r\n`, 'ERR Protocol error: invalid multibulk length'],
      ['*1\r\n+GET\r\n', "ERR Protocol error: expected '$', got '+'"],
      ['SET "unterminated\r\n', 'ERR Protocol error: unbalanced quotes in request'],
      [Buffer.alloc(70 * KiB, 'a'), 'ERR Protocol error: too big inline request'],
      [
        Buffer.concat([Buffer.from('*'), Buffer.alloc(70 * KiB, '1')]),
        'ERR Protocol error: too big mbulk count string',
      ],
      [
        Buffer.concat([Buffer.from('*1\r\n$'), Buffer.alloc(70 * KiB, '1')]),
        'ERR Protocol error: too big bulk count string',
      ],
    ];
    for (const [input, error] of cases) {
      // A valid command first: it is answered before the error.
      const { data, closed } = await raw(srv.port, [Buffer.concat([resp('PING'), Buffer.from(input)])], () => false, {
        closed: true,
      });
      expect(data.toString(), String(input).slice(0, 30)).toBe(`+PONG\r\n-${error}\r\n`);
      expect(closed).toBe(true);
    }
  });

  it('QUIT answers OK and closes; input after it is ignored', async () => {
    const { data, closed } = await raw(
      srv.port,
      [Buffer.concat([resp('PING'), resp('QUIT'), resp('PING')])],
      () => false,
      { closed: true },
    );
    expect(data.toString()).toBe('+PONG\r\n+OK\r\n');
    expect(closed).toBe(true);
  });

  it('stops reading from a client that does not read its replies, and loses nothing', async () => {
    const value = crypto.randomBytes(1 * MiB);
    await raw(srv.port, [resp('SET', 'huge', value)], (g) => g.toString() === '+OK\r\n');
    const n = 300; // 300 MiB of replies
    const rssBefore = rollup(srv.pid, 'Rss');
    const s = net.connect(srv.port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    s.pause();
    const reqs = Buffer.concat(Array.from({ length: n }, () => resp('GET', 'huge')));
    s.write(reqs);
    await sleep(1500);
    // Without backpressure the server would hold ~300 MiB of replies by now.
    const rssPaused = rollup(srv.pid, 'Rss');
    expect(rssPaused - rssBefore).toBeLessThan(64 * MiB);
    const header = Buffer.from(`$${value.length}\r\n`);
    const per = header.length + value.length + 2;
    let got = 0;
    let buf = Buffer.alloc(0);
    let ok = true;
    await new Promise<void>((resolve) => {
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= per) {
          const reply = buf.subarray(0, per);
          ok &&=
            reply.subarray(0, header.length).equals(header) &&
            reply.subarray(header.length, header.length + value.length).equals(value);
          buf = buf.subarray(per);
          if (++got === n) resolve();
        }
      });
      s.resume();
    });
    s.destroy();
    expect(ok).toBe(true);
    expect(got).toBe(n);
  });

  it('limits unauthenticated frames only when a password is set', async () => {
    const { data } = await raw(srv.port, [resp(...Array.from({ length: 20 }, () => 'x'))], (g) => g.length > 0);
    expect(data.toString()).toMatch(/^-ERR unknown command 'x'/);
  });
});

describe('cache-server: redis-cli', () => {
  let srv: Server;
  beforeAll(async () => {
    srv = await startServer();
  });
  afterAll(async () => {
    expect(await srv.stop()).toBe(0);
  });

  it('runs commands', async () => {
    expect(await cli(srv.port, ['PING'])).toBe('PONG\n');
    expect(await cli(srv.port, ['SET', 'c1', 'hello world'])).toBe('OK\n');
    expect(await cli(srv.port, ['GET', 'c1'])).toBe('hello world\n');
    expect(await cli(srv.port, ['APPEND', 'c1', '!'])).toBe('12\n');
    expect(await cli(srv.port, ['INCRBY', 'c2', '5'])).toBe('5\n');
    expect(await cli(srv.port, ['MGET', 'c1', 'c2', 'c3'])).toBe('hello world!\n5\n\n');
    expect(await cli(srv.port, ['EXPIRE', 'c1', '100'])).toBe('1\n');
    expect(await cli(srv.port, ['TTL', 'c1'])).toBe('100\n');
    expect(await cli(srv.port, ['DBSIZE'])).toBe('2\n');
    // redis-cli prints an error with an empty line after it.
    expect(await cli(srv.port, ['FOO', 'bar'])).toBe("ERR unknown command 'FOO', with args beginning with: 'bar' \n\n");
    expect(await cli(srv.port, ['GET'])).toBe("ERR wrong number of arguments for 'get' command\n\n");
    expect(await cli(srv.port, ['CONFIG', 'GET', 'maxmemory'])).toBe('maxmemory\n0\n');
    expect((await cli(srv.port, ['--scan', '--pattern', 'c*'])).split('\n').filter(Boolean).sort()).toEqual([
      'c1',
      'c2',
    ]);
    expect(await cli(srv.port, ['INFO', 'ksm'])).toMatch(/^# KSM\r?\nksm_value_threshold:\d+/);
    expect(await cli(srv.port, ['COMMAND', 'COUNT'])).toMatch(/^\d+\n$/);
    // Binary values through redis-cli's -x (value from stdin).
    const bin = Buffer.from([0, 1, 2, 13, 10, 255, 128, 0]);
    expect(await cli(srv.port, ['-x', 'SET', 'c3'], bin)).toBe('OK\n');
    expect(await cli(srv.port, ['STRLEN', 'c3'])).toBe('8\n');
  });

  it('mass-inserts with --pipe', async () => {
    const input = Buffer.concat(Array.from({ length: 10_000 }, (_, i) => resp('SET', `pipe:${i}`, `value-${i}`)));
    const out = await cli(srv.port, ['--pipe'], input);
    expect(out).toMatch(/errors: 0, replies: 10000/);
    expect(await cli(srv.port, ['GET', 'pipe:9999'])).toBe('value-9999\n');
  });

  it('runs redis-benchmark', async () => {
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        'redis-benchmark',
        ['-p', String(srv.port), '-t', 'set,get,incr,ping', '-n', '2000', '-c', '5', '-P', '4', '-q', '--csv'],
        (e, so) => (e ? reject(new Error(e.message)) : resolve(so)),
      ),
    );
    expect(out).toMatch(/"SET"/);
    expect(out).toMatch(/"GET"/);
    expect(out).toMatch(/"INCR"/);
  });
});

describe('cache-server: AUTH, maxclients, maxmemory', () => {
  it('requires AUTH when --requirepass is set', async () => {
    const srv = await startServer(['--requirepass', 's3cret']);
    try {
      const anon = client(srv.port, { enableReadyCheck: false });
      expect(await errorOf(anon.get('k'))).toBe('NOAUTH Authentication required.');
      expect(await errorOf(anon.call('nosuch'))).toBe("ERR unknown command 'nosuch', with args beginning with: ");
      expect(await errorOf(anon.call('auth', 'wrong'))).toBe(
        'WRONGPASS invalid username-password pair or user is disabled.',
      );
      expect(await errorOf(anon.call('auth', 'other', 's3cret'))).toBe(
        'WRONGPASS invalid username-password pair or user is disabled.',
      );
      expect(await anon.call('auth', 'default', 's3cret')).toBe('OK');
      expect(await anon.set('k', 'v')).toBe('OK');
      anon.disconnect();
      const authed = client(srv.port, { password: 's3cret' });
      expect(await authed.get('k')).toBe('v');
      authed.disconnect();
      expect(await cli(srv.port, ['-a', 's3cret', '--no-auth-warning', 'GET', 'k'])).toBe('v\n');
      expect(await cli(srv.port, ['GET', 'k'])).toBe('NOAUTH Authentication required.\n\n');
      // Before AUTH, frames are small: no anonymous peer makes the server allocate.
      const big = await raw(
        srv.port,
        [Buffer.concat([resp('PING'), resp(...Array.from({ length: 11 }, () => 'x'))])],
        () => false,
        { closed: true },
      );
      expect(big.data.toString()).toBe(
        '-NOAUTH Authentication required.\r\n-ERR Protocol error: unauthenticated multibulk length\r\n',
      );
      const bulk = await raw(srv.port, ['*2\r\n$3\r\nSET\r\n$20000\r\n'], () => false, { closed: true });
      expect(bulk.data.toString()).toBe('-ERR Protocol error: unauthenticated bulk length\r\n');
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('AUTH without a password configured is an error', async () => {
    const srv = await startServer();
    try {
      const r = client(srv.port);
      expect(await errorOf(r.call('auth', 'x'))).toBe(
        'ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?',
      );
      expect(await r.ping()).toBe('PONG');
      r.disconnect();
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('refuses clients beyond --maxclients', async () => {
    const srv = await startServer(['--maxclients', '2']);
    try {
      const a = client(srv.port);
      const b = client(srv.port);
      expect(await a.ping()).toBe('PONG');
      expect(await b.ping()).toBe('PONG');
      const { data, closed } = await raw(srv.port, [resp('PING')], () => false, { closed: true });
      expect(data.toString()).toBe('-ERR max number of clients reached\r\n');
      expect(closed).toBe(true);
      a.disconnect();
      await pollAsync(async () => parseInfo(await b.info('clients')).connected_clients === '1', 5000);
      expect((await raw(srv.port, [resp('PING')], (g) => g.length > 0)).data.toString()).toBe('+PONG\r\n');
      expect(parseInfo(await b.info('stats')).rejected_connections).toBe('1');
      b.disconnect();
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('evicts least recently used keys under --maxmemory, counting Arena pages', async () => {
    const srv = await startServer(['--maxmemory', '4mb']);
    try {
      const r = client(srv.port);
      const value = crypto.randomBytes(256 * KiB);
      await r.set('hot', value);
      for (let i = 0; i < 64; i++) {
        await r.set(`cold:${i}`, value);
        expect(await r.exists('hot')).toBe(1); // touched: most recently used
      }
      const info = parseInfo(await r.info());
      expect(Number(info.evicted_keys)).toBeGreaterThan(40);
      expect(await r.dbsize()).toBeLessThan(17);
      // Evictions run before each write, so at most one value over.
      expect(Number(info.used_memory)).toBeLessThanOrEqual(4 * MiB + 256 * KiB + 4 * KiB);
      expect(Number(info.arena_live_bytes)).toBeLessThanOrEqual(4 * MiB + 256 * KiB);
      expect((await r.getBuffer('hot'))!.equals(value)).toBe(true);
      expect(await r.get('cold:0')).toBeNull();
      expect((await r.getBuffer('cold:63'))!.equals(value)).toBe(true);

      // noeviction: writes that need memory fail, reads and deletes work.
      expect(await r.config('SET', 'maxmemory-policy', 'noeviction')).toBe('OK');
      expect(await r.config('SET', 'maxmemory', '1mb')).toBe('OK');
      expect(await errorOf(r.set('more', 'x'))).toBe("OOM command not allowed when used memory > 'maxmemory'.");
      expect((await r.getBuffer('hot'))!.equals(value)).toBe(true);
      expect(await r.del('hot')).toBe(1);
      // Lowering maxmemory under an LRU policy evicts at once.
      expect(await r.config('SET', 'maxmemory-policy', 'allkeys-lru')).toBe('OK');
      expect(await r.set('more', 'x')).toBe('OK');
      expect(Number(parseInfo(await r.info('memory')).used_memory)).toBeLessThanOrEqual(1 * MiB);
      r.disconnect();
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('rejects bad command-line options without a stack trace', async () => {
    for (const args of [
      ['--port', 'abc'],
      ['--maxmemory', 'lots'],
      ['--workers', '0'],
      ['--gc-every', 'often'],
      ['--idle-reclaim', '-1'],
      ['--nosuch'],
    ]) {
      const out = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const p = spawn(process.execPath, [...NODE_ARGS, SERVER, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        p.stderr.on('data', (d) => (stderr += d));
        p.on('exit', (code) => resolve({ code, stderr }));
      });
      expect(out.code, args.join(' ')).toBe(1);
      expect(out.stderr).toMatch(/^cache-server: /);
      expect(out.stderr).not.toMatch(/\n\s+at /);
    }
  });
});

describe('cache-server: shutdown and workers', () => {
  it('SHUTDOWN stops accepting, lets other clients take their replies, and exits 0', async () => {
    const srv = await startServer();
    const a = client(srv.port);
    await a.set('x', '1');
    const p = a.pipeline();
    for (let i = 0; i < 2000; i++) p.incr('x');
    const pending = p.exec();
    const b = client(srv.port);
    await b.call('shutdown').catch(() => undefined);
    const res = await pending;
    expect(res!.every(([e]) => e === null)).toBe(true);
    expect(await srv.exited).toBe(0);
    a.disconnect();
    b.disconnect();
  });

  it('SIGTERM exits 0', async () => {
    const srv = await startServer();
    const r = client(srv.port);
    expect(await r.ping()).toBe('PONG');
    expect(await srv.stop()).toBe(0);
    r.disconnect();
  });

  it('--workers N: processes sharing the port, each with its own store; SHUTDOWN stops all', async () => {
    const srv = await startServer(['--workers', '2']);
    expect(srv.workerPids.length).toBe(2);
    const clients = Array.from({ length: 8 }, () => client(srv.port));
    const pids = new Set<string>();
    for (const [i, c] of clients.entries()) {
      const pid = parseInfo(await c.info('server')).process_id!;
      pids.add(pid);
      await c.set(`w:${pid}:${i}`, pid);
    }
    expect([...pids].sort()).toEqual(srv.workerPids.map(String).sort());
    // Each store holds only what was written to its own process.
    for (const c of clients) {
      const pid = parseInfo(await c.info('server')).process_id!;
      const keys = await c.keys('w:*');
      expect(keys.length).toBeGreaterThan(0);
      expect(keys.every((k) => k.startsWith(`w:${pid}:`))).toBe(true);
    }
    await clients[0]!.call('shutdown').catch(() => undefined);
    expect(await srv.exited).toBe(0);
    for (const pid of srv.workerPids)
      expect(fs.existsSync(`/proc/${pid}`) && !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z')).toBe(
        false,
      );
    for (const c of clients) c.disconnect();
  });
});

describe('cache-server: memory after a burst', () => {
  // --gc-every 0, and reads as 'data' chunks (CACHE_SERVER_READS=data, how a Node server
  // reads unless it reads in place): a fresh buffer per read, which pile up in the C heap
  // as V8 lets them; the quiet spell after the burst must give them back.
  const DATA_READS = { CACHE_SERVER_READS: 'data' };
  async function burst(
    args: string[],
    env: Record<string, string> = DATA_READS,
  ): Promise<{ loaded: number; after: number; reclaims: string[] }> {
    const srv = await startServer(['--gc-every', '0', ...args], env);
    try {
      const r = client(srv.port);
      const value = crypto.randomBytes(256 * KiB);
      for (let i = 0; i < 160; i += 20) {
        const p = r.pipeline();
        for (let j = i; j < i + 20; j++) p.set(`v:${j}`, value);
        await p.exec();
      }
      const loaded = rollup(srv.pid, 'Anonymous');
      const reclaims = [parseInfo(await r.info('memory')).idle_reclaims!];
      await sleep(1200); // quiet: only these INFO replies
      reclaims.push(parseInfo(await r.info('memory')).idle_reclaims!);
      await sleep(600);
      reclaims.push(parseInfo(await r.info('memory')).idle_reclaims!);
      const after = rollup(srv.pid, 'Anonymous');
      expect((await r.getBuffer('v:159'))!.equals(value)).toBe(true);
      r.disconnect();
      return { loaded, after, reclaims };
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  }

  it("--idle-reclaim 300: once quiet, one full GC and trimHeap() give the burst's C heap back", async () => {
    const { loaded, after, reclaims } = await burst(['--idle-reclaim', '300']);
    // 40 MiB of SETs went through 64 KiB read buffers: not during the burst, once after it, and not again.
    expect(reclaims).toEqual(['0', '1', '1']);
    expect(
      after,
      `anonymous memory ${(loaded / MiB).toFixed(1)} MiB after the burst, ${(after / MiB).toFixed(1)} MiB after`,
    ).toBeLessThan(loaded - 4 * MiB);
  });

  it('--idle-reclaim 0 leaves memory to V8 and glibc', async () => {
    const { reclaims } = await burst(['--idle-reclaim', '0']);
    expect(reclaims).toEqual(['0', '0', '0']);
  });

  it('reads in place (the default) leave no read buffers behind: less memory after the same burst', async () => {
    const chunks = await burst(['--idle-reclaim', '0']);
    const inPlace = await burst(['--idle-reclaim', '0'], {});
    // Values are read into their Arena buffers and everything else into one shared
    // buffer: nothing per read for the C heap to hold on to.
    expect(
      inPlace.loaded,
      `anonymous memory after the burst: ${(chunks.loaded / MiB).toFixed(1)} MiB read as chunks, ${(inPlace.loaded / MiB).toFixed(1)} MiB read in place`,
    ).toBeLessThan(chunks.loaded - 4 * MiB);
  });
});

describe('cache-server: duplicate values share pages (KSM)', () => {
  it('500 keys x 256 KiB from 5 blobs: >= 90 % of value bytes merged, the values then cost <= 10 % of 125 MiB', async (ctx) => {
    requireKsm(ctx);
    const srv = await startServer();
    try {
      const r = client(srv.port);
      // The server's own PSS before it holds any value (Node, tsx and the server's code:
      // 48-54 MiB here, and lower while other Node processes share the binary's pages).
      await r.ping();
      const pssEmpty = rollup(srv.pid, 'Pss');
      const size = 256 * KiB;
      const keys = 500;
      const logical = keys * size;
      const blobs = Array.from({ length: 5 }, () => crypto.randomBytes(size));
      for (let i = 0; i < keys; i += 50) {
        const p = r.pipeline();
        for (let j = i; j < i + 50; j++) p.set(`blob:${j}`, blobs[j % 5]!);
        await p.exec();
      }
      const loaded = parseInfo(await r.info('ksm'));
      expect(Number(loaded.ksm_values)).toBe(keys);
      expect(Number(loaded.ksm_value_bytes)).toBe(logical);
      const pssBefore = rollup(srv.pid, 'Pss');

      let last: Record<string, string> = {};
      await withFastKsm(async () => {
        await pollAsync(
          async () => {
            last = parseInfo(await r.info('ksm'));
            // The per-value figure is a 16-value sample; the process figure is exact.
            return (
              Number(last.ksm_value_merged_bytes) >= 0.9 * logical &&
              Number(last.ksm_process_merged_bytes) >= 0.9 * logical
            );
          },
          90_000,
          250,
        );
      });
      expect(Number(last.ksm_value_merged_bytes), JSON.stringify(last)).toBeGreaterThanOrEqual(0.9 * logical);
      expect(Number(last.ksm_value_merged_ratio)).toBeGreaterThanOrEqual(0.9);
      expect(Number(last.ksm_process_merged_bytes)).toBeGreaterThanOrEqual(0.9 * logical);

      const pssAfter = rollup(srv.pid, 'Pss');
      // 125 MiB of values now cost about 5 blobs' worth: PSS falls by nearly all of it.
      expect(pssBefore - pssAfter, `PSS before ${pssBefore >> 20} MiB, after ${pssAfter >> 20} MiB`).toBeGreaterThan(
        0.8 * logical,
      );
      // What the values still cost over the empty server: the 5 blobs (1.25 MiB) and what
      // is not merged yet, at most the 10 % the wait above allows (measured: 1.2-7.2 MiB).
      // Not an absolute PSS: the empty server's own 48-54 MiB moves with what else runs.
      const values = pssAfter - pssEmpty;
      expect(
        values,
        `PSS empty ${(pssEmpty / MiB).toFixed(1)} MiB, after ${(pssAfter / MiB).toFixed(1)} MiB`,
      ).toBeLessThanOrEqual(0.1 * logical);
      console.log(
        `cache-server KSM: PSS ${(pssEmpty / MiB).toFixed(1)} MiB empty, ${(pssBefore / MiB).toFixed(1)} MiB loaded, ${(pssAfter / MiB).toFixed(1)} MiB merged, for ${logical / MiB} MiB of values`,
      );

      // Merged values read back intact, and a write gets its own copy.
      for (const i of [0, 1, 249, 499]) expect((await r.getBuffer(`blob:${i}`))!.equals(blobs[i % 5]!)).toBe(true);
      const fresh = crypto.randomBytes(size);
      await r.set('blob:7', fresh);
      expect((await r.getBuffer('blob:7'))!.equals(fresh)).toBe(true);
      expect((await r.getBuffer('blob:2'))!.equals(blobs[2]!)).toBe(true);
      r.disconnect();
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });
});
