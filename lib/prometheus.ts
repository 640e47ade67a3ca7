/**
 * `node-ksm/prometheus`: KSM's figures as prom-client metrics, read from the kernel at
 * scrape time. prom-client is imported here and nowhere else, so it stays an optional
 * peer dependency for everyone who does not import this module.
 *
 * Names follow Prometheus conventions: base units in the name (`_bytes`, `_seconds`,
 * `_ratio`), `_total` for counters, sysfs values under their kernel names.
 *
 * @module node-ksm/prometheus
 */
import fs from 'node:fs';
import { Counter, Gauge, register as defaultRegistry, type Registry } from 'prom-client';
import { ksmdCpuSeconds, ksmdPid } from './ksmd';
import { processGroups, type ProcessGroup, type ProcessGroupsReport } from './process-groups';
import { snakeCase } from './procfs';
import { KSM_SYSFS, processStats, systemStats, type ProcessStats, type SystemStats } from './stats';

interface Snapshot {
  system?: SystemStats;
  process?: ProcessStats;
  ksmdCpuSeconds?: number;
  groups?: ProcessGroupsReport;
}

type Read = (s: Snapshot) => number | undefined;

interface Def {
  name: string;
  help: string;
  counter?: boolean;
  read: Read;
  /** Whether this kernel has the figure; decided once, when the metrics are registered. */
  exists: (first: Snapshot) => boolean;
}

/** Figures computed from pages_sharing rather than read from a file of their own. */
const DERIVED: Partial<Record<keyof SystemStats, string>> = {
  savedBytes: 'pages_sharing',
  sharingRatio: 'pages_shared',
  pageSize: 'pages_sharing',
};

// Existence is checked on the files, not on one read of them, so that a read failing by
// chance at registration cannot leave a metric out for the life of the process.
const sys = (key: keyof SystemStats, scale = 1): Pick<Def, 'read' | 'exists'> => ({
  read: (s) => {
    const v = s.system?.[key];
    return typeof v === 'number' ? v * scale : undefined;
  },
  exists: () => fs.existsSync(`${KSM_SYSFS}/${DERIVED[key] ?? snakeCase(key)}`),
});
const proc = (key: keyof ProcessStats): Pick<Def, 'read' | 'exists'> => {
  const read: Read = (s) => {
    const v = s.process?.[key];
    return typeof v === 'boolean' ? Number(v) : typeof v === 'number' ? v : undefined;
  };
  return { read, exists: (first) => read(first) !== undefined };
};

const SYSTEM: Def[] = [
  { name: 'ksm_pages_shared', help: 'KSM pages in use (pages_shared)', ...sys('pagesShared') },
  {
    name: 'ksm_pages_sharing',
    help: 'Further mappings of KSM pages: pages saved (pages_sharing)',
    ...sys('pagesSharing'),
  },
  { name: 'ksm_pages_unshared', help: 'Unique pages ksmd keeps checking (pages_unshared)', ...sys('pagesUnshared') },
  { name: 'ksm_pages_volatile', help: 'Pages changing too fast to merge (pages_volatile)', ...sys('pagesVolatile') },
  { name: 'ksm_zero_pages', help: 'Pages merged with the zero page (ksm_zero_pages)', ...sys('ksmZeroPages') },
  { name: 'ksm_stable_node_chains', help: 'Stable node chains (stable_node_chains)', ...sys('stableNodeChains') },
  { name: 'ksm_stable_node_dups', help: 'Stable node duplicates (stable_node_dups)', ...sys('stableNodeDups') },
  {
    name: 'ksm_saved_bytes',
    help: 'Memory merging saves: (pages_sharing + ksm_zero_pages) x page size',
    ...sys('savedBytes'),
  },
  {
    name: 'ksm_general_profit_bytes',
    help: 'Bytes saved minus ksmd bookkeeping (general_profit; may be negative)',
    ...sys('generalProfit'),
  },
  { name: 'ksm_sharing_ratio', help: 'pages_sharing / pages_shared: mappings per KSM page', ...sys('sharingRatio') },
  { name: 'ksm_page_size_bytes', help: 'The system page size', ...sys('pageSize') },
  {
    name: 'ksm_full_scans_total',
    help: 'Full passes ksmd has completed (full_scans)',
    counter: true,
    ...sys('fullScans'),
  },
  {
    name: 'ksm_pages_scanned_total',
    help: 'Pages ksmd has scanned (pages_scanned)',
    counter: true,
    ...sys('pagesScanned'),
  },
  {
    name: 'ksm_pages_skipped_total',
    help: 'Pages smart scan skipped (pages_skipped)',
    counter: true,
    ...sys('pagesSkipped'),
  },
  {
    name: 'ksmd_cpu_seconds_total',
    help: 'CPU time the ksmd thread has used (user + system)',
    counter: true,
    read: (s) => s.ksmdCpuSeconds,
    exists: () => ksmdPid() !== undefined,
  },
  // Settings.
  { name: 'ksm_run', help: 'run: 0 stopped, 1 running, 2 stopped and unmerged', ...sys('run') },
  { name: 'ksm_pages_to_scan', help: 'pages_to_scan: pages per batch', ...sys('pagesToScan') },
  { name: 'ksm_sleep_seconds', help: 'sleep_millisecs between batches, in seconds', ...sys('sleepMillisecs', 1e-3) },
  { name: 'ksm_merge_across_nodes', help: 'merge_across_nodes setting', ...sys('mergeAcrossNodes') },
  { name: 'ksm_use_zero_pages', help: 'use_zero_pages setting', ...sys('useZeroPages') },
  { name: 'ksm_max_page_sharing', help: 'max_page_sharing setting', ...sys('maxPageSharing') },
  {
    name: 'ksm_stable_node_chains_prune_seconds',
    help: 'stable_node_chains_prune_millisecs, in seconds',
    ...sys('stableNodeChainsPruneMillisecs', 1e-3),
  },
  { name: 'ksm_smart_scan', help: 'smart_scan setting', ...sys('smartScan') },
  { name: 'ksm_advisor_max_cpu_ratio', help: 'advisor_max_cpu as a share of one CPU', ...sys('advisorMaxCpu', 1e-2) },
  { name: 'ksm_advisor_target_scan_time_seconds', help: 'advisor_target_scan_time', ...sys('advisorTargetScanTime') },
  { name: 'ksm_advisor_min_pages_to_scan', help: 'advisor_min_pages_to_scan setting', ...sys('advisorMinPagesToScan') },
  { name: 'ksm_advisor_max_pages_to_scan', help: 'advisor_max_pages_to_scan setting', ...sys('advisorMaxPagesToScan') },
];

const PROCESS: Def[] = [
  {
    name: 'ksm_process_merging_pages',
    help: 'Pages of this process that share a KSM page (ksm_merging_pages)',
    ...proc('mergingPages'),
  },
  { name: 'ksm_process_merged_bytes', help: 'ksm_merging_pages x page size for this process', ...proc('mergedBytes') },
  {
    name: 'ksm_process_profit_bytes',
    help: 'This process: bytes saved minus bookkeeping (ksm_process_profit)',
    ...proc('profitBytes'),
  },
  { name: 'ksm_process_rmap_items', help: 'Pages of this process ksmd tracks (ksm_rmap_items)', ...proc('rmapItems') },
  { name: 'ksm_process_zero_pages', help: 'Pages of this process merged with the zero page', ...proc('zeroPages') },
  { name: 'ksm_process_merge_any', help: '1 when PR_SET_MEMORY_MERGE is on for this process', ...proc('mergeAny') },
];

/** Per process group (command name and cgroup): what `node-ksm top` shows, summed so pids do not become series. */
interface GroupDef {
  name: string;
  help: string;
  read: (g: ProcessGroup) => number | undefined;
}

const GROUPS: GroupDef[] = [
  {
    name: 'ksm_group_processes',
    help: 'Processes of this command and cgroup with mergeable memory or KSM pages',
    read: (g) => g.processes,
  },
  {
    name: 'ksm_group_merging_pages',
    help: 'Pages of these processes that share a KSM page (sum of ksm_merging_pages)',
    read: (g) => g.mergingPages,
  },
  {
    name: 'ksm_group_profit_bytes',
    help: 'What KSM saves these processes: bytes merged minus rmap overhead (sum of ksm_process_profit; may be negative)',
    read: (g) => g.profitBytes,
  },
  {
    name: 'ksm_group_zero_pages',
    help: 'Pages of these processes merged with the zero page (sum of ksm_zero_pages)',
    read: (g) => g.zeroPages,
  },
];

const ADVISOR_MODES = ['none', 'scan-time'];

export interface KsmMetricsOptions {
  /** Also export the figures of this process (default true; the exporter turns it off). */
  process?: boolean;
  /** Whose figures the `ksm_process_*` metrics report (default: this process). */
  pid?: number;
  /**
   * Also export `ksm_group_*`: every process's figures summed by command name and cgroup
   * (default false; the exporter turns it on). Each scrape then reads the ksm_stat of
   * every process, which needs root or CAP_DAC_READ_SEARCH to see other users'. `limit`
   * caps the groups (default 100); the rest are summed into comm="(other)".
   */
  groups?: boolean | { limit?: number };
}

export interface KsmMetrics {
  /** The names of the metrics registered. */
  names: string[];
  /** Removes them from the registry again. */
  unregister(): void;
}

const registered = new WeakMap<Registry, KsmMetrics>();

type SnapshotReader = ((metric?: string) => Snapshot) & {
  /** Drops the current snapshot, so the next call reads the kernel again. */
  forget(): void;
};

/**
 * One read of the kernel per scrape, so that the figures of one scrape agree with each
 * other. prom-client collects every metric once per scrape, so a metric asking a second
 * time means a new scrape has begun; the snapshot is also dropped a macrotask later, so
 * figures are never older than the tick that read them.
 */
function snapshotReader(options: KsmMetricsOptions, pid: number): SnapshotReader {
  let current: Snapshot | undefined;
  const served = new Set<string>();
  const groupLimit = typeof options.groups === 'object' ? (options.groups.limit ?? 100) : 100;
  const read = (): Snapshot => {
    const s: Snapshot = {};
    try {
      s.system = systemStats();
    } catch {
      // No KSM here: the metrics stay empty rather than failing the whole scrape.
    }
    if (options.process !== false) {
      try {
        s.process = processStats(pid);
      } catch {
        // Kernels before 5.19 have no per-process figures.
      }
    }
    if (options.groups) s.groups = processGroups(groupLimit);
    s.ksmdCpuSeconds = ksmdCpuSeconds();
    return s;
  };
  const reader = (metric?: string): Snapshot => {
    if (current && (metric === undefined || !served.has(metric))) {
      if (metric !== undefined) served.add(metric);
      return current;
    }
    if (current === undefined) {
      setImmediate(() => {
        current = undefined;
        served.clear();
      });
    }
    current = read();
    served.clear();
    if (metric !== undefined) served.add(metric);
    return current;
  };
  return Object.assign(reader, {
    forget() {
      current = undefined;
      served.clear();
    },
  });
}

/** One unlabelled figure as a gauge, or as a counter copied from the kernel's running total. */
function registerFigure(registry: Registry, def: Def, snapshot: SnapshotReader): void {
  if (def.counter) {
    new Counter({
      name: def.name,
      help: def.help,
      registers: [registry],
      collect() {
        const v = def.read(snapshot(def.name));
        // A counter has no set(): the kernel keeps the running total, so it is copied.
        if (v === undefined || v < 0) return;
        this.reset();
        this.inc(v);
      },
    });
  } else {
    new Gauge({
      name: def.name,
      help: def.help,
      registers: [registry],
      collect() {
        const v = def.read(snapshot(def.name));
        if (v !== undefined) this.set(v);
      },
    });
  }
}

/** `ksm_advisor_mode{mode}`: 1 for the mode in force, 0 for the others. */
function registerAdvisorMode(registry: Registry, snapshot: SnapshotReader): void {
  new Gauge({
    name: 'ksm_advisor_mode',
    help: 'advisor_mode: 1 for the mode in force',
    labelNames: ['mode'],
    registers: [registry],
    collect() {
      this.reset();
      const mode = snapshot('ksm_advisor_mode').system?.advisorMode;
      if (mode === undefined) return;
      for (const m of new Set([...ADVISOR_MODES, mode])) this.set({ mode: m }, m === mode ? 1 : 0);
    },
  });
}

/**
 * The `ksm_group_*` gauges, labelled by comm and cgroup (those this kernel has: profit
 * and zero pages came in later kernels), and `ksm_group_unreadable_processes`.
 */
function registerGroups(registry: Registry, snapshot: SnapshotReader): string[] {
  let own: ProcessStats | undefined;
  try {
    own = processStats(process.pid);
  } catch {
    return [];
  }
  const defs = GROUPS.filter(
    (d) =>
      (d.name !== 'ksm_group_profit_bytes' || own.profitBytes !== undefined) &&
      (d.name !== 'ksm_group_zero_pages' || own.zeroPages !== undefined),
  );
  for (const def of defs) {
    new Gauge({
      name: def.name,
      help: def.help,
      labelNames: ['comm', 'cgroup'],
      registers: [registry],
      collect() {
        this.reset();
        for (const g of snapshot(def.name).groups?.groups ?? []) {
          const v = def.read(g);
          if (v !== undefined) this.set({ comm: g.comm, cgroup: g.cgroup }, v);
        }
      },
    });
  }
  new Gauge({
    name: 'ksm_group_unreadable_processes',
    help: 'Processes whose KSM figures the exporter may not read (it needs root or CAP_DAC_READ_SEARCH)',
    registers: [registry],
    collect() {
      const groups = snapshot('ksm_group_unreadable_processes').groups;
      if (groups !== undefined) this.set(groups.unreadable);
    },
  });
  return [...defs.map((d) => d.name), 'ksm_group_unreadable_processes'];
}

/**
 * Registers KSM gauges and counters on `registry` (default: prom-client's global one).
 * Values are read when the registry is scraped, once per scrape for all metrics; a figure
 * the kernel lacks is not registered rather than reported as 0.
 * Calling it again for the same registry returns the metrics already registered.
 */
export function collectKsmMetrics(registry: Registry = defaultRegistry, options: KsmMetricsOptions = {}): KsmMetrics {
  const existing = registered.get(registry);
  if (existing) return existing;
  const snapshot = snapshotReader(options, options.pid ?? process.pid);
  // prom-client reports an unlabelled metric as 0 until it is set, so a figure this
  // kernel does not have (checked once: sysfs files do not come and go) is not registered.
  const first = snapshot();
  // A scrape in the same tick as this call (say, right after an await that did not yield)
  // must read the kernel afresh, not get figures from before it was called.
  snapshot.forget();
  const defs = [...SYSTEM, ...(options.process === false ? [] : PROCESS)].filter((def) => def.exists(first));
  for (const def of defs) registerFigure(registry, def, snapshot);
  const names = defs.map((d) => d.name);
  if (fs.existsSync(`${KSM_SYSFS}/advisor_mode`)) {
    registerAdvisorMode(registry, snapshot);
    names.push('ksm_advisor_mode');
  }
  if (options.groups) names.push(...registerGroups(registry, snapshot));
  const result: KsmMetrics = {
    names,
    unregister() {
      for (const name of result.names) registry.removeSingleMetric(name);
      registered.delete(registry);
    },
  };
  registered.set(registry, result);
  return result;
}
