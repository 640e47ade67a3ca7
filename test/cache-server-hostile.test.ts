/**
 * The cache server under hostile input and faults: patterns that made Redis hang, a client
 * whose pending command grows without end (client-query-buffer-limit, against the real
 * redis-server), allocations that fail inside commands and inside the parser (a
 * fault-injection seam), workers that keep crashing, SIGTERM under load, and AUTH.
 * Every server is a child process on a free port.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Redis from 'ioredis';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type * as RespModule from '../examples/cache-server/resp.mjs' with { 'resolution-mode': 'import' };
import { pollUntil } from './helpers/ksm';

const SERVER = path.resolve(__dirname, '../examples/cache-server/server.mts');
const KiB = 1024;
const HAVE_REDIS = spawnSync('redis-server', ['--version']).status === 0;

interface Server {
  port: number;
  pid: number;
  proc: ChildProcess;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const procs: ChildProcess[] = [];
afterEach(() => {
  for (const p of procs.splice(0)) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
});

async function start(args: string[] = [], env: Record<string, string> = {}): Promise<Server> {
  const proc = spawn(process.execPath, ['--import', 'tsx', SERVER, '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  procs.push(proc);
  let out = '';
  let err = '';
  proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const line = await new Promise<string>((resolve, reject) => {
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    void exited.then(({ code }) => reject(new Error(`cache-server exited (${code}) before listening: ${err}`)));
  });
  const m = /:(\d+) pid=(\d+)/.exec(line)!;
  return { port: Number(m[1]), pid: Number(m[2]), proc, stderr: () => err, exited };
}

/** A raw connection: what it received, and whether the server closed it. */
async function raw(port: number | string): Promise<{
  s: net.Socket;
  got: () => Buffer;
  closed: Promise<void>;
}> {
  const s = typeof port === 'number' ? net.connect(port, '127.0.0.1') : net.connect(port);
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  s.on('error', () => {});
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
  await new Promise((r) => s.once('connect', r));
  return { s, got: () => Buffer.concat(chunks), closed };
}

function frame(...args: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(a);
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** PING on a new connection: the raw reply. */
async function ping(port: number): Promise<string> {
  const c = await raw(port);
  c.s.write('PING\r\n');
  await pollUntil(() => c.got().length >= 7, 10_000);
  c.s.destroy();
  return c.got().toString();
}

/** Writes everything, waiting for the socket to drain, without waiting for replies. */
async function send(s: net.Socket, data: Buffer): Promise<void> {
  // A server that closes the connection mid-write (the point of some tests here) never
  // drains it: the close ends the wait too.
  if (!s.write(data) && !s.destroyed)
    await new Promise<void>((r) => {
      const done = () => {
        s.off('drain', done);
        s.off('close', done);
        r();
      };
      s.once('drain', done);
      s.once('close', done);
    });
}

function client(port: number, extra: Record<string, unknown> = {}): Redis {
  const c = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null, ...extra });
  // A server killed at the end of a test resets the connection: not a failure here.
  c.on('error', () => {});
  return c;
}

describe('cache-server: patterns', () => {
  it('KEYS with 50 stars against 64 KiB keys answers promptly, and other clients meanwhile', async () => {
    const srv = await start();
    const a = client(srv.port);
    const b = client(srv.port);
    try {
      for (let i = 0; i < 8; i++) await a.set(`${'a'.repeat(64 * KiB - 1)}${i}`, 'v');
      const t0 = performance.now();
      const [hostile, pong] = await Promise.all([a.keys(`${'*a'.repeat(50)}*b`), b.ping()]);
      // A liveness bound: the backtracking matcher this replaced did not finish in minutes.
      expect(performance.now() - t0).toBeLessThan(20_000);
      expect(hostile).toEqual([]);
      expect(pong).toBe('PONG');
      expect(await a.keys(`${'*a'.repeat(50)}*7`)).toHaveLength(1);
      // The CVE-2022-36021 pattern on a 40-byte key, which kept the old matcher busy for 20 s.
      await a.set('a'.repeat(40), 'v');
      expect(await a.keys('*a*a*a*a*a*a*a*a*a*a*b')).toEqual([]);
      const [cursor, found] = await a.scan('0', 'MATCH', `${'*a'.repeat(50)}*3`, 'COUNT', '100');
      expect(cursor).toBe('0');
      expect(found).toHaveLength(1);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });
});

describe('cache-server: KEYS over a large key space', () => {
  it('runs in slices: another client is answered before it ends; its own later commands keep their order', async () => {
    const srv = await start();
    const count = 200_000;
    const loader = await raw(srv.port);
    for (let i = 0; i < count; i += 10_000) {
      const batch: Buffer[] = [];
      for (let k = i; k < i + 10_000; k++) batch.push(frame('SET', `key:${k}`, 'v'));
      await send(loader.s, Buffer.concat(batch));
    }
    expect(await pollUntil(() => loader.got().length === 5 * count, 120_000)).toBe(true);
    loader.s.destroy();

    const a = await raw(srv.port);
    const b = await raw(srv.port);
    let pongAt = 0;
    let firstByteAt = 0;
    b.s.on('data', () => (pongAt ||= performance.now()));
    a.s.on('data', () => (firstByteAt ||= performance.now()));
    const tail = '+OK\r\n$5\r\nafter\r\n';
    a.s.write(Buffer.concat([frame('KEYS', 'key:*'), frame('SET', 'later', 'after'), frame('GET', 'later')]));
    // While KEYS runs (tens of ms here): the PING is answered between its slices, before
    // the first byte of the KEYS reply, which is written when KEYS is done. Run in one
    // go, KEYS would be written first.
    await sleep(5);
    b.s.write(frame('PING'));
    expect(await pollUntil(() => a.got().subarray(-tail.length).toString() === tail, 60_000)).toBe(true);
    expect(b.got().toString()).toBe('+PONG\r\n');
    expect(pongAt).toBeLessThan(firstByteAt);
    // The whole KEYS reply, then the SET and GET sent behind it.
    const reply = a.got().toString('latin1');
    expect(reply.startsWith(`*${count}\r\n`)).toBe(true);
    const names = reply
      .slice(0, -tail.length)
      .split('\r\n')
      .filter((l) => l.startsWith('key:'));
    expect(new Set(names).size).toBe(count);
    a.s.destroy();
    b.s.destroy();

    // Inside EXEC, KEYS runs in one go: the transaction's array holds its whole reply, then SET's.
    const t = await raw(srv.port);
    t.s.write(Buffer.concat([frame('MULTI'), frame('KEYS', 'key:*'), frame('SET', 'x', 'y'), frame('EXEC')]));
    expect(await pollUntil(() => t.got().toString('latin1').endsWith('+OK\r\n'), 60_000)).toBe(true);
    const exec = t.got().toString('latin1');
    expect(exec.startsWith(`+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n*${count}\r\n`)).toBe(true);
    expect(exec.split('\r\n').filter((l) => l.startsWith('key:'))).toHaveLength(count);
    t.s.destroy();
  }, 180_000);
});

describe('cache-server: client-query-buffer-limit', () => {
  /** An incomplete SET whose value is announced as 4 MiB and sent up to `bytes`. */
  const partialSet = (bytes: number) =>
    Buffer.concat([Buffer.from(`*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$${4 << 20}\r\n`), Buffer.alloc(bytes, 'x')]);
  /** Many small arguments of a command that never completes. */
  const manyArgs = (count: number, size: number) =>
    Buffer.concat([
      Buffer.from(`*${count + 100}\r\n$3\r\nDEL\r\n`),
      ...Array.from({ length: count }, () => Buffer.from(`$${size}\r\n${'y'.repeat(size)}\r\n`)),
    ]);

  /** What a server does with each hostile input, next to a well-behaved client. */
  async function behaviour(port: number | string): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {};
    for (const [name, data] of [
      ['a large bulk past the limit', partialSet(1200 * KiB)],
      ['small arguments past the limit', manyArgs(300, 4000)],
      ['a large bulk under the limit', partialSet(700 * KiB)],
    ] as const) {
      const c = await raw(port);
      await send(c.s, data);
      const closed = await Promise.race([c.closed.then(() => true), sleep(3000).then(() => false)]);
      out[name] = { closed, reply: c.got().toString() };
      c.s.destroy();
    }
    // Complete commands, 3 MiB in all, pipelined: each is run, nothing is held.
    const ok = await raw(port);
    const value = Buffer.alloc(512 * KiB, 'z');
    const batch = Buffer.concat(Array.from({ length: 6 }, (_, i) => frame('SET', `big${i}`, value)));
    await send(ok.s, batch);
    await pollUntil(() => ok.got().toString().split('+OK').length - 1 === 6, 10_000);
    out['complete commands, 3 MiB pipelined'] = ok.got().toString();
    ok.s.destroy();
    return out;
  }

  const expected = {
    'a large bulk past the limit': { closed: true, reply: '' },
    'small arguments past the limit': { closed: true, reply: '' },
    'a large bulk under the limit': { closed: false, reply: '' },
    'complete commands, 3 MiB pipelined': '+OK\r\n'.repeat(6),
  };

  it.each([
    ['reads in place', {}],
    ["'data' reads", { CACHE_SERVER_READS: 'data' }],
  ])('closes a client whose pending command passes it, without a reply, and logs it (%s)', async (_, env) => {
    const srv = await start(['--client-query-buffer-limit', '1mb'], env);
    const other = client(srv.port);
    try {
      expect(await behaviour(srv.port)).toEqual(expected);
      expect(await other.ping()).toBe('PONG');
      expect(await other.strlen('big5')).toBe(512 * KiB);
      expect(srv.stderr()).toMatch(/Closing client that reached max query buffer length: id=\d+ addr=\S+ qbuf=\d+/);
    } finally {
      other.disconnect();
    }
  });

  it('counts what MULTI has queued: a transaction cannot grow without bound either', async () => {
    const srv = await start(['--client-query-buffer-limit', '1mb']);
    const c = await raw(srv.port);
    const value = Buffer.alloc(100 * KiB, 'q');
    await send(c.s, frame('MULTI'));
    for (let i = 0; i < 9; i++) await send(c.s, frame('SET', `k${i}`, value));
    expect(await pollUntil(() => c.got().toString().split('+QUEUED').length - 1 === 9, 10_000)).toBe(true);
    // 900 KiB queued: still open. Two more pass 1 MiB: closed, without a reply.
    await send(c.s, Buffer.concat([frame('SET', 'k9', value), frame('SET', 'k10', value)]));
    await c.closed;
    expect(c.got().toString()).toBe(`+OK\r\n${'+QUEUED\r\n'.repeat(10)}`);
    expect(srv.stderr()).toMatch(/max query buffer length: .* multi-mem=\d+/);
    expect(await ping(srv.port)).toBe('+PONG\r\n');
  });

  it.runIf(HAVE_REDIS || process.env.KSM_REQUIRE === '1')('as redis-server does with the same limit', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qbuf-redis-'));
    const sock = path.join(dir, 'redis.sock');
    const redis = spawn(
      'redis-server',
      ['--port', '0', '--unixsocket', sock, '--save', '', '--dir', dir, '--client-query-buffer-limit', '1mb'],
      { stdio: 'ignore' },
    );
    procs.push(redis);
    try {
      expect(await pollUntil(() => fs.existsSync(sock), 10_000)).toBe(true);
      // One deliberate difference: Redis 7.0 counts only its query buffer, so arguments
      // already parsed out of it are not counted and a command of many small arguments
      // grows without bound there (up to 1M arguments). This server counts them too.
      expect(await behaviour(sock)).toEqual({
        ...expected,
        'small arguments past the limit': { closed: false, reply: '' },
      });
    } finally {
      redis.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('cache-server: allocations that fail', () => {
  it('the command gets -OOM, the stream stays in step, nothing acknowledged is lost, others carry on', async () => {
    // Arena allocations 2 and 4 fail: the 2nd 8 KiB value (a SET on the fast path) and the
    // 64 KiB value streamed by the parser (its bytes must be skipped, not parsed as commands).
    const srv = await start([], { CACHE_SERVER_FAIL_ALLOC: '2,4' });
    const other = client(srv.port);
    const c = await raw(srv.port);
    try {
      const v = (i: number, size = 8 * KiB) => Buffer.alloc(size, String.fromCharCode(97 + i));
      // The value of the 64 KiB SET holds what would be commands if it were misparsed.
      const tricky = Buffer.concat([frame('SET', 'evil', 'x'), Buffer.alloc(64 * KiB - 26, 'q')]);
      await send(
        c.s,
        Buffer.concat([
          frame('SET', 'k1', v(1)), // allocation 1
          frame('SET', 'k2', v(2)), // 2: fails
          frame('SET', 'k3', v(3)), // 3
          frame('SET', 'big', tricky), // 4: fails in the parser
          frame('SET', 'k5', v(5)), // 5
          frame('PING'),
        ]),
      );
      await pollUntil(() => c.got().toString().endsWith('+PONG\r\n'), 10_000);
      const replies = c.got().toString().split('\r\n').filter(Boolean);
      expect(replies).toHaveLength(6);
      expect(replies[0]).toBe('+OK');
      expect(replies[1]).toMatch(/^-OOM .*'set'.*ENOMEM|^-OOM .*'set'.*Cannot allocate memory/);
      expect(replies[2]).toBe('+OK');
      expect(replies[3]).toMatch(/^-OOM /);
      expect(replies.slice(4)).toEqual(['+OK', '+PONG']);

      expect(await other.getBuffer('k1')).toEqual(v(1));
      expect(await other.getBuffer('k3')).toEqual(v(3));
      expect(await other.getBuffer('k5')).toEqual(v(5));
      expect(await other.exists('k2', 'big', 'evil')).toBe(0);
      // Allocations after the failing ones work, on this connection too.
      await send(c.s, frame('SET', 'big', v(9, 64 * KiB)));
      await pollUntil(() => c.got().toString().endsWith('+OK\r\n'), 10_000);
      expect(await other.getBuffer('big')).toEqual(v(9, 64 * KiB));
      expect(srv.proc.exitCode).toBeNull();
    } finally {
      other.disconnect();
      c.s.destroy();
    }
  });

  it('inside a multi-key command: an error reply, not a half-written one', async () => {
    const srv = await start([], { CACHE_SERVER_FAIL_ALLOC: '2' });
    const c = client(srv.port);
    try {
      await expect(c.mset('a', 'x'.repeat(8 * KiB), 'b', 'y'.repeat(8 * KiB))).rejects.toThrow(/^OOM /);
      // The connection is still in step: the next replies are the right ones.
      expect(await c.get('b')).toBeNull();
      expect(await c.set('c', 'z'.repeat(8 * KiB))).toBe('OK');
      expect(await c.strlen('c')).toBe(8 * KiB);
    } finally {
      c.disconnect();
    }
  });
});

describe('cache-server: Writer.rollback', () => {
  let resp: typeof RespModule;
  beforeAll(async () => {
    resp = await import('../examples/cache-server/resp.mjs');
  });

  it('takes back a half-written reply, large parts and pins included', () => {
    const written: Buffer[] = [];
    const socket = {
      destroyed: false,
      writableLength: 0,
      write: (b: Buffer, cb?: () => void) => (written.push(Buffer.from(b)), cb?.(), true),
      cork() {},
      uncork() {},
    };
    const pins: Buffer[] = [];
    const unpinned: Buffer[] = [];
    const w = new resp.Writer(socket as unknown as net.Socket, {
      pin: (b) => pins.push(b),
      unpin: (bs) => unpinned.push(...bs),
    });
    w.simple('BEFORE');
    w.mark();
    w.array(3);
    const large = crypto.randomBytes(40 * KiB);
    w.bulk(large, true);
    // Enough to need a new chunk after the large part.
    for (let i = 0; i < 2000; i++) w.bulk(Buffer.alloc(100, 'p'));
    w.rollback();
    expect(unpinned).toEqual([large]);
    w.error('ERR failed');
    w.simple('AFTER');
    w.flush();
    expect(Buffer.concat(written).toString()).toBe('+BEFORE\r\n-ERR failed\r\n+AFTER\r\n');
  });
});

describe('cache-server: workers', () => {
  const killed = new Set<number>();
  /** The primary's children (the workers) still alive and not yet killed by this test. */
  const workers = (pid: number) =>
    fs
      .readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number)
      .filter((w) => !killed.has(w) && !/\) Z /.test(fs.readFileSync(`/proc/${w}/stat`, 'utf8')));
  const kill = (w: number) => {
    killed.add(w);
    process.kill(w, 'SIGKILL');
  };

  it('a crashed worker is started again after a delay; crashes in a row make the primary give up', async () => {
    const srv = await start(['--workers', '2']);
    {
      expect(await pollUntil(() => workers(srv.pid).length === 2, 10_000)).toBe(true);
      const first = workers(srv.pid);
      kill(first[0]!);
      expect(await pollUntil(() => /starting another in 100 ms/.test(srv.stderr()), 10_000)).toBe(true);
      expect(
        await pollUntil(() => workers(srv.pid).length === 2 && !workers(srv.pid).includes(first[0]!), 20_000),
      ).toBe(true);
      expect(await ping(srv.port)).toBe('+PONG\r\n');
      // Four more crashes within the minute: five in all, and the primary exits 1.
      for (let i = 0; i < 4; i++) {
        const live = await pollUntil(() => workers(srv.pid)[0], 20_000);
        kill(live!);
        if (i < 3) {
          const delay = 200 * 2 ** i;
          expect(await pollUntil(() => srv.stderr().includes(`starting another in ${delay} ms`), 20_000)).toBe(true);
        }
      }
      const { code } = await srv.exited;
      expect(code).toBe(1);
      expect(srv.stderr()).toMatch(/workers exited 5 times within 60 s .*giving up/);
      // It stopped the worker that was still running.
      expect(await pollUntil(() => !fs.existsSync(`/proc/${first[1]!}`), 10_000)).toBe(true);
    }
  }, 120_000);
});

describe('cache-server: SIGTERM and SIGINT under load', () => {
  it.each(['SIGTERM', 'SIGINT'] as const)(
    '%s ends the server within a second while a client blasts SETs',
    async (sig) => {
      const srv = await start();
      const blaster = await raw(srv.port);
      // Pipelined SETs as fast as the socket takes them, and GETs of a 64 KiB value, whose
      // replies are never read: the server's writes to this client can never finish, so
      // only its own deadline ends the shutdown.
      const batch = Buffer.concat([
        ...Array.from({ length: 200 }, (_, i) => frame('SET', `k${i}`, 'v'.repeat(1000))),
        ...Array.from({ length: 20 }, () => frame('GET', 'big')),
      ]);
      await send(blaster.s, frame('SET', 'big', Buffer.alloc(64 * KiB, 'b')));
      blaster.s.pause();
      let blasting = true;
      void (async () => {
        while (blasting && !blaster.s.destroyed) await send(blaster.s, batch);
      })().catch(() => {});
      try {
        await sleep(1000);
        expect(srv.proc.exitCode).toBeNull();
        const t0 = performance.now();
        srv.proc.kill(sig);
        const { code } = await srv.exited;
        const ms = performance.now() - t0;
        expect(code).toBe(0);
        expect(ms, `exited ${Math.round(ms)} ms after ${sig}`).toBeLessThan(1000);
      } finally {
        blasting = false;
        blaster.s.destroy();
      }
    },
  );
});

describe('cache-server: AUTH', () => {
  it('only the exact password, as bytes: prefixes, extensions and near misses are refused', async () => {
    const pass = 'pässwörd-✓';
    const srv = await start(['--requirepass', pass]);
    const c = client(srv.port, { lazyConnect: true, enableReadyCheck: false });
    try {
      await c.connect();
      for (const wrong of ['', 'p', pass.slice(0, -1), `${pass}x`, pass.toUpperCase(), 'passwörd-✓']) {
        await expect(c.auth(wrong), JSON.stringify(wrong)).rejects.toThrow(/^WRONGPASS/);
      }
      await expect(c.auth('someone', pass)).rejects.toThrow(/^WRONGPASS/);
      expect(await c.auth(pass)).toBe('OK');
      expect(await c.auth('default', pass)).toBe('OK');
      expect(await c.ping()).toBe('PONG');
    } finally {
      c.disconnect();
    }
  });
});
