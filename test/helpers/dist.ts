/** For tests whose child processes load the compiled library (dist/), as users do. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const ROOT = path.join(__dirname, '..', '..');
export const DIST = path.join(ROOT, 'dist');

/**
 * Builds dist/ when lib/ is newer (`npm test` builds first; this covers running one test
 * file with `npx vitest run`). Returns whether dist/ is there.
 */
export function ensureDist(): boolean {
  const probe = path.join(DIST, 'memory.js');
  const lib = path.join(ROOT, 'lib');
  const newest = Math.max(
    ...fs
      .readdirSync(lib)
      .filter((f) => f.endsWith('.ts'))
      .map((f) => fs.statSync(path.join(lib, f)).mtimeMs),
  );
  if (!fs.existsSync(probe) || fs.statSync(probe).mtimeMs < newest)
    spawnSync('npx', ['tsc', '-p', '.'], { cwd: ROOT, stdio: 'ignore' });
  return fs.existsSync(probe);
}
