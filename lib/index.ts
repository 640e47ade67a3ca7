/**
 * node-ksm: Kernel Samepage Merging for Node.js.
 * Mergeable memory, the numbers that show what merging saved, and safe control of ksmd.
 *
 * @module node-ksm
 */
export { KsmError, type KsmErrorCode } from './errors';
export {
  pageSize,
  maxAllocSize,
  alloc,
  from,
  free,
  isKsmBuffer,
  setMergeable,
  markMergeable,
  setProcessMerging,
  processMerging,
  trimHeap,
  type AllocOptions,
  type BinaryLike,
} from './memory';
export {
  processStats,
  systemStats,
  type ProcessStats,
  type ProcessStatsMethod,
  type ProcessStatsOptions,
  type SystemStats,
} from './stats';
export { bufferStats, type BufferStats, type BufferStatsMethod, type BufferStatsOptions } from './buffer-stats';
export { support, type Support } from './support';
export type { KsmSysfs, KsmStatFields } from './procfs';
export { readSettings, configure, type KsmSettings, type KsmSettingName } from './control';
export {
  boost,
  restore,
  boostState,
  BOOST_POLICY,
  type BoostOptions,
  type BoostHandle,
  type BoostState,
  type BoostHolder,
} from './boost';
export { waitForMerge, type WaitOptions, type WaitResult, type WaitProgress } from './wait';
export { Arena, type ArenaOptions, type ArenaStats } from './arena';
export {
  startAutotune,
  KERNEL_DEFAULT_SCAN,
  AUTOTUNE_BOOST,
  type AutotuneOptions,
  type AutotuneHandle,
  type AutotuneEvent,
  type AutotuneState,
} from './autotune';
