/**
 * What KSM saves each group of processes on this host: every readable
 * /proc/<pid>/ksm_stat, summed by command name and cgroup. A group, not a pid, is what a
 * fleet's metrics want: pids come and go with every restart, while "the node workers of
 * the api service" or "the VM in machine-qemu-7.scope" stay, and the number of groups
 * stays small however many processes there are.
 */
import fs from 'node:fs';
import { processStats, type ProcessStats } from './stats';

export interface ProcessGroup {
  /** The command name (`/proc/<pid>/comm`, at most 15 bytes). */
  comm: string;
  /** The cgroup (v2 path, or v1's `name=systemd` hierarchy), e.g. `/system.slice/api.service`; '' when unknown. */
  cgroup: string;
  /** Processes in the group that KSM has anything to do with. */
  processes: number;
  /** Sum of `ksm_merging_pages`. */
  mergingPages: number;
  /** Sum of `ksm_process_profit` (bytes saved minus rmap overhead); undefined when the kernel lacks it. */
  profitBytes?: number;
  /** Sum of `ksm_zero_pages`; undefined when the kernel lacks it. */
  zeroPages?: number;
}

export interface ProcessGroupsReport {
  groups: ProcessGroup[];
  /** Processes whose figures this user may not read (without CAP_DAC_READ_SEARCH or root). */
  unreadable: number;
}

/**
 * The cgroup a process is in, from the text of /proc/<pid>/cgroup: the unified (v2)
 * hierarchy's path, else v1's `name=systemd` one, else the first listed.
 */
export function parseCgroup(text: string): string {
  const lines = text.split('\n').filter((l) => l.length > 0);
  const path = (l: string) => l.slice(l.indexOf(':', l.indexOf(':') + 1) + 1);
  const unified = lines.find((l) => l.startsWith('0::'));
  if (unified !== undefined) return path(unified);
  const systemd = lines.find((l) => l.split(':')[1] === 'name=systemd');
  return systemd !== undefined ? path(systemd) : lines[0] !== undefined ? path(lines[0]) : '';
}

/** Whether KSM has anything to do with a process: mergeable memory, tracked or merged pages. */
export function usesKsm(s: ProcessStats): boolean {
  return (
    s.mergeable === true ||
    s.mergeAny === true ||
    (s.rmapItems ?? 0) > 0 ||
    (s.mergingPages ?? 0) > 0 ||
    (s.zeroPages ?? 0) > 0
  );
}

function readOr(file: string, fallback: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

/** Adds a process's figures (or another group's) to a group. */
function addTo(
  group: ProcessGroup,
  s: Pick<ProcessGroup, 'mergingPages' | 'profitBytes' | 'zeroPages'>,
  processes = 1,
): void {
  group.processes += processes;
  group.mergingPages += s.mergingPages;
  if (s.profitBytes !== undefined) group.profitBytes = (group.profitBytes ?? 0) + s.profitBytes;
  if (s.zeroPages !== undefined) group.zeroPages = (group.zeroPages ?? 0) + s.zeroPages;
}

/**
 * Reads every process's KSM figures and sums them by (comm, cgroup), largest saving
 * first. At most `limit` groups are returned; the rest are summed into one group with
 * comm "(other)", so the number of series an exporter makes of this stays bounded.
 */
export function processGroups(limit = 100): ProcessGroupsReport {
  const byKey = new Map<string, ProcessGroup>();
  let unreadable = 0;
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let s: ProcessStats;
    try {
      s = processStats(Number(name));
    } catch (err) {
      // Processes come and go while /proc is read; another user's is EACCES.
      const code = (err as { code?: string }).code;
      if (code === 'EACCES' || code === 'EPERM') unreadable++;
      continue;
    }
    if (!usesKsm(s)) continue;
    const comm = readOr(`/proc/${name}/comm`, '?\n').replace(/\n$/, '');
    const cgroup = parseCgroup(readOr(`/proc/${name}/cgroup`, ''));
    const key = `${comm}\0${cgroup}`;
    let group = byKey.get(key);
    if (group === undefined) byKey.set(key, (group = { comm, cgroup, processes: 0, mergingPages: 0 }));
    addTo(group, { mergingPages: s.mergingPages ?? 0, profitBytes: s.profitBytes, zeroPages: s.zeroPages });
  }
  const score = (g: ProcessGroup) => g.profitBytes ?? g.mergingPages;
  const groups = [...byKey.values()].sort((a, b) => score(b) - score(a) || a.comm.localeCompare(b.comm));
  if (groups.length <= limit) return { groups, unreadable };
  const other: ProcessGroup = { comm: '(other)', cgroup: '', processes: 0, mergingPages: 0 };
  for (const g of groups.slice(limit - 1)) addTo(other, g, g.processes);
  return { groups: [...groups.slice(0, limit - 1), other], unreadable };
}
