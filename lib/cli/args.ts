/**
 * Flag parsing for node-ksm: Node's own `util.parseArgs` (strict, so a mistyped flag is
 * an error rather than silently ignored), plus the value parsers the commands share.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A mistake in how the command was called: exit code 2 and the usage text. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type Options = NonNullable<ParseArgsConfig['options']>;

/** Flags every command accepts. */
export const COMMON: Options = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

export type Values = Record<string, string | boolean | undefined>;

/** Parses a command's flags; any unknown flag or stray word is a UsageError. */
export function parseFlags(args: string[], options: Options): Values {
  try {
    const { values } = parseArgs({ args, options: { ...COMMON, ...options }, strict: true, allowPositionals: false });
    return values as Values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "500ms", "1.5s", "2m", "1h" or a bare number of seconds → milliseconds. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`--${flag} must be a duration such as 500ms, 10s, 2m or 1h (got "${text}")`);
  const ms = Number(m[1]) * UNITS[m[2] ?? 's']!;
  if (!Number.isFinite(ms) || ms > 2 ** 31 - 1) throw new UsageError(`--${flag} is too long (got "${text}")`);
  return Math.round(ms);
}

/** A whole number ≥ min given as a flag's text. */
export function parseCount(text: string, flag: string, min = 0): number {
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(Number(text)) || Number(text) < min) {
    throw new UsageError(`--${flag} must be a whole number >= ${min} (got "${text}")`);
  }
  return Number(text);
}

export function str(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}
