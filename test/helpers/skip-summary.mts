/**
 * The closing lines of .ci/run: every test skipped in any of its vitest runs, with its
 * reason, the allowlist of reasons KSM_REQUIRE=1 accepts (test/helpers/skips.ts), and
 * the totals over all runs as one "N passed, N failed, N skipped" line.
 *
 *   node --import tsx test/helpers/skip-summary.mts "$NODE_KSM_SKIP_LOG"
 */
import fs from 'node:fs';
import type { LogLine, RunTotals, SkipRecord } from './skip-reporter.mjs';
import { ALLOWED } from './skips.js';

const file = process.argv[2];
const lines: LogLine[] =
  file !== undefined && fs.existsSync(file)
    ? fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as LogLine)
    : [];
const skips = lines.filter((l): l is { kind: 'skip' } & SkipRecord => l.kind === 'skip');
const totals: RunTotals = { passed: 0, failed: 0, skipped: 0 };
for (const l of lines) {
  if (l.kind !== 'run') continue;
  totals.passed += l.passed;
  totals.failed += l.failed;
  totals.skipped += l.skipped;
}

console.log(`\nSkips allowed under KSM_REQUIRE=1 (test/helpers/skips.ts):`);
for (const [kind, what] of Object.entries(ALLOWED)) console.log(`  [allowed: ${kind}] ${what}`);
console.log(`Skipped tests, all vitest runs (${skips.length}):`);
for (const s of skips) console.log(`  ${s.file} > ${s.test}: ${s.reason ?? '(no reason given)'}`);
if (skips.length === 0) console.log('  none');
console.log(`tests: ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
