/** `node-ksm top`: which processes KSM saves memory for, from every readable ksm_stat. */
import fs from 'node:fs';
import { pageSize } from '../memory';
import { processStats, type ProcessStats } from '../stats';
import { formatBytes, formatCount, table } from './format';

export interface TopEntry extends ProcessStats {
  command: string;
}

export interface TopReport {
  pageSize: number;
  processes: TopEntry[];
  /** Processes with KSM figures that were not shown because of --limit. */
  more: number;
  /** Processes whose ksm_stat this user may not read (run as root to see them). */
  unreadable: number;
}

function commandOf(pid: number): string {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    if (argv.length > 0) return argv.join(' ');
  } catch {
    // The process may be gone by now; its comm is the fallback.
  }
  try {
    return `[${fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}]`;
  } catch {
    return '?';
  }
}

/** Savings first: profit when the kernel reports it, else merged bytes. */
function score(p: ProcessStats): number {
  return p.profitBytes ?? p.mergedBytes ?? 0;
}

export function top(limit: number): TopReport {
  const found: TopEntry[] = [];
  let unreadable = 0;
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    let stats: ProcessStats;
    try {
      stats = processStats(pid);
    } catch (err) {
      // Processes come and go while we read; another user's is EACCES without root.
      const code = (err as { code?: string }).code;
      if (code === 'EACCES' || code === 'EPERM') unreadable++;
      continue;
    }
    // Only processes KSM has anything to do with.
    if (!(
      stats.mergeable ||
      stats.mergeAny ||
      (stats.rmapItems ?? 0) > 0 ||
      (stats.mergingPages ?? 0) > 0 ||
      (stats.zeroPages ?? 0) > 0
    ))
      continue;
    found.push({ ...stats, command: commandOf(pid) });
  }
  found.sort((a, b) => score(b) - score(a) || (b.mergingPages ?? 0) - (a.mergingPages ?? 0) || a.pid - b.pid);
  return { pageSize, processes: found.slice(0, limit), more: Math.max(0, found.length - limit), unreadable };
}

export function renderTop(r: TopReport, width: number): string {
  const n = (v: number | undefined) => (v === undefined ? '-' : formatCount(v));
  const b = (v: number | undefined) => (v === undefined ? '-' : formatBytes(v));
  const rows = [
    ['PID', 'MERGING', 'MERGED', 'ZERO', 'PROFIT', 'ANY', 'COMMAND'],
    ...r.processes.map((p) => [
      String(p.pid),
      n(p.mergingPages),
      b(p.mergedBytes),
      n(p.zeroPages),
      b(p.profitBytes),
      p.mergeAny === undefined ? '-' : p.mergeAny ? 'yes' : 'no',
      p.command,
    ]),
  ];
  const lines = table(rows).map((l) => (l.length > width ? `${l.slice(0, width - 1)}…` : l));
  if (r.processes.length === 0) lines.push('No process has mergeable memory.');
  if (r.more > 0) lines.push(`... and ${r.more} more (--limit)`);
  if (r.unreadable > 0) lines.push(`${r.unreadable} processes of other users are hidden: run as root to see them.`);
  return lines.join('\n');
}
