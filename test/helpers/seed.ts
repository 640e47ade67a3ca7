/**
 * Seeds for randomized tests. Each run draws a new seed and prints it; `SEED=n` replays
 * that run: `SEED=n npx vitest run test/<file>` (a seed belongs to the file that printed it).
 */
import { randomInt } from 'node:crypto';

/** The seed for `what`: SEED from the environment, or a new one below `limit`, printed. */
export function testSeed(what: string, limit = 1_000_000): number {
  const given = process.env.SEED;
  const seed = given !== undefined && given !== '' ? Number(given) : randomInt(limit);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`SEED must be a whole number, not "${given}"`);
  console.log(`${what}: seed ${seed}${given ? ' (from SEED)' : ''}; replay with SEED=${seed}`);
  return seed;
}
