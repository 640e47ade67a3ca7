/**
 * node-ksm: Kernel Samepage Merging for Node.js.
 * Mergeable memory, the numbers that show what merging saved, and safe control of ksmd.
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
  type AllocOptions,
  type BinaryLike,
} from './memory';
export {
  processStats,
  systemStats,
  bufferStats,
  support,
  type ProcessStats,
  type SystemStats,
  type BufferStats,
  type BufferStatsMethod,
  type Support,
} from './stats';
export type { KsmSysfs, KsmStatFields } from './procfs';
