import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Native code under test: a crash must take down one fork, not the runner.
    pool: 'forks',
    execArgv: ['--expose-gc'],
    include: ['test/**/*.test.ts', 'test/**/*.test.mts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // Every skipped test with its reason, at the end of the run (and into NODE_KSM_SKIP_LOG).
    reporters: ['default', './test/helpers/skip-reporter.mts'],
  },
});
