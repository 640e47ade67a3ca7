/**
 * Global-state faults: several processes boosting the scanner at once, killed at random
 * moments by SIGKILL or SIGTERM or dying of an uncaught exception, some in the middle of
 * boost() or release(). Afterwards every /sys/kernel/mm/ksm value must equal what it was:
 * by itself when no process was SIGKILLed (the exit and signal handlers restore), and
 * after restore() when one was (no handler sees SIGKILL). The whole test holds the
 * machine-wide test lock, and the boosts use a private state directory, so nobody
 * else's boost is touched.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { boostState, restore } from '../lib/boost';
import { DIST, ensureDist } from './helpers/dist';
import { lockKsm, requireKsm } from './helpers/ksm';
import { testSeed } from './helpers/seed';
import { diff, restore as putBack, snapshot } from './helpers/sysfs';

beforeAll(() => {
  expect(ensureDist()).toBe(true);
}, 120_000);

/**
 * A boosting child. `hold`: boost and wait to be killed. `throw`: boost, then throw after
 * `delay` ms. `churn`: boost and release in a loop with varying requests, so a kill lands
 * inside boost() or release() as often as between them.
 */
const CHILD = `
const b = require(${JSON.stringify(`${DIST}/boost.js`)});
const [mode, stateDir, delay, seed] = process.argv.slice(1);
let x = Number(seed) >>> 0 || 1;
const rnd = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (x >>> 0) / 4294967296);
(async () => {
  if (mode === 'churn') {
    for (;;) {
      const h = await b.boost({ stateDir, pagesToScan: 1000 + Math.floor(rnd() * 20000), sleepMillisecs: Math.floor(rnd() * 3) });
      process.stdout.write('boosted\\n');
      if (rnd() < 0.5) await new Promise((r) => setTimeout(r, Math.floor(rnd() * 5)));
      await h.release();
      // Back to the event loop each turn, as any real program does: an await loop that never
      // leaves the microtask queue would never see a signal, with or without node-ksm.
      await new Promise((r) => setImmediate(r));
    }
  }
  await b.boost({ stateDir, pagesToScan: 5000 + Math.floor(rnd() * 10000) });
  process.stdout.write('boosted\\n');
  if (mode === 'throw') setTimeout(() => { throw new Error('uncaught, on purpose'); }, Number(delay));
  else setInterval(() => {}, 1000);
})();
`;

type Fate = 'SIGKILL' | 'SIGTERM' | 'throw';

interface Outcome {
  fate: Fate;
  boosted: boolean;
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

let seed = testSeed('boost faults');
const rnd = () => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
};

function runOne(fate: Fate, stateDir: string): Promise<Outcome> {
  const mode = fate === 'throw' ? 'throw' : rnd() < 0.5 ? 'churn' : 'hold';
  const delay = Math.floor(rnd() * 400);
  const child = spawn(process.execPath, ['-e', CHILD, mode, stateDir, String(delay), String(Math.floor(rnd() * 1e9))], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let boosted = false;
  let stderr = '';
  child.stdout.on('data', () => (boosted = true));
  child.stderr.on('data', (d) => (stderr += d));
  // Killed at a random moment: before node-ksm has even loaded, while waiting for the
  // boost lock, between the state file and the knobs, inside release(), or while held.
  const timer = fate === 'throw' ? null : setTimeout(() => child.kill(fate), delay);
  const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      clearTimeout(guard);
      resolve({ fate, boosted, code, signal, stderr });
    }),
  );
}

/** A churning child, sent SIGTERM at a random moment once it has boosted; how it ended. */
function churnUntilSigterm(stateDir: string): Promise<string> {
  const child = spawn(process.execPath, ['-e', CHILD, 'churn', stateDir, '0', String(Math.floor(rnd() * 1e9))], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  // Killed only once it has boosted, so the handlers are certainly installed.
  child.stdout.once('data', () => setTimeout(() => child.kill('SIGTERM'), rnd() * 100));
  const guard = setTimeout(() => child.kill('SIGKILL'), 15_000);
  return new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      clearTimeout(guard);
      resolve(signal ?? `exit ${code}: ${stderr}`);
    }),
  );
}

describe('a process that boosts and releases in a loop', () => {
  // Regression: the signal handlers used to be removed after each release() and added
  // again by the next boost(). A SIGTERM that libuv had caught but not yet handed to
  // JavaScript was dropped with the last listener, and the process lived on (20 of 80
  // lost in a loop like this one; 9 of 40 in rounds of 8).
  it('dies of every SIGTERM, whenever it lands', async (ctx) => {
    requireKsm(ctx);
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksm-boost-loop-'));
    const unlock = await lockKsm();
    const before = snapshot();
    try {
      // Rounds of 8: with more at once they mostly wait for the boost lock, where the
      // handlers were installed anyway, and the window around release() is rarely hit.
      const fates: string[] = [];
      for (let round = 0; round < 4; round++) {
        fates.push(...(await Promise.all(Array.from({ length: 8 }, () => churnUntilSigterm(stateDir)))));
      }
      expect(fates.filter((f) => f !== 'SIGTERM')).toEqual([]);
      expect(boostState({ stateDir })).toBeNull();
      expect(diff(before, snapshot())).toEqual([]);
    } finally {
      if (diff(before, snapshot()).length > 0) putBack(before);
      unlock();
      fs.rmSync(stateDir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('boosting processes that die at random moments', () => {
  let stateDir = '';

  for (const withSigkill of [false, true, false, true, false, true, false, true]) {
    it(`leave /sys/kernel/mm/ksm as it was ${withSigkill ? 'after restore() (some were SIGKILLed)' : 'by themselves (SIGTERM and uncaught exceptions only)'}`, async (ctx) => {
      requireKsm(ctx);
      stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksm-boost-faults-'));
      const unlock = await lockKsm();
      const before = snapshot();
      try {
        const fates: Fate[] = Array.from({ length: 8 }, (_, i) => {
          const choices: Fate[] = withSigkill ? ['SIGKILL', 'SIGTERM', 'throw'] : ['SIGTERM', 'throw'];
          // At least one of each kind in every round.
          return i < choices.length ? choices[i]! : choices[Math.floor(rnd() * choices.length)]!;
        });
        const outcomes = await Promise.all(fates.map((f) => runOne(f, stateDir)));
        await ctx.annotate(
          outcomes
            .map((o) => `${o.fate}${o.boosted ? ' (had boosted)' : ''} -> ${o.signal ?? `exit ${o.code}`}`)
            .join('; '),
        );
        for (const o of outcomes) {
          // Each died the way it was meant to, and of nothing else (no crash of ours).
          if (o.fate === 'throw') expect(o.stderr).toMatch(/uncaught, on purpose/);
          else
            expect(o.signal === o.fate || (o.fate === 'SIGTERM' && o.code !== null && o.code !== 0), o.stderr).toBe(
              true,
            );
          expect(o.stderr).not.toMatch(/Segmentation|Abort|FATAL|KsmError/);
        }
        expect(outcomes.some((o) => o.boosted)).toBe(true);
        if (withSigkill) {
          // A SIGKILLed holder may be left in the state file: restore() finds it dead.
          await restore({ stateDir });
        }
        expect(boostState({ stateDir })).toBeNull();
        expect(diff(before, snapshot())).toEqual([]);
      } finally {
        const changed = diff(before, snapshot());
        if (changed.length > 0) putBack(before);
        unlock();
        fs.rmSync(stateDir, { recursive: true, force: true });
      }
    }, 900_000);
  }
});
