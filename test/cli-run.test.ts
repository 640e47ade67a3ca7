/**
 * `node-ksm run`: real commands under the compiled CLI. Merging is checked in the kernel's
 * own figures of the command (its ksm_stat while a boosted ksmd merges it), against a
 * control process that does the same without `node-ksm run`.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeAll, describe, expect, test, vi } from 'vitest';
import { inTerminalForeground, mergeAnyOf, splitRunArgs, type RunReport } from '../lib/cli/run';
import { pageSize } from '../lib/memory';
import { processStats } from '../lib/stats';
import { ensureDist, ROOT } from './helpers/dist';
import { pollUntil, requireKsm, withFastKsm } from './helpers/ksm';

vi.setConfig({ testTimeout: 600_000 });

const MAIN = path.join(ROOT, 'dist/cli/main.js');
const FIXTURES = path.join(__dirname, 'fixtures/kernels');

beforeAll(() => {
  ensureDist();
  // ensureDist() looks at lib/*.ts only; the CLI lives in lib/cli.
  if (fs.statSync(MAIN).mtimeMs < fs.statSync(path.join(ROOT, 'lib/cli/run.ts')).mtimeMs)
    spawnSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'ignore' });
}, 120_000);

const running: ChildProcess[] = [];
afterEach(() => {
  for (const c of running.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

interface Wrapped {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  /** The --json records on stderr so far. */
  reports: () => RunReport[];
  started: Promise<RunReport>;
  ended: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `node-ksm run --json -- ...command`, stdin a pipe the test holds. */
function wrap(command: string[], flags: string[] = ['--json']): Wrapped {
  const child = spawn(process.execPath, [MAIN, 'run', ...flags, '--', ...command], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  running.push(child);
  let out = '';
  let err = '';
  let onStart: (r: RunReport) => void = () => {};
  const reports = () =>
    err
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as RunReport);
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    const s = reports().find((r) => r.event === 'started');
    if (s) onStart(s);
  });
  const started = new Promise<RunReport>((resolve, reject) => {
    onStart = resolve;
    child.once('close', () => reject(new Error(`node-ksm run ended before its command started: ${err}`)));
  });
  started.catch(() => {});
  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })),
  );
  return { child, out: () => out, err: () => err, reports, started, ended };
}

describe('node-ksm run: arguments', () => {
  test('the command starts at -- or at the first word that is not a flag', () => {
    expect(splitRunArgs(['--json', '--', 'redis-server', '--port', '1'])).toEqual({
      flags: ['--json'],
      command: ['redis-server', '--port', '1'],
    });
    expect(splitRunArgs(['redis-server', '--json'])).toEqual({ flags: [], command: ['redis-server', '--json'] });
    expect(splitRunArgs(['--json'])).toEqual({ flags: ['--json'], command: [] });
    expect(splitRunArgs(['--', '--weird-name'])).toEqual({ flags: [], command: ['--weird-name'] });
  });

  test('no command, or an unknown flag: usage, exit 2, nothing run', () => {
    for (const args of [['run'], ['run', '--json'], ['run', '--bogus', 'true']]) {
      const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8' });
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toContain('Usage: node-ksm run');
    }
    const help = spawnSync(process.execPath, [MAIN, 'run', '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('PR_SET_MEMORY_MERGE');
  });
});

describe('node-ksm run: telling whether a process merges', () => {
  const read = (...p: string[]) => fs.readFileSync(path.join(FIXTURES, ...p), 'utf8');

  test('ksm_merge_any where the kernel prints it (6.14+)', () => {
    const no = read('6.18', 'ksm_stat');
    expect(mergeAnyOf(no, read('6.18', 'smaps'))).toEqual({ mergeAny: false, method: 'ksm_stat' });
    expect(mergeAnyOf(no.replace('ksm_merge_any: no', 'ksm_merge_any: yes'), undefined)).toEqual({
      mergeAny: true,
      method: 'ksm_stat',
    });
  });

  test('before 6.14: a VM_MERGEABLE mapping in smaps', () => {
    for (const kernel of ['6.4', '6.8', '6.1']) {
      const smaps = read(kernel, 'smaps');
      expect(smaps, kernel).toMatch(/VmFlags:.* mg/);
      expect(mergeAnyOf(read(kernel, 'ksm_stat'), smaps), kernel).toEqual({ mergeAny: true, method: 'smaps' });
      expect(mergeAnyOf(read(kernel, 'ksm_stat'), smaps.replace(/ mg/g, '')), kernel).toEqual({
        mergeAny: false,
        method: 'smaps',
      });
    }
    // 5.15 has no ksm_stat at all (nor the prctl); smaps still answers.
    expect(mergeAnyOf(undefined, read('5.15', 'smaps'))?.method).toBe('smaps');
  });

  test('an exited process (no mm: empty files) is unknown, not "no"', () => {
    expect(mergeAnyOf('', '')).toBeUndefined();
    expect(mergeAnyOf(undefined, undefined)).toBeUndefined();
  });

  test('terminal foreground: pgrp equals tpgid', () => {
    // pid (comm) state ppid pgrp session tty_nr tpgid ...
    expect(inTerminalForeground('10 (a b) S 1 10 10 34816 10 4194560 0')).toBe(true);
    expect(inTerminalForeground('10 (node) S 1 10 10 34816 12 4194560 0')).toBe(false);
    expect(inTerminalForeground('10 (node) S 1 10 10 0 -1 4194560 0')).toBe(false);
    expect(inTerminalForeground(read('malformed', 'stat-odd-comm'))).toBe(false);
    // The test runner has no terminal.
    expect(inTerminalForeground()).toBe(false);
  });
});

describe('node-ksm run: exit status', () => {
  test("the command's exit code", async () => {
    for (const code of [0, 1, 7, 125]) {
      const w = wrap(['sh', '-c', `exit ${code}`]);
      expect(await w.ended).toEqual({ code, signal: null });
      const exited = w.reports().find((r) => r.event === 'exited');
      expect(exited).toMatchObject({ exitCode: code, signal: null, command: ['sh', '-c', `exit ${code}`] });
    }
  });

  test('127 for a command that does not exist, 126 for one that cannot be executed', async () => {
    const missing = wrap(['/nonexistent/node-ksm-test-command']);
    expect(await missing.ended).toEqual({ code: 127, signal: null });
    expect(missing.err()).toContain('command not found');
    const notExec = wrap([path.join(ROOT, 'package.json')]);
    expect(await notExec.ended).toEqual({ code: 126, signal: null });
    expect(notExec.err()).toContain('permission denied');
  });

  test('dies of the signal the command died of; core-dumping signals end in 128+n', async () => {
    for (const sig of ['TERM', 'KILL', 'HUP', 'INT'] as const) {
      const w = wrap(['sh', '-c', `kill -${sig} $$`]);
      expect(await w.ended, sig).toEqual({ code: null, signal: `SIG${sig}` });
    }
    const segv = wrap(['sh', '-c', 'kill -SEGV $$']);
    expect(await segv.ended).toEqual({ code: 128 + 11, signal: null });
    expect(segv.reports().find((r) => r.event === 'exited')).toMatchObject({ signal: 'SIGSEGV', exitCode: null });
  });

  test('stdin, stdout and stderr are the command’s own', async () => {
    const w = wrap(['sh', '-c', 'read line; echo "out:$line"; echo "err:$line" >&2']);
    w.child.stdin!.end('hello\n');
    expect((await w.ended).code).toBe(0);
    expect(w.out()).toBe('out:hello\n');
    expect(w.err()).toContain('err:hello\n');
  });
});

describe('node-ksm run: signals', () => {
  // The shell runs its traps between two short sleeps; each trap prints what arrived.
  const TRAPS =
    'trap "echo got HUP" HUP; trap "echo got USR2" USR2; trap "echo got INT" INT; ' +
    'trap "echo got TERM; exit 42" TERM; echo ready; while :; do sleep 0.02; done';

  async function ready(w: Wrapped): Promise<void> {
    await w.started;
    expect(await pollUntil(() => w.out().includes('ready'), 10_000)).toBe(true);
  }

  test('SIGHUP, SIGUSR2, SIGINT and SIGTERM reach the command; node-ksm ends with its status', async () => {
    const w = wrap(['sh', '-c', TRAPS]);
    await ready(w);
    for (const sig of ['SIGHUP', 'SIGUSR2', 'SIGINT'] as const) {
      w.child.kill(sig);
      const name = sig.slice(3);
      expect(await pollUntil(() => w.out().includes(`got ${name}`), 10_000), sig).toBe(true);
    }
    // Still running after all three: node-ksm itself did not die of SIGINT or SIGHUP.
    expect(w.child.exitCode).toBeNull();
    w.child.kill('SIGTERM');
    expect(await w.ended).toEqual({ code: 42, signal: null });
    expect(w.out()).toBe('ready\ngot HUP\ngot USR2\ngot INT\ngot TERM\n');
  });

  test('a command that does not handle SIGTERM dies of it, and so does node-ksm', async () => {
    const w = wrap(['sleep', '30']);
    await w.started;
    w.child.kill('SIGTERM');
    expect(await w.ended).toEqual({ code: null, signal: 'SIGTERM' });
  });
});

describe('node-ksm run: merging', () => {
  /**
   * A Node process holding 2 x 16 MiB of plain Buffers (no madvise anywhere), the second a
   * copy of the first, every page different from the others; prints its pid and waits for
   * stdin to close.
   */
  const HOLDER = `
    const crypto = require('node:crypto');
    const a = crypto.randomBytes(16 << 20);
    const b = Buffer.allocUnsafeSlow(a.length);
    a.copy(b);
    globalThis.keep = [a, b];
    process.stdout.write('ready ' + process.pid + '\\n');
    process.stdin.resume();
    process.stdin.on('end', () => process.exit(0));`;
  const PAGES = (16 << 20) / pageSize;

  test("a command's own duplicate memory merges; the same program outside does not; node-ksm's own memory is not left mergeable", async (ctx) => {
    requireKsm(ctx);
    await withFastKsm(async () => {
      const w = wrap([process.execPath, '-e', HOLDER]);
      const control = spawn(process.execPath, ['-e', HOLDER], { stdio: ['pipe', 'pipe', 'inherit'] });
      running.push(control);
      let controlOut = '';
      control.stdout.on('data', (d: Buffer) => (controlOut += d.toString()));

      const started = await w.started;
      expect(started).toMatchObject({ mergeAny: true, method: 'ksm_stat' });
      expect(await pollUntil(() => w.out().startsWith('ready') && controlOut.startsWith('ready'), 30_000)).toBe(true);
      expect(Number(w.out().split(' ')[1])).toBe(started.pid);

      // Both copies of every page: 2 x PAGES merging pages in the command (V8's heap and
      // the rest of Node may add a few of their own).
      const merged = await pollUntil(() => (processStats(started.pid).mergingPages ?? 0) >= 2 * PAGES, 60_000);
      expect(merged, `merging pages ${processStats(started.pid).mergingPages}`).toBe(true);
      const own = fs.readFileSync(`/proc/${started.pid}/ksm_stat`, 'utf8');
      expect(own).toContain('ksm_merge_any: yes');

      // The control process ran through the same scans and has nothing mergeable.
      expect(fs.readFileSync(`/proc/${control.pid}/ksm_stat`, 'utf8')).toContain('ksm_merge_any: no');
      expect(processStats(control.pid).mergingPages).toBe(0);

      // node-ksm run itself: the flag is off again, no mapping of it is mergeable.
      expect(fs.readFileSync(`/proc/${w.child.pid}/ksm_stat`, 'utf8')).toContain('ksm_merge_any: no');
      expect(fs.readFileSync(`/proc/${w.child.pid}/smaps`, 'utf8')).not.toMatch(/^VmFlags:.* mg/m);

      // Past the next of node-ksm's once-a-second samples of the command's figures.
      await sleep(1500);
      control.stdin.end();
      w.child.stdin!.end();
      expect(await w.ended).toEqual({ code: 0, signal: null });
      const exited = w.reports().find((r) => r.event === 'exited');
      // Sampled once a second while it ran: the merged pages were seen.
      expect(exited?.ksm?.mergingPages ?? 0, JSON.stringify(exited)).toBeGreaterThanOrEqual(2 * PAGES);
    });
  });

  test('a child of the command inherits merging too (fork)', async () => {
    const w = wrap(['sh', '-c', 'sleep 30 & echo $!; wait']);
    const started = await w.started;
    expect(await pollUntil(() => /^\d+\n/.test(w.out()), 10_000)).toBe(true);
    const grandchild = Number(w.out().trim());
    expect(grandchild).not.toBe(started.pid);
    expect(fs.readFileSync(`/proc/${grandchild}/ksm_stat`, 'utf8')).toContain('ksm_merge_any: yes');
    process.kill(grandchild, 'SIGTERM');
    expect(await w.ended).toEqual({ code: 0, signal: null });
  });
});
