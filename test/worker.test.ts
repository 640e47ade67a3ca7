/**
 * The addon keeps its state per environment, so it loads and works in worker threads,
 * and a worker that exits with live buffers leaves no mapping behind.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { binding } from '../lib/binding';
import { alloc, free, pageSize } from '../lib/memory';
import { skipIf } from './helpers/skips';

const root = path.resolve(__dirname, '..');

function mapsLines(): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').length;
}

/** Runs code in a worker that loads the built package (dist/). */
function runWorker(code: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const w = new Worker(`const ksm = require(${JSON.stringify(path.join(root, 'dist/index.js'))});\n${code}`, {
      eval: true,
    });
    let result: unknown;
    w.on('message', (m: unknown) => {
      result = m;
    });
    w.on('error', reject);
    w.on('exit', (code) => (code === 0 ? resolve(result) : reject(new Error(`worker exited with ${code}`))));
  });
}

describe('worker threads', () => {
  it('load the addon and allocate, merge-mark and free on their own', async () => {
    const result = await runWorker(`
      const { parentPort } = require('node:worker_threads');
      const b = ksm.alloc(ksm.pageSize * 4);
      b.fill(3);
      const sum = b.reduce((a, x) => a + x, 0);
      ksm.setMergeable(b, false);
      const freed = ksm.free(b);
      parentPort.postMessage({ sum, freed, length: b.length, pageSize: ksm.pageSize });
    `);
    expect(result).toEqual({ sum: 3 * pageSize * 4, freed: true, length: 0, pageSize });
  });

  it('unmap live buffers when the worker exits, four at once', async () => {
    const fourWorkers = (code: string) => Promise.all([0, 1, 2, 3].map(() => runWorker(code)));
    // What four workers leave in /proc/self/maps on this Node by themselves (Node 24 keeps
    // some 40 mappings per exited worker), measured the same way, to subtract.
    const start = mapsLines();
    await fourWorkers('globalThis.keep = [];');
    const idle = mapsLines() - start;
    const before = mapsLines();
    await fourWorkers(`
      const keep = [];
      for (let i = 0; i < 500; i++) keep.push(ksm.alloc(ksm.pageSize * 2, { mergeable: i % 2 === 0 }));
      globalThis.keep = keep;
    `);
    // 4 × 500 buffers in distinct VMAs would be ~2,000 lines.
    expect(mapsLines() - before - idle).toBeLessThan(100);
  });

  it('unmap an arena and its live buffers when the worker exits without close()', async (ctx) => {
    skipIf(ctx, binding?.mode === 'window' ? 'arenas need external ArrayBuffers' : null, 'window');
    const addresses = (await Promise.all(
      [0, 1].map(() =>
        runWorker(`
          const { parentPort } = require('node:worker_threads');
          const native = require(${JSON.stringify(path.join(root, 'dist/binding.js'))}).native();
          const arena = new ksm.Arena({ chunkSize: 1024 * 1024 });
          const keep = [];
          for (let i = 0; i < 2000; i++) keep.push(arena.alloc(100 + (i % 7) * 3000).fill(i & 0xff));
          for (let i = 0; i < 2000; i += 3) arena.release(keep[i]);
          ksm.free(keep[1]); // detached by free(), still the arena's
          globalThis.keep = { arena, keep };
          // Where its chunks are: one live buffer in each 1 MiB.
          parentPort.postMessage(keep.filter((b) => b.length > 0).map((b) => native.addressOf(b)));
        `),
      ),
    )) as bigint[][];
    const live = addresses.flat();
    expect(live.length).toBeGreaterThan(2000);
    // Every chunk was unmapped with its worker: no mapping of this process holds any of them.
    const ranges = fs
      .readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .filter(Boolean)
      .map(
        (l) =>
          l
            .split(' ')[0]!
            .split('-')
            .map((h) => BigInt(`0x${h}`)) as [bigint, bigint],
      );
    expect(live.filter((a) => ranges.some(([lo, hi]) => a >= lo && a < hi))).toEqual([]);
  });

  it('are sent a copy or refused, never the memory itself (it could outlive free())', async () => {
    const b = alloc(pageSize);
    b.fill(9);
    const { port1, port2 } = new MessageChannel();
    try {
      const received = new Promise<ArrayBuffer>((resolve) => port2.once('message', resolve));
      let refused: unknown;
      try {
        port1.postMessage(b.buffer, [b.buffer as ArrayBuffer]);
      } catch (err) {
        refused = err;
      }
      if (refused !== undefined) {
        // Node >= 22 refuses to transfer external memory.
        expect((refused as Error).name).toBe('DataCloneError');
      } else if (binding?.mode === 'window') {
        // Window mode: V8 owns the memory, so it moves with the ArrayBuffer, and here the
        // buffer is simply gone (free() has nothing left to do).
        const moved = new Uint8Array(await received);
        expect(b.length).toBe(0);
        expect(moved.some((x) => x === 9)).toBe(true);
        expect(free(b)).toBe(false);
        return;
      } else {
        // Node 20 sends a copy. The whole ArrayBuffer travels (in window mode, the window
        // sits inside a larger one).
        const copy = new Uint8Array(await received, b.byteOffset, b.length);
        expect(copy.every((x) => x === 9)).toBe(true);
        expect(free(b)).toBe(true);
        expect(copy[0]).toBe(9);
        return;
      }
      // Either way the buffer stays ours and attached here.
      expect(b.length).toBe(pageSize);
      expect(free(b)).toBe(true);
    } finally {
      port1.close();
      port2.close();
    }
  });
});
