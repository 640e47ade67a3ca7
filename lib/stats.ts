/**
 * Seeing what KSM does, per process (/proc/<pid>/ksm_stat) and for the whole machine
 * (/sys/kernel/mm/ksm). Per-buffer figures are in buffer-stats.ts, what the kernel can do
 * in support.ts; the parsing is in procfs.ts.
 */
import fs from 'node:fs';
import { native } from './binding';
import { KsmError, fromFsError, invalidArgType, validateInteger } from './errors';
import { pageSize } from './memory';
import { type KsmSysfs, parseKsmStat, parseKsmSysfs, parseProcessKsm, parseSmaps, parseUnsigned } from './procfs';

export const KSM_SYSFS = '/sys/kernel/mm/ksm';

/** A file's text, or undefined when it does not exist; other errors as KsmError. */
export function readIfExists(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromFsError(err);
  }
}

/**
 * Where `processStats` took a process's merged pages from. `ksm_stat` (Linux 6.4+) and
 * `ksm_merging_pages` (5.19+) are the kernel's own counters: exact, and cheap to read.
 * Older kernels (5.10, 5.15) have neither, so the pages of the process's mergeable
 * mappings are looked up one by one: `kpageflags` reads each page's KSM flag
 * (/proc/<pid>/pagemap + /proc/kpageflags; exact, needs root) and `pagemap` counts the
 * present pages that are not mapped exclusively (no root needed; an estimate that also
 * counts pages still shared with a fork() child, and misses a KSM page left with a single
 * mapping). Both read smaps and walk every mergeable page of the process: milliseconds per
 * 100 MiB, against microseconds for the counters.
 */
export type ProcessStatsMethod = 'ksm_stat' | 'ksm_merging_pages' | 'kpageflags' | 'pagemap';

/**
 * A process's KSM figures, from `/proc/<pid>/ksm_stat` (Linux 6.1+; `ksm_merging_pages`
 * before; on kernels with neither, its mergeable pages one by one: see
 * {@link ProcessStatsMethod}). A field the kernel does not have is `undefined`, never 0.
 */
export interface ProcessStats {
  /** The process the figures are of. */
  pid: number;
  /** Pages of the process that ksmd tracks (`ksm_rmap_items`). */
  rmapItems?: number;
  /** Pages that share a KSM page (`ksm_merging_pages`, or counted page by page: see `method`). */
  mergingPages?: number;
  /** Pages KSM merged into the zero page (`ksm_zero_pages`); signed. */
  zeroPages?: number;
  /** `ksm_process_profit`: bytes saved minus rmap item overhead; may be negative. */
  profitBytes?: number;
  /** PR_SET_MEMORY_MERGE is on (`ksm_merge_any`). */
  mergeAny?: boolean;
  /**
   * The process has mergeable memory (`ksm_mergeable`, Linux 6.14+; where `method` is
   * `kpageflags` or `pagemap`, whether any mapping of it is MADV_MERGEABLE, from smaps).
   */
  mergeable?: boolean;
  /** `mergingPages × pageSize`. */
  mergedBytes?: number;
  /** How `mergingPages` was obtained; undefined when it is (a process without memory). */
  method?: ProcessStatsMethod;
}

export interface ProcessStatsOptions {
  /**
   * `'auto'` (default): the kernel's counters where it has them, else `kpageflags` when
   * readable (root), else `pagemap`. Naming a method forces it; one the kernel or this
   * user cannot give is an `ERR_KSM_UNSUPPORTED` / `ERR_KSM_PERMISSION` KsmError.
   */
  method?: ProcessStatsMethod | 'auto';
}

function validatePid(pid: unknown): number {
  // pid_max can be raised to 2^22; anything above 2^31 - 1 is not a pid anywhere.
  return validateInteger(pid, 'pid', 1, 2 ** 31 - 1);
}

/** Why /proc/<pid> refused us, and what to do about it. */
function deniedBecause(pid: number): string {
  return process.getuid?.() === 0
    ? `process ${pid} is closed even to root here (it runs in another user namespace or container, or ptrace access is restricted): read it from where it runs`
    : `process ${pid} belongs to another user (run as root, or as that user)`;
}

/** Reads a /proc/<pid> file; EACCES says whose process it is and what to do. */
function readProcFile(pid: number, file: string): string | undefined {
  try {
    return readIfExists(`/proc/${pid}/${file}`);
  } catch (err) {
    if (err instanceof KsmError && (err.code === 'EACCES' || err.code === 'EPERM')) {
      throw new KsmError(`Cannot read /proc/${pid}/${file}: ${deniedBecause(pid)}`, err.code, {
        errno: err.errno,
        syscall: err.syscall,
        path: err.path,
        cause: err,
      });
    }
    throw err;
  }
}

/**
 * A process's KSM figures: `/proc/<pid>/ksm_stat`, plus `/proc/<pid>/ksm_merging_pages` on
 * kernels whose ksm_stat lacks it (5.19-6.3). Kernels with neither (before 5.19) give
 * `mergingPages` counted page by page over the process's mergeable mappings (exact with
 * root, an estimate without, and costlier: see `ProcessStatsMethod`, which `method` names)
 * and leave the kernel's other counters undefined. Fields a kernel lacks are undefined, and
 * so is every field of a process without an address space (a kernel thread, a zombie).
 * Another user's process gives an `EACCES` KsmError; a process that does not exist, `ESRCH`.
 */
export function processStats(pid: number = process.pid, options: ProcessStatsOptions = {}): ProcessStats {
  validatePid(pid);
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const want = options.method ?? 'auto';
  if (!['auto', 'ksm_stat', 'ksm_merging_pages', 'kpageflags', 'pagemap'].includes(want)) {
    throw invalidArgType(
      'options.method',
      "one of 'auto', 'ksm_stat', 'ksm_merging_pages', 'kpageflags', 'pagemap'",
      want,
    );
  }
  native();
  if (want === 'kpageflags' || want === 'pagemap') return walkedStats(pid, want);
  const statText = readProcFile(pid, 'ksm_stat');
  // The kernel prints nothing at all for a task without an mm.
  if (statText !== undefined && statText.trim() === '') return { pid };
  const fromStat = statText === undefined ? undefined : parseKsmStat(statText).mergingPages;
  if (want === 'ksm_stat' && fromStat === undefined) {
    throw new KsmError(
      statText === undefined
        ? 'This kernel has no /proc/<pid>/ksm_stat (Linux 6.1+)'
        : "This kernel's ksm_stat has no ksm_merging_pages line (Linux 6.4+)",
      'ERR_KSM_UNSUPPORTED',
    );
  }
  const fileWanted = fromStat === undefined || want === 'ksm_merging_pages';
  const mergingText = fileWanted ? readProcFile(pid, 'ksm_merging_pages') : undefined;
  if (want === 'ksm_merging_pages' && mergingText === undefined) {
    if (!fs.existsSync(`/proc/${pid}`)) throw new KsmError(`No process with pid ${pid}`, 'ESRCH');
    throw new KsmError('This kernel has no /proc/<pid>/ksm_merging_pages (Linux 5.19+)', 'ERR_KSM_UNSUPPORTED');
  }
  if (statText === undefined && mergingText === undefined) return walkedStats(pid, 'auto');
  if (mergingText !== undefined && mergingText.trim() === '' && statText === undefined) return { pid };
  const fields = parseProcessKsm(statText, mergingText);
  if (want === 'ksm_merging_pages') fields.mergingPages = parseUnsigned(mergingText);
  const method: ProcessStatsMethod | undefined =
    fields.mergingPages === undefined
      ? undefined
      : fromStat !== undefined && want !== 'ksm_merging_pages'
        ? 'ksm_stat'
        : 'ksm_merging_pages';
  return {
    pid,
    ...fields,
    mergedBytes: fields.mergingPages === undefined ? undefined : fields.mergingPages * pageSize,
    ...(method !== undefined ? { method } : {}),
  };
}

const PM_PRESENT = 1n << 63n;
const PM_EXCLUSIVE = 1n << 56n;
const PM_PFN = (1n << 55n) - 1n;
const KPF_KSM = 1n << 21n;
/** pagemap entries per read (512 KiB). */
const BATCH = 65536;
/** kpageflags entries read at once from a wanted frame on (frames of one process cluster). */
const FLAG_BLOCK = 512;

function openForRead(pid: number, file: string): number {
  try {
    return fs.openSync(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new KsmError(`Cannot read ${file}: ${deniedBecause(pid)}`, code, { cause: err });
    }
    if (code === 'ENOENT' || code === 'ESRCH') throw new KsmError(`No process with pid ${pid}`, 'ESRCH');
    throw fromFsError(err);
  }
}

/** Reads up to `count` 8-byte entries at index `first` into `buf`; returns how many it read. */
function readEntries(fd: number, buf: Buffer, first: number, count: number): number {
  let got = 0;
  const want = count * 8;
  while (got < want) {
    const n = fs.readSync(fd, buf, got, want - got, first * 8 + got);
    if (n === 0) break;
    got += n;
  }
  return Math.floor(got / 8);
}

/**
 * Merged pages of a process on a kernel with no per-process KSM counter: every present
 * page of its MADV_MERGEABLE mappings (VmFlags `mg` in smaps) is looked up in
 * /proc/<pid>/pagemap and, where frame numbers are visible (root), its KSM flag in
 * /proc/kpageflags. See `ProcessStatsMethod`.
 */
function walkedStats(pid: number, want: 'auto' | 'kpageflags' | 'pagemap'): ProcessStats {
  const smaps = readProcFile(pid, 'smaps');
  if (smaps === undefined) throw new KsmError(`No process with pid ${pid}`, 'ESRCH');
  if (smaps.trim() === '') return { pid };
  const vmas = parseSmaps(smaps).filter((v) => v.vmFlags.includes('mg'));
  const page = BigInt(pageSize);
  const frames: number[] = [];
  let notExclusive = 0;
  let hidden = false;
  const buf = Buffer.allocUnsafe(BATCH * 8);
  const entries = new BigUint64Array(buf.buffer, buf.byteOffset, BATCH);
  const fd = openForRead(pid, `/proc/${pid}/pagemap`);
  try {
    for (const vma of vmas) {
      const end = Number(vma.end / page);
      for (let at = Number(vma.start / page); at < end; at += BATCH) {
        const want = Math.min(BATCH, end - at);
        const n = readEntries(fd, buf, at, want);
        for (let i = 0; i < n; i++) {
          const e = entries[i]!;
          if ((e & PM_PRESENT) === 0n) continue;
          if ((e & PM_EXCLUSIVE) === 0n) notExclusive++;
          const pfn = e & PM_PFN;
          if (pfn === 0n) hidden = true;
          else frames.push(Number(pfn));
        }
        if (n < want) break;
      }
    }
  } catch (err) {
    throw err instanceof KsmError ? err : fromFsError(err);
  } finally {
    fs.closeSync(fd);
  }
  const ksm = hidden || want === 'pagemap' ? undefined : countKsmFrames(frames);
  if (want === 'kpageflags' && ksm === undefined && kpageflagsKsmReliable() === false) {
    throw new KsmError(
      "This kernel's /proc/kpageflags marks every anonymous page KSM (seen on 6.12), so it cannot count merged pages: use the pagemap method",
      'ERR_KSM_UNSUPPORTED',
    );
  }
  if (want === 'kpageflags' && ksm === undefined && (hidden || frames.length > 0)) {
    throw new KsmError(
      'Reading page frames and /proc/kpageflags needs root (CAP_SYS_ADMIN): run as root, or use the pagemap method for an estimate',
      'ERR_KSM_PERMISSION',
    );
  }
  const merging = want === 'kpageflags' ? (ksm ?? 0) : (ksm ?? notExclusive);
  return {
    pid,
    mergingPages: merging,
    mergeable: vmas.length > 0,
    mergedBytes: merging * pageSize,
    method: want === 'kpageflags' || ksm !== undefined ? 'kpageflags' : 'pagemap',
  };
}

let ksmFlagTrusted: boolean | undefined;

/**
 * Whether /proc/kpageflags tells KSM pages apart on this kernel. Debian's 6.12 sets KPF_KSM
 * on every anonymous page (measured in a guest: a buffer never scanned by ksmd read as
 * fully merged), so the flag is checked once on a page that cannot be a KSM page: a fresh,
 * written, unmergeable one. Undefined when kpageflags cannot be read (not root).
 */
export function kpageflagsKsmReliable(): boolean | undefined {
  if (ksmFlagTrusted !== undefined) return ksmFlagTrusted;
  const b = native();
  let ab: ArrayBuffer;
  try {
    ab = b.alloc(pageSize, false);
  } catch {
    return undefined;
  }
  try {
    new Uint8Array(ab).fill(0x5a);
    const page = b.addressOf(ab) / BigInt(pageSize);
    const buf = Buffer.alloc(8);
    const pm = fs.openSync('/proc/self/pagemap', 'r');
    try {
      fs.readSync(pm, buf, 0, 8, Number(page) * 8);
    } finally {
      fs.closeSync(pm);
    }
    const pfn = buf.readBigUInt64LE(0) & PM_PFN;
    if (pfn === 0n) return undefined;
    const kf = fs.openSync('/proc/kpageflags', 'r');
    try {
      fs.readSync(kf, buf, 0, 8, Number(pfn) * 8);
    } finally {
      fs.closeSync(kf);
    }
    ksmFlagTrusted = (buf.readBigUInt64LE(0) & KPF_KSM) === 0n;
    return ksmFlagTrusted;
  } catch {
    return undefined;
  } finally {
    b.free(ab);
  }
}

/** How many of the frames are KSM pages, or undefined when /proc/kpageflags cannot be read. */
function countKsmFrames(frames: number[]): number | undefined {
  if (kpageflagsKsmReliable() === false) return undefined;
  let fd: number;
  try {
    fd = fs.openSync('/proc/kpageflags', 'r');
  } catch {
    return undefined;
  }
  try {
    frames.sort((a, b) => a - b);
    const buf = Buffer.allocUnsafe(FLAG_BLOCK * 8);
    const flags = new BigUint64Array(buf.buffer, buf.byteOffset, FLAG_BLOCK);
    let count = 0;
    // One read per run of frames that fit in a block, and no longer than the run: the
    // kernel builds each entry it is asked for, and a process's frames are scattered.
    for (let i = 0; i < frames.length;) {
      const start = frames[i]!;
      let j = i;
      while (j + 1 < frames.length && frames[j + 1]! - start < FLAG_BLOCK) j++;
      const n = readEntries(fd, buf, start, frames[j]! - start + 1);
      for (; i <= j; i++) {
        const k = frames[i]! - start;
        if (k < n && (flags[k]! & KPF_KSM) !== 0n) count++;
      }
    }
    return count;
  } catch {
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A counter for polling (lib/wait.ts) that moves whenever the process's merged pages do and
 * costs microseconds: the process's `ksm_merging_pages` where the kernel has one (5.19+).
 * Before 5.19 it is the whole machine's `pages_shared + pages_sharing`, which is the sum of
 * every process's merging pages: two tiny files instead of a walk of the process's memory,
 * at the price of also moving when other processes merge or unmerge (the caller confirms
 * with an exact figure before it trusts a change).
 */
export function mergingPages(pid: number = process.pid): number {
  validatePid(pid);
  const text = readProcFile(pid, 'ksm_merging_pages');
  if (text !== undefined) return parseUnsigned(text) ?? 0;
  if (!fs.existsSync(`/proc/${pid}`)) throw new KsmError(`No process with pid ${pid}`, 'ESRCH');
  const shared = parseUnsigned(readIfExists(`${KSM_SYSFS}/pages_shared`));
  const sharing = parseUnsigned(readIfExists(`${KSM_SYSFS}/pages_sharing`));
  return (shared ?? 0) + (sharing ?? 0);
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
  /**
   * Memory that merging saves: `(pagesSharing + ksmZeroPages) × pageSize`. Kernels
   * before 6.6 do not count pages merged into the zero page (use_zero_pages=1), so
   * there it is `pagesSharing × pageSize` and leaves those out.
   */
  savedBytes: number;
  /** `pagesSharing / pagesShared`: how many mappings each KSM page serves (0 if none). */
  sharingRatio: number;
  /**
   * `general_profit` (Linux 6.4+) as the kernel reports it: bytes saved minus what
   * ksmd's rmap items cost; negative when KSM costs more than it saves.
   */
  generalProfitBytes?: number;
}

/** Every file of /sys/kernel/mm/ksm, typed, plus `savedBytes` and `sharingRatio`. */
export function systemStats(dir: string = KSM_SYSFS): SystemStats {
  native();
  return computeSystemStats(readKsmSysfsFiles(dir), pageSize);
}

/**
 * The typed files and derived figures of `systemStats` (pure). Throws ERR_KSM_PARSE
 * when pages_shared or pages_sharing is missing or malformed, because every figure
 * derived from them would be wrong.
 */
export function computeSystemStats(files: Record<string, string>, page: number): SystemStats {
  validateInteger(page, 'page', 1);
  const sysfs = parseKsmSysfs(files);
  const sharing = sysfs.pagesSharing;
  const shared = sysfs.pagesShared;
  if (sharing === undefined || shared === undefined) {
    const bad = sharing === undefined ? 'pages_sharing' : 'pages_shared';
    throw new KsmError(
      `${KSM_SYSFS}/${bad} is ${files[bad] === undefined ? 'missing' : `not a count (${JSON.stringify(files[bad].trim())})`}`,
      'ERR_KSM_PARSE',
    );
  }
  // A negative ksm_zero_pages is the pre-6.10 accounting bug, not negative savings.
  const zero = Math.max(0, sysfs.ksmZeroPages ?? 0);
  return {
    ...sysfs,
    pageSize: page,
    savedBytes: (sharing + zero) * page,
    sharingRatio: shared > 0 ? sharing / shared : 0,
    generalProfitBytes: sysfs.generalProfit,
  };
}
