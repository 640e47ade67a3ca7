/**
 * Captures the KSM text of the running kernel as a fixture directory (the layout of
 * test/fixtures/kernels/README.md): two identical 8 MiB buffers a and b are merged (under
 * a boost, put back afterwards), with a unique, unmergeable 4 MiB buffer c between them so
 * that each is a mapping of its own; then /sys/kernel/mm/ksm/*, this process's ksm_stat
 * and ksm_merging_pages, the smaps entries of the node binary and of the buffers, a few
 * maps lines and ksmd's stat are copied, with kernel.json saying where they came from.
 * Run as root: `node --import tsx test/helpers/kernel-capture.mts OUTDIR LABEL [exclusive]`
 * (scripts/test-kernels.mts --capture runs it in each guest, where nothing else merges:
 * `exclusive`, and on the host).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../../lib/binding.js';
import { ksmdPid } from '../../lib/ksmd.js';
import { alloc, bufferStats, processStats, waitForMerge } from '../../lib/index.js';
import { pageSize } from '../../lib/memory.js';

const [out, label, exclusive] = process.argv.slice(2);
if (!out || !label) {
  console.error('usage: kernel-capture.mts OUTDIR LABEL [exclusive]');
  process.exit(2);
}
const MiB = 1024 * 1024;

/** Word i of a buffer filled with `seed`: every page differs from the others, and is the same in each buffer with that seed. */
function fill(buf: Buffer, seed: number): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  for (let i = 0; i < words.length; i++) words[i] = (Math.imul(i + 1, 2654435761) ^ Math.imul(seed, 40503)) >>> 0;
}

const read = (file: string): string | undefined => {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
};

const a = alloc(8 * MiB);
const c = alloc(4 * MiB, { mergeable: false });
const b = alloc(8 * MiB);
fill(a, 1);
fill(b, 1);
fill(c, 2);
await waitForMerge(b, { boost: true, ratio: 1, timeoutMs: 600_000 });

const hex = (buf: Buffer) => native().addressOf(buf).toString(16);
const buffers = { a: hex(a), b: hex(b), c: hex(c) };

fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(path.join(out, 'sysfs'), { recursive: true });
for (const f of fs.readdirSync('/sys/kernel/mm/ksm').sort()) {
  const text = read(`/sys/kernel/mm/ksm/${f}`);
  if (text !== undefined) fs.writeFileSync(path.join(out, 'sysfs', f), text);
}
for (const f of ['ksm_stat', 'ksm_merging_pages']) {
  const text = read(`/proc/self/${f}`);
  if (text !== undefined) fs.writeFileSync(path.join(out, f), text);
}

// smaps: the first entry (the node binary) and the buffers' entries, in address order.
const smaps = fs.readFileSync('/proc/self/smaps', 'utf8');
const entries = smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/).map((e) => (e.endsWith('\n') ? e : `${e}\n`));
const starts = new Set(Object.values(buffers));
const kept = [entries[0]!, ...entries.slice(1).filter((e) => starts.has(e.slice(0, e.indexOf('-'))))];
if (kept.length !== 4) throw new Error(`expected the buffers as 3 mappings of their own, found ${kept.length - 1}`);
fs.writeFileSync(path.join(out, 'smaps'), kept.join(''));

// maps: the node binary's lines and the special mappings (no buffers, no libraries).
const maps = fs
  .readFileSync('/proc/self/maps', 'utf8')
  .split('\n')
  .filter((l) => l.endsWith(process.execPath) || /\[(heap|stack|vdso|vsyscall)\]$/.test(l));
fs.writeFileSync(path.join(out, 'maps'), `${maps.join('\n')}\n`);
const ksmd = ksmdPid();
if (ksmd !== undefined) fs.writeFileSync(path.join(out, 'ksmd-stat'), fs.readFileSync(`/proc/${ksmd}/stat`, 'utf8'));

const stats = processStats();
const meta = {
  label,
  release: os.release(),
  source: 'captured',
  capturedAt: new Date().toISOString().slice(0, 10),
  by: 'test/helpers/kernel-capture.mts',
  node: process.version,
  nodeBinary: process.execPath,
  pageSize,
  /** Nothing else on the machine had merged pages: the sysfs counts are these buffers'. */
  exclusive: exclusive === 'exclusive',
  /** Mapping start (hex) and bytes of each buffer; a and b hold the same pages, c is unique and not mergeable. */
  buffers: {
    a: { start: buffers.a, bytes: a.length, mergedBytes: bufferStats(a).mergedBytes },
    b: { start: buffers.b, bytes: b.length, mergedBytes: bufferStats(b).mergedBytes },
    c: { start: buffers.c, bytes: c.length, mergedBytes: bufferStats(c).mergedBytes },
  },
  /** processStats() when the files were copied. */
  processStats: stats,
};
fs.writeFileSync(path.join(out, 'kernel.json'), `${JSON.stringify(meta, null, 2)}\n`);
console.log(`captured ${label} (${os.release()}) into ${out}`);
