/**
 * Pure parsers for the kernel's KSM text: /proc/<pid>/ksm_stat, /proc/<pid>/smaps,
 * /proc/<pid>/maps, /proc/<pid>/stat and the files of /sys/kernel/mm/ksm. No I/O here:
 * every function takes text and returns typed values, so each is tested on fixture text
 * from several kernels. A field a kernel does not have is `undefined`, never 0; text
 * that cannot be read gives `undefined` for that field or a KsmError ERR_KSM_PARSE,
 * never a wrong number.
 */
import { KsmError } from './errors';

/** `/proc/<pid>/ksm_stat`, in the kernel's units (pages, bytes). */
export interface KsmStatFields {
  /** `ksm_rmap_items`: pages of this process that ksmd tracks. */
  rmapItems?: number;
  /** `ksm_zero_pages`: pages KSM merged into the shared zero page (use_zero_pages=1); signed. */
  zeroPages?: number;
  /** `ksm_merging_pages`: pages of this process that share a KSM page. */
  mergingPages?: number;
  /** `ksm_process_profit`: bytes saved minus the cost of the rmap items (may be negative). */
  profitBytes?: number;
  /** `ksm_merge_any`: PR_SET_MEMORY_MERGE is on. */
  mergeAny?: boolean;
  /** `ksm_mergeable`: the process has mergeable memory. */
  mergeable?: boolean;
}

const INTEGER = /^-?\d+$/;

/** A decimal integer, or undefined when the text is not one (or not a safe integer). */
export function parseInteger(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const t = text.trim();
  if (!INTEGER.test(t)) return undefined;
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * A count the kernel prints with `%lu`: a negative number there is garbage, and a value
 * past 2^53 is an underflowed counter, so both are undefined rather than a wrong number.
 */
export function parseUnsigned(text: string | undefined): number | undefined {
  const n = parseInteger(text);
  return n === undefined || n < 0 ? undefined : n;
}

function parseYesNo(text: string | undefined): boolean | undefined {
  const t = text?.trim();
  return t === 'yes' ? true : t === 'no' ? false : undefined;
}

/** Splits "key value" / "key: value" lines into a map. */
function keyValues(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z_][\w]*):?\s+(.*)$/.exec(line.trim());
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}

/**
 * Parses `/proc/<pid>/ksm_stat`. Linux 6.1 prints only `ksm_rmap_items`; 6.4 adds
 * `ksm_merging_pages` and `ksm_process_profit`; 6.6 `ksm_zero_pages`; 6.14 the
 * `ksm_merge_any:` and `ksm_mergeable:` flags. Profit and zero pages are signed (`%ld`:
 * the zero-page counter could go below 0 before 6.10 fixed its accounting); the rest are
 * `%lu`. Throws ERR_KSM_PARSE when the text has none of its lines (an empty file, or
 * not ksm_stat at all).
 */
export function parseKsmStat(text: string): KsmStatFields {
  const kv = keyValues(text);
  const fields: KsmStatFields = {
    rmapItems: parseUnsigned(kv.get('ksm_rmap_items')),
    zeroPages: parseInteger(kv.get('ksm_zero_pages')),
    mergingPages: parseUnsigned(kv.get('ksm_merging_pages')),
    profitBytes: parseInteger(kv.get('ksm_process_profit')),
    mergeAny: parseYesNo(kv.get('ksm_merge_any')),
    mergeable: parseYesNo(kv.get('ksm_mergeable')),
  };
  if (Object.values(fields).every((v) => v === undefined)) {
    throw new KsmError(
      text.trim() === '' ? 'ksm_stat is empty' : 'ksm_stat has no field that this library knows',
      'ERR_KSM_PARSE',
    );
  }
  return fields;
}

/**
 * A process's KSM figures from the text of its `ksm_stat` and `ksm_merging_pages`
 * (each undefined when the kernel lacks the file): ksm_stat where it has the field,
 * `ksm_merging_pages` (Linux 5.19+) for kernels whose ksm_stat lacks it (6.1-6.3) or
 * that have no ksm_stat (5.19-6.0). Throws ERR_KSM_UNSUPPORTED when neither file exists
 * (Linux 5.18 and older have no per-process KSM figures at all).
 */
export function parseProcessKsm(statText: string | undefined, mergingPagesText: string | undefined): KsmStatFields {
  if (statText === undefined && mergingPagesText === undefined) {
    throw new KsmError(
      'This kernel has no per-process KSM figures (/proc/<pid>/ksm_merging_pages needs Linux 5.19+, ksm_stat 6.1+)',
      'ERR_KSM_UNSUPPORTED',
    );
  }
  const fields: KsmStatFields = statText !== undefined ? parseKsmStat(statText) : {};
  if (fields.mergingPages === undefined && mergingPagesText !== undefined) {
    fields.mergingPages = parseUnsigned(mergingPagesText);
  }
  return fields;
}

/** One mapping of `/proc/<pid>/maps` (and the header line of each smaps entry). */
export interface MapsEntry {
  start: bigint;
  end: bigint;
  perms: string;
  offset: bigint;
  dev: string;
  inode: number;
  pathname: string;
}

const MAPS_LINE = /^([0-9a-f]+)-([0-9a-f]+)\s+([rwxsp-]{4})\s+([0-9a-f]+)\s+([0-9a-f]+:[0-9a-f]+)\s+(\d+)\s*(.*)$/;

/** One line of /proc/<pid>/maps, or undefined if it is not one. */
export function parseMapsLine(line: string): MapsEntry | undefined {
  const m = MAPS_LINE.exec(line);
  if (!m) return undefined;
  return {
    start: BigInt(`0x${m[1]}`),
    end: BigInt(`0x${m[2]}`),
    perms: m[3]!,
    offset: BigInt(`0x${m[4]}`),
    dev: m[5]!,
    inode: Number(m[6]),
    pathname: m[7]!.trim(),
  };
}

/** Every mapping of /proc/<pid>/maps. Lines that are not mappings are skipped. */
export function parseMaps(text: string): MapsEntry[] {
  const out: MapsEntry[] = [];
  for (const line of text.split('\n')) {
    const e = parseMapsLine(line);
    if (e) out.push(e);
  }
  return out;
}

/** One VMA of /proc/<pid>/smaps: the maps header, its sizes in bytes, and VmFlags. */
export interface SmapsEntry extends MapsEntry {
  /** Every "Name: N kB" line, in bytes (`Rss`, `Pss`, `KSM`, `AnonHugePages`, ...). */
  bytes: Record<string, number>;
  /** VmFlags two-letter codes (`mg` = MADV_MERGEABLE). */
  vmFlags: string[];
}

/** Parses /proc/<pid>/smaps (or any run of its entries) into its VMAs. */
export function parseSmaps(text: string): SmapsEntry[] {
  const out: SmapsEntry[] = [];
  let cur: SmapsEntry | undefined;
  for (const line of text.split('\n')) {
    const header = parseMapsLine(line);
    if (header) {
      cur = { ...header, bytes: {}, vmFlags: [] };
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    if (line.startsWith('VmFlags:')) {
      cur.vmFlags = line.slice(8).trim().split(/\s+/).filter(Boolean);
      continue;
    }
    const m = /^(\w+):\s+(\d+) kB$/.exec(line.trim());
    if (m) cur.bytes[m[1]!] = Number(m[2]) * 1024;
  }
  return out;
}

/** The fields of `/proc/<pid>/stat` that node-ksm uses (ksmd's CPU time). */
export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  /** user and system time, in clock ticks. */
  utime: number;
  stime: number;
  /** Start time after boot, in clock ticks (tells a reused pid apart). */
  starttime: number;
}

/** Parses `/proc/<pid>/stat`; the command name may contain spaces and parentheses. */
export function parseProcStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new KsmError('Not a /proc/<pid>/stat line', 'ERR_KSM_PARSE');
  const rest = text
    .slice(close + 2)
    .trim()
    .split(/\s+/);
  // rest[0] is field 3 (state); utime is field 14, stime 15, starttime 22.
  const num = (field: number): number => {
    const v = parseInteger(rest[field - 3]);
    if (v === undefined) throw new KsmError(`/proc/<pid>/stat field ${field} is not a number`, 'ERR_KSM_PARSE');
    return v;
  };
  const pid = parseInteger(text.slice(0, open));
  if (pid === undefined) throw new KsmError('Not a /proc/<pid>/stat line', 'ERR_KSM_PARSE');
  return {
    pid,
    comm: text.slice(open + 1, close),
    state: rest[0] ?? '',
    utime: num(14),
    stime: num(15),
    starttime: num(22),
  };
}

/** True when smaps text has the per-VMA `KSM:` line (Linux 6.7+). */
export function smapsHasKsm(text: string): boolean {
  return /^KSM:/m.test(text);
}

/** `advisor_mode` reads as "[none] scan-time": the bracketed word is the one in force. */
export function parseSelected(text: string): { selected: string; choices: string[] } | undefined {
  const words = text.trim().split(/\s+/).filter(Boolean);
  const chosen = words.find((w) => w.startsWith('[') && w.endsWith(']'));
  if (!chosen) return undefined;
  return { selected: chosen.slice(1, -1), choices: words.map((w) => w.replace(/^\[|\]$/g, '')) };
}

/** snake_case → camelCase (`pages_to_scan` → `pagesToScan`). */
export function camelCase(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** camelCase → snake_case (`pagesToScan` → `pages_to_scan`). */
export function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/**
 * Every value of /sys/kernel/mm/ksm, typed as the kernel means it: numbers (signed
 * where the kernel prints a signed long: general_profit, ksm_zero_pages) and
 * `advisorMode` as a string. Files the kernel lacks are undefined.
 */
export interface KsmSysfs {
  run?: number;
  pagesToScan?: number;
  sleepMillisecs?: number;
  mergeAcrossNodes?: number;
  useZeroPages?: number;
  maxPageSharing?: number;
  stableNodeChainsPruneMillisecs?: number;
  smartScan?: number;
  advisorMode?: string;
  advisorMaxCpu?: number;
  advisorTargetScanTime?: number;
  advisorMinPagesToScan?: number;
  advisorMaxPagesToScan?: number;
  fullScans?: number;
  pagesScanned?: number;
  pagesShared?: number;
  pagesSharing?: number;
  pagesSkipped?: number;
  pagesUnshared?: number;
  pagesVolatile?: number;
  stableNodeChains?: number;
  stableNodeDups?: number;
  generalProfit?: number;
  ksmZeroPages?: number;
}

/** Files of /sys/kernel/mm/ksm whose value is a word, not a number. */
const STRING_FILES = new Set(['advisor_mode']);

/** Files the kernel prints with `%ld`: the rest are `%lu` or `%u` and never negative. */
const SIGNED_FILES = new Set(['general_profit', 'ksm_zero_pages']);

/** Every numeric file this library knows; anything else is a newer kernel's. */
export const KNOWN_NUMERIC_FILES: readonly string[] = [
  'run',
  'pages_to_scan',
  'sleep_millisecs',
  'merge_across_nodes',
  'use_zero_pages',
  'max_page_sharing',
  'stable_node_chains_prune_millisecs',
  'smart_scan',
  'advisor_max_cpu',
  'advisor_target_scan_time',
  'advisor_min_pages_to_scan',
  'advisor_max_pages_to_scan',
  'full_scans',
  'pages_scanned',
  'pages_shared',
  'pages_sharing',
  'pages_skipped',
  'pages_unshared',
  'pages_volatile',
  'stable_node_chains',
  'stable_node_dups',
  'general_profit',
  'ksm_zero_pages',
];
const NUMERIC_FILES = new Set(KNOWN_NUMERIC_FILES);

/**
 * One sysfs file's text → its typed value, or undefined if the text is malformed
 * (including a negative number in a file the kernel prints unsigned). Unknown files
 * are a number when they read as one, else the bracketed choice.
 */
export function parseSysfsValue(file: string, text: string): number | string | undefined {
  if (STRING_FILES.has(file)) return parseSelected(text)?.selected;
  if (SIGNED_FILES.has(file)) return parseInteger(text);
  if (NUMERIC_FILES.has(file)) return parseUnsigned(text);
  return parseInteger(text) ?? parseSelected(text)?.selected;
}

/**
 * Parses the files of /sys/kernel/mm/ksm given as `{ file name: text }`. Unknown files
 * from newer kernels are kept too (camelCased, typed by their text), so nothing the
 * kernel says is dropped.
 */
export function parseKsmSysfs(files: Record<string, string>): KsmSysfs {
  const out: Record<string, number | string | undefined> = {};
  for (const [file, text] of Object.entries(files)) {
    out[camelCase(file)] = parseSysfsValue(file, text);
  }
  return out;
}
