/**
 * Seeing what KSM does: per process (/proc/<pid>/ksm_stat), per buffer (smaps or
 * pagemap), for the whole machine (/sys/kernel/mm/ksm), and what this kernel supports.
 * The I/O lives here; the parsing is in procfs.ts.
 */
import fs from 'node:fs';
import { binding, loadError, native } from './binding';
import { KsmError, fromFsError, invalidArgType, validateInteger } from './errors';
import { pageSize } from './memory';
import { type KsmSysfs, parseInteger, parseKsmStat, parseKsmSysfs, parseMaps, parseSmaps } from './procfs';

export const KSM_SYSFS = '/sys/kernel/mm/ksm';

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw fromFsError(err);
  }
}

function readIfExists(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromFsError(err);
  }
}

export interface ProcessStats {
  pid: number;
  /** Pages of the process that ksmd tracks (`ksm_rmap_items`). */
  rmapItems?: number;
  /** Pages that share a KSM page (`ksm_merging_pages`). */
  mergingPages?: number;
  /** Pages merged into the zero page (`ksm_zero_pages`). */
  zeroPages?: number;
  /** `ksm_process_profit`: bytes saved minus rmap item overhead; may be negative. */
  profitBytes?: number;
  /** PR_SET_MEMORY_MERGE is on (`ksm_merge_any`). */
  mergeAny?: boolean;
  /** The process has mergeable memory (`ksm_mergeable`). */
  mergeable?: boolean;
  /** `mergingPages × pageSize`. */
  mergedBytes?: number;
}

/**
 * `/proc/<pid>/ksm_stat` (plus `/proc/<pid>/ksm_merging_pages` on kernels whose
 * ksm_stat lacks it). Fields a kernel lacks are undefined. Another user's process gives
 * an `EACCES` KsmError; a process that does not exist, `ENOENT`.
 */
export function processStats(pid: number = process.pid): ProcessStats {
  validateInteger(pid, 'pid', 1, 2 ** 31 - 1);
  native();
  const dir = `/proc/${pid}`;
  const statText = readIfExists(`${dir}/ksm_stat`);
  const fields = statText !== undefined ? parseKsmStat(statText) : {};
  if (fields.mergingPages === undefined) {
    const merging = readIfExists(`${dir}/ksm_merging_pages`);
    if (merging !== undefined) fields.mergingPages = parseInteger(merging);
    else if (statText === undefined) {
      if (!fs.existsSync(dir)) throw new KsmError(`No process with pid ${pid}`, 'ESRCH');
      throw new KsmError('This kernel has neither ksm_stat nor ksm_merging_pages (Linux 5.19+)', 'ERR_KSM_UNSUPPORTED');
    }
  }
  return {
    pid,
    ...fields,
    mergedBytes: fields.mergingPages === undefined ? undefined : fields.mergingPages * pageSize,
  };
}

/** The fastest single figure for polling: this process's merging pages. */
export function mergingPages(pid: number = process.pid): number {
  const text = readIfExists(`/proc/${pid}/ksm_merging_pages`);
  if (text !== undefined) {
    const n = parseInteger(text);
    if (n !== undefined) return n;
  }
  return processStats(pid).mergingPages ?? 0;
}

/** Reads every file of /sys/kernel/mm/ksm as text. */
export function readKsmSysfsFiles(dir: string = KSM_SYSFS): Record<string, string> {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new KsmError(`${dir} does not exist: this kernel was built without CONFIG_KSM`, 'ERR_KSM_UNSUPPORTED');
    }
    throw fromFsError(err);
  }
  const files: Record<string, string> = {};
  for (const name of names.sort()) {
    try {
      files[name] = fs.readFileSync(`${dir}/${name}`, 'utf8');
    } catch (err) {
      // A file that cannot be read (write-only, or gone) is left out, not made up.
      if (!['EACCES', 'EPERM', 'EISDIR', 'ENOENT', 'EINVAL'].includes((err as NodeJS.ErrnoException).code ?? '')) {
        throw fromFsError(err);
      }
    }
  }
  return files;
}

export interface SystemStats extends KsmSysfs {
  pageSize: number;
  /** Memory that merging saves: `(pagesSharing + ksmZeroPages) × pageSize`. */
  savedBytes: number;
  /** `pagesSharing / pagesShared`: how many mappings each KSM page serves (0 if none). */
  sharingRatio: number;
  /** `generalProfit` in bytes, as the kernel reports it (already bytes; may be negative). */
  generalProfitBytes?: number;
}

/** Every file of /sys/kernel/mm/ksm, typed, plus `savedBytes` and `sharingRatio`. */
export function systemStats(dir: string = KSM_SYSFS): SystemStats {
  native();
  return computeSystemStats(readKsmSysfsFiles(dir), pageSize);
}

/** The derived figures of `systemStats`, from parsed sysfs files (pure). */
export function computeSystemStats(files: Record<string, string>, page: number): SystemStats {
  const sysfs = parseKsmSysfs(files);
  const sharing = sysfs.pagesSharing ?? 0;
  const shared = sysfs.pagesShared ?? 0;
  return {
    ...sysfs,
    pageSize: page,
    savedBytes: (sharing + Math.max(0, sysfs.ksmZeroPages ?? 0)) * page,
    sharingRatio: shared > 0 ? sharing / shared : 0,
    generalProfitBytes: sysfs.generalProfit,
  };
}

export type BufferStatsMethod = 'smaps' | 'kpageflags' | 'pagemap';

export interface BufferStats {
  /** The bytes of the buffer (its length). */
  bytes: number;
  /** Pages the statistics cover (those the buffer's bytes touch, its own padding included). */
  pages: number;
  /** Of those, pages in memory. */
  residentPages: number;
  /** Of those, pages that are KSM pages (merged with an identical page). */
  mergedPages: number;
  /** `mergedPages × pageSize`. */
  mergedBytes: number;
  /** Pages merged into the zero page (use_zero_pages), where known. */
  zeroPages?: number;
  /** Whether its memory is marked MADV_MERGEABLE (VmFlags `mg`). */
  mergeable: boolean;
  /**
   * How the figures were obtained. `kpageflags`: each page's KSM flag (root; exact).
   * `smaps`: the KSM line of the buffer's own VMA (exact when the VMA is the buffer).
   * `pagemap`: pages mapped more than once (no root): an estimate that also counts
   * pages shared with a fork() child.
   */
  method: BufferStatsMethod;
}

interface VmaView {
  entry: ReturnType<typeof parseMaps>[number];
  index: number;
}

/** The VMA of /proc/self/maps containing `address` (cheap: maps does not walk pages). */
function findVma(address: bigint): VmaView | undefined {
  const entries = parseMaps(readText('/proc/self/maps'));
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (address >= e.start && address < e.end) return { entry: e, index: i };
  }
  return undefined;
}

function isMergeableAt(address: bigint): boolean {
  // VmFlags come only from smaps; read the one entry we need.
  const text = readText('/proc/self/smaps');
  const at = text.indexOf(`${address.toString(16)}-`);
  const entries = parseSmaps(at >= 0 ? text.slice(text.lastIndexOf('\n', at) + 1) : text);
  const vma = entries.find((e) => address >= e.start && address < e.end);
  return vma?.vmFlags.includes('mg') ?? false;
}

/**
 * KSM figures for exactly the pages of one buffer. For buffers from `alloc` (and arena
 * buffers) the pages are those its bytes touch, its zero padding included; for any other
 * view only the whole pages inside it. See `BufferStats.method`.
 */
export function bufferStats(buf: ArrayBufferView | ArrayBuffer): BufferStats {
  if (!(ArrayBuffer.isView(buf) || buf instanceof ArrayBuffer)) {
    throw invalidArgType('buf', 'an instance of Buffer, TypedArray, DataView or ArrayBuffer', buf);
  }
  const b = native();
  const ab = buf instanceof ArrayBuffer ? buf : (buf.buffer as ArrayBuffer);
  const byteOffset = buf instanceof ArrayBuffer ? 0 : buf.byteOffset;
  const byteLength = buf.byteLength;
  const info = ab instanceof ArrayBuffer ? b.info(ab) : null;
  if (info?.freed) throw new KsmError('This buffer has already been freed', 'ERR_KSM_FREED');

  // The range of whole pages that are this buffer's own.
  const start = b.addressOf(buf);
  const page = BigInt(pageSize);
  let offset = 0;
  let length: number;
  if (info !== null) {
    // Ours: from its first page to the end of its last page (the padding is its own).
    length = byteLength === 0 ? 0 : Number(((start + BigInt(byteLength) + page - 1n) / page) * page - start);
    length = Math.min(length, info.extent - byteOffset);
  } else {
    const first = ((start + page - 1n) / page) * page;
    const end = ((start + BigInt(byteLength)) / page) * page;
    offset = Number(first - start);
    length = end > first ? Number(end - first) : 0;
  }
  const states = b.pageStates(buf, offset, length);
  const rangeStart = states.address;
  const rangeEnd = rangeStart + BigInt(states.pages) * page;
  const vma = states.pages > 0 ? findVma(rangeStart) : undefined;
  const mergeable = vma ? isMergeableAt(vma.entry.start) : false;

  let method: BufferStatsMethod;
  let mergedPages: number;
  if (states.ksm !== null) {
    method = 'kpageflags';
    mergedPages = states.ksm;
  } else if (vma && vma.entry.start === rangeStart && vma.entry.end === rangeEnd) {
    method = 'smaps';
    const text = readText('/proc/self/smaps');
    const e = parseSmaps(text).find((s) => s.start === rangeStart);
    mergedPages = Math.round((e?.bytes.KSM ?? 0) / pageSize);
  } else {
    method = 'pagemap';
    mergedPages = states.present - states.exclusive;
  }
  mergedPages = Math.min(mergedPages, states.pages);
  return {
    bytes: byteLength,
    pages: states.pages,
    residentPages: states.present,
    mergedPages,
    mergedBytes: mergedPages * pageSize,
    zeroPages: states.zero ?? undefined,
    mergeable,
    method,
  };
}

export interface Support {
  /** KSM can be used from this process: Linux, the addon loaded, CONFIG_KSM. */
  available: boolean;
  /** Why each missing thing is missing, in words a person can act on. */
  reasons: string[];
  features: {
    madvise: boolean;
    prctl: boolean;
    ksmStat: boolean;
    smapsKsm: boolean;
    advisor: boolean;
    smartScan: boolean;
    zeroPages: boolean;
  };
  /** ksmd is running (`run` = 1). */
  running: boolean;
  /** /sys/kernel/mm/ksm can be written by this process (root, not read-only). */
  canConfigure: boolean;
  /** How `alloc` hands out memory: external ArrayBuffers over mmap. */
  mode: 'external' | 'none';
}

/** What this kernel and this process can do, each "no" with its reason. */
export function support(): Support {
  const reasons: string[] = [];
  const features = { madvise: false, prctl: false, ksmStat: false, smapsKsm: false, advisor: false, smartScan: false, zeroPages: false };
  const result: Support = { available: false, reasons, features, running: false, canConfigure: false, mode: 'none' };
  if (binding === null) {
    reasons.push(loadError ?? 'The native addon is not loaded');
    return result;
  }
  result.mode = 'external';
  if (!fs.existsSync(`${KSM_SYSFS}/run`)) {
    reasons.push(`${KSM_SYSFS} does not exist: the kernel was built without CONFIG_KSM (or /sys is not mounted)`);
    return result;
  }
  result.available = true;
  features.madvise = true;
  const run = parseInteger(readIfExists(`${KSM_SYSFS}/run`));
  result.running = run === 1;
  if (!result.running) reasons.push(`ksmd is not running (run=${run}): start it with "node-ksm boost" or "echo 1 > ${KSM_SYSFS}/run" as root`);
  try {
    fs.accessSync(`${KSM_SYSFS}/run`, fs.constants.W_OK);
    result.canConfigure = true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    reasons.push(
      code === 'EROFS'
        ? `${KSM_SYSFS} is read-only (a container?): configure KSM on the host`
        : `${KSM_SYSFS} is not writable by this user: run as root to configure KSM`,
    );
  }
  try {
    binding.processMerging();
    features.prctl = true;
  } catch {
    reasons.push('PR_SET_MEMORY_MERGE is not supported: process-wide merging needs Linux 6.4+');
  }
  features.ksmStat = fs.existsSync('/proc/self/ksm_stat');
  if (!features.ksmStat) reasons.push('/proc/self/ksm_stat is missing (Linux 6.1+); falling back to ksm_merging_pages');
  features.smapsKsm = /^KSM:/m.test(readIfExists('/proc/self/smaps_rollup') ?? '');
  if (!features.smapsKsm) reasons.push('smaps has no KSM: line (Linux 6.4+): per-buffer figures use pagemap');
  features.advisor = fs.existsSync(`${KSM_SYSFS}/advisor_mode`);
  features.smartScan = fs.existsSync(`${KSM_SYSFS}/smart_scan`);
  features.zeroPages = fs.existsSync(`${KSM_SYSFS}/use_zero_pages`);
  return result;
}
