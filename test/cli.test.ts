/**
 * The node-ksm command, run as a child process against the real machine. Every test that
 * changes /sys/kernel/mm/ksm, or compares settings that another test file might be
 * changing, holds the machine-wide test lock and restores what it found.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { afterEach, beforeAll, describe, expect, onTestFinished, test, vi } from 'vitest';
import { advise, estimateScan } from '../lib/cli/status';
import { formatBytes } from '../lib/cli/format';
import { pageSize } from '../lib/memory';
import { computeSystemStats, processStats, systemStats, type SystemStats } from '../lib/stats';
import { ensureDist } from './helpers/dist';
import { skipTest } from './helpers/skips';
import { lockKsm, pollUntil, requireKsm } from './helpers/ksm';
import { labelProblems, rsvgAvailable } from './helpers/render';
import { restore, snapshot } from './helpers/sysfs';

// Other test runs on this machine may hold the KSM test lock for minutes.
vi.setConfig({ testTimeout: 600_000 });

const ROOT = path.join(__dirname, '..');
const MAIN = path.join(ROOT, 'dist/cli/main.js');
const NOBODY = 65534;

beforeAll(() => {
  // The command under test is the compiled one; rebuild when lib/ is newer than dist/.
  expect(ensureDist()).toBe(true);
  expect(fs.existsSync(MAIN)).toBe(true);
}, 120_000);

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], opts: { uid?: number } = {}): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
    ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid } : {}),
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function json<T = Record<string, unknown>>(r: Run): T {
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as T;
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function start(args: string[]): {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
} {
  const child = spawn(process.execPath, [MAIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, out: () => out, err: () => err, exit };
}

/** Runs fn under the test lock and puts every knob back afterwards. */
async function locked<T>(fn: () => Promise<T> | T, settings: Record<string, string> = {}): Promise<T> {
  const unlock = await lockKsm();
  const before = snapshot();
  try {
    // advisor_mode first: pages_to_scan cannot be written while the advisor is on, and
    // leaving the advisor resets it.
    const order = ['advisor_mode', ...Object.keys(settings).filter((k) => k !== 'advisor_mode')];
    for (const k of order) if (settings[k] !== undefined) fs.writeFileSync(`/sys/kernel/mm/ksm/${k}`, settings[k]);
    return await fn();
  } finally {
    try {
      restore(before);
    } finally {
      unlock();
    }
  }
}

/** The figures that move while ksmd runs or processes exit. */
const MOVING = new Set([
  'fullScans',
  'pagesScanned',
  'pagesShared',
  'pagesSharing',
  'pagesUnshared',
  'pagesVolatile',
  'pagesSkipped',
  'stableNodeChains',
  'stableNodeDups',
  'generalProfit',
  'generalProfitBytes',
  'ksmZeroPages',
  'savedBytes',
  'sharingRatio',
]);

/** Settings and page size must match exactly; moving figures must lie between two reads. */
function expectAgrees(reported: SystemStats, before: SystemStats, after: SystemStats): void {
  expect(Object.keys(reported).sort()).toEqual(Object.keys(before).sort());
  for (const [key, value] of Object.entries(before)) {
    const got = (reported as unknown as Record<string, unknown>)[key];
    const late = (after as unknown as Record<string, unknown>)[key];
    if (!MOVING.has(key) || value === late) expect(got, key).toEqual(value);
    else if (key === 'fullScans' || key === 'pagesScanned') {
      expect(got as number, key).toBeGreaterThanOrEqual(value as number);
      expect(got as number, key).toBeLessThanOrEqual(late as number);
    }
  }
}

function codes(report: { advice: Array<{ code: string }> }): string[] {
  return report.advice.map((a) => a.code);
}

describe('usage', () => {
  test('no command, an unknown command and bad flags exit 2 with the usage on stderr', () => {
    const cases: string[][] = [
      [],
      ['frobnicate'],
      ['status', '--nope'],
      ['status', 'extra'],
      ['top', '--limit', 'many'],
      ['top', '--limit', '0'],
      ['watch', '--interval', 'soon'],
      ['watch', '--duration'],
      ['tune'],
      ['tune', '--pages-to-scan', '-5'],
      ['tune', '--advisor', 'fast'],
      ['tune', '--run', '3'],
      ['boost', '--for', 'forever'],
      ['restore', '--force=yes'],
      ['exporter', '--port', '70000'],
    ];
    for (const args of cases) {
      const r = run(args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(/Usage: node-ksm/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.stdout).toBe('');
    }
  });

  test('--help prints the usage on stdout and exits 0', () => {
    const r = run(['--help']);
    expect(r.status).toBe(0);
    for (const c of ['status', 'top', 'watch', 'tune', 'boost', 'restore', 'exporter']) expect(r.stdout).toContain(c);
    const t = run(['tune', '--help']);
    expect(t.status).toBe(0);
    expect(t.stdout).toContain('--pages-to-scan');
  });
});

describe('status', () => {
  test('--json agrees with systemStats()', async (ctx) => {
    requireKsm(ctx);
    await locked(() => {
      const before = systemStats();
      const report = json<{
        stats: SystemStats;
        settings: Record<string, unknown>;
        pageSize: number;
        running: boolean;
      }>(run(['status', '--json']));
      const after = systemStats();
      expectAgrees(report.stats, before, after);
      expect(report.pageSize).toBe(pageSize);
      expect(report.running).toBe(before.run === 1);
      expect(report.settings.pagesToScan).toBe(before.pagesToScan);
      expect(report.settings.advisorMode).toBe(before.advisorMode);
    });
  });

  test('human output: every setting, page counts in bytes, and the advice', async (ctx) => {
    requireKsm(ctx);
    await locked(
      () => {
        const r = run(['status']);
        expect(r.status).toBe(0);
        expect(r.stdout).toContain(`page size ${formatBytes(pageSize)}`);
        for (const k of ['pages_to_scan', 'sleep_millisecs', 'pages_sharing', 'pages_unshared', 'Advice'])
          expect(r.stdout).toContain(k);
        expect(r.stdout).toMatch(/KSM is off \(run=0\)/);
      },
      { run: '0' },
    );
  });

  test('KSM off is advised with the command that starts it', async (ctx) => {
    requireKsm(ctx);
    await locked(
      () => {
        const report = json<{ advice: Array<{ code: string; message: string }> }>(run(['status', '--json']));
        const off = report.advice.find((a) => a.code === 'ksm-off');
        expect(off?.message).toMatch(/node-ksm tune --run 1|node-ksm boost/);
      },
      { run: '0' },
    );
  });

  test('the scan rate and a full pass are worked out from pages_to_scan, sleep and the page size', async (ctx) => {
    requireKsm(ctx);
    await locked(
      () => {
        const report = json<{ advice: Array<{ code: string; message: string }>; scan: { bytesPerSecond: number } }>(
          run(['status', '--json']),
        );
        const rate = report.advice.find((a) => a.code === 'scan-rate');
        expect(report.scan.bytesPerSecond).toBe((100 * pageSize * 1000) / 20);
        expect(rate?.message).toContain(
          `pages_to_scan=100 with sleep 20 ms scans ${formatBytes((100 * pageSize * 1000) / 20)}/s`,
        );
      },
      { advisor_mode: 'none', pages_to_scan: '100', sleep_millisecs: '20', run: '0' },
    );
  });

  test('the scan-time advisor is explained when it is on', async (ctx) => {
    requireKsm(ctx);
    if (!fs.existsSync('/sys/kernel/mm/ksm/advisor_mode')) skipTest(ctx, 'no advisor on this kernel (6.8+)', 'kernel');
    await locked(
      () => {
        const report = json<{ advice: Array<{ code: string; message: string }> }>(run(['status', '--json']));
        expect(codes(report)).toContain('advisor');
        expect(report.advice.find((a) => a.code === 'advisor')!.message).toContain('target-scan-time');
        expect(codes(report)).not.toContain('busy-loop');
      },
      { advisor_mode: 'scan-time', run: '0' },
    );
  });

  test('zero-page merging is explained when use_zero_pages=1', async (ctx) => {
    requireKsm(ctx);
    await locked(
      () => {
        const r = run(['status', '--json']);
        expect(codes(json<{ advice: Array<{ code: string }> }>(r))).toContain('zero-pages');
        expect(run(['status']).stdout).toContain('use_zero_pages=1');
      },
      { use_zero_pages: '1', run: '0' },
    );
  });

  test('not root: status still works and says how to act on the advice', () => {
    const r = run(['status', '--json'], { uid: NOBODY });
    const report = json<{ canConfigure: boolean; advice: Array<{ code: string; message: string }> }>(r);
    expect(report.canConfigure).toBe(false);
    expect(report.advice.find((a) => a.code === 'not-root')?.message).toMatch(/sudo node-ksm/);
  });

  // States that need gigabytes of memory or hours of uptime are checked on the pure advice function.
  test('advice for a slow full pass, volatile pages and negative profit (from figures)', () => {
    const files = {
      run: '1',
      pages_to_scan: '100',
      sleep_millisecs: '20',
      use_zero_pages: '0',
      advisor_mode: '[none] scan-time',
      pages_shared: '100000',
      pages_sharing: '900000',
      pages_unshared: '2000000',
      pages_volatile: '5000',
      full_scans: '3',
      general_profit: '-4096',
      ksm_zero_pages: '0',
    };
    const stats = computeSystemStats(files, 4096);
    const scan = estimateScan(stats);
    expect(scan.mergeablePages).toBe(3_005_000);
    expect(scan.fullPassSeconds).toBeCloseTo(3_005_000 / 5000, 6);
    const advice = advise(stats, true);
    expect(advice.map((a) => a.code)).toEqual(expect.arrayContaining(['scan-rate', 'scan-slow', 'negative-profit']));
    expect(advice.find((a) => a.code === 'scan-rate')!.message).toBe(
      'pages_to_scan=100 with sleep 20 ms scans 19.5 MiB/s: a full pass over the 11.5 GiB marked mergeable takes 10 min.',
    );
    expect(advice.map((a) => a.code)).not.toContain('not-root');
    const busy = advise(computeSystemStats({ ...files, sleep_millisecs: '0', pages_volatile: '2000000' }, 4096), false);
    expect(busy.map((a) => a.code)).toEqual(expect.arrayContaining(['busy-loop', 'volatile', 'not-root']));
  });
});

describe('top', () => {
  const CHILD = `
    const k = require(${JSON.stringify(path.join(ROOT, 'dist/index.js'))});
    const size = 1024 * k.pageSize;
    const keep = [k.alloc(size), k.alloc(size)];
    // Page p of both buffers holds p: pairs of duplicates, distinct from each other.
    for (const b of keep) for (let p = 0; p < 1024; p++) b.writeUInt32LE(p + 1, p * k.pageSize);
    process.stdout.write('ready\\n');
    setInterval(() => keep.length, 1000);
  `;

  test('lists a process with merged pages, with the figures of its ksm_stat, ranked by profit', async (ctx) => {
    requireKsm(ctx);
    const child = spawn(process.execPath, ['-e', CHILD], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    const pid = child.pid!;
    await locked(
      async () => {
        const merged = await pollUntil(() => (processStats(pid).mergingPages ?? 0) >= 2048, 60_000);
        expect(merged).toBe(true);
        const before = processStats(pid);
        const report = json<{ pageSize: number; processes: Array<Record<string, unknown>>; more: number }>(
          run(['top', '--json', '--limit', '100000']),
        );
        const after = processStats(pid);
        const entry = report.processes.find((p) => p.pid === pid);
        expect(entry).toBeDefined();
        expect(entry!.command).toMatch(/node/);
        for (const key of ['mergingPages', 'profitBytes', 'rmapItems', 'mergeAny'] as const) {
          if (before[key] === after[key]) expect(entry![key], key).toEqual(before[key]);
        }
        expect(entry!.mergedBytes).toBe((entry!.mergingPages as number) * pageSize);
        const profits = report.processes.map((p) => (p.profitBytes ?? p.mergedBytes ?? 0) as number);
        expect(profits).toEqual([...profits].sort((a, b) => b - a));

        const limited = json<{ processes: unknown[]; more: number }>(run(['top', '--json', '--limit', '1']));
        expect(limited.processes.length).toBe(1);
        const human = run(['top']);
        expect(human.status).toBe(0);
        expect(human.stdout).toMatch(new RegExp(`^${pid}\\s`, 'm'));
      },
      { advisor_mode: 'none', pages_to_scan: '10000', sleep_millisecs: '0', smart_scan: '0', run: '1' },
    );
  });
});

describe('watch', () => {
  test('--duration 3s --svg writes a valid SVG with one point per sample; --json samples agree with systemStats()', async (ctx) => {
    requireKsm(ctx);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-watch-'));
    onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
    const svg = path.join(dir, 'out.svg');
    await locked(async () => {
      const w = start(['watch', '--duration', '3s', '--interval', '1s', '--svg', svg, '--json']);
      expect(await w.exit).toBe(0);
      const samples = w
        .out()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { timeMs: number; ksmdCpuPercent?: number; stats: SystemStats });
      expect(samples.length).toBe(3);
      const now = systemStats();
      for (const s of samples) {
        expect(Object.keys(s.stats).sort()).toEqual(Object.keys(now).sort());
        expect(s.stats.pagesToScan).toBe(now.pagesToScan);
        expect(s.stats.run).toBe(now.run);
        // A share of the machine's cores: ksmd may be idle, never above all of them.
        expect(s.ksmdCpuPercent).toBeGreaterThanOrEqual(0);
        expect(s.ksmdCpuPercent).toBeLessThanOrEqual(100 * os.availableParallelism());
      }
      const text = fs.readFileSync(svg, 'utf8');
      expect(XMLValidator.validate(text)).toBe(true);
      const doc = new XMLParser({
        ignoreAttributes: false,
        isArray: (name) => name === 'polyline' || name === 'g',
      }).parse(text) as { svg: { g: Array<{ '@_class': string; polyline?: Array<Record<string, string>> }> } };
      // One panel of memory saved (a point per sample) and one of ksmd CPU (a step per sample).
      const [saved, cpu] = doc.svg.g.filter((g) => g['@_class'] === 'panel').map((g) => g.polyline ?? []);
      const points = (l: Record<string, string>) => l['@_points']!.trim().split(/\s+/);
      expect(points(saved![0]!).length).toBe(samples.length);
      expect(points(cpu![0]!).length).toBe(2 * samples.length + 1);
      for (const p of [...points(saved![0]!), ...points(cpu![0]!)]) expect(p).toMatch(/^-?\d+(\.\d+)?,-?\d+(\.\d+)?$/);
      if (rsvgAvailable() === null) expect(labelProblems(text)).toEqual([]);
    });
  });

  test('without a terminal it prints one line per sample', () => {
    const r = run(['watch', '--duration', '300ms', '--interval', '100ms']);
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n').length).toBe(3);
    expect(r.stdout).toMatch(/saved .* ksmd .* full_scans \d+/);
  });
});

describe('tune', () => {
  test('writes the settings and prints before and after', async (ctx) => {
    requireKsm(ctx);
    await locked(
      () => {
        const before = systemStats();
        const r = json<{
          before: Record<string, unknown>;
          after: Record<string, unknown>;
          previous: Record<string, unknown>;
        }>(run(['tune', '--pages-to-scan', '321', '--sleep-ms', '33', '--json']));
        const now = systemStats();
        expect(now.pagesToScan).toBe(321);
        expect(now.sleepMillisecs).toBe(33);
        expect(r.before.pagesToScan).toBe(before.pagesToScan);
        expect(r.after.pagesToScan).toBe(321);
        expect(r.after.sleepMillisecs).toBe(33);
        expect(r.previous).toEqual({ pagesToScan: before.pagesToScan, sleepMillisecs: before.sleepMillisecs });

        const human = run(['tune', '--pages-to-scan', '654']);
        expect(human.status).toBe(0);
        expect(human.stdout).toMatch(/pages_to_scan\s+321\s+->\s+654/);
      },
      { advisor_mode: 'none', run: '0' },
    );
  });

  test('the advisor with a target scan time', async (ctx) => {
    requireKsm(ctx);
    if (!fs.existsSync('/sys/kernel/mm/ksm/advisor_mode')) skipTest(ctx, 'no advisor on this kernel (6.8+)', 'kernel');
    await locked(
      () => {
        const r = json<{ after: Record<string, unknown> }>(
          run(['tune', '--advisor', 'scan-time', '--target-scan-time', '77', '--json']),
        );
        expect(r.after.advisorMode).toBe('scan-time');
        expect(systemStats().advisorTargetScanTime).toBe(77);
        // pages_to_scan belongs to the advisor now: asking for it is a usage error.
        const refused = run(['tune', '--pages-to-scan', '500']);
        expect(refused.status).toBe(2);
        expect(refused.stderr).toMatch(/advisor/);
      },
      { advisor_mode: 'none', run: '0' },
    );
  });

  test('not root: exit 1 with the fix, and nothing changes', async (ctx) => {
    requireKsm(ctx);
    await locked(() => {
      const before = snapshot();
      const r = run(['tune', '--pages-to-scan', '222'], { uid: NOBODY });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/root/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(snapshot()).toEqual(before);
    });
  });
});

describe('boost and restore', () => {
  test('boost --for holds the boost and puts every setting back', async (ctx) => {
    requireKsm(ctx);
    await locked(() => {
      const before = snapshot();
      const r = json<{ boosted: Record<string, unknown>; after: Record<string, unknown>; otherHolders: number }>(
        run(['boost', '--for', '1s', '--json']),
      );
      expect(r.boosted).toMatchObject({ run: 1, pagesToScan: 10_000, sleepMillisecs: 0 });
      expect(r.otherHolders).toBe(0);
      expect(snapshot()).toEqual(before);
      expect(r.after.pagesToScan).toBe(Number(before.pages_to_scan));
    });
  });

  test('Ctrl-C releases a boost held until interrupted', async (ctx) => {
    requireKsm(ctx);
    await locked(async () => {
      const before = snapshot();
      const b = start(['boost']);
      expect(await pollUntil(() => b.out().includes('Boosted'), 30_000)).toBe(true);
      expect(snapshot()).toMatchObject({ run: '1', pages_to_scan: '10000', sleep_millisecs: '0' });
      b.child.kill('SIGINT');
      expect(await b.exit).toBe(0);
      expect(b.out()).toMatch(/settings restored/);
      expect(snapshot()).toEqual(before);
    });
  });

  test('restore puts back what a killed boost left behind', async (ctx) => {
    requireKsm(ctx);
    await locked(async () => {
      const before = snapshot();
      expect(json<{ restored: boolean }>(run(['restore', '--json'])).restored).toBe(false);
      const b = start(['boost', '--sleep-ms', '5']);
      expect(await pollUntil(() => b.out().includes('Boosted'), 30_000)).toBe(true);
      b.child.kill('SIGKILL');
      await b.exit;
      expect(snapshot().sleep_millisecs).toBe('5');
      const r = json<{ restored: boolean; settings: Record<string, unknown> }>(run(['restore', '--json']));
      expect(r.restored).toBe(true);
      expect(snapshot()).toEqual(before);
      expect(run(['restore']).stdout).toMatch(/Nothing to restore/);
    });
  });

  test('not root: boost exits 1 with the fix', () => {
    const r = run(['boost', '--for', '1s'], { uid: NOBODY });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/root/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
