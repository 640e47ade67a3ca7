// Sets: t_set.c of Redis 7.0. Members are latin1 strings; `intset` follows Redis's
// encoding rules, and an intset lists its members in numeric order, as Redis's does.
import type { Client } from '../server.mjs';
import { SET_MAX_INTSET_ENTRIES, SetValue, T_SET, isIntsetMember, type LiveEntry } from '../store.mjs';
import { scanCursor, scanOptions } from './keyspace.mjs';
import { E, intArg, lookup, parseInt64, randomIndex, str, type Argv, type Def, type Impl } from './util.mjs';

const LONG_MAX = 9223372036854775807n;

/** Adds a member (Redis's setTypeAdd): a non-integer member or too many turn an intset into a hashtable for good. */
function add(c: Client, s: SetValue, m: string): number {
  if (s.set.has(m)) return 0;
  if (s.intset && !isIntsetMember(m)) s.intset = false;
  s.set.add(m);
  if (s.intset && s.set.size > SET_MAX_INTSET_ENTRIES) s.intset = false;
  return c.store.memberCost(m);
}

/** A new set whose encoding starts from its first member, as Redis's setTypeCreate. */
function create(c: Client, key: string, first: string): LiveEntry {
  const e = c.store.create(key, T_SET);
  (e.value as SetValue).intset = isIntsetMember(first);
  return e;
}

/** Members in the order Redis would list them: numeric for an intset, else insertion order (Redis: its hash order). */
function members(s: SetValue): string[] {
  const out = [...s.set];
  if (s.intset) out.sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0));
  return out;
}

function sadd(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  let e = lookup(c, key, T_SET);
  if (e === null) return;
  if (e === undefined) e = create(c, key, str(argv[2]!));
  const s = e.value as SetValue;
  let added = 0;
  let delta = 0;
  for (let i = 2; i < argv.length; i++) {
    const d = add(c, s, str(argv[i]!));
    if (d > 0) added++;
    delta += d;
  }
  c.store.changed(e, delta);
  c.w.int(added);
}

function srem(c: Client, argv: Argv): void {
  const e = lookup(c, str(argv[1]!), T_SET);
  if (e === null) return;
  if (e === undefined) return c.w.int(0);
  const s = e.value as SetValue;
  let n = 0;
  let delta = 0;
  for (let i = 2; i < argv.length; i++) {
    const m = str(argv[i]!);
    if (!s.set.delete(m)) continue;
    n++;
    delta -= c.store.memberCost(m);
  }
  if (n > 0) c.store.changed(e, delta);
  c.w.int(n);
}

function setForRead(c: Client, key: string): SetValue | undefined | null {
  const e = lookup(c, key, T_SET, true);
  return e == null ? e : (e.value as SetValue);
}

function scard(c: Client, argv: Argv): void {
  const s = setForRead(c, str(argv[1]!));
  if (s !== null) c.w.int(s?.set.size ?? 0);
}

function sismember(c: Client, argv: Argv): void {
  const s = setForRead(c, str(argv[1]!));
  if (s !== null) c.w.int(s?.set.has(str(argv[2]!)) ? 1 : 0);
}

function smismember(c: Client, argv: Argv): void {
  const s = setForRead(c, str(argv[1]!));
  if (s === null) return;
  c.w.array(argv.length - 2);
  for (let i = 2; i < argv.length; i++) c.w.int(s?.set.has(str(argv[i]!)) ? 1 : 0);
}

function replySet(c: Client, ms: string[]): void {
  c.w.set(ms.length);
  for (const m of ms) c.w.bulkString(m);
}

function smove(c: Client, argv: Argv): void {
  const src = str(argv[1]!);
  const dst = str(argv[2]!);
  const m = str(argv[3]!);
  const se = c.store.get(src);
  const de = c.store.get(dst);
  if (se === undefined) return c.w.int(0);
  if (se.type !== T_SET || (de !== undefined && de.type !== T_SET)) return c.w.error(E.wrongType);
  const s = se.value as SetValue;
  if (se === de) return c.w.int(s.set.has(m) ? 1 : 0);
  if (!s.set.delete(m)) return c.w.int(0);
  const cost = c.store.memberCost(m);
  c.store.changed(se, -cost);
  const d = de ?? create(c, dst, m);
  c.store.changed(d, add(c, d.value as SetValue, m));
  c.w.int(1);
}

/**
 * SRANDMEMBER with a count (Redis's srandmemberWithCountCommand): negative, |count|
 * draws with repeats; at least the set's size, the whole set; else distinct members.
 */
function srandmember(c: Client, argv: Argv): void {
  if (argv.length > 3) return c.w.error(E.syntax);
  if (argv.length === 3) {
    const l = intArg(c, argv[2]!);
    if (l === undefined) return;
    if (l < -LONG_MAX) {
      return c.w.error(`ERR value is out of range, value must between ${-LONG_MAX} and ${LONG_MAX}`);
    }
    const s = setForRead(c, str(argv[1]!));
    if (s === null) return;
    if (s === undefined || l === 0n) return c.w.array(0);
    const all = members(s);
    if (l < 0n) {
      const n = Number(-l > 10_000_000n ? 10_000_000n : -l);
      c.w.array(n);
      for (let i = 0; i < n; i++) c.w.bulkString(all[randomIndex(all.length)]!);
      return;
    }
    if (l >= BigInt(all.length)) {
      c.w.array(all.length);
      for (const m of all) c.w.bulkString(m);
      return;
    }
    const chosen = new Set<number>();
    while (chosen.size < Number(l)) chosen.add(randomIndex(all.length));
    const out = all.filter((_, i) => chosen.has(i));
    c.w.array(out.length);
    for (const m of out) c.w.bulkString(m);
    return;
  }
  const s = setForRead(c, str(argv[1]!));
  if (s === null) return;
  if (s === undefined) return c.w.nil();
  const all = [...s.set];
  c.w.bulkString(all[randomIndex(all.length)]!);
}

function spop(c: Client, argv: Argv): void {
  if (argv.length > 3) return c.w.error(E.syntax);
  let count = -1;
  if (argv.length === 3) {
    const n = intArg(c, argv[2]!, E.positive);
    if (n === undefined) return;
    if (n < 0n) return c.w.error(E.positive);
    count = n > 1n << 40n ? 2 ** 40 : Number(n);
  }
  const e = lookup(c, str(argv[1]!), T_SET);
  if (e === null) return;
  if (e === undefined) return count === -1 ? c.w.nil() : c.w.set(0);
  if (count === 0) return c.w.set(0);
  const s = e.value as SetValue;
  const all = count === -1 ? [...s.set] : members(s);
  let out: string[];
  if (count === -1) out = [all[randomIndex(all.length)]!];
  else if (count >= all.length) out = all;
  else {
    const chosen = new Set<number>();
    while (chosen.size < count) chosen.add(randomIndex(all.length));
    out = all.filter((_, i) => chosen.has(i));
  }
  let delta = 0;
  for (const m of out) {
    s.set.delete(m);
    delta -= c.store.memberCost(m);
  }
  if (count === -1) c.w.bulkString(out[0]!);
  else replySet(c, out);
  c.store.changed(e, delta);
}

/** The sets named by argv[from..to): null after WRONGTYPE; missing keys are undefined (empty sets). */
function setsOf(c: Client, argv: Argv, from: number, to: number): (SetValue | undefined)[] | null {
  const out: (SetValue | undefined)[] = [];
  for (let i = from; i < to; i++) {
    const e = c.store.lookupRead(str(argv[i]!));
    if (e !== undefined && e.type !== T_SET) {
      c.w.error(E.wrongType);
      return null;
    }
    out.push(e === undefined ? undefined : (e.value as SetValue));
  }
  return out;
}

function intersect(sets: (SetValue | undefined)[], limit = 0): string[] {
  if (sets.some((s) => s === undefined)) return [];
  const sorted = (sets as SetValue[]).slice().sort((a, b) => a.set.size - b.set.size);
  const out: string[] = [];
  for (const m of members(sorted[0]!)) {
    if (sorted.every((s) => s.set.has(m))) {
      out.push(m);
      if (limit !== 0 && out.length >= limit) break;
    }
  }
  return out;
}

function union(sets: (SetValue | undefined)[]): string[] {
  const out = new Set<string>();
  for (const s of sets) if (s !== undefined) for (const m of s.set) out.add(m);
  return [...out];
}

function diff(sets: (SetValue | undefined)[]): string[] {
  const first = sets[0];
  if (first === undefined) return [];
  return [...first.set].filter((m) => !sets.slice(1).some((s) => s !== undefined && s.set.has(m)));
}

/** The members as Redis would list a new set of them (an intset sorts them). */
function asNewSet(ms: string[]): string[] {
  const s = new SetValue();
  for (const m of ms) {
    if (s.intset && !isIntsetMember(m)) s.intset = false;
    s.set.add(m);
  }
  if (s.set.size > SET_MAX_INTSET_ENTRIES) s.intset = false;
  return members(s);
}

/** Stores `ms` as a new set at dst (SINTERSTORE and co.), replacing what was there; replies with its size. */
function storeSet(c: Client, dst: string, ms: string[]): void {
  c.store.delete(dst);
  if (ms.length > 0) {
    const e = c.store.create(dst, T_SET);
    const s = e.value as SetValue;
    let delta = 0;
    for (const m of ms) delta += add(c, s, m);
    c.store.changed(e, delta);
  }
  c.w.int(ms.length);
}

function setOp(op: (sets: (SetValue | undefined)[]) => string[], store: boolean): Impl {
  return (c, argv) => {
    const from = store ? 2 : 1;
    const sets = setsOf(c, argv, from, argv.length);
    if (sets === null) return;
    const out = op(sets);
    if (store) storeSet(c, str(argv[1]!), out);
    else replySet(c, op === intersect ? out : asNewSet(out));
  };
}

function sintercard(c: Client, argv: Argv): void {
  const numkeys = parseInt64(argv[1]!);
  if (numkeys === undefined || numkeys < 1n) return c.w.error('ERR numkeys should be greater than 0');
  if (numkeys > BigInt(argv.length - 2)) return c.w.error("ERR Number of keys can't be greater than number of args");
  const n = Number(numkeys);
  let limit = 0;
  for (let i = 2 + n; i < argv.length; i++) {
    const more = argv.length - 1 - i > 0;
    if (str(argv[i]!).toUpperCase() === 'LIMIT' && more) {
      const l = intArg(c, argv[++i]!, "ERR LIMIT can't be negative");
      if (l === undefined) return;
      if (l < 0n) return c.w.error("ERR LIMIT can't be negative");
      limit = l > 1n << 40n ? 2 ** 40 : Number(l);
    } else return c.w.error(E.syntax);
  }
  const sets = setsOf(c, argv, 2, 2 + n);
  if (sets === null) return;
  c.w.int(intersect(sets, limit).length);
}

function smembers(c: Client, argv: Argv): void {
  const s = setForRead(c, str(argv[1]!));
  if (s === null) return;
  replySet(c, s === undefined ? [] : members(s));
}

function sscan(c: Client, argv: Argv): void {
  const cursor = scanCursor(c, argv[2]!);
  if (cursor === null) return;
  const o = scanOptions(c, argv, 3, false);
  if (o === null) return;
  const s = setForRead(c, str(argv[1]!));
  if (s === null) return;
  // Every member in one reply, cursor 0 (see HSCAN).
  const out = s === undefined ? [] : members(s).filter((m) => o.match === null || o.match(m));
  c.w.array(2);
  c.w.bulkString('0');
  c.w.array(out.length);
  for (const m of out) c.w.bulkString(m);
}

export const SET_COMMANDS: Def[] = [
  ['sadd', -3, ['write', 'denyoom', 'fast'], [1, 1, 1], sadd],
  ['srem', -3, ['write', 'fast'], [1, 1, 1], srem],
  ['scard', 2, ['readonly', 'fast'], [1, 1, 1], scard],
  ['sismember', 3, ['readonly', 'fast'], [1, 1, 1], sismember],
  ['smismember', -3, ['readonly', 'fast'], [1, 1, 1], smismember],
  ['smembers', 2, ['readonly'], [1, 1, 1], smembers],
  ['srandmember', -2, ['readonly'], [1, 1, 1], srandmember],
  ['spop', -2, ['write', 'fast'], [1, 1, 1], spop],
  ['smove', 4, ['write', 'fast'], [1, 2, 1], smove],
  ['sinter', -2, ['readonly'], [1, -1, 1], setOp(intersect, false)],
  ['sintercard', -3, ['readonly'], [0, 0, 0], sintercard],
  ['sinterstore', -3, ['write', 'denyoom'], [1, -1, 1], setOp(intersect, true)],
  ['sunion', -2, ['readonly'], [1, -1, 1], setOp(union, false)],
  ['sunionstore', -3, ['write', 'denyoom'], [1, -1, 1], setOp(union, true)],
  ['sdiff', -2, ['readonly'], [1, -1, 1], setOp(diff, false)],
  ['sdiffstore', -3, ['write', 'denyoom'], [1, -1, 1], setOp(diff, true)],
  ['sscan', -3, ['readonly'], [1, 1, 1], sscan],
];
