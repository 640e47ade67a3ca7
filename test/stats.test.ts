/**
 * processStats, bufferStats, systemStats and support() against the real kernel: after
 * duplicates merge, each buffer's figure is its own (not its mapping's, which the kernel
 * shares with its neighbours), and every figure agrees with what /proc/self/smaps,
 * ksm_stat and /sys/kernel/mm/ksm say directly.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { binding } from '../lib/binding';
import { KsmError } from '../lib/errors';
import { alloc, free, markMergeable, pageSize, setMergeable } from '../lib/memory';
import { parseMaps } from '../lib/procfs';
import { type BufferStats, bufferStats } from '../lib/buffer-stats';
import { KSM_SYSFS, mergingPages, processStats, systemStats, type ProcessStats } from '../lib/stats';
import { support, type Support } from '../lib/support';
import { fillPages, pollUntil, requireKsm, smapsKsmBytes, withFastKsm } from './helpers/ksm';
import { skipTest } from './helpers/skips';

const MiB = 1 << 20;
const ROOT = path.join(__dirname, '..');
const isRoot = process.getuid?.() === 0;
// Tests that take the machine-wide KSM lock may wait for other test runs to let go.
const LOCKED = 600_000;

const live: Buffer[] = [];
afterEach(() => {
  for (const b of live.splice(0)) free(b);
});

function rangeOf(view: Uint8Array, offset = 0, length = view.byteLength): [bigint, bigint] {
  const start = binding!.addressOf(view) + BigInt(offset);
  return [start, start + BigInt(length)];
}

/** The mappings of /proc/self/maps that overlap [start, end). */
function mappingsOver(start: bigint, end: bigint) {
  return parseMaps(fs.readFileSync('/proc/self/maps', 'utf8')).filter((e) => e.start < end && e.end > start);
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

describe('after two duplicate buffers merge (real kernel)', () => {
  it(
    'gives each buffer its own figure, and they agree with ksm_stat, smaps and sysfs',
    async (ctx) => {
      requireKsm(ctx);
      const size = 32 * MiB;
      const pages = size / pageSize;
      // Not mergeable yet, so that sysfs can be read before any of our pages can merge.
      const a = alloc(size, { mergeable: false });
      const b = alloc(size, { mergeable: false });
      const random = alloc(size, { mergeable: false }); // right after the duplicates: likely the same mapping as theirs
      live.push(a, b, random);
      fillPages(a, 11, pageSize);
      fillPages(b, 11, pageSize);
      fillPages(random, 12, pageSize);

      // Everything is read under the lock, once merging is complete (or has stopped
      // changing): then nobody else's use of ksmd can move the figures between two reads.
      await withFastKsm(async () => {
        for (const x of [a, b, random]) setMergeable(x, true);
        const merged = await pollUntil(
          () => bufferStats(a).mergedPages >= 0.95 * pages && bufferStats(b).mergedPages >= 0.95 * pages,
          90_000,
        );
        expect(merged, `a ${bufferStats(a).mergedPages}, b ${bufferStats(b).mergedPages} of ${pages}`).toBe(true);
        await pollUntil(() => bufferStats(a).mergedPages === pages && bufferStats(b).mergedPages === pages, 10_000);
        const sysAfter = systemStats();
        const all = () => [a, b, random].map((x) => bufferStats(x));
        const sum = (s: BufferStats[]) => s.reduce((n, x) => n + x.mergedPages, 0);
        await pollUntil(() => processStats().mergingPages === sum(all()), 10_000);
        const [sa, sb, sr] = all() as [BufferStats, BufferStats, BufferStats];

        for (const s of [sa, sb]) {
          expect(s.bytes).toBe(size);
          expect(s.pages).toBe(pages);
          expect(s.mergedPages).toBeGreaterThanOrEqual(0.95 * pages);
          expect(s.mergedPages).toBeLessThanOrEqual(pages);
          expect(s.mergedBytes).toBe(s.mergedPages * pageSize);
          expect(s.mergedBytes).toBeLessThanOrEqual(size);
          expect(s.residentPages).toBe(pages);
          expect(s.mergeable).toBe(true);
          // Root reads kpageflags; smaps only when the buffer is a mapping of its own.
          expect(['kpageflags', 'smaps']).toContain(s.method);
        }
        expect(sr.mergedPages).toBeLessThanOrEqual(0.01 * pages);
        expect(sr.mergeable).toBe(true);

        // The process: every merged page of ours is one ksm_merging_pages counts.
        const proc = processStats();
        expect(proc.mergingPages).toBe(sa.mergedPages + sb.mergedPages + sr.mergedPages);
        expect(proc.mergedBytes).toBe(proc.mergingPages! * pageSize);
        expect(proc.mergeable).toBe(true);
        expect(proc.rmapItems).toBeGreaterThanOrEqual(proc.mergingPages!);

        // smaps, read directly: our buffers are the only mergeable memory of this process.
        const [lo, hi] = [a, b, random]
          .map((x) => rangeOf(x))
          .reduce(([l, h], [s, e]) => [s < l ? s : l, e > h ? e : h]);
        expect(smapsKsmBytes(0n, 2n ** 64n - 1n)).toBe(proc.mergingPages! * pageSize);
        expect(smapsKsmBytes(lo, hi)).toBe(sa.mergedBytes + sb.mergedBytes + sr.mergedBytes);
        for (const [buf, s] of [
          [a, sa],
          [b, sb],
          [random, sr],
        ] as const) {
          const [start, end] = rangeOf(buf);
          const own = mappingsOver(start, end);
          if (own.length === 1 && own[0]!.start === start && own[0]!.end === end) {
            expect(s.method).toBe('smaps');
            expect(smapsKsmBytes(start, end)).toBe(s.mergedBytes);
          } else {
            // Sharing a mapping: smaps can only speak for all of it, and says more than this buffer has.
            expect(s.method).toBe('kpageflags');
            expect(codeOf(() => bufferStats(buf, { method: 'smaps' }))).toBe('ERR_KSM_UNSUPPORTED');
          }
          // Every method agrees for pages that are all written and not shared with a child.
          expect(bufferStats(buf, { method: 'kpageflags' }).mergedPages).toBe(s.mergedPages);
          expect(bufferStats(buf, { method: 'pagemap' }).mergedPages).toBe(s.mergedPages);
        }

        // The machine: each pair of ours is one KSM page and one sharer more.
        expect(sysAfter.pagesSharing!).toBeGreaterThanOrEqual(Math.min(sa.mergedPages, sb.mergedPages));
        expect(sysAfter.savedBytes).toBe((sysAfter.pagesSharing! + Math.max(0, sysAfter.ksmZeroPages ?? 0)) * pageSize);
        expect(sysAfter.sharingRatio).toBeGreaterThanOrEqual(1);
        // pagesSharing is the whole machine's, and other processes merge (our ksmd runs for
        // them too) and unmerge at any time. So watch it over windows that hold little but
        // ours: a's pairs unmerging (ksmd drops their rmap items on its next pass), then
        // merging again; a window someone else disturbed is tried again.
        const ours = sa.mergedPages;
        const near = (n: number) => Math.abs(n - ours) <= 0.05 * ours;
        const others = sb.mergedPages + sr.mergedPages;
        let moved = { fell: 0, rose: 0 };
        for (let attempt = 0; attempt < 3 && !(near(moved.fell) && near(moved.rose)); attempt++) {
          const s0 = systemStats().pagesSharing!;
          setMergeable(a, false);
          await pollUntil(() => processStats().mergingPages === others, 30_000, 10);
          const s1 = systemStats().pagesSharing!;
          setMergeable(a, true);
          await pollUntil(() => processStats().mergingPages === others + ours, 30_000, 10);
          moved = { fell: s0 - s1, rose: systemStats().pagesSharing! - s1 };
        }
        expect(near(moved.fell) && near(moved.rose), `pagesSharing moved ${JSON.stringify(moved)}, ours ${ours}`).toBe(
          true,
        );

        // A sub-range is measured alone, not by its mapping.
        const half = a.subarray(0, size / 2);
        const sh = bufferStats(half);
        expect(sh.pages).toBe(pages / 2);
        expect(sh.mergedPages).toBeLessThanOrEqual(pages / 2);
        expect(sh.method).toBe('kpageflags');

        // Unmerging shows at once.
        setMergeable(a, false);
        const off = bufferStats(a);
        expect(off.mergedPages).toBe(0);
        expect(off.mergeable).toBe(false);
      });
    },
    LOCKED,
  );

  it(
    'measures the mergeable interior of a Buffer.allocUnsafeSlow like smaps does',
    async (ctx) => {
      requireKsm(ctx);
      const size = 32 * MiB + 100; // not page-sized: the view's first and last pages are not whole
      const x = Buffer.allocUnsafeSlow(size);
      const y = Buffer.allocUnsafeSlow(size);
      const mx = markMergeable(x);
      const my = markMergeable(y);
      // The same content page for page of memory: fill from each interior's first whole page.
      fillPages(x.subarray(mx.offset, mx.offset + mx.length), 21, pageSize);
      fillPages(y.subarray(my.offset, my.offset + my.length), 21, pageSize);
      try {
        expect(mx.length).toBeGreaterThanOrEqual(32 * MiB - pageSize);
        expect(mx.length % pageSize).toBe(0);
        const interior = mx.length / pageSize;
        // bufferStats of a foreign view covers exactly the whole pages that markMergeable covered.
        expect(bufferStats(x).pages).toBe(interior);

        // Compared under the lock, once merging is complete or stuck, as above.
        await withFastKsm(async () => {
          const ok = await pollUntil(() => bufferStats(x).mergedPages >= 0.95 * interior, 90_000);
          expect(ok, `${bufferStats(x).mergedPages} of ${interior}`).toBe(true);
          await pollUntil(
            () => bufferStats(x).mergedPages === interior && bufferStats(y).mergedPages === interior,
            10_000,
          );
          compare();
        });
      } finally {
        markMergeable(x, false);
        markMergeable(y, false);
      }
      expect(bufferStats(x).mergedPages).toBe(0);
      expect(bufferStats(x).mergeable).toBe(false);

      function compare(): void {
        for (const [buf, m] of [
          [x, mx],
          [y, my],
        ] as const) {
          const [start, end] = rangeOf(buf, m.offset, m.length);
          const smaps = smapsKsmBytes(start, end);
          const viaPagemap = bufferStats(buf, { method: 'pagemap' });
          const viaKpageflags = bufferStats(buf, { method: 'kpageflags' });
          const auto = bufferStats(buf);
          expect(viaPagemap.method).toBe('pagemap');
          expect(viaKpageflags.method).toBe('kpageflags');
          for (const s of [viaPagemap, viaKpageflags, auto]) {
            expect(s.pages).toBe(m.length / pageSize);
            expect(s.mergedBytes).toBe(smaps);
            expect(s.mergeable).toBe(true);
          }
          expect(smaps).toBeGreaterThanOrEqual(0.95 * m.length);
        }
      }
    },
    LOCKED,
  );
});

describe('bufferStats without merging', () => {
  it('a view its resizable buffer no longer reaches has no bytes (not a TypeError from V8)', () => {
    const ab = new ArrayBuffer(4 * pageSize, { maxByteLength: 8 * pageSize }) as ArrayBuffer & {
      resize(n: number): void;
    };
    const dv = new DataView(ab, 2 * pageSize, 100);
    ab.resize(pageSize);
    expect(() => dv.byteOffset).toThrow(TypeError);
    for (const method of ['auto', 'pagemap'] as const) {
      expect(bufferStats(dv, { method }), method).toMatchObject({
        bytes: 0,
        pages: 0,
        residentPages: 0,
        mergedPages: 0,
      });
    }
  });

  it('a buffer of its own mapping is measured from smaps, exactly its pages', () => {
    const buf = alloc(3 * pageSize + 1);
    live.push(buf);
    buf.fill(1);
    const [start] = rangeOf(buf);
    const own = mappingsOver(start, start + 1n);
    const s = bufferStats(buf);
    expect(s).toMatchObject({
      bytes: 3 * pageSize + 1,
      pages: 4,
      residentPages: 4,
      mergedPages: 0,
      mergedBytes: 0,
      mergeable: true,
    });
    // The kernel may have joined it to a neighbour; then smaps cannot be used.
    expect(s.method).toBe(
      own[0]!.start === start && own[0]!.end === start + BigInt(4 * pageSize) ? 'smaps' : 'kpageflags',
    );
  });

  it('knows unwritten pages are not resident, and what is not mergeable', () => {
    const buf = alloc(8 * pageSize, { mergeable: false });
    live.push(buf);
    buf[0] = 1;
    for (const method of ['auto', 'kpageflags', 'pagemap'] as const) {
      const s = bufferStats(buf, { method });
      expect(s.residentPages, method).toBe(1);
      expect(s.mergeable, method).toBe(false);
    }
    setMergeable(buf, true);
    expect(bufferStats(buf).mergeable).toBe(true);
    // Nothing present at all: no frame to look up, and zero is still an exact answer.
    const untouched = alloc(2 * pageSize);
    live.push(untouched);
    expect(bufferStats(untouched, { method: 'kpageflags' })).toMatchObject({
      pages: 2,
      residentPages: 0,
      mergedPages: 0,
      method: 'kpageflags',
    });
  });

  it('says which resident pages map the shared zero page (kpageflags)', async (ctx) => {
    // Pages KSM merges into the zero page (use_zero_pages=1): this way of getting zero-page
    // mappings works on every kernel, also where read faults never map the zero page (a
    // host booted with pvm_no_zero_page=1, as this project's VMs are).
    requireKsm(ctx);
    const buf = alloc(64 * pageSize);
    live.push(buf);
    for (let p = 0; p < 64; p++) buf[p * pageSize] = 0; // write faults: 64 real pages of zeros
    expect(bufferStats(buf, { method: 'kpageflags' })).toMatchObject({ residentPages: 64, zeroPages: 0 });
    const s = await withFastKsm(
      () =>
        pollUntil(() => {
          const s = bufferStats(buf, { method: 'kpageflags' });
          return s.zeroPages === 64 ? s : undefined;
        }, 30_000),
      { use_zero_pages: '1' },
    );
    expect(s).toMatchObject({ residentPages: 64, zeroPages: 64, mergedPages: 0 });
  });

  it('a view with no whole page has no pages; a subarray of ours covers the pages it touches', () => {
    expect(bufferStats(Buffer.alloc(100))).toMatchObject({ bytes: 100, pages: 0, mergedPages: 0, residentPages: 0 });
    const buf = alloc(4 * pageSize);
    live.push(buf);
    expect(bufferStats(buf.subarray(10, pageSize + 10)).pages).toBe(2);
    expect(bufferStats(new Uint32Array(buf.buffer, pageSize, pageSize / 4)).pages).toBe(1);
    expect(bufferStats(buf.buffer as ArrayBuffer).pages).toBe(4);
  });

  it('rejects what it cannot measure with Node-style errors', () => {
    for (const bad of [undefined, null, 1, 'x', {}, [1, 2]]) {
      expect(codeOf(() => bufferStats(bad as never))).toBe('ERR_INVALID_ARG_TYPE');
    }
    expect(codeOf(() => bufferStats(new Uint8Array(new SharedArrayBuffer(1 << 16))))).toBe('ERR_INVALID_ARG_TYPE');
    const buf = alloc(pageSize);
    expect(codeOf(() => bufferStats(buf, null as never))).toBe('ERR_INVALID_ARG_TYPE');
    expect(codeOf(() => bufferStats(buf, { method: 'guess' as never }))).toBe('ERR_INVALID_ARG_TYPE');
    free(buf);
    expect(codeOf(() => bufferStats(buf))).toBe('ERR_KSM_FREED');
    const big = alloc(4 * pageSize);
    live.push(big);
    expect(codeOf(() => bufferStats(big.subarray(pageSize), { method: 'smaps' }))).toBe('ERR_KSM_UNSUPPORTED');
  });
});

describe('processStats', () => {
  it('reads this process, and agrees with a direct read of ksm_stat', () => {
    const s = processStats();
    expect(s.pid).toBe(process.pid);
    const direct = fs.readFileSync('/proc/self/ksm_stat', 'utf8');
    expect(direct).toContain(`ksm_merging_pages ${s.mergingPages}\n`);
    expect(direct).toContain(`ksm_rmap_items ${s.rmapItems}\n`);
    expect(typeof s.mergeAny).toBe('boolean');
    expect(mergingPages()).toBe(s.mergingPages);
  });

  it('gives undefined, not zeros, for a kernel thread, and ESRCH for no process', () => {
    expect(processStats(2)).toEqual({ pid: 2 });
    let pid = 2 ** 22 + 1; // above any pid_max
    expect(codeOf(() => processStats(pid))).toBe('ESRCH');
    expect(() => processStats(pid)).toThrow(KsmError);
    expect(codeOf(() => mergingPages(pid))).toBe('ESRCH');
    pid = 0;
    expect(codeOf(() => processStats(pid))).toBe('ERR_OUT_OF_RANGE');
    expect(codeOf(() => processStats(1.5))).toBe('ERR_OUT_OF_RANGE');
    expect(codeOf(() => processStats('1' as never))).toBe('ERR_INVALID_ARG_TYPE');
    expect(codeOf(() => mergingPages(-1))).toBe('ERR_OUT_OF_RANGE');
  });

  describe("another user's process", () => {
    // Loads lib/*.ts in a plain node child, as the test runner does in its own process.
    const hook =
      `const ts=require(${JSON.stringify(path.join(ROOT, 'node_modules/typescript'))});const fs=require('fs');` +
      `require.extensions['.ts']=(m,f)=>m._compile(ts.transpileModule(fs.readFileSync(f,'utf8'),` +
      `{compilerOptions:{module:ts.ModuleKind.CommonJS,target:ts.ScriptTarget.ES2022,esModuleInterop:true}}).outputText,f);`;

    it('root reads the ksm_stat of a process of user nobody', async (ctx) => {
      if (!isRoot) skipTest(ctx, 'needs root to start a process as another user');
      const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], {
        uid: 65534,
        gid: 65534,
        stdio: 'ignore',
      });
      try {
        await pollUntil(
          () => fs.existsSync(`/proc/${child.pid}/ksm_stat`) && fs.statSync(`/proc/${child.pid}`).uid === 65534,
          5000,
        );
        const s = processStats(child.pid);
        expect(s.pid).toBe(child.pid);
        expect(s.rmapItems).toBe(0);
        expect(s.mergingPages).toBe(0);
        expect(s.mergeable).toBe(false);
      } finally {
        child.kill();
      }
    });

    it('a process of user nobody gets EACCES as a KsmError for pid 1, and no configuring', (ctx) => {
      if (!isRoot) skipTest(ctx, 'needs root to start a process as another user');
      const code =
        hook +
        `const s=require(${JSON.stringify(path.join(ROOT, 'lib/stats.ts'))});` +
        `const m=require(${JSON.stringify(path.join(ROOT, 'lib/memory.ts'))});` +
        `const bs=require(${JSON.stringify(path.join(ROOT, 'lib/buffer-stats.ts'))});` +
        `const sup=require(${JSON.stringify(path.join(ROOT, 'lib/support.ts'))});` +
        `const out={};try{s.processStats(1)}catch(e){out.error={name:e.name,code:e.code,message:e.message,isKsm:e instanceof require(${JSON.stringify(path.join(ROOT, 'lib/errors.ts'))}).KsmError}}` +
        `const b=m.alloc(4*m.pageSize);b.fill(1);out.buf=bs.bufferStats(b.subarray(m.pageSize));` +
        `out.own=s.processStats();out.support=sup.support();` +
        `try{bs.bufferStats(b,{method:'kpageflags'})}catch(e){out.kpf=e.code}` +
        `console.log(JSON.stringify(out));`;
      const r = spawnSync(process.execPath, ['-e', code], {
        uid: 65534,
        gid: 65534,
        encoding: 'utf8',
        cwd: '/',
        timeout: 60_000,
      });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as {
        error: { name: string; code: string; message: string; isKsm: boolean };
        own: ProcessStats;
        support: Support;
        buf: BufferStats;
        kpf: string;
      };
      expect(out.error).toMatchObject({ name: 'KsmError', code: 'EACCES', isKsm: true });
      expect(out.error.message).toMatch(/another user/);
      expect(out.own.mergeable).toBe(true);
      expect(out.support.canConfigure).toBe(false);
      expect(out.support.reasons.join('\n')).toMatch(/not writable by this user: run as root/);
      // Without root, frame numbers are hidden: a sub-range can only be estimated from pagemap.
      expect(out.buf).toMatchObject({ method: 'pagemap', pages: 3, residentPages: 3, mergedPages: 0, mergeable: true });
      expect(out.kpf).toBe('ERR_KSM_PERMISSION');
    });
  });
});

describe('systemStats', () => {
  it('types every file of /sys/kernel/mm/ksm and derives the savings', () => {
    const s = systemStats();
    for (const file of fs.readdirSync(KSM_SYSFS)) {
      const key = file.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
      expect(s, file).toHaveProperty(key);
      const text = fs.readFileSync(`${KSM_SYSFS}/${file}`, 'utf8').trim();
      if (file === 'advisor_mode') expect(text).toContain(`[${s.advisorMode}]`);
      else if (
        ![
          'pages_scanned',
          'full_scans',
          'pages_unshared',
          'pages_volatile',
          'pages_shared',
          'pages_sharing',
          'general_profit',
          'ksm_zero_pages',
          'stable_node_chains',
          'stable_node_dups',
          'pages_skipped',
        ].includes(file)
      ) {
        // Knobs hold still (counters may move between the two reads).
        expect((s as unknown as Record<string, unknown>)[key], file).toBe(Number(text));
      }
    }
    expect(s.pageSize).toBe(pageSize);
    expect(s.savedBytes).toBe((s.pagesSharing! + Math.max(0, s.ksmZeroPages ?? 0)) * pageSize);
    expect(s.generalProfitBytes).toBe(s.generalProfit);
  });

  it('reads a directory laid out like sysfs (a fixture), and says when there is none', () => {
    const s = systemStats(path.join(__dirname, 'fixtures/kernels/6.8/sysfs'));
    expect(s.advisorMode).toBe('scan-time');
    expect(s.savedBytes).toBe((10 + 512) * pageSize);
    expect(codeOf(() => systemStats('/nonexistent/ksm'))).toBe('ERR_KSM_UNSUPPORTED');
  });
});

describe('support', () => {
  it(
    'says what this kernel can do, and why not when it cannot',
    async (ctx) => {
      const s = support();
      expect(s.available).toBe(true);
      expect(s.mode).toBe('external');
      // Linux 6.18: everything.
      expect(s.features).toEqual({
        madvise: true,
        prctl: true,
        ksmStat: true,
        mergingPages: true,
        smapsKsm: true,
        advisor: true,
        smartScan: true,
        zeroPages: true,
      });
      const run = Number(fs.readFileSync(`${KSM_SYSFS}/run`, 'utf8'));
      expect(s.running).toBe(run === 1);
      expect(s.reasons.some((r) => /ksmd is not running/.test(r))).toBe(run !== 1);
      expect(s.canConfigure).toBe(isRoot);
      requireKsm(ctx);
      await withFastKsm(() => {
        const on = support();
        expect(on.running).toBe(true);
        expect(on.reasons).toEqual([]);
      });
    },
    LOCKED,
  );
});

describe('bufferStats mergeable flag from the recorded advice', () => {
  it('follows setMergeable and markMergeable without disagreeing with smaps', () => {
    const buf = alloc(1 << 20);
    // Each answer is checked against the VmFlags of the buffer's mapping, read here.
    const vmFlagMg = (): boolean => {
      const addr = binding!.addressOf(buf);
      let inside = false;
      for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
        const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
        if (m) inside = addr >= BigInt(`0x${m[1]}`) && addr < BigInt(`0x${m[2]}`);
        else if (inside && line.startsWith('VmFlags:')) return line.split(/\s+/).includes('mg');
      }
      throw new Error('mapping not found in smaps');
    };
    const check = (expected: boolean) => {
      expect(vmFlagMg()).toBe(expected);
      expect(bufferStats(buf).mergeable).toBe(expected);
      expect(bufferStats(buf, { method: 'pagemap' }).mergeable).toBe(expected);
    };
    expect(binding!.info(buf.buffer as ArrayBuffer)!.mergeable).toBe(true);
    check(true);
    setMergeable(buf, false);
    expect(binding!.info(buf.buffer as ArrayBuffer)!.mergeable).toBe(false);
    check(false);
    // Advice by address to one of our own buffers: the record no longer claims to know.
    markMergeable(buf);
    expect(binding!.info(buf.buffer as ArrayBuffer)!.mergeable).toBeNull();
    check(true);
    free(buf);
  });
});
