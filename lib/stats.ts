/**
 * Seeing what KSM does: per process (/proc/<pid>/ksm_stat), per buffer (smaps, kpageflags
 * or pagemap), for the whole machine (/sys/kernel/mm/ksm), and what this kernel supports.
 * The I/O lives here; the parsing is in procfs.ts.
 */
import fs from 'node:fs';
import { binding, loadError, native, type RegionInfo } from './binding';
import { KsmError, fromFsError, invalidArgType, validateInteger } from './errors';
import { deadArenaView, pageSize, viewRange } from './memory';
import {
  type KsmSysfs,
  type MapsEntry,
  type SmapsEntry,
  parseInteger,
  parseKsmStat,
  parseKsmSysfs,
  parseMaps,
  parseMapsLine,
  parseProcessKsm,
  parseSmaps,
  parseUnsigned,
  smapsHasKsm,
} from './procfs';

export const KSM_SYSFS = '/sys/kernel/mm/ksm';

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

export type BufferStatsMethod = 'smaps' | 'kpageflags' | 'pagemap';

export interface BufferStatsOptions {
  /**
   * `'auto'` (default): `smaps` when the buffer's pages are exactly whole mappings, else
   * `kpageflags` when it is readable (root), else `pagemap`. Naming a method forces it;
   * `smaps` and `kpageflags` throw when they cannot give an exact figure for this buffer.
   */
  method?: BufferStatsMethod | 'auto';
}

export interface BufferStats {
  /** The bytes of the buffer (its length). */
  bytes: number;
  /** Pages the statistics cover (those the buffer's bytes touch, its own padding included). */
  pages: number;
  /**
   * Of those, pages present in RAM: a page of its own, a KSM page, or the shared zero
   * page (see `zeroPages`), so that `(mergedPages + zeroPages) / residentPages` is the
   * merged share. Not pages never touched, nor swapped out. The `smaps` method counts as
   * smaps' Rss does, which leaves zero-page mappings out on both sides.
   */
  residentPages: number;
  /** Of those, pages that are KSM pages (merged with an identical page). */
  mergedPages: number;
  /** `mergedPages × pageSize`. */
  mergedBytes: number;
  /**
   * Pages that map the shared zero page: merged there by KSM (use_zero_pages=1) or
   * read but never written. Only the `kpageflags` method knows it.
   */
  zeroPages?: number;
  /** Whether all of its memory is marked MADV_MERGEABLE (VmFlags `mg`). */
  mergeable: boolean;
  /**
   * How the figures were obtained. `smaps`: the `KSM:` lines of mappings that are exactly
   * this buffer (exact; the kernel joins neighbouring buffers with the same flags into
   * one mapping, and then this method cannot be used). `kpageflags`: each page's KSM flag
   * (exact; needs root). `pagemap`: pages present and not mapped exclusively (no root
   * needed), an estimate that also counts pages still shared with a fork() child and
   * pages mapping the shared zero page.
   */
  method: BufferStatsMethod;
}

const HEX = /^[0-9a-f]/;

/**
 * The text of the entries of /proc/self/maps or /proc/self/smaps that overlap
 * [start, end), read only as far as the last of them. Stopping early matters for smaps:
 * printing an entry walks every page table of that mapping, and whatever comes after the
 * buffer is not ours to pay for.
 */
function readVmaText(file: 'maps' | 'smaps', start: bigint, end: bigint): string {
  // smaps is read 1 KiB at a time. seq_file fills one page of kernel buffer per read()
  // and discards the entry that overflows it, to print it again on the next read(): with
  // reads larger than an entry, about one mapping in four gets its pages walked twice.
  // Measured with 1 GiB resident: 27 ms for all of smaps in 1 KiB reads, 50 ms in 64 KiB.
  const chunk = Buffer.allocUnsafe(file === 'smaps' ? 1024 : 65536);
  let fd: number;
  try {
    fd = fs.openSync(`/proc/self/${file}`, 'r');
  } catch (err) {
    throw fromFsError(err);
  }
  let kept = '';
  let pending = '';
  let keep = false;
  let lastEnd = 0n;
  try {
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(fd, chunk, 0, chunk.length, null);
      } catch (err) {
        throw fromFsError(err);
      }
      if (n === 0) return kept + (keep ? pending : '');
      // latin1: only the ASCII parts matter, and a chunk may end inside a UTF-8 path.
      const text = pending + chunk.toString('latin1', 0, n);
      let from = 0;
      for (let nl = text.indexOf('\n'); nl >= 0; from = nl + 1, nl = text.indexOf('\n', from)) {
        const line = text.slice(from, nl);
        const header = HEX.test(line) ? parseMapsLine(line) : undefined;
        if (header) {
          if (header.start >= end) return kept;
          keep = header.end > start;
          lastEnd = header.end;
        }
        if (!keep) continue;
        kept += `${line}\n`;
        // An entry ends with its header in maps and with VmFlags in smaps.
        if (lastEnd >= end && (file === 'maps' || line.startsWith('VmFlags:'))) return kept;
      }
      pending = text.slice(from);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** True when the entries (in address order) cover [start, end) exactly, with no gap. */
function tiles(entries: MapsEntry[], start: bigint, end: bigint): boolean {
  if (entries.length === 0 || entries[0]!.start !== start || entries[entries.length - 1]!.end !== end) return false;
  return entries.every((e, i) => i === 0 || e.start === entries[i - 1]!.end);
}

/** True when the entries leave no byte of [start, end) unmapped. */
function covers(entries: MapsEntry[], start: bigint, end: bigint): boolean {
  let at = start;
  for (const e of entries) {
    if (e.start > at) return false;
    if (e.end > at) at = e.end;
  }
  return at >= end;
}

function mergeableIn(entries: SmapsEntry[], start: bigint, end: bigint): boolean {
  return covers(entries, start, end) && entries.every((e) => e.vmFlags.includes('mg'));
}

/**
 * KSM figures for exactly the pages of one buffer, never its neighbours'. For buffers
 * from `alloc` (and arena buffers) the pages are those its bytes touch, its zero padding
 * included; for any other view only the whole pages inside it. See `BufferStats.method`.
 */
export function bufferStats(buf: ArrayBufferView | ArrayBuffer, options: BufferStatsOptions = {}): BufferStats {
  const expected = 'an instance of Buffer, TypedArray, DataView or ArrayBuffer';
  if (!(ArrayBuffer.isView(buf) || buf instanceof ArrayBuffer)) throw invalidArgType('buf', expected, buf);
  // Memory of a SharedArrayBuffer cannot be located by the addon.
  if (!(buf instanceof ArrayBuffer) && !(buf.buffer instanceof ArrayBuffer)) {
    throw invalidArgType('buf', `${expected} over an ArrayBuffer (not a SharedArrayBuffer)`, buf);
  }
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const method = options.method ?? 'auto';
  if (!['auto', 'smaps', 'kpageflags', 'pagemap'].includes(method)) {
    throw invalidArgType('options.method', "one of 'auto', 'smaps', 'kpageflags', 'pagemap'", method);
  }
  const b = native();
  const ab = buf instanceof ArrayBuffer ? buf : (buf.buffer as ArrayBuffer);
  const info = b.info(ab);
  // The addon knows an arena buffer only while it is attached.
  if (info?.freed || deadArenaView(ab, info)) throw new KsmError('This buffer has already been freed', 'ERR_KSM_FREED');
  // A detached buffer holds no memory, nor does a view its resizable buffer no longer
  // reaches (viewRange: 0 and 0 for both).
  const { byteOffset, byteLength } = viewRange(buf);

  // The whole pages that are this buffer's own, as [offset, offset + length) of the view.
  const address = b.addressOf(buf);
  const page = BigInt(pageSize);
  let offset = 0;
  let length: number;
  if (info !== null) {
    // Ours: from its first page to the end of its last page (the padding is its own).
    length = byteLength === 0 ? 0 : Number(((address + BigInt(byteLength) + page - 1n) / page) * page - address);
    // In window mode the region starts `bufferOffset` bytes into its ArrayBuffer.
    const regionStart = (info as { bufferOffset?: number }).bufferOffset ?? 0;
    length = Math.min(length, regionStart + info.extent - byteOffset);
  } else {
    const first = ((address + page - 1n) / page) * page;
    const end = ((address + BigInt(byteLength)) / page) * page;
    offset = Number(first - address);
    length = end > first ? Number(end - first) : 0;
  }
  // The same page range pageStates() reports on.
  const rangeStart = ((address + BigInt(offset)) / page) * page;
  const rangeEnd = length === 0 ? rangeStart : ((address + BigInt(offset + length) + page - 1n) / page) * page;
  const pages = Number((rangeEnd - rangeStart) / page);
  const result = (
    how: BufferStatsMethod,
    resident: number,
    merged: number,
    mergeable: boolean,
    zero?: number,
  ): BufferStats => {
    const mergedPages = Math.min(merged, pages);
    return {
      bytes: byteLength,
      pages,
      residentPages: Math.min(resident, pages),
      mergedPages,
      mergedBytes: mergedPages * pageSize,
      ...(zero !== undefined ? { zeroPages: zero } : {}),
      mergeable,
      method: how,
    };
  };
  if (pages === 0) return result(method === 'auto' ? 'pagemap' : method, 0, 0, false);

  // maps is cheap (no page walks): it says whether smaps can describe the buffer alone.
  const maps = parseMaps(readVmaText('maps', rangeStart, rangeEnd));
  const exact = tiles(maps, rangeStart, rangeEnd);
  if (method === 'smaps' || (method === 'auto' && exact)) {
    if (!exact) {
      throw new KsmError(
        "smaps describes whole mappings, and this buffer's pages are only part of one (the kernel joins " +
          'neighbouring mappings with the same flags): use the kpageflags or pagemap method',
        'ERR_KSM_UNSUPPORTED',
      );
    }
    const entries = parseSmaps(readVmaText('smaps', rangeStart, rangeEnd));
    const hasKsm = entries.every((e) => e.bytes.KSM !== undefined);
    // The mappings may have changed between the two reads; then smaps is not exact either.
    if (hasKsm && tiles(entries, rangeStart, rangeEnd)) {
      const sum = (key: string) => entries.reduce((n, e) => n + (e.bytes[key] ?? 0), 0);
      return result(
        'smaps',
        Math.round(sum('Rss') / pageSize),
        Math.round(sum('KSM') / pageSize),
        mergeableIn(entries, rangeStart, rangeEnd),
      );
    }
    if (method === 'smaps') {
      throw new KsmError(
        hasKsm
          ? "The buffer's mappings changed while they were read"
          : "This kernel's smaps has no KSM: line (Linux 6.7+)",
        'ERR_KSM_UNSUPPORTED',
      );
    }
  }

  const states = b.pageStates(buf, offset, length);
  // With no page present there are no frame numbers to look up, even for root: zero is exact.
  if (method === 'kpageflags' && states.ksm === null && states.present === 0) states.ksm = 0;
  if (method === 'kpageflags' && states.ksm === null) {
    throw new KsmError(
      'Reading /proc/kpageflags needs root (CAP_SYS_ADMIN): run as root, or use the pagemap method for an estimate',
      'ERR_KSM_PERMISSION',
    );
  }
  // A KSM page only lives in a VM_MERGEABLE mapping (MADV_UNMERGEABLE unmerges before it
  // clears the flag), so a merged page in the buffer's one mapping answers `mergeable`
  // without walking that mapping again in smaps.
  const mergeable =
    states.ksm !== null && states.ksm > 0 && maps.length === 1 && covers(maps, rangeStart, rangeEnd)
      ? true
      : (knownAdvice(info) ??
        mergeableIn(parseSmaps(readVmaText('smaps', rangeStart, rangeEnd)), rangeStart, rangeEnd));
  if (states.ksm !== null && method !== 'pagemap') {
    return result('kpageflags', states.present, states.ksm, mergeable, states.zero ?? 0);
  }
  return result('pagemap', states.present, states.present - states.exclusive, mergeable);
}

/**
 * The advice node-ksm gave a buffer's whole mapping, when that settles `mergeable`
 * without walking the mapping in smaps (30+ ms for a buffer inside a 1 GiB arena chunk).
 * Not with process-wide merging on: the kernel then sets the flag on mappings itself.
 */
function knownAdvice(info: RegionInfo | null): boolean | undefined {
  if (info === null || info.mergeable === undefined || info.mergeable === null) return undefined;
  if (info.mergeable) return true;
  try {
    return native().processMerging() ? undefined : false;
  } catch {
    return false; // no PR_GET_MEMORY_MERGE: no process-wide merging either
  }
}

export interface Support {
  /** KSM can be used from this process: Linux, the addon loaded, CONFIG_KSM. */
  available: boolean;
  /** Why each missing thing is missing, in words a person can act on. */
  reasons: string[];
  features: {
    /** madvise(MADV_MERGEABLE): the kernel has CONFIG_KSM. */
    madvise: boolean;
    /** prctl(PR_SET_MEMORY_MERGE): process-wide merging (Linux 6.4+). */
    prctl: boolean;
    /** /proc/<pid>/ksm_stat (Linux 6.1+). */
    ksmStat: boolean;
    /** The `KSM:` line of /proc/<pid>/smaps (Linux 6.7+). */
    smapsKsm: boolean;
    /** The scan-time advisor (Linux 6.8+). */
    advisor: boolean;
    /** smart_scan (Linux 6.7+). */
    smartScan: boolean;
    /** The kernel counts pages it merges into the zero page, `ksm_zero_pages` (Linux 6.6+). */
    zeroPages: boolean;
  };
  /** ksmd is running (`run` = 1). */
  running: boolean;
  /** /sys/kernel/mm/ksm can be written by this process (root, not read-only). */
  canConfigure: boolean;
  /**
   * How `alloc` hands out memory: `external` ArrayBuffers over its own mmap, or `window`s
   * of larger V8-owned ArrayBuffers where the runtime refuses external ones.
   */
  mode: 'external' | 'window' | 'none';
}

/** The first entry of /proc/self/smaps (up to its VmFlags line), or '' if unreadable. */
function firstSmapsEntry(): string {
  let fd: number;
  try {
    fd = fs.openSync('/proc/self/smaps', 'r');
  } catch {
    return '';
  }
  try {
    const chunk = Buffer.allocUnsafe(1024);
    let text = '';
    while (!text.includes('\nVmFlags:')) {
      const n = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      text += chunk.toString('latin1', 0, n);
    }
    return text;
  } catch {
    return '';
  } finally {
    fs.closeSync(fd);
  }
}

/** What this kernel and this process can do, each "no" with its reason. Never throws. */
export function support(): Support {
  const reasons: string[] = [];
  const features = {
    madvise: false,
    prctl: false,
    ksmStat: false,
    smapsKsm: false,
    advisor: false,
    smartScan: false,
    zeroPages: false,
  };
  const result: Support = { available: false, reasons, features, running: false, canConfigure: false, mode: 'none' };
  if (binding === null) {
    reasons.push(loadError ?? 'The native addon is not loaded');
    return result;
  }
  result.mode = (binding as { mode?: Support['mode'] }).mode ?? 'external';
  const sysfs = fs.existsSync(`${KSM_SYSFS}/run`);
  // Each of these exists only with CONFIG_KSM; the madvise probe settles the rest.
  let compiledIn = sysfs || fs.existsSync('/proc/self/ksm_merging_pages') || fs.existsSync('/proc/self/ksm_stat');
  if (!compiledIn) {
    try {
      binding.free(binding.alloc(binding.pageSize, true));
      compiledIn = true;
    } catch (err) {
      reasons.push(
        (err as { code?: string }).code === 'EINVAL'
          ? 'The kernel was built without CONFIG_KSM (madvise(MADV_MERGEABLE) fails with EINVAL): use a kernel with CONFIG_KSM=y'
          : `madvise(MADV_MERGEABLE) failed: ${(err as Error).message}`,
      );
      return result;
    }
  }
  result.available = true;
  features.madvise = true;

  if (!sysfs) {
    reasons.push(
      `${KSM_SYSFS} is not visible (/sys not mounted, as in some containers): ksmd is configured and watched on the host`,
    );
  } else {
    let run: number | undefined;
    try {
      run = parseInteger(readIfExists(`${KSM_SYSFS}/run`));
    } catch {
      run = undefined;
    }
    result.running = run === 1;
    if (!result.running) {
      reasons.push(
        run === undefined
          ? `${KSM_SYSFS}/run cannot be read, so whether ksmd runs is unknown`
          : `ksmd is not running (run=${run}): nothing gets merged until it is; start it with "node-ksm boost", or "echo 1 > ${KSM_SYSFS}/run" as root`,
      );
    }
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
    features.advisor = fs.existsSync(`${KSM_SYSFS}/advisor_mode`);
    if (!features.advisor)
      reasons.push('No scan-time advisor (advisor_mode, Linux 6.8+): ksmd speed is set by pages_to_scan alone');
    features.smartScan = fs.existsSync(`${KSM_SYSFS}/smart_scan`);
    if (!features.smartScan) reasons.push('No smart_scan (Linux 6.7+): ksmd rescans pages that never merge');
    features.zeroPages = fs.existsSync(`${KSM_SYSFS}/ksm_zero_pages`);
    if (!features.zeroPages) {
      reasons.push(
        'ksm_zero_pages is not counted (Linux 6.6+): pages merged into the zero page (use_zero_pages=1) are left out of savedBytes',
      );
    }
  }
  try {
    binding.processMerging();
    features.prctl = true;
  } catch (err) {
    reasons.push(
      (err as { code?: string }).code === 'EINVAL'
        ? 'PR_SET_MEMORY_MERGE is not supported: process-wide merging needs Linux 6.4+ (madvise per buffer still works)'
        : `prctl(PR_GET_MEMORY_MERGE) failed (${(err as Error).message}): a seccomp filter may block it`,
    );
  }
  features.ksmStat = fs.existsSync('/proc/self/ksm_stat');
  if (!features.ksmStat)
    reasons.push('/proc/<pid>/ksm_stat is missing (Linux 6.1+): process figures come from ksm_merging_pages');
  features.smapsKsm = smapsHasKsm(firstSmapsEntry());
  if (!features.smapsKsm) {
    reasons.push(
      'smaps has no KSM: line (Linux 6.7+): buffer figures come from kpageflags (root) or a pagemap estimate',
    );
  }
  return result;
}
