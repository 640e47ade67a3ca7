import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  WorkDetector,
  startAutotune,
  workBetween,
  type AutotuneCounters,
  type AutotuneEvent,
  type AutotuneHandle,
} from '../lib/autotune';
import { startWorkers, type Workers } from '../lib/benchmark';
import { restore as restoreBoost } from '../lib/boost';
import { readSettings } from '../lib/control';
import { pageSize } from '../lib/memory';
import { DIST, ensureDist } from './helpers/dist';
import { lockKsm, pollUntil, requireKsm } from './helpers/ksm';
import { KSM, restore, snapshot, type Snapshot } from './helpers/sysfs';

const c = (o: Partial<AutotuneCounters>): AutotuneCounters => ({
  fullScans: 0,
  pagesShared: 0,
  pagesSharing: 0,
  pagesUnshared: 0,
  pagesVolatile: 0,
  zeroPages: 0,
  ...o,
});

describe('autotune: the decision', () => {
  it('sees new pages, settling pages and merges as work, and churn and frees as none', () => {
    expect(workBetween(c({}), c({ pagesVolatile: 300 }), 256)).toMatch(/found 300 new/);
    expect(workBetween(c({ pagesVolatile: 1000 }), c({ pagesVolatile: 500, pagesUnshared: 500 }), 256)).toMatch(
      /500 pages stopped changing/,
    );
    expect(
      workBetween(c({ pagesUnshared: 1000 }), c({ pagesShared: 300, pagesSharing: 400, pagesUnshared: 300 }), 256),
    ).toMatch(/400 pages merged/);
    // Churn: pages flipping between volatile and unshared.
    expect(
      workBetween(c({ pagesVolatile: 500, pagesUnshared: 500 }), c({ pagesVolatile: 600, pagesUnshared: 400 }), 256),
    ).toBeUndefined();
    // Memory freed: falls are not work.
    expect(workBetween(c({ pagesShared: 5000, pagesSharing: 5000 }), c({}), 256)).toBeUndefined();
    expect(workBetween(c({}), c({ pagesVolatile: 255 }), 256)).toBeUndefined();
  });

  it('boosts on work while idle, and not on drift spread over many full scans', () => {
    const d = new WorkDetector(256, 2);
    d.reset(c({}));
    let v = 0;
    for (let scan = 1; scan <= 100; scan++) {
      v += 100; // a little growth each scan, never 256 pages within one
      expect(d.idle(c({ fullScans: scan, pagesVolatile: v }))).toBeUndefined();
    }
    expect(d.idle(c({ fullScans: 100, pagesVolatile: v + 1000 }))).toMatch(/found 1000/);
  });

  it('backs off after two full scans without work, and counts again after work', () => {
    const d = new WorkDetector(256, 2);
    d.reset(c({ fullScans: 10, pagesVolatile: 10_000 }));
    expect(d.boosted(c({ fullScans: 10, pagesVolatile: 5000, pagesUnshared: 5000 }))).toBeUndefined(); // no scan ended yet
    expect(d.boosted(c({ fullScans: 11, pagesShared: 2500, pagesSharing: 2500, pagesUnshared: 5000 }))).toBeUndefined(); // work
    expect(d.boosted(c({ fullScans: 12, pagesShared: 2500, pagesSharing: 2500, pagesUnshared: 5000 }))).toBeUndefined(); // quiet 1
    expect(d.boosted(c({ fullScans: 13, pagesShared: 2500, pagesSharing: 3000, pagesUnshared: 4500 }))).toBeUndefined(); // work again
    expect(d.boosted(c({ fullScans: 14, pagesShared: 2500, pagesSharing: 3000, pagesUnshared: 4500 }))).toBeUndefined();
    expect(d.boosted(c({ fullScans: 15, pagesShared: 2500, pagesSharing: 3000, pagesUnshared: 4500 }))).toMatch(
      /2 full scans with no change/,
    );
    // Several quiet scans inside one reading count as several.
    d.reset(c({ fullScans: 20, pagesVolatile: 1000 }));
    expect(d.boosted(c({ fullScans: 21, pagesUnshared: 1000 }))).toBeUndefined();
    expect(d.boosted(c({ fullScans: 24, pagesUnshared: 1000 }))).toMatch(/3 full scans/);
  });

  it('backs off sooner once what it found is merged and nothing changes, but not while found pages wait', () => {
    const d = new WorkDetector(256, 2, 250);
    // A boost on a process that marked a page or two: a whole full scan finds nothing.
    d.reset(c({ fullScans: 5, pagesShared: 10, pagesSharing: 10 }), 0);
    expect(d.boosted(c({ fullScans: 5, pagesShared: 10, pagesSharing: 10, pagesVolatile: 2 }), 50)).toBeUndefined();
    // The first boundary closes the scan that was in progress at the boost, which had not
    // reached a new mm (the kernel puts it behind ksmd's cursor): not yet "nothing".
    expect(d.boosted(c({ fullScans: 6, pagesShared: 10, pagesSharing: 10, pagesVolatile: 2 }), 100)).toBeUndefined();
    expect(d.boosted(c({ fullScans: 7, pagesShared: 10, pagesSharing: 10, pagesVolatile: 2 }), 150)).toMatch(
      /found nothing/,
    );
    d.reset(c({ fullScans: 1, pagesVolatile: 100 }), 0); // 100 volatile pages from before: churn elsewhere
    // Nothing seen yet (ksmd still crossing old memory to reach the new process): no early exit.
    expect(d.boosted(c({ fullScans: 1, pagesVolatile: 100 }), 1000)).toBeUndefined();
    // First pass over new memory: 8000 pages found, all waiting for their second look.
    expect(d.boosted(c({ fullScans: 1, pagesVolatile: 8100 }), 1050)).toBeUndefined();
    // Crossing old memory again: quiet, but the found pages still wait.
    expect(d.boosted(c({ fullScans: 1, pagesVolatile: 8100 }), 2000)).toBeUndefined();
    // Second pass (the next full scan): they merge.
    const merged = c({ fullScans: 2, pagesVolatile: 100, pagesShared: 4000, pagesSharing: 4000 });
    expect(d.boosted(merged, 2050)).toBeUndefined();
    expect(d.boosted(merged, 2200)).toBeUndefined();
    expect(d.boosted(merged, 2300)).toMatch(/no change for 250 ms/);
  });

  it('does not back off early while memory it was boosted for has not been reached', () => {
    const d = new WorkDetector(256, 5, 100);
    d.reset(c({ fullScans: 1, pagesVolatile: 100 }), 0);
    // Churn elsewhere counts as work, then all is quiet; but the new process's memory is
    // behind ksmd's cursor (awaiting): neither early way back is taken.
    expect(d.boosted(c({ fullScans: 1, pagesVolatile: 100, pagesShared: 50, pagesSharing: 50 }), 50, true)).toBe(
      undefined,
    );
    const settled = c({ fullScans: 1, pagesVolatile: 100, pagesShared: 50, pagesSharing: 50 });
    expect(d.boosted(settled, 500, true)).toBeUndefined();
    expect(d.boosted({ ...settled, fullScans: 3 }, 600, true)).toBeUndefined();
    // Reached (awaiting cleared): quiet for quietMs with nothing waiting is enough.
    expect(d.boosted({ ...settled, fullScans: 3 }, 700, false)).toMatch(/no change for/);
  });

  it('waits for a full scan to begin after the last new pages were found', () => {
    const d = new WorkDetector(256, 5, 100);
    d.reset(c({ fullScans: 1 }), 0);
    // ksmd finds 1000 new pages and they settle at once (their volatile count is gone
    // again), in the same scan: their second look is still to come.
    expect(d.boosted(c({ fullScans: 1, pagesUnshared: 1000 }), 50)).toBeUndefined();
    expect(d.boosted(c({ fullScans: 1, pagesUnshared: 1000 }), 400)).toBeUndefined();
    // The next scan has begun: now quiet is quiet.
    expect(d.boosted(c({ fullScans: 2, pagesUnshared: 1000 }), 450)).toMatch(/no change for/);
  });
});

describe('autotune: arguments', () => {
  it('rejects bad options before touching anything', () => {
    expect(() => startAutotune('fast' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => startAutotune({ thresholdPages: 0 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => startAutotune({ idle: { pagesToScan: -1 } })).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => startAutotune({ boost: 5 as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => startAutotune({ idleIntervalMs: 1.5 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => startAutotune({ onChange: 'x' as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => startAutotune({ stateDir: '' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });
});

const write = (name: string, value: string) => fs.writeFileSync(`${KSM}/${name}`, value);
const watched = () => {
  const s = readSettings();
  return {
    run: s.run,
    pagesToScan: s.pagesToScan,
    sleepMillisecs: s.sleepMillisecs,
    smartScan: s.smartScan,
    advisorMode: s.advisorMode,
  };
};

describe('autotune: with the real scanner', { timeout: 300_000 }, () => {
  let stateDir: string;
  beforeAll(() => {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-autotune-'));
  });
  afterAll(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  beforeEach(({ skip }) => requireKsm({ skip }));

  /** Under the test lock, from `settings` (written raw), with everything put back after. */
  async function from(settings: Snapshot, fn: () => Promise<void>): Promise<void> {
    const unlock = await lockKsm();
    const before = snapshot();
    try {
      restore({ ...before, advisor_mode: 'none', ...settings });
      await fn();
    } finally {
      try {
        restore(before);
      } finally {
        unlock();
      }
    }
  }

  it('boosts when duplicates appear, merges them, returns to the low-cost state, and stop() restores', () =>
    from({ run: '1', pages_to_scan: '100', sleep_millisecs: '20', smart_scan: '1' }, async () => {
      const original = watched();
      const events: AutotuneEvent[] = [];
      let workers: Workers | undefined;
      let tuner: AutotuneHandle | undefined;
      try {
        tuner = startAutotune({ stateDir, onChange: (e) => events.push(e) });
        expect(tuner.state).toBe('idle');
        expect(tuner.idleSettings).toMatchObject({ run: 1, pagesToScan: 100, sleepMillisecs: 20 });
        // 64 MiB of duplicates: two workers with the same 32 MiB.
        const appeared = events.length;
        workers = await startWorkers(2, 32, 4242);
        const total = workers.pages * 2;
        // Guards, not timings: at the default 100 pages per 20 ms this would take ~8 s + scans.
        const merged = await pollUntil(() => workers!.mergedPages() >= 0.95 * total, 120_000);
        expect(merged).toBe(true);
        const boosted = events.slice(appeared).find((e) => e.state === 'boosted');
        expect(boosted, JSON.stringify(events)).toBeDefined();
        expect(boosted!.settings).toMatchObject({ pagesToScan: 100_000, sleepMillisecs: 0 });
        // Once merging is over, back to the low-cost state on its own.
        const backOff = await pollUntil(
          () => tuner!.state === 'idle' && events.slice(events.indexOf(boosted!)).some((e) => e.state === 'idle'),
          120_000,
        );
        expect(backOff, JSON.stringify(events)).toBe(true);
        expect(events.find((e) => e.state === 'idle' && e.timeMs > boosted!.timeMs)!.reason).toMatch(
          /full scans with no change|no change for \d+ ms|found nothing/,
        );
        expect(watched()).toEqual(original);
        await tuner.stop();
        expect(tuner.state).toBe('stopped');
        expect(watched()).toEqual(original);
      } finally {
        await tuner?.stop();
        await workers?.kill();
      }
    }));

  it('finds a new process with mergeable memory between two reads of the counters (the last pid is read more often)', ({
    skip,
  }) =>
    from({ run: '1', pages_to_scan: '100', sleep_millisecs: '20', smart_scan: '1' }, async () => {
      if (!/^ksm_mergeable/m.test(fs.readFileSync('/proc/self/ksm_stat', 'utf8')))
        return skip('this kernel has no ksm_stat ksm_mergeable (6.14+): new processes are not watched');
      expect(ensureDist()).toBe(true);
      const script = `
        const ksm = require(${JSON.stringify(path.join(DIST, 'index.js'))});
        const buf = ksm.alloc(16 * ksm.pageSize);
        buf.fill(7);
        process.stdout.write('marked\\n');
        process.stdin.on('end', () => process.exit(0));
        process.stdin.resume();`;
      const events: Array<{ state: string; reason: string }> = [];
      // The counters are read once a minute: only the pid check can see the child in time.
      const tuner = startAutotune({ stateDir, idleIntervalMs: 60_000, onChange: (e) => events.push(e) });
      const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((resolve, reject) => {
          readline.createInterface({ input: child.stdout }).once('line', () => resolve());
          child.once('exit', (code) => reject(new Error(`child exited (${code}) before marking its memory`)));
        });
        // Liveness bound, not a timing: the pid is read every 50 ms.
        const found = await pollUntil(() => events.some((e) => e.state === 'boosted'), 20_000);
        expect(found, JSON.stringify(events)).toBe(true);
        expect(events.find((e) => e.state === 'boosted')!.reason).toBe(`process ${child.pid} has new mergeable memory`);
      } finally {
        await tuner.stop();
        child.kill('SIGKILL');
      }
    }));

  it('holds the boost for a new process until ksmd has merged what it marked mergeable after filling it', ({ skip }) =>
    from({ run: '1', pages_to_scan: '100', sleep_millisecs: '20', smart_scan: '1' }, async () => {
      if (!/^ksm_mergeable/m.test(fs.readFileSync('/proc/self/ksm_stat', 'utf8')))
        return skip('this kernel has no ksm_stat ksm_mergeable (6.14+): new processes are not watched');
      expect(ensureDist()).toBe(true);
      // 32 MiB whose second half repeats the first, filled first and marked mergeable
      // after, as a C program or a loader that madvises its data once built would.
      const pages = (32 * 1024 * 1024) / pageSize;
      const script = `
        const ksm = require(${JSON.stringify(path.join(DIST, 'index.js'))});
        const buf = ksm.alloc(${pages} * ksm.pageSize, { mergeable: false });
        const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4), per = ksm.pageSize / 4;
        for (let p = 0; p < ${pages}; p++) {
          let x = (Math.imul(77, 0x9e3779b1) ^ Math.imul((p % ${pages / 2}) + 1, 0x85ebca6b)) >>> 0 || 1;
          for (let i = p * per; i < (p + 1) * per; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; w[i] = x >>> 0; }
        }
        ksm.setMergeable(buf, true);
        process.stdout.write('marked\\n');
        process.stdin.on('end', () => process.exit(0));
        process.stdin.resume();`;
      const seen: { pid?: number } = {};
      const merged = () => {
        try {
          return seen.pid === undefined ? 0 : Number(fs.readFileSync(`/proc/${seen.pid}/ksm_merging_pages`, 'utf8'));
        } catch {
          return 0;
        }
      };
      const events: Array<{ state: string; reason: string; at: number; merged: number }> = [];
      const tuner = startAutotune({
        stateDir,
        onChange: (e) => events.push({ state: e.state, reason: e.reason, at: performance.now(), merged: merged() }),
      });
      // Started after autotune: it watches processes it sees start.
      const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
      seen.pid = child.pid;
      try {
        await new Promise<void>((resolve, reject) => {
          readline.createInterface({ input: child.stdout }).once('line', () => resolve());
          child.once('exit', (code) => reject(new Error(`child exited (${code}) before marking its memory`)));
        });
        const marked = performance.now();
        const boostedThen = tuner.state === 'boosted';
        // Liveness bound, not a timing: at the kernel's default pace this takes ~10 s.
        const done = await pollUntil(
          () => merged() >= 0.95 * pages && events.some((e) => e.at > marked && e.state === 'idle'),
          120_000,
        );
        expect(done, JSON.stringify(events)).toBe(true);
        expect(boostedThen || events.some((e) => e.at > marked && e.state === 'boosted'), JSON.stringify(events)).toBe(
          true,
        );
        // Not back to idle before ksmd had been over the new memory twice: merged by then.
        const back = events.find((e) => e.at > marked && e.state === 'idle')!;
        expect(back.merged, JSON.stringify(events)).toBeGreaterThanOrEqual(0.95 * pages);
      } finally {
        await tuner.stop();
        child.kill('SIGKILL');
      }
    }));

  it('idles at an operator setting cheaper than the defaults, runs ksmd, and puts run=0 back', () =>
    from({ run: '0', pages_to_scan: '50', sleep_millisecs: '40' }, async () => {
      const original = watched();
      const tuner = startAutotune({ stateDir });
      try {
        expect(tuner.idleSettings).toMatchObject({ run: 1, pagesToScan: 50, sleepMillisecs: 40 });
        expect(watched()).toEqual({ ...original, run: 1 });
      } finally {
        await tuner.stop();
      }
      expect(watched()).toEqual(original);
    }));

  it('killed with SIGKILL while idle, is undone by restore(): run=0 comes back', () =>
    from({ run: '0', pages_to_scan: '50', sleep_millisecs: '40' }, async () => {
      expect(ensureDist()).toBe(true);
      const original = watched();
      const child = spawn(
        process.execPath,
        [
          '-e',
          `const ksm = require(${JSON.stringify(path.join(DIST, 'index.js'))});
           ksm.startAutotune({ stateDir: ${JSON.stringify(stateDir)} });
           console.log('idle');`,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      const exited = new Promise((resolve) => child.once('exit', resolve));
      try {
        await new Promise((resolve, reject) => {
          child.stdout.once('data', resolve);
          child.once('exit', (code) => reject(new Error(`autotune child exited (${code}) before idling`)));
        });
        expect(watched()).toEqual({ ...original, run: 1 });
        // No handler sees SIGKILL: the record in the state directory is all that is left.
        child.kill('SIGKILL');
        await exited;
        expect(watched().run).toBe(1);
        const back = await restoreBoost({ stateDir });
        expect(back.restored).toBe(true);
        expect(watched()).toEqual(original);
      } finally {
        child.kill('SIGKILL');
      }
    }));

  it('replaces a costly setting found at start by the kernel defaults while idle', () =>
    from({ run: '1', pages_to_scan: '5000', sleep_millisecs: '0' }, async () => {
      const original = watched();
      const tuner = startAutotune({ stateDir });
      try {
        expect(watched()).toMatchObject({ pagesToScan: 100, sleepMillisecs: 20 });
      } finally {
        await tuner.stop();
      }
      expect(watched()).toEqual(original);
    }));

  it('leaves the scanner to an advisor the operator set, and changes nothing', () =>
    from({ run: '1', advisor_mode: 'scan-time' }, async () => {
      if (!fs.existsSync(`${KSM}/advisor_mode`)) return;
      // The advisor moves pages_to_scan itself.
      const mine = () => ({ ...watched(), pagesToScan: undefined });
      const original = mine();
      const tuner = startAutotune({ stateDir });
      expect(tuner.state).toBe('advisor');
      expect(tuner.history[0]!.reason).toMatch(/advisor/);
      expect(mine()).toEqual(original);
      await tuner.stop();
      expect(mine()).toEqual(original);
    }));

  it('stops adjusting when someone else changes the settings, and keeps their change on stop', () =>
    from({ run: '0', pages_to_scan: '100', sleep_millisecs: '20' }, async () => {
      const tuner = startAutotune({ stateDir, idleIntervalMs: 20, watchProcesses: false });
      try {
        expect(readSettings().run).toBe(1);
        write('sleep_millisecs', '77'); // a manual `node-ksm tune --sleep-ms 77`
        expect(await pollUntil(() => tuner.state === 'overridden', 10_000)).toBe(true);
        expect(tuner.history.at(-1)!.reason).toMatch(/sleep_millisecs 20 -> 77/);
      } finally {
        await tuner.stop();
      }
      // The operator's knob stays; what autotune changed (run) goes back.
      expect(watched()).toMatchObject({ run: 0, sleepMillisecs: 77 });
    }));
});
