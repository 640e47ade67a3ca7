/**
 * Seeing what KSM does, per process (/proc/<pid>/ksm_stat) and for the whole machine
 * (/sys/kernel/mm/ksm). Per-buffer figures are in buffer-stats.ts, what the kernel can do
 * in support.ts; the parsing is in procfs.ts.
 */
import fs from 'node:fs';
import { native } from './binding';
import { KsmError, fromFsError, validateInteger } from './errors';
import { pageSize } from './memory';
import { type KsmSysfs, parseKsmStat, parseKsmSysfs, parseProcessKsm, parseUnsigned } from './procfs';

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
 * A process's KSM figures, from `/proc/<pid>/ksm_stat` (Linux 6.1+; `ksm_merging_pages`
 * before). A field the kernel does not have is `undefined`, never 0.
 */
export interface ProcessStats {
  /** The process the figures are of. */
  pid: number;
  /** Pages of the process that ksmd tracks (`ksm_rmap_items`). */
  rmapItems?: number;
  /** Pages that share a KSM page (`ksm_merging_pages`). */
  mergingPages?: number;
  /** Pages KSM merged into the zero page (`ksm_zero_pages`); signed. */
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

function validatePid(pid: unknown): number {
  // pid_max can be raised to 2^22; anything above 2^31 - 1 is not a pid anywhere.
  return validateInteger(pid, 'pid', 1, 2 ** 31 - 1);
}

/** Reads a /proc/<pid> file; EACCES says whose process it is and what to do. */
function readProcFile(pid: number, file: string): string | undefined {
  try {
    return readIfExists(`/proc/${pid}/${file}`);
  } catch (err) {
    if (err instanceof KsmError && (err.code === 'EACCES' || err.code === 'EPERM')) {
      throw new KsmError(
        `Cannot read /proc/${pid}/${file}: process ${pid} belongs to another user (run as root, or as that user)`,
        err.code,
        { errno: err.errno, syscall: err.syscall, path: err.path, cause: err },
      );
    }
    throw err;
  }
}

/**
 * `/proc/<pid>/ksm_stat` (plus `/proc/<pid>/ksm_merging_pages` on kernels whose
 * ksm_stat lacks it). Fields a kernel lacks are undefined, and so is every field of a
 * process without an address space (a kernel thread, a zombie). Another user's process
 * gives an `EACCES` KsmError; a process that does not exist, `ESRCH`; a kernel without
 * per-process figures (before 5.19), `ERR_KSM_UNSUPPORTED`.
 */
export function processStats(pid: number = process.pid): ProcessStats {
  validatePid(pid);
  native();
  const statText = readProcFile(pid, 'ksm_stat');
  // The kernel prints nothing at all for a task without an mm.
  if (statText !== undefined && statText.trim() === '') return { pid };
  const needMerging = statText === undefined || parseKsmStat(statText).mergingPages === undefined;
  const mergingText = needMerging ? readProcFile(pid, 'ksm_merging_pages') : undefined;
  if (statText === undefined && mergingText === undefined && !fs.existsSync(`/proc/${pid}`)) {
    throw new KsmError(`No process with pid ${pid}`, 'ESRCH');
  }
  if (mergingText !== undefined && mergingText.trim() === '' && statText === undefined) return { pid };
  const fields = parseProcessKsm(statText, mergingText);
  return {
    pid,
    ...fields,
    mergedBytes: fields.mergingPages === undefined ? undefined : fields.mergingPages * pageSize,
  };
}

/** The cheapest single figure for polling: a process's merging pages (0 when unknown). */
export function mergingPages(pid: number = process.pid): number {
  validatePid(pid);
  const n = parseUnsigned(readProcFile(pid, 'ksm_merging_pages'));
  if (n !== undefined) return n;
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
