/**
 * The pure parsers of lib/procfs.ts on the text of several kernels (test/fixtures/kernels,
 * see its README) and on malformed text: a field a kernel lacks is undefined, text that
 * cannot be read is undefined or a clear KsmError, and never a wrong number.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { KsmError } from '../lib/errors';
import { pageSize } from '../lib/memory';
import {
  camelCase,
  KNOWN_NUMERIC_FILES,
  type KsmStatFields,
  parseInteger,
  parseKsmStat,
  parseKsmSysfs,
  parseMaps,
  parseMapsLine,
  parseProcessKsm,
  parseProcStat,
  parseSelected,
  parseSmaps,
  parseSysfsValue,
  parseUnsigned,
  smapsHasKsm,
  snakeCase,
} from '../lib/procfs';
import { computeSystemStats } from '../lib/stats';
import { featuresOf, SYSFS_OLD, sysfsNew } from './helpers/kernels';

const KERNELS = path.join(__dirname, 'fixtures/kernels');
const KiB = 1024;

/** A fixture file's text, or undefined when that kernel has no such file. */
function fixture(kernel: string, file: string): string | undefined {
  const p = path.join(KERNELS, kernel, file);
  return fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : undefined;
}

function sysfsTexts(kernel: string): Record<string, string> {
  const dir = path.join(KERNELS, kernel, 'sysfs');
  return Object.fromEntries(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')]));
}

function parseError(fn: () => unknown): KsmError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KsmError);
    return err as KsmError;
  }
  throw new Error('expected a KsmError');
}

const none: KsmStatFields = {
  rmapItems: undefined,
  zeroPages: undefined,
  mergingPages: undefined,
  profitBytes: undefined,
  mergeAny: undefined,
  mergeable: undefined,
};

describe('per-process figures, kernel by kernel', () => {
  it('5.15 has no per-process KSM files: ERR_KSM_UNSUPPORTED, not zeros', () => {
    expect(fixture('5.15', 'ksm_stat')).toBeUndefined();
    const err = parseError(() => parseProcessKsm(fixture('5.15', 'ksm_stat'), fixture('5.15', 'ksm_merging_pages')));
    expect(err.code).toBe('ERR_KSM_UNSUPPORTED');
    expect(err.message).toMatch(/5\.19/);
  });

  it('5.19 has only ksm_merging_pages', () => {
    expect(parseProcessKsm(undefined, fixture('5.19', 'ksm_merging_pages'))).toEqual({ mergingPages: 3072 });
  });

  it('6.4: merging pages and profit in ksm_stat', () => {
    const f = parseProcessKsm(fixture('6.4', 'ksm_stat'), undefined);
    expect(f).toEqual({ ...none, rmapItems: 8192, mergingPages: 4096, profitBytes: 16252928 });
  });

  it('6.8: zero pages, and a negative profit', () => {
    const f = parseKsmStat(fixture('6.8', 'ksm_stat')!);
    expect(f).toEqual({ ...none, rmapItems: 100000, zeroPages: 512, mergingPages: 10, profitBytes: -4261888 });
  });
});

describe('malformed ksm_stat', () => {
  const bad = (file: string) => fixture('malformed', file)!;

  it('a missing line is undefined (and ksm_merging_pages fills it in)', () => {
    expect(parseKsmStat(bad('ksm_stat-missing-line'))).toEqual({ ...none, rmapItems: 8192, profitBytes: 16252928 });
    expect(parseProcessKsm(bad('ksm_stat-missing-line'), '77\n').mergingPages).toBe(77);
    expect(parseProcessKsm(bad('ksm_stat-missing-line'), 'garbage\n').mergingPages).toBeUndefined();
  });

  it('garbage values are undefined, never a number made of part of them', () => {
    expect(() => parseKsmStat(bad('ksm_stat-garbage'))).toThrow(KsmError);
    expect(parseKsmStat(bad('ksm_stat-trailing-text'))).toEqual({ ...none, rmapItems: 100 });
  });

  it('negative unsigned counts and values past 2^53 are undefined; signed ones keep their sign', () => {
    expect(parseKsmStat(bad('ksm_stat-out-of-range'))).toEqual({ ...none, zeroPages: -3, profitBytes: -4096 });
  });

  it('an empty file, or some other file, is a clear ERR_KSM_PARSE', () => {
    const empty = parseError(() => parseKsmStat(bad('ksm_stat-empty')));
    expect(empty.code).toBe('ERR_KSM_PARSE');
    expect(empty.message).toMatch(/empty/);
    expect(parseError(() => parseKsmStat(bad('ksm_stat-not-ksm_stat'))).code).toBe('ERR_KSM_PARSE');
    expect(parseError(() => parseProcessKsm('', undefined)).code).toBe('ERR_KSM_PARSE');
  });
});

describe('/sys/kernel/mm/ksm, kernel by kernel', () => {
  const oldFiles = [
    'full_scans',
    'max_page_sharing',
    'merge_across_nodes',
    'pages_shared',
    'pages_sharing',
    'pages_to_scan',
    'pages_unshared',
    'pages_volatile',
    'run',
    'sleep_millisecs',
    'stable_node_chains',
    'stable_node_chains_prune_millisecs',
    'stable_node_dups',
    'use_zero_pages',
  ];

  it.each(['5.15', '5.19'])('%s: the old files only; newer ones are undefined', (kernel) => {
    const files = sysfsTexts(kernel);
    expect(Object.keys(files).sort()).toEqual(oldFiles);
    const s = computeSystemStats(files, pageSize);
    for (const newer of [
      'generalProfit',
      'ksmZeroPages',
      'smartScan',
      'pagesSkipped',
      'pagesScanned',
      'advisorMode',
      'advisorMaxCpu',
    ]) {
      expect(s).not.toHaveProperty(newer);
      expect((s as unknown as Record<string, unknown>)[newer]).toBeUndefined();
    }
    expect(s.generalProfitBytes).toBeUndefined();
    expect(s.savedBytes).toBe(s.pagesSharing! * pageSize);
    expect(s.sharingRatio).toBe(s.pagesSharing! / s.pagesShared!);
  });

  it('5.15: the figures', () => {
    const s = computeSystemStats(sysfsTexts('5.15'), pageSize);
    expect(s).toMatchObject({
      run: 1,
      pagesToScan: 100,
      pagesShared: 1500,
      pagesSharing: 6000,
      fullScans: 12,
      useZeroPages: 0,
    });
    expect(s.sharingRatio).toBe(4);
  });

  it('6.4: general_profit', () => {
    const s = computeSystemStats(sysfsTexts('6.4'), pageSize);
    expect(s.generalProfit).toBe(16201216);
    expect(s.generalProfitBytes).toBe(16201216);
    expect(s.ksmZeroPages).toBeUndefined();
    expect(s.advisorMode).toBeUndefined();
  });

  it('6.8: advisor mode as a string, negative general_profit, zero pages counted in savedBytes', () => {
    const s = computeSystemStats(sysfsTexts('6.8'), pageSize);
    expect(s.advisorMode).toBe('scan-time');
    expect(s).toMatchObject({
      advisorMaxCpu: 70,
      advisorTargetScanTime: 200,
      advisorMinPagesToScan: 500,
      advisorMaxPagesToScan: 30000,
    });
    expect(s).toMatchObject({
      smartScan: 1,
      pagesSkipped: 777,
      pagesScanned: 123456,
      useZeroPages: 1,
      ksmZeroPages: 512,
    });
    expect(s.generalProfit).toBe(-4261888);
    expect(s.savedBytes).toBe((10 + 512) * pageSize);
    expect(s.sharingRatio).toBe(2);
  });

  it('savedBytes scales with the page size it is given (64 KiB pages)', () => {
    const files = sysfsTexts('6.8');
    expect(computeSystemStats(files, 65536).savedBytes).toBe((10 + 512) * 65536);
  });

  it('malformed files are undefined, and a missing pages_sharing is an error, not savedBytes 0', () => {
    const files = sysfsTexts('malformed');
    const parsed = parseKsmSysfs(files);
    expect(parsed.pagesSharing).toBeUndefined(); // "lots"
    expect(parsed.pagesUnshared).toBeUndefined(); // -1 in an unsigned file
    expect(parsed.advisorMode).toBeUndefined(); // no brackets
    expect(parsed.fullScans).toBeUndefined(); // empty
    expect(parsed.pagesScanned).toBeUndefined(); // past 2^53
    expect(parsed.ksmZeroPages).toBe(-7); // signed: kept
    const err = parseError(() => computeSystemStats(files, pageSize));
    expect(err.code).toBe('ERR_KSM_PARSE');
    expect(err.message).toMatch(/pages_sharing.*"lots"/);
    const noShared = fs.readdirSync(path.join(KERNELS, 'malformed/sysfs-no-pages-shared'));
    const texts = Object.fromEntries(
      noShared.map((f) => [f, fs.readFileSync(path.join(KERNELS, 'malformed/sysfs-no-pages-shared', f), 'utf8')]),
    );
    expect(parseError(() => computeSystemStats(texts, pageSize)).message).toMatch(/pages_shared is missing/);
  });

  it('a negative ksm_zero_pages (the pre-6.10 accounting bug) adds nothing to savedBytes', () => {
    const files = { ...sysfsTexts('6.8'), ksm_zero_pages: '-7\n' };
    const s = computeSystemStats(files, pageSize);
    expect(s.ksmZeroPages).toBe(-7);
    expect(s.savedBytes).toBe(s.pagesSharing! * pageSize);
  });

  it('types each value as the kernel means it', () => {
    expect(parseSysfsValue('advisor_mode', '[none] scan-time\n')).toBe('none');
    expect(parseSysfsValue('general_profit', '-123\n')).toBe(-123);
    expect(parseSysfsValue('pages_sharing', '-123\n')).toBeUndefined();
    expect(parseSysfsValue('some_future_file', '42\n')).toBe(42);
    expect(parseSysfsValue('some_future_mode', 'a [b] c\n')).toBe('b');
    expect(parseSysfsValue('some_future_mode', 'what\n')).toBeUndefined();
    expect(KNOWN_NUMERIC_FILES).toContain('ksm_zero_pages');
    expect(parseSelected('none [scan-time]')).toEqual({ selected: 'scan-time', choices: ['none', 'scan-time'] });
    expect(parseSelected('none scan-time')).toBeUndefined();
    expect(camelCase('stable_node_chains_prune_millisecs')).toBe('stableNodeChainsPruneMillisecs');
    expect(snakeCase('stableNodeChainsPruneMillisecs')).toBe('stable_node_chains_prune_millisecs');
  });

  it('parseInteger and parseUnsigned take whole decimal numbers only', () => {
    for (const t of ['', ' ', '1.5', '0x10', '1e3', '12 pages', 'NaN', '--1', '99999999999999999999']) {
      expect(parseInteger(t), t).toBeUndefined();
    }
    expect(parseInteger(' -42\n')).toBe(-42);
    expect(parseUnsigned('-42')).toBeUndefined();
    expect(parseUnsigned('18446744073709551615')).toBeUndefined();
    expect(parseUnsigned('0\n')).toBe(0);
    expect(parseInteger(undefined)).toBeUndefined();
  });
});

describe('smaps', () => {
  it.each(['5.15', '5.19', '6.4'])('%s: VMAs and VmFlags, but no KSM: line', (kernel) => {
    const text = fixture(kernel, 'smaps')!;
    const entries = parseSmaps(text);
    expect(entries).toHaveLength(3);
    expect(smapsHasKsm(text)).toBe(false);
    expect(entries.every((e) => e.bytes.KSM === undefined)).toBe(true);
    expect(entries[1]).toMatchObject({
      start: 0x7f0e1c000000n,
      end: 0x7f0e1e000000n,
      perms: 'rw-p',
      inode: 0,
      pathname: '',
    });
    expect(entries[1]!.vmFlags).toContain('mg');
    expect(entries[2]!.vmFlags).not.toContain('mg');
    expect(entries[1]!.bytes.Rss).toBe(32768 * KiB);
    expect(entries[0]!.pathname).toBe('/usr/bin/node');
  });

  it('6.8: the KSM: line, in bytes', () => {
    const text = fixture('6.8', 'smaps')!;
    expect(smapsHasKsm(text)).toBe(true);
    expect(parseSmaps(text).map((e) => e.bytes.KSM)).toEqual([0, 16384 * KiB, 0]);
  });

  it('a truncated entry keeps what it has and invents nothing', () => {
    const entries = parseSmaps(fixture('malformed', 'smaps-truncated')!);
    expect(entries).toHaveLength(1);
    expect(entries[0]!.bytes.Rss).toBe(6708 * KiB);
    expect(entries[0]!.bytes.KSM).toBeUndefined(); // cut short: "KSM:  " without its "N kB"
    expect(entries[0]!.vmFlags).toEqual([]);
    expect(parseSmaps('')).toEqual([]);
  });
});

describe('maps and stat', () => {
  it('parses maps lines, and skips what is not one', () => {
    expect(parseMaps(fixture('malformed', 'maps-garbage')!)).toEqual([]);
    expect(parseMapsLine('7f00-7f01 rw-p 00000000 00:00 0   /tmp/a file (deleted)')!.pathname).toBe(
      '/tmp/a file (deleted)',
    );
    expect(parseMapsLine('ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0   [vsyscall]')!.end).toBe(
      0xffffffffff601000n,
    );
  });

  it("parses ksmd's /proc/<pid>/stat, and a command name with spaces and parentheses", () => {
    const ksmd = parseProcStat(fixture('6.18', 'ksmd-stat')!);
    // Fields 14, 15 and 22 of the fixture: a kernel thread's CPU time is all system time.
    expect(ksmd).toEqual({ pid: 39, comm: 'ksmd', state: 'R', utime: 0, stime: 34285, starttime: 19 });
    const text = fixture('malformed', 'stat-odd-comm')!;
    const odd = parseProcStat(text);
    expect(odd.comm).toBe('a) b (c');
    expect(odd).toEqual({ ...parseProcStat(text.replace('(a) b (c)', '(ksmd)')), comm: 'a) b (c' });
    expect(parseError(() => parseProcStat(fixture('malformed', 'stat-truncated')!)).code).toBe('ERR_KSM_PARSE');
    expect(parseError(() => parseProcStat('')).code).toBe('ERR_KSM_PARSE');
  });
});

interface Captured {
  label: string;
  release: string;
  source: 'captured' | 'hand-written';
  pageSize: number;
  exclusive: boolean;
  nodeBinary: string;
  buffers: Record<'a' | 'b' | 'c', { start: string; bytes: number; mergedBytes: number }>;
  processStats: { mergingPages: number; rmapItems?: number; method: string };
}

function metadata(kernel: string): Captured {
  return JSON.parse(fixture(kernel, 'kernel.json')!) as Captured;
}

const kernelDirs = fs.readdirSync(KERNELS).filter((d) => fs.existsSync(path.join(KERNELS, d, 'kernel.json')));
const captured = kernelDirs.filter((d) => metadata(d).source === 'captured');

describe('every kernel directory says where its text came from', () => {
  it('a kernel.json with the release, and "captured" for every kernel test:kernels boots', () => {
    expect(kernelDirs.sort()).toEqual(
      fs
        .readdirSync(KERNELS)
        .filter((d) => d !== 'malformed' && d !== 'README.md')
        .sort(),
    );
    for (const d of kernelDirs) expect(metadata(d).release.startsWith(`${d}.`) || metadata(d).release === d).toBe(true);
    expect(captured).toEqual(expect.arrayContaining(['5.10', '6.1', '6.12', '6.18']));
  });
});

/**
 * Text captured from real kernels by test/helpers/kernel-capture.mts: two identical 8 MiB
 * buffers a and b merged, a unique unmergeable c between them. Every expectation follows
 * from the kernel's version and the capture's own metadata, never from numbers typed here.
 */
describe.each(captured)('captured from Linux %s', (kernel) => {
  const meta = metadata(kernel);
  const has = featuresOf(meta.release);
  const page = meta.pageSize;
  const pages = meta.buffers.a.bytes / page;
  const statText = fixture(kernel, 'ksm_stat');
  const mergingText = fixture(kernel, 'ksm_merging_pages');

  it('per-process files: exactly those of this kernel, and what they say', () => {
    expect(statText !== undefined).toBe(has.ksmStat);
    expect(mergingText !== undefined).toBe(has.mergingPagesFile);
    if (!has.mergingPagesFile) {
      expect(parseError(() => parseProcessKsm(statText, mergingText)).code).toBe('ERR_KSM_UNSUPPORTED');
      // processStats counted the pages one by one (as root: each page's KSM flag).
      expect(meta.processStats).toMatchObject({ method: 'kpageflags', mergingPages: 2 * pages });
      return;
    }
    const f = parseProcessKsm(statText, mergingText);
    expect(f.mergingPages).toBe(2 * pages);
    expect(f.mergingPages).toBe(meta.processStats.mergingPages);
    expect(f.rmapItems === undefined).toBe(!has.ksmStat);
    expect(f.profitBytes === undefined).toBe(!has.profit);
    expect(f.zeroPages === undefined).toBe(!has.zeroPages);
    expect(f.mergeAny === undefined).toBe(!has.mergeFlags);
    expect(f.mergeable === undefined).toBe(!has.mergeFlags);
    if (has.mergeFlags) expect(f).toMatchObject({ mergeAny: false, mergeable: true });
    // a and b were scanned (c is not mergeable): at least one rmap item per page of them.
    if (has.ksmStat) expect(f.rmapItems).toBeGreaterThanOrEqual(2 * pages);
    // ksm_process_profit = (merging + zero pages) × page - rmap items × sizeof(struct ksm_rmap_item) (64).
    if (has.profit) expect(f.profitBytes).toBe((f.mergingPages! + (f.zeroPages ?? 0)) * page - f.rmapItems! * 64);
    if (mergingText !== undefined) expect(parseUnsigned(mergingText)).toBe(f.mergingPages);
  });

  it('sysfs: the files of this kernel, typed, and the merged buffers in the counts', () => {
    const files = sysfsTexts(kernel);
    for (const f of SYSFS_OLD) expect(files, f).toHaveProperty(f);
    for (const [f, present] of sysfsNew(has)) expect(f in files, f).toBe(present);
    const s = computeSystemStats(files, page);
    for (const file of Object.keys(files)) expect(s[camelCase(file) as keyof typeof s], file).not.toBeUndefined();
    expect(s.generalProfitBytes === undefined).toBe(!has.profit);
    if (has.advisor) expect(['none', 'scan-time']).toContain(s.advisorMode);
    if (meta.exclusive) {
      // Nothing else on the guest merged: the machine's counts are a and b.
      expect(s).toMatchObject({ pagesShared: pages, pagesSharing: pages, savedBytes: pages * page, sharingRatio: 1 });
      if (has.profit) {
        const rmap = parseKsmStat(statText!).rmapItems!;
        expect(s.generalProfit).toBe(pages * page - rmap * 64);
      }
    } else {
      expect(s.pagesSharing).toBeGreaterThanOrEqual(pages);
    }
  });

  it('smaps: the node binary and the three buffers, each a mapping of its own', () => {
    const text = fixture(kernel, 'smaps')!;
    const entries = parseSmaps(text);
    expect(entries).toHaveLength(4);
    expect(entries[0]!.pathname).toBe(meta.nodeBinary);
    expect(smapsHasKsm(text)).toBe(has.smapsKsm);
    for (const name of ['a', 'b', 'c'] as const) {
      const buf = meta.buffers[name];
      const e = entries.find((x) => x.start === BigInt(`0x${buf.start}`))!;
      expect(e, name).toBeDefined();
      expect(Number(e.end - e.start)).toBe(buf.bytes);
      expect(e.bytes.Rss).toBe(buf.bytes);
      expect(e.perms).toBe('rw-p');
      expect(e.vmFlags.includes('mg'), name).toBe(name !== 'c');
      expect(e.bytes.KSM).toBe(has.smapsKsm ? buf.mergedBytes : undefined);
    }
    expect(meta.buffers.a.mergedBytes).toBe(meta.buffers.a.bytes);
    expect(meta.buffers.c.mergedBytes).toBe(0);
  });

  it("maps and ksmd's stat", () => {
    const maps = parseMaps(fixture(kernel, 'maps')!);
    expect(maps.some((e) => e.pathname === meta.nodeBinary && e.perms.includes('x'))).toBe(true);
    expect(maps.map((e) => e.pathname)).toEqual(expect.arrayContaining(['[stack]', '[vdso]']));
    const ksmd = parseProcStat(fixture(kernel, 'ksmd-stat')!);
    expect(ksmd.comm).toBe('ksmd');
    expect(ksmd.state).toMatch(/^[SRD]$/);
  });
});
