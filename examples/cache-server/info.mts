// INFO: Redis's sections plus `ksm`. Everything in the default reply is cheap (counters,
// arena.stats(), one read of /proc/self/ksm_stat and of the ~20 small files of
// /sys/kernel/mm/ksm). The per-value merge figures walk page tables and are only
// computed for an explicit `INFO ksm` (or `INFO all`).
import os from 'node:os';
import { bufferStats, pageSize, processStats, systemStats } from 'node-ksm';
import type { CacheServer } from './server.mjs';
import type { Store } from './store.mjs';

type Field = [string, string | number | undefined];

const DEFAULT = ['server', 'clients', 'memory', 'stats', 'keyspace', 'ksm'];
/** Values looked at per `INFO ksm`; beyond this, a random sample stands for all. */
const MERGE_SAMPLE = 16;

const human = (n: number): string => {
  const units = ['B', 'K', 'M', 'G', 'T'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 2)}${units[i]}`;
};

/** Fields of a section: [name, value] pairs, or undefined values to skip. */
const SECTIONS: Record<string, (srv: CacheServer, detailed: boolean) => Field[]> = {
  server(srv) {
    const up = Math.floor((Date.now() - srv.started) / 1000);
    return [
      ['redis_version', '7.0.0'],
      ['redis_mode', 'standalone'],
      ['server_name', 'node-ksm-cache-server'],
      ['os', `${os.type()} ${os.release()} ${os.arch()}`],
      ['arch_bits', 64],
      ['node_version', process.versions.node],
      ['process_id', process.pid],
      ['worker_id', srv.workerId],
      ['tcp_port', srv.config.port],
      ['uptime_in_seconds', up],
      ['uptime_in_days', Math.floor(up / 86400)],
      ['hz', 10],
      ['executable', process.argv[1]],
    ];
  },
  clients(srv) {
    return [
      ['connected_clients', srv.clients.size],
      ['maxclients', srv.config.maxclients],
      ['blocked_clients', 0],
    ];
  },
  memory(srv) {
    const s = srv.store;
    const mem = process.memoryUsage();
    const a = s.arena.stats();
    return [
      ['used_memory', s.used],
      ['used_memory_human', human(s.used)],
      ['used_memory_rss', mem.rss],
      ['used_memory_rss_human', human(mem.rss)],
      ['used_memory_dataset', s.used],
      ['used_memory_heap', mem.heapUsed],
      ['used_memory_external', mem.external],
      ['maxmemory', s.maxmemory],
      ['maxmemory_human', human(s.maxmemory)],
      ['maxmemory_policy', s.policy],
      ['mem_allocator', 'node-ksm-arena'],
      ['arena_chunks', a.chunks],
      ['arena_mapped_bytes', a.mappedBytes],
      ['arena_live_buffers', a.liveBuffers],
      ['arena_live_bytes', a.liveBytes],
      ['arena_free_bytes', a.freeBytes],
      // Released values' buffers kept for reuse (store.mts, SPARE_MAX): live to the Arena.
      ['arena_spare_bytes', s.spareBytes],
      // Values replies still send by reference (Writer, Store.pin), and those of them whose
      // key is gone: their pages go back once the replies are written.
      ['arena_pinned_buffers', s.pins.size],
      ['arena_pinned_gone', s.freeWhenUnpinned.size],
      ['arena_fragmentation', a.fragmentation.toFixed(3)],
      // Full GC + trimHeap() after a burst, once quiet (server.mts, reclaimTick).
      ['idle_reclaims', srv.reclaims],
    ];
  },
  stats(srv) {
    const st = srv.stats;
    const ks = srv.store.stats;
    return [
      ['total_connections_received', st.connections],
      ['total_commands_processed', st.commands],
      ['total_net_input_bytes', st.netIn],
      ['total_net_output_bytes', st.netOut],
      ['rejected_connections', st.rejected],
      ['expired_keys', ks.expiredKeys],
      ['evicted_keys', ks.evictedKeys],
      ['keyspace_hits', ks.hits],
      ['keyspace_misses', ks.misses],
    ];
  },
  keyspace(srv) {
    const s = srv.store;
    return s.size === 0 ? [] : [['db0', `keys=${s.size},expires=${s.expires.size},avg_ttl=0`]];
  },
  ksm(srv, detailed) {
    const s = srv.store;
    const out: Field[] = [
      ['ksm_value_threshold', s.threshold],
      ['ksm_values', s.arenaValues],
      ['ksm_value_bytes', s.arenaBytes],
    ];
    try {
      const p = processStats();
      out.push(
        ['ksm_process_merging_pages', p.mergingPages],
        ['ksm_process_merged_bytes', p.mergedBytes],
        ['ksm_process_profit_bytes', p.profitBytes],
      );
    } catch (err) {
      out.push(['ksm_process_error', (err as { code?: string }).code ?? 'unknown']);
    }
    try {
      const y = systemStats();
      out.push(
        ['ksm_system_run', y.run],
        ['ksm_system_pages_shared', y.pagesShared],
        ['ksm_system_pages_sharing', y.pagesSharing],
        ['ksm_system_saved_bytes', y.savedBytes],
      );
    } catch (err) {
      out.push(['ksm_system_error', (err as { code?: string }).code ?? 'unknown']);
    }
    if (detailed) out.push(...valueMerge(s));
    return out;
  },
};

/**
 * How much of the value store is merged, from a random sample of values scaled up.
 * bufferStats finds a value's mapping in /proc/self/maps and reads its page states from
 * pagemap/kpageflags, which is cheap; but for a value with no merged page it also reads
 * the smaps entry of the whole Arena chunk the value sits in, a page-table walk of 64 MiB:
 * measured here, ~9 ms per unmerged value (4.4 s for 500) and well under 1 ms per merged
 * one. Hence an explicit section and at most MERGE_SAMPLE values. The process-wide
 * figures above are exact and cheap (only the Arena is mergeable in this process).
 */
function valueMerge(s: Store): Field[] {
  const values: Buffer[] = [];
  for (const e of s.order) if (e.value !== null && e.inArena) values.push(e.value as Buffer);
  let sample = values;
  if (values.length > MERGE_SAMPLE) {
    sample = [];
    for (let i = 0; i < MERGE_SAMPLE; i++) sample.push(values[Math.floor(Math.random() * values.length)]!);
  }
  let pages = 0;
  let merged = 0;
  let method = 'none';
  for (const v of sample) {
    const b = bufferStats(v);
    pages += b.pages;
    merged += b.mergedPages;
    method = b.method;
  }
  const scale = sample.length === 0 ? 0 : values.length / sample.length;
  const pageBytes = Math.round(pages * scale) * pageSize;
  const mergedBytes = Math.round(merged * scale) * pageSize;
  return [
    ['ksm_value_page_bytes', pageBytes],
    ['ksm_value_merged_bytes', mergedBytes],
    ['ksm_value_merged_ratio', pages === 0 ? '0.0000' : (merged / pages).toFixed(4)],
    ['ksm_value_sampled', sample.length],
    ['ksm_value_stats_method', method],
  ];
}

/** The INFO reply for the requested section names (lowercase; none = default). */
export function infoText(srv: CacheServer, names: string[]): string {
  let wanted = names.length === 0 || names.includes('default') ? DEFAULT : names;
  const all = names.includes('all') || names.includes('everything');
  if (all) wanted = DEFAULT;
  const detailed = all || names.includes('ksm');
  const parts: string[] = [];
  for (const name of Object.keys(SECTIONS)) {
    if (!wanted.includes(name)) continue;
    const title = name === 'ksm' ? 'KSM' : name[0]!.toUpperCase() + name.slice(1);
    const lines = SECTIONS[name]!(srv, detailed)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}:${v}`);
    parts.push([`# ${title}`, ...lines].join('\r\n'));
  }
  return parts.length === 0 ? '' : `${parts.join('\r\n\r\n')}\r\n`;
}
