/**
 * The one place that loads the native addon. Everything above it imports the typed
 * `NativeBinding` from here; when the addon cannot be loaded (not Linux, no compiler at
 * install time, a binary for another platform) `binding` is null and `loadError` says
 * what to do, so importing node-ksm never throws.
 */
import path from 'node:path';
import { KsmError } from './errors';
import { buildAdvice, currentHost } from './install';

export interface RegionInfo {
  freed: boolean;
  /** Made by alloc() (freeing it unmaps the mapping), or a view of one (arena buffers). */
  owner: boolean;
  length: number;
  /** Page-rounded bytes this region owns. */
  extent: number;
  mappingOffset: number;
  /** Where the region starts inside its ArrayBuffer (non-zero only in window mode). */
  bufferOffset: number;
  address?: bigint;
  mappingAddress?: bigint;
  mappingLength?: number;
  /**
   * The MADV_(UN)MERGEABLE advice last given to the whole mapping through node-ksm, or
   * null when part of it was advised otherwise (only smaps knows then). Process-wide
   * merging (PR_SET_MEMORY_MERGE) is not reflected here.
   */
  mergeable?: boolean | null;
}

export interface PageStates {
  pages: number;
  present: number;
  swapped: number;
  /** Present pages mapped only here (pagemap bit 56). */
  exclusive: number;
  /** KSM pages, from /proc/kpageflags; null when frame numbers are hidden (not root). */
  ksm: number | null;
  /** Pages merged into the shared zero page (use_zero_pages); null when unknown. */
  zero: number | null;
  /** Distinct physical frames among the present pages; null when unknown. */
  frames: number | null;
  address: bigint;
}

export interface NativeBinding {
  readonly pageSize: number;
  /** `sysconf(_SC_CLK_TCK)`: USER_HZ, the unit of CPU times in /proc/<pid>/stat; 0 if unknown. */
  readonly clockTicks: number;
  /**
   * 'external': buffers are external ArrayBuffers over our own mmap'd memory.
   * 'window': the runtime refuses external ArrayBuffers (V8 sandbox, Electron >= 21), so
   * a buffer is a page-aligned window of a larger V8-owned ArrayBuffer, madvised.
   */
  readonly mode: 'external' | 'window';
  readonly advice: { readonly MERGEABLE: number; readonly UNMERGEABLE: number; readonly DONTNEED: number };
  alloc(size: number, mergeable: boolean): ArrayBuffer;
  /**
   * A light view (an arena buffer): a Buffer over a page-aligned part of `buffer`'s mapping,
   * holding the mapping, with no tag or wrap (recognised by its address while attached).
   */
  view(buffer: ArrayBuffer, offset: number, length: number): Buffer;
  /** Detaches a light view: false if already detached, ERR_KSM_NOT_OWNED if not one. */
  detachView(buffer: ArrayBuffer): boolean;
  /** Whether a light view starting `offset` bytes into `buffer`'s mapping is still attached. */
  viewAttached(buffer: ArrayBuffer, offset: number): boolean;
  free(buffer: ArrayBuffer): boolean;
  madvise(buffer: ArrayBuffer, offset: number, length: number, advice: number): void;
  markMergeable(view: ArrayBufferView | ArrayBuffer, on: boolean): { offset: number; length: number };
  info(buffer: ArrayBuffer): RegionInfo | null;
  addressOf(view: ArrayBufferView | ArrayBuffer): bigint;
  pageStates(view: ArrayBufferView | ArrayBuffer, offset: number, length: number): PageStates;
  setProcessMerging(on: boolean): void;
  processMerging(): boolean;
  flock(fd: number, op: 0 | 1 | 2): boolean;
  trimHeap(): boolean;
  counters(): { mappings: number; mappedBytes: number; regions: number; views: number };
  setErrorClass(ctor: new (message: string) => Error): void;
}

/** The package root: lib/ and dist/ both sit one level below it. */
export const packageRoot = path.join(__dirname, '..');

function load(): { binding: NativeBinding | null; loadError: string | null } {
  if (
    process.env.NODE_KSM_FORCE_PLATFORM ? process.env.NODE_KSM_FORCE_PLATFORM !== 'linux' : process.platform !== 'linux'
  ) {
    return {
      binding: null,
      loadError: `KSM is a Linux feature; this is ${process.env.NODE_KSM_FORCE_PLATFORM ?? process.platform}`,
    };
  }
  try {
    // NODE_KSM_BINARY selects another build of the same sources (the sanitizer build).
    const explicit = process.env.NODE_KSM_BINARY;
    // The addon's path is known only at run time and loading must be synchronous, so
    // require() it is (node-gyp-build ships no types).
    /* eslint-disable @typescript-eslint/no-require-imports */
    const native = (
      explicit ? require(path.resolve(explicit)) : (require('node-gyp-build') as (root: string) => unknown)(packageRoot)
    ) as NativeBinding & { unsupported?: boolean };
    /* eslint-enable @typescript-eslint/no-require-imports */
    if (native.unsupported)
      return { binding: null, loadError: 'node-ksm was built without KSM support for this platform' };
    native.setErrorClass(KsmError);
    return { binding: native, loadError: null };
  } catch (err) {
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    return {
      binding: null,
      loadError: process.env.NODE_KSM_BINARY
        ? `NODE_KSM_BINARY=${process.env.NODE_KSM_BINARY} could not be loaded (${reason})`
        : `The node-ksm native addon could not be loaded. ${buildAdvice(currentHost(), reason)}`,
    };
  }
}

const loaded = load();
export const binding: NativeBinding | null = loaded.binding;
export const loadError: string | null = loaded.loadError;

/** The binding, or a KsmError ERR_KSM_UNSUPPORTED that says why there is none. */
export function native(): NativeBinding {
  if (binding === null) throw new KsmError(loadError ?? 'node-ksm is not supported here', 'ERR_KSM_UNSUPPORTED');
  return binding;
}
