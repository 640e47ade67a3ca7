/** For tests whose child processes load the compiled library (dist/), as users do. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const ROOT = path.join(__dirname, '..', '..');
export const DIST = path.join(ROOT, 'dist');

/** The newest modification time of the .ts files under `dir`, lib/cli/ included. */
function newestSource(dir: string): number {
  let newest = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestSource(p) : e.name.endsWith('.ts') ? fs.statSync(p).mtimeMs : 0);
  }
  return newest;
}

/**
 * Builds dist/ when lib/ is newer (`npm test` builds first; this covers running one test
 * file with `npx vitest run`). Returns whether dist/ is there.
 */
export function ensureDist(): boolean {
  const probe = path.join(DIST, 'memory.js');
  if (!fs.existsSync(probe) || fs.statSync(probe).mtimeMs < newestSource(path.join(ROOT, 'lib'))) {
    // tsconfig.json only type-checks (noEmit): the library build is tsconfig.build.json.
    spawnSync(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
      cwd: ROOT,
      stdio: 'ignore',
    });
  }
  return fs.existsSync(probe);
}
