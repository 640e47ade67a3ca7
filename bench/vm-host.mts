/**
 * The field report's experiment with real VMs: N identical QEMU guests hold identical data
 * in their RAM (QEMU marks guest RAM MADV_MERGEABLE), and each scanner policy runs in turn
 * on this host's ksmd: the kernel's defaults, a fixed boost, the scan-time advisor (where
 * the kernel has it) and autotune. For each it samples, once a second from the moment every
 * guest holds its data, the bytes merging saved among the guests and ksmd's CPU.
 *
 *   node --import tsx bench/vm-host.mts [--vms 3] [--mib 128] [--seconds 120]
 *        [--policies default,1000000000,advisor,autotune] [--kernel 6.1] [--json FILE]
 *        [--svg FILE]
 *
 * Each guest boots Debian's kernel (scripts/test-kernels-qemu.mts) with an initramfs that
 * holds `--mib` MiB of pseudo-random pages from one seed (a fresh seed per policy, so pages
 * a previous policy left in the stable tree cannot help the next): the kernel unpacks it
 * into its page cache, so every guest holds the same pages in its RAM, and then idles.
 * Saved bytes are exact: the guests' present RAM pages minus the distinct page frames
 * behind them (/proc/<pid>/pagemap, root). Changes the machine-wide KSM settings while it
 * runs (as `node-ksm bench` does) and puts them all back, also on Ctrl-C.
 *
 * The JSON has the shape of `node-ksm bench`'s report (results[].samples of { t,
 * savedBytes, cpuPercent, mergedPages }), so the same chart code draws it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { configure, readSettings, type KsmSettings } from '../dist/control.js';
import { benchChart, policySettings } from '../dist/benchmark.js';
import { describePolicy } from '../dist/cli/bench.js';
import { startAutotune, type AutotuneHandle } from '../dist/autotune.js';
import { ksmdCpuSeconds } from '../dist/ksmd.js';
import { pageSize } from '../dist/memory.js';
import { parseSmaps } from '../dist/procfs.js';
import { processStats, systemStats } from '../dist/stats.js';
import { lockKsm } from '../test/helpers/ksm.js';
import {
  bootGuest,
  buildInitramfs,
  ensureHostTools,
  fetchKernel,
  KERNELS,
  type Guest,
} from '../scripts/test-kernels-qemu.mjs';

const { values } = parseArgs({
  options: {
    vms: { type: 'string', default: '3' },
    mib: { type: 'string', default: '128' },
    seconds: { type: 'string', default: '120' },
    policies: { type: 'string', default: 'default,1000000000,advisor,autotune' },
    kernel: { type: 'string', default: '6.1' },
    json: { type: 'string' },
    svg: { type: 'string' },
  },
});
const vms = Number(values.vms);
const mib = Number(values.mib);
const seconds = Number(values.seconds);
if (!(vms >= 2 && mib >= 1 && seconds >= 10)) throw new Error('--vms >= 2, --mib >= 1, --seconds >= 10');

export interface VmSample {
  /** Seconds since every guest held its data. */
  t: number;
  /** Bytes saved among the guests: present pages minus the distinct frames behind them. */
  savedBytes: number;
  /** The guests' pages that map a KSM page (sum of their ksm_merging_pages). */
  mergedPages: number;
  /** ksmd's share of one core since the previous sample. */
  cpuPercent: number;
}

export interface VmResult {
  policy: string;
  settings: KsmSettings;
  /** Seconds the guests took to boot and hold their data (the policy already in force). */
  bootSeconds: number;
  savedAt60s: number;
  savedAtEnd: number;
  /** First sample at which 95 % of the final saving of the fastest policy was reached; null if never. */
  mergeSeconds: number | null;
  /** ksmd CPU (% of a core) over the whole window, and over its last 30 s (merged, or still merging). */
  cpuPercent: number;
  cpuPercentLast30s: number;
  samples: VmSample[];
}

const PRESENT = 1n << 63n;
const PFN = (1n << 55n) - 1n;

/** The guests' RAM: every MADV_MERGEABLE mapping of each qemu process. */
function guestRam(pid: number): Array<[number, number]> {
  const smaps = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8');
  return parseSmaps(smaps)
    .filter((v) => v.vmFlags.includes('mg'))
    .map((v) => [Number(v.start / BigInt(pageSize)), Number(v.end / BigInt(pageSize))]);
}

/** Present pages minus distinct frames, over every guest's RAM (exact; frame numbers need root). */
function savedPages(pids: number[], ram: Map<number, Array<[number, number]>>): number {
  const frames = new Set<number>();
  let present = 0;
  const buf = Buffer.allocUnsafe(65536 * 8);
  const entries = new BigUint64Array(buf.buffer, buf.byteOffset, 65536);
  for (const pid of pids) {
    let fd: number;
    try {
      fd = fs.openSync(`/proc/${pid}/pagemap`, 'r');
    } catch {
      continue;
    }
    try {
      for (const [first, end] of ram.get(pid) ?? []) {
        for (let at = first; at < end; at += 65536) {
          const want = Math.min(65536, end - at);
          const n = fs.readSync(fd, buf, 0, want * 8, at * 8) / 8;
          for (let i = 0; i < n; i++) {
            const e = entries[i]!;
            if ((e & PRESENT) === 0n) continue;
            present++;
            frames.add(Number(e & PFN));
          }
        }
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  return present - frames.size;
}

/** The init of a bench guest: its data is already in its page cache (the unpacked initramfs). */
const INIT = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox cat /data > /dev/null
echo NODE_KSM_VM_READY
exec /bin/busybox sleep 2147483647
`;

/** Pseudo-random pages from `seed`: each page differs from the others, every guest has the same. */
function data(seed: number): Buffer {
  const buf = Buffer.allocUnsafe(mib * 1024 * 1024);
  const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < w.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    w[i] = x >>> 0;
  }
  return buf;
}

async function bootAll(kernel: ReturnType<typeof fetchKernel>, initramfs: string): Promise<Guest[]> {
  const guests: Guest[] = [];
  const ready: Array<Promise<void>> = [];
  for (let i = 0; i < vms; i++) {
    let resolveReady!: () => void;
    ready.push(new Promise((r) => (resolveReady = r)));
    const g = bootGuest({
      kernel,
      initramfs,
      append: 'quiet rdinit=/init',
      // The initramfs twice (loaded, then unpacked) and the kernel's own needs.
      memoryMiB: mib * 3 + 256,
      cpus: 1,
      timeoutMs: 3_600_000,
      onLine: (l) => {
        if (l.includes('NODE_KSM_VM_READY')) resolveReady();
      },
    });
    guests.push(g);
    ready[i] = Promise.race([
      ready[i]!,
      g.done.then((r) => {
        throw new Error(`guest ${i} stopped before holding its data (QEMU exit ${r.code}):\n${r.console.slice(-1500)}`);
      }),
    ]);
  }
  // Cancelled once they are up, so that the timer does not keep the process alive.
  const timer = new AbortController();
  const deadline = sleep(600_000, undefined, { signal: timer.signal }).then(() => {
    throw new Error('guests did not boot within 10 minutes');
  });
  deadline.catch(() => undefined);
  try {
    await Promise.race([Promise.all(ready), deadline]);
  } finally {
    timer.abort();
  }
  return guests;
}

async function stopAll(guests: Guest[]): Promise<void> {
  for (const g of guests) g.kill();
  await Promise.all(guests.map((g) => g.done.catch(() => undefined)));
}

/** Lets ksmd drop the previous guests' pages before the next policy starts. */
async function settle(): Promise<void> {
  const s = readSettings();
  configure({
    ...(s.advisorMode !== undefined ? { advisorMode: 'none' as const } : {}),
    run: 1,
    pagesToScan: 10_000,
    sleepMillisecs: 0,
  });
  const start = systemStats().fullScans ?? 0;
  const deadline = Date.now() + 15_000;
  while ((systemStats().fullScans ?? 0) < start + 2 && Date.now() < deadline) await sleep(50);
}

function restorable(s: KsmSettings): KsmSettings {
  const out = { ...s };
  if (out.advisorMode === 'scan-time') delete out.pagesToScan;
  if (out.run === 2) out.run = 0;
  return out;
}

async function runPolicy(
  policy: string,
  kernel: ReturnType<typeof fetchKernel>,
  originals: KsmSettings,
): Promise<VmResult> {
  await settle();
  configure(restorable(originals));
  const settings = policySettings(policy, readSettings(), 2);
  configure(settings);
  let tuner: AutotuneHandle | undefined;
  if (policy === 'autotune') tuner = startAutotune({});
  const seed = (Date.now() % 1_000_000) + 1;
  const image = path.join(fs.mkdtempSync('/tmp/node-ksm-vm-'), 'initramfs.cpio');
  buildInitramfs(
    kernel,
    [
      { name: 'init', data: INIT, mode: 0o755 },
      { name: 'data', data: data(seed) },
    ],
    [],
    {
      out: image,
      compress: false,
    },
  );
  const bootStart = performance.now();
  let guests: Guest[] = [];
  try {
    guests = await bootAll(kernel, image);
    const bootSeconds = (performance.now() - bootStart) / 1000;
    const pids = guests.map((g) => g.pid);
    const ram = new Map(pids.map((pid) => [pid, guestRam(pid)]));
    const samples: VmSample[] = [];
    const t0 = performance.now();
    let lastCpu = ksmdCpuSeconds() ?? 0;
    let lastT = 0;
    console.error(`${policy}: ${vms} guests hold their data after ${bootSeconds.toFixed(0)} s`);
    while (lastT < seconds) {
      await sleep(1000 - ((performance.now() - t0) % 1000));
      const t = (performance.now() - t0) / 1000;
      const cpu = ksmdCpuSeconds() ?? 0;
      const merged = pids.reduce((n, pid) => n + (processStats(pid).mergingPages ?? 0), 0);
      const sample = {
        t: +t.toFixed(2),
        savedBytes: savedPages(pids, ram) * pageSize,
        mergedPages: merged,
        cpuPercent: +(((cpu - lastCpu) / (t - lastT)) * 100).toFixed(1),
      };
      samples.push(sample);
      lastCpu = cpu;
      lastT = t;
      if (samples.length % 10 === 0)
        console.error(
          `  ${policy} t=${t.toFixed(0)} s saved ${(sample.savedBytes / 2 ** 20).toFixed(0)} MiB, ksmd ${sample.cpuPercent} %`,
        );
    }
    const at = (s: number) => samples.filter((x) => x.t <= s).at(-1)?.savedBytes ?? 0;
    const mean = (xs: VmSample[]) => (xs.length ? xs.reduce((n, x) => n + x.cpuPercent, 0) / xs.length : 0);
    return {
      policy,
      settings,
      bootSeconds: +bootSeconds.toFixed(1),
      savedAt60s: at(60),
      savedAtEnd: samples.at(-1)?.savedBytes ?? 0,
      mergeSeconds: null,
      cpuPercent: +mean(samples).toFixed(1),
      cpuPercentLast30s: +mean(samples.filter((x) => x.t > lastT - 30)).toFixed(1),
      samples,
    };
  } finally {
    await tuner?.stop().catch(() => undefined);
    await stopAll(guests);
    fs.rmSync(path.dirname(image), { recursive: true, force: true });
  }
}

const fmt = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;

if (process.getuid?.() !== 0)
  throw new Error('run as root: the bench changes /sys/kernel/mm/ksm and reads page frames');
ensureHostTools();
const spec = KERNELS.find((k) => k.label === values.kernel);
if (!spec) throw new Error(`--kernel: one of ${KERNELS.map((k) => k.label).join(', ')}`);
const kernel = fetchKernel(spec);
// The settings found under the lock before each policy, put back after it.
let originals = readSettings();
const policies = values.policies.split(',').filter((p) => p !== 'advisor' || originals.advisorMode !== undefined);
const results: VmResult[] = [];
const restore = () => {
  try {
    configure(restorable(originals));
  } catch (err) {
    console.error(`could not put the KSM settings back: ${(err as Error).message}`);
  }
};
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    restore();
    process.exit(130);
  });
}
try {
  for (const p of policies) {
    // The machine-wide lock of the test harness, one policy at a time (about 2-3 minutes,
    // well inside the lock's 10-minute patience): test runs on this machine wait instead of
    // having their scanner settings changed under them, and get their turn in between.
    const unlock = await lockKsm();
    originals = readSettings();
    try {
      results.push(await runPolicy(p, kernel, originals));
      await settle();
    } finally {
      restore();
      unlock();
    }
  }
} catch (err) {
  restore();
  throw err;
}
// Time to merge: until 95 % of the most any policy saved.
const best = Math.max(...results.map((r) => r.savedAtEnd));
for (const r of results) r.mergeSeconds = r.samples.find((s) => s.savedBytes >= 0.95 * best)?.t ?? null;

const report = {
  kind: 'vm-host',
  vms,
  mib,
  seconds,
  guestKernel: kernel.release,
  hostKernel: fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
  pageSize,
  /** What merging can save at most among the guests' data: all copies but one. */
  duplicateBytes: (vms - 1) * mib * 2 ** 20,
  originals,
  results,
};
if (values.json) fs.writeFileSync(values.json, `${JSON.stringify(report, null, 2)}\n`);
if (values.svg) {
  fs.writeFileSync(
    values.svg,
    benchChart({
      title: `VM host: ${vms} QEMU guests × ${mib} MiB of identical data`,
      subtitle: `guests Linux ${kernel.release} (TCG), host Linux ${report.hostKernel}; merged: 95 % of the most any policy saved; idle: ksmd over the last 30 s`,
      series: results.map((r) => ({
        name: describePolicy(r.policy, r.settings),
        samples: r.samples,
        mergeSeconds: r.mergeSeconds,
        idleCpuPercent: r.cpuPercentLast30s,
      })),
    }),
  );
}
console.log(
  `\n${vms} guests (Linux ${kernel.release}, TCG) × ${mib} MiB of identical data; host Linux ${report.hostKernel}\n`,
);
console.log(
  '| policy | saved after 60 s | saved after ' +
    seconds +
    ' s | 95 % merged in | ksmd CPU (whole run) | ksmd CPU (last 30 s) |',
);
console.log('|---|---|---|---|---|---|');
for (const r of results) {
  const name = describePolicy(r.policy, r.settings);
  console.log(
    `| ${name} | ${fmt(r.savedAt60s)} | ${fmt(r.savedAtEnd)} | ${r.mergeSeconds === null ? `> ${seconds} s` : `${r.mergeSeconds.toFixed(0)} s`} | ${r.cpuPercent.toFixed(1)} % | ${r.cpuPercentLast30s.toFixed(1)} % |`,
  );
}
