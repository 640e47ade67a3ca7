/**
 * Differential test: the same seeded random command sequences (every command family,
 * valid and invalid arguments, wrong types, edge numbers, RESP2 and RESP3 connections,
 * MULTI blocks, WATCH with a second connection writing) against examples/cache-server
 * and Debian's real redis-server 7.0, replies compared exactly after normalising only:
 *
 * - fields that depend on time or chance: TTL/PTTL/EXPIRETIME/PEXPIRETIME values >= 0,
 *   OBJECT IDLETIME, HELLO's `version` and `id`, what SRANDMEMBER, HRANDFIELD and
 *   RANDOMKEY pick (their counts and types are kept);
 * - OBJECT REFCOUNT other than a shared integer's (Redis counts its own internal
 *   references, which differ inside MULTI);
 * - orders Redis leaves to its hash tables: the elements of KEYS, SMEMBERS, SINTER,
 *   SUNION, SDIFF, SPOP, HKEYS, HVALS, HGETALL are sorted;
 * - cursors: SCAN, HSCAN and SSCAN are run to the end on each server (SCANALL and
 *   co. in the generator) and the sorted union of what they returned is compared.
 *
 * Prints its seed; SEED=n replays one. DIFF_SEEDS (default 12) and DIFF_OPS (default
 * 400) set how much runs. On a mismatch it prints the shortest command history that
 * still reproduces one (each command dropped in turn while the mismatch remains).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generator, type Op } from './helpers/diff-gen';
import { RespConnection, render, type Reply } from './helpers/resp';

const SERVER = path.resolve(__dirname, '../examples/cache-server/server.mts');
const SEEDS = process.env.SEED
  ? [Number(process.env.SEED)]
  : Array.from({ length: Number(process.env.DIFF_SEEDS ?? 12) }, (_, i) => 1000 + i);
const OPS = Number(process.env.DIFF_OPS ?? 400);

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

interface Proc {
  port: number;
  proc: ChildProcess;
}

async function startRedis(dir: string): Promise<Proc> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const proc = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
      { stdio: 'ignore' },
    );
    for (let i = 0; i < 100; i++) {
      try {
        const c = await RespConnection.connect(port);
        c.close();
        return { port, proc };
      } catch {
        if (proc.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    proc.kill('SIGKILL');
    if (attempt >= 3) throw new Error('redis-server did not start');
  }
}

async function startOurs(): Promise<Proc> {
  const proc = spawn(process.execPath, ['--import', 'tsx', SERVER, '--port', '0'], {
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

const SORTED = new Set([
  'KEYS',
  'SMEMBERS',
  'SINTER',
  'SUNION',
  'SDIFF',
  'SPOP',
  'HKEYS',
  'HVALS',
  'HGETALL',
  'SCANALL',
  'HSCANALL',
  'SSCANALL',
]);
const TIMES = new Set(['TTL', 'PTTL', 'EXPIRETIME', 'PEXPIRETIME']);

/** Sorts the elements of an array, set or map reply (maps by key). */
function sortReply(r: Reply): Reply {
  if ((r.t === '*' || r.t === '~') && r.v !== null) {
    return { t: r.t, v: [...r.v].sort((a, b) => (render(a) < render(b) ? -1 : render(a) > render(b) ? 1 : 0)) };
  }
  if (r.t === '%') return { t: '%', v: [...r.v].sort((a, b) => (render(a[0]) < render(b[0]) ? -1 : 1)) };
  return r;
}

/** HGETALL in RESP2 is a flat array of pairs: sort it as pairs. */
function sortPairs(r: Reply): Reply {
  if (r.t !== '*' || r.v === null) return r;
  const pairs: Reply[][] = [];
  for (let i = 0; i < r.v.length; i += 2) pairs.push([r.v[i]!, r.v[i + 1]!]);
  pairs.sort((a, b) => (render(a[0]!) < render(b[0]!) ? -1 : 1));
  return { t: '*', v: pairs.flat() };
}

/** The normal form of one reply to `argv` (see the file comment for what is normalised and why). */
function normalise(argv: string[], r: Reply): string {
  const name = argv[0]!.toUpperCase();
  if (r.t === '-') return render(r);
  if (name === 'HELLO' && r.t === '%') {
    return render({
      t: '%',
      v: r.v.map(([k, v]) => {
        const f = render(k);
        return [k, f === '$"version"' || f === '$"id"' ? { t: '+', v: 'X' } : v] as [Reply, Reply];
      }),
    });
  }
  if (name === 'HELLO' && r.t === '*' && r.v !== null) {
    return render({ t: '*', v: r.v.map((x, i) => (i === 3 || i === 7 ? { t: '+', v: 'X' } : x)) });
  }
  if (TIMES.has(name) && r.t === ':' && Number(r.v) >= 0) return ':T';
  if (name === 'OBJECT' && argv[1]?.toUpperCase() === 'IDLETIME' && r.t === ':') return ':I';
  // Redis's count of references to a value object includes its own bookkeeping (inside
  // MULTI the propagated command holds one more): only "shared integer" is compared.
  if (name === 'OBJECT' && argv[1]?.toUpperCase() === 'REFCOUNT' && r.t === ':' && r.v !== '2147483647') return ':R';
  if (name === 'RANDOMKEY') return r.t === '$' && r.v !== null ? '$key' : render(r);
  if (name === 'SRANDMEMBER' || name === 'HRANDFIELD') {
    if (argv.length === 2) return r.t === '$' && r.v !== null ? '$member' : render(r);
    if ((r.t === '*' || r.t === '~') && r.v !== null) return `${r.t}len=${r.v.length}`;
    return render(r);
  }
  if (name === 'HGETALL' && r.t === '*') return render(sortPairs(r));
  if (SORTED.has(name)) return render(sortReply(r));
  return render(r);
}

/** A pair of connections (RESP2, RESP3) to one server. */
class Side {
  conns: RespConnection[] = [];
  /** Commands queued in MULTI per connection, to normalise EXEC's replies one by one. */
  queued: string[][][] = [[], []];
  inMulti = [false, false];

  constructor(readonly port: number) {}

  async open(): Promise<void> {
    for (const c of this.conns) c.close();
    this.conns = [await RespConnection.connect(this.port), await RespConnection.connect(this.port)];
    await this.conns[0]!.command(['FLUSHALL']);
    await this.conns[1]!.command(['HELLO', '3']);
    this.queued = [[], []];
    this.inMulti = [false, false];
  }

  close(): void {
    for (const c of this.conns) c.close();
  }

  /** Runs one op and returns its normal form. */
  async run(op: Op): Promise<string> {
    const c = this.conns[op.conn]!;
    const name = op.argv[0]!.toUpperCase();
    if (name === 'SCANALL' || name === 'HSCANALL' || name === 'SSCANALL') return this.scanAll(c, op.argv);
    const r = await c.command(op.argv, 3000);
    const q = this.queued[op.conn]!;
    if (name === 'MULTI' && r.t === '+') {
      this.inMulti[op.conn] = true;
      q.length = 0;
    } else if (this.inMulti[op.conn] && r.t === '+' && r.v === 'QUEUED') q.push(op.argv);
    if ((name === 'EXEC' || name === 'DISCARD') && this.inMulti[op.conn] && !(r.t === '-' && r.v.startsWith('ERR'))) {
      this.inMulti[op.conn] = false;
      if (name === 'EXEC' && r.t === '*' && r.v !== null) {
        const parts = r.v.map((x, i) => normalise(q[i] ?? ['?'], x));
        return `*[${parts.join(', ')}]`;
      }
    }
    return normalise(op.argv, r);
  }

  /** SCAN (or HSCAN/SSCAN key) from cursor 0 to the end: the sorted union of what it returned. */
  async scanAll(c: RespConnection, argv: string[]): Promise<string> {
    const name = argv[0]!.slice(0, -3);
    const keyed = name !== 'SCAN';
    const head = keyed ? [name, argv[1]!] : [name];
    const rest = argv.slice(keyed ? 2 : 1);
    let cursor = '0';
    const seen = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      const r = await c.command([...head, cursor, ...rest]);
      if (r.t !== '*' || r.v === null) return render(r);
      const [cur, items] = r.v as [Reply, Reply];
      if (items.t !== '*' || items.v === null) return render(r);
      if (name === 'HSCAN') {
        for (let j = 0; j < items.v.length; j += 2) seen.add(`${render(items.v[j]!)}=${render(items.v[j + 1]!)}`);
      } else for (const it of items.v) seen.add(render(it));
      cursor = cur.t === '$' && cur.v !== null ? cur.v.toString() : '0';
      if (cursor === '0') break;
    }
    return `scan[${[...seen].sort().join(', ')}]`;
  }
}

/** Everything in the keyspace, in a form that does not depend on hash order (a final check). */
async function dump(side: Side): Promise<string> {
  const c = side.conns[0]!;
  const keys = await c.command(['KEYS', '*']);
  if (keys.t !== '*' || keys.v === null) return render(keys);
  const out: string[] = [];
  for (const k of keys.v.map((x) => (x.t === '$' && x.v !== null ? x.v.toString('latin1') : '')).sort()) {
    const t = await c.command(['TYPE', k]);
    const type = t.t === '+' ? t.v : '?';
    const cmd = { string: ['GET', k], hash: ['HGETALL', k], list: ['LRANGE', k, '0', '-1'], set: ['SMEMBERS', k] }[
      type
    ] ?? ['TYPE', k];
    const enc = await c.command(['OBJECT', 'ENCODING', k]);
    out.push(`${k}:${type}:${render(enc)}:${normalise(cmd, await c.command(cmd))}`);
  }
  return out.join('\n');
}

describe('cache-server against redis-server 7.0: the same replies to the same commands', () => {
  let dir = '';
  let redis: Proc;
  let ours: Proc;
  let a: Side;
  let b: Side;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksm-diff-'));
    [redis, ours] = await Promise.all([startRedis(dir), startOurs()]);
    a = new Side(redis.port);
    b = new Side(ours.port);
  }, 60_000);

  afterAll(() => {
    a?.close();
    b?.close();
    redis?.proc.kill('SIGKILL');
    ours?.proc.kill('SIGTERM');
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Replies of the last replay: errors and others, to show the commands did real work. */
  const tally = { errors: 0, other: 0, texts: new Map<string, number>() };

  /** Replays `ops` on fresh connections; the index of the first mismatch and both forms, or null. */
  async function replay(ops: Op[]): Promise<{ at: number; redis: string; ours: string } | null> {
    await Promise.all([a.open(), b.open()]);
    tally.errors = tally.other = 0;
    tally.texts.clear();
    for (let i = 0; i < ops.length; i++) {
      // A side that does not answer (or closes) is a mismatch too, reported as such.
      const [x, y] = await Promise.all([a.run(ops[i]!).catch(String), b.run(ops[i]!).catch(String)]);
      if (x !== y) return { at: i, redis: x, ours: y };
      if (x.startsWith('-')) {
        tally.errors++;
        const text = `${ops[i]!.argv[0]}: ${x.slice(0, 40)}`;
        tally.texts.set(text, (tally.texts.get(text) ?? 0) + 1);
      } else tally.other++;
    }
    const [x, y] = await Promise.all([dump(a), dump(b)]);
    return x === y ? null : { at: ops.length, redis: x, ours: y };
  }

  /**
   * Shortens a history that ends in a mismatch: drops chunks of it (halves, quarters, ...
   * down to single commands) while some mismatch remains, cutting after the first one.
   */
  async function shrink(ops: Op[]): Promise<Op[]> {
    let cur = ops;
    for (let size = Math.max(1, Math.floor(cur.length / 2)); ; size = Math.floor(size / 2)) {
      for (let i = cur.length - size; i >= 0; i -= size) {
        const cand = cur.slice(0, i).concat(cur.slice(i + size));
        const m = await replay(cand);
        if (m !== null) {
          cur = cand.slice(0, m.at + 1);
          i = Math.min(i, cur.length - size + 1);
        }
      }
      if (size <= 1) break;
    }
    return cur;
  }

  for (const seed of SEEDS) {
    it(`seed ${seed}: ${OPS} commands`, async () => {
      console.log(`cache-server diff: SEED=${seed} DIFF_OPS=${OPS}`);
      const next = generator(seed);
      const ops: Op[] = [];
      while (ops.length < OPS) ops.push(...next());
      const m = await replay(ops);
      if (m === null) {
        console.log(
          `cache-server diff: SEED=${seed}: ${tally.other + tally.errors} replies alike, ${tally.errors} of them errors`,
        );
        if (process.env.DIFF_VERBOSE) console.log([...tally.texts].sort((x, y) => y[1] - x[1]).slice(0, 30));
        // Most commands must do real work, or the comparison proves little.
        expect(tally.other).toBeGreaterThan(tally.errors);
        return;
      }
      const history = await shrink(ops.slice(0, m.at + 1));
      const last = await replay(history);
      const text = history.map(
        (o) => `  [conn ${o.conn}${o.conn === 1 ? ', RESP3' : ''}] ${o.argv.map((s) => JSON.stringify(s)).join(' ')}`,
      );
      const msg =
        `SEED=${seed}: replies differ (shortest history, ${history.length} commands):\n${text.join('\n')}\n` +
        `redis-server: ${last?.redis ?? m.redis}\ncache-server: ${last?.ours ?? m.ours}`;
      console.log(msg);
      expect.fail(msg);
    }, 300_000);
  }
});
