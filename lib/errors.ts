/**
 * Errors. Every failure the library reports is a `KsmError` with a stable `code`
 * (errno names from the kernel, or the library's own `ERR_KSM_*`), or Node's own
 * `TypeError`/`RangeError` for bad arguments, like Node's core modules do.
 */

/** The library's own error codes. */
export type KsmErrorCode =
  | 'ERR_KSM_UNSUPPORTED'
  | 'ERR_KSM_NOT_OWNED'
  | 'ERR_KSM_FREED'
  | 'ERR_KSM_DISABLED'
  | 'ERR_KSM_PERMISSION'
  | 'ERR_KSM_TIMEOUT'
  | 'ERR_KSM_PARSE'
  | 'ERR_KSM_CLOSED';

/**
 * Every failure node-ksm reports, other than bad arguments (which get Node's own
 * `TypeError` `ERR_INVALID_ARG_TYPE` / `ERR_INVALID_ARG_VALUE` and `RangeError`
 * `ERR_OUT_OF_RANGE`). Its `code` is stable:
 *
 * - an errno name from the kernel (`EINVAL`, `ENOMEM`, `EAGAIN`, `EPERM`, `EACCES`,
 *   `EROFS`, `EBUSY`, ...), with `errno` and `syscall` as in Node's fs errors;
 * - or one of node-ksm's own ({@link KsmErrorCode}): `ERR_KSM_UNSUPPORTED` (no KSM or no
 *   addon here), `ERR_KSM_NOT_OWNED` (a buffer node-ksm did not make),
 *   `ERR_KSM_FREED` (used after `free()` or `release()`), `ERR_KSM_DISABLED` (ksmd is off
 *   and may not be started), `ERR_KSM_PERMISSION` (not root, or a read-only
 *   `/sys/kernel/mm/ksm`: the message says how to fix it), `ERR_KSM_TIMEOUT`,
 *   `ERR_KSM_CLOSED` (a closed {@link Arena}), `ERR_KSM_PARSE` (a kernel file or state
 *   file that does not parse).
 */
export class KsmError extends Error {
  /** `ERR_KSM_*`, or an errno name such as `EINVAL`, `ENOMEM`, `EACCES`, `EBUSY`. */
  code!: string;
  /** Negative errno, as in Node's fs errors (only for kernel errors). */
  errno?: number;
  /** The system call or file operation that failed (only for kernel errors). */
  syscall?: string;
  /** The file involved, when there is one. */
  path?: string;

  constructor(
    message: string,
    code?: string,
    extra?: { errno?: number; syscall?: string; path?: string; cause?: unknown },
  ) {
    super(message, extra?.cause !== undefined ? { cause: extra.cause } : undefined);
    this.name = 'KsmError';
    if (code !== undefined) this.code = code;
    if (extra?.errno !== undefined) this.errno = extra.errno;
    if (extra?.syscall !== undefined) this.syscall = extra.syscall;
    if (extra?.path !== undefined) this.path = extra.path;
  }
}

/** A KsmError for a failed file operation (`fs` errors carry code/errno/syscall/path). */
export function fromFsError(err: unknown, message?: string): KsmError {
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === 'string' ? e.code : 'EIO';
  const text = message ?? (e instanceof Error ? e.message : String(err));
  return new KsmError(text, code, { errno: e?.errno, syscall: e?.syscall, path: e?.path, cause: err });
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return `function ${(value as { name?: string }).name || '<anonymous>'}`;
  if (typeof value === 'object') {
    const ctor = value.constructor?.name;
    return ctor ? `an instance of ${ctor}` : 'an object';
  }
  const primitive = value as string | number | bigint | boolean | symbol; // all that is left
  let shown = String(primitive);
  if (shown.length > 28) shown = `${shown.slice(0, 25)}...`;
  if (typeof value === 'string') shown = `'${shown}'`;
  return `type ${typeof value} (${shown})`;
}

/** Node's `ERR_INVALID_ARG_TYPE`. */
export function invalidArgType(name: string, expected: string, actual: unknown): TypeError {
  const err = new TypeError(`The "${name}" argument must be ${expected}. Received ${describe(actual)}`);
  (err as NodeJS.ErrnoException).code = 'ERR_INVALID_ARG_TYPE';
  return err;
}

/** Node's `ERR_OUT_OF_RANGE`. */
export function outOfRange(name: string, range: string, actual: unknown): RangeError {
  const err = new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${String(actual)}`);
  (err as NodeJS.ErrnoException).code = 'ERR_OUT_OF_RANGE';
  return err;
}

/** Validates a whole number in [min, max]; returns it. */
export function validateInteger(value: unknown, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw outOfRange(name, `an integer >= ${min} and <= ${max}`, value);
  }
  return value;
}

export function validateBoolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw invalidArgType(name, 'of type boolean', value);
  return value;
}
