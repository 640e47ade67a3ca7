/**
 * Child processes for the tests of machine-wide state: boost holders in other processes
 * (SIGKILL, signals, exits) and children that try to configure without permission. They
 * run the library's TypeScript through tsx, as the test files do, with the addon the
 * tests load; nothing is compiled, so no other test run's rebuild of dist/ gets in the way.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';

const root = path.resolve(__dirname, '../..');
export const CHILD = path.join(root, 'test/fixtures/boost-child.mts');
export const ADDON = path.join(root, 'build/Release/ksm.node');
/** `--import` this in a child's argv to run TypeScript; absolute, so any cwd and user will do. */
export const TSX = pathToFileURL(require.resolve('tsx')).href;
/** A library module's path, for a child script to require() under TSX. */
export const libModule = (name: string) => path.join(root, 'lib', `${name}.ts`);

export interface Child {
  proc: ChildProcessWithoutNullStreams;
  /** The next JSON line the child prints. */
  next(): Promise<Record<string, unknown>>;
  send(command: string): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts test/fixtures/boost-child.mts: it boosts with `options` and then obeys commands on stdin. */
export function startChild(options: Record<string, unknown>): Child {
  const proc = spawn(process.execPath, ['--import', TSX, CHILD, JSON.stringify(options)], {
    env: { ...process.env, NODE_KSM_BINARY: ADDON },
    stdio: 'pipe',
  });
  const lines = readline.createInterface({ input: proc.stdout });
  const queue: string[] = [];
  const waiting: Array<(line: string) => void> = [];
  lines.on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else queue.push(line);
  });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = once(proc, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  return {
    proc,
    exited,
    send: (command) => proc.stdin.write(`${command}\n`),
    next: () =>
      new Promise((resolve, reject) => {
        const take = (line: string) => resolve(JSON.parse(line) as Record<string, unknown>);
        const q = queue.shift();
        if (q !== undefined) return take(q);
        waiting.push(take);
        void exited.then((e) => reject(new Error(`child exited (${e.code ?? e.signal}) before answering: ${stderr}`)));
      }),
  };
}
