/**
 * Per-buffer figures: how many of a buffer's pages are resident and merged, from the
 * `KSM:` line of its own mapping in /proc/self/smaps, from each page's KSM flag
 * (/proc/self/pagemap + /proc/kpageflags, root), or estimated from pagemap alone.
 */
import fs from 'node:fs';
import { native, type RegionInfo } from './binding';
import { KsmError, fromFsError, invalidArgType } from './errors';
import { deadArenaView, pageSize, viewRange } from './memory';
import { type MapsEntry, type SmapsEntry, parseMaps, parseMapsLine, parseSmaps } from './procfs';
import { kpageflagsKsmReliable } from './stats';

/** How {@link bufferStats} got its figures: see {@link BufferStats.method}. */
export type BufferStatsMethod = 'smaps' | 'kpageflags' | 'pagemap';

/** Options of {@link bufferStats}. */
export interface BufferStatsOptions {
  /**
   * `'auto'` (default): `smaps` when the buffer's pages are exactly whole mappings, else
   * `kpageflags` when it is readable (root), else `pagemap`. Naming a method forces it;
   * `smaps` and `kpageflags` throw when they cannot give an exact figure for this buffer.
   */
  method?: BufferStatsMethod | 'auto';
}

/**
 * What KSM did to exactly the pages of one buffer ({@link bufferStats}). The merged share
 * is `(mergedPages + (zeroPages ?? 0)) / residentPages`.
 */
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
  const method = validate(buf, options);
  const range = pageRangeOf(buf);
  if (range.pages === 0) return figures(range, method === 'auto' ? 'pagemap' : method, 0, 0, false);
  // maps is cheap (no page walks): it says whether smaps can describe the buffer alone.
  const maps = parseMaps(readVmaText('maps', range.start, range.end));
  const exact = tiles(maps, range.start, range.end);
  if (method === 'smaps' || (method === 'auto' && exact)) {
    const stats = fromSmaps(range, exact, method === 'smaps');
    if (stats !== undefined) return stats;
  }
  return fromPageStates(buf, range, maps, method);
}

const METHODS = ['auto', 'smaps', 'kpageflags', 'pagemap'] as const;

/** The method asked for, once `buf` and `options` are known to be what bufferStats takes. */
function validate(buf: unknown, options: BufferStatsOptions): BufferStatsMethod | 'auto' {
  const expected = 'an instance of Buffer, TypedArray, DataView or ArrayBuffer';
  if (!(ArrayBuffer.isView(buf) || buf instanceof ArrayBuffer)) throw invalidArgType('buf', expected, buf);
  // Memory of a SharedArrayBuffer cannot be located by the addon.
  if (!(buf instanceof ArrayBuffer) && !(buf.buffer instanceof ArrayBuffer)) {
    throw invalidArgType('buf', `${expected} over an ArrayBuffer (not a SharedArrayBuffer)`, buf);
  }
  if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const method = options.method ?? 'auto';
  if (!METHODS.includes(method)) {
    throw invalidArgType('options.method', "one of 'auto', 'smaps', 'kpageflags', 'pagemap'", method);
  }
  return method;
}

/** The pages a buffer's statistics cover, as the view sees them and as addresses. */
interface PageRange {
  /** The addon's record of the buffer's mapping, or null when node-ksm did not allocate it. */
  info: RegionInfo | null;
  /** The view's length in bytes. */
  bytes: number;
  /** [offset, offset + length) of the view: the whole pages that are this buffer's own. */
  offset: number;
  length: number;
  /** The same pages as addresses: the range pageStates() reports on. */
  start: bigint;
  end: bigint;
  pages: number;
}

/**
 * The whole pages that are this buffer's own: from its first page to the end of its last
 * for a buffer node-ksm allocated (the padding is its own), the pages wholly inside it
 * for any other view. Throws ERR_KSM_FREED for a freed buffer.
 */
function pageRangeOf(buf: ArrayBufferView | ArrayBuffer): PageRange {
  const b = native();
  const ab = buf instanceof ArrayBuffer ? buf : (buf.buffer as ArrayBuffer);
  const info = b.info(ab);
  // The addon knows an arena buffer only while it is attached.
  if (info?.freed || deadArenaView(ab, info)) throw new KsmError('This buffer has already been freed', 'ERR_KSM_FREED');
  // A detached buffer holds no memory, nor does a view its resizable buffer no longer
  // reaches (viewRange: 0 and 0 for both).
  const { byteOffset, byteLength } = viewRange(buf);
  const address = b.addressOf(buf);
  const page = BigInt(pageSize);
  let offset = 0;
  let length: number;
  if (info !== null) {
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
  const start = ((address + BigInt(offset)) / page) * page;
  const end = length === 0 ? start : ((address + BigInt(offset + length) + page - 1n) / page) * page;
  return { info, bytes: byteLength, offset, length, start, end, pages: Number((end - start) / page) };
}

/** The result, with each count capped at the pages the range holds. */
function figures(
  range: PageRange,
  how: BufferStatsMethod,
  resident: number,
  merged: number,
  mergeable: boolean,
  zero?: number,
): BufferStats {
  const mergedPages = Math.min(merged, range.pages);
  return {
    bytes: range.bytes,
    pages: range.pages,
    residentPages: Math.min(resident, range.pages),
    mergedPages,
    mergedBytes: mergedPages * pageSize,
    ...(zero !== undefined ? { zeroPages: zero } : {}),
    mergeable,
    method: how,
  };
}

/**
 * From the `KSM:` lines of the mappings that are exactly the buffer. Undefined when
 * smaps cannot tell (a kernel without the line, mappings that changed between two
 * reads) and the method was not forced; forced, that throws ERR_KSM_UNSUPPORTED.
 */
function fromSmaps(range: PageRange, exact: boolean, forced: boolean): BufferStats | undefined {
  if (!exact) {
    throw new KsmError(
      "smaps describes whole mappings, and this buffer's pages are only part of one (the kernel joins " +
        'neighbouring mappings with the same flags): use the kpageflags or pagemap method',
      'ERR_KSM_UNSUPPORTED',
    );
  }
  const entries = parseSmaps(readVmaText('smaps', range.start, range.end));
  const hasKsm = entries.every((e) => e.bytes.KSM !== undefined);
  // The mappings may have changed between the two reads; then smaps is not exact either.
  if (hasKsm && tiles(entries, range.start, range.end)) {
    const sum = (key: string) => entries.reduce((n, e) => n + (e.bytes[key] ?? 0), 0);
    return figures(
      range,
      'smaps',
      Math.round(sum('Rss') / pageSize),
      Math.round(sum('KSM') / pageSize),
      mergeableIn(entries, range.start, range.end),
    );
  }
  if (!forced) return undefined;
  throw new KsmError(
    hasKsm ? "The buffer's mappings changed while they were read" : "This kernel's smaps has no KSM: line (Linux 6.7+)",
    'ERR_KSM_UNSUPPORTED',
  );
}

/**
 * From each page's state in /proc/self/pagemap: the KSM flag from /proc/kpageflags when
 * it can be read (root), else pages present and not mapped exclusively (an estimate).
 */
function fromPageStates(
  buf: ArrayBufferView | ArrayBuffer,
  range: PageRange,
  maps: MapsEntry[],
  method: BufferStatsMethod | 'auto',
): BufferStats {
  const states = native().pageStates(buf, range.offset, range.length);
  // A kernel whose kpageflags marks every anonymous page KSM (Debian's 6.12) cannot count
  // merged pages that way: an estimate from pagemap, or an error when kpageflags was asked for.
  if (states.ksm !== null && states.present > 0 && kpageflagsKsmReliable() === false) {
    if (method === 'kpageflags') {
      throw new KsmError(
        "This kernel's /proc/kpageflags marks every anonymous page KSM (seen on 6.12), so it cannot count merged pages: use the pagemap method",
        'ERR_KSM_UNSUPPORTED',
      );
    }
    states.ksm = null;
  }
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
    states.ksm !== null && states.ksm > 0 && maps.length === 1 && covers(maps, range.start, range.end)
      ? true
      : (knownAdvice(range.info) ??
        mergeableIn(parseSmaps(readVmaText('smaps', range.start, range.end)), range.start, range.end));
  if (states.ksm !== null && method !== 'pagemap') {
    return figures(range, 'kpageflags', states.present, states.ksm, mergeable, states.zero ?? 0);
  }
  return figures(range, 'pagemap', states.present, states.present - states.exclusive, mergeable);
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
