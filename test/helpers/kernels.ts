/**
 * Which KSM interfaces a kernel has, from its release string: upstream's versions of each
 * (fs/proc/base.c, fs/proc/task_mmu.c, mm/ksm.c). Used by test/kernel.test.ts on the
 * running kernel and by test/procfs.test.ts on text captured from each kernel.
 */
export interface KernelFeatures {
  /** /proc/<pid>/ksm_merging_pages */
  mergingPagesFile: boolean;
  /** /proc/<pid>/ksm_stat with ksm_rmap_items */
  ksmStat: boolean;
  /** ksm_stat's ksm_merging_pages and ksm_process_profit; sysfs general_profit */
  profit: boolean;
  /** PR_SET_MEMORY_MERGE */
  prctl: boolean;
  /** ksm_zero_pages in sysfs and ksm_stat */
  zeroPages: boolean;
  /** smart_scan, pages_skipped, pages_scanned */
  smartScan: boolean;
  /** the KSM: line of smaps */
  smapsKsm: boolean;
  /** advisor_* */
  advisor: boolean;
  /** ksm_stat's ksm_merge_any: and ksm_mergeable: */
  mergeFlags: boolean;
  /**
   * /proc/kpageflags' KPF_KSM marks KSM pages only. Measured: Debian's 6.12.95 sets it on
   * every anonymous page; 5.10, 6.1 and 6.18 do not (no other line is booted here).
   */
  kpageflagsKsm: boolean;
}

export function featuresOf(release: string): KernelFeatures {
  const [major, minor] = release.split(/[.-]/).map((n) => Number(n));
  const atLeast = (a: number, b: number) => major! > a || (major === a && minor! >= b);
  return {
    mergingPagesFile: atLeast(5, 19),
    ksmStat: atLeast(6, 1),
    profit: atLeast(6, 4),
    prctl: atLeast(6, 4),
    zeroPages: atLeast(6, 6),
    smartScan: atLeast(6, 7),
    smapsKsm: atLeast(6, 7),
    advisor: atLeast(6, 8),
    mergeFlags: atLeast(6, 14),
    kpageflagsKsm: !(major === 6 && minor === 12),
  };
}

/** The files of /sys/kernel/mm/ksm every kernel since 4.x has. */
export const SYSFS_OLD = [
  'full_scans',
  'max_page_sharing',
  'merge_across_nodes',
  'pages_shared',
  'pages_sharing',
  'pages_to_scan',
  'pages_unshared',
  'pages_volatile',
  'run',
  'sleep_millisecs',
  'stable_node_chains',
  'stable_node_chains_prune_millisecs',
  'stable_node_dups',
  'use_zero_pages',
];

/** The newer files, each with whether a kernel with these features has it. */
export function sysfsNew(f: KernelFeatures): Array<[string, boolean]> {
  return [
    ['general_profit', f.profit],
    ['ksm_zero_pages', f.zeroPages],
    ['smart_scan', f.smartScan],
    ['pages_skipped', f.smartScan],
    ['pages_scanned', f.smartScan],
    ['advisor_mode', f.advisor],
    ['advisor_max_cpu', f.advisor],
    ['advisor_target_scan_time', f.advisor],
    ['advisor_min_pages_to_scan', f.advisor],
    ['advisor_max_pages_to_scan', f.advisor],
  ];
}
