import { getEventListeners } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { XMLValidator } from 'fast-xml-parser';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { policySettings, runBenchmark, startWorkers } from '../lib/benchmark';
import { benchArgs, benchCommand } from '../lib/cli/bench';
import { readSettings } from '../lib/control';
import { pageSize } from '../lib/memory';
import { lockKsm, requireKsm } from './helpers/ksm';
import { labelProblems, rsvgAvailable } from './helpers/render';
import { snapshot } from './helpers/sysfs';

const MiB = 1024 * 1024;
const FIELDS = ['policy', 'mergeSeconds', 'savedBytes', 'mergeCpuPercent', 'idleCpuPercent'];

describe('bench: arguments', () => {
  it('parses the flags and refuses bad ones as usage errors', () => {
    expect(
      benchArgs({ workers: '2', mib: '16', policies: 'default,10000,autotune', limit: '30s', idle: '2s' }),
    ).toMatchObject({
      workers: 2,
      mib: 16,
      policies: ['default', '10000', 'autotune'],
      limitMs: 30_000,
      idleMs: 2000,
    });
    expect(benchArgs({})).toMatchObject({
      workers: 4,
      mib: 256,
      policies: ['default', '1000', '10000', '100000', 'advisor', 'autotune'],
      idleMs: 10_000,
    });
    expect(() => benchArgs({ policies: 'fast' })).toThrow(/not default, advisor, autotune/);
    expect(() => benchArgs({ policies: '0' })).toThrow(/not default/);
    expect(() => benchArgs({ workers: '1' })).toThrow(/--workers/);
    expect(() => benchArgs({ mib: 'lots' })).toThrow(/--mib/);
    expect(() => benchArgs({ limit: 'soon' })).toThrow(/--limit/);
    expect(benchArgs({ runs: '3' }).runs).toBe(3);
    expect(() => benchArgs({ runs: '0' })).toThrow(/--runs/);
  });

  it('maps each policy to settings, and rejects unknown ones', () => {
    const s = readSettings();
    expect(policySettings('default', s)).toMatchObject({ run: 1, pagesToScan: 100, sleepMillisecs: 20 });
    expect(policySettings('100000', s)).toMatchObject({ run: 1, pagesToScan: 100_000, sleepMillisecs: 0 });
    expect(() => policySettings('turbo', s)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
  });

  it('rejects bad options before touching anything', async () => {
    await expect(runBenchmark({ workers: 1 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(runBenchmark({ policies: [] })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(runBenchmark({ ratio: 2 })).rejects.toBeInstanceOf(RangeError);
  });
});

describe('bench: with the real scanner', { timeout: 600_000 }, () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-bench-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  beforeEach(({ skip }) => requireKsm({ skip }));

  async function locked(fn: () => Promise<void>): Promise<void> {
    const unlock = await lockKsm();
    const before = snapshot();
    try {
      await fn();
      expect(snapshot()).toEqual(before);
    } finally {
      unlock();
    }
  }

  it('2 workers x 16 MiB under a fixed policy and autotune: every figure, and the settings put back', () =>
    locked(async () => {
      const report = await runBenchmark({
        workers: 2,
        mib: 16,
        policies: ['10000', 'autotune'],
        idleMs: 1000,
        limitMs: 120_000,
        autotune: { stateDir: dir },
      });
      expect(report.results.map((r) => r.policy)).toEqual(['10000', 'autotune']);
      for (const r of report.results) {
        for (const f of FIELDS) expect(r).toHaveProperty(f);
        expect(r.mergeSeconds).toBeGreaterThan(0);
        expect(r.mergedRatio).toBeGreaterThanOrEqual(0.95);
        // Two identical 16 MiB workers: merged, one copy of the pages is saved, counted from the page frames.
        expect(r.savedBytes).toBeGreaterThanOrEqual(0.95 * 16 * MiB - pageSize);
        expect(r.savedBytes).toBeLessThanOrEqual(16 * MiB);
        // ksmd did work while merging; no share is above all the machine's cores.
        expect(r.mergeCpuPercent).toBeGreaterThan(0);
        expect(r.mergeCpuPercent).toBeLessThanOrEqual(100 * os.availableParallelism());
        expect(r.idleCpuPercent).toBeGreaterThanOrEqual(0);
        expect(r.idleCpuPercent).toBeLessThanOrEqual(100 * os.availableParallelism());
        expect(r.samples.length).toBeGreaterThan(0);
        expect(r.samples.at(-1)!.t).toBeGreaterThanOrEqual(r.finishedSeconds + 1);
      }
      // A fixed fast scanner keeps scanning once all is merged; autotune drops back to idle settings.
      const [fixed, tuned] = report.results;
      expect(fixed!.idleCpuPercent).toBeGreaterThan(0);
      expect(tuned!.idleCpuPercent).toBeLessThan(fixed!.idleCpuPercent);
      const states = report.results[1]!.transitions!.map((t) => t.state);
      expect(states).toContain('boosted');
      expect(states.at(-1)).toBe('stopped');
    }));

  it('the command writes the JSON array and the SVG, and prints the table', () =>
    locked(async () => {
      const json = path.join(dir, 'bench.json');
      const svg = path.join(dir, 'bench.svg');
      let text = '';
      const out = { write: (s: string) => ((text += s), true) } as unknown as NodeJS.WritableStream;
      const err = { write: () => true, isTTY: false } as unknown as NodeJS.WriteStream;
      await benchCommand(
        { workers: '2', mib: '8', policies: '100000', idle: '500ms', json, svg },
        new AbortController().signal,
        out,
        err,
      );
      const records = JSON.parse(fs.readFileSync(json, 'utf8')) as Array<Record<string, unknown>>;
      expect(records).toHaveLength(1);
      for (const f of FIELDS) expect(records[0]).toHaveProperty(f);
      expect(records[0]!.policy).toBe('100000');
      expect(text).toMatch(/policy\s+merged 95 % in\s+saved/);
      expect(text).toMatch(/^100000\s/m);
      const chart = fs.readFileSync(svg, 'utf8');
      expect(XMLValidator.validate(chart)).toBe(true);
      expect(chart).toMatch(
        /<text class="legend-label"[^>]*>pages_to_scan 100000, sleep 0: merged [\d.]+ s, idle [\d.]+ %<\/text>/,
      );
      // Two panels over one time axis: memory saved and ksmd CPU, one line each.
      expect([...chart.matchAll(/<polyline class="series" data-key="0"/g)]).toHaveLength(2);
      if (rsvgAvailable() === null) expect(labelProblems(chart)).toEqual([]);
    }));

  it('one signal serves many runs: no abort listener is left behind', async () => {
    // `node-ksm bench` passes one signal to all of its runs (18 with --runs 3); each used
    // to leave a listener on it (Node warned at the 11th).
    const ac = new AbortController();
    for (let i = 0; i < 12; i++) {
      const w = await startWorkers(2, 1, 100 + i, ac.signal);
      expect(w.pids).toHaveLength(2);
      await w.kill();
    }
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
  });

  it('an aborted run kills its workers and puts the settings back', () =>
    locked(async () => {
      const ac = new AbortController();
      const run = runBenchmark({
        workers: 2,
        mib: 8,
        policies: ['default'],
        limitMs: 60_000,
        signal: ac.signal,
        onProgress: (p) => p.phase === 'merging' && ac.abort(new Error('stop')),
      });
      await expect(run).rejects.toThrow();
    }));
});
