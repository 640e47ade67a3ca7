// Allocation cost: node-ksm alloc + fill + free against Buffer.allocUnsafeSlow + fill +
// dropping it for the GC, 64 MiB per round. Each side runs in its own fresh process so
// that neither pays for the other's garbage, and the GC's reclamation is inside the
// timed loop of the Buffer side (a forced full GC every round, as the mapping side
// unmaps every round).
//
//   node bench/alloc.mjs [--rounds 40] [--mib 64] [--json FILE]
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '40' },
    mib: { type: 'string', default: '64' },
    json: { type: 'string' },
    side: { type: 'string' },
  },
});
const rounds = Number(values.rounds);
const size = Number(values.mib) * 1024 * 1024;

function run(side) {
  // The built package, as a user loads it.
  const ksm = side === 'ksm' ? createRequire(import.meta.url)('../dist/index.js') : null;
  const once = () => {
    if (ksm) {
      const b = ksm.alloc(size);
      b.fill(0x5a);
      ksm.free(b);
    } else {
      let b = Buffer.allocUnsafeSlow(size);
      b.fill(0x5a);
      b = null;
      globalThis.gc();
    }
  };
  for (let i = 0; i < 3; i++) once(); // warm up
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) once();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6 / rounds;
  process.stdout.write(JSON.stringify({ side, msPerRound: ms }));
}

if (values.side) {
  run(values.side);
} else {
  const self = fileURLToPath(import.meta.url);
  const child = (side) =>
    JSON.parse(
      execFileSync(
        process.execPath,
        ['--expose-gc', self, '--side', side, '--rounds', String(rounds), '--mib', values.mib],
        {
          encoding: 'utf8',
        },
      ),
    );
  // Alternate the sides twice and keep each side's best, to damp machine noise.
  const results = { ksm: [], buffer: [] };
  for (let i = 0; i < 2; i++) for (const side of ['buffer', 'ksm']) results[side].push(child(side).msPerRound);
  const ksm = Math.min(...results.ksm);
  const buffer = Math.min(...results.buffer);
  const out = {
    bench: 'alloc',
    mib: Number(values.mib),
    rounds,
    ksmMsPerRound: +ksm.toFixed(2),
    bufferMsPerRound: +buffer.toFixed(2),
    ratio: +(ksm / buffer).toFixed(3),
    goal: 'ratio <= 1.15',
  };
  console.log(
    `alloc+fill+free ${values.mib} MiB: node-ksm ${out.ksmMsPerRound} ms, Buffer.allocUnsafeSlow+fill+GC ${out.bufferMsPerRound} ms, ratio ${out.ratio} (goal <= 1.15)`,
  );
  if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 2));
}
