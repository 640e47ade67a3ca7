/**
 * `npm run demo`: fills duplicate buffers, shows ksmd merging them, prints what it saved.
 * Needs root to start a fast scanner (and puts every setting back afterwards); without
 * root it uses ksmd as it is, or says exactly what to run.
 */
import { boost } from '../boost';
import { KsmError } from '../errors';
import { alloc, free, pageSize } from '../memory';
import { bufferStats } from '../buffer-stats';
import { processStats, systemStats, type SystemStats } from '../stats';
import { support, type Support } from '../support';
import { waitForMerge } from '../wait';

const MiB = 1024 * 1024;
const COPIES = 4;
const SIZE = 64 * MiB;

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** Page p of every copy gets the same pseudo-random bytes: like N processes loading one table. */
function fill(buf: Buffer, seed: number): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  for (let p = 0; p * pageSize < buf.byteLength; p++) {
    let x = (Math.imul(seed, 0x9e3779b1) ^ Math.imul(p + 1, 0x85ebca6b)) >>> 0 || 1;
    for (let i = (p * pageSize) / 4, end = ((p + 1) * pageSize) / 4; i < end; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
  }
}

async function main(): Promise<number> {
  const s = support();
  const refusal = cannotRun(s);
  if (refusal !== null) {
    console.error(refusal);
    return 1;
  }
  console.log(
    `Allocating ${COPIES} × ${mib(SIZE)} of identical data and ${mib(SIZE)} of unique data (page size ${pageSize} B)`,
  );
  const copies = Array.from({ length: COPIES }, () => alloc(SIZE));
  for (const c of copies) fill(c, 1);
  const unique = alloc(SIZE);
  fill(unique, 2);
  const before = systemStats();
  await merge(s.canConfigure);
  report(copies, unique, before);
  for (const c of copies) free(c);
  free(unique);
  return 0;
}

/** Why the demo cannot show anything here, or null when it can. */
function cannotRun(s: Support): string | null {
  if (!s.available) return `node-ksm demo: KSM is not available here.\n  ${s.reasons.join('\n  ')}`;
  if (!s.running && !s.canConfigure) {
    return (
      'node-ksm demo: ksmd is not running and this user cannot start it.\n' +
      '  Run the demo as root (sudo npm run demo): it starts a fast scanner and restores the settings afterwards,\n' +
      '  or start ksmd yourself: echo 1 | sudo tee /sys/kernel/mm/ksm/run'
    );
  }
  return null;
}

/** Waits for the copies to merge, boosted when this user may (settings restored after). */
async function merge(canBoost: boolean): Promise<void> {
  const boosted = canBoost ? await boost() : null;
  console.log(
    boosted
      ? 'ksmd boosted (settings are restored when the demo ends)'
      : 'ksmd running with the current settings (not root: not boosting)',
  );
  try {
    let last = 0;
    const result = await waitForMerge('process', {
      ratio: 0.95 * (COPIES / (COPIES + 1)),
      timeoutMs: boosted ? 60_000 : 15 * 60_000,
      onProgress: (p) => {
        if (p.elapsedMs - last < 250) return;
        last = p.elapsedMs;
        process.stdout.write(
          `\r  merged ${mib(p.mergedPages * pageSize)} after ${(p.elapsedMs / 1000).toFixed(1)} s   `,
        );
      },
    });
    process.stdout.write('\n');
    console.log(
      `Merging ${result.complete ? 'complete' : 'reached the target'} in ${(result.elapsedMs / 1000).toFixed(2)} s (${result.fullScans} full scans)`,
    );
  } finally {
    await boosted?.release();
  }
}

/** What merged: each buffer, this process, the machine. */
function report(copies: Buffer[], unique: Buffer, before: SystemStats): void {
  const proc = processStats();
  const after = systemStats();
  for (const [i, c] of copies.entries()) {
    const b = bufferStats(c);
    console.log(`  copy ${i + 1}: ${mib(b.mergedBytes)} of ${mib(b.bytes)} merged (${b.method})`);
  }
  const u = bufferStats(unique);
  console.log(`  unique: ${mib(u.mergedBytes)} of ${mib(u.bytes)} merged`);
  console.log(`This process: ${proc.mergingPages} pages share KSM pages; profit ${mib(proc.profitBytes ?? 0)}`);
  console.log(
    `Whole machine: saved ${mib(after.savedBytes)} (was ${mib(before.savedBytes)}); ${COPIES} copies now cost about one`,
  );
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`node-ksm demo failed: ${err instanceof KsmError ? `${err.code}: ${err.message}` : String(err)}`);
    process.exit(1);
  },
);
