/**
 * lib/ksmd.ts: the one place that finds ksmd and reads its CPU time. Checked against
 * the kernel's own files read independently here, and against ksmd doing real work.
 */
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { clockTicks, ksmdCpuSeconds, ksmdPid } from '../lib/ksmd';
import { alloc, free, pageSize } from '../lib/memory';
import { fillPages, pollUntil, requireKsm, withFastKsm } from './helpers/ksm';

/** utime + stime of a pid, fields 14 and 15 of /proc/<pid>/stat (after the parenthesised comm). */
function cpuTicks(pid: number): number {
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

describe('ksmd', () => {
  it('takes the clock-tick rate from sysconf: USER_HZ, 100 on Linux', () => {
    // USER_HZ is part of the kernel's ABI, fixed at 100 on every architecture Node runs on.
    expect(clockTicks()).toEqual({ perSecond: 100, source: 'sysconf' });
  });

  it('finds the kernel thread and reads the CPU time it has used', (ctx) => {
    requireKsm(ctx);
    const pid = ksmdPid();
    expect(pid).toBeTypeOf('number');
    expect(fs.readFileSync(`/proc/${pid}/comm`, 'utf8')).toBe('ksmd\n');
    const before = cpuTicks(pid!);
    const seconds = ksmdCpuSeconds()!;
    const after = cpuTicks(pid!);
    expect(seconds * 100).toBeGreaterThanOrEqual(before - 1e-9);
    expect(seconds * 100).toBeLessThanOrEqual(after + 1e-9);
  });

  it('sees ksmd spend CPU while it scans duplicates fast', async (ctx) => {
    requireKsm(ctx);
    const a = alloc(64 << 20);
    const b = alloc(64 << 20);
    try {
      fillPages(a, 7, pageSize);
      fillPages(b, 7, pageSize);
      const start = ksmdCpuSeconds()!;
      // A fast scanner over 32,768 candidate pages runs for tens of ms at least: waited
      // for as it happens (the bound is only for liveness), not slept on.
      const spent = await withFastKsm(() => pollUntil(() => ksmdCpuSeconds()! - start > 0.01, 60_000));
      expect(spent, `ksmd CPU ${ksmdCpuSeconds()! - start} s`).toBe(true);
    } finally {
      free(a);
      free(b);
    }
  });
});
