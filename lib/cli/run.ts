/**
 * `node-ksm run [--json] [--] COMMAND [ARGS...]`: runs a program with process-wide
 * merging on (`prctl(PR_SET_MEMORY_MERGE)`, what systemd's `MemoryKSM=yes` does), for
 * programs that cannot call madvise themselves: redis-server, qemu, another Node service.
 *
 * The flag is a property of the mm. What the kernel does with it (mm/ksm.c, kernel/fork.c,
 * fs/exec.c):
 * - fork copies it to the child (`ksm_fork`, since 6.4, when the prctl appeared);
 * - execve kept it only from 6.7 on ("mm/ksm: support fork/exec for prctl" put it in
 *   MMF_INIT_MASK); 6.4-6.6 drop it;
 * - and until "mm/ksm: fix ksm exec support for prctl" (6.9, backported to 6.6.y/6.8.y)
 *   the exec'd mm kept the flag but was never entered in ksmd's list, so nothing of it
 *   was scanned; until "mm/ksm: fix exec/fork inheritance support for prctl" (2025) a
 *   fast ksmd could scan the half-built mm during execve, find nothing mergeable and
 *   clear the flag.
 *
 * So the flag is set on this process for exactly as long as the spawn takes (Node's spawn
 * returns once the child has exec'd, so the child's new mm already carries it) and cleared
 * right after, which also unmerges whatever ksmd merged of this wrapper meanwhile: the
 * wrapper's own memory is mergeable for milliseconds, never while the command runs. Before
 * the command, a throwaway `/bin/sh` is spawned the same way to show that this kernel keeps
 * the flag across execve, so on a kernel that does not, the command is never started; the
 * command itself is then checked too (its `ksm_stat`, or its VMAs' `mg` flag before 6.14),
 * which catches the ksmd race above.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { constants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { KsmError } from '../errors';
import { processMerging, setProcessMerging } from '../memory';
import { parseKsmStat, parseSmaps } from '../procfs';
import { processStats, type ProcessStats } from '../stats';
import { UsageError, type Options, type Values } from './args';

export const RUN_USAGE =
  'node-ksm run [--json] [--] COMMAND [ARGS...]\n' +
  "  Runs COMMAND with process-wide KSM merging on (prctl PR_SET_MEMORY_MERGE, like systemd's MemoryKSM=yes):\n" +
  "  all its anonymous memory, and its children's, becomes mergeable. Needs Linux 6.7+ (6.4-6.6 drop the\n" +
  "  setting at execve; the kernel is checked before COMMAND starts). stdin/stdout/stderr are COMMAND's;\n" +
  '  SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are passed on (SIGINT, SIGQUIT and\n' +
  '  SIGWINCH only when they did not come from the terminal, which sends them to COMMAND itself).\n' +
  "  Exits with COMMAND's status, or dies of the same signal. 125: merging could not be turned on\n" +
  '  (COMMAND was not run, or was stopped at once); 126: COMMAND cannot be executed; 127: not found.\n' +
  '  --json: one JSON line on stderr when COMMAND has started (its pid, how merging was checked) and\n' +
  '  one when it has ended (status, its last KSM figures).';

export const RUN_OPTIONS: Options = {};

/** node-ksm's own failure, as `env`, `timeout` and `chroot` report theirs. */
export const EXIT_RUN_FAILED = 125;
export const EXIT_CANNOT_EXECUTE = 126;
export const EXIT_NOT_FOUND = 127;

/**
 * Splits `run`'s arguments into node-ksm's flags and the command: the command starts at
 * `--` or at the first argument that is not a flag, so `node-ksm run redis-server --port 1`
 * needs no `--`.
 */
export function splitRunArgs(args: readonly string[]): { flags: string[]; command: string[] } {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') return { flags: args.slice(0, i), command: args.slice(i + 1) };
    if (!a.startsWith('-') || a === '-') return { flags: args.slice(0, i), command: args.slice(i) };
  }
  return { flags: [...args], command: [] };
}

export type MergeCheckMethod = 'ksm_stat' | 'smaps';

/**
 * Whether a process runs with process-wide merging, from the text of its `ksm_stat` and
 * `smaps` (undefined when unreadable): `ksm_merge_any` where the kernel prints it (6.14+),
 * otherwise whether any of its mappings carries VM_MERGEABLE (`mg` in VmFlags), which
 * the kernel sets on every compatible mapping of a merge-any mm and which a freshly
 * exec'd program without it has nowhere. Undefined when neither says (no mm: the
 * process has exited).
 */
export function mergeAnyOf(
  ksmStat: string | undefined,
  smaps: string | undefined,
): { mergeAny: boolean; method: MergeCheckMethod } | undefined {
  if (ksmStat !== undefined && ksmStat.trim() !== '') {
    try {
      const { mergeAny } = parseKsmStat(ksmStat);
      if (mergeAny !== undefined) return { mergeAny, method: 'ksm_stat' };
    } catch {
      // not ksm_stat text: fall back to smaps
    }
  }
  if (smaps === undefined || smaps.trim() === '') return undefined;
  return { mergeAny: parseSmaps(smaps).some((vma) => vma.vmFlags.includes('mg')), method: 'smaps' };
}

function readProc(pid: number, file: string): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Checks a child that was spawned with the flag set. `ksm_merge_any: no` is final (the
 * flag is gone for good); with the smaps method, the mappings that carry `mg` appear as
 * the program loads, so it polls up to `settleMs` for one. Undefined when the process
 * exited before it could be read.
 */
export async function checkChild(
  pid: number,
  settleMs: number,
): Promise<{ mergeAny: boolean; method: MergeCheckMethod } | undefined> {
  const deadline = Date.now() + settleMs;
  for (;;) {
    const r = mergeAnyOf(readProc(pid, 'ksm_stat'), readProc(pid, 'smaps'));
    if (r === undefined || r.mergeAny || r.method === 'ksm_stat' || Date.now() >= deadline) return r;
    await sleep(10);
  }
}

/**
 * Spawns with the flag set on this process for the duration of the spawn only (see the
 * file comment). When the flag was already on (this process runs under `node-ksm run` or
 * MemoryKSM=yes itself), it is left on.
 */
function spawnMerging(file: string, args: string[], options: Parameters<typeof spawn>[2]): ChildProcess {
  const wasOn = processMerging();
  if (!wasOn) setProcessMerging(true);
  try {
    return spawn(file, args, options);
  } finally {
    if (!wasOn) setProcessMerging(false);
  }
}

function notInherited(detail: string): KsmError {
  const err = new KsmError(
    `process-wide merging does not survive execve on this kernel (Linux ${os.release()}): ${detail}. ` +
      'node-ksm run needs Linux 6.7 or later (or a kernel with "mm/ksm: support fork/exec for prctl")',
    'ERR_KSM_UNSUPPORTED',
  );
  return Object.assign(err, { exitCode: EXIT_RUN_FAILED });
}

/**
 * Shows, with a throwaway `/bin/sh` waiting on its stdin, that a child spawned with the
 * flag set still has it after execve. Throws ERR_KSM_UNSUPPORTED when it does not. Skipped
 * (undefined) where there is no /bin/sh; the command itself is checked anyway.
 */
export async function probeExecInheritance(): Promise<MergeCheckMethod | undefined> {
  if (!fs.existsSync('/bin/sh')) return undefined;
  // A ksmd scanning with sleep 0 can drop the flag of a child in the middle of its
  // execve (see the file comment): a kernel that really drops it fails every time.
  let last: { mergeAny: boolean; method: MergeCheckMethod } | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const probe = spawnMerging('/bin/sh', ['-c', 'read _'], { stdio: ['pipe', 'ignore', 'ignore'] });
    const exited = new Promise<void>((resolve) => {
      probe.once('exit', () => resolve());
      probe.once('error', () => resolve());
    });
    try {
      if (probe.pid === undefined) return undefined;
      last = await checkChild(probe.pid, 500);
    } finally {
      probe.stdin?.end();
      probe.kill('SIGKILL');
      await exited;
    }
    if (last === undefined || last.mergeAny) return last?.method;
  }
  throw notInherited(
    last?.method === 'ksm_stat'
      ? 'a child spawned with PR_SET_MEMORY_MERGE on shows ksm_merge_any: no'
      : 'no mapping of a child spawned with PR_SET_MEMORY_MERGE on is mergeable',
  );
}

/** Signals passed on to the command. SIGKILL and SIGSTOP cannot be caught. */
const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH'];
/** What a terminal sends to its whole foreground process group, the command included. */
const FROM_TERMINAL = new Set<NodeJS.Signals>(['SIGINT', 'SIGQUIT', 'SIGWINCH']);

/**
 * Whether this process is in the foreground process group of its terminal (fields pgrp
 * and tpgid of /proc/self/stat): then a Ctrl-C reached the command (same group) as well,
 * and passing it on would deliver it twice (redis-server exits without saving on a
 * second SIGINT).
 */
export function inTerminalForeground(statText: string | undefined = readProc(process.pid, 'stat')): boolean {
  if (statText === undefined) return false;
  const fields = statText.slice(statText.lastIndexOf(')') + 2).split(' ');
  const pgrp = Number(fields[2]);
  const tpgid = Number(fields[5]);
  return tpgid > 0 && tpgid === pgrp;
}

/**
 * Signals whose default action ends a Node process the way it ends any other, so that
 * raising one on ourselves shows the parent the same death as the command's. Node starts
 * its inspector on SIGUSR1 and ignores SIGPIPE; the core-dumping signals would dump this
 * wrapper: those end in 128 + the signal's number, as a shell reports them.
 */
const RERAISE = new Set<NodeJS.Signals>(['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGKILL', 'SIGALRM', 'SIGUSR2']);

export interface RunReport {
  event: 'started' | 'exited';
  command: string[];
  pid: number;
  /** How the command's merging was checked (`undefined`: it exited before it could be). */
  mergeAny?: boolean;
  method?: MergeCheckMethod;
  exitCode?: number | null;
  signal?: NodeJS.Signals | null;
  /** The command's KSM figures at the last sample (once a second) before it ended. */
  ksm?: ProcessStats;
  elapsedMs?: number;
}

/**
 * Runs the command and resolves with the exit code for node-ksm to end with (after the
 * command has ended). When the command died of a signal that can be mirrored, this
 * process raises it on itself instead and never resolves.
 *
 * Long because the child's lifetime is one scope: the signal handlers it installs, the
 * sampling timer and the exit handling all close over the same child and must be undone
 * together on every path out.
 */
// eslint-disable-next-line max-lines-per-function -- the child's lifetime is one scope: see above
export async function runCommand(
  command: readonly string[],
  options: { json?: boolean; report?: (r: RunReport) => void } = {},
): Promise<number> {
  const [file, ...args] = command;
  if (file === undefined || file === '') throw new UsageError('run needs a command to run');
  const report =
    options.report ?? (options.json ? (r: RunReport) => process.stderr.write(`${JSON.stringify(r)}\n`) : () => {});
  try {
    // Before 6.4, or without CONFIG_KSM, the prctl is EINVAL: ERR_KSM_UNSUPPORTED.
    await probeExecInheritance();
  } catch (err) {
    if (err instanceof KsmError && err.code === 'ERR_KSM_UNSUPPORTED' && !('exitCode' in err)) {
      throw Object.assign(
        new KsmError(
          `process-wide merging (PR_SET_MEMORY_MERGE) needs Linux 6.4 or later with KSM; this kernel is ${os.release()} (${err.message})`,
          'ERR_KSM_UNSUPPORTED',
          { cause: err },
        ),
        { exitCode: EXIT_RUN_FAILED },
      );
    }
    throw Object.assign(err as Error, { exitCode: EXIT_RUN_FAILED });
  }

  const started = Date.now();
  const child = spawnMerging(file, args, { stdio: 'inherit' });
  const forward = (sig: NodeJS.Signals) => {
    if (FROM_TERMINAL.has(sig) && inTerminalForeground()) return;
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
  };
  for (const sig of FORWARDED) process.on(sig, forward);
  const stopForwarding = () => {
    for (const sig of FORWARDED) process.off(sig, forward);
  };

  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null } | { error: Error }>((resolve) => {
    child.once('error', (error) => resolve({ error }));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  if (child.pid === undefined) {
    stopForwarding();
    const r = await ended;
    const error = 'error' in r ? (r.error as NodeJS.ErrnoException) : undefined;
    const notFound = error?.code === 'ENOENT';
    const why = notFound
      ? 'command not found'
      : error?.code === 'EACCES'
        ? 'permission denied'
        : (error?.message ?? 'cannot be executed');
    process.stderr.write(`node-ksm run: ${file}: ${why}\n`);
    return notFound ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE;
  }
  const pid = child.pid;

  let last: ProcessStats | undefined;
  const sample = () => {
    try {
      const s = processStats(pid);
      // An exited (zombie) process has no mm, and no figures.
      if (s.mergingPages !== undefined || s.rmapItems !== undefined) last = s;
    } catch {
      // gone, or a kernel without per-process figures
    }
  };
  const sampler = setInterval(sample, 1000);
  sampler.unref();

  const check = await checkChild(pid, 500);
  // With ksm_stat the flag can still be cleared by ksmd until the program's first
  // mergeable mapping exists; by then (well within this) it is settled.
  const recheck = check?.method === 'ksm_stat' ? await sleep(100).then(() => checkChild(pid, 0)) : check;
  const verdict = recheck ?? check;
  if (verdict !== undefined && !verdict.mergeAny) {
    child.kill('SIGKILL');
    await ended;
    clearInterval(sampler);
    stopForwarding();
    throw notInherited(
      `${file} (pid ${pid}) came up without it` +
        (verdict.method === 'ksm_stat'
          ? ' (if this kernel kept it for the check before, ksmd dropped it during execve: a race fixed by "mm/ksm: fix exec/fork inheritance support for prctl"; try again); it was stopped'
          : '; it was stopped'),
    );
  }
  report({ event: 'started', command: [...command], pid, mergeAny: verdict?.mergeAny, method: verdict?.method });
  sample();

  const r = await ended;
  clearInterval(sampler);
  const code = 'error' in r ? null : r.code;
  const signal = 'error' in r ? null : r.signal;
  report({
    event: 'exited',
    command: [...command],
    pid,
    exitCode: code,
    signal,
    ksm: last,
    elapsedMs: Date.now() - started,
  });
  stopForwarding();
  if (signal !== null) {
    if (RERAISE.has(signal)) {
      process.kill(process.pid, signal);
      // Delivered on the way back to user space; the timer is for a handler someone else installed.
      await sleep(1000);
    }
    return 128 + (constants.signals[signal] ?? 0);
  }
  return code ?? EXIT_RUN_FAILED;
}

export function runCommandFromCli(values: Values, command: string[]): Promise<number> {
  return runCommand(command, { json: values.json === true });
}
