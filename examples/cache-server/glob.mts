// Glob-style matching exactly as Redis 7.0's stringmatchlen (src/util.c) answers it, in
// O(pattern x subject) time and O(1) memory.
//
// Redis matches recursively: each `*` tries the rest of the pattern at every later
// position. Before 7.0.9 that was exponential in the number of stars (CVE-2022-36021:
// `KEYS *a*a*a*a*a*a*a*a*a*a*b` against one 40-byte key ran for minutes); 7.0.9 cut it
// short with `skipLongerMatches`, and later releases added a nesting limit. Here the
// pattern is walked once per attempt with the usual greedy algorithm: a star first
// matches nothing, and on a mismatch only the *last* star seen takes one more byte. That
// is exact because every other token (a byte, `?`, `[...]`, `\x`) matches exactly one
// byte, so a later star can always absorb what an earlier one would have. Tokens are
// parsed in place from the pattern bytes (no compiled form: a hostile 100 MB pattern costs
// no memory beyond itself), with Redis's parse, quirks included:
//
// - an empty subject matches only the empty pattern (Redis's loop runs while both the
//   pattern and the subject have bytes left; KEYS and SCAN treat a lone `*` as "all keys"
//   before matching, see matchesEverything);
// - `[` without `]` is a class of the rest of the pattern; `[^` at the end matches any byte;
// - in a class, `\x` is x compared case-sensitively even when matching without case, `a-z`
//   is a range (swapped if reversed, compared as C's signed chars, lower-cased after the
//   swap when matching without case), and a `]` right after `-` ends the range, not the class;
// - `\` at the end of the pattern is a literal backslash;
// - a pattern with more than 1000 stars (runs of stars count once, a final one not at all)
//   matches nothing: Redis gives up at recursion depth 1000.
//
// Subjects are latin1 strings (one char per byte, as the cache keeps keys) or byte arrays.

const STAR = 0x2a; // *
const QUESTION = 0x3f; // ?
const OPEN = 0x5b; // [
const CLOSE = 0x5d; // ]
const CARET = 0x5e; // ^
const DASH = 0x2d; // -
const BACKSLASH = 0x5c; // \

/** Redis gives up below this many nested star recursions (stringmatchlen_impl's `nesting > 1000`). */
const MAX_NESTING = 1000;

/** C's tolower in the "C" locale, on a byte value. */
const lower = (c: number): number => (c >= 0x41 && c <= 0x5a ? c + 32 : c);
/**
 * A byte as C's char on x86, where it is signed: Redis compares class ranges as chars, so
 * there `[a-\xff]` is the range -1..97. (On arm64, char is unsigned and Redis itself answers
 * ranges over bytes >= 0x80 differently; this follows x86.)
 */
const signed = (c: number): number => (c >= 128 ? c - 256 : c);

export type GlobSubject = string | Uint8Array;
export type GlobMatcher = (subject: GlobSubject) => boolean;

/** Where the token at `j` ends, for a pattern that is not being matched (counting stars). */
function skipToken(p: Uint8Array, j: number): number {
  const c = p[j];
  if (c === OPEN) return matchClass(p, j, -1, false);
  if (c === BACKSLASH && p.length - j >= 2) return j + 2;
  return j + 1;
}

/**
 * Runs Redis's class loop from the `[` at `j` against byte `c` (or -1: parse only). Returns
 * the index after the class, or -1 when `c` was given and is not in it.
 */
function matchClass(p: Uint8Array, j: number, c: number, nocase: boolean): number {
  const plen = p.length;
  // Bytes past the end read as 0, as the NUL after Redis's pattern does.
  const at = (k: number): number => (k < plen ? p[k]! : 0);
  let k = j + 1;
  const not = at(k) === CARET;
  if (not) k++;
  let match = false;
  for (;;) {
    const rem = plen - k;
    const pc = at(k);
    if (pc === BACKSLASH && rem >= 2) {
      k++;
      if (p[k] === c) match = true;
    } else if (pc === CLOSE) {
      break;
    } else if (rem <= 0) {
      // Unterminated: the class is the rest of the pattern.
      k = plen - 1;
      break;
    } else if (rem >= 3 && p[k + 1] === DASH) {
      if (c >= 0) {
        let start = signed(pc);
        let end = signed(p[k + 2]!);
        let x = signed(c);
        if (start > end) [start, end] = [end, start];
        if (nocase) {
          start = lower(start);
          end = lower(end);
          x = lower(x);
        }
        if (x >= start && x <= end) match = true;
      }
      k += 2;
    } else if (nocase ? lower(pc) === lower(c) : pc === c) {
      match = true;
    }
    k++;
  }
  if (not) match = !match;
  return c < 0 || match ? k + 1 : -1;
}

/** Redis's stringmatchlen: whether all of `s` matches all of `p`. */
function matches(p: Uint8Array, s: GlobSubject, nocase: boolean): boolean {
  const plen = p.length;
  const n = s.length;
  if (n === 0 || plen === 0) return n === 0 && plen === 0;
  const str = typeof s === 'string' ? s : null;
  const bytes = typeof s === 'string' ? null : s;
  let i = 0;
  let j = 0;
  /** The pattern index after the last star, and the subject index it is matched up to. */
  let starJ = -1;
  let starI = 0;
  while (i < n) {
    if (j < plen) {
      const pc = p[j]!;
      if (pc === STAR) {
        do j++;
        while (j < plen && p[j] === STAR);
        // A final star takes whatever is left (there is something left: i < n).
        if (j === plen) return true;
        starJ = j;
        starI = i;
        continue;
      }
      const c = str !== null ? str.charCodeAt(i) : bytes![i]!;
      let next = -1;
      if (pc === QUESTION) next = j + 1;
      else if (pc === OPEN) next = matchClass(p, j, c, nocase);
      else {
        // `\x` is x; a `\` that ends the pattern is itself.
        const lit = pc === BACKSLASH && plen - j >= 2 ? p[j + 1]! : pc;
        if (nocase ? lower(lit) === lower(c) : lit === c) next = pc === BACKSLASH && plen - j >= 2 ? j + 2 : j + 1;
      }
      if (next >= 0) {
        j = next;
        i++;
        continue;
      }
    }
    if (starJ < 0) return false;
    i = ++starI;
    j = starJ;
  }
  while (j < plen && p[j] === STAR) j++;
  return j === plen;
}

/** Stars Redis recurses into: runs of stars count once, and a run that ends the pattern not at all. */
export function nestedStars(pattern: Uint8Array): number {
  let count = 0;
  let j = 0;
  while (j < pattern.length) {
    if (pattern[j] === STAR) {
      while (j < pattern.length && pattern[j] === STAR) j++;
      if (j < pattern.length) count++;
    } else j = skipToken(pattern, j);
  }
  return count;
}

const bytesOf = (x: Buffer | Uint8Array | string): Uint8Array => (typeof x === 'string' ? Buffer.from(x, 'latin1') : x);

/**
 * A predicate answering as Redis 7.0's `stringmatchlen(pattern, subject, nocase)`.
 * `pattern` is bytes, or a latin1 string. The pattern is copied: the caller may reuse its
 * buffer.
 */
export function globMatcher(pattern: Buffer | Uint8Array | string, nocase = false): GlobMatcher {
  const p = Uint8Array.from(bytesOf(pattern));
  if (nestedStars(p) > MAX_NESTING) return () => false;
  return (subject) => matches(p, subject, nocase);
}

/**
 * KEYS, SCAN, HSCAN and SSCAN skip matching for the pattern `*` (so that it also lists
 * an empty key or field, which stringmatchlen would not match).
 */
export function matchesEverything(pattern: Buffer | Uint8Array | string): boolean {
  const p = bytesOf(pattern);
  return p.length === 1 && p[0] === STAR;
}
