// The keyspace and expiry: db.c, expire.c and object.c of Redis 7.0.
import type { Client } from '../server.mjs';
import {
  HashValue,
  MAX_INT64,
  MIN_INT64,
  SetValue,
  T_HASH,
  T_LIST,
  T_SET,
  T_STRING,
  TYPE_NAMES,
  stringEncoding,
  type Entry,
} from '../store.mjs';
import { globMatcher, matchesEverything } from '../glob.mjs';
import { E, intArg, lower, str, upper, type Argv, type Def, type Impl } from './util.mjs';

function del(c: Client, argv: Argv): void {
  let n = 0;
  for (let i = 1; i < argv.length; i++) {
    const key = str(argv[i]!);
    if (c.store.get(key) !== undefined && c.store.delete(key)) n++;
  }
  c.w.int(n);
}

/** EXISTS and TOUCH: how many of the keys exist (a key named twice counts twice). */
function exists(c: Client, argv: Argv): void {
  let n = 0;
  for (let i = 1; i < argv.length; i++) if (c.store.get(str(argv[i]!)) !== undefined) n++;
  c.w.int(n);
}

function type(c: Client, argv: Argv): void {
  const e = c.store.get(str(argv[1]!));
  c.w.simple(e === undefined ? 'none' : TYPE_NAMES[e.type]);
}

function rename(nx: boolean): Impl {
  return (c, argv) => {
    const from = str(argv[1]!);
    const to = str(argv[2]!);
    const e = c.store.get(from);
    if (e === undefined) return c.w.error(E.noKey);
    if (from === to) return nx ? c.w.int(0) : c.w.ok();
    if (c.store.get(to) !== undefined && nx) return c.w.int(0);
    c.store.rename(e, to);
    if (nx) c.w.int(1);
    else c.w.ok();
  };
}

function copy(c: Client, argv: Argv): void {
  let replace = false;
  let db = 0n;
  for (let j = 3; j < argv.length; j++) {
    const opt = upper(argv[j]!);
    if (opt === 'REPLACE') replace = true;
    else if (opt === 'DB' && j + 1 < argv.length) {
      const n = intArg(c, argv[j + 1]!);
      if (n === undefined || n > 2147483647n || n < -2147483648n) {
        if (n !== undefined) c.w.error(E.notInt);
        return;
      }
      db = n;
      j++;
    } else return c.w.error(E.syntax);
  }
  // One database here: any other index is out of range (see the README).
  if (db !== 0n) return c.w.error('ERR DB index is out of range');
  const from = str(argv[1]!);
  const to = str(argv[2]!);
  if (from === to) return c.w.error('ERR source and destination objects are the same');
  const e = c.store.lookupRead(from);
  if (e === undefined) return c.w.int(0);
  if (c.store.get(to) !== undefined) {
    if (!replace) return c.w.int(0);
    c.store.delete(to);
  }
  c.store.copy(e, to);
  c.w.int(1);
}

function randomkey(c: Client): void {
  // A random live key: a few random draws, then any (the store samples its order array).
  const key = c.store.randomKey();
  if (key === undefined) c.w.nil();
  else c.w.bulkString(key);
}

const OBJECT_HELP = [
  'OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:',
  'ENCODING <key>',
  '    Return the kind of internal representation used in order to store the value',
  '    associated with a <key>.',
  'FREQ <key>',
  '    Return the access frequency index of the <key>. The returned integer is,',
  '    proportional to the logarithm of the recent access frequency of the key.',
  'IDLETIME <key>',
  '    Return the idle time of the <key>, that is the approximated number of',
  '    seconds elapsed since the last access to the key.',
  'REFCOUNT <key>',
  '    Return the number of references of the value associated with the specified',
  '    <key>.',
  'HELP',
  '    Prints this help.',
];

/** OBJECT's lookup: no LRU touch, no hit/miss count; null reply for a missing key. */
function objectLookup(c: Client, argv: Argv): Entry | undefined {
  const e = c.store.peek(str(argv[2]!));
  if (e === undefined) c.w.nil();
  return e;
}

export function encodingOf(e: Entry): string {
  switch (e.type) {
    case T_STRING:
      return stringEncoding(e);
    case T_HASH:
      return (e.value as HashValue).listpack ? 'listpack' : 'hashtable';
    case T_SET:
      return (e.value as SetValue).intset ? 'intset' : 'hashtable';
    case T_LIST:
      return 'quicklist';
  }
}

function objectEncoding(c: Client, argv: Argv): void {
  const e = objectLookup(c, argv);
  if (e !== undefined) c.w.bulkString(encodingOf(e));
}

function objectIdletime(c: Client, argv: Argv): void {
  const e = objectLookup(c, argv);
  if (e !== undefined) c.w.int(Math.floor((Date.now() - c.store.lastAccess(e)) / 1000));
}

function objectFreq(c: Client, argv: Argv): void {
  if (objectLookup(c, argv) === undefined) return;
  c.w.error(
    'ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.',
  );
}

function objectRefcount(c: Client, argv: Argv): void {
  const e = objectLookup(c, argv);
  if (e === undefined) return;
  // Redis shares the objects of the integers 0..9999 (without maxmemory): OBJ_SHARED_REFCOUNT.
  const v = e.value;
  const shared =
    e.type === T_STRING &&
    c.store.maxmemory === 0 &&
    stringEncoding(e) === 'int' &&
    /^[0-9]{1,4}$/.test(str(v as Buffer));
  c.w.int(shared ? 2147483647 : 1);
}

function objectHelp(c: Client): void {
  c.w.array(OBJECT_HELP.length);
  for (const line of OBJECT_HELP) c.w.simple(line);
}

/** Redis's parseExtendedExpireArgumentsOrReply, then expireGenericCommand. */
function expire(unit: 's' | 'ms', absolute: boolean, name: string): Impl {
  return (c, argv) => {
    let nx = false;
    let xx = false;
    let gt = false;
    let lt = false;
    for (let i = 3; i < argv.length; i++) {
      const o = upper(argv[i]!);
      if (o === 'NX') nx = true;
      else if (o === 'XX') xx = true;
      else if (o === 'GT') gt = true;
      else if (o === 'LT') lt = true;
      else return c.w.error(`ERR Unsupported option ${str(argv[i]!)}`);
    }
    if (nx && (xx || gt || lt)) return c.w.error('ERR NX and XX, GT or LT options at the same time are not compatible');
    if (gt && lt) return c.w.error('ERR GT and LT options at the same time are not compatible');
    let when = intArg(c, argv[2]!);
    if (when === undefined) return;
    if (unit === 's') {
      if (when > MAX_INT64 / 1000n || when < MIN_INT64 / 1000n) return c.w.error(E.expire(name));
      when *= 1000n;
    }
    const base = absolute ? 0n : BigInt(Date.now());
    if (when > MAX_INT64 - base) return c.w.error(E.expire(name));
    when += base;
    const key = str(argv[1]!);
    const e = c.store.get(key);
    if (e === undefined) return c.w.int(0);
    const at = Number(when);
    const cur = e.expireAt;
    // No TTL counts as an infinite one for GT and LT.
    if ((nx && cur !== 0) || (xx && cur === 0) || (gt && (cur === 0 || at <= cur)) || (lt && cur !== 0 && at >= cur)) {
      return c.w.int(0);
    }
    if (at <= Date.now()) {
      c.store.delete(key);
      c.store.stats.expiredKeys++;
    } else {
      c.store.setExpire(e, at);
    }
    c.w.int(1);
  };
}

/** TTL, PTTL, EXPIRETIME, PEXPIRETIME (Redis's ttlGenericCommand). */
function ttl(ms: boolean, absolute: boolean): Impl {
  return (c, argv) => {
    const e = c.store.get(str(argv[1]!));
    if (e === undefined) return c.w.int(-2);
    if (e.expireAt === 0) return c.w.int(-1);
    const t = Math.max(0, absolute ? e.expireAt : e.expireAt - Date.now());
    c.w.int(ms ? t : Math.floor((t + 500) / 1000));
  };
}

function persist(c: Client, argv: Argv): void {
  const e = c.store.get(str(argv[1]!));
  if (e === undefined || e.expireAt === 0) return c.w.int(0);
  c.store.setExpire(e, 0);
  c.w.int(1);
}

/** Work KEYS does per slice before it lets other clients in (Client.slices). */
const KEYS_SLICE_MS = 4;

function keys(c: Client, argv: Argv): void {
  // `*` lists every key, the empty one too, without matching (as Redis's keysCommand).
  const match = matchesEverything(argv[1]!) ? null : globMatcher(argv[1]!);
  const now = Date.now();
  // The reply is built as strings of up to 4096 bulks, each copied into a Buffer once
  // (keys are latin1, so a key's length is its byte length) and handed to the writer by
  // reference at the end: a buffer write per bulk took ~4x as long for 1M keys (busy
  // machine). Over a large key space KEYS runs in slices of a few milliseconds, so other
  // clients are not kept waiting for all of it (redis-server runs it in one go); a Map
  // iterator stays valid across them, visiting keys added meanwhile and skipping those
  // deleted, as SCAN would.
  const entries = c.store.map.values();
  let count = 0;
  let piece = '';
  let inPiece = 0;
  const pieces: Buffer[] = [];
  c.slices('keys', () => {
    const deadline = performance.now() + KEYS_SLICE_MS;
    let n = 0;
    for (const e of entries) {
      if ((e.expireAt === 0 || e.expireAt > now) && (match === null || match(e.key))) {
        piece += `$${e.key.length}\r\n${e.key}\r\n`;
        count++;
        if (++inPiece === 4096) {
          pieces.push(Buffer.from(piece, 'latin1'));
          piece = '';
          inPiece = 0;
        }
      }
      if ((++n & 1023) === 0 && performance.now() > deadline) return false;
    }
    c.w.array(count);
    for (const p of pieces) c.w.raw(p);
    c.w.ascii(piece);
    return true;
  });
}

/** SCAN, HSCAN and SSCAN options (Redis's scanGenericCommand); null after the error reply. */
export function scanOptions(
  c: Client,
  argv: Argv,
  from: number,
  allowType: boolean,
): { count: number; match: ((s: string) => boolean) | null; type: string | null } | null {
  let count = 10;
  let match: ((s: string) => boolean) | null = null;
  let type: string | null = null;
  for (let i = from; i < argv.length; i += 2) {
    const o = upper(argv[i]!);
    const more = argv.length - i >= 2;
    if (o === 'COUNT' && more) {
      const n = intArg(c, argv[i + 1]!);
      if (n === undefined) return null;
      if (n < 1n) {
        c.w.error(E.syntax);
        return null;
      }
      count = n > 1000000n ? 1000000 : Number(n);
    } else if (o === 'MATCH' && more) {
      const p = argv[i + 1]!;
      match = matchesEverything(p) ? null : globMatcher(p);
    } else if (o === 'TYPE' && allowType && more) type = lower(argv[i + 1]!);
    else {
      c.w.error(E.syntax);
      return null;
    }
  }
  return { count, match, type };
}

/**
 * Redis's parseScanCursorOrReply: strtoul, so a leading '+' or '-' is accepted ('-1' is
 * 2^64-1, past every cursor); null after the error reply.
 */
export function scanCursor(c: Client, b: Buffer): number | null {
  const s = str(b);
  const m = /^([+-]?)([0-9]+)$/.exec(s);
  if (m === null || BigInt(m[2]!) >= 2n ** 64n) {
    c.w.error('ERR invalid cursor');
    return null;
  }
  if (m[1] === '-' && BigInt(m[2]!) !== 0n) return Number.MAX_SAFE_INTEGER;
  const n = BigInt(m[2]!);
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n);
}

function scan(c: Client, argv: Argv): void {
  const cursor = scanCursor(c, argv[1]!);
  if (cursor === null) return;
  const o = scanOptions(c, argv, 2, true);
  if (o === null) return;
  const r = c.store.scan(cursor, o.count, o.match);
  let out = r.keys;
  if (o.type !== null) {
    const want = o.type;
    out = out.filter((k) => {
      const e = c.store.map.get(k);
      return e !== undefined && TYPE_NAMES[e.type] === want;
    });
  }
  c.w.array(2);
  c.w.bulkString(String(r.next));
  c.w.array(out.length);
  for (const k of out) c.w.bulkString(k);
}

function flushall(c: Client, argv: Argv): void {
  if (argv.length > 2 || (argv.length === 2 && !['ASYNC', 'SYNC'].includes(upper(argv[1]!))))
    return c.w.error(E.syntax);
  c.store.flush();
  c.w.ok();
}

export const KEYSPACE_COMMANDS: Def[] = [
  ['del', -2, ['write'], [1, -1, 1], del],
  ['unlink', -2, ['write', 'fast'], [1, -1, 1], del],
  ['exists', -2, ['readonly', 'fast'], [1, -1, 1], exists],
  ['touch', -2, ['readonly', 'fast'], [1, -1, 1], exists],
  ['type', 2, ['readonly', 'fast'], [1, 1, 1], type],
  ['rename', 3, ['write'], [1, 2, 1], rename(false)],
  ['renamenx', 3, ['write', 'fast'], [1, 2, 1], rename(true)],
  ['copy', -3, ['write', 'denyoom'], [1, 2, 1], copy],
  ['randomkey', 1, ['readonly'], [0, 0, 0], randomkey],
  [
    'object',
    -2,
    [],
    [0, 0, 0],
    null,
    [
      ['encoding', 3, ['readonly'], [2, 2, 1], objectEncoding],
      ['freq', 3, ['readonly'], [2, 2, 1], objectFreq],
      ['idletime', 3, ['readonly'], [2, 2, 1], objectIdletime],
      ['refcount', 3, ['readonly'], [2, 2, 1], objectRefcount],
      ['help', 2, ['loading', 'stale'], [0, 0, 0], objectHelp],
    ],
  ],
  ['expire', -3, ['write', 'fast'], [1, 1, 1], expire('s', false, 'expire')],
  ['pexpire', -3, ['write', 'fast'], [1, 1, 1], expire('ms', false, 'pexpire')],
  ['expireat', -3, ['write', 'fast'], [1, 1, 1], expire('s', true, 'expireat')],
  ['pexpireat', -3, ['write', 'fast'], [1, 1, 1], expire('ms', true, 'pexpireat')],
  ['ttl', 2, ['readonly', 'fast'], [1, 1, 1], ttl(false, false)],
  ['pttl', 2, ['readonly', 'fast'], [1, 1, 1], ttl(true, false)],
  ['expiretime', 2, ['readonly', 'fast'], [1, 1, 1], ttl(false, true)],
  ['pexpiretime', 2, ['readonly', 'fast'], [1, 1, 1], ttl(true, true)],
  ['persist', 2, ['write', 'fast'], [1, 1, 1], persist],
  ['dbsize', 1, ['readonly', 'fast'], [0, 0, 0], (c) => c.w.int(c.store.size)],
  ['keys', 2, ['readonly'], [0, 0, 0], keys],
  ['scan', -2, ['readonly'], [0, 0, 0], scan],
  ['flushall', -1, ['write'], [0, 0, 0], flushall],
  ['flushdb', -1, ['write'], [0, 0, 0], flushall],
];
