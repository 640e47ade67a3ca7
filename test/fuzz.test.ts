/**
 * A bounded run of the API fuzzer (fuzz/run.mts: each seed in its own child process), so
 * `npm test` proves on every run that random call sequences with bad arguments neither
 * crash nor leak; CI runs the long one under ASan. Below it, every bug the fuzzer found
 * as a regression test of its own.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { binding } from '../lib/binding';
import { from, markMergeable, pageSize } from '../lib/memory';
import { bufferStats } from '../lib/buffer-stats';
import type { FuzzReport } from '../fuzz/run.mjs' with { 'resolution-mode': 'import' };
import { requireNative } from './helpers/ksm';
import { testSeed } from './helpers/seed';

const ROOT = path.join(__dirname, '..');
const SEEDS = Number(process.env.FUZZ_SEEDS ?? 20);
const OPS = Number(process.env.FUZZ_OPS ?? 500);

function detached<T extends ArrayBuffer>(ab: T): T {
  structuredClone(ab, { transfer: [ab] });
  return ab;
}

describe('API fuzzer', () => {
  it(`${SEEDS} seeds × ${OPS} operations: no crash, only documented errors, no mapping left behind`, (ctx) => {
    requireNative(ctx);
    // A start that changes each run covers new sequences; a failing seed prints its own
    // replay command, and SEED= replays the whole run.
    const start = 1 + testSeed(`fuzz seeds from --start`);
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        path.join(ROOT, 'fuzz/run.mts'),
        '--seeds',
        String(SEEDS),
        '--ops',
        String(OPS),
        '--start',
        String(start),
        '--json',
      ],
      {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 600_000,
      },
    );
    const report = JSON.parse(r.stdout.trim().split('\n').pop()!) as FuzzReport;
    expect(report.failures, r.stderr).toEqual([]);
    expect(report.passed).toBe(SEEDS);
    // The run did exercise the error paths, not only the happy ones.
    expect(report.errors['TypeError:ERR_INVALID_ARG_TYPE']).toBeGreaterThan(0);
    expect(report.errors['KsmError:ERR_KSM_NOT_OWNED']).toBeGreaterThan(0);
  }, 600_000);
});

describe('regressions found by the fuzzer', () => {
  it('from() copies a detached ArrayBuffer or view as an empty buffer', () => {
    expect(from(detached(new ArrayBuffer(64))).length).toBe(0);
    const ab = new ArrayBuffer(64);
    const dv = new DataView(ab, 8, 8);
    const u16 = new Uint16Array(ab, 2, 4);
    detached(ab);
    expect(from(dv).length).toBe(0);
    expect(from(u16).length).toBe(0);
  });

  it('markMergeable() refuses a view over a SharedArrayBuffer with ERR_INVALID_ARG_TYPE', () => {
    const view = new Uint8Array(new SharedArrayBuffer(pageSize * 2));
    expect(() => markMergeable(view)).toThrow(
      expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => markMergeable(new DataView(new SharedArrayBuffer(pageSize * 2)))).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
  });

  // Found by the fuzzer: bufferStats read byteOffset of a detached DataView, whose getter
  // throws V8's own TypeError (no code).
  it('bufferStats() of a detached DataView answers without a code-less TypeError', () => {
    const dv = new DataView(new ArrayBuffer(pageSize * 2), 8, 8);
    detached(dv.buffer);
    let thrown: unknown;
    try {
      bufferStats(dv);
    } catch (err) {
      thrown = err;
    }
    expect(thrown === undefined || (thrown as { code?: string }).code !== undefined).toBe(true);
  });

  // Found by the fuzzer: the addon asked napi_get_arraybuffer_info about the buffer of a
  // view over a SharedArrayBuffer, which fails, and node-addon-api threw a plain Error.
  it('the addon itself refuses a SharedArrayBuffer view with a coded error', (ctx) => {
    requireNative(ctx);
    let thrown: unknown;
    try {
      binding!.addressOf(new Uint8Array(new SharedArrayBuffer(pageSize)));
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
  });
});
