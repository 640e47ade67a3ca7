import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { beforeEach, describe, expect, it } from 'vitest';
import { configure, readSettings, type KsmSettings } from '../lib/control';
import { alloc, free, pageSize } from '../lib/memory';
import { systemStats } from '../lib/stats';
import { waitForMerge } from '../lib/wait';
import { fillPages, lockKsm, requireKsm } from './helpers/ksm';
import { skipTest } from './helpers/skips';
import { ADDON, TSX, libModule } from './helpers/boost-holders';

const KSM = '/sys/kernel/mm/ksm';
/** What the permission tests' child prints: the error configure() threw. */
interface ChildAnswer {
  name: string;
  code: string;
  message: string;
}

const raw = (name: string) => fs.readFileSync(`${KSM}/${name}`, 'utf8').trim();

/** Runs fn under the test lock; the settings must come back as they were. */
async function locked(fn: (before: KsmSettings) => Promise<void> | void): Promise<void> {
  const unlock = await lockKsm();
  const before = readSettings();
  try {
    await fn(before);
  } finally {
    try {
      configure({ advisorMode: 'none' });
      const { advisorMode, run, ...rest } = before;
      configure(advisorMode === 'none' ? { ...rest, advisorMode } : { ...rest, pagesToScan: undefined, advisorMode });
      configure({ run });
      expect(readSettings()).toEqual(before);
    } finally {
      unlock();
    }
  }
}

describe('readSettings', () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it('reads every writable knob the kernel has, typed', () => {
    const s = readSettings();
    expect([0, 1, 2]).toContain(s.run);
    expect(typeof s.pagesToScan).toBe('number');
    expect(typeof s.sleepMillisecs).toBe('number');
    if (fs.existsSync(`${KSM}/advisor_mode`)) expect(['none', 'scan-time']).toContain(s.advisorMode);
    for (const [key, value] of Object.entries(s)) {
      const file = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
      const text = raw(file);
      expect(String(value)).toBe(key === 'advisorMode' ? /\[(\S+)\]/.exec(text)![1] : text);
    }
    expect(s).not.toHaveProperty('fullScans');
  });
});

describe('configure: validation (nothing is written)', () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it.each([
    [null, 'ERR_INVALID_ARG_TYPE'],
    ['fast', 'ERR_INVALID_ARG_TYPE'],
    [[1], 'ERR_INVALID_ARG_TYPE'],
    [{ pagesToScanX: 1 }, 'ERR_INVALID_ARG_VALUE'],
    [{ pagesToScan: '100' }, 'ERR_INVALID_ARG_TYPE'],
    [{ pagesToScan: 1.5 }, 'ERR_OUT_OF_RANGE'],
    [{ pagesToScan: -1 }, 'ERR_OUT_OF_RANGE'],
    [{ pagesToScan: 2 ** 32 }, 'ERR_OUT_OF_RANGE'],
    [{ run: 3 }, 'ERR_OUT_OF_RANGE'],
    [{ run: true }, 'ERR_INVALID_ARG_TYPE'],
    [{ sleepMillisecs: NaN }, 'ERR_OUT_OF_RANGE'],
    [{ maxPageSharing: 1 }, 'ERR_OUT_OF_RANGE'],
    [{ smartScan: 2 }, 'ERR_OUT_OF_RANGE'],
    [{ useZeroPages: -1 }, 'ERR_OUT_OF_RANGE'],
    [{ mergeAcrossNodes: 2 }, 'ERR_OUT_OF_RANGE'],
    [{ advisorMode: 'fast' }, 'ERR_INVALID_ARG_VALUE'],
    [{ advisorMode: 1 }, 'ERR_INVALID_ARG_TYPE'],
    [{ advisorMaxCpu: 101 }, 'ERR_OUT_OF_RANGE'],
    [{ advisorTargetScanTime: 0 }, 'ERR_OUT_OF_RANGE'],
    [{ advisorMode: 'scan-time', pagesToScan: 1000 }, 'ERR_INVALID_ARG_VALUE'],
    [{ sleepMillisecs: 10, run: 7 }, 'ERR_OUT_OF_RANGE'],
  ])('%j → %s', (partial, code) => {
    const before = readSettings();
    expect(() => configure(partial as never)).toThrow(expect.objectContaining({ code }));
    expect(readSettings()).toEqual(before);
  });

  it('refuses advisor min above max', () => {
    const max = readSettings().advisorMaxPagesToScan;
    if (max === undefined) return;
    expect(() => configure({ advisorMinPagesToScan: max + 1 })).toThrow(RangeError);
    expect(() => configure({ advisorMinPagesToScan: 10, advisorMaxPagesToScan: 5 })).toThrow(RangeError);
  });

  it('an empty object changes nothing and returns nothing', () => {
    expect(configure({})).toEqual({});
    expect(configure({ run: undefined })).toEqual({});
  });
});

/** A valid value different from the current one, for each knob. */
function other(name: keyof KsmSettings, s: KsmSettings): number | string {
  const v = s[name];
  switch (name) {
    case 'run':
      return v === 1 ? 0 : 1;
    case 'advisorMode':
      return v === 'none' ? 'scan-time' : 'none';
    case 'mergeAcrossNodes':
    case 'useZeroPages':
    case 'smartScan':
      return v === 1 ? 0 : 1;
    case 'advisorMaxCpu':
      return v === 50 ? 60 : 50;
    case 'advisorMinPagesToScan':
      return Math.max(0, (v as number) - 1);
    case 'advisorMaxPagesToScan':
      return (v as number) + 1;
    case 'pagesToScan':
    case 'sleepMillisecs':
    case 'maxPageSharing':
    case 'stableNodeChainsPruneMillisecs':
    case 'advisorTargetScanTime':
      return (v as number) + 7;
  }
}

describe('configure: every knob round-trips', { timeout: 900_000 }, () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  it.for([
    'pagesToScan',
    'sleepMillisecs',
    'useZeroPages',
    'stableNodeChainsPruneMillisecs',
    'smartScan',
    'advisorMode',
    'advisorMaxCpu',
    'advisorTargetScanTime',
    'advisorMinPagesToScan',
    'advisorMaxPagesToScan',
    'run',
    'mergeAcrossNodes',
    'maxPageSharing',
  ] as const)('%s', (name, ctx) =>
    locked((before) => {
      if (before[name] === undefined) skipTest(ctx, `this kernel has no ${name}`, 'kernel');
      const value = other(name, before);
      const busy = (name === 'mergeAcrossNodes' || name === 'maxPageSharing') && (systemStats().pagesShared ?? 0) > 0;
      if (busy) {
        // The kernel refuses while any page on the machine is shared; nothing changes.
        expect(() => configure({ [name]: value })).toThrow(expect.objectContaining({ code: 'EBUSY' }));
        expect(readSettings()).toEqual(before);
        return;
      }
      const previous = configure({ [name]: value });
      expect(previous[name]).toBe(before[name]);
      expect(readSettings()[name]).toBe(value);
      configure(previous);
      expect(readSettings()).toEqual(before);
    }),
  );

  it('writes several knobs in an order the kernel accepts, and returns what configure(previous) needs', (ctx) =>
    locked((before) => {
      if (before.advisorMode === undefined) skipTest(ctx, 'no advisor on this kernel (6.8+)', 'kernel');
      const prevAdvisor = configure({ advisorMode: 'scan-time' });
      // From the scan-time advisor: pages_to_scan needs the advisor off first.
      const prev = configure({ pagesToScan: 4321, advisorMode: 'none', sleepMillisecs: 3, run: 1 });
      expect(readSettings()).toMatchObject({ pagesToScan: 4321, advisorMode: 'none', sleepMillisecs: 3, run: 1 });
      expect(prev.advisorMode).toBe('scan-time');
      configure(prev);
      expect(readSettings().advisorMode).toBe('scan-time');
      configure(prevAdvisor);
    }));

  it('rolls back what it wrote when a later knob fails (EBUSY while pages are shared)', (ctx) =>
    locked(async (before) => {
      if (before.maxPageSharing === undefined) skipTest(ctx, 'no max_page_sharing on this kernel (4.13+)', 'kernel');
      // Make sure some pages are shared: two identical buffers, merged.
      const a = alloc(64 * pageSize);
      const b = alloc(64 * pageSize);
      try {
        fillPages(a, 11, pageSize);
        fillPages(b, 11, pageSize);
        await waitForMerge(a, { boost: true, timeoutMs: 120_000 });
        const boosted = readSettings();
        expect(systemStats().pagesShared).toBeGreaterThan(0);
        const err = (() => {
          try {
            configure({
              sleepMillisecs: 1234,
              useZeroPages: boosted.useZeroPages === 1 ? 0 : 1,
              maxPageSharing: boosted.maxPageSharing! + 1,
            });
          } catch (e) {
            return e;
          }
        })();
        expect(err).toMatchObject({ name: 'KsmError', code: 'EBUSY' });
        expect((err as Error).message).toMatch(/run: 2/);
        expect(readSettings()).toEqual(boosted);
      } finally {
        free(a);
        free(b);
      }
    }));
});

describe('configure: no permission', { timeout: 300_000 }, () => {
  beforeEach(({ skip }) => requireKsm({ skip }));

  // The child tries to write pages_to_scan with the value it already has, so even if the
  // write went through, nothing on the machine would change.
  const script =
    `const c = require(${JSON.stringify(libModule('control'))});` +
    `const s = c.readSettings();` +
    `try { c.configure(s.advisorMode === 'scan-time' ? { sleepMillisecs: s.sleepMillisecs + 1 } : { pagesToScan: s.pagesToScan }); console.log(JSON.stringify({ ok: true })); }` +
    `catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }`;

  it('as an unprivileged user: ERR_KSM_PERMISSION that says to run as root', (ctx) => {
    const nobody = (() => {
      try {
        return execFileSync('id', ['-u', 'nobody']).toString().trim();
      } catch {
        return null;
      }
    })();
    if (nobody === null || process.getuid?.() !== 0) skipTest(ctx, 'needs root and a "nobody" user');
    const out = execFileSync(
      'setpriv',
      ['--reuid', nobody, '--regid', nobody, '--clear-groups', process.execPath, '--import', TSX, '-e', script],
      {
        env: { ...process.env, NODE_KSM_BINARY: ADDON },
        cwd: '/',
      },
    );
    const r = JSON.parse(out.toString()) as ChildAnswer;
    expect(r).toMatchObject({ name: 'KsmError', code: 'ERR_KSM_PERMISSION' });
    expect(r.message).toMatch(/EACCES/);
    expect(r.message).toMatch(/root/);
  });

  it('with /sys/kernel/mm/ksm mounted read-only: ERR_KSM_PERMISSION that says to configure the host', (ctx) => {
    const cmd = `mount --bind ${KSM} ${KSM} && mount -o remount,bind,ro ${KSM} && exec "$0" --import "$1" -e "$2"`;
    let out: Buffer;
    try {
      out = execFileSync(
        'unshare',
        ['-m', '--propagation', 'private', 'sh', '-c', cmd, process.execPath, TSX, script],
        {
          env: { ...process.env, NODE_KSM_BINARY: ADDON },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
    } catch (err) {
      skipTest(ctx, `cannot make a read-only mount namespace here: ${(err as Error).message.split('\n')[0]}`);
    }
    const r = JSON.parse(out.toString()) as ChildAnswer;
    expect(r).toMatchObject({ name: 'KsmError', code: 'ERR_KSM_PERMISSION' });
    expect(r.message).toMatch(/EROFS/);
    expect(r.message).toMatch(/read-only/);
  });
});
