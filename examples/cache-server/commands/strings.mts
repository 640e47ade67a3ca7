// Strings: t_string.c of Redis 7.0, argument order and error texts included.
import type { Client } from '../server.mjs';
import { ENC_NOINT, ENC_RAW, MAX_INT64, MIN_INT64, type Entry } from '../store.mjs';
import { addLongDouble, formatLongDouble, isInfinite, parseLongDouble } from './longdouble.mjs';
import { E, intArg, lookupString, parseInt64, str, upper, type Argv, type Def, type Impl } from './util.mjs';

/** What parseExtendedStringArguments found; `expire` is the raw argument of EX/PX/EXAT/PXAT. */
interface SetOptions {
  nx: boolean;
  xx: boolean;
  get: boolean;
  keepTtl: boolean;
  persist: boolean;
  unit: 'EX' | 'PX' | 'EXAT' | 'PXAT' | null;
  expire: Buffer | null;
}

/** Redis's parseExtendedStringArgumentsOrReply for SET (`forSet`) and GETEX; null after the error reply. */
function parseSetOptions(c: Client, argv: Argv, from: number, forSet: boolean): SetOptions | null {
  const o: SetOptions = { nx: false, xx: false, get: false, keepTtl: false, persist: false, unit: null, expire: null };
  const timed = (): boolean => o.unit !== null;
  for (let j = from; j < argv.length; j++) {
    const opt = upper(argv[j]!);
    const hasNext = j + 1 < argv.length;
    if (opt === 'NX' && !o.xx && forSet) o.nx = true;
    else if (opt === 'XX' && !o.nx && forSet) o.xx = true;
    else if (opt === 'GET' && forSet) o.get = true;
    else if (opt === 'KEEPTTL' && !o.persist && !timed() && forSet) o.keepTtl = true;
    else if (opt === 'PERSIST' && !forSet && !timed() && !o.keepTtl) o.persist = true;
    else if (
      (opt === 'EX' || opt === 'PX' || opt === 'EXAT' || opt === 'PXAT') &&
      !o.keepTtl &&
      !o.persist &&
      (o.unit === null || o.unit === opt) &&
      hasNext
    ) {
      o.unit = opt;
      o.expire = argv[++j]!;
    } else {
      c.w.error(E.syntax);
      return null;
    }
  }
  return o;
}

/** Redis's getExpireMillisecondsOrReply: an absolute time in ms, or undefined after the error reply. */
export function expireMs(c: Client, arg: Buffer, unit: SetOptions['unit'], cmd: string): number | undefined {
  const n = intArg(c, arg);
  if (n === undefined) return undefined;
  const seconds = unit === 'EX' || unit === 'EXAT';
  if (n <= 0n || (seconds && n > MAX_INT64 / 1000n)) {
    c.w.error(E.expire(cmd));
    return undefined;
  }
  let ms = seconds ? n * 1000n : n;
  if (unit === 'EX' || unit === 'PX') ms += BigInt(Date.now());
  // Past int64 Redis's addition wraps to a negative time, which it refuses the same way.
  if (ms > MAX_INT64) {
    c.w.error(E.expire(cmd));
    return undefined;
  }
  return Number(ms);
}

function get(c: Client, argv: Argv): void {
  const e = c.store.lookupRead(str(argv[1]!));
  if (e === undefined) c.w.nil();
  else if (e.type !== 0) c.w.error(E.wrongType);
  else c.w.bulk(e.value as Buffer, e.inArena);
}

/** Replies with the string at key (or null); false after a WRONGTYPE reply (Redis's getGenericCommand). */
function replyOld(c: Client, key: string): boolean {
  const e = c.store.lookupRead(key);
  if (e === undefined) c.w.nil();
  else if (e.type !== 0) {
    c.w.error(E.wrongType);
    return false;
  } else c.w.bulk(e.value as Buffer, e.inArena);
  return true;
}

/**
 * Redis's setGenericCommand. `ok` and `abort` are the replies for a done and a skipped
 * write (+OK and null for SET, 1 and 0 for SETNX).
 */
function setGeneric(
  c: Client,
  key: string,
  value: Buffer,
  o: SetOptions,
  cmd: string,
  ok: (() => void) | null = null,
  abort: (() => void) | null = null,
): void {
  let at = 0;
  if (o.expire !== null) {
    const ms = expireMs(c, o.expire, o.unit, cmd);
    if (ms === undefined) return;
    at = ms;
  }
  if (o.get && !replyOld(c, key)) return;
  const found = c.store.get(key) !== undefined;
  if ((o.nx && found) || (o.xx && !found)) {
    if (!o.get) (abort ?? (() => c.w.nil()))();
    return;
  }
  c.store.set(key, value, o.keepTtl ? undefined : at);
  if (!o.get) (ok ?? (() => c.w.ok()))();
}

const NO_OPTIONS: SetOptions = {
  nx: false,
  xx: false,
  get: false,
  keepTtl: false,
  persist: false,
  unit: null,
  expire: null,
};

function set(c: Client, argv: Argv): void {
  const o = parseSetOptions(c, argv, 3, true);
  if (o !== null) setGeneric(c, str(argv[1]!), argv[2]!, o, 'set');
}

function setex(unit: 'EX' | 'PX', name: string): Impl {
  return (c, argv) => setGeneric(c, str(argv[1]!), argv[3]!, { ...NO_OPTIONS, unit, expire: argv[2]! }, name);
}

function setnx(c: Client, argv: Argv): void {
  setGeneric(
    c,
    str(argv[1]!),
    argv[2]!,
    { ...NO_OPTIONS, nx: true },
    'setnx',
    () => c.w.int(1),
    () => c.w.int(0),
  );
}

function getset(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  if (!replyOld(c, key)) return;
  c.store.set(key, argv[2]!, 0);
}

function getdel(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  const v = lookupString(c, key, true);
  if (v === null) return;
  if (v === undefined) return c.w.nil();
  const e = c.store.get(key)!;
  c.w.bulk(v, e.inArena);
  c.store.delete(key);
}

function getex(c: Client, argv: Argv): void {
  const o = parseSetOptions(c, argv, 2, false);
  if (o === null) return;
  // The key before the expiry argument (getexCommand's order): a missing key is null whatever follows.
  const key = str(argv[1]!);
  const v = lookupString(c, key, true);
  if (v === null) return;
  if (v === undefined) return c.w.nil();
  let at = 0;
  if (o.expire !== null) {
    const ms = expireMs(c, o.expire, o.unit, 'getex');
    if (ms === undefined) return;
    at = ms;
  }
  const e = c.store.get(key)!;
  c.w.bulk(v, e.inArena);
  if ((o.unit === 'EXAT' || o.unit === 'PXAT') && at <= Date.now()) c.store.delete(key);
  else if (o.expire !== null) c.store.setExpire(e, at);
  else if (o.persist && e.expireAt !== 0) c.store.setExpire(e, 0);
}

function getrange(c: Client, argv: Argv): void {
  const start0 = intArg(c, argv[2]!);
  if (start0 === undefined) return;
  const end0 = intArg(c, argv[3]!);
  if (end0 === undefined) return;
  const v = lookupString(c, str(argv[1]!), true);
  if (v === null) return;
  if (v === undefined) return c.w.bulk(EMPTY);
  const len = BigInt(v.length);
  let start = start0;
  let end = end0;
  if (start < 0n && end < 0n && start > end) return c.w.bulk(EMPTY);
  if (start < 0n) start += len;
  if (end < 0n) end += len;
  if (start < 0n) start = 0n;
  if (end < 0n) end = 0n;
  if (end >= len) end = len - 1n;
  if (start > end || len === 0n) return c.w.bulk(EMPTY);
  c.w.bulk(v.subarray(Number(start), Number(end) + 1));
}

const EMPTY = Buffer.alloc(0);

/** Redis's checkStringLength: false after the error reply. */
function lengthOk(c: Client, size: number, append: number): boolean {
  if (size + append > c.srv.config.protoMaxBulkLen) {
    c.w.error(E.tooBig);
    return false;
  }
  return true;
}

/** Stores a string built here (APPEND, SETRANGE): Redis keeps such strings raw-encoded. */
function storeRaw(c: Client, key: string, value: Buffer, enc: number): void {
  c.store.set(key, value, undefined);
  (c.store.get(key) as Entry).enc = enc;
}

function setrange(c: Client, argv: Argv): void {
  const off = intArg(c, argv[2]!);
  if (off === undefined) return;
  if (off < 0n) return c.w.error('ERR offset is out of range');
  const key = str(argv[1]!);
  const value = argv[3]!;
  const old = lookupString(c, key);
  if (old === null) return;
  const offset = off > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(off);
  if (old === undefined) {
    if (value.length === 0) return c.w.int(0);
    if (!lengthOk(c, offset, value.length)) return;
  } else {
    if (value.length === 0) return c.w.int(old.length);
    if (!lengthOk(c, offset, value.length)) return;
  }
  const cur = old ?? EMPTY;
  const len = Math.max(cur.length, offset + value.length);
  // A new buffer: stored values are never written in place (replies may still refer to them).
  const out = Buffer.alloc(len);
  cur.copy(out);
  value.copy(out, offset);
  storeRaw(c, key, out, ENC_RAW);
  c.w.int(len);
}

function append(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  const arg = argv[2]!;
  const old = lookupString(c, key);
  if (old === null) return;
  if (old === undefined) {
    c.store.set(key, arg, 0);
    return c.w.int(arg.length);
  }
  if (!lengthOk(c, old.length, arg.length)) return;
  // A new value each time (values are immutable once stored): O(n) per APPEND.
  const joined = Buffer.allocUnsafeSlow(old.length + arg.length);
  old.copy(joined);
  arg.copy(joined, old.length);
  storeRaw(c, key, joined, ENC_RAW);
  c.w.int(joined.length);
}

function strlen(c: Client, argv: Argv): void {
  const v = lookupString(c, str(argv[1]!), true);
  if (v !== null) c.w.int(v === undefined ? 0 : v.length);
}

function incrBy(c: Client, key: string, by: bigint): void {
  const old = lookupString(c, key);
  if (old === null) return;
  let n = 0n;
  if (old !== undefined) {
    const v = parseInt64(old);
    if (v === undefined) return c.w.error(E.notInt);
    n = v;
  }
  const r = n + by;
  if (r > MAX_INT64 || r < MIN_INT64) return c.w.error(E.overflow);
  c.store.set(key, Buffer.from(String(r), 'latin1'), undefined);
  c.w.int(r);
}

const incr: Impl = (c, argv) => incrBy(c, str(argv[1]!), 1n);
const decr: Impl = (c, argv) => incrBy(c, str(argv[1]!), -1n);
function incrby(c: Client, argv: Argv): void {
  const by = intArg(c, argv[2]!);
  if (by !== undefined) incrBy(c, str(argv[1]!), by);
}
function decrby(c: Client, argv: Argv): void {
  const by = intArg(c, argv[2]!);
  if (by === undefined) return;
  if (by === MIN_INT64) return c.w.error('ERR decrement would overflow');
  incrBy(c, str(argv[1]!), -by);
}

function incrbyfloat(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  const old = lookupString(c, key);
  if (old === null) return;
  const value = old === undefined ? parseLongDouble('0')! : parseLongDouble(str(old));
  if (value === undefined) return c.w.error(E.notFloat);
  const by = parseLongDouble(str(argv[2]!));
  if (by === undefined) return c.w.error(E.notFloat);
  const r = addLongDouble(value, by);
  if (isInfinite(r)) return c.w.error(E.nanInf);
  const text = Buffer.from(formatLongDouble(r), 'latin1');
  c.store.set(key, text, undefined);
  (c.store.get(key) as Entry).enc = ENC_NOINT;
  c.w.bulk(text);
}

function mget(c: Client, argv: Argv): void {
  c.w.array(argv.length - 1);
  for (let i = 1; i < argv.length; i++) {
    const e = c.store.lookupRead(str(argv[i]!));
    if (e === undefined || e.type !== 0) c.w.nil();
    else c.w.bulk(e.value as Buffer, e.inArena);
  }
}

function mset(c: Client, argv: Argv): void {
  if (argv.length % 2 === 0) return c.w.error(E.arity('mset'));
  for (let i = 1; i < argv.length; i += 2) c.store.set(str(argv[i]!), argv[i + 1]!, 0);
  c.w.ok();
}

function msetnx(c: Client, argv: Argv): void {
  if (argv.length % 2 === 0) return c.w.error(E.arity('msetnx'));
  for (let i = 1; i < argv.length; i += 2) if (c.store.get(str(argv[i]!)) !== undefined) return c.w.int(0);
  for (let i = 1; i < argv.length; i += 2) c.store.set(str(argv[i]!), argv[i + 1]!, 0);
  c.w.int(1);
}

/** LCS key1 key2 [LEN] [IDX] [MINMATCHLEN len] [WITHMATCHLEN], as Redis 7.0's lcsCommand. */
function lcs(c: Client, argv: Argv): void {
  // The keys first, then the options (lcsCommand's order).
  const ea = c.store.lookupRead(str(argv[1]!));
  const eb = c.store.lookupRead(str(argv[2]!));
  if ((ea !== undefined && ea.type !== 0) || (eb !== undefined && eb.type !== 0)) {
    return c.w.error('ERR The specified keys must contain string values');
  }
  const sa = (ea?.value as Buffer | undefined) ?? EMPTY;
  const sb = (eb?.value as Buffer | undefined) ?? EMPTY;
  let getLen = false;
  let getIdx = false;
  let withMatchLen = false;
  let minMatchLen = 0;
  for (let j = 3; j < argv.length; j++) {
    const opt = upper(argv[j]!);
    const moreArgs = argv.length - 1 - j;
    if (opt === 'IDX') getIdx = true;
    else if (opt === 'LEN') getLen = true;
    else if (opt === 'WITHMATCHLEN') withMatchLen = true;
    else if (opt === 'MINMATCHLEN' && moreArgs > 0) {
      const n = intArg(c, argv[j + 1]!);
      if (n === undefined) return;
      minMatchLen = n < 0n ? 0 : Number(n > 1n << 40n ? 1n << 40n : n);
      j++;
    } else return c.w.error(E.syntax);
  }
  if (getIdx && getLen) {
    return c.w.error('ERR If you want both the length and indexes, please just use IDX.');
  }
  const alen = sa.length;
  const blen = sb.length;
  if ((alen + 1) * (blen + 1) * 4 > c.srv.config.protoMaxBulkLen) {
    return c.w.error('ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len');
  }
  // The DP table, then a walk back from its corner (the same tie-breaks as Redis, so the same matches).
  const w = blen + 1;
  const dp = new Uint32Array((alen + 1) * w);
  for (let i = 1; i <= alen; i++) {
    for (let j = 1; j <= blen; j++) {
      if (sa[i - 1] === sb[j - 1]) dp[i * w + j] = dp[(i - 1) * w + j - 1]! + 1;
      else {
        const lcs1 = dp[(i - 1) * w + j]!;
        const lcs2 = dp[i * w + j - 1]!;
        dp[i * w + j] = lcs1 > lcs2 ? lcs1 : lcs2;
      }
    }
  }
  const idx = dp[alen * w + blen]!;
  const result = Buffer.alloc(idx);
  let k = idx;
  const matches: [number, number, number, number][] = [];
  let arangeStart = alen;
  let arangeEnd = 0;
  let brangeStart = 0;
  let brangeEnd = 0;
  let i = alen;
  let j = blen;
  const computeList = getIdx;
  const computeLcs = getIdx || !getLen;
  while (computeLcs && i > 0 && j > 0) {
    let emitRange = false;
    if (sa[i - 1] === sb[j - 1]) {
      result[--k] = sa[i - 1]!;
      if (arangeStart === alen) {
        arangeStart = i - 1;
        arangeEnd = i - 1;
        brangeStart = j - 1;
        brangeEnd = j - 1;
      } else if (arangeStart === i && brangeStart === j) {
        arangeStart--;
        brangeStart--;
      } else emitRange = true;
      if (arangeStart === 0 || brangeStart === 0) emitRange = true;
      i--;
      j--;
    } else {
      const lcs1 = dp[(i - 1) * w + j]!;
      const lcs2 = dp[i * w + j - 1]!;
      if (lcs1 > lcs2) i--;
      else j--;
      if (arangeStart !== alen) emitRange = true;
    }
    if (emitRange) {
      const matchLen = arangeEnd - arangeStart + 1;
      if (minMatchLen === 0 || matchLen >= minMatchLen) {
        if (computeList) matches.push([arangeStart, arangeEnd, brangeStart, brangeEnd]);
      }
      arangeStart = alen;
    }
  }
  if (getIdx) {
    c.w.map(2);
    c.w.bulkString('matches');
    c.w.array(matches.length);
    for (const [as, ae, bs, be] of matches) {
      c.w.array(withMatchLen ? 3 : 2);
      c.w.array(2);
      c.w.int(as);
      c.w.int(ae);
      c.w.array(2);
      c.w.int(bs);
      c.w.int(be);
      if (withMatchLen) c.w.int(ae - as + 1);
    }
    c.w.bulkString('len');
    c.w.int(idx);
  } else if (getLen) c.w.int(idx);
  else c.w.bulk(result);
}

export const STRING_COMMANDS: Def[] = [
  ['get', 2, ['readonly', 'fast'], [1, 1, 1], get],
  ['set', -3, ['write', 'denyoom'], [1, 1, 1], set],
  ['setex', 4, ['write', 'denyoom'], [1, 1, 1], setex('EX', 'setex')],
  ['psetex', 4, ['write', 'denyoom'], [1, 1, 1], setex('PX', 'psetex')],
  ['setnx', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], setnx],
  ['getset', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], getset],
  ['getdel', 2, ['write', 'fast'], [1, 1, 1], getdel],
  ['getex', -2, ['write', 'fast'], [1, 1, 1], getex],
  ['getrange', 4, ['readonly'], [1, 1, 1], getrange],
  ['substr', 4, ['readonly'], [1, 1, 1], getrange],
  ['setrange', 4, ['write', 'denyoom'], [1, 1, 1], setrange],
  ['append', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], append],
  ['strlen', 2, ['readonly', 'fast'], [1, 1, 1], strlen],
  ['incr', 2, ['write', 'denyoom', 'fast'], [1, 1, 1], incr],
  ['decr', 2, ['write', 'denyoom', 'fast'], [1, 1, 1], decr],
  ['incrby', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], incrby],
  ['decrby', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], decrby],
  ['incrbyfloat', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], incrbyfloat],
  ['mget', -2, ['readonly', 'fast'], [1, -1, 1], mget],
  ['mset', -3, ['write', 'denyoom'], [1, -1, 2], mset],
  ['msetnx', -3, ['write', 'denyoom'], [1, -1, 2], msetnx],
  ['lcs', -3, ['readonly'], [1, 2, 1], lcs],
];
