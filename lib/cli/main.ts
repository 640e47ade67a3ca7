#!/usr/bin/env node
/**
 * node-ksm: what Kernel Samepage Merging is doing on this machine, who it saves memory
 * for, and the knobs to change it. Exit codes: 0 ok, 1 failure, 2 usage.
 */
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../binding';
import { UsageError, parseCount, parseDuration, parseFlags, str, type Options, type Values } from './args';
import { TUNE_OPTIONS, holdBoost, renderChanges, restore, tune, tuneSettings } from './control';
import { snakeCase } from '../procfs';
import { formatSeconds, table } from './format';
import { renderStatus, status } from './status';
import { renderTop, top } from './top';
import { startExporter } from './exporter';
import { watch } from './watch';
import { AUTOTUNE_OPTIONS, AUTOTUNE_USAGE, autotuneCommand } from './autotune';
import { BENCH_OPTIONS, BENCH_USAGE, benchCommand } from './bench';
import { RUN_OPTIONS, RUN_USAGE, runCommandFromCli, splitRunArgs } from './run';

interface Command {
  summary: string;
  usage: string;
  options: Options;
  /**
   * Takes a command line of its own after its flags (`node-ksm run [flags] [--] CMD ...`):
   * splits the arguments into its flags and that command.
   */
  split?(args: string[]): { flags: string[]; command: string[] };
  /** A number is the exit code (`run` ends with its command's). */
  run(values: Values, command: string[]): Promise<number | void> | number | void;
}

const out = process.stdout;
const print = (text: string) => out.write(`${text}\n`);
const printJson = (value: unknown) => print(JSON.stringify(value, null, 2));

/** AbortSignal that fires on Ctrl-C or SIGTERM, for the commands that run until stopped. */
function stopSignal(): AbortSignal {
  const ac = new AbortController();
  const stop = (sig: NodeJS.Signals) => {
    // A second Ctrl-C means "now".
    if (ac.signal.aborted) process.exit(sig === 'SIGINT' ? 130 : 143);
    ac.abort();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  return ac.signal;
}

const COMMANDS: Record<string, Command> = {
  status: {
    summary: 'settings, pages, savings and advice',
    usage: 'node-ksm status [--json]',
    options: {},
    run(v) {
      const r = status();
      if (v.json) printJson(r);
      else print(renderStatus(r));
    },
  },
  top: {
    summary: 'processes ranked by what KSM saves them',
    usage: 'node-ksm top [--limit N] [--json]',
    options: { limit: { type: 'string', short: 'n' } },
    run(v) {
      const r = top(parseCount(str(v, 'limit') ?? '20', 'limit', 1));
      if (v.json) printJson(r);
      else print(renderTop(r, out.isTTY ? out.columns : 200));
    },
  },
  watch: {
    summary: 'live view of saved bytes and ksmd CPU; --svg writes the chart',
    usage: 'node-ksm watch [--interval 1s] [--duration 5m] [--svg FILE] [--json]',
    options: { interval: { type: 'string' }, duration: { type: 'string' }, svg: { type: 'string' } },
    async run(v) {
      const intervalMs = parseDuration(str(v, 'interval') ?? '1s', 'interval');
      if (intervalMs < 10) throw new UsageError('--interval must be at least 10ms');
      const duration = str(v, 'duration');
      const svgFile = str(v, 'svg');
      await watch({
        intervalMs,
        durationMs: duration === undefined ? undefined : parseDuration(duration, 'duration'),
        svgFile,
        json: v.json === true,
        out,
        signal: stopSignal(),
      });
      if (svgFile !== undefined && !v.json) process.stderr.write(`Wrote ${svgFile}\n`);
    },
  },
  tune: {
    summary: 'change settings (root); prints before and after',
    usage:
      'node-ksm tune [--run 0|1|2] [--pages-to-scan N] [--sleep-ms N] [--smart-scan 0|1] [--use-zero-pages 0|1]\n' +
      '              [--merge-across-nodes 0|1] [--max-page-sharing N] [--stable-node-chains-prune-ms N]\n' +
      '              [--advisor none|scan-time] [--target-scan-time S] [--advisor-max-cpu PERCENT]\n' +
      '              [--advisor-min-pages-to-scan N] [--advisor-max-pages-to-scan N] [--json]\n' +
      '  --run 2 stops ksmd and unmerges every merged page on the machine.',
    options: TUNE_OPTIONS,
    run(v) {
      const partial = tuneSettings(v);
      const r = tune(partial);
      if (v.json) printJson(r);
      else print(`KSM settings changed:\n${renderChanges(r.before, r.after, Object.keys(partial))}`);
    },
  },
  boost: {
    summary: 'scan fast until --for passes or Ctrl-C, then put the settings back (root)',
    usage: 'node-ksm boost [--for 60s] [--pages-to-scan N] [--sleep-ms N] [--json]',
    options: { for: { type: 'string' }, 'pages-to-scan': { type: 'string' }, 'sleep-ms': { type: 'string' } },
    async run(v) {
      const forText = str(v, 'for');
      const forMs = forText === undefined ? undefined : parseDuration(forText, 'for');
      const pages = str(v, 'pages-to-scan');
      const sleep = str(v, 'sleep-ms');
      const r = await holdBoost(
        {
          forMs,
          pagesToScan: pages === undefined ? undefined : parseCount(pages, 'pages-to-scan', 1),
          sleepMillisecs: sleep === undefined ? undefined : parseCount(sleep, 'sleep-ms'),
        },
        stopSignal(),
        (settings, before) => {
          if (v.json) return;
          print(
            `Boosted ${forMs === undefined ? 'until Ctrl-C' : `for ${formatSeconds(forMs / 1000)} (Ctrl-C ends it sooner)`}:`,
          );
          print(renderChanges(before, { ...before, ...settings }));
        },
      );
      if (v.json) printJson(r);
      else if (r.otherHolders > 0)
        print(`Released; ${r.otherHolders} other holder(s) still boost, so the settings stay until they let go.`);
      else
        print(
          `Released after ${formatSeconds(r.heldMs / 1000)}; settings restored:\n${renderChanges({ ...r.before, ...r.boosted }, r.after)}`,
        );
    },
  },
  restore: {
    summary: 'put back the settings a crashed boost left behind (root)',
    usage: 'node-ksm restore [--force] [--json]\n  --force restores even while a live process still holds a boost.',
    options: { force: { type: 'boolean' } },
    async run(v) {
      const r = await restore({ force: v.force === true });
      if (v.json) printJson(r);
      else if (!r.restored)
        print('Nothing to restore: no boost was left behind (or its holder is still alive; --force overrides).');
      else {
        const rows = Object.entries(r.settings ?? {}).map(([k, val]) => [snakeCase(k), String(val)]);
        print(`Restored the settings from before the boost:\n${table(rows, '  ').join('\n')}`);
      }
    },
  },
  exporter: {
    summary: 'serve Prometheus metrics at /metrics',
    usage: 'node-ksm exporter [--port 9464] [--host 127.0.0.1] [--json]',
    options: { port: { type: 'string', short: 'p' }, host: { type: 'string' } },
    async run(v) {
      const port = parseCount(str(v, 'port') ?? '9464', 'port');
      if (port > 65535) throw new UsageError('--port must be at most 65535');
      const signal = stopSignal();
      const { server, url, address } = await startExporter(str(v, 'host') ?? '127.0.0.1', port);
      if (v.json) print(JSON.stringify({ url, address: address.address, port: address.port }));
      else print(`Serving KSM metrics at ${url} (Ctrl-C to stop)`);
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  },
  bench: {
    summary: 'time each scanner policy on K workers x N MiB of identical pages (root; changes settings while it runs)',
    usage: BENCH_USAGE,
    // --json takes a file here (or - for stdout): the results are an array, not a status.
    options: BENCH_OPTIONS,
    async run(v) {
      await benchCommand(v, stopSignal());
    },
  },
  run: {
    summary: 'run a program with process-wide merging on (PR_SET_MEMORY_MERGE, like MemoryKSM=yes)',
    usage: RUN_USAGE,
    options: RUN_OPTIONS,
    split: splitRunArgs,
    run(v, command) {
      return runCommandFromCli(v, command);
    },
  },
  autotune: {
    summary: 'boost ksmd while there is work, idle at the kernel default cost otherwise (root; foreground)',
    usage: AUTOTUNE_USAGE,
    options: AUTOTUNE_OPTIONS,
    async run(v) {
      await autotuneCommand(v, stopSignal());
    },
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'Usage: node-ksm <command> [flags]',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'Every command takes --json (machine-readable output) and --help.',
    'Exit codes: 0 ok, 1 failure, 2 usage. "node-ksm <command> --help" shows its flags.',
  ].join('\n');
}

const FIXES: Record<string, string> = {
  EACCES: 'run as root (sudo node-ksm ...)',
  EPERM: 'run as root (sudo node-ksm ...)',
  EROFS: '/sys is read-only here (a container?): run node-ksm on the host',
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '') {
    process.stderr.write(`${usage()}\n`);
    return 2;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    print(usage());
    return 0;
  }
  if (name === '--version' || name === '-v') {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string };
    print(pkg.version);
    return 0;
  }
  const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!cmd) {
    process.stderr.write(`node-ksm: unknown command "${name}"\n\n${usage()}\n`);
    return 2;
  }
  try {
    const { flags, command } = cmd.split ? cmd.split(rest) : { flags: rest, command: [] };
    const values = parseFlags(flags, cmd.options);
    if (values.help) {
      print(`Usage: ${cmd.usage}`);
      return 0;
    }
    const code = await cmd.run(values, command);
    return typeof code === 'number' ? code : 0;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const badInput =
      err instanceof UsageError ||
      ['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE'].includes(e?.code ?? '');
    if (badInput) {
      process.stderr.write(`node-ksm ${name}: ${e.message}\n\nUsage: ${cmd.usage}\n`);
      return 2;
    }
    const message = e instanceof Error ? e.message : String(err);
    const fix = e?.code !== undefined && FIXES[e.code] && !/root|read-only/.test(message) ? ` (${FIXES[e.code]})` : '';
    process.stderr.write(`node-ksm ${name}: ${message}${fix}\n`);
    if (process.env.NODE_KSM_DEBUG) process.stderr.write(`${e?.stack ?? ''}\n`);
    // `run` ends with 125 for its own failures, so they differ from its command's 1.
    const exitCode = (err as { exitCode?: unknown } | null)?.exitCode;
    return typeof exitCode === 'number' ? exitCode : 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`node-ksm: ${(err as Error)?.message ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
