/**
 * examples/cache-server with the two Node clients people use, doing everyday cache work:
 * ioredis (RESP2) and node-redis v5 (`redis`, RESP2 and RESP3): get/set with TTL,
 * pipelines, MULTI, hashes, lists, sets, scanning, and reconnecting after the server
 * restarts. Each client's connection handshake (INFO, HELLO, CLIENT SETINFO, ...) is
 * part of what is tested.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Redis from 'ioredis';
import { createClient } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const SERVER = path.resolve(__dirname, '../examples/cache-server/server.mts');

interface Server {
  port: number;
  proc: ChildProcess;
  stop: () => Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Starts the server on `port` (0: any) and resolves once it listens. */
async function startServer(port = 0): Promise<Server> {
  const proc = spawn(process.execPath, ['--import', 'tsx', SERVER, '--port', String(port)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    proc.once('exit', (code) => reject(new Error(`cache-server exited (${code})`)));
  });
  return {
    port: Number(/:(\d+) pid=/.exec(line)![1]),
    proc,
    stop: async () => {
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

describe('cache-server with ioredis', () => {
  let srv: Server;
  let r: Redis;

  beforeAll(async () => {
    srv = await startServer();
    r = new Redis({ port: srv.port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 });
    await r.connect();
  }, 30_000);

  afterAll(async () => {
    r?.disconnect();
    await srv?.stop();
  });

  it('get/set with TTL, counters, MGET', async () => {
    expect(await r.set('io:a', 'hello', 'EX', 100)).toBe('OK');
    expect(await r.get('io:a')).toBe('hello');
    const ttl = await r.ttl('io:a');
    expect(ttl).toBeGreaterThan(95);
    expect(ttl).toBeLessThanOrEqual(100);
    expect(await r.set('io:a', 'v2', 'KEEPTTL', 'GET')).toBe('hello');
    expect(await r.pttl('io:a')).toBeGreaterThan(90_000);
    expect(await r.getex('io:a', 'PERSIST')).toBe('v2');
    expect(await r.ttl('io:a')).toBe(-1);
    expect(await r.incrby('io:n', 5)).toBe(5);
    expect(await r.incrbyfloat('io:n', '0.1')).toBe('5.1');
    expect(await r.mget('io:a', 'io:n', 'io:none')).toEqual(['v2', '5.1', null]);
    expect(await r.set('io:short', 'x', 'PX', 30)).toBe('OK');
    await sleep(60);
    expect(await r.get('io:short')).toBeNull();
  });

  it('pipelines and multi()', async () => {
    const p = await r.pipeline().set('io:p1', '1').incr('io:p1').get('io:p1').lpush('io:p1', 'x').exec();
    expect(p!.map(([err, v]) => [err?.message ?? null, v])).toEqual([
      [null, 'OK'],
      [null, 2],
      [null, '2'],
      ['WRONGTYPE Operation against a key holding the wrong kind of value', undefined],
    ]);
    const m = await r.multi().set('io:m', 'a').append('io:m', 'bc').strlen('io:m').exec();
    expect(m).toEqual([
      [null, 'OK'],
      [null, 3],
      [null, 3],
    ]);
    // An optimistic lock: WATCH, another client writes, EXEC gives null.
    const other = new Redis({ port: srv.port, host: '127.0.0.1' });
    await r.watch('io:m');
    await other.set('io:m', 'changed');
    expect(await r.multi().set('io:m', 'mine').exec()).toBeNull();
    expect(await r.get('io:m')).toBe('changed');
    other.disconnect();
    // A queued error aborts the whole transaction.
    await expect(r.multi().set('io:m', 'x').call('nosuchcommand').exec()).rejects.toThrow(/EXECABORT/);
    expect(await r.get('io:m')).toBe('changed');
  });

  it('hashes, lists and sets', async () => {
    expect(await r.hset('io:h', { name: 'ada', age: '36' })).toBe(2);
    expect(await r.hgetall('io:h')).toEqual({ name: 'ada', age: '36' });
    expect(await r.hincrby('io:h', 'age', 1)).toBe(37);
    expect(await r.hmget('io:h', 'name', 'nope')).toEqual(['ada', null]);
    expect(await r.hdel('io:h', 'name', 'age')).toBe(2);
    expect(await r.exists('io:h')).toBe(0);

    expect(await r.rpush('io:l', 'a', 'b', 'c', 'd')).toBe(4);
    expect(await r.lrange('io:l', 1, -1)).toEqual(['b', 'c', 'd']);
    expect(await r.lpop('io:l', 2)).toEqual(['a', 'b']);
    expect(await r.lmove('io:l', 'io:l2', 'RIGHT', 'LEFT')).toBe('d');
    expect(await r.ltrim('io:l', 1, 0)).toBe('OK');
    expect(await r.exists('io:l')).toBe(0);

    expect(await r.sadd('io:tag:red', 'p1', 'p2', 'p3')).toBe(3);
    expect(await r.sadd('io:tag:big', 'p2', 'p3', 'p4')).toBe(3);
    expect((await r.sinter('io:tag:red', 'io:tag:big')).sort()).toEqual(['p2', 'p3']);
    expect(await r.sunionstore('io:tag:any', 'io:tag:red', 'io:tag:big')).toBe(4);
    expect(await r.smismember('io:tag:any', 'p1', 'p9')).toEqual([1, 0]);
    expect(await r.type('io:tag:any')).toBe('set');
  });

  it('scanStream walks every key once per match', async () => {
    await r.mset(Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`io:scan:${i}`, String(i)])));
    const seen = new Set<string>();
    await new Promise<void>((resolve, reject) => {
      const s = r.scanStream({ match: 'io:scan:*', count: 50 });
      s.on('data', (keys: string[]) => keys.forEach((k) => seen.add(k)));
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    expect(seen.size).toBe(300);
    const fields = new Map<string, string>();
    await r.hset('io:scanh', Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`f${i}`, `v${i}`])));
    await new Promise<void>((resolve, reject) => {
      const s = r.hscanStream('io:scanh', { count: 10 });
      s.on('data', (kv: string[]) => {
        for (let i = 0; i < kv.length; i += 2) fields.set(kv[i]!, kv[i + 1]!);
      });
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    expect(fields.size).toBe(40);
    expect(fields.get('f7')).toBe('v7');
  });

  it('reconnects after the server restarts', async () => {
    const port = await freePort();
    let s = await startServer(port);
    const c = new Redis({ port, host: '127.0.0.1', retryStrategy: () => 50, maxRetriesPerRequest: 50 });
    c.on('error', () => {}); // refused connections while the server restarts
    try {
      expect(await c.set('io:r', '1')).toBe('OK');
      await s.stop();
      s = await startServer(port);
      // The store is new (nothing persists): the command goes through on the new connection.
      expect(await c.get('io:r')).toBeNull();
      expect(await c.set('io:r', '2')).toBe('OK');
      expect(await c.get('io:r')).toBe('2');
    } finally {
      c.disconnect();
      await s.stop();
    }
  }, 30_000);
});

function nodeRedis(port: number, RESP: 2 | 3, reconnect: false | number = false) {
  const c = createClient({
    socket: { port, host: '127.0.0.1', reconnectStrategy: reconnect === false ? false : () => reconnect },
    RESP,
  });
  c.on('error', () => {});
  return c;
}

for (const RESP of [2, 3] as const) {
  describe(`cache-server with node-redis v5, RESP${RESP}`, () => {
    let srv: Server;
    let r: ReturnType<typeof nodeRedis>;

    beforeAll(async () => {
      srv = await startServer();
      r = nodeRedis(srv.port, RESP);
      await r.connect();
    }, 30_000);

    afterAll(async () => {
      if (r?.isOpen) r.destroy();
      await srv?.stop();
    });

    it('speaks the protocol it asked for', async () => {
      const info = await r.clientInfo();
      expect(info.resp).toBe(RESP);
      expect(info.id).toBe(await r.clientId());
    });

    it('get/set with TTL, counters', async () => {
      expect(await r.set('nr:a', 'hello', { expiration: { type: 'EX', value: 100 } })).toBe('OK');
      expect(await r.get('nr:a')).toBe('hello');
      const ttl = await r.ttl('nr:a');
      expect(ttl).toBeGreaterThan(95);
      expect(await r.getEx('nr:a', { type: 'PERSIST' })).toBe('hello');
      expect(await r.ttl('nr:a')).toBe(-1);
      expect(await r.incrBy('nr:n', 41)).toBe(41);
      expect(await r.incr('nr:n')).toBe(42);
      expect(await r.incrByFloat('nr:f', 0.1)).toBe('0.1');
      expect(await r.incrByFloat('nr:f', 0.2)).toBe('0.3');
      expect(await r.get('nr:none')).toBeNull();
    });

    it('pipelines and multi()', async () => {
      const p = await r.multi().set('nr:p', '1').incr('nr:p').get('nr:p').execAsPipeline();
      expect(p).toEqual(['OK', 2, '2']);
      const m = await r.multi().set('nr:m', 'a').append('nr:m', 'bc').get('nr:m').exec();
      expect(m).toEqual(['OK', 3, 'abc']);
      // WATCH on a connection of its own, another client writes: the transaction is refused.
      const other = r.duplicate();
      other.on('error', () => {});
      await other.connect();
      const iso = r.duplicate();
      iso.on('error', () => {});
      await iso.connect();
      await iso.watch('nr:m');
      await other.set('nr:m', 'changed');
      await expect(iso.multi().set('nr:m', 'mine').exec()).rejects.toThrow();
      iso.destroy();
      expect(await r.get('nr:m')).toBe('changed');
      other.destroy();
    });

    it('hashes, lists and sets', async () => {
      expect(await r.hSet('nr:h', { name: 'ada', age: '36' })).toBe(2);
      expect({ ...(await r.hGetAll('nr:h')) }).toEqual({ name: 'ada', age: '36' });
      expect(await r.hIncrBy('nr:h', 'age', 1)).toBe(37);
      expect(await r.hExists('nr:h', 'name')).toBe(1);
      expect(await r.hLen('nr:h')).toBe(2);

      expect(await r.rPush('nr:l', ['a', 'b', 'c'])).toBe(3);
      expect(await r.lRange('nr:l', 0, -1)).toEqual(['a', 'b', 'c']);
      expect(await r.lPos('nr:l', 'c')).toBe(2);
      expect(await r.lPopCount('nr:l', 5)).toEqual(['a', 'b', 'c']);
      expect(await r.exists('nr:l')).toBe(0);

      expect(await r.sAdd('nr:s', ['x', 'y', 'z'])).toBe(3);
      const members = await r.sMembers('nr:s');
      expect([...members].sort()).toEqual(['x', 'y', 'z']);
      expect(await r.sIsMember('nr:s', 'y')).toBe(1);
      expect(await r.sCard('nr:s')).toBe(3);
    });

    it('scanIterator, hScanIterator and sScanIterator see everything', async () => {
      for (let i = 0; i < 250; i++) await r.set(`nr:scan:${i}`, String(i));
      const keys = new Set<string>();
      for await (const batch of r.scanIterator({ MATCH: 'nr:scan:*', COUNT: 40 })) for (const k of batch) keys.add(k);
      expect(keys.size).toBe(250);
      await r.sAdd(
        'nr:ss',
        Array.from({ length: 30 }, (_, i) => `m${i}`),
      );
      const ms = new Set<string>();
      for await (const batch of r.sScanIterator('nr:ss')) for (const m of batch) ms.add(m);
      expect(ms.size).toBe(30);
      await r.hSet('nr:hs', Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`f${i}`, `v${i}`])));
      const fields = new Map<string, string>();
      for await (const batch of r.hScanIterator('nr:hs'))
        for (const { field, value } of batch) fields.set(field, value);
      expect(fields.size).toBe(20);
      expect(fields.get('f3')).toBe('v3');
    });

    it('reconnects after the server restarts', async () => {
      const port = await freePort();
      let s = await startServer(port);
      const c = nodeRedis(port, RESP, 50);
      await c.connect();
      try {
        expect(await c.set('nr:r', '1')).toBe('OK');
        await s.stop();
        s = await startServer(port);
        // Wait for the client to be back, then use it.
        for (let i = 0; i < 100 && !c.isReady; i++) await sleep(50);
        expect(c.isReady).toBe(true);
        expect(await c.get('nr:r')).toBeNull();
        expect(await c.set('nr:r', '2')).toBe('OK');
        expect(await c.get('nr:r')).toBe('2');
      } finally {
        c.destroy();
        await s.stop();
      }
    }, 30_000);
  });
}
