// Commands: a table in Redis's shape (name, arity, flags, key positions) and their
// implementations. Error texts are Redis 7.0's, word for word, since clients match on them.
import { createHash, timingSafeEqual } from 'node:crypto';
import { globMatcher, matchesEverything } from './glob.mjs';
import { MAX_INT64, MIN_INT64, type Policy } from './store.mjs';
import { infoText } from './info.mjs';
import type { CacheServer, Client } from './server.mjs';

type Argv = Buffer[];
type Impl = (c: Client, argv: Argv) => void;

export interface Command {
  name: string;
  arity: number;
  flags: string[];
  keys: [number, number, number];
  fn: Impl | null;
  noauth: boolean;
  denyoom: boolean;
  subcommands: Record<string, Command> | null;
}

type Def = [string, number, string[], [number, number, number], Impl | null, Def[]?];

export const E = {
  syntax: 'ERR syntax error',
  notInt: 'ERR value is not an integer or out of range',
  overflow: 'ERR increment or decrement would overflow',
  noauth: 'NOAUTH Authentication required.',
  wrongpass: 'WRONGPASS invalid username-password pair or user is disabled.',
  oom: "OOM command not allowed when used memory > 'maxmemory'.",
  maxclients: 'ERR max number of clients reached',
  tooBig: 'ERR string exceeds maximum allowed size (proto-max-bulk-len)',
  arity: (name: string): string => `ERR wrong number of arguments for '${name}' command`,
  expire: (name: string): string => `ERR invalid expire time in '${name}' command`,
};

const str = (b: Buffer): string => b.toString('latin1');
const upper = (b: Buffer): string => str(b).toUpperCase();

/** Redis's string2ll: the exact decimal form of an int64, or undefined. */
export function parseInt64(b: Buffer): bigint | undefined {
  if (b.length === 0 || b.length > 20) return undefined;
  const s = str(b);
  if (!/^(0|-?[1-9][0-9]*)$/.test(s)) return undefined;
  const n = BigInt(s);
  return n > MAX_INT64 || n < MIN_INT64 ? undefined : n;
}

/** An int64 argument as a Number (exact for every value that matters here), or an error reply. */
function intArg(c: Client, b: Buffer): bigint | undefined {
  const n = parseInt64(b);
  if (n === undefined) c.w.error(E.notInt);
  return n;
}

/** Redis's memtoull: 100, 1k (1000), 1kb (1024), 5mb, 2gb. */
export function parseMemory(s: string): number | undefined {
  const m = /^([0-9]+)(b|k|kb|m|mb|g|gb)?$/i.exec(String(s));
  if (m === null) return undefined;
  const units: Record<string, number> = { b: 1, k: 1e3, kb: 1024, m: 1e6, mb: 1024 ** 2, g: 1e9, gb: 1024 ** 3 };
  const n = Number(m[1]) * units[(m[2] ?? 'b').toLowerCase()]!;
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * An absolute expiry in ms from a relative or absolute time in s or ms, as Redis checks it:
 * undefined after an error reply.
 */
function expireAt(
  c: Client,
  arg: Buffer,
  unit: 's' | 'ms',
  absolute: boolean,
  cmd: string,
  allowNonPositive: boolean,
): number | undefined {
  const n = intArg(c, arg);
  if (n === undefined) return undefined;
  if ((!allowNonPositive && n <= 0n) || (unit === 's' && (n > MAX_INT64 / 1000n || n < MIN_INT64 / 1000n))) {
    c.w.error(E.expire(cmd));
    return undefined;
  }
  let ms = unit === 's' ? n * 1000n : n;
  if (!absolute) ms += BigInt(Date.now());
  if (ms > MAX_INT64 || ms < MIN_INT64) {
    c.w.error(E.expire(cmd));
    return undefined;
  }
  return Number(ms);
}

function get(c: Client, argv: Argv): void {
  const e = c.store.lookupRead(str(argv[1]!));
  if (e === undefined) c.w.nil();
  else c.w.bulk(e.value, e.inArena);
}

function set(c: Client, argv: Argv): void {
  let nx = false;
  let xx = false;
  let wantGet = false;
  let keepTtl = false;
  let expiry: { opt: string; arg: Buffer } | null = null;
  for (let i = 3; i < argv.length; i++) {
    const opt = upper(argv[i]!);
    const hasNext = i + 1 < argv.length;
    if (opt === 'NX' && !xx) nx = true;
    else if (opt === 'XX' && !nx) xx = true;
    else if (opt === 'GET') wantGet = true;
    else if (opt === 'KEEPTTL' && expiry === null) keepTtl = true;
    else if (
      (opt === 'EX' || opt === 'PX' || opt === 'EXAT' || opt === 'PXAT') &&
      expiry === null &&
      !keepTtl &&
      hasNext
    ) {
      expiry = { opt, arg: argv[++i]! };
    } else return c.w.error(E.syntax);
  }
  let at: number | undefined = 0;
  if (expiry !== null) {
    const { opt, arg } = expiry;
    at = expireAt(c, arg, opt === 'EX' || opt === 'EXAT' ? 's' : 'ms', opt.endsWith('AT'), 'set', false);
    if (at === undefined) return;
  }
  const key = str(argv[1]!);
  const old = c.store.get(key);
  if (wantGet) {
    if (old === undefined) c.w.nil();
    else c.w.bulk(old.value, old.inArena);
  }
  if ((nx && old !== undefined) || (xx && old === undefined)) {
    if (!wantGet) c.w.nil();
    return;
  }
  c.store.set(key, argv[2]!, keepTtl ? undefined : at);
  if (!wantGet) c.w.ok();
}

function setex(unit: 's' | 'ms'): Impl {
  return (c, argv) => {
    const at = expireAt(c, argv[2]!, unit, false, unit === 's' ? 'setex' : 'psetex', false);
    if (at === undefined) return;
    c.store.set(str(argv[1]!), argv[3]!, at);
    c.w.ok();
  };
}

function setnx(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  if (c.store.get(key) !== undefined) return c.w.int(0);
  c.store.set(key, argv[2]!, 0);
  c.w.int(1);
}

function getset(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  const old = c.store.get(key);
  if (old === undefined) c.w.nil();
  else c.w.bulk(old.value, old.inArena);
  c.store.set(key, argv[2]!, 0);
}

function getdel(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  const e = c.store.lookupRead(key);
  if (e === undefined) return c.w.nil();
  c.w.bulk(e.value, e.inArena);
  c.store.delete(key);
}

function del(c: Client, argv: Argv): void {
  let n = 0;
  for (let i = 1; i < argv.length; i++) {
    const key = str(argv[i]!);
    if (c.store.get(key) !== undefined && c.store.delete(key)) n++;
  }
  c.w.int(n);
}

function exists(c: Client, argv: Argv): void {
  let n = 0;
  for (let i = 1; i < argv.length; i++) if (c.store.get(str(argv[i]!)) !== undefined) n++;
  c.w.int(n);
}

function mget(c: Client, argv: Argv): void {
  c.w.array(argv.length - 1);
  for (let i = 1; i < argv.length; i++) get(c, [argv[0]!, argv[i]!]);
}

function mset(c: Client, argv: Argv): void {
  if (argv.length % 2 === 0) return c.w.error(E.arity('mset'));
  for (let i = 1; i < argv.length; i += 2) c.store.set(str(argv[i]!), argv[i + 1]!, 0);
  c.w.ok();
}

function append(c: Client, argv: Argv): void {
  const key = str(argv[1]!);
  const arg = argv[2]!;
  const e = c.store.get(key);
  if (e === undefined) {
    c.store.set(key, arg, 0);
    return c.w.int(arg.length);
  }
  const len = e.value.length + arg.length;
  if (len > c.srv.config.protoMaxBulkLen) return c.w.error(E.tooBig);
  // A new value each time (values are immutable once stored): O(n) per APPEND.
  const joined = Buffer.allocUnsafeSlow(len);
  e.value.copy(joined);
  arg.copy(joined, e.value.length);
  c.store.set(key, joined, undefined);
  c.w.int(len);
}

function strlen(c: Client, argv: Argv): void {
  const e = c.store.lookupRead(str(argv[1]!));
  c.w.int(e === undefined ? 0 : e.value.length);
}

function incrBy(c: Client, key: string, by: bigint): void {
  const e = c.store.get(key);
  let n = 0n;
  if (e !== undefined) {
    const v = parseInt64(e.value);
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
    const at = expireAt(c, argv[2]!, unit, absolute, name, true);
    if (at === undefined) return;
    const key = str(argv[1]!);
    const e = c.store.get(key);
    if (e === undefined) return c.w.int(0);
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

function ttl(ms: boolean): Impl {
  return (c, argv) => {
    const e = c.store.get(str(argv[1]!));
    if (e === undefined) return c.w.int(-2);
    if (e.expireAt === 0) return c.w.int(-1);
    const left = Math.max(0, e.expireAt - Date.now());
    c.w.int(ms ? left : Math.floor((left + 500) / 1000));
  };
}

function persist(c: Client, argv: Argv): void {
  const e = c.store.get(str(argv[1]!));
  if (e === undefined || e.expireAt === 0) return c.w.int(0);
  c.store.setExpire(e, 0);
  c.w.int(1);
}

function type(c: Client, argv: Argv): void {
  c.w.simple(c.store.get(str(argv[1]!)) === undefined ? 'none' : 'string');
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

function scan(c: Client, argv: Argv): void {
  const cs = str(argv[1]!);
  if (!/^[0-9]+$/.test(cs) || BigInt(cs) >= 2n ** 64n) return c.w.error('ERR invalid cursor');
  let count = 10;
  let match: ((key: string) => boolean) | null = null;
  let onlyStrings = true;
  for (let i = 2; i < argv.length; i++) {
    const o = upper(argv[i]!);
    if (i + 1 >= argv.length) return c.w.error(E.syntax);
    if (o === 'COUNT') {
      const n = intArg(c, argv[++i]!);
      if (n === undefined) return;
      if (n < 1n) return c.w.error(E.syntax);
      count = Number(n);
    } else if (o === 'MATCH') {
      const p = argv[++i]!;
      match = matchesEverything(p) ? null : globMatcher(p);
    } else if (o === 'TYPE') onlyStrings = str(argv[++i]!).toLowerCase() === 'string';
    else return c.w.error(E.syntax);
  }
  const cursor = Number(BigInt(cs) > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : cs);
  const r = c.store.scan(cursor, count, match);
  c.w.array(2);
  c.w.bulkString(String(r.next));
  const out = onlyStrings ? r.keys : [];
  c.w.array(out.length);
  for (const k of out) c.w.bulkString(k);
}

function flushall(c: Client, argv: Argv): void {
  if (argv.length > 2 || (argv.length === 2 && !['ASYNC', 'SYNC'].includes(upper(argv[1]!))))
    return c.w.error(E.syntax);
  c.store.flush();
  c.w.ok();
}

function ping(c: Client, argv: Argv): void {
  if (argv.length > 2) return c.w.error(E.arity('ping'));
  if (argv.length === 2) c.w.bulk(argv[1]);
  else c.w.simple('PONG');
}

function select(c: Client, argv: Argv): void {
  const n = intArg(c, argv[1]!);
  if (n === undefined) return;
  if (n !== 0n) return c.w.error('ERR DB index is out of range');
  c.w.ok();
}

const sha256 = (b: Buffer | string): Buffer => createHash('sha256').update(b).digest();

/**
 * Compares digests of fixed length in constant time, so the time AUTH takes says nothing
 * about how much of a guess was right (a `!==` on the strings stops at the first
 * difference). Bytes as sent, against the password's UTF-8 bytes, as Redis compares them.
 */
function passwordMatches(given: Buffer, password: string): boolean {
  return timingSafeEqual(sha256(given), sha256(password));
}

function auth(c: Client, argv: Argv): void {
  if (argv.length > 3) return c.w.error(E.syntax);
  const pass = c.srv.config.requirepass;
  if (!pass) {
    return c.w.error(
      'ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?',
    );
  }
  const user = argv.length === 3 ? str(argv[1]!) : 'default';
  if (!passwordMatches(argv[argv.length - 1]!, pass) || user !== 'default') return c.w.error(E.wrongpass);
  c.authenticate();
  c.w.ok();
}

function info(c: Client, argv: Argv): void {
  c.w.bulkText(
    infoText(
      c.srv,
      argv.slice(1).map((b) => str(b).toLowerCase()),
    ),
  );
}

/** CONFIG GET/SET: the parameters clients and redis-benchmark ask for, and the ones that can change. */
interface ConfigParam {
  get: (s: CacheServer) => string;
  /** Returns an error text, or undefined once set. */
  set?: (s: CacheServer, v: string) => string | undefined;
}

const CONFIG: Record<string, ConfigParam> = {
  maxmemory: {
    get: (s) => String(s.store.maxmemory),
    set: (s, v) => {
      const n = parseMemory(v);
      if (n === undefined) return 'argument must be a memory value';
      s.store.maxmemory = n;
      s.store.evict();
      return undefined;
    },
  },
  'maxmemory-policy': {
    get: (s) => s.store.policy,
    set: (s, v) => {
      const p = v.toLowerCase();
      if (!['allkeys-lru', 'volatile-lru', 'noeviction'].includes(p)) {
        return 'argument(s) must be one of the following: allkeys-lru, volatile-lru, noeviction';
      }
      s.store.policy = p as Policy;
      return undefined;
    },
  },
  maxclients: {
    get: (s) => String(s.config.maxclients),
    set: (s, v) => {
      if (!/^[1-9][0-9]{0,8}$/.test(v)) return 'argument must be between 1 and 1000000000 inclusive';
      s.config.maxclients = Number(v);
      return undefined;
    },
  },
  'proto-max-bulk-len': { get: (s) => String(s.config.protoMaxBulkLen) },
  'ksm-threshold': { get: (s) => String(s.store.threshold) },
  requirepass: { get: (s) => s.config.requirepass ?? '' },
  port: { get: (s) => String(s.config.port) },
  bind: { get: (s) => s.config.bind },
  databases: { get: () => '1' },
  save: { get: () => '' },
  appendonly: { get: () => 'no' },
  timeout: { get: () => '0' },
};

function configGet(c: Client, argv: Argv): void {
  const out: string[] = [];
  for (const [name, param] of Object.entries(CONFIG)) {
    if (argv.slice(2).some((p) => globMatcher(p, true)(name))) out.push(name, param.get(c.srv));
  }
  c.w.array(out.length);
  for (const s of out) c.w.bulkString(s);
}

function configSet(c: Client, argv: Argv): void {
  if (argv.length % 2 !== 0) return c.w.error(E.arity('config|set'));
  const pairs: [string, NonNullable<ConfigParam['set']>, string][] = [];
  for (let i = 2; i < argv.length; i += 2) {
    const name = str(argv[i]!).toLowerCase();
    const setter = CONFIG[name]?.set;
    if (setter === undefined)
      return c.w.error(`ERR Unknown option or number of arguments for CONFIG SET - '${str(argv[i]!)}'`);
    pairs.push([name, setter, str(argv[i + 1]!)]);
  }
  for (const [name, setter, value] of pairs) {
    const bad = setter(c.srv, value);
    if (bad !== undefined) return c.w.error(`ERR CONFIG SET failed (possibly related to argument '${name}') - ${bad}`);
  }
  c.w.ok();
}

function configResetstat(c: Client): void {
  c.srv.resetStats();
  c.w.ok();
}

function clientSetname(c: Client, argv: Argv): void {
  const name = str(argv[2]!);
  if (/[^!-~]/.test(name)) return c.w.error('ERR Client names cannot contain spaces, newlines or special characters.');
  c.name = name === '' ? null : name;
  c.w.ok();
}

function clientList(c: Client): void {
  const lines = [...c.srv.clients].map(
    (x) =>
      `id=${x.id} addr=${x.addr} name=${x.name ?? ''} age=${Math.floor((Date.now() - x.since) / 1000)} db=0 cmd=${x.lastCommand}`,
  );
  c.w.bulkText(lines.map((l) => `${l}\n`).join(''));
}

function quit(c: Client): void {
  c.w.ok();
  c.closeAfterReply();
}

function shutdown(c: Client, argv: Argv): void {
  for (let i = 1; i < argv.length; i++) {
    if (!['NOSAVE', 'SAVE', 'NOW', 'FORCE'].includes(upper(argv[i]!))) return c.w.error(E.syntax);
  }
  // As in Redis, a successful SHUTDOWN gets no reply: the connection just closes.
  c.srv.shutdown('SHUTDOWN');
}

function commandInfo(c: Client, cmd: Command | undefined): void {
  if (cmd === undefined) return c.w.nilArray();
  const w = c.w;
  w.array(10);
  w.bulkString(cmd.name);
  w.int(cmd.arity);
  w.array(cmd.flags.length);
  for (const f of cmd.flags) w.simple(f);
  w.int(cmd.keys[0]);
  w.int(cmd.keys[1]);
  w.int(cmd.keys[2]);
  for (let i = 0; i < 3; i++) w.array(0); // ACL categories, tips, key specs
  const subs = cmd.subcommands ? [...new Set(Object.values(cmd.subcommands))] : [];
  w.array(subs.length);
  for (const s of subs) commandInfo(c, s);
}

function commandAll(c: Client): void {
  const all = [...new Set(TABLE.values())];
  c.w.array(all.length);
  for (const cmd of all) commandInfo(c, cmd);
}

/**
 * [name, arity, flags, [first key, last key, step], implementation, subcommands?].
 * Arity as in Redis: n exactly, -n at least n (the name counts).
 */
const DEFS: Def[] = [
  ['get', 2, ['readonly', 'fast'], [1, 1, 1], get],
  ['set', -3, ['write', 'denyoom'], [1, 1, 1], set],
  ['setex', 4, ['write', 'denyoom'], [1, 1, 1], setex('s')],
  ['psetex', 4, ['write', 'denyoom'], [1, 1, 1], setex('ms')],
  ['setnx', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], setnx],
  ['getset', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], getset],
  ['getdel', 2, ['write', 'fast'], [1, 1, 1], getdel],
  ['del', -2, ['write'], [1, -1, 1], del],
  ['unlink', -2, ['write', 'fast'], [1, -1, 1], del],
  ['exists', -2, ['readonly', 'fast'], [1, -1, 1], exists],
  ['mget', -2, ['readonly', 'fast'], [1, -1, 1], mget],
  ['mset', -3, ['write', 'denyoom'], [1, -1, 2], mset],
  ['append', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], append],
  ['strlen', 2, ['readonly', 'fast'], [1, 1, 1], strlen],
  ['incr', 2, ['write', 'denyoom', 'fast'], [1, 1, 1], incr],
  ['decr', 2, ['write', 'denyoom', 'fast'], [1, 1, 1], decr],
  ['incrby', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], incrby],
  ['decrby', 3, ['write', 'denyoom', 'fast'], [1, 1, 1], decrby],
  ['expire', -3, ['write', 'fast'], [1, 1, 1], expire('s', false, 'expire')],
  ['pexpire', -3, ['write', 'fast'], [1, 1, 1], expire('ms', false, 'pexpire')],
  ['expireat', -3, ['write', 'fast'], [1, 1, 1], expire('s', true, 'expireat')],
  ['pexpireat', -3, ['write', 'fast'], [1, 1, 1], expire('ms', true, 'pexpireat')],
  ['ttl', 2, ['readonly', 'fast'], [1, 1, 1], ttl(false)],
  ['pttl', 2, ['readonly', 'fast'], [1, 1, 1], ttl(true)],
  ['persist', 2, ['write', 'fast'], [1, 1, 1], persist],
  ['type', 2, ['readonly', 'fast'], [1, 1, 1], type],
  ['dbsize', 1, ['readonly', 'fast'], [0, 0, 0], (c) => c.w.int(c.store.size)],
  ['keys', 2, ['readonly'], [0, 0, 0], keys],
  ['scan', -2, ['readonly'], [0, 0, 0], scan],
  ['flushall', -1, ['write'], [0, 0, 0], flushall],
  ['flushdb', -1, ['write'], [0, 0, 0], flushall],
  ['ping', -1, ['fast'], [0, 0, 0], ping],
  ['echo', 2, ['fast'], [0, 0, 0], (c, argv) => c.w.bulk(argv[1])],
  ['select', 2, ['loading', 'stale', 'fast'], [0, 0, 0], select],
  ['auth', -2, ['noscript', 'loading', 'stale', 'fast', 'no_auth'], [0, 0, 0], auth],
  ['info', -1, ['loading', 'stale'], [0, 0, 0], info],
  ['quit', -1, ['loading', 'stale', 'fast', 'no_auth'], [0, 0, 0], quit],
  ['shutdown', -1, ['admin', 'loading', 'stale'], [0, 0, 0], shutdown],
  [
    'config',
    -2,
    [],
    [0, 0, 0],
    null,
    [
      ['get', -3, ['admin', 'loading', 'stale'], [0, 0, 0], configGet],
      ['set', -4, ['admin', 'loading', 'stale'], [0, 0, 0], configSet],
      ['resetstat', 2, ['admin', 'loading', 'stale'], [0, 0, 0], configResetstat],
    ],
  ],
  [
    'client',
    -2,
    [],
    [0, 0, 0],
    null,
    [
      ['setname', 3, ['loading', 'stale'], [0, 0, 0], clientSetname],
      ['getname', 2, ['loading', 'stale'], [0, 0, 0], (c) => (c.name === null ? c.w.nil() : c.w.bulkString(c.name))],
      ['id', 2, ['loading', 'stale'], [0, 0, 0], (c) => c.w.int(c.id)],
      ['setinfo', 4, ['loading', 'stale'], [0, 0, 0], (c) => c.w.ok()],
      ['list', -2, ['admin', 'loading', 'stale'], [0, 0, 0], clientList],
    ],
  ],
  [
    'command',
    -1,
    ['loading', 'stale'],
    [0, 0, 0],
    commandAll,
    [
      ['count', 2, ['loading', 'stale'], [0, 0, 0], (c) => c.w.int(new Set(TABLE.values()).size)],
      [
        'info',
        -2,
        ['loading', 'stale'],
        [0, 0, 0],
        (c, argv) => {
          c.w.array(argv.length - 2);
          for (const n of argv.slice(2)) commandInfo(c, TABLE.get(str(n).toLowerCase()));
        },
      ],
      // Empty docs: redis-cli then uses the help compiled into it.
      ['docs', -2, ['loading', 'stale'], [0, 0, 0], (c) => c.w.array(0)],
      [
        'list',
        -2,
        ['loading', 'stale'],
        [0, 0, 0],
        (c) => {
          const names = [...new Set(TABLE.values())].map((x) => x.name);
          c.w.array(names.length);
          for (const n of names) c.w.bulkString(n);
        },
      ],
    ],
  ],
];

function makeCommand([name, arity, flags, keys, fn, subs]: Def, parent?: string): Command {
  const cmd: Command = {
    name: parent ? `${parent}|${name}` : name,
    arity,
    flags,
    keys,
    fn,
    noauth: flags.includes('no_auth'),
    denyoom: flags.includes('denyoom'),
    subcommands: null,
  };
  if (subs) {
    const table: Record<string, Command> = Object.create(null) as Record<string, Command>;
    for (const s of subs) table[s[0]] = makeCommand(s, name);
    cmd.subcommands = table;
  }
  return cmd;
}

/** Command by lowercase name (and by uppercase, which redis-benchmark sends, to skip a toLowerCase). */
export const TABLE = new Map<string, Command>();
for (const def of DEFS) {
  const cmd = makeCommand(def);
  TABLE.set(cmd.name, cmd);
  TABLE.set(cmd.name.toUpperCase(), cmd);
}

const GET = TABLE.get('get')!;
const SET = TABLE.get('set')!;
const arityOk = (arity: number, n: number): boolean => (arity >= 0 ? n === arity : n >= -arity);

/**
 * Looks a command up as Redis's processCommand does: unknown command or subcommand,
 * then arity. Returns the command, or an error text.
 */
export function resolve(argv: Argv): Command | string {
  const a = argv[0]!;
  // GET and SET, in either case, without making a string of the name: they are most of the traffic.
  if (a.length === 3 && (a[1]! | 0x20) === 0x65 && (a[2]! | 0x20) === 0x74) {
    const c0 = a[0]! | 0x20;
    const cmd = c0 === 0x67 ? GET : c0 === 0x73 ? SET : undefined;
    if (cmd !== undefined) return arityOk(cmd.arity, argv.length) ? cmd : E.arity(cmd.name);
  }
  const name = str(a);
  const cmd = TABLE.get(name) ?? TABLE.get(name.toLowerCase());
  if (cmd === undefined) {
    let args = '';
    for (let i = 1; i < argv.length && args.length < 128; i++)
      args += `'${str(argv[i]!).slice(0, 128 - args.length)}' `;
    return `ERR unknown command '${name.slice(0, 128)}', with args beginning with: ${args}`;
  }
  if (cmd.subcommands !== null && argv.length >= 2) {
    const sub = cmd.subcommands[str(argv[1]!).toLowerCase()];
    if (sub === undefined) {
      return `ERR unknown subcommand '${str(argv[1]!).slice(0, 128)}'. Try ${cmd.name.toUpperCase()} HELP.`;
    }
    return arityOk(sub.arity, argv.length) ? sub : E.arity(sub.name);
  }
  if (!arityOk(cmd.arity, argv.length) || cmd.fn === null) return E.arity(cmd.name);
  return cmd;
}
