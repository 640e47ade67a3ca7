/**
 * The ksmd kernel thread: its pid and the CPU time it has used, from /proc/<pid>/stat.
 * What a fast scanner costs is read here, and only here, for the benchmark, the
 * Prometheus collector and the CLI alike.
 */
import fs from 'node:fs';
import { binding } from './binding';
import { parseProcStat } from './procfs';

export interface ClockTicks {
  /** Ticks per second of the CPU times in /proc/<pid>/stat (USER_HZ). */
  perSecond: number;
  /** Where the figure came from. */
  source: 'sysconf' | 'USER_HZ';
}

/**
 * USER_HZ from `sysconf(_SC_CLK_TCK)` through the addon. Without the addon, 100: the
 * kernel fixes USER_HZ at 100 for user space on every architecture Node runs on (it is
 * not CONFIG_HZ), and the result says which it was.
 */
export function clockTicks(): ClockTicks {
  const n = binding?.clockTicks ?? 0;
  return n > 0 ? { perSecond: n, source: 'sysconf' } : { perSecond: 100, source: 'USER_HZ' };
}

let cachedPid: number | undefined;

function isKsmd(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'ksmd';
  } catch {
    return false;
  }
}

/** ksmd's pid, or undefined when the kernel has no ksmd (no CONFIG_KSM) or /proc hides it. */
export function ksmdPid(): number | undefined {
  if (cachedPid !== undefined && isKsmd(cachedPid)) return cachedPid;
  cachedPid = undefined;
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return undefined;
  }
  // Kernel threads start early, so the lowest pids are tried first.
  for (const name of entries.filter((e) => /^\d+$/.test(e)).sort((a, b) => Number(a) - Number(b))) {
    if (isKsmd(Number(name))) return (cachedPid = Number(name));
  }
  return undefined;
}

/** Seconds of CPU ksmd has used since boot (user + system), or undefined when unknown. */
export function ksmdCpuSeconds(): number | undefined {
  const pid = ksmdPid();
  if (pid === undefined) return undefined;
  try {
    const stat = parseProcStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    return (stat.utime + stat.stime) / clockTicks().perSecond;
  } catch {
    return undefined;
  }
}
