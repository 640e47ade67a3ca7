/**
 * `node-ksm top` and `status` on a VM host: the processes whose memory merges are QEMU's,
 * not Node's. Two real qemu-system-x86_64 processes (paused, no guest booted) each load
 * the same 8 MiB file into their guest RAM with QEMU's loader device; QEMU marks guest RAM
 * MADV_MERGEABLE itself, so ksmd merges the two copies, and top must list both with the
 * kernel's figures of each, and status must count them.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pageSize } from '../lib/memory';
import { processStats } from '../lib/stats';
import { DIST, ensureDist } from './helpers/dist';
import { skipTest } from './helpers/skips';
import { pollUntil, requireKsm, withFastKsm } from './helpers/ksm';

const MiB = 1024 * 1024;
const main = path.join(DIST, 'cli', 'main.js');
const hasQemu = spawnSync('sh', ['-c', 'command -v qemu-system-x86_64']).status === 0;

describe('qemu guests in top and status', { timeout: 900_000 }, () => {
  let dir: string;
  const qemus: ChildProcess[] = [];

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksm-qemu-'));
    // Distinct pages, the same in both guests.
    const blob = Buffer.alloc(8 * MiB);
    for (let i = 0; i < blob.length; i += 4) blob.writeUInt32LE(Math.imul(i + 1, 2654435761) >>> 0, i);
    fs.writeFileSync(path.join(dir, 'blob.bin'), blob);
  });

  afterAll(async () => {
    await Promise.all(
      qemus.map(async (q) => {
        if (q.exitCode !== null || q.signalCode !== null) return;
        const gone = new Promise((r) => q.once('exit', r));
        q.kill('SIGKILL');
        await gone;
      }),
    );
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('lists each qemu with its merged pages, and status counts them', async (ctx) => {
    requireKsm(ctx);
    if (!hasQemu) {
      skipTest(ctx, 'qemu-system-x86_64 is not installed (bash .ci/deps.sh installs it)');
    }
    expect(ensureDist()).toBe(true);
    for (let i = 0; i < 2; i++) {
      const q = spawn(
        'qemu-system-x86_64',
        [
          ...['-accel', 'tcg', '-m', '64', '-nodefaults', '-display', 'none', '-S'],
          ...['-device', `loader,file=${path.join(dir, 'blob.bin')},addr=0x1000000,force-raw=on`],
        ],
        { stdio: 'ignore' },
      );
      qemus.push(q);
    }
    const pids = qemus.map((q) => q.pid!);
    const pages = (8 * MiB) / pageSize;
    // QEMU has copied the file into guest RAM once its mergeable RAM holds that much.
    const loaded = await pollUntil(
      () => pids.every((pid) => (processStats(pid).mergeable ?? true) && residentMergeable(pid) >= 8 * MiB),
      60_000,
      100,
    );
    expect(loaded).toBe(true);
    await withFastKsm(async () => {
      const merged = await pollUntil(
        () => pids.every((pid) => (processStats(pid).mergingPages ?? 0) >= pages),
        300_000,
      );
      expect(merged).toBe(true);
      const r = spawnSync(process.execPath, [main, 'top', '--json', '--limit', '100000'], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as { processes: Array<Record<string, unknown>> };
      for (const pid of pids) {
        const entry = report.processes.find((p) => p.pid === pid);
        expect(entry, `qemu ${pid} in top`).toBeDefined();
        expect(entry!.command).toMatch(/^qemu-system-x86_64 /);
        const now = processStats(pid);
        // The guest is paused: its figures hold still between the two reads.
        expect(entry!.mergingPages).toBe(now.mergingPages);
        expect(entry!.mergingPages as number).toBeGreaterThanOrEqual(pages);
        expect(entry!.mergedBytes).toBe((entry!.mergingPages as number) * pageSize);
        if (now.profitBytes !== undefined) expect(entry!.profitBytes).toBe(now.profitBytes);
      }
      const human = spawnSync(process.execPath, [main, 'top', '--limit', '100000'], { encoding: 'utf8' });
      for (const pid of pids) expect(human.stdout).toMatch(new RegExp(`^${pid}\\s.*qemu-system-x86_64`, 'm'));
      // status: the machine's counts include both guests' copies, and they are live, not stale.
      const s = spawnSync(process.execPath, [main, 'status', '--json'], { encoding: 'utf8' });
      const status = JSON.parse(s.stdout) as { stats: { pagesSharing: number }; counters: { state: string } };
      expect(status.stats.pagesSharing).toBeGreaterThanOrEqual(pages);
      expect(status.counters.state).toBe('fresh');
    });
  });
});

/** Resident bytes of a process's MADV_MERGEABLE mappings (its guest RAM, for qemu). */
function residentMergeable(pid: number): number {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return 0;
  }
  let total = 0;
  let rss = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('Rss:')) rss = Number(/(\d+)/.exec(line)![1]) * 1024;
    else if (line.startsWith('VmFlags:') && / mg\b/.test(line)) total += rss;
  }
  return total;
}
