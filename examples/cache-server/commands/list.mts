// Lists: t_list.c of Redis 7.0 (no blocking pops). Elements are Buffers, in the Arena from
// the threshold on.
import type { Client } from '../server.mjs';
import { ListValue, T_LIST, type LiveEntry } from '../store.mjs';
import { E, intArg, lookup, parseInt64, str, upper, type Argv, type Def, type Impl } from './util.mjs';

const LONG_MAX = 9223372036854775807n;

function reply(c: Client, b: Buffer): void {
  c.w.bulk(b, c.store.inArena(b));
}

/** Pushes elements at the head or tail of the list in `e`; returns the cost delta. */
function push(c: Client, l: ListValue, args: Buffer[], from: number, head: boolean): number {
  let delta = 0;
  for (let i = from; i < args.length; i++) {
    const b = c.store.element(args[i]!);
    delta += c.store.elementCost(b);
    if (head) l.unshift(b);
    else l.push(b);
  }
  return delta;
}

function pushCommand(head: boolean, onlyIfExists: boolean): Impl {
  return (c, argv) => {
    const key = str(argv[1]!);
    let e = lookup(c, key, T_LIST);
    if (e === null) return;
    if (e === undefined) {
      if (onlyIfExists) return c.w.int(0);
      e = c.store.create(key, T_LIST);
    }
    const l = e.value as ListValue;
    c.store.changed(e, push(c, l, argv, 2, head));
    c.w.int(l.length);
  };
}

/** Pops one element; the caller settles the cost and the empty key (changed()). */
function popOne(c: Client, l: ListValue, head: boolean): [Buffer, number] {
  const b = head ? l.shift() : l.pop();
  return [b, -c.store.elementCost(b)];
}

function popCommand(head: boolean): Impl {
  return (c, argv) => {
    if (argv.length > 3) return c.w.error(E.arity(str(argv[0]!).toLowerCase()));
    let count = -1;
    if (argv.length === 3) {
      const n = intArg(c, argv[2]!, E.positive);
      if (n === undefined) return;
      if (n < 0n) return c.w.error(E.positive);
      count = n > 1n << 40n ? 2 ** 40 : Number(n);
    }
    const e = lookup(c, str(argv[1]!), T_LIST);
    if (e === null) return;
    if (e === undefined) return count === -1 ? c.w.nil() : c.w.nilArray();
    if (count === 0) return c.w.array(0);
    const l = e.value as ListValue;
    const popped: Buffer[] = [];
    let delta = 0;
    for (let i = 0; i < (count === -1 ? 1 : count) && l.length > 0; i++) {
      const [b, d] = popOne(c, l, head);
      popped.push(b);
      delta += d;
    }
    // Reply before the elements go back: the writer pins large ones (see Writer).
    if (count === -1) reply(c, popped[0]!);
    else {
      c.w.array(popped.length);
      for (const b of popped) reply(c, b);
    }
    for (const b of popped) c.store.freeElement(b);
    c.store.changed(e, delta);
  };
}

function listForRead(c: Client, key: string): ListValue | undefined | null {
  const e = lookup(c, key, T_LIST, true);
  return e == null ? e : (e.value as ListValue);
}

function llen(c: Client, argv: Argv): void {
  const l = listForRead(c, str(argv[1]!));
  if (l !== null) c.w.int(l?.length ?? 0);
}

/** A C long argument as a Number (list indexes: anything past ±2^53 is out of every range anyway). */
function longArg(c: Client, b: Buffer): number | undefined {
  const n = intArg(c, b);
  if (n === undefined) return undefined;
  return n > 1n << 53n ? 2 ** 53 : n < -(1n << 53n) ? -(2 ** 53) : Number(n);
}

function lrange(c: Client, argv: Argv): void {
  let start = longArg(c, argv[2]!);
  if (start === undefined) return;
  let end = longArg(c, argv[3]!);
  if (end === undefined) return;
  const l = listForRead(c, str(argv[1]!));
  if (l === null) return;
  if (l === undefined) return c.w.array(0);
  const len = l.length;
  if (start < 0) start = len + start;
  if (end < 0) end = len + end;
  if (start < 0) start = 0;
  if (start > end || start >= len) return c.w.array(0);
  if (end >= len) end = len - 1;
  c.w.array(end - start + 1);
  for (let i = start; i <= end; i++) reply(c, l.at(i));
}

function lindex(c: Client, argv: Argv): void {
  const l = listForRead(c, str(argv[1]!));
  if (l === null) return;
  if (l === undefined) return c.w.nil();
  let i = longArg(c, argv[2]!);
  if (i === undefined) return;
  if (i < 0) i += l.length;
  if (i < 0 || i >= l.length) return c.w.nil();
  reply(c, l.at(i));
}

function lset(c: Client, argv: Argv): void {
  const e = lookup(c, str(argv[1]!), T_LIST);
  if (e === null) return;
  if (e === undefined) return c.w.error(E.noKey);
  let i = longArg(c, argv[2]!);
  if (i === undefined) return;
  const l = e.value as ListValue;
  if (i < 0) i += l.length;
  if (i < 0 || i >= l.length) return c.w.error('ERR index out of range');
  const old = l.at(i);
  const b = c.store.element(argv[3]!);
  l.setAt(i, b);
  const delta = c.store.elementCost(b) - c.store.elementCost(old);
  c.store.freeElement(old);
  c.store.changed(e, delta);
  c.w.ok();
}

function linsert(c: Client, argv: Argv): void {
  const where = upper(argv[2]!);
  if (where !== 'BEFORE' && where !== 'AFTER') return c.w.error(E.syntax);
  const e = lookup(c, str(argv[1]!), T_LIST);
  if (e === null) return;
  if (e === undefined) return c.w.int(0);
  const l = e.value as ListValue;
  const pivot = argv[3]!;
  for (let i = 0; i < l.length; i++) {
    if (!l.at(i).equals(pivot)) continue;
    const items = l.toArray(0, l.length);
    const b = c.store.element(argv[4]!);
    items.splice(where === 'AFTER' ? i + 1 : i, 0, b);
    l.replace(items);
    c.store.changed(e, c.store.elementCost(b));
    return c.w.int(l.length);
  }
  c.w.int(-1);
}

function lrem(c: Client, argv: Argv): void {
  const n = longArg(c, argv[2]!);
  if (n === undefined) return;
  const e = lookup(c, str(argv[1]!), T_LIST);
  if (e === null) return;
  if (e === undefined) return c.w.int(0);
  const l = e.value as ListValue;
  const target = argv[3]!;
  const items = l.toArray(0, l.length);
  const limit = n === 0 ? Infinity : Math.abs(n);
  let removed = 0;
  let delta = 0;
  const keep = new Array<boolean>(items.length).fill(true);
  for (let k = 0; k < items.length && removed < limit; k++) {
    const i = n < 0 ? items.length - 1 - k : k;
    if (!items[i]!.equals(target)) continue;
    keep[i] = false;
    removed++;
  }
  if (removed === 0) return c.w.int(0);
  const kept: Buffer[] = [];
  for (let i = 0; i < items.length; i++) {
    if (keep[i]) kept.push(items[i]!);
    else {
      delta -= c.store.elementCost(items[i]!);
      c.store.freeElement(items[i]!);
    }
  }
  l.replace(kept);
  c.store.changed(e, delta);
  c.w.int(removed);
}

function ltrim(c: Client, argv: Argv): void {
  let start = longArg(c, argv[2]!);
  if (start === undefined) return;
  let end = longArg(c, argv[3]!);
  if (end === undefined) return;
  const e = lookup(c, str(argv[1]!), T_LIST);
  if (e === null) return;
  if (e === undefined) return c.w.ok();
  const l = e.value as ListValue;
  const len = l.length;
  if (start < 0) start = len + start;
  if (end < 0) end = len + end;
  if (start < 0) start = 0;
  let from: number;
  let to: number;
  if (start > end || start >= len) {
    from = len;
    to = len;
  } else {
    if (end >= len) end = len - 1;
    from = start;
    to = end + 1;
  }
  if (from === 0 && to === len) {
    // Nothing trimmed, but Redis still counts it as a write of the key (WATCH sees it).
    c.store.changed(e, 0);
    return c.w.ok();
  }
  const items = l.toArray(0, len);
  let delta = 0;
  for (let i = 0; i < len; i++) {
    if (i >= from && i < to) continue;
    delta -= c.store.elementCost(items[i]!);
    c.store.freeElement(items[i]!);
  }
  l.replace(items.slice(from, to));
  c.store.changed(e, delta);
  c.w.ok();
}

function lpos(c: Client, argv: Argv): void {
  let rank = 1n;
  let count = -1;
  let maxlen = 0;
  for (let j = 3; j < argv.length; j++) {
    const opt = upper(argv[j]!);
    const more = argv.length - 1 - j > 0;
    if (opt === 'RANK' && more) {
      const r = intArg(c, argv[++j]!);
      if (r === undefined) return;
      if (r === 0n) {
        return c.w.error(
          "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
        );
      }
      rank = r;
    } else if (opt === 'COUNT' && more) {
      const n = intArg(c, argv[++j]!, "ERR COUNT can't be negative");
      if (n === undefined) return;
      if (n < 0n) return c.w.error("ERR COUNT can't be negative");
      count = n > 1n << 40n ? 2 ** 40 : Number(n);
    } else if (opt === 'MAXLEN' && more) {
      const n = intArg(c, argv[++j]!, "ERR MAXLEN can't be negative");
      if (n === undefined) return;
      if (n < 0n) return c.w.error("ERR MAXLEN can't be negative");
      maxlen = n > 1n << 40n ? 2 ** 40 : Number(n);
    } else return c.w.error(E.syntax);
  }
  const fromTail = rank < 0n;
  // Redis negates LONG_MIN to itself, which every match count passes: the first match.
  const skip = rank === -LONG_MAX - 1n ? 1n : fromTail ? -rank : rank;
  const l = listForRead(c, str(argv[1]!));
  if (l === null) return;
  if (l === undefined) return count === -1 ? c.w.nil() : c.w.array(0);
  const target = argv[2]!;
  const found: number[] = [];
  let matches = 0n;
  for (let k = 0; k < l.length && (maxlen === 0 || k < maxlen); k++) {
    const i = fromTail ? l.length - 1 - k : k;
    if (!l.at(i).equals(target)) continue;
    matches++;
    if (matches >= skip) {
      found.push(i);
      if (count !== 0 && found.length >= (count === -1 ? 1 : count)) break;
    }
  }
  if (count === -1) {
    if (found.length === 0) c.w.nil();
    else c.w.int(found[0]!);
    return;
  }
  c.w.array(found.length);
  for (const i of found) c.w.int(i);
}

/** LEFT or RIGHT (Redis's getListPositionFromObjectOrReply); undefined after the error. */
function where(c: Client, b: Buffer): boolean | undefined {
  const w = upper(b);
  if (w === 'LEFT') return true;
  if (w === 'RIGHT') return false;
  c.w.error(E.syntax);
  return undefined;
}

function lmoveGeneric(c: Client, src: string, dst: string, fromHead: boolean, toHead: boolean): void {
  const s = lookup(c, src, T_LIST);
  if (s === null) return;
  if (s === undefined) return c.w.nil();
  let d: LiveEntry | undefined | null = lookup(c, dst, T_LIST);
  if (d === null) return;
  const sl = s.value as ListValue;
  const b = fromHead ? sl.shift() : sl.pop();
  const cost = c.store.elementCost(b);
  if (d === undefined) d = c.store.create(dst, T_LIST);
  const dl = d.value as ListValue;
  if (toHead) dl.unshift(b);
  else dl.push(b);
  if (d !== s) {
    c.store.changed(d, cost);
    c.store.changed(s, -cost);
  } else c.store.changed(s, 0);
  reply(c, b);
}

function lmove(c: Client, argv: Argv): void {
  const from = where(c, argv[3]!);
  if (from === undefined) return;
  const to = where(c, argv[4]!);
  if (to === undefined) return;
  lmoveGeneric(c, str(argv[1]!), str(argv[2]!), from, to);
}

function rpoplpush(c: Client, argv: Argv): void {
  lmoveGeneric(c, str(argv[1]!), str(argv[2]!), false, true);
}

function lmpop(c: Client, argv: Argv): void {
  const numkeys = parseInt64(argv[1]!);
  if (numkeys === undefined || numkeys < 1n) return c.w.error('ERR numkeys should be greater than 0');
  const whereIdx = 2n + numkeys;
  if (whereIdx >= BigInt(argv.length)) return c.w.error(E.syntax);
  const wi = Number(whereIdx);
  const head = where(c, argv[wi]!);
  if (head === undefined) return;
  let count = -1;
  for (let j = wi + 1; j < argv.length; j++) {
    const opt = upper(argv[j]!);
    const more = argv.length - 1 - j > 0;
    if (count === -1 && opt === 'COUNT' && more) {
      const n = parseInt64(argv[++j]!);
      if (n === undefined || n < 1n) return c.w.error('ERR count should be greater than 0');
      count = n > 1n << 40n ? 2 ** 40 : Number(n);
    } else return c.w.error(E.syntax);
  }
  if (count === -1) count = 1;
  for (let k = 2; k < wi; k++) {
    const key = str(argv[k]!);
    const e = lookup(c, key, T_LIST);
    if (e === null) return;
    if (e === undefined) continue;
    const l = e.value as ListValue;
    const popped: Buffer[] = [];
    let delta = 0;
    while (popped.length < count && l.length > 0) {
      const [b, d] = popOne(c, l, head);
      popped.push(b);
      delta += d;
    }
    c.w.array(2);
    c.w.bulkString(key);
    c.w.array(popped.length);
    for (const b of popped) reply(c, b);
    for (const b of popped) c.store.freeElement(b);
    c.store.changed(e, delta);
    return;
  }
  c.w.nilArray();
}

export const LIST_COMMANDS: Def[] = [
  ['lpush', -3, ['write', 'denyoom', 'fast'], [1, 1, 1], pushCommand(true, false)],
  ['rpush', -3, ['write', 'denyoom', 'fast'], [1, 1, 1], pushCommand(false, false)],
  ['lpushx', -3, ['write', 'denyoom', 'fast'], [1, 1, 1], pushCommand(true, true)],
  ['rpushx', -3, ['write', 'denyoom', 'fast'], [1, 1, 1], pushCommand(false, true)],
  ['lpop', -2, ['write', 'fast'], [1, 1, 1], popCommand(true)],
  ['rpop', -2, ['write', 'fast'], [1, 1, 1], popCommand(false)],
  ['llen', 2, ['readonly', 'fast'], [1, 1, 1], llen],
  ['lrange', 4, ['readonly'], [1, 1, 1], lrange],
  ['lindex', 3, ['readonly'], [1, 1, 1], lindex],
  ['lset', 4, ['write', 'denyoom'], [1, 1, 1], lset],
  ['linsert', 5, ['write', 'denyoom'], [1, 1, 1], linsert],
  ['lrem', 4, ['write'], [1, 1, 1], lrem],
  ['ltrim', 4, ['write'], [1, 1, 1], ltrim],
  ['lpos', -3, ['readonly'], [1, 1, 1], lpos],
  ['lmove', 5, ['write', 'denyoom'], [1, 2, 1], lmove],
  ['rpoplpush', 3, ['write', 'denyoom'], [1, 2, 1], rpoplpush],
  ['lmpop', -4, ['write'], [0, 0, 0], lmpop],
];
