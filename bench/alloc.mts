// Allocation cost: node-ksm alloc + fill + free against Buffer.allocUnsafeSlow + fill +
// dropping it for the GC, 64 MiB per round. Each side runs in its own fresh process so
// that neither pays for the other's garbage, and the GC's reclamation is inside the
// timed loop of the Buffer side (a forced full GC every round, as the mapping side
// unmaps every round).
//
// Then the C heap's high-water mark after a burst: 200,000 pairs of a 64 KiB allocation
// and its release in a loop that never yields, then one turn of the event loop and one
// GC: how far RSS stays above where it started (node-ksm: alloc + free; Buffer:
// allocUnsafeSlow, dropped), without anyone calling trimHeap().
//
//   npm run build:ts && node --import tsx bench/alloc.mts [--rounds 40] [--mib 64]
//     [--burst 200000] [--json FILE]
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { setImmediate as turn } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { alloc, free, pageSize } from 'node-ksm';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '40' },
    mib: { type: 'string', default: '64' },
    burst: { type: 'string', default: '200000' },
    json: { type: 'string' },
    side: { type: 'string' },
    what: { type: 'string', default: 'speed' },
  },
});
const rounds = Number(values.rounds);
const size = Number(values.mib) * 1024 * 1024;
type Side = 'ksm' | 'buffer';

function speed(side: Side): object {
  const once = (): void => {
    if (side === 'ksm') {
      const b = alloc(size);
      b.fill(0x5a);
      free(b);
    } else {
      Buffer.allocUnsafeSlow(size).fill(0x5a); // dropped at once, for the GC below
      globalThis.gc!();
    }
  };
  for (let i = 0; i < 3; i++) once(); // warm up
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) once();
  return { side, msPerRound: Number(process.hrtime.bigint() - t0) / 1e6 / rounds };
}

const rss = (): number => Number(readFileSync('/proc/self/statm', 'utf8').split(' ')[1]) * pageSize;

async function burst(side: Side): Promise<object> {
  const loop = (n: number): void => {
    for (let i = 0; i < n; i++) {
      if (side === 'ksm') {
        const b = alloc(64 * 1024);
        b[0] = 1;
        free(b);
      } else {
        const b = Buffer.allocUnsafeSlow(64 * 1024);
        b[0] = 1;
      }
    }
  };
  // A small warm-up runs the code paths once, so the baseline holds their pages.
  loop(1000);
  for (let i = 0; i < 5; i++) {
    globalThis.gc!();
    await turn();
  }
  const before = rss();
  loop(Number(values.burst));
  const peak = rss();
  await turn();
  await turn();
  globalThis.gc!();
  await turn();
  return { side, before, peak, after: rss() };
}

if (values.side) {
  const side = values.side as Side;
  const out = values.what === 'burst' ? await burst(side) : speed(side);
  process.stdout.write(JSON.stringify(out));
} else {
  const self = fileURLToPath(import.meta.url);
  const root = fileURLToPath(new URL('..', import.meta.url));
  const child = (side: Side, what: string): Record<string, number> =>
    JSON.parse(
      execFileSync(
        process.execPath,
        [
          '--expose-gc',
          '--import',
          'tsx',
          self,
          ...['--side', side, '--what', what, '--rounds', String(rounds), '--mib', values.mib, '--burst', values.burst],
        ],
        { cwd: root, encoding: 'utf8' },
      ),
    ) as Record<string, number>;
  // Alternate the sides twice and keep each side's best, to damp machine noise.
  const results: Record<Side, number[]> = { ksm: [], buffer: [] };
  for (let i = 0; i < 2; i++)
    for (const side of ['buffer', 'ksm'] as const) results[side].push(child(side, 'speed').msPerRound!);
  const ksm = Math.min(...results.ksm);
  const buffer = Math.min(...results.buffer);
  const MiB = 2 ** 20;
  const bursts = Object.fromEntries(
    (['buffer', 'ksm'] as const).map((side) => {
      const r = child(side, 'burst');
      return [side, { startMiB: r.before! / MiB, peakMiB: r.peak! / MiB, afterMiB: r.after! / MiB }];
    }),
  );
  const grew = (side: Side): string => (bursts[side]!.afterMiB - bursts[side]!.startMiB).toFixed(1);
  const out = {
    bench: 'alloc',
    mib: Number(values.mib),
    rounds,
    ksmMsPerRound: +ksm.toFixed(2),
    bufferMsPerRound: +buffer.toFixed(2),
    ratio: +(ksm / buffer).toFixed(3),
    goal: 'ratio <= 1.15',
    burst: { pairs: Number(values.burst), ...bursts, goal: 'node-ksm RSS after <= start + 16 MiB' },
  };
  console.log(
    `alloc+fill+free ${values.mib} MiB: node-ksm ${out.ksmMsPerRound} ms, Buffer.allocUnsafeSlow+fill+GC ${out.bufferMsPerRound} ms, ratio ${out.ratio} (goal <= 1.15)`,
  );
  console.log(
    `burst of ${values.burst} x 64 KiB alloc/release, then a turn and one GC: RSS +${grew('ksm')} MiB for node-ksm ` +
      `(peak +${(bursts.ksm!.peakMiB - bursts.ksm!.startMiB).toFixed(1)}), +${grew('buffer')} MiB for Buffer.allocUnsafeSlow (goal <= +16 MiB)`,
  );
  if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 2));
}
