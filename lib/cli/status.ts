/**
 * `node-ksm status`: what KSM is doing on this machine, in bytes and plain words, and
 * what to change. The advice is a pure function of the figures so that each piece of it
 * can be reasoned about (and tested) from the state that triggers it.
 */
import fs from 'node:fs';
import { KsmError } from '../errors';
import { parseUnsigned } from '../procfs';
import { processStats, systemStats, type SystemStats } from '../stats';
import { support } from '../support';
import { readSettings, type KsmSettings } from '../control';
import { snakeCase } from '../procfs';
import { formatBytes, formatCount, formatSeconds, table } from './format';

export type AdviceCode =
  | 'ksm-off'
  | 'unmerging'
  | 'scan-rate'
  | 'scan-slow'
  | 'busy-loop'
  | 'advisor'
  | 'zero-pages'
  | 'nothing-mergeable'
  | 'volatile'
  | 'negative-profit'
  | 'stale-counters'
  | 'not-root';

export interface Advice {
  code: AdviceCode;
  message: string;
}

export interface ScanEstimate {
  /** Bytes ksmd looks at per second with the current settings (Infinity with sleep 0). */
  bytesPerSecond: number;
  /** Pages ksmd tracks (its rmap items): the mergeable memory it has found so far. */
  mergeablePages: number;
  mergeableBytes: number;
  /** Seconds one full pass over that memory takes; undefined when nothing is tracked. */
  fullPassSeconds?: number;
}

/**
 * pages_to_scan pages every sleep_millisecs. The kernel keeps one rmap item per mergeable
 * page it has scanned, and pages_shared + pages_sharing + pages_unshared + pages_volatile
 * add up to exactly that count (pages_volatile is derived as the remainder), so their sum
 * is the mergeable memory a full pass has to cover. Time spent scanning is ignored, so
 * the rate is an upper bound.
 */
export function estimateScan(s: SystemStats): ScanEstimate {
  const pages = (s.pagesShared ?? 0) + (s.pagesSharing ?? 0) + (s.pagesUnshared ?? 0) + (s.pagesVolatile ?? 0);
  const sleep = s.sleepMillisecs ?? 0;
  const batch = (s.pagesToScan ?? 0) * s.pageSize;
  const bytesPerSecond = sleep > 0 ? (batch * 1000) / sleep : batch > 0 ? Infinity : 0;
  const mergeableBytes = pages * s.pageSize;
  const fullPassSeconds =
    pages > 0 && bytesPerSecond > 0 && Number.isFinite(bytesPerSecond) ? mergeableBytes / bytesPerSecond : undefined;
  return { bytesPerSecond, mergeablePages: pages, mergeableBytes, fullPassSeconds };
}

/** A full pass slower than this leaves new duplicates unmerged for too long to matter. */
const SLOW_PASS_SECONDS = 600;

/**
 * Whether the machine's merge counters describe live processes. The kernel counts a page
 * in pages_shared/pages_sharing for as long as ksmd tracks it, and ksmd lets go of the
 * pages of a process that has exited only when its scan next reaches that process: with
 * ksmd stopped (run=0) they stay counted indefinitely, and "saved" then reports memory
 * that no longer exists. pages_shared + pages_sharing is exactly the sum of every
 * process's merging pages, so the difference from the live processes' sum is the stale
 * part.
 */
export interface CounterFreshness {
  /**
   * `stale`: ksmd is stopped and counts pages no live process holds; `fresh`: the live
   * processes account for every counted page (or ksmd is scanning and will correct the
   * counters itself); `unknown`: some processes could not be read (run as root).
   */
  state: 'stale' | 'fresh' | 'unknown';
  /** pages_shared + pages_sharing. */
  countedPages: number;
  /** The sum of the merging pages of the processes that could be read. */
  livePages: number;
  /** `countedPages - livePages` when stale, else 0. */
  stalePages: number;
  staleBytes: number;
  /** Processes whose figures could not be read. */
  unreadable: number;
  /** Why the state is `unknown`. */
  reason?: string;
}

/** The inode of the initial pid namespace (PROC_PID_INIT_INO): only there is every process visible. */
const INIT_PID_NS = 'pid:[4026531836]';

export interface LiveProcesses {
  pages: number;
  unreadable: number;
  /** This process sees only its own pid namespace (a container): others may hold merged pages. */
  namespaced: boolean;
}

/** The merging pages of every live process (see CounterFreshness). */
export function liveMergingPages(): LiveProcesses {
  let namespaced: boolean;
  try {
    namespaced = fs.readlinkSync('/proc/self/ns/pid') !== INIT_PID_NS;
  } catch {
    namespaced = true;
  }
  let pages = 0;
  let unreadable = 0;
  const perProcessFile = fs.existsSync('/proc/self/ksm_merging_pages');
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (perProcessFile) {
        pages += parseUnsigned(fs.readFileSync(`/proc/${name}/ksm_merging_pages`, 'utf8')) ?? 0;
      } else {
        // Before 5.19 each process is walked page by page; without root that is only an
        // estimate, which cannot prove the counters stale.
        const p = processStats(Number(name));
        if (p.method === 'pagemap' && (p.mergingPages ?? 0) > 0) unreadable++;
        else pages += p.mergingPages ?? 0;
      }
    } catch (err) {
      const code = (err as { code?: string }).code;
      // A process that exited while we read holds nothing any more.
      if (code === 'ENOENT' || code === 'ESRCH') continue;
      if (code === 'EACCES' || code === 'EPERM' || err instanceof KsmError) unreadable++;
      else throw err;
    }
  }
  return { pages, unreadable, namespaced };
}

/** Pure: whether the counters are stale, from the figures and the live processes' sum. */
export function counterFreshness(s: SystemStats, live: LiveProcesses): CounterFreshness {
  const counted = (s.pagesShared ?? 0) + (s.pagesSharing ?? 0);
  const excess = Math.max(0, counted - live.pages);
  // While ksmd scans (run=1) it drops what it finds gone within one pass; run=2 unmerges all.
  const stopped = s.run === 0;
  const reason =
    !stopped || excess === 0
      ? undefined
      : live.namespaced
        ? 'this process runs in a pid namespace of its own (a container) and cannot see every process that may hold merged pages'
        : live.unreadable > 0
          ? `${live.unreadable} processes could not be read: run as root`
          : undefined;
  const state = !stopped || excess === 0 ? 'fresh' : reason !== undefined ? 'unknown' : 'stale';
  const stalePages = state === 'stale' ? excess : 0;
  return {
    state,
    countedPages: counted,
    livePages: live.pages,
    stalePages,
    staleBytes: stalePages * s.pageSize,
    unreadable: live.unreadable,
    ...(reason !== undefined ? { reason } : {}),
  };
}

/** ksmd is stopped and still counts pages of memory that is gone. */
function staleCounters(freshness: CounterFreshness | undefined): Advice[] {
  if (freshness?.state !== 'stale') return [];
  return [
    advice(
      'stale-counters',
      `The counters are stale: ksmd is stopped (run=0) and still counts ${formatCount(freshness.stalePages)} merged pages ` +
        `(${formatBytes(freshness.staleBytes)}) of memory that has been freed (processes that exited, buffers unmapped)` +
        (freshness.livePages === 0
          ? ' (no live process has merged pages)'
          : ` (live processes hold ${formatCount(freshness.livePages)})`) +
        '; the kernel drops them only when ksmd scans again, so the savings shown are not real. ' +
        '"node-ksm boost --for 10s" lets it scan once and puts the settings back.',
    ),
  ];
}

/**
 * What to change, in the order an operator should read it: whether the figures are real, whether ksmd runs, who sets
 * its pace, whether it has anything to do, how fast it gets through it, what the figures
 * count, what is wasted, and who may act.
 */
export function advise(s: SystemStats, canConfigure: boolean, freshness?: CounterFreshness): Advice[] {
  const scan = estimateScan(s);
  const advisor = s.advisorMode === 'scan-time';
  return [
    ...staleCounters(freshness),
    ...runState(s),
    ...(advisor ? [advisorOn(s)] : []),
    ...nothingMergeable(s, scan),
    ...pace(s, scan, advisor),
    ...zeroPages(s),
    ...waste(s),
    ...(canConfigure ? [] : [notRoot()]),
  ];
}

const advice = (code: AdviceCode, message: string): Advice => ({ code, message });

/** ksmd stopped (run=0) or unmerging everything (run=2). */
function runState(s: SystemStats): Advice[] {
  if (s.run === 0) {
    return [
      advice(
        'ksm-off',
        'KSM is off (run=0): ksmd does not scan, so nothing new is merged' +
          ((s.pagesSharing ?? 0) > 0 ? ` (the ${formatCount(s.pagesSharing!)} pages already merged stay merged)` : '') +
          '. Start it with "node-ksm tune --run 1", or "node-ksm boost --for 60s" for a burst that puts the settings back.',
      ),
    ];
  }
  if (s.run === 2) {
    return [
      advice(
        'unmerging',
        'run=2: ksmd has stopped and every merged page has been (or is being) unmerged. "node-ksm tune --run 1" starts merging again.',
      ),
    ];
  }
  return [];
}

/** The scan-time advisor sets pages_to_scan itself. */
function advisorOn(s: SystemStats): Advice {
  return advice(
    'advisor',
    `The scan-time advisor is on: it sets pages_to_scan itself (now ${formatCount(s.pagesToScan ?? 0)}, kept between ` +
      `${formatCount(s.advisorMinPagesToScan ?? 0)} and ${formatCount(s.advisorMaxPagesToScan ?? 0)}) aiming at one full pass every ` +
      `${s.advisorTargetScanTime ?? '?'} s with at most ${s.advisorMaxCpu ?? '?'}% of a CPU. Tune it with ` +
      '"node-ksm tune --target-scan-time S --advisor-max-cpu P"; pages_to_scan cannot be set by hand until "node-ksm tune --advisor none".',
  );
}

/** ksmd runs, but nobody marked memory mergeable. */
function nothingMergeable(s: SystemStats, scan: ScanEstimate): Advice[] {
  if (!(s.run === 1 && scan.mergeablePages === 0 && (s.fullScans ?? 0) > 0)) return [];
  return [
    advice(
      'nothing-mergeable',
      "ksmd is running but no memory is marked mergeable, so it has nothing to merge: allocate with node-ksm's alloc() " +
        '(or markMergeable/setProcessMerging), or stop ksmd with "node-ksm tune --run 0".',
    ),
  ];
}

/** How fast ksmd goes: a core burnt by sleep 0, or the rate and how long a full pass takes. */
function pace(s: SystemStats, scan: ScanEstimate, advisor: boolean): Advice[] {
  // With nothing to scan ksmd waits for work, so sleep 0 only burns a core when there is some.
  if (s.run === 1 && (s.sleepMillisecs ?? 0) === 0 && !advisor && scan.mergeablePages > 0) {
    return [
      advice(
        'busy-loop',
        `sleep_millisecs=0: ksmd scans ${formatCount(s.pagesToScan ?? 0)} pages at a time without pausing and keeps a CPU core busy ` +
          'even after everything is merged. Use "node-ksm boost --for 60s" for bursts, or the advisor: ' +
          '"node-ksm tune --advisor scan-time --target-scan-time 200".',
      ),
    ];
  }
  if (s.run === 2) return [];
  const rate = `pages_to_scan=${formatCount(s.pagesToScan ?? 0)} with sleep ${s.sleepMillisecs ?? '?'} ms scans ${formatBytes(scan.bytesPerSecond)}/s`;
  const pass =
    scan.fullPassSeconds === undefined
      ? (s.fullScans ?? 0) === 0
        ? ': no full pass has completed yet, so the mergeable memory is not known'
        : ''
      : `: a full pass over the ${formatBytes(scan.mergeableBytes)} marked mergeable takes ${formatSeconds(scan.fullPassSeconds)}`;
  const out = [advice('scan-rate', `${rate}${pass}${s.run === 0 ? ' (once started)' : ''}.`)];
  if (scan.fullPassSeconds !== undefined && scan.fullPassSeconds > SLOW_PASS_SECONDS && !advisor) {
    const target = Math.ceil((scan.mergeablePages * (s.sleepMillisecs ?? 20)) / 1000 / 60);
    out.push(
      advice(
        'scan-slow',
        `A full pass takes ${formatSeconds(scan.fullPassSeconds)}, so new duplicates wait that long to be merged. ` +
          `"node-ksm tune --pages-to-scan ${formatCount(Math.max(target, (s.pagesToScan ?? 0) * 2)).replace(/,/g, '')}" makes it about a minute, ` +
          'or let the advisor pick the rate: "node-ksm tune --advisor scan-time --target-scan-time 60".',
      ),
    );
  }
  return out;
}

/** With use_zero_pages=1, empty pages are counted apart from pages_sharing. */
function zeroPages(s: SystemStats): Advice[] {
  if ((s.useZeroPages ?? 0) !== 1) return [];
  return [
    advice(
      'zero-pages',
      `use_zero_pages=1: empty (all-zero) pages are merged with the kernel's zero page instead of a KSM page: ` +
        `${formatCount(Math.max(0, s.ksmZeroPages ?? 0))} pages (${formatBytes(Math.max(0, s.ksmZeroPages ?? 0) * s.pageSize)}) ` +
        'are counted in ksm_zero_pages and in saved bytes, not in pages_sharing.',
    ),
  ];
}

/** Merging that costs more than it saves: volatile pages, negative profit. */
function waste(s: SystemStats): Advice[] {
  const out: Advice[] = [];
  const sharing = s.pagesSharing ?? 0;
  const volatile = s.pagesVolatile ?? 0;
  if (volatile > 1024 && volatile > sharing) {
    out.push(
      advice(
        'volatile',
        `${formatCount(volatile)} pages (${formatBytes(volatile * s.pageSize)}) change faster than ksmd scans them (pages_volatile): ` +
          'merging them only costs copy-on-write faults; mark only data that stays put as mergeable.',
      ),
    );
  }
  if ((s.generalProfit ?? 0) < 0) {
    out.push(
      advice(
        'negative-profit',
        `general_profit is ${formatBytes(s.generalProfit!)}: KSM's bookkeeping costs more than merging saves. ` +
          'Mark less memory mergeable (only data with many duplicates), or stop ksmd.',
      ),
    );
  }
  return out;
}

function notRoot(): Advice {
  return advice(
    'not-root',
    'You cannot change KSM settings as this user: run "sudo node-ksm tune ..." (or boost) to act on this advice.',
  );
}

export interface StatusReport {
  running: boolean;
  /** Whether pages_shared/pages_sharing (and so savedBytes) describe live processes. */
  counters: CounterFreshness;
  canConfigure: boolean;
  pageSize: number;
  settings: KsmSettings;
  stats: SystemStats;
  scan: ScanEstimate;
  advice: Advice[];
}

export function status(): StatusReport {
  const stats = systemStats();
  const canConfigure = support().canConfigure;
  // Reading every process costs something; only a stopped ksmd can leave stale counters.
  const counters = counterFreshness(
    stats,
    stats.run === 0 ? liveMergingPages() : { pages: 0, unreadable: 0, namespaced: false },
  );
  return {
    running: stats.run === 1,
    counters,
    canConfigure,
    pageSize: stats.pageSize,
    settings: readSettings(),
    stats,
    scan: estimateScan(stats),
    advice: advise(stats, canConfigure, counters),
  };
}

export function renderStatus(r: StatusReport): string {
  const s = r.stats;
  const page = s.pageSize;
  const pages = (n: number | undefined) => [
    n === undefined ? '-' : formatCount(n),
    n === undefined ? '' : formatBytes(n * page),
  ];
  const state = s.run === 1 ? 'running' : s.run === 2 ? 'stopped, unmerging (run=2)' : `stopped (run=${s.run ?? '?'})`;
  const lines = [
    `KSM ${state}, page size ${formatBytes(page)}`,
    `Saved ${formatBytes(s.savedBytes)}` +
      (s.generalProfitBytes !== undefined
        ? `, profit ${formatBytes(s.generalProfitBytes)} after ksmd's bookkeeping`
        : '') +
      (s.sharingRatio > 0 ? `, sharing ratio ${s.sharingRatio.toFixed(1)} (pages_sharing / pages_shared)` : '') +
      (r.counters.state === 'stale'
        ? ` (STALE: ${formatBytes(r.counters.staleBytes)} of it is memory that has been freed; see the advice)`
        : r.counters.state === 'unknown'
          ? ` (ksmd is stopped, and whether this is stale is unknown: ${r.counters.reason})`
          : ''),
    `Full scans ${formatCount(s.fullScans ?? 0)}` +
      (s.pagesScanned !== undefined ? `, ${formatCount(s.pagesScanned)} pages scanned` : ''),
    '',
    'Pages',
    ...table(
      [
        ['pages_shared', ...pages(s.pagesShared), 'KSM pages in use'],
        ['pages_sharing', ...pages(s.pagesSharing), 'further mappings of them: the memory saved'],
        ['pages_unshared', ...pages(s.pagesUnshared), 'unique, checked again every pass'],
        ['pages_volatile', ...pages(s.pagesVolatile), 'changing too fast to merge'],
        ...(s.ksmZeroPages !== undefined
          ? [['ksm_zero_pages', ...pages(Math.max(0, s.ksmZeroPages)), 'merged with the zero page']]
          : []),
        ...(s.pagesSkipped !== undefined
          ? [['pages_skipped', ...pages(s.pagesSkipped), 'skipped by smart scan (cumulative)']]
          : []),
      ],
      '  ',
    ),
    '',
    'Settings',
    ...table(
      Object.entries(r.settings).map(([k, v]) => [snakeCase(k), String(v)]),
      '  ',
    ),
    '',
    'Advice',
    ...r.advice.map((a) => `  - ${a.message}`),
  ];
  return lines.join('\n');
}
