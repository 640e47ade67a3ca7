/**
 * What this kernel must give, feature by feature, from its version: run on the host by
 * `npm test` and inside QEMU guests of Debian's 5.10, 6.1 and 6.12 by `npm run
 * test:kernels`. Each expectation is exact for the kernel it runs on: a feature the kernel
 * has must work, and one it lacks must be undefined, a typed error and a support() reason,
 * never a crash or a zero.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { boost, boostState } from '../lib/boost';
import { configure, readSettings } from '../lib/control';
import { bufferStats } from '../lib/buffer-stats';
import { alloc, free, pageSize, processMerging, setProcessMerging } from '../lib/memory';
import { counterFreshness, liveMergingPages } from '../lib/cli/status';
import { kpageflagsKsmReliable, processStats, systemStats } from '../lib/stats';
import { support } from '../lib/support';
import { waitForMerge } from '../lib/wait';
import { DIST, ensureDist } from './helpers/dist';
import { lockedAndReleased } from './helpers/expect';
import { fillPages, pollUntil, requireKsm, withFastKsm } from './helpers/ksm';
import { featuresOf, SYSFS_OLD, sysfsNew } from './helpers/kernels';
import { skipTest } from './helpers/skips';

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
/** Set by scripts/test-kernels.mts in its guests: nothing else runs there, so counts are exact. */
const GUEST = process.env.NODE_KSM_GUEST !== undefined;
const has = featuresOf(os.release());
const SYSFS_NEW = sysfsNew(has);
/** sizeof(struct ksm_rmap_item) on 64-bit kernels, which ksm_process_profit charges per tracked page. */
const RMAP_ITEM_BYTES = 64;

/** The method processStats must use here for this process (root: kpageflags is exact). */
const expectedMethod = has.profit
  ? 'ksm_stat'
  : has.mergingPagesFile
    ? 'ksm_merging_pages'
    : isRoot
      ? 'kpageflags'
      : 'pagemap';

function duplicates(bytes: number, seed: number): [Buffer, Buffer] {
  const bufs: [Buffer, Buffer] = [alloc(bytes), alloc(bytes)];
  for (const b of bufs) fillPages(b, seed, pageSize);
  return bufs;
}

describe(`Linux ${os.release()}: what the kernel has`, () => {
  it('support() lists exactly the features of this kernel, each missing one with its reason', () => {
    const s = support();
    expect(s.available).toBe(true);
    expect(s.features).toEqual({
      madvise: true,
      prctl: has.prctl,
      ksmStat: has.ksmStat,
      mergingPages: has.mergingPagesFile,
      smapsKsm: has.smapsKsm,
      advisor: has.advisor,
      smartScan: has.smartScan,
      zeroPages: has.zeroPages,
    });
    const reasons = s.reasons.join('\n');
    const says = (re: RegExp, missing: boolean) => expect(re.test(reasons), `${re} in:\n${reasons}`).toBe(missing);
    says(/PR_SET_MEMORY_MERGE is not supported: process-wide merging needs Linux 6\.4\+/, !has.prctl);
    says(/No scan-time advisor/, !has.advisor);
    says(/No smart_scan/, !has.smartScan);
    says(/ksm_zero_pages is not counted/, !has.zeroPages);
    says(/smaps has no KSM: line/, !has.smapsKsm);
    says(/No per-process KSM counters .*page by page/, !has.mergingPagesFile);
    says(/ksm_stat is missing/, has.mergingPagesFile && !has.ksmStat);
    says(/ksm_stat has only ksm_rmap_items/, has.ksmStat && !has.profit);
  });

  it('systemStats() has the files of this kernel and undefined for the rest', () => {
    const files = fs.readdirSync('/sys/kernel/mm/ksm');
    for (const f of SYSFS_OLD) expect(files, f).toContain(f);
    for (const [f, present] of SYSFS_NEW) expect(files.includes(f), f).toBe(present);
    const s = systemStats();
    expect(s.generalProfitBytes === undefined).toBe(!has.profit);
    expect(s.ksmZeroPages === undefined).toBe(!has.zeroPages);
    expect(s.smartScan === undefined).toBe(!has.smartScan);
    expect(s.advisorMode === undefined).toBe(!has.advisor);
    if (has.advisor) expect(['none', 'scan-time']).toContain(s.advisorMode);
    expect(s.savedBytes).toBe((s.pagesSharing! + Math.max(0, s.ksmZeroPages ?? 0)) * pageSize);
  });

  it('processStats() of this process: the fields this kernel has, and undefined for the rest', () => {
    const s = processStats();
    expect(s.method).toBe(expectedMethod);
    expect(typeof s.mergingPages).toBe('number');
    expect(s.mergedBytes).toBe(s.mergingPages! * pageSize);
    expect(s.rmapItems === undefined).toBe(!has.ksmStat);
    expect(s.profitBytes === undefined).toBe(!has.profit);
    expect(s.zeroPages === undefined).toBe(!has.zeroPages);
    expect(s.mergeAny === undefined).toBe(!has.mergeFlags);
    // Without per-process files, `mergeable` comes from smaps (see ProcessStats.mergeable).
    expect(s.mergeable === undefined).toBe(!has.mergeFlags && has.mergingPagesFile);
    // A kernel thread has no memory: no figures at all, whatever the kernel.
    expect(processStats(2)).toEqual({ pid: 2 });
  });

  it('processStats({ method }) forces a method, and one the kernel lacks is ERR_KSM_UNSUPPORTED', () => {
    const code = (m: 'ksm_stat' | 'ksm_merging_pages') => {
      try {
        return processStats(process.pid, { method: m }).method;
      } catch (err) {
        return (err as { code?: string }).code;
      }
    };
    expect(code('ksm_stat')).toBe(has.profit ? 'ksm_stat' : 'ERR_KSM_UNSUPPORTED');
    expect(code('ksm_merging_pages')).toBe(has.mergingPagesFile ? 'ksm_merging_pages' : 'ERR_KSM_UNSUPPORTED');
    expect(processStats(process.pid, { method: 'pagemap' }).method).toBe('pagemap');
  });

  it("kpageflags' KSM flag is trusted exactly where the kernel sets it on KSM pages only", (ctx) => {
    if (!isRoot) skipTest(ctx, '/proc/kpageflags needs root');
    expect(kpageflagsKsmReliable()).toBe(has.kpageflagsKsm);
  });

  it('setProcessMerging / processMerging: work from 6.4, a typed ERR_KSM_UNSUPPORTED before', () => {
    if (has.prctl) {
      expect(processMerging()).toBe(false);
      return;
    }
    for (const call of [() => setProcessMerging(true), () => processMerging()]) {
      let caught: unknown;
      try {
        call();
      } catch (err) {
        caught = err;
      }
      expect(caught).toMatchObject({ name: 'KsmError', code: 'ERR_KSM_UNSUPPORTED' });
      expect((caught as Error).message).toMatch(/PR_(SET|GET)_MEMORY_MERGE/);
    }
  });

  it('readSettings() has the writable knobs of this kernel; configure() refuses the others', () => {
    const s = readSettings();
    expect(s.smartScan === undefined).toBe(!has.smartScan);
    expect(s.advisorMode === undefined).toBe(!has.advisor);
    expect(s.advisorTargetScanTime === undefined).toBe(!has.advisor);
    expect(typeof s.pagesToScan).toBe('number');
    if (!has.smartScan)
      expect(() => configure({ smartScan: 0 })).toThrow(expect.objectContaining({ code: 'ERR_KSM_UNSUPPORTED' }));
    if (!has.advisor)
      expect(() => configure({ advisorMode: 'none' })).toThrow(
        expect.objectContaining({ code: 'ERR_KSM_UNSUPPORTED' }),
      );
  });
});

describe(`Linux ${os.release()}: merging for real`, { timeout: 900_000 }, () => {
  it('two identical buffers merge; every figure of this kernel agrees', async (ctx) => {
    requireKsm(ctx);
    const pages = (8 * MiB) / pageSize;
    const [a, b] = duplicates(8 * MiB, 7);
    const c = alloc(8 * MiB);
    fillPages(c, 8, pageSize);
    try {
      await withFastKsm(async () => {
        const r = await waitForMerge(b, { ratio: 1, timeoutMs: 600_000 });
        expect(r).toMatchObject({ ratio: 1, mergedPages: pages, totalPages: pages, reason: 'ratio' });
        // The pages of a merged with b's; c is unique.
        expect(bufferStats(a)).toMatchObject({ mergedPages: pages, residentPages: pages, mergeable: true });
        expect(bufferStats(c).mergedPages).toBe(0);
        // smaps describes a buffer only when its mapping is the buffer alone (the kernel may
        // join a, b and c into one), and has a KSM: line only from 6.7.
        const exact = isRoot && has.kpageflagsKsm ? 'kpageflags' : 'pagemap';
        expect(has.smapsKsm ? ['smaps', exact] : [exact]).toContain(bufferStats(a).method);
        if (!has.smapsKsm)
          expect(() => bufferStats(a, { method: 'smaps' })).toThrow(
            expect.objectContaining({ code: 'ERR_KSM_UNSUPPORTED' }),
          );
        // The process's figure: by the kernel's counter where it has one, page by page
        // otherwise, and the two agree where both exist.
        const proc = processStats();
        expect(proc.method).toBe(expectedMethod);
        expect(proc.mergingPages).toBe(2 * pages);
        if (isRoot && has.kpageflagsKsm) {
          expect(processStats(process.pid, { method: 'kpageflags' }).mergingPages).toBe(2 * pages);
        } else if (isRoot) {
          expect(() => processStats(process.pid, { method: 'kpageflags' })).toThrow(/every anonymous page/);
        }
        if (has.ksmStat) expect(proc.rmapItems).toBeGreaterThanOrEqual(3 * pages);
        // ksm_process_profit: (merging + zero pages) × page - rmap items × sizeof(struct ksm_rmap_item), 64 on x86-64.
        if (has.profit) {
          const zero = Math.max(0, proc.zeroPages ?? 0);
          expect(proc.profitBytes).toBe((2 * pages + zero) * pageSize - proc.rmapItems! * RMAP_ITEM_BYTES);
        }
        const sys = systemStats();
        if (GUEST) {
          // Nothing else merges in the guest: the machine's figures are these buffers'.
          expect(sys.pagesShared).toBe(pages);
          expect(sys.pagesSharing).toBe(pages);
          expect(sys.savedBytes).toBe(pages * pageSize);
        } else {
          expect(sys.pagesSharing).toBeGreaterThanOrEqual(pages);
        }
      });
    } finally {
      for (const x of [a, b, c]) free(x);
    }
  });

  it("waitForMerge('process') merges and reports this kernel's figures", async (ctx) => {
    requireKsm(ctx);
    const pages = (4 * MiB) / pageSize;
    const [a, b] = duplicates(4 * MiB, 11);
    try {
      await withFastKsm(async () => {
        const r = await waitForMerge('process', { ratio: 1, timeoutMs: 600_000 });
        expect(r.ratio).toBe(1);
        expect(r.mergedPages).toBeGreaterThanOrEqual(2 * pages);
        expect((r.stats as { method?: string }).method).toBe(expectedMethod);
      });
    } finally {
      free(a);
      free(b);
    }
  });

  it('waitForMerge({ boost: true }) boosts the knobs this kernel has and puts them back', async (ctx) => {
    requireKsm(ctx);
    const pages = (4 * MiB) / pageSize;
    const [a, b] = duplicates(4 * MiB, 13);
    try {
      await lockedAndReleased(async () => {
        const before = readSettings();
        const prev = configure({ run: 1, pagesToScan: 100, sleepMillisecs: 20 });
        try {
          let boosted: ReturnType<typeof readSettings> | undefined;
          const r = await waitForMerge(b, {
            boost: true,
            ratio: 1,
            timeoutMs: 600_000,
            onProgress: () => (boosted ??= readSettings()),
          });
          expect(r.mergedPages).toBe(pages);
          if (boosted !== undefined) {
            expect(boosted).toMatchObject({ run: 1, pagesToScan: 10_000, sleepMillisecs: 0 });
            expect(boosted.smartScan).toBe(has.smartScan ? 0 : undefined);
            expect(boosted.advisorMode).toBe(has.advisor ? 'none' : undefined);
          }
          expect(boostState()).toBeNull();
          expect(readSettings()).toMatchObject({ run: 1, pagesToScan: 100, sleepMillisecs: 20 });
        } finally {
          configure(prev);
        }
        expect(readSettings()).toEqual(before);
      });
    } finally {
      free(a);
      free(b);
    }
  });

  it('boost() and release(): exactly the knobs this kernel has, then the originals', async (ctx) => {
    requireKsm(ctx);
    await lockedAndReleased(async () => {
      const before = readSettings();
      const h = await boost();
      const expected: Record<string, unknown> = { run: 1, pagesToScan: 10_000, sleepMillisecs: 0 };
      if (has.smartScan) expected.smartScan = 0;
      if (has.advisor) expected.advisorMode = 'none';
      expect(h.settings).toEqual(expected);
      expect(readSettings()).toMatchObject(expected);
      await h.release();
      expect(readSettings()).toEqual(before);
    });
  });
});

describe(`Linux ${os.release()}: the CLI`, { timeout: 900_000 }, () => {
  const main = path.join(DIST, 'cli', 'main.js');

  it('status --json: the fields this kernel has, and stale counters once merged memory is gone with ksmd stopped', async (ctx) => {
    requireKsm(ctx);
    expect(ensureDist()).toBe(true);
    const pages = (4 * MiB) / pageSize;
    const status = () => {
      const r = spawnSync(process.execPath, [main, 'status', '--json'], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as {
        stats: Record<string, unknown>;
        settings: Record<string, unknown>;
        counters: { state: string; stalePages: number; livePages: number; countedPages: number };
        advice: Array<{ code: string; message: string }>;
      };
    };
    let child: ChildProcess | undefined;
    const t0 = performance.now();
    // Where the time goes, for slow emulated guests.
    const phase = (what: string) =>
      console.log(`stale-counters test: ${what} at ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    try {
      await withFastKsm(async () => {
        // ksmd lets go of what earlier tests freed when its scan next reaches their process
        // (and stops scanning once no process has mergeable memory left, so full_scans
        // alone cannot say when): until the live processes account for every counted page.
        const counted = (s: ReturnType<typeof systemStats>) => s.pagesShared! + s.pagesSharing!;
        const scans = systemStats().fullScans!;
        const settled = await pollUntil(
          () => counted(systemStats()) === liveMergingPages().pages || systemStats().fullScans! >= scans + 2,
          300_000,
          100,
        );
        expect(settled).toBe(true);
        phase('settled');
        // A child holds two merged copies, and exits while ksmd is stopped.
        const c = spawn(
          process.execPath,
          [
            '-e',
            `const k = require(${JSON.stringify(DIST)});
             const bufs = [k.alloc(${4 * MiB}), k.alloc(${4 * MiB})];
             for (const b of bufs) for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(Math.imul(i + 1, 2654435761) >>> 0, i);
             k.waitForMerge(bufs[1], { ratio: 1 }).then(() => process.stdout.write('merged\\n'), (e) => { console.error(e); process.exit(1); });
             process.stdin.on('end', () => process.exit(0)); process.stdin.resume();`,
          ],
          { stdio: ['pipe', 'pipe', 'inherit'] },
        );
        child = c;
        await new Promise<void>((resolve, reject) => {
          c.stdout.once('data', () => resolve());
          c.once('exit', (code) => reject(new Error(`child exited ${code} before merging`)));
        });
        phase('child merged');
        configure({ run: 0 });
        const withChild = counted(systemStats());
        const gone = new Promise((resolve) => c.once('exit', resolve));
        c.stdin.end();
        await gone;
        const report = status();
        phase('status --json');
        expect(report.stats.run).toBe(0);
        expect('generalProfit' in report.stats).toBe(has.profit);
        expect('ksmZeroPages' in report.stats).toBe(has.zeroPages);
        expect('advisorMode' in report.settings).toBe(has.advisor);
        expect('smartScan' in report.settings).toBe(has.smartScan);
        // The child's pages are still counted, by nobody alive.
        expect(report.counters.countedPages).toBe(withChild);
        expect(report.counters.state).toBe('stale');
        if (GUEST) expect(report.counters).toMatchObject({ livePages: 0, stalePages: 2 * pages });
        else expect(report.counters.stalePages).toBeGreaterThanOrEqual(2 * pages);
        expect(report.advice.map((a) => a.code)).toContain('stale-counters');
        const text = spawnSync(process.execPath, [main, 'status'], { encoding: 'utf8' });
        expect(text.stdout).toMatch(/STALE: .* is memory that has been freed/);
        // ksmd scanning again drops them. While it runs counterFreshness calls the figures
        // fresh whatever they count, so ask it as if ksmd were stopped.
        configure({ run: 1 });
        const fresh = await pollUntil(
          () =>
            counterFreshness({ ...systemStats(), run: 0 }, liveMergingPages()).state === 'fresh' &&
            (!GUEST || counted(systemStats()) === 0),
          300_000,
          200,
        );
        expect(fresh).toBe(true);
        configure({ run: 0 });
        expect(status().counters.state).toBe('fresh');
        phase('fresh again');
      });
    } finally {
      child?.kill('SIGKILL');
    }
  });
});

describe('boost state directory', { timeout: 900_000 }, () => {
  it('NODE_KSM_STATE_DIR moves it; a read-only one is EROFS that names the cause and the fix', async (ctx) => {
    requireKsm(ctx);
    expect(ensureDist()).toBe(true);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksm-state-'));
    const script = `const b = require(${JSON.stringify(path.join(DIST, 'boost.js'))});
      b.boost().then(async (h) => { const s = b.boostState(); await h.release(); console.log(JSON.stringify({ file: s.file })); },
        (e) => console.log(JSON.stringify({ code: e.code, message: e.message })));`;
    try {
      await lockedAndReleased(async () => {
        const ok = spawnSync(process.execPath, ['-e', script], {
          env: { ...process.env, NODE_KSM_STATE_DIR: dir },
          encoding: 'utf8',
        });
        expect(JSON.parse(ok.stdout)).toEqual({ file: `${dir}/boost.json` });
        await Promise.resolve();
      });
      const ro = spawnSync(
        'unshare',
        ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs -o ro tmpfs "$2" && exec "$0" -e "$1"'].concat([
          process.execPath,
          script,
          dir,
        ]),
        { env: { ...process.env, NODE_KSM_STATE_DIR: `${dir}/sub` }, encoding: 'utf8' },
      );
      if (ro.status !== 0 && ro.stdout === '') skipTest(ctx, `cannot make a mount namespace here: ${ro.stderr}`);
      const out = JSON.parse(ro.stdout) as { code: string; message: string };
      expect(out.code).toBe('EROFS');
      expect(out.message).toMatch(/read-only filesystem \(EROFS\), not a permission problem/);
      expect(out.message).toMatch(/NODE_KSM_STATE_DIR/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
