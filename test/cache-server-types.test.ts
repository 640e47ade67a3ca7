/**
 * Hashes, lists and sets in the cache server's memory: elements from the Arena threshold
 * on live in the Arena (INFO ksm counts them), replies that send them by reference keep
 * them alive while later commands of the same batch delete them and reuse their pages,
 * and maxmemory counts and evicts the new types.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RespConnection, render, type Reply } from './helpers/resp';

const SERVER = path.resolve(__dirname, '../examples/cache-server/server.mts');

async function startServer(args: string[] = []): Promise<{ port: number; proc: ChildProcess }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', SERVER, '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    proc.once('exit', (code) => reject(new Error(`cache-server exited (${code})`)));
  });
  return { port: Number(/:(\d+) pid=/.exec(line)![1]), proc };
}

function info(r: Reply): Record<string, string> {
  const text = r.t === '$' && r.v !== null ? r.v.toString() : '';
  return Object.fromEntries(
    text
      .split('\r\n')
      .filter((l) => l.includes(':') && !l.startsWith('#'))
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]),
  );
}

const bulk = (r: Reply): Buffer | null => (r.t === '$' ? r.v : null);

describe('cache-server: large elements of hashes and lists', () => {
  let srv: { port: number; proc: ChildProcess };
  let c: RespConnection;

  beforeAll(async () => {
    srv = await startServer();
    c = await RespConnection.connect(srv.port);
  }, 30_000);

  afterAll(() => {
    c?.close();
    srv?.proc.kill('SIGTERM');
  });

  it('live in the Arena and are counted there', async () => {
    const before = info(await c.command(['INFO', 'ksm']));
    const big = Buffer.alloc(64 * 1024, 'h');
    await c.pipeline([
      ['HSET', 'th', 'f1', big, 'small', 'x'],
      ['RPUSH', 'tl', big, 'y', big],
    ]);
    const mid = info(await c.command(['INFO', 'ksm']));
    expect(Number(mid.ksm_values) - Number(before.ksm_values)).toBe(3);
    expect(Number(mid.ksm_value_bytes) - Number(before.ksm_value_bytes)).toBe(3 * big.length);
    await c.pipeline([['DEL', 'th', 'tl']]);
    const after = info(await c.command(['INFO', 'ksm']));
    expect(after.ksm_values).toBe(before.ksm_values);
  });

  it('a reply keeps its element while later commands of the batch delete it and reuse its pages', async () => {
    const a = Buffer.alloc(64 * 1024, 'A');
    const b = Buffer.alloc(64 * 1024, 'B');
    const d = Buffer.alloc(64 * 1024, 'D');
    await c.pipeline([
      ['HSET', 'ph', 'f', a],
      ['RPUSH', 'pl', a],
    ]);
    // One write: each reply is built before the next command runs, and written after
    // all of them. The popped and overwritten elements go back to the store, which hands
    // a buffer of exactly that length to the next SET of that length.
    const replies = await c.pipeline([
      ['HGET', 'ph', 'f'],
      ['HSET', 'ph', 'f', b],
      ['SET', 'reuse1', d],
      ['LPOP', 'pl'],
      ['SET', 'reuse2', d],
      ['HGETALL', 'ph'],
      ['HDEL', 'ph', 'f'],
      ['SET', 'reuse3', d],
    ]);
    expect(bulk(replies[0]!)!.equals(a)).toBe(true);
    expect(bulk(replies[3]!)!.equals(a)).toBe(true);
    const all = replies[5]!;
    expect(all.t).toBe('*');
    expect(render(all).length).toBeGreaterThan(0);
    expect((all as { v: Reply[] }).v.map((x) => bulk(x)?.equals(b))).toEqual([false, true]);
    const m = info(await c.command(['INFO', 'memory']));
    expect(m.arena_pinned_buffers).toBe('0');
    expect(m.arena_pinned_gone).toBe('0');
    for (const k of ['reuse1', 'reuse2', 'reuse3']) expect(bulk(await c.command(['GET', k]))!.equals(d)).toBe(true);
  });
});

describe('cache-server: maxmemory covers hashes, lists and sets', () => {
  it('evicts keys of every type to stay under the limit', async () => {
    const srv = await startServer(['--maxmemory', '2mb', '--maxmemory-policy', 'allkeys-lru']);
    const c = await RespConnection.connect(srv.port);
    try {
      const big = Buffer.alloc(16 * 1024, 'v');
      for (let i = 0; i < 100; i++) {
        const r = await c.pipeline([
          ['HSET', `eh${i}`, 'f', big, 'g', big],
          ['RPUSH', `el${i}`, big, big],
          ['SADD', `es${i}`, ...Array.from({ length: 50 }, (_, j) => `member-${i}-${j}`)],
        ]);
        for (const x of r) expect(x.t).toBe(':');
      }
      // Like Redis, the server evicts before each write and in its 10 Hz cron: the last
      // write may leave it over the limit until the next tick.
      await new Promise((r) => setTimeout(r, 300));
      const m = info(await c.command(['INFO']));
      expect(Number(m.used_memory)).toBeLessThanOrEqual(2 * 1024 * 1024);
      expect(Number(m.evicted_keys)).toBeGreaterThan(100);
      // The survivors are whole: no half-evicted collection.
      const keys = await c.command(['KEYS', 'e*']);
      expect(keys.t).toBe('*');
      for (const k of (keys as { v: Reply[] }).v.slice(0, 20)) {
        const key = bulk(k)!.toString();
        const n = await c.command([key.startsWith('eh') ? 'HLEN' : key.startsWith('el') ? 'LLEN' : 'SCARD', key]);
        expect(render(n)).toBe(key.startsWith('es') ? ':50' : ':2');
      }
    } finally {
      c.close();
      srv.proc.kill('SIGTERM');
    }
  }, 60_000);
});
