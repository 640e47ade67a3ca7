import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { BOOST_POLICY, boost, boostState, restore } from '../lib/boost';
import { readSettings, type KsmSettings } from '../lib/control';
import { lockKsm, requireKsm } from './helpers/ksm';
import { startChild } from './helpers/boost-holders';

const boosted = (s: KsmSettings) => ({
  run: s.run,
  advisorMode: s.advisorMode,
  pagesToScan: s.pagesToScan,
  sleepMillisecs: s.sleepMillisecs,
  smartScan: s.smartScan,
});
const POLICY = { run: 1, advisorMode: 'none', pagesToScan: BOOST_POLICY.pagesToScan, sleepMillisecs: 0, smartScan: 0 };

/** Runs fn under the test lock with a private state dir; checks the settings come back. */
async function locked(fn: (stateDir: string, before: KsmSettings) => Promise<void>): Promise<void> {
  const unlock = await lockKsm();
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-boost-'));
  const before = readSettings();
  try {
    await fn(stateDir, before);
    expect(readSettings()).toEqual(before);
  } finally {
    await restore({ stateDir, force: true }).catch(() => {});
    fs.rmSync(stateDir, { recursive: true, force: true });
    unlock();
  }
}

describe('boost: arguments', () => {
  it('rejects bad options before touching anything', async () => {
    await expect(boost('fast' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(boost({ pagesToScan: 0 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(boost({ sleepMillisecs: -1 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(boost({ smartScan: 2 as 0 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE' });
    await expect(boost({ stateDir: '' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(restore({ force: 'yes' as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    expect(() => boostState(1 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });
});

describe('boost: in this process', { timeout: 900_000 }, () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it('boosts, records the holder, and puts the originals back on release', () =>
    locked(async (stateDir, before) => {
      const handle = await boost({ stateDir });
      expect(boosted(readSettings())).toEqual(POLICY);
      expect(handle.settings).toMatchObject({ run: 1, pagesToScan: BOOST_POLICY.pagesToScan, smartScan: 0 });
      const state = boostState({ stateDir })!;
      expect(state.originals).toEqual(boosted(before));
      expect(state.holders).toHaveLength(1);
      expect(state.holders[0]).toMatchObject({ pid: process.pid, alive: true });
      await handle.release();
      await handle.release(); // idempotent
      expect(boostState({ stateDir })).toBeNull();
      expect(readSettings()).toEqual(before);
    }));

  it('with several holders keeps the most aggressive request, and relaxes as they leave', () =>
    locked(async (stateDir) => {
      const gentle = await boost({ stateDir, pagesToScan: 2000, sleepMillisecs: 5 });
      expect(readSettings()).toMatchObject({ pagesToScan: 2000, sleepMillisecs: 5 });
      {
        await using eager = await boost({ stateDir, pagesToScan: 20_000 });
        expect(eager.settings).toMatchObject({ pagesToScan: 20_000, sleepMillisecs: 0 });
        expect(readSettings()).toMatchObject({ pagesToScan: 20_000, sleepMillisecs: 0 });
        expect(boostState({ stateDir })!.holders).toHaveLength(2);
      }
      expect(readSettings()).toMatchObject({ run: 1, pagesToScan: 2000, sleepMillisecs: 5 });
      await gentle.release();
    }));

  it('leaves a knob that someone else changed while boosted', () =>
    locked(async (stateDir, before) => {
      const handle = await boost({ stateDir });
      fs.writeFileSync('/sys/kernel/mm/ksm/sleep_millisecs', '7');
      await handle.release();
      expect(readSettings()).toEqual({ ...before, sleepMillisecs: 7 });
      fs.writeFileSync('/sys/kernel/mm/ksm/sleep_millisecs', String(before.sleepMillisecs));
    }));

  it('does not take a reused pid for a live holder', () =>
    locked(async (stateDir, before) => {
      const holder = { pid: process.pid, starttime: 1, id: 'x', since: new Date().toISOString(), requested: {} };
      fs.writeFileSync(
        path.join(stateDir, 'boost.json'),
        JSON.stringify({ version: 1, originals: boosted(before), applied: {}, holders: [holder] }),
      );
      expect(boostState({ stateDir })!.holders[0]!.alive).toBe(false);
      await expect(restore({ stateDir })).resolves.toMatchObject({ restored: true });
      expect(boostState({ stateDir })).toBeNull();
      await expect(restore({ stateDir })).resolves.toEqual({ restored: false });
    }));

  it('refuses a state file that is not its own', () =>
    locked(async (stateDir) => {
      fs.writeFileSync(path.join(stateDir, 'boost.json'), '{"hello":1}');
      await expect(boost({ stateDir })).rejects.toMatchObject({ code: 'ERR_KSM_PARSE' });
      fs.rmSync(path.join(stateDir, 'boost.json'));
    }));
});

describe('boost: holders in other processes', { timeout: 900_000 }, () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it('two children boosting at once: boosted until both release, then the originals', () =>
    locked(async (stateDir, before) => {
      const a = startChild({ stateDir });
      const b = startChild({ stateDir });
      expect(await a.next()).toHaveProperty('boosted');
      expect(await b.next()).toHaveProperty('boosted');
      expect(boosted(readSettings())).toEqual(POLICY);
      expect(
        boostState({ stateDir })!
          .holders.map((h) => h.pid)
          .sort(),
      ).toEqual([a.proc.pid, b.proc.pid].sort());
      a.send('release');
      expect(await a.next()).toEqual({ released: true });
      await a.exited;
      expect(boosted(readSettings())).toEqual(POLICY);
      expect(boostState({ stateDir })!.holders.map((h) => h.pid)).toEqual([b.proc.pid]);
      b.send('release');
      expect(await b.next()).toEqual({ released: true });
      await b.exited;
      expect(readSettings()).toEqual(before);
      expect(boostState({ stateDir })).toBeNull();
    }));

  it('a holder killed with SIGKILL: restore() puts the originals back', () =>
    locked(async (stateDir, before) => {
      const c = startChild({ stateDir });
      await c.next();
      c.proc.kill('SIGKILL');
      expect(await c.exited).toEqual({ code: null, signal: 'SIGKILL' });
      expect(boosted(readSettings())).toEqual(POLICY);
      expect(boostState({ stateDir })!.holders[0]!.alive).toBe(false);
      const result = await restore({ stateDir });
      expect(result.restored).toBe(true);
      expect(result.settings).toMatchObject({ run: before.run });
      expect(readSettings()).toEqual(before);
    }));

  it('a holder killed with SIGKILL: the next boost() adopts the originals it recorded', () =>
    locked(async (stateDir, before) => {
      const c = startChild({ stateDir });
      await c.next();
      c.proc.kill('SIGKILL');
      await c.exited;
      const handle = await boost({ stateDir });
      const state = boostState({ stateDir })!;
      expect(state.originals).toEqual(boosted(before));
      expect(state.holders.map((h) => h.pid)).toEqual([process.pid]);
      await handle.release();
      expect(readSettings()).toEqual(before);
    }));

  it.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)('%s restores, then the holder dies of the signal', (signal) =>
    locked(async (stateDir, before) => {
      const c = startChild({ stateDir });
      await c.next();
      c.proc.kill(signal);
      expect(await c.exited).toEqual({ code: null, signal });
      expect(readSettings()).toEqual(before);
      expect(boostState({ stateDir })).toBeNull();
    }),
  );

  it('process.exit() while holding restores', () =>
    locked(async (stateDir, before) => {
      const c = startChild({ stateDir });
      await c.next();
      c.send('exit');
      expect(await c.exited).toEqual({ code: 0, signal: null });
      expect(readSettings()).toEqual(before);
    }));
});
