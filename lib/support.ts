/** What this kernel and this process can do with KSM, each "no" with its reason. */
import fs from 'node:fs';
import { binding, loadError, type NativeBinding } from './binding';
import { parseInteger, smapsHasKsm } from './procfs';
import { KSM_SYSFS, readIfExists } from './stats';

/**
 * What this kernel and this process can do with KSM ({@link support}), each missing
 * thing with its reason in `reasons`, in words a person can act on.
 */
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
    /**
     * A per-process merged-pages counter, `/proc/<pid>/ksm_merging_pages` (Linux 5.19+).
     * Without it `processStats` counts merged pages page by page (see `ProcessStatsMethod`).
     */
    mergingPages: boolean;
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

function readQuietly(file: string): string {
  try {
    return readIfExists(file) ?? '';
  } catch {
    return '';
  }
}

/** What this kernel and this process can do, each "no" with its reason. Never throws. */
export function support(): Support {
  const reasons: string[] = [];
  const features = {
    madvise: false,
    prctl: false,
    ksmStat: false,
    mergingPages: false,
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
  if (!compiledIn(binding, sysfs, reasons)) return result;
  result.available = true;
  features.madvise = true;
  if (sysfs) {
    seeScanner(result, reasons);
    seeScannerFeatures(features, reasons);
  } else {
    reasons.push(
      `${KSM_SYSFS} is not visible (/sys not mounted, as in some containers): ksmd is configured and watched on the host`,
    );
  }
  seeProcessFeatures(binding, features, reasons);
  return result;
}

/** Whether the kernel has CONFIG_KSM; when not, says so in `reasons`. */
function compiledIn(b: NativeBinding, sysfs: boolean, reasons: string[]): boolean {
  // Each of these exists only with CONFIG_KSM; the madvise probe settles the rest.
  if (sysfs || fs.existsSync('/proc/self/ksm_merging_pages') || fs.existsSync('/proc/self/ksm_stat')) return true;
  try {
    b.free(b.alloc(b.pageSize, true));
    return true;
  } catch (err) {
    reasons.push(
      (err as { code?: string }).code === 'EINVAL'
        ? 'The kernel was built without CONFIG_KSM (madvise(MADV_MERGEABLE) fails with EINVAL): use a kernel with CONFIG_KSM=y'
        : `madvise(MADV_MERGEABLE) failed: ${(err as Error).message}`,
    );
    return false;
  }
}

/** `running` and `canConfigure` from /sys/kernel/mm/ksm/run, each "no" with its reason. */
function seeScanner(result: Support, reasons: string[]): void {
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
}

/** The scanner's newer files: the advisor, smart_scan, ksm_zero_pages. */
function seeScannerFeatures(features: Support['features'], reasons: string[]): void {
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

/** What this process can see and ask: prctl, ksm_stat, smaps' KSM line. */
function seeProcessFeatures(b: NativeBinding, features: Support['features'], reasons: string[]): void {
  try {
    b.processMerging();
    features.prctl = true;
  } catch (err) {
    reasons.push(
      (err as { code?: string }).code === 'EINVAL'
        ? 'PR_SET_MEMORY_MERGE is not supported: process-wide merging needs Linux 6.4+ (madvise per buffer still works)'
        : `prctl(PR_GET_MEMORY_MERGE) failed (${(err as Error).message}): a seccomp filter may block it`,
    );
  }
  features.ksmStat = fs.existsSync('/proc/self/ksm_stat');
  features.mergingPages = fs.existsSync('/proc/self/ksm_merging_pages');
  if (!features.mergingPages) {
    reasons.push(
      'No per-process KSM counters (/proc/<pid>/ksm_merging_pages is Linux 5.19+, ksm_stat 6.1+): processStats counts ' +
        'merged pages page by page in the mergeable memory (pagemap + kpageflags: exact as root, an estimate otherwise; ' +
        'milliseconds instead of microseconds), leaves rmapItems, profitBytes and zeroPages undefined, and ' +
        "waitForMerge polls the machine's pages_shared + pages_sharing between exact checks",
    );
  } else if (!features.ksmStat) {
    reasons.push('/proc/<pid>/ksm_stat is missing (Linux 6.1+): process figures come from ksm_merging_pages alone');
  } else if (!/^ksm_process_profit/m.test(readQuietly('/proc/self/ksm_stat'))) {
    reasons.push(
      'ksm_stat has only ksm_rmap_items (Linux 6.1-6.3): merged pages come from ksm_merging_pages, and profitBytes is undefined (6.4+)',
    );
  }
  features.smapsKsm = smapsHasKsm(firstSmapsEntry());
  if (!features.smapsKsm) {
    reasons.push(
      'smaps has no KSM: line (Linux 6.7+): buffer figures come from kpageflags (root) or a pagemap estimate',
    );
  }
}
