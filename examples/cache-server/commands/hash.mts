// Hashes: t_hash.c of Redis 7.0. Fields are latin1 strings; values Buffers (in the Arena
// from the threshold on). The listpack flag follows Redis's conversion rules.
import type { Client } from '../server.mjs';
import {
  HASH_MAX_LISTPACK_ENTRIES,
  HASH_MAX_LISTPACK_VALUE,
  HashValue,
  MAX_INT64,
  MIN_INT64,
  T_HASH,
  type LiveEntry,
} from '../store.mjs';
import { scanCursor, scanOptions } from './keyspace.mjs';
import { addLongDouble, formatLongDouble, isInfinite, parseLongDouble } from './longdouble.mjs';
import { E, intArg, lookup, parseInt64, randomIndex, str, upper, type Argv, type Def } from './util.mjs';

/** The hash at key for a write, created empty when missing; null after WRONGTYPE. */
function hashForWrite(c: Client, key: string): LiveEntry | null {
  const e = lookup(c, key, T_HASH);
  if (e === null) return null;
  return e ?? c.store.create(key, T_HASH);
}

/**
 * Sets a field (Redis's hashTypeSet, after hashTypeTryConversion): a field or value over
 * hash-max-listpack-value, or more than hash-max-listpack-entries fields, turn the
 * listpack into a hashtable for good. Returns the cost delta and whether the field is new.
 */
function hashSet(c: Client, h: HashValue, field: string, value: Buffer): [number, boolean] {
  if (h.listpack && (field.length > HASH_MAX_LISTPACK_VALUE || value.length > HASH_MAX_LISTPACK_VALUE)) {
    h.listpack = false;
  }
  const store = c.store;
  const old = h.map.get(field);
  let delta = 0;
  if (old !== undefined) {
    delta -= store.elementCost(old);
    store.freeElement(old);
  } else delta += store.memberCost(field);
  const v = store.element(value);
  delta += store.elementCost(v);
  h.map.set(field, v);
  if (h.listpack && h.map.size > HASH_MAX_LISTPACK_ENTRIES) h.listpack = false;
  return [delta, old === undefined];
}

function hset(c: Client, argv: Argv): void {
  if (argv.length % 2 === 1) return c.w.error(E.arity(str(argv[0]!).toLowerCase()));
  const e = hashForWrite(c, str(argv[1]!));
  if (e === null) return;
  const h = e.value as HashValue;
  // hashTypeTryConversion looks at every argument before the first write.
  for (let i = 2; i < argv.length; i++) if (argv[i]!.length > HASH_MAX_LISTPACK_VALUE) h.listpack = false;
  let created = 0;
  let delta = 0;
  for (let i = 2; i < argv.length; i += 2) {
    const [d, isNew] = hashSet(c, h, str(argv[i]!), argv[i + 1]!);
    delta += d;
    if (isNew) created++;
  }
  c.store.changed(e, delta);
  if (upper(argv[0]!) === 'HMSET') c.w.ok();
  else c.w.int(created);
}

function hsetnx(c: Client, argv: Argv): void {
  const e = hashForWrite(c, str(argv[1]!));
  if (e === null) return;
  const h = e.value as HashValue;
  const field = str(argv[2]!);
  if (h.map.has(field)) return c.w.int(0);
  const [d] = hashSet(c, h, field, argv[3]!);
  c.store.changed(e, d);
  c.w.int(1);
}

/** The hash at key for a read: undefined (no key), null (WRONGTYPE, replied). */
function hashForRead(c: Client, key: string): HashValue | undefined | null {
  const e = lookup(c, key, T_HASH, true);
  return e == null ? e : (e.value as HashValue);
}

function reply(c: Client, b: Buffer | undefined): void {
  if (b === undefined) c.w.nil();
  else c.w.bulk(b, c.store.inArena(b));
}

function hget(c: Client, argv: Argv): void {
  const h = hashForRead(c, str(argv[1]!));
  if (h === null) return;
  reply(c, h?.map.get(str(argv[2]!)));
}

function hmget(c: Client, argv: Argv): void {
  const h = hashForRead(c, str(argv[1]!));
  if (h === null) return;
  c.w.array(argv.length - 2);
  for (let i = 2; i < argv.length; i++) reply(c, h?.map.get(str(argv[i]!)));
}

function hdel(c: Client, argv: Argv): void {
  const e = lookup(c, str(argv[1]!), T_HASH);
  if (e === null) return;
  if (e === undefined) return c.w.int(0);
  const h = e.value as HashValue;
  let n = 0;
  let delta = 0;
  for (let i = 2; i < argv.length; i++) {
    const f = str(argv[i]!);
    const old = h.map.get(f);
    if (old === undefined) continue;
    h.map.delete(f);
    delta -= c.store.memberCost(f) + c.store.elementCost(old);
    c.store.freeElement(old);
    n++;
  }
  if (n > 0) c.store.changed(e, delta);
  c.w.int(n);
}

function hlen(c: Client, argv: Argv): void {
  const h = hashForRead(c, str(argv[1]!));
  if (h !== null) c.w.int(h?.map.size ?? 0);
}

function hstrlen(c: Client, argv: Argv): void {
  const h = hashForRead(c, str(argv[1]!));
  if (h !== null) c.w.int(h?.map.get(str(argv[2]!))?.length ?? 0);
}

function hexists(c: Client, argv: Argv): void {
  const h = hashForRead(c, str(argv[1]!));
  if (h !== null) c.w.int(h?.map.has(str(argv[2]!)) ? 1 : 0);
}

function hgetall(fields: boolean, values: boolean) {
  return (c: Client, argv: Argv): void => {
    const h = hashForRead(c, str(argv[1]!));
    if (h === null) return;
    const n = h?.map.size ?? 0;
    if (fields && values) c.w.map(n);
    else c.w.array(n);
    if (h === undefined) return;
    for (const [f, v] of h.map) {
      if (fields) c.w.bulkString(f);
      if (values) reply(c, v);
    }
  };
}

function hincrby(c: Client, argv: Argv): void {
  const by = intArg(c, argv[3]!);
  if (by === undefined) return;
  const e = hashForWrite(c, str(argv[1]!));
  if (e === null) return;
  const h = e.value as HashValue;
  const field = str(argv[2]!);
  const old = h.map.get(field);
  let n = 0n;
  if (old !== undefined) {
    const v = parseInt64(old);
    // (The field existed, so the hash did: nothing was created to undo.)
    if (v === undefined) return c.w.error('ERR hash value is not an integer');
    n = v;
  }
  const r = n + by;
  if (r > MAX_INT64 || r < MIN_INT64) {
    return c.w.error(E.overflow);
  }
  const [d] = hashSet(c, h, field, Buffer.from(String(r), 'latin1'));
  c.store.changed(e, d);
  c.w.int(r);
}

function hincrbyfloat(c: Client, argv: Argv): void {
  const by = parseLongDouble(str(argv[3]!));
  if (by === undefined) return c.w.error(E.notFloat);
  if (isInfinite(by)) return c.w.error('ERR value is NaN or Infinity');
  const e = hashForWrite(c, str(argv[1]!));
  if (e === null) return;
  const h = e.value as HashValue;
  const field = str(argv[2]!);
  const old = h.map.get(field);
  const value = old === undefined ? parseLongDouble('0')! : parseLongDouble(str(old));
  if (value === undefined) {
    return c.w.error('ERR hash value is not a float');
  }
  const r = addLongDouble(value, by);
  if (isInfinite(r)) {
    return c.w.error(E.nanInf);
  }
  const text = Buffer.from(formatLongDouble(r), 'latin1');
  const [d] = hashSet(c, h, field, text);
  c.store.changed(e, d);
  c.w.bulk(text);
}

const LONG_MAX = 9223372036854775807n;

function hrandfield(c: Client, argv: Argv): void {
  if (argv.length >= 3) {
    const l = intArg(c, argv[2]!);
    if (l === undefined) return;
    if (l < -LONG_MAX) {
      return c.w.error(`ERR value is out of range, value must between ${-LONG_MAX} and ${LONG_MAX}`);
    }
    let withValues = false;
    if (argv.length > 4 || (argv.length === 4 && upper(argv[3]!) !== 'WITHVALUES')) return c.w.error(E.syntax);
    if (argv.length === 4) {
      withValues = true;
      if (l < -LONG_MAX / 2n || l > LONG_MAX / 2n) return c.w.error('ERR value is out of range');
    }
    const h = lookup(c, str(argv[1]!), T_HASH, true);
    if (h === null) return;
    if (h === undefined || l === 0n) return c.w.array(0);
    const map = (h.value as HashValue).map;
    const entries = [...map];
    let picked: [string, Buffer][];
    if (l < 0n) {
      // Repetitions allowed: |count| independent draws.
      const n = Number(-l > 10_000_000n ? 10_000_000n : -l);
      picked = [];
      for (let i = 0; i < n; i++) picked.push(entries[randomIndex(entries.length)]!);
    } else if (l >= BigInt(entries.length)) picked = entries;
    else {
      const want = Number(l);
      // Distinct fields, kept in the hash's order.
      const chosen = new Set<number>();
      while (chosen.size < want) chosen.add(randomIndex(entries.length));
      picked = entries.filter((_, i) => chosen.has(i));
    }
    if (withValues && c.w.resp3) {
      c.w.array(picked.length);
      for (const [f, v] of picked) {
        c.w.array(2);
        c.w.bulkString(f);
        reply(c, v);
      }
      return;
    }
    c.w.array(withValues ? picked.length * 2 : picked.length);
    for (const [f, v] of picked) {
      c.w.bulkString(f);
      if (withValues) reply(c, v);
    }
    return;
  }
  const h = hashForRead(c, str(argv[1]!));
  if (h === null) return;
  if (h === undefined) return c.w.nil();
  const keys = [...h.map.keys()];
  c.w.bulkString(keys[randomIndex(keys.length)]!);
}

function hscan(c: Client, argv: Argv): void {
  const cursor = scanCursor(c, argv[2]!);
  if (cursor === null) return;
  const o = scanOptions(c, argv, 3, false);
  if (o === null) return;
  const h = hashForRead(c, str(argv[1]!));
  if (h === null) return;
  // Every field in one reply, cursor 0: what Redis does for a listpack hash, and within
  // SCAN's guarantees for a larger one (COUNT is a hint). See the README.
  const out: [string, Buffer][] = [];
  if (h !== undefined) for (const [f, v] of h.map) if (o.match === null || o.match(f)) out.push([f, v]);
  c.w.array(2);
  c.w.bulkString('0');
  c.w.array(out.length * 2);
  for (const [f, v] of out) {
    c.w.bulkString(f);
    reply(c, v);
  }
}

export const HASH_COMMANDS: Def[] = [
  ['hset', -4, ['write', 'denyoom', 'fast'], [1, 1, 1], hset],
  ['hmset', -4, ['write', 'denyoom', 'fast'], [1, 1, 1], hset],
  ['hsetnx', 4, ['write', 'denyoom', 'fast'], [1, 1, 1], hsetnx],
  ['hget', 3, ['readonly', 'fast'], [1, 1, 1], hget],
  ['hmget', -3, ['readonly', 'fast'], [1, 1, 1], hmget],
  ['hdel', -3, ['write', 'fast'], [1, 1, 1], hdel],
  ['hlen', 2, ['readonly', 'fast'], [1, 1, 1], hlen],
  ['hstrlen', 3, ['readonly', 'fast'], [1, 1, 1], hstrlen],
  ['hexists', 3, ['readonly', 'fast'], [1, 1, 1], hexists],
  ['hkeys', 2, ['readonly'], [1, 1, 1], hgetall(true, false)],
  ['hvals', 2, ['readonly'], [1, 1, 1], hgetall(false, true)],
  ['hgetall', 2, ['readonly'], [1, 1, 1], hgetall(true, true)],
  ['hincrby', 4, ['write', 'denyoom', 'fast'], [1, 1, 1], hincrby],
  ['hincrbyfloat', 4, ['write', 'denyoom', 'fast'], [1, 1, 1], hincrbyfloat],
  ['hrandfield', -2, ['readonly'], [1, 1, 1], hrandfield],
  ['hscan', -3, ['readonly'], [1, 1, 1], hscan],
];
