/**
 * The cache server's glob matcher: Redis 7.0's stringmatchlen, proven against the real
 * redis-server (KEYS, and COMMAND LIST FILTERBY PATTERN for matching without case) over
 * seeded random patterns and keys, and fast on the patterns that made Redis hang before
 * 7.0.9 (CVE-2022-36021).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type * as GlobModule from '../examples/cache-server/glob.mjs' with { 'resolution-mode': 'import' };

// The example is an ES module; this test file is CommonJS, so it is loaded dynamically.
type Glob = typeof GlobModule;
let globMatcher: Glob['globMatcher'];
let matchesEverything: Glob['matchesEverything'];
let nestedStars: Glob['nestedStars'];
beforeAll(async () => {
  ({ globMatcher, matchesEverything, nestedStars } = await import('../examples/cache-server/glob.mjs'));
});

const HAVE_REDIS = spawnSync('redis-server', ['--version']).status === 0;
const REQUIRE = process.env.KSM_REQUIRE === '1';

/** xorshift32: the same sequence for the same seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

const SEED = process.env.SEED !== undefined ? Number(process.env.SEED) : (Date.now() ^ (process.pid << 16)) >>> 0;

describe('globMatcher: Redis semantics', () => {
  const cases: Array<[string, string, boolean]> = [
    ['', '', true],
    ['a', 'a', true],
    ['a', 'A', false],
    ['*', 'anything', true],
    // stringmatchlen never matches an empty subject against a non-empty pattern, stars or not.
    ['*', '', false],
    ['**', '', false],
    ['', 'a', false],
    ['a*', 'a', true],
    ['a**', 'a', true],
    ['*a', 'a', true],
    ['h?llo', 'hello', true],
    ['h?llo', 'hllo', false],
    ['h*llo', 'hllo', true],
    ['h*llo', 'heeeello', true],
    ['h[ae]llo', 'hallo', true],
    ['h[ae]llo', 'hillo', false],
    ['h[^e]llo', 'hallo', true],
    ['h[^e]llo', 'hello', false],
    ['h[a-b]llo', 'hbllo', true],
    ['h[b-a]llo', 'hallo', true], // a reversed range is swapped
    ['h\\*llo', 'h*llo', true],
    ['h\\*llo', 'hello', false],
    ['\\', '\\', true], // a final backslash is literal
    ['a\\', 'a\\', true],
    ['[', 'x', false], // `[` at the end: an empty class
    ['[^', 'x', true], // `[^` at the end: anything
    ['[a', 'a', true], // unterminated: the class is the rest
    ['[ab', 'b', true],
    ['[\\]', ']', true], // an escaped `]` does not end the class
    ['[\\', '\\', true], // a backslash that ends the pattern is itself, in a class too
    ['[a-]b]', ']', true], // `]` right after `-` ends the range a..], not the class
    ['[a-]b]', 'b', true],
    ['[a-]b]', ']b]', false],
    ['[*]', '*', true],
    ['[*]', 'a', false],
    ['*[', 'ab', false],
    ['\\[a]', '[a]', true],
    ['a*b*c', 'aXbYc', true],
    ['a*b*c', 'aXbYcZ', false],
    ['*a*b', 'aaaaab', true],
    ['*a*a*a*a*a*a*a*a*a*a*b', 'a'.repeat(40), false],
  ];
  test.each(cases)('%j against %j: %s', (pattern, subject, expected) => {
    expect(globMatcher(pattern)(subject)).toBe(expected);
    expect(globMatcher(Buffer.from(pattern, 'latin1'))(Buffer.from(subject, 'latin1'))).toBe(expected);
  });

  test('without case: literals and ranges fold, an escaped byte in a class does not', () => {
    expect(globMatcher('HeLLo', true)('hello')).toBe(true);
    expect(globMatcher('h[A-Z]llo', true)('hello')).toBe(true);
    expect(globMatcher('h[E]llo', true)('hello')).toBe(true);
    expect(globMatcher('h[\\E]llo', true)('hello')).toBe(false);
    // Swapped first, lower-cased after: Z..a becomes z..a, which holds nothing.
    expect(globMatcher('[Z-a]', true)('z')).toBe(false);
    expect(globMatcher('[Z-a]', false)('_')).toBe(true);
  });

  test('bytes >= 0x80 in ranges compare as signed chars, as on x86', () => {
    // [a-\xff] is the range -1..97: bytes 0..0x61 and 0xff, not 0x80..0xfe.
    const m = globMatcher(Buffer.from([0x5b, 0x61, 0x2d, 0xff, 0x5d]));
    expect(m(Buffer.from([0x30]))).toBe(true);
    expect(m(Buffer.from([0xff]))).toBe(true);
    expect(m(Buffer.from([0x80]))).toBe(false);
    expect(m(Buffer.from([0x62]))).toBe(false);
    expect(m('\xff')).toBe(true);
  });

  test('more than 1000 nested stars match nothing, as Redis gives up there', () => {
    const key = 'a'.repeat(1100);
    expect(nestedStars(Buffer.from(`${'*a'.repeat(1000)}*`))).toBe(1000);
    expect(globMatcher(`${'*a'.repeat(1000)}*`)(key)).toBe(true);
    expect(globMatcher(`${'*a'.repeat(1001)}*`)(key)).toBe(false);
    // Runs of stars count once; escaped stars and stars in classes not at all.
    expect(nestedStars(Buffer.from('***a**b*'))).toBe(2);
    expect(nestedStars(Buffer.from('\\*a[*]b'))).toBe(0);
  });

  test('the pattern is copied: reusing its buffer changes nothing', () => {
    const buf = Buffer.from('a*');
    const m = globMatcher(buf);
    buf.write('zz');
    expect(m('abc')).toBe(true);
  });

  test('matchesEverything: exactly the pattern `*`', () => {
    expect(matchesEverything('*')).toBe(true);
    expect(matchesEverything(Buffer.from('*'))).toBe(true);
    expect(matchesEverything('**')).toBe(false);
    expect(matchesEverything('')).toBe(false);
  });

  test('hostile: 50 stars against 64 KiB keys finishes promptly', () => {
    const keys = [
      'a'.repeat(65536),
      `${'a'.repeat(65535)}b`,
      'ab'.repeat(32768),
      Buffer.alloc(65536, 'a').toString('latin1'),
    ];
    const patterns = [
      `${'*a'.repeat(50)}*b`,
      `${'*a'.repeat(49)}*c`,
      '*'.repeat(50) + 'c',
      `${'*?'.repeat(50)}c`,
      `${'*[a-b]'.repeat(50)}c`,
    ];
    const t0 = performance.now();
    let hits = 0;
    for (const p of patterns) for (const k of keys) if (globMatcher(p)(k)) hits++;
    const ms = performance.now() - t0;
    // Only the first pattern ends in b, and keys 2 and 3 end in b.
    expect(hits).toBe(2);
    // A liveness bound: the backtracking matcher this replaces ran for minutes on one of these.
    expect(ms).toBeLessThan(10_000);
  });
});

/** Random bytes from an alphabet weighted towards what the parser cares about. */
function randomBytes(rand: () => number, maxLen: number, special: boolean): Buffer {
  const alphabet = special
    ? [0x2a, 0x2a, 0x3f, 0x5b, 0x5b, 0x5d, 0x5d, 0x5e, 0x2d, 0x5c, 0x5c, 0x61, 0x62, 0x41, 0x00, 0x80, 0xff, 0x5f]
    : [0x61, 0x62, 0x61, 0x2a, 0x5d, 0x2d, 0x5c, 0x41, 0x00, 0x80, 0xff, 0x5f, 0x5b];
  const n = Math.floor(rand() * (maxLen + 1));
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = alphabet[Math.floor(rand() * alphabet.length)]!;
  return out;
}

describe.runIf(HAVE_REDIS || REQUIRE)('globMatcher against redis-server', () => {
  let dir: string;
  let proc: ChildProcess;
  let redis: Redis;

  beforeAll(async () => {
    if (!HAVE_REDIS) throw new Error('KSM_REQUIRE=1 but redis-server is not installed (bash .ci/deps.sh)');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'glob-redis-'));
    const sock = path.join(dir, 'redis.sock');
    // A unix socket and no TCP port: nothing to collide with other test runs.
    proc = spawn(
      'redis-server',
      ['--port', '0', '--unixsocket', sock, '--save', '', '--appendonly', 'no', '--dir', dir],
      { stdio: 'ignore' },
    );
    for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
    redis = new Redis({ path: sock, lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
  }, 30_000);

  afterAll(async () => {
    await redis?.quit().catch(() => {});
    proc?.kill('SIGKILL');
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('KEYS: random binary patterns over random binary keys', async () => {
    console.log(`glob differential seed ${SEED} (replay: SEED=${SEED} npx vitest run test/cache-server-glob.test.ts)`);
    const rand = rng(SEED);
    let compared = 0;
    let matched = 0;
    for (let round = 0; round < 80; round++) {
      await redis.flushall();
      const keys = new Map<string, Buffer>();
      for (let k = 0; k < 60; k++) {
        const key = randomBytes(rand, 8, false);
        keys.set(key.toString('latin1'), key);
      }
      const pipe = redis.pipeline();
      for (const key of keys.values()) pipe.set(key, '1');
      await pipe.exec();
      for (let q = 0; q < 40; q++) {
        const pattern = randomBytes(rand, 10, true);
        const theirs = ((await redis.callBuffer('KEYS', pattern)) as Buffer[]).map((b) => b.toString('latin1')).sort();
        const m = globMatcher(pattern);
        const ours = [...keys.keys()].filter((k) => matchesEverything(pattern) || m(k)).sort();
        expect(ours, `seed ${SEED}, pattern ${JSON.stringify(pattern.toString('latin1'))}`).toEqual(theirs);
        compared += keys.size;
        matched += ours.length;
      }
    }
    // The random patterns must exercise both outcomes to prove anything.
    expect(matched).toBeGreaterThan(100);
    expect(compared - matched).toBeGreaterThan(1000);
  }, 120_000);

  test('without case: COMMAND LIST FILTERBY PATTERN, which Redis matches with nocase', async () => {
    const names = ((await redis.call('COMMAND', 'LIST')) as string[]).map(String);
    expect(names.length).toBeGreaterThan(100);
    const rand = rng(SEED ^ 0x5a5a5a5a);
    const pick = (xs: string | readonly string[]): string => xs[Math.floor(rand() * xs.length)]!;
    const alphabet = 'aeEgGtTsS*?[]^-|\\xX';
    let nonEmpty = 0;
    for (let q = 0; q < 300; q++) {
      let pattern = '';
      if (q % 2 === 0) {
        const len = 1 + Math.floor(rand() * 7);
        for (let i = 0; i < len; i++) pattern += pick(alphabet);
      } else {
        // A real name, mangled: case flipped, bytes turned into ?, * or a class, a star added.
        for (const ch of pick(names)) {
          const r = rand();
          if (r < 0.15) pattern += ch.toUpperCase();
          else if (r < 0.25) pattern += '?';
          else if (r < 0.3) pattern += '*';
          else if (r < 0.37) pattern += `[${ch.toUpperCase()}-${pick(['z', 'Z', 'a', '|'])}]`;
          else if (r < 0.42) pattern += `[^${pick(alphabet)}]`;
          else if (r < 0.45) pattern += `\\${ch}`;
          else pattern += ch;
        }
        if (rand() < 0.5) pattern = pattern.slice(0, Math.floor(rand() * pattern.length)) + '*';
      }
      const theirs = ((await redis.call('COMMAND', 'LIST', 'FILTERBY', 'PATTERN', pattern)) as string[])
        .map(String)
        .sort();
      const m = globMatcher(pattern, true);
      const ours = names.filter((n) => m(n)).sort();
      expect(ours, `seed ${SEED}, pattern ${JSON.stringify(pattern)}`).toEqual(theirs);
      if (ours.length > 0) nonEmpty++;
    }
    expect(nonEmpty).toBeGreaterThan(50);
  }, 60_000);

  test('the nesting limit and the empty key, as redis-server answers them', async () => {
    await redis.flushall();
    await redis.set('', '1');
    await redis.set('a'.repeat(1100), '1');
    for (const pattern of ['*', '**', '?*', `${'*a'.repeat(1000)}*`, `${'*a'.repeat(1001)}*`, '[^']) {
      const theirs = ((await redis.callBuffer('KEYS', pattern)) as Buffer[]).map((b) => b.toString('latin1')).sort();
      const m = globMatcher(pattern);
      const ours = ['', 'a'.repeat(1100)].filter((k) => matchesEverything(pattern) || m(k)).sort();
      expect(ours, pattern.slice(0, 20)).toEqual(theirs);
    }
  });
});
