/**
 * `npm run test:kernels`: node-ksm's KSM tests on the kernels users run. Each of Debian's
 * 5.10 (bullseye), 6.1 (bookworm) and 6.12 (bookworm-backports) boots in a QEMU guest
 * (scripts/test-kernels-qemu.mts) that mounts this machine's root read-only and runs the
 * guest test files (GUEST_FILES) with the official Node binary; `host` runs the same files
 * here, on this machine's own kernel. A kernel whose tests fail (or whose guest does not
 * finish) fails the script.
 *
 *   npm run test:kernels                      5.10 and 6.1 (what CI runs)
 *   npm run test:kernels -- --all             5.10, 6.1, 6.12 and the host
 *   npm run test:kernels -- --kernels 6.12,host
 *   npm run test:kernels -- --capture         also rewrite test/fixtures/kernels/<label>/ from each
 *   npm run test:kernels -- --node 22         another Node line (default 24)
 *
 * Node 24 by default (maintenance LTS; the integration step of CI runs Node 26, the Active
 * LTS, on the host): Node 26's official build still runs on 5.10, but 24 is what a server
 * on Debian 11/12 is most likely to be given. Any line: `--node N`.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { bootGuest, CACHE, ensureHostTools, fetchKernel, initramfsWithInit, KERNELS } from './test-kernels-qemu.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/**
 * The test files run on each kernel. test/kernel.test.ts asserts, from the kernel's version,
 * exactly what that kernel must give, across support(), the statistics, configure, boost,
 * waitForMerge, setProcessMerging and the CLI. The other integration files are written for
 * the host's 6.18 (they expect the advisor and smart_scan knobs, and compile lib/ in hooks
 * with a 120 s limit that an emulated guest exceeds), so they run on the host only.
 */
export const GUEST_FILES = ['test/kernel.test.ts'];
const DEFAULT_KERNELS = ['5.10', '6.1'];
const ALL = [...KERNELS.map((k) => k.label), 'host'];

const { values } = parseArgs({
  options: {
    all: { type: 'boolean', default: false },
    kernels: { type: 'string' },
    capture: { type: 'boolean', default: false },
    node: { type: 'string', default: '24' },
    files: { type: 'string' },
    timeout: { type: 'string', default: '1800' },
    memory: { type: 'string', default: '2048' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(
    'npm run test:kernels [-- --all | --kernels 5.10,6.1,6.12,host] [--capture] [--node 24] [--files a,b] [--timeout SECONDS]',
  );
  process.exit(0);
}
const labels = values.all ? ALL : (values.kernels?.split(',').map((s) => s.trim()) ?? DEFAULT_KERNELS);
for (const l of labels) if (!ALL.includes(l)) throw new Error(`unknown kernel "${l}": one of ${ALL.join(', ')}`);
const files = values.files?.split(',') ?? GUEST_FILES;
const timeoutMs = Number(values.timeout) * 1000;

function sh(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', env: opts.env ?? process.env });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout.trim();
}

interface Outcome {
  label: string;
  release: string;
  ok: boolean;
  seconds: number;
  tests?: { passed: number; failed: number; skipped: number };
  note?: string;
}

/** vitest's JSON report, reduced to counts. */
function counts(file: string): Outcome['tests'] {
  try {
    const r = JSON.parse(fs.readFileSync(file, 'utf8')) as {
      numPassedTests: number;
      numFailedTests: number;
      numPendingTests: number;
      numTodoTests: number;
    };
    return { passed: r.numPassedTests, failed: r.numFailedTests, skipped: r.numPendingTests + r.numTodoTests };
  } catch {
    return undefined;
  }
}

/** The commands a run executes, guest or host: vitest, then (with --capture) the fixture capture. */
function jobScript(o: { node: string; out: string; label: string; guest: boolean }): string {
  const vitest = [
    o.node,
    'node_modules/vitest/vitest.mjs',
    'run',
    '--config',
    'scripts/test-kernels.config.mts',
    '--configLoader',
    'runner',
    '--reporter=default',
    '--reporter=json',
    `--outputFile.json=${o.out}/vitest.json`,
    ...files,
  ];
  const lines = [
    `cd ${ROOT}`,
    `export PATH=${path.dirname(o.node)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
    'export KSM_REQUIRE=1 CI=1 TMPDIR=/tmp NO_COLOR=1 FORCE_COLOR=0',
    o.guest ? `export HOME=/tmp/home NODE_KSM_GUEST=${o.label} NODE_KSM_VITE_CACHE=/tmp/vite` : '',
    o.guest ? 'mkdir -p "$HOME"' : '',
    'echo "test:kernels: Linux $(uname -r), Node $(node --version), $(nproc) CPUs"',
    `${vitest.map((a) => `'${a}'`).join(' ')}`,
    'rc=$?',
  ];
  if (values.capture) {
    lines.push(
      `node --import tsx test/helpers/kernel-capture.mts '${o.out}/fixture' '${o.label}' ${o.guest ? 'exclusive' : ''} || rc=$((rc ? rc : 3))`,
    );
  }
  lines.push('exit $rc');
  return lines.filter(Boolean).join('\n') + '\n';
}

function runDir(label: string): string {
  const dir = path.join(CACHE, 'runs', `${label}-${process.pid}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** Copies a capture into test/fixtures/kernels/<label>/, replacing what was there. */
function keepFixture(out: string, label: string): void {
  const from = path.join(out, 'fixture');
  if (!fs.existsSync(path.join(from, 'kernel.json'))) return;
  const meta = JSON.parse(fs.readFileSync(path.join(from, 'kernel.json'), 'utf8')) as { release: string };
  const name = label === 'host' ? meta.release.split('.').slice(0, 2).join('.') : label;
  const to = path.join(ROOT, 'test', 'fixtures', 'kernels', name);
  fs.rmSync(to, { recursive: true, force: true });
  fs.cpSync(from, to, { recursive: true });
  console.log(`test:kernels: fixtures of ${meta.release} written to ${path.relative(ROOT, to)}`);
}

async function runGuest(label: string, node: string): Promise<Outcome> {
  const spec = KERNELS.find((k) => k.label === label)!;
  const started = performance.now();
  const kernel = fetchKernel(spec);
  const init = fs.readFileSync(path.join(ROOT, 'scripts', 'test-kernels-init.sh'), 'utf8');
  const initramfs = initramfsWithInit(kernel, init);
  const out = runDir(label);
  fs.writeFileSync(path.join(out, 'job.sh'), jobScript({ node, out, label, guest: true }));
  console.log(`\n=== ${label}: Linux ${kernel.release} (${spec.distro}, ${kernel.version}) in QEMU (TCG)`);
  let exit: number | undefined;
  let note: string | undefined;
  const guest = bootGuest({
    kernel,
    initramfs,
    append: `node_ksm.out=${out} node_ksm.tree=${ROOT}`,
    memoryMiB: Number(values.memory),
    cpus: 2,
    shares: [
      { tag: 'host', path: '/', readonly: true },
      { tag: 'out', path: out, readonly: false },
      // The work tree again on its own, mounted after the guest's tmpfs: a clone under
      // /tmp (as CI's is) would otherwise be hidden by the guest's empty /tmp.
      { tag: 'tree', path: ROOT, readonly: true },
    ],
    timeoutMs,
    onLine: (line) => {
      const m = /NODE_KSM_GUEST_EXIT (\d+)(.*)/.exec(line);
      if (m) {
        exit = Number(m[1]);
        if (m[2]?.trim()) note = m[2].trim();
      }
      process.stdout.write(`[${label}] ${line}\n`);
    },
  });
  const r = await guest.done;
  const seconds = (performance.now() - started) / 1000;
  if (r.timedOut) note = `no result within ${values.timeout} s: the guest was killed`;
  else if (exit === undefined) note = `the guest stopped without a result (QEMU exit ${r.code})`;
  if (values.capture && exit === 0) keepFixture(out, label);
  const outcome: Outcome = {
    label,
    release: kernel.release,
    ok: exit === 0,
    seconds,
    tests: counts(path.join(out, 'vitest.json')),
    note,
  };
  fs.rmSync(out, { recursive: true, force: true });
  return outcome;
}

function runHost(node: string): Outcome {
  const started = performance.now();
  const out = runDir('host');
  fs.writeFileSync(path.join(out, 'job.sh'), jobScript({ node, out, label: 'host', guest: false }));
  const release = sh('uname', ['-r']);
  console.log(`\n=== host: Linux ${release}, directly`);
  const r = spawnSync('sh', [path.join(out, 'job.sh')], { cwd: ROOT, stdio: 'inherit' });
  if (values.capture && r.status === 0) keepFixture(out, 'host');
  const outcome: Outcome = {
    label: 'host',
    release,
    ok: r.status === 0,
    seconds: (performance.now() - started) / 1000,
    tests: counts(path.join(out, 'vitest.json')),
  };
  fs.rmSync(out, { recursive: true, force: true });
  return outcome;
}

ensureHostTools();
// The guests run the work tree's dist/ (CLI tests) and lib/ as they are now.
sh('npx', ['tsc', '-p', 'tsconfig.build.json']);
const node = sh('bash', [path.join(ROOT, 'scripts', 'node-dist.sh'), values.node]);
const outcomes: Outcome[] = [];
for (const label of labels) {
  try {
    outcomes.push(label === 'host' ? runHost(node) : await runGuest(label, node));
  } catch (err) {
    outcomes.push({ label, release: '?', ok: false, seconds: 0, note: (err as Error).message });
  }
}

console.log('\ntest:kernels summary');
for (const o of outcomes) {
  const t = o.tests
    ? `${o.tests.passed} passed, ${o.tests.failed} failed, ${o.tests.skipped} skipped`
    : 'no test report';
  console.log(
    `  ${o.ok ? 'ok  ' : 'FAIL'} ${o.label.padEnd(5)} ${o.release.padEnd(22)} ${t.padEnd(40)} ${o.seconds.toFixed(0)} s${o.note ? `  (${o.note})` : ''}`,
  );
}
const passed = outcomes.reduce((n, o) => n + (o.tests?.passed ?? 0), 0);
const failed = outcomes.reduce((n, o) => n + (o.tests?.failed ?? 0), 0) + outcomes.filter((o) => !o.ok).length;
console.log(`kernels: ${passed} passed, ${failed} failed`);
process.exit(outcomes.every((o) => o.ok) ? 0 : 1);
