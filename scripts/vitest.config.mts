/**
 * The project's vitest config for the checks in scripts/ and `npm run test:package`: none
 * of the files they run touches /sys/kernel/mm/ksm, so they skip the global setup that
 * waits for the machine-wide KSM test lock (a long benchmark may hold it for minutes).
 * NODE_KSM_VITEST_THREADS=1 runs the files in worker threads of one process, for
 * emulators where a child process cannot exec the emulated Node (scripts/test-arm64.sh).
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import base from '../vitest.config.mjs';

const threads = process.env.NODE_KSM_VITEST_THREADS === '1';

export default defineConfig({
  ...base,
  root: fileURLToPath(new URL('..', import.meta.url)),
  test: {
    ...base.test,
    globalSetup: [],
    typecheck: { tsconfig: 'scripts/tsconfig.types.json', include: ['test/**/*.test-d.ts'] },
    // Worker threads take no V8 flags; --expose-gc is given to the process instead.
    ...(threads ? { pool: 'threads', execArgv: [] } : {}),
  },
});
