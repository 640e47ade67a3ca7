/**
 * The public types, as a consumer sees them through the package's "exports" (dist/*.d.ts):
 * run by `npm run test:package` (vitest --typecheck). A rename or a loosened type here is
 * a breaking change for users, so it fails this file.
 */
import { describe, expectTypeOf, it } from 'vitest';
import {
  Arena,
  KsmError,
  alloc,
  boost,
  bufferStats,
  configure,
  free,
  from,
  markMergeable,
  pageSize,
  processMerging,
  processStats,
  readSettings,
  setMergeable,
  setProcessMerging,
  support,
  systemStats,
  waitForMerge,
  type ArenaStats,
  type BoostHandle,
  type BufferStats,
  type KsmSettings,
  type ProcessStats,
  type Support,
  type SystemStats,
  type WaitResult,
} from 'node-ksm';
import { expectMerged, withKsm } from 'node-ksm/testing';
import { collectKsmMetrics, type KsmMetrics } from 'node-ksm/prometheus';
import type { Registry } from 'prom-client';

describe('node-ksm', () => {
  it('memory', () => {
    expectTypeOf(pageSize).toEqualTypeOf<number>();
    expectTypeOf(alloc).parameters.toEqualTypeOf<[size: number, options?: { mergeable?: boolean }]>();
    expectTypeOf(alloc(1)).toEqualTypeOf<Buffer>();
    expectTypeOf(from('text')).toEqualTypeOf<Buffer>();
    expectTypeOf(from(new Uint8Array(1))).toEqualTypeOf<Buffer>();
    expectTypeOf(free).returns.toEqualTypeOf<boolean>();
    expectTypeOf(free).toBeCallableWith(new Float64Array(1));
    expectTypeOf(free).toBeCallableWith(new ArrayBuffer(1));
    expectTypeOf(setMergeable).toBeCallableWith(alloc(1), false);
    expectTypeOf(markMergeable(new Uint8Array(1))).toEqualTypeOf<{ offset: number; length: number }>();
    expectTypeOf(setProcessMerging).parameters.toEqualTypeOf<[on: boolean]>();
    expectTypeOf(processMerging()).toEqualTypeOf<boolean>();
    // @ts-expect-error size is a number
    alloc('1');
    // @ts-expect-error no such option
    alloc(1, { huge: true });
    // @ts-expect-error strings are not buffers
    free('x');
  });

  it('stats', () => {
    expectTypeOf(processStats()).toEqualTypeOf<ProcessStats>();
    expectTypeOf(processStats).toBeCallableWith(1);
    expectTypeOf(systemStats()).toEqualTypeOf<SystemStats>();
    expectTypeOf(systemStats().savedBytes).toEqualTypeOf<number>();
    expectTypeOf(bufferStats(alloc(1))).toEqualTypeOf<BufferStats>();
    expectTypeOf<BufferStats>().toHaveProperty('mergedPages').toEqualTypeOf<number>();
    expectTypeOf(support()).toEqualTypeOf<Support>();
    expectTypeOf<Support['available']>().toEqualTypeOf<boolean>();
    expectTypeOf<Support['reasons']>().toEqualTypeOf<string[]>();
    expectTypeOf<Support['mode']>().toEqualTypeOf<'external' | 'window' | 'none'>();
  });

  it('control', () => {
    expectTypeOf(readSettings()).toEqualTypeOf<KsmSettings>();
    expectTypeOf(configure).parameters.toEqualTypeOf<[partial: Partial<KsmSettings>]>();
    expectTypeOf(configure({})).toEqualTypeOf<KsmSettings>();
    expectTypeOf(boost()).resolves.toEqualTypeOf<BoostHandle>();
    expectTypeOf<BoostHandle>().toHaveProperty(Symbol.asyncDispose);
    expectTypeOf(waitForMerge()).resolves.toEqualTypeOf<WaitResult>();
    expectTypeOf(waitForMerge).toBeCallableWith(alloc(1), {
      ratio: 0.9,
      timeoutMs: 1000,
      signal: AbortSignal.timeout(1),
    });
    // @ts-expect-error a typo in a setting name is caught
    configure({ pageToScan: 100 });
  });

  it('errors and arena', () => {
    expectTypeOf(new KsmError('m', 'ERR_KSM_UNSUPPORTED')).toExtend<Error>();
    expectTypeOf<KsmError['code']>().toEqualTypeOf<string>();
    const arena = new Arena({ chunkSize: 1 << 20 });
    expectTypeOf(arena.alloc(1)).toEqualTypeOf<Buffer>();
    expectTypeOf(arena.allocUnsafe(1)).toEqualTypeOf<Buffer>();
    expectTypeOf(arena.stats()).toEqualTypeOf<ArenaStats>();
  });
});

describe('node-ksm/testing and node-ksm/prometheus', () => {
  it('types the helpers', () => {
    expectTypeOf(withKsm(() => 1)).resolves.toEqualTypeOf<number>();
    expectTypeOf(expectMerged).toBeCallableWith(alloc(1), 0.9);
    expectTypeOf(collectKsmMetrics).parameters.toEqualTypeOf<
      [registry?: Registry, options?: { process?: boolean; pid?: number; groups?: boolean | { limit?: number } }]
    >();
    expectTypeOf(collectKsmMetrics()).toEqualTypeOf<KsmMetrics>();
  });
});
