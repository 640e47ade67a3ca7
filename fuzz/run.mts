// The API fuzzer's driver: runs fuzz/child.mts once per seed, each in a fresh process, a
// few at a time, and fails when any child dies by a signal, aborts (a sanitizer report),
// hangs, throws an undocumented error, breaks an invariant or leaves mappings behind.
//
//   npm run fuzz -- --seeds 200 --ops 2000 [--sanitized] [--start 1] [--jobs N]
//   npm run fuzz -- --seed 1234 --ops 2000 --trace      (replay one seed)
//   (npm run fuzz is node --import tsx fuzz/run.mts; a seed by hand:
//    node --import tsx --expose-gc fuzz/child.mts SEED OPS --trace)
//
// --sanitized runs the children against the ASan+UBSan build (build-asan/, made by
// `npm run build:asan`), the way test/run-asan.sh runs the tests. When the environment
// already names a sanitized binary (NODE_KSM_SANITIZED=1, as run-asan.sh sets), the
// children inherit it.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHILD_SOURCE = path.join(root, 'fuzz', 'child.mts');

export interface FuzzOptions {
  seeds: number;
  ops: number;
  start: number;
  jobs: number;
  sanitized: boolean;
  trace: boolean;
  json: boolean;
  timeoutMs: number;
  /** One seed to replay, instead of `seeds` seeds from `start`. */
  seed: number | undefined;
}

/** What a child printed as its last line when it finished. */
interface ChildSummary {
  seed: number;
  ops: number;
  ms: number;
  errors: Record<string, number>;
  profile?: Record<string, number>;
}

interface SeedResult {
  seed: number;
  ok: boolean;
  kind: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  summary: ChildSummary | null;
  stderr: string;
}

export interface FuzzFailure {
  seed: number;
  kind: string;
  replay: string;
  stderr: string;
  lastOps: string;
}

/** The driver's report (the last line of its output with --json). */
export interface FuzzReport {
  seeds: number;
  ops: number;
  passed: number;
  failed: number;
  seconds: number;
  sanitized: boolean;
  /** Documented errors thrown, by "Class:code", over all passing seeds. */
  errors: Record<string, number>;
  failures: FuzzFailure[];
}

function parseArgs(argv: string[]): FuzzOptions {
  const o: FuzzOptions = {
    seeds: 100,
    ops: 2000,
    start: 1,
    jobs: os.availableParallelism?.() ?? os.cpus().length,
    sanitized: false,
    trace: false,
    json: false,
    timeoutMs: 300_000,
    seed: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${a} needs a whole number`);
      return v;
    };
    if (a === '--seeds') o.seeds = num();
    else if (a === '--ops') o.ops = num();
    else if (a === '--start') o.start = num();
    else if (a === '--seed') o.seed = num();
    else if (a === '--jobs') o.jobs = Math.max(1, num());
    else if (a === '--timeout') o.timeoutMs = num() * 1000;
    else if (a === '--sanitized') o.sanitized = true;
    else if (a === '--trace') o.trace = true;
    else if (a === '--json') o.json = true;
    else if (a === '-h' || a === '--help') {
      console.log(
        'usage: node --import tsx fuzz/run.mts [--seeds N] [--ops N] [--start S] [--seed S] [--jobs N] [--timeout SECONDS] [--sanitized] [--trace] [--json]',
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

function newestTs(dir: string): number {
  let newest = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestTs(p) : e.name.endsWith('.ts') ? fs.statSync(p).mtimeMs : 0);
  }
  return newest;
}

/** The children load the compiled library: rebuild dist/ when lib/ is newer. */
function ensureDist(): void {
  const probe = path.join(root, 'dist', 'memory.js');
  if (fs.existsSync(probe) && fs.statSync(probe).mtimeMs >= newestTs(path.join(root, 'lib'))) return;
  spawnSync(
    process.execPath,
    [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(root, 'tsconfig.build.json')],
    { stdio: 'inherit' },
  );
  if (!fs.existsSync(probe)) throw new Error('dist/ could not be built (npm run build:ts)');
}

/**
 * The child as plain JavaScript, transpiled once per run into dist/ (where its imports,
 * `node-ksm` and `../dist/binding.js`, resolve as they do from fuzz/): starting tsx in
 * every seed's process would cost about half a second of CPU each, minutes over CI's
 * 200 seeds. Written under a temporary name and renamed, so concurrent runs never see
 * half a file.
 */
function compileChild(): string {
  const ts = createRequire(import.meta.url)('typescript') as typeof import('typescript');
  const js = ts.transpileModule(fs.readFileSync(CHILD_SOURCE, 'utf8'), {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    fileName: CHILD_SOURCE,
  }).outputText;
  const file = path.join(root, 'dist', 'fuzz-child.mjs');
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, js);
  fs.renameSync(tmp, file);
  return file;
}

function sanitizedEnv(): NodeJS.ProcessEnv {
  const binary = path.join(root, 'build-asan', 'Release', 'ksm.node');
  if (!fs.existsSync(binary)) throw new Error(`${binary} is missing: run "npm run build:asan" first`);
  const lib = (name: string) => spawnSync('gcc', [`-print-file-name=${name}`], { encoding: 'utf8' }).stdout.trim();
  return {
    NODE_KSM_SANITIZED: '1',
    NODE_KSM_BINARY: binary,
    LD_PRELOAD: `${lib('libasan.so')}:${lib('libubsan.so')}`,
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1:allow_user_segv_handler=1:handle_segv=0',
    UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
  };
}

function runSeed(
  child: string,
  seed: number,
  o: FuzzOptions,
  env: NodeJS.ProcessEnv,
  trace: boolean,
): Promise<SeedResult> {
  return new Promise((resolve) => {
    const args = ['--expose-gc', child, String(seed), String(o.ops), ...(trace ? ['--trace'] : [])];
    const proc = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      // A trace of 100,000 operations is long; the end is what matters.
      if (stderr.length > 4_000_000) stderr = stderr.slice(-2_000_000);
    });
    let hung = false;
    const timer = setTimeout(() => {
      hung = true;
      proc.kill('SIGKILL');
    }, o.timeoutMs);
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      let summary: ChildSummary | null = null;
      try {
        summary = JSON.parse(stdout.trim().split('\n').pop() ?? '') as ChildSummary;
      } catch {
        // no summary: the child did not finish
      }
      const ok = !hung && code === 0 && signal === null && summary !== null;
      const kind = hung
        ? 'HANG'
        : signal
          ? `SIGNAL ${signal}`
          : code === 3
            ? 'CONTRACT'
            : code === 4
              ? 'LEAK'
              : code !== 0
                ? `EXIT ${code}`
                : summary === null
                  ? 'NO SUMMARY'
                  : 'OK';
      resolve({ seed, ok, kind, code, signal, summary, stderr });
    });
  });
}

function replayCommand(seed: number, o: FuzzOptions): string {
  return `npm run fuzz -- --seed ${seed} --ops ${o.ops}${o.sanitized || process.env.NODE_KSM_SANITIZED === '1' ? ' --sanitized' : ''} --trace`;
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

export async function main(argv = process.argv.slice(2)): Promise<FuzzReport> {
  const o = parseArgs(argv);
  ensureDist();
  const child = compileChild();
  const env = { ...process.env, ...(o.sanitized ? sanitizedEnv() : {}) };
  const seeds = o.seed !== undefined ? [o.seed] : Array.from({ length: o.seeds }, (_, i) => o.start + i);
  const started = Date.now();
  const failures: FuzzFailure[] = [];
  const errors: Record<string, number> = {};
  let passed = 0;
  let next = 0;
  const worker = async () => {
    while (next < seeds.length) {
      const seed = seeds[next++]!;
      const r = await runSeed(child, seed, o, env, o.trace);
      if (r.ok) {
        passed++;
        for (const [k, n] of Object.entries(r.summary!.errors)) errors[k] = (errors[k] ?? 0) + n;
        if (o.trace) process.stderr.write(tail(r.stderr, 3) + '\n');
        continue;
      }
      // A crash leaves no message of ours: run it again with the trace to name the call.
      let last = '';
      if (!o.trace && (r.signal || r.kind.startsWith('EXIT') || r.kind === 'HANG')) {
        const again = await runSeed(child, seed, o, env, true);
        last = tail(
          again.stderr
            .split('\n')
            .filter((l) => /^#\d+ |^ {3}/.test(l))
            .join('\n'),
          4,
        );
      }
      failures.push({
        seed: r.seed,
        kind: r.kind,
        replay: replayCommand(seed, o),
        stderr: tail(r.stderr, 60),
        lastOps: last,
      });
      process.stderr.write(
        `\nFUZZ FAILURE seed ${seed}: ${r.kind}\n${tail(r.stderr, 60)}\n` +
          (last ? `last operations before the crash:\n${last}\n` : '') +
          `replay: ${replayCommand(seed, o)}\n`,
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.jobs, seeds.length) }, worker));
  const seconds = (Date.now() - started) / 1000;
  const report: FuzzReport = {
    seeds: seeds.length,
    ops: o.ops,
    passed,
    failed: failures.length,
    seconds,
    sanitized: o.sanitized || process.env.NODE_KSM_SANITIZED === '1',
    errors,
    failures,
  };
  const mode = report.sanitized ? ' under ASan+UBSan' : '';
  console.log(
    `fuzz: ${seeds.length} seeds (${seeds[0]}..${seeds[seeds.length - 1]}) × ${o.ops} ops${mode}: ${passed} ok, ${failures.length} failing (${seconds.toFixed(1)} s)`,
  );
  if (!o.json) console.log(`documented errors thrown: ${JSON.stringify(errors)}`);
  for (const f of failures) console.log(`  seed ${f.seed}: ${f.kind} — replay: ${f.replay}`);
  if (o.json) console.log(JSON.stringify(report));
  return report;
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (r) => process.exit(r.failed === 0 ? 0 : 1),
    (err) => {
      console.error(err instanceof Error ? err.message : String(err));
      process.exit(2);
    },
  );
}
