/**
 * Lists every skipped test with its reason at the end of a run, and appends the list and
 * the run's totals to the file named by NODE_KSM_SKIP_LOG (one JSON object a line), so
 * that .ci/run can print the skips and totals of all its vitest runs at its end
 * (test/helpers/skip-summary.mts). With KSM_REQUIRE=1 a skip that did not come
 * through test/helpers/skips.ts with an allowlisted reason (a bare `ctx.skip`, a static
 * `it.skipIf`/`describe.skipIf`) fails the run: it would hide a missing environment.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Reporter, TestModule, Vitest } from 'vitest/node';
import { KSM_REQUIRED, allowedKind } from './skips.js';

/** One line of NODE_KSM_SKIP_LOG: a skipped test, or a run's totals. */
export type LogLine = ({ kind: 'skip' } & SkipRecord) | ({ kind: 'run' } & RunTotals);

export interface RunTotals {
  passed: number;
  failed: number;
  skipped: number;
}

export interface SkipRecord {
  file: string;
  test: string;
  reason: string | null;
  allowed: string | null;
}

export default class SkipReporter implements Reporter {
  private root = process.cwd();
  private filtered = false;

  onInit(vitest: Vitest): void {
    this.root = vitest.config.root;
    // Tests left out by -t (scripts/test-arm64.sh) are skipped too, without a reason;
    // those are the caller's choice, not the environment's.
    this.filtered = vitest.config.testNamePattern !== undefined;
  }

  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const skips: SkipRecord[] = [];
    const totals: RunTotals = { passed: 0, failed: 0, skipped: 0 };
    for (const module of modules) {
      for (const test of module.children.allTests()) {
        const result = test.result();
        if (result.state === 'passed') totals.passed++;
        else if (result.state === 'failed') totals.failed++;
        if (result.state !== 'skipped') continue;
        if (this.filtered && result.note === undefined) continue;
        totals.skipped++;
        skips.push({
          file: path.relative(this.root, module.moduleId),
          test: test.fullName,
          reason: result.note ?? null,
          allowed: allowedKind(result.note) ?? null,
        });
      }
    }
    const log = process.env.NODE_KSM_SKIP_LOG;
    if (log) {
      const lines: LogLine[] = [...skips.map((s) => ({ kind: 'skip' as const, ...s })), { kind: 'run', ...totals }];
      fs.appendFileSync(log, lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
    }
    if (skips.length === 0) return;
    const lines = skips.map((s) => `  ${s.file} > ${s.test}: ${s.reason ?? '(no reason given)'}`);
    process.stdout.write(`\nSkipped tests (${skips.length}):\n${lines.join('\n')}\n`);
    const refused = skips.filter((s) => s.allowed === null);
    if (KSM_REQUIRED && refused.length > 0) {
      process.stdout.write(
        `\nKSM_REQUIRE=1: ${refused.length} test(s) skipped for a reason not on the allowlist ` +
          `(test/helpers/skips.ts); skip through skipTest() or make the environment whole.\n`,
      );
      process.exitCode = 1;
    }
  }
}
