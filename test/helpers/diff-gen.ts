/**
 * The command generator of the differential test (test/cache-server-diff.test.ts): seeded
 * random commands over a small key space, every family the cache server implements,
 * with valid and invalid arguments, wrong types and edge numbers.
 */

/** mulberry32: a small seeded PRNG, so a seed replays the same commands. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Op {
  /** Which connection sends it: 0 speaks RESP2, 1 RESP3. */
  conn: number;
  argv: string[];
}

/** Keys each family mostly uses (so most commands find their type), and now and then another's. */
const KIND_KEYS: Record<string, string[]> = {
  s: ['k1', 'k2', 'k{6}'],
  h: ['h1', 'h2'],
  l: ['l1', 'l2'],
  t: ['t1', 't2'],
};
const KEYS = Object.values(KIND_KEYS).flat();
const LONG = 'v'.repeat(70);
/** Past the Arena threshold (4 KiB pages), and past the size the writer sends by reference (16 KiB). */
const ARENA = 'A'.repeat(5000);
const HUGE = 'B'.repeat(20000);
const VALUES = [
  '0',
  '1',
  '-1',
  '7',
  '42',
  '007',
  '3.14',
  '-2.5',
  '1e3',
  'abc',
  'x',
  '',
  ' 1',
  '+5',
  '1.0',
  '0x10',
  'inf',
  'nan',
  '9223372036854775807',
  '-9223372036854775808',
  '9223372036854775808',
  LONG,
  ARENA,
  HUGE,
];
const MEMBERS = ['a', 'b', 'c', '1', '2', '10', '-3', '007', LONG, ARENA, HUGE];
const INTS = [
  '-100',
  '-3',
  '-2',
  '-1',
  '0',
  '1',
  '2',
  '3',
  '5',
  '100',
  '9223372036854775807',
  '-9223372036854775808',
  'abc',
  '1.5',
  '',
];
const FLOATS = ['0.1', '0.2', '-0.3', '1e3', '1.5e-3', '3', '-3', 'inf', '-inf', 'nan', 'abc', '0x1p3', '1e400', ''];
const PATTERNS = ['*', 'k*', 'k?', 'k[1-3]', 'k[^1]', '*{*', 'nomatch', '[a-c]', '\\k1', '?'];

export function generator(seed: number): (conn?: number) => Op[] {
  const r = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
  const chance = (p: number): boolean => r() < p;
  let kind = 's';
  const key = (): string => (chance(0.8) ? pick(KIND_KEYS[kind]!) : pick(KEYS));
  const val = (): string => pick(VALUES);
  const mem = (): string => pick(MEMBERS);
  const int = (): string => pick(INTS);
  const some = <T>(f: () => T, min = 1, max = 4): T[] => {
    const n = min + Math.floor(r() * (max - min + 1));
    return Array.from({ length: n }, f);
  };
  const futureSec = (): string => String(Math.floor(Date.now() / 1000) + 100000);
  const futureMs = (): string => String(Date.now() + 100_000_000);
  const pastSec = (): string => String(Math.floor(Date.now() / 1000) - 1000);
  /** Expiry arguments: long enough not to run out during a test, or already past, or invalid. */
  const expiry = (): string[] =>
    pick([
      ['EX', '1000'],
      ['PX', '1000000'],
      ['EXAT', futureSec()],
      ['PXAT', futureMs()],
      ['EXAT', pastSec()],
      ['EX', '0'],
      ['EX', '-5'],
      ['PX', 'abc'],
      ['EX', '9223372036854775807'],
      ['KEEPTTL'],
      ['EX'],
    ]);
  const setOpts = (): string[] => {
    const out: string[] = [];
    for (const o of some(() => pick(['NX', 'XX', 'GET', 'EXP', 'EXP', 'KEEPTTL', 'BOGUS']), 0, 3)) {
      if (o === 'EXP') out.push(...expiry());
      else out.push(o);
    }
    return out;
  };

  const families: [string, () => string[]][] = [
    // strings
    ['s', () => ['SET', key(), val(), ...(chance(0.5) ? setOpts() : [])]],
    ['s', () => ['GET', key()]],
    ['s', () => [pick(['SETNX', 'GETSET']), key(), val()]],
    ['s', () => [pick(['SETEX', 'PSETEX']), key(), pick(['1000', '1000000', '0', '-1', 'abc']), val()]],
    ['s', () => ['GETDEL', key()]],
    [
      's',
      () => ['GETEX', key(), ...(chance(0.7) ? pick([expiry(), ['PERSIST'], ['PERSIST', 'EX', '10'], ['NX']]) : [])],
    ],
    ['s', () => [pick(['GETRANGE', 'SUBSTR']), key(), int(), int()]],
    [
      's',
      () => [
        'SETRANGE',
        key(),
        pick(['0', '1', '5', '-1', 'abc', '536870911', '536870912']),
        pick(['', 'zz', 'hello']),
      ],
    ],
    ['s', () => ['APPEND', key(), val()]],
    ['s', () => ['STRLEN', key()]],
    ['s', () => [pick(['INCR', 'DECR']), key()]],
    ['s', () => [pick(['INCRBY', 'DECRBY']), key(), int()]],
    ['s', () => ['INCRBYFLOAT', key(), pick(FLOATS)]],
    ['s', () => ['MGET', ...some(key)]],
    [
      's',
      () => [pick(['MSET', 'MSETNX']), ...some(() => [key(), val()], 1, 3).flat(), ...(chance(0.1) ? [key()] : [])],
    ],
    // LCS on keys of its own with short strings (its DP is quadratic: 20 KB against 20 KB takes seconds).
    [
      's',
      () => ['MSET', 'lcsA', pick(['ohmytext', 'abc', '', 'aaaa', 'xyz']), 'lcsB', pick(['mynewtext', 'bca', 'aa'])],
    ],
    [
      's',
      () => [
        'LCS',
        pick(['lcsA', 'lcsB', 'lcsA', 'h1', 'nokey']),
        pick(['lcsB', 'lcsA', 'l1', 'nokey']),
        ...some(() => pick(['LEN', 'IDX', 'WITHMATCHLEN', 'MINMATCHLEN', '1', 'X']), 0, 3),
      ],
    ],
    // keyspace
    ['s', () => [pick(['DEL', 'UNLINK', 'EXISTS', 'TOUCH']), ...some(key)]],
    ['s', () => ['TYPE', key()]],
    ['s', () => [pick(['RENAME', 'RENAMENX']), key(), key()]],
    ['s', () => ['COPY', key(), key(), ...some(() => pick(['REPLACE', 'DB', '0', 'DB', '99', 'X']), 0, 2)]],
    ['s', () => ['OBJECT', pick(['ENCODING', 'ENCODING', 'REFCOUNT', 'FREQ', 'HELP', 'NOPE']), key()]],
    [
      's',
      () => [
        pick(['EXPIRE', 'PEXPIRE']),
        key(),
        pick(['1000', '100000000', '0', '-1', 'abc', '9223372036854775807']),
        ...some(() => pick(['NX', 'XX', 'GT', 'LT', 'YY']), 0, 2),
      ],
    ],
    [
      's',
      () => [
        pick(['EXPIREAT', 'PEXPIREAT']),
        key(),
        pick([futureSec(), futureMs(), pastSec(), '0']),
        ...some(() => pick(['NX', 'XX', 'GT', 'LT']), 0, 1),
      ],
    ],
    ['s', () => [pick(['TTL', 'PTTL', 'EXPIRETIME', 'PEXPIRETIME']), key()]],
    ['s', () => ['PERSIST', key()]],
    ['s', () => ['KEYS', pick(PATTERNS)]],
    ['s', () => ['DBSIZE']],
    [
      's',
      () => [
        'SCANALL',
        ...some(
          () =>
            pick([
              ['MATCH', pick(PATTERNS)],
              ['COUNT', pick(['1', '3', '0', 'x'])],
              ['TYPE', pick(['string', 'hash', 'list', 'set', 'HASH', 'zset'])],
            ]),
          0,
          2,
        ).flat(),
      ],
    ],
    [
      's',
      () =>
        chance(0.1)
          ? [pick(['FLUSHALL', 'FLUSHDB']), ...(chance(0.3) ? [pick(['ASYNC', 'SYNC', 'X'])] : [])]
          : ['EXISTS', key()],
    ],
    // hashes
    [
      'h',
      () => [
        pick(['HSET', 'HMSET']),
        key(),
        ...some(() => [mem(), val()], 1, 3).flat(),
        ...(chance(0.1) ? [mem()] : []),
      ],
    ],
    ['h', () => ['HSETNX', key(), mem(), val()]],
    ['h', () => ['HGET', key(), mem()]],
    ['h', () => ['HMGET', key(), ...some(mem)]],
    ['h', () => ['HDEL', key(), ...some(mem)]],
    ['h', () => [pick(['HLEN', 'HKEYS', 'HVALS', 'HGETALL']), key()]],
    ['h', () => [pick(['HSTRLEN', 'HEXISTS']), key(), mem()]],
    ['h', () => ['HINCRBY', key(), mem(), int()]],
    ['h', () => ['HINCRBYFLOAT', key(), mem(), pick(FLOATS)]],
    ['h', () => ['HRANDFIELD', key(), ...(chance(0.7) ? [int(), ...(chance(0.5) ? ['WITHVALUES'] : [])] : [])]],
    ['h', () => ['HSCANALL', key(), ...(chance(0.5) ? ['MATCH', pick(['*', 'a*', '1*', '?'])] : [])]],
    // lists
    ['l', () => [pick(['LPUSH', 'RPUSH', 'LPUSHX', 'RPUSHX']), key(), ...some(mem)]],
    ['l', () => [pick(['LPOP', 'RPOP']), key(), ...(chance(0.5) ? [int()] : [])]],
    ['l', () => ['LLEN', key()]],
    ['l', () => ['LRANGE', key(), int(), int()]],
    ['l', () => ['LINDEX', key(), int()]],
    ['l', () => ['LSET', key(), int(), mem()]],
    ['l', () => ['LINSERT', key(), pick(['BEFORE', 'AFTER', 'MIDDLE']), mem(), mem()]],
    ['l', () => ['LREM', key(), int(), mem()]],
    ['l', () => ['LTRIM', key(), int(), int()]],
    [
      'l',
      () => [
        'LPOS',
        key(),
        mem(),
        ...some(() => pick([['RANK', int()], ['COUNT', int()], ['MAXLEN', int()], ['X']]), 0, 2).flat(),
      ],
    ],
    ['l', () => ['LMOVE', key(), key(), pick(['LEFT', 'RIGHT', 'UP']), pick(['LEFT', 'RIGHT'])]],
    ['l', () => ['RPOPLPUSH', key(), key()]],
    [
      'l',
      () => [
        'LMPOP',
        pick(['1', '2', '0', 'x', '5']),
        key(),
        key(),
        pick(['LEFT', 'RIGHT', 'X']),
        ...(chance(0.5) ? ['COUNT', int()] : []),
      ],
    ],
    // sets
    ['t', () => ['SADD', key(), ...some(mem)]],
    ['t', () => ['SREM', key(), ...some(mem)]],
    ['t', () => [pick(['SCARD', 'SMEMBERS']), key()]],
    ['t', () => ['SISMEMBER', key(), mem()]],
    ['t', () => ['SMISMEMBER', key(), ...some(mem)]],
    ['t', () => ['SRANDMEMBER', key(), ...(chance(0.7) ? [int()] : [])]],
    ['t', () => ['SPOP', key(), pick(['100000', '0', '-1', 'abc'])]],
    ['t', () => ['SMOVE', key(), key(), mem()]],
    ['t', () => [pick(['SINTER', 'SUNION', 'SDIFF']), ...some(key)]],
    ['t', () => [pick(['SINTERSTORE', 'SUNIONSTORE', 'SDIFFSTORE']), key(), ...some(key)]],
    [
      't',
      () => ['SINTERCARD', pick(['1', '2', '3', '0', 'x']), key(), key(), ...(chance(0.4) ? ['LIMIT', int()] : [])],
    ],
    ['t', () => ['SSCANALL', key(), ...(chance(0.5) ? ['MATCH', pick(['*', '1*', 'a', '?'])] : [])]],
    // connection
    ['s', () => [pick(['PING', 'ECHO']), ...(chance(0.5) ? [val()] : [])]],
    ['s', () => ['SELECT', pick(['0', '0', '99', 'x'])]],
    ['s', () => ['WATCH', ...some(key)]],
    ['s', () => ['UNWATCH']],
    ['s', () => ['NOSUCHCMD', key()]],
    [
      's',
      () =>
        pick([
          ['HELLO', pick(['3', '3', '2', '4', 'x'])],
          ['HELLO', '3', 'SETNAME', pick(['me', 'bad name'])],
          ['HELLO', '3', 'AUTH', 'default', 'pw'],
          ['HELLO', '3', 'BOGUS'],
          ['CLIENT', 'SETNAME', pick(['conn', 'bad name', ''])],
          ['CLIENT', 'GETNAME'],
          ['RESET'],
        ]),
    ],
    // Big collections: past 512 hash fields or 512 intset members (both become hashtables).
    ['h', () => ['HSET', key(), ...Array.from({ length: 520 }, (_, i) => [`f${i}`, String(i)]).flat()]],
    ['t', () => ['SADD', key(), ...Array.from({ length: 520 }, (_, i) => String(i * 7))]],
    ['s', () => [pick(['GET', 'SET', 'HSET', 'LPUSH', 'SADD', 'EXPIRE', 'OBJECT', 'CLIENT'])]],
  ];

  return (conn = Math.floor(r() * 2)): Op[] => {
    // One command, or now and then a transaction of several.
    if (chance(0.06)) {
      // (Not the SCAN loops: they need the replies of their own commands.)
      const inner = (): string[] => {
        for (;;) {
          const [k, f] = pick(families);
          kind = k;
          const argv = f();
          if (!argv[0]!.endsWith('ALL') || argv[0] === 'HGETALL') return argv;
        }
      };
      const body: Op[] = some(() => ({ conn, argv: inner() }), 0, 5);
      const end = pick(['EXEC', 'EXEC', 'EXEC', 'DISCARD']);
      const out: Op[] = [{ conn, argv: ['MULTI'] }, ...body];
      if (chance(0.1)) out.push({ conn, argv: ['MULTI'] });
      // The other connection may write a WATCHed key meanwhile.
      if (chance(0.3)) out.push({ conn: 1 - conn, argv: ['SET', pick(KEYS), val()] });
      out.push({ conn, argv: [end] });
      return out;
    }
    const [k, f] = pick(families);
    kind = k;
    return [{ conn, argv: f() }];
  };
}
