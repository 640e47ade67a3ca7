/**
 * The ksmd kernel thread's CPU time, from /proc/<ksmd pid>/stat: what a fast scanner costs.
 * Shared by `node-ksm watch` and the Prometheus collector.
 */
import fs from 'node:fs';
import { parseProcStat } from '../procfs';

/**
 * /proc reports CPU time in USER_HZ ticks, which the kernel fixes at 100 for user space
 * on every architecture Node runs on (it is not CONFIG_HZ); Node has no sysconf to ask.
 */
export const CLOCK_TICKS_PER_SECOND = 100;

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
    return (stat.utime + stat.stime) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}
