// What every command family shares: Redis 7.0's error texts word for word (clients match
// on them), argument parsing as Redis's object.c/util.c does it, and the table's types.
import type { Client } from '../server.mjs';
import { MAX_INT64, MIN_INT64, T_STRING, type LiveEntry, type ValueType } from '../store.mjs';

export type Argv = Buffer[];
export type Impl = (c: Client, argv: Argv) => void;

/** [name, arity, flags, [first key, last key, step], implementation, subcommands?]; arity as in Redis. */
export type Def = [string, number, string[], [number, number, number], Impl | null, Def[]?];

export const E = {
  syntax: 'ERR syntax error',
  notInt: 'ERR value is not an integer or out of range',
  notFloat: 'ERR value is not a valid float',
  overflow: 'ERR increment or decrement would overflow',
  nanInf: 'ERR increment would produce NaN or Infinity',
  wrongType: 'WRONGTYPE Operation against a key holding the wrong kind of value',
  noKey: 'ERR no such key',
  noauth: 'NOAUTH Authentication required.',
  wrongpass: 'WRONGPASS invalid username-password pair or user is disabled.',
  oom: "OOM command not allowed when used memory > 'maxmemory'.",
  maxclients: 'ERR max number of clients reached',
  tooBig: 'ERR string exceeds maximum allowed size (proto-max-bulk-len)',
  positive: 'ERR value is out of range, must be positive',
  arity: (name: string): string => `ERR wrong number of arguments for '${name}' command`,
  expire: (name: string): string => `ERR invalid expire time in '${name}' command`,
};

export const str = (b: Buffer): string => b.toString('latin1');
export const upper = (b: Buffer): string => str(b).toUpperCase();
export const lower = (b: Buffer): string => str(b).toLowerCase();

/** Redis's string2ll: the exact decimal form of an int64, or undefined. */
export function parseInt64(b: Buffer): bigint | undefined {
  if (b.length === 0 || b.length > 20) return undefined;
  const s = str(b);
  if (!/^(0|-?[1-9][0-9]*)$/.test(s)) return undefined;
  const n = BigInt(s);
  return n > MAX_INT64 || n < MIN_INT64 ? undefined : n;
}

/** An int64 argument, or undefined after an error reply (`msg`, Redis's "not an integer" by default). */
export function intArg(c: Client, b: Buffer, msg: string = E.notInt): bigint | undefined {
  const n = parseInt64(b);
  if (n === undefined) c.w.error(msg);
  return n;
}

/** An int64 argument as a Number, clamped to ±2^53 (far beyond any count or index a reply can have). */
export function numArg(c: Client, b: Buffer, msg: string = E.notInt): number | undefined {
  const n = intArg(c, b, msg);
  if (n === undefined) return undefined;
  const max = BigInt(Number.MAX_SAFE_INTEGER);
  return Number(n > max ? max : n < -max ? -max : n);
}

/** Redis's getRangeLongFromObjectOrReply: an integer in [min, max] or `msg`. */
export function rangeArg(c: Client, b: Buffer, min: number, max: number, msg: string): number | undefined {
  const n = parseInt64(b);
  if (n === undefined || n < BigInt(min) || n > BigInt(max)) {
    c.w.error(n === undefined ? E.notInt : msg);
    return undefined;
  }
  return Number(n);
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
 * The live entry of `key` if it holds `type`; undefined when there is no such key; null
 * after a WRONGTYPE reply. `read` counts a keyspace hit or miss, as Redis's lookupKeyRead.
 */
export function lookup(c: Client, key: string, type: ValueType, read = false): LiveEntry | undefined | null {
  const e = read ? c.store.lookupRead(key) : c.store.get(key);
  if (e === undefined || e.type === type) return e;
  c.w.error(E.wrongType);
  return null;
}

/** A string value, undefined (no key) or null (WRONGTYPE, replied). */
export function lookupString(c: Client, key: string, read = false): Buffer | undefined | null {
  const e = lookup(c, key, T_STRING, read);
  return e == null ? e : (e.value as Buffer);
}

/** Redis's range normalisation for GETRANGE, LRANGE, LTRIM: [start, end] inclusive, or null when empty. */
export function clampRange(start: number, end: number, len: number): [number, number] | null {
  if (start < 0) start = len + start;
  if (end < 0) end = len + end;
  if (start < 0) start = 0;
  if (end < 0) end = 0;
  if (end >= len) end = len - 1;
  if (start > end || len === 0) return null;
  return [start, end];
}

/** A random integer in [0, n). */
export const randomIndex = (n: number): number => Math.floor(Math.random() * n);
