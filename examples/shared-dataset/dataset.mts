// The table every worker builds: fixed-size records derived from a seed. Nothing is read
// from disk, so the page cache cannot share it: each process holds its own decoded copy,
// which is what a service that parses a catalogue or decodes feature vectors at start-up
// ends up with. Because the bytes depend only on the seed, every worker's copy is
// identical page for page, and ksmd can fold the copies into one.
//
// Record layout (little-endian, RECORD_BYTES each, record `id` at offset id × RECORD_BYTES):
//   u32 id | u32 version | FEATURES × f32 features in [0, 1)

export const RECORD_BYTES = 64;
export const FEATURES = 14;
export const DEFAULT_SEED = 0x5eed;

/** How many whole records fit in `bytes`. */
export const recordCount = (bytes: number): number => Math.floor(bytes / RECORD_BYTES);

/** The first state of record `id`'s generator: murmur3's finaliser over (seed, id), never 0. */
function stateOf(seed: number, id: number): number {
  let h = (Math.imul(seed, 0x9e3779b1) ^ id) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0 || 1;
}

/**
 * Fills `buf` with the table. xorshift32 per record; (x >>> 8) / 2^24 has 24 significant
 * bits, so float32 holds it exactly and readers get back the very number computed here.
 */
export function build(buf: ArrayBufferView, seed = DEFAULT_SEED): void {
  const words = Math.floor(buf.byteLength / 4);
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, words);
  const f32 = new Float32Array(buf.buffer, buf.byteOffset, words);
  const n = recordCount(buf.byteLength);
  const stride = RECORD_BYTES / 4;
  for (let id = 0, o = 0; id < n; id++, o += stride) {
    u32[o] = id;
    u32[o + 1] = 0;
    let x = stateOf(seed, id);
    for (let k = 0; k < FEATURES; k++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      f32[o + 2 + k] = (x >>> 8) / 16777216;
    }
  }
}

/** One record as the service answers it. */
export interface Item {
  id: number;
  version: number;
  features: number[];
}

/** Record `id` as `build` makes it, computed without any table (for tests and checks). */
export function expectedItem(id: number, seed = DEFAULT_SEED): Item {
  const features: number[] = [];
  let x = stateOf(seed, id);
  for (let k = 0; k < FEATURES; k++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    features.push((x >>> 8) / 16777216);
  }
  return { id, version: 0, features };
}

export function readItem(buf: Buffer, id: number): Item {
  const o = id * RECORD_BYTES;
  const features = new Array<number>(FEATURES);
  for (let k = 0; k < FEATURES; k++) features[k] = buf.readFloatLE(o + 8 + 4 * k);
  return { id: buf.readUInt32LE(o), version: buf.readUInt32LE(o + 4), features };
}

/** Overwrites the features of record `id` and bumps its version. */
export function writeItem(buf: Buffer, id: number, features: readonly number[]): void {
  const o = id * RECORD_BYTES;
  for (let k = 0; k < FEATURES; k++) buf.writeFloatLE(features[k]!, o + 8 + 4 * k);
  buf.writeUInt32LE((buf.readUInt32LE(o + 4) + 1) >>> 0, o + 4);
}
