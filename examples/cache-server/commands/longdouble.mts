// INCRBYFLOAT and HINCRBYFLOAT compute in C's long double (x86-64: 64-bit mantissa) and
// print with "%.17Lf", trailing zeros cut. A JS double gives other digits (0.1 + 0.2 is
// "0.30000000000000004" as a double, "0.3" as a long double), so this does the same
// arithmetic exactly, in BigInt: parse as strtold does, round to a 64-bit mantissa,
// add, round again, print.

/** A finite long double: (-1)^neg × m × 2^e, m < 2^64 (0 for zero); or an infinity. */
export type LongDouble = { neg: boolean; m: bigint; e: number } | { neg: boolean; inf: true };

const TWO64 = 1n << 64n;
const TWO63 = 1n << 63n;
/** The largest binary exponent of the leading bit (LDBL_MAX_EXP - 1) and the smallest subnormal's. */
const MAX_EXP = 16383;
const MIN_EXP = -16445;
/** Redis's MAX_LONG_DOUBLE_CHARS: longer inputs are not numbers to it. */
const MAX_CHARS = 5 * 1024;

const bitLength = (n: bigint): number => (n === 0n ? 0 : n.toString(2).length);

/** n / d (both > 0) rounded half-to-even to 64 significant bits. */
function roundRational(neg: boolean, n: bigint, d: bigint): LongDouble {
  if (n === 0n) return { neg, m: 0n, e: 0 };
  let s = 64 - (bitLength(n) - bitLength(d));
  // The smallest exponent a long double has (subnormals): fewer bits below it.
  const scaled = (shift: number): [bigint, bigint, bigint] => {
    const num = shift >= 0 ? n << BigInt(shift) : n;
    const den = shift >= 0 ? d : d << BigInt(-shift);
    return [num / den, num % den, den];
  };
  let [q, r, den] = scaled(s);
  while (q >= TWO64) [q, r, den] = scaled(--s);
  while (q < TWO63) [q, r, den] = scaled(++s);
  if (-s < MIN_EXP) {
    s = -MIN_EXP;
    [q, r, den] = scaled(s);
  }
  const twice = 2n * r;
  if (twice > den || (twice === den && (q & 1n) === 1n)) q++;
  let e = -s;
  if (q === TWO64) {
    q >>= 1n;
    e++;
  }
  if (q === 0n) return { neg, m: 0n, e: 0 };
  if (e + 63 > MAX_EXP) return { neg, inf: true };
  return { neg, m: q, e };
}

/**
 * Redis's string2ld: strtold over the whole text, no leading space, no NaN, no overflow
 * to infinity or underflow to zero (a written "inf" is fine). undefined if not a number.
 */
export function parseLongDouble(text: string): LongDouble | undefined {
  if (text.length === 0 || text.length >= MAX_CHARS) return undefined;
  const m =
    /^([+-]?)(?:(inf(?:inity)?)|(nan(?:\([0-9a-z_]*\))?)|0x([0-9a-f]*)(?:\.([0-9a-f]*))?(?:p([+-]?[0-9]+))?|([0-9]*)(?:\.([0-9]*))?(?:e([+-]?[0-9]+))?)$/i.exec(
      text,
    );
  if (m === null) return undefined;
  const neg = m[1] === '-';
  if (m[2] !== undefined) return { neg, inf: true };
  if (m[3] !== undefined) return undefined;
  let n: bigint;
  let d = 1n;
  if (m[4] !== undefined || m[5] !== undefined) {
    // Hex: "0x" needs at least one digit (strtold would otherwise read just the "0").
    const int = m[4] ?? '';
    const frac = m[5] ?? '';
    if (int.length + frac.length === 0) return undefined;
    n = BigInt(`0x${int}${frac}` === '0x' ? '0' : `0x${int}${frac}`);
    let exp = (m[6] === undefined ? 0 : Number(m[6])) - 4 * frac.length;
    if (!Number.isFinite(exp) || Math.abs(exp) > 100000) exp = Math.sign(exp) * 100000;
    if (exp >= 0) n <<= BigInt(exp);
    else d <<= BigInt(-exp);
  } else {
    const int = m[7] ?? '';
    const frac = m[8] ?? '';
    if (int.length + frac.length === 0) return undefined;
    if (m[9] !== undefined && int.length + frac.length === 0) return undefined;
    n = BigInt(`${int}${frac}` || '0');
    let exp = (m[9] === undefined ? 0 : Number(m[9])) - frac.length;
    if (n === 0n) exp = 0;
    if (Math.abs(exp) > 20000) {
      // Far beyond the long double range: overflow or underflow, both refused.
      return undefined;
    }
    if (exp >= 0) n *= 10n ** BigInt(exp);
    else d = 10n ** BigInt(-exp);
  }
  const v = roundRational(neg, n, d);
  // strtold sets ERANGE on overflow and on underflow to zero: string2ld refuses both.
  if ('inf' in v) return undefined;
  if (v.m === 0n && n !== 0n) return undefined;
  return v;
}

/** a + b, rounded to a long double. */
export function addLongDouble(a: LongDouble, b: LongDouble): LongDouble {
  if ('inf' in a || 'inf' in b) {
    if ('inf' in a && 'inf' in b && a.neg !== b.neg) return { neg: false, inf: true }; // NaN, refused the same way
    return 'inf' in a ? a : b;
  }
  const e = Math.min(a.e, b.e);
  const sa = (a.neg ? -a.m : a.m) << BigInt(a.e - e);
  const sb = (b.neg ? -b.m : b.m) << BigInt(b.e - e);
  const sum = sa + sb;
  if (sum === 0n) return { neg: a.neg && b.neg, m: 0n, e: 0 };
  const neg = sum < 0n;
  const abs = neg ? -sum : sum;
  return e >= 0 ? roundRational(neg, abs << BigInt(e), 1n) : roundRational(neg, abs, 1n << BigInt(-e));
}

export const isInfinite = (v: LongDouble): boolean => 'inf' in v;

/** Redis's ld2string(LD_STR_HUMAN): "%.17Lf", trailing zeros and a bare point removed, "-0" as "0". */
export function formatLongDouble(v: LongDouble): string {
  if ('inf' in v) return v.neg ? '-inf' : 'inf';
  let q: bigint;
  if (v.e >= 0) q = (v.m << BigInt(v.e)) * 10n ** 17n;
  else {
    const num = v.m * 10n ** 17n;
    const den = 1n << BigInt(-v.e);
    q = num / den;
    const twice = 2n * (num % den);
    if (twice > den || (twice === den && (q & 1n) === 1n)) q++;
  }
  const digits = q.toString().padStart(18, '0');
  let out = `${v.neg ? '-' : ''}${digits.slice(0, -17)}.${digits.slice(-17)}`;
  out = out.replace(/0+$/, '').replace(/\.$/, '');
  return out === '-0' ? '0' : out;
}
