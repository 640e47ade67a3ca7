/**
 * node-ksm/prometheus and `node-ksm exporter`: the metrics parse as Prometheus text,
 * follow the naming conventions, carry the kernel's figures read at scrape time, and the
 * exporter listens on loopback unless told otherwise.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { Registry } from 'prom-client';
import { afterEach, beforeAll, describe, expect, onTestFinished, test, vi } from 'vitest';
import { alloc, free, pageSize } from '../lib/memory';
import { parseCgroup, processGroups } from '../lib/process-groups';
import { ksmdCpuSeconds } from '../lib/ksmd';
import { collectKsmMetrics } from '../lib/prometheus';
import { processStats, systemStats } from '../lib/stats';
import { ensureDist } from './helpers/dist';
import { restore as writeSysfs } from './helpers/sysfs';
import { fillPages, pollUntil, requireKsm, withFastKsm } from './helpers/ksm';

// Other test runs on this machine may hold the KSM test lock for minutes.
vi.setConfig({ testTimeout: 600_000 });

const ROOT = path.join(__dirname, '..');
const MAIN = path.join(ROOT, 'dist/cli/main.js');

interface Family {
  name: string;
  help: string;
  type: string;
  metrics: Array<{ value: string; labels?: Record<string, string> }>;
}

// The text exposition format, line by line: the parser above is lenient, this is not.
const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const VALUE = '(?:[-+]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE][-+]?\\d+)?|[-+]?Inf|NaN)';
const LABELS = `\\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*")*,?)?\\}`;
const SAMPLE = new RegExp(`^${NAME}(?:${LABELS})? ${VALUE}(?: -?\\d+)?$`);
const HELP = new RegExp(`^# HELP ${NAME} .*$`);
const TYPE = new RegExp(`^# TYPE ${NAME} (?:counter|gauge|histogram|summary|untyped)$`);

function parseExposition(text: string): Map<string, Family> {
  for (const line of text.split('\n')) {
    if (line === '') continue;
    expect(SAMPLE.test(line) || HELP.test(line) || TYPE.test(line), `not exposition text: ${line}`).toBe(true);
  }
  const families = parsePrometheusTextFormat(text) as Family[];
  return new Map(families.map((f) => [f.name, f]));
}

const value = (families: Map<string, Family>, name: string, labels?: Record<string, string>) => {
  const f = families.get(name);
  const m = f?.metrics.find((s) => labels === undefined || JSON.stringify(s.labels) === JSON.stringify(labels));
  return m === undefined ? undefined : Number(m.value);
};

function expectConventions(families: Map<string, Family>): void {
  for (const f of families.values()) {
    expect(f.name, f.name).toMatch(/^ksmd?_[a-z0-9_]+$/);
    expect(f.help.length, f.name).toBeGreaterThan(0);
    // Counters and only counters end in _total.
    expect(f.type === 'COUNTER', f.name).toBe(f.name.endsWith('_total'));
    expect(f.name, f.name).not.toMatch(/millisecs|_ms$|percent/);
  }
}

describe('collectKsmMetrics', () => {
  test('registers the system figures, the settings and ksmd CPU, in Prometheus text', async (ctx) => {
    requireKsm(ctx);
    const registry = new Registry();
    const metrics = collectKsmMetrics(registry);
    const families = parseExposition(await registry.metrics());
    expectConventions(families);
    for (const name of [
      'ksm_pages_sharing',
      'ksm_pages_shared',
      'ksm_saved_bytes',
      'ksm_general_profit_bytes',
      'ksm_full_scans_total',
      'ksm_pages_to_scan',
      'ksm_sleep_seconds',
      'ksm_run',
      'ksmd_cpu_seconds_total',
      'ksm_process_merging_pages',
      'ksm_process_profit_bytes',
      'ksm_page_size_bytes',
    ]) {
      expect(families.has(name), name).toBe(true);
    }
    expect(metrics.names.sort()).toEqual([...families.keys()].sort());
    expect(families.get('ksm_full_scans_total')!.type).toBe('COUNTER');
    expect(families.get('ksm_pages_sharing')!.type).toBe('GAUGE');
    expect(value(families, 'ksm_page_size_bytes')).toBe(pageSize);
    // ksmd's CPU time, read at scrape time: between what /proc said before and after.
    const cpuBefore = ksmdCpuSeconds()!;
    const cpu = value(parseExposition(await registry.metrics()), 'ksmd_cpu_seconds_total');
    expect(cpu).toBeGreaterThanOrEqual(cpuBefore);
    expect(cpu).toBeLessThanOrEqual(ksmdCpuSeconds()!);

    // Settings do not move under the lock: they must agree exactly.
    await withFastKsm(
      async () => {
        const f = parseExposition(await registry.metrics());
        const s = systemStats();
        expect(value(f, 'ksm_pages_to_scan')).toBe(s.pagesToScan);
        expect(value(f, 'ksm_sleep_seconds')).toBe(s.sleepMillisecs! / 1000);
        expect(value(f, 'ksm_run')).toBe(s.run);
        expect(value(f, 'ksm_smart_scan')).toBe(s.smartScan);
        if (s.advisorMode !== undefined) {
          expect(value(f, 'ksm_advisor_mode', { mode: s.advisorMode })).toBe(1);
          expect(f.get('ksm_advisor_mode')!.metrics.filter((m) => m.value === '1').length).toBe(1);
        }
      },
      { pages_to_scan: '1234', sleep_millisecs: '7', run: '0' },
    );
    metrics.unregister();
    expect(await registry.metrics()).toBe('\n');
  });

  test("values are read at scrape time: this process's merging pages after merging", async (ctx) => {
    requireKsm(ctx);
    const registry = new Registry();
    collectKsmMetrics(registry);
    const pages = 256;
    const a = alloc(pages * pageSize);
    const b = alloc(pages * pageSize);
    try {
      fillPages(a, 42, pageSize);
      fillPages(b, 42, pageSize);
      await withFastKsm(async () => {
        expect(await pollUntil(() => (processStats().mergingPages ?? 0) >= 2 * pages, 60_000)).toBe(true);
        const before = processStats();
        const f = parseExposition(await registry.metrics());
        const after = processStats();
        const merging = value(f, 'ksm_process_merging_pages')!;
        expect(merging).toBeGreaterThanOrEqual(Math.min(before.mergingPages!, after.mergingPages!));
        expect(merging).toBeLessThanOrEqual(Math.max(before.mergingPages!, after.mergingPages!));
        expect(merging).toBeGreaterThanOrEqual(2 * pages);
        expect(value(f, 'ksm_process_merged_bytes')).toBe(merging * pageSize);
        // ksm_process_profit as the kernel gave it around the scrape.
        const profit = value(f, 'ksm_process_profit_bytes')!;
        expect(profit).toBeGreaterThanOrEqual(Math.min(before.profitBytes!, after.profitBytes!));
        expect(profit).toBeLessThanOrEqual(Math.max(before.profitBytes!, after.profitBytes!));
        expect(value(f, 'ksm_pages_sharing')).toBeGreaterThan(0);
      });
    } finally {
      free(a);
      free(b);
    }
  });

  test('a scrape in the same tick as registering reads the kernel, not what registering read', async (ctx) => {
    requireKsm(ctx);
    await withFastKsm(async () => {
      const registry = new Registry();
      const metrics = collectKsmMetrics(registry);
      const next = systemStats().pagesToScan! + 17;
      writeSysfs({ pages_to_scan: String(next) });
      // No await between the two: registering's read must not be served to this scrape.
      const f = parseExposition(await registry.metrics());
      expect(value(f, 'ksm_pages_to_scan')).toBe(next);
      metrics.unregister();
    });
  });

  test('registering twice on one registry is harmless; the default registry works', async (ctx) => {
    requireKsm(ctx);
    const registry = new Registry();
    const first = collectKsmMetrics(registry);
    expect(collectKsmMetrics(registry)).toBe(first);
    parseExposition(await registry.metrics());
    const { register } = await import('prom-client');
    const global = collectKsmMetrics();
    try {
      expect(parseExposition(await register.metrics()).has('ksm_saved_bytes')).toBe(true);
    } finally {
      global.unregister();
    }
    const noProcess = collectKsmMetrics(new Registry(), { process: false });
    expect(noProcess.names.some((n) => n.startsWith('ksm_process_'))).toBe(false);
  });

  test('prom-client is loaded only by node-ksm/prometheus', () => {
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        "require('./dist/index.js'); console.log(Object.keys(require.cache).some((k) => k.includes('prom-client')))",
      ],
      { cwd: ROOT, encoding: 'utf8' },
    );
    expect(r.stdout.trim()).toBe('false');
  });
});

describe('process groups', () => {
  test('parseCgroup: the unified hierarchy, else name=systemd, else the first line', () => {
    expect(parseCgroup('0::/system.slice/api.service\n')).toBe('/system.slice/api.service');
    expect(parseCgroup('12:pids:/user.slice\n1:name=systemd:/system.slice/db.service\n0::/\n')).toBe('/');
    expect(parseCgroup('12:pids:/user.slice\n1:name=systemd:/system.slice/db.service\n')).toBe(
      '/system.slice/db.service',
    );
    expect(parseCgroup('3:cpu,cpuacct:/a:b\n')).toBe('/a:b');
    expect(parseCgroup('')).toBe('');
  });

  /** Children that each hold the same `pages` pages in mergeable memory, named `title` (their comm). */
  async function holders(count: number, title: string, pages: number) {
    const code = `process.title = ${JSON.stringify(title)};
      const ksm = require(${JSON.stringify(path.join(ROOT, 'dist/index.js'))});
      const b = ksm.alloc(${pages} * ksm.pageSize);
      for (let p = 0; p < ${pages}; p++) b.fill(p % 251 + 1, p * ksm.pageSize, (p + 1) * ksm.pageSize);
      console.log('ready'); process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`;
    const kids = Array.from({ length: count }, () =>
      spawn(process.execPath, ['-e', code], { stdio: ['pipe', 'pipe', 'inherit'] }),
    );
    onTestFinished(() => {
      for (const k of kids) k.kill('SIGKILL');
    });
    await Promise.all(kids.map((k) => new Promise((resolve) => k.stdout.once('data', resolve))));
    return kids.map((k) => k.pid!);
  }

  test("ksm_group_* sum the host's processes by command and cgroup, read at scrape time", async (ctx) => {
    requireKsm(ctx);
    const pages = 512;
    const pids = await holders(3, 'ksm-grp-test', pages);
    const registry = new Registry();
    const metrics = collectKsmMetrics(registry, { process: false, groups: true });
    expect(metrics.names).toContain('ksm_group_merging_pages');
    expect(metrics.names).toContain('ksm_group_unreadable_processes');
    await withFastKsm(async () => {
      const merged = () => processGroups().groups.find((g) => g.comm === 'ksm-grp-test')?.mergingPages ?? 0;
      expect(await pollUntil(() => merged() >= 3 * pages, 120_000)).toBe(true);
      const families = parseExposition(await registry.metrics());
      expectConventions(families);
      const cgroup = parseCgroup(fs.readFileSync(`/proc/${pids[0]}/cgroup`, 'utf8'));
      const labels = { comm: 'ksm-grp-test', cgroup };
      expect(value(families, 'ksm_group_processes', labels)).toBe(3);
      // Each child's pages all share KSM pages (the pattern repeats within and across children).
      expect(value(families, 'ksm_group_merging_pages', labels)).toBe(3 * pages);
      if (families.has('ksm_group_profit_bytes')) {
        // Merged pages minus the rmap items' bookkeeping: positive once all 3 x 512 pages share.
        expect(value(families, 'ksm_group_profit_bytes', labels)).toBeGreaterThan(0);
      }
      // Run as root: nothing is hidden from it.
      expect(value(families, 'ksm_group_unreadable_processes')).toBe(0);
    });
    metrics.unregister();
  });

  test('more groups than the limit: the rest are summed into comm="(other)"', async (ctx) => {
    requireKsm(ctx);
    await holders(1, 'ksm-grp-a', 16);
    await holders(1, 'ksm-grp-b', 16);
    await holders(1, 'ksm-grp-c', 16);
    const all = processGroups(1000);
    expect(all.groups.length).toBeGreaterThanOrEqual(3);
    const capped = processGroups(2);
    expect(capped.groups).toHaveLength(2);
    expect(capped.groups[1]!.comm).toBe('(other)');
    const total = (gs: typeof all.groups) => gs.reduce((n, g) => n + g.processes, 0);
    expect(total(capped.groups)).toBeGreaterThanOrEqual(3);
  });
});

describe('node-ksm exporter', () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  });

  beforeAll(() => {
    expect(ensureDist()).toBe(true);
  }, 120_000);

  async function startExporter(args: string[], env: NodeJS.ProcessEnv = process.env) {
    const child = spawn(process.execPath, [MAIN, 'exporter', '--json', '--port', '0', ...args], {
      cwd: ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on('close', resolve));
    await Promise.race([pollUntil(() => out.includes('\n'), 30_000), exit]);
    return {
      child,
      exit,
      info: out.includes('\n')
        ? (JSON.parse(out.split('\n')[0]!) as { url: string; address: string; port: number })
        : undefined,
      err: () => err,
    };
  }

  /** The local address of the socket listening on `port`, from /proc/net/tcp (state 0A). */
  function listeningAddress(port: number): string | undefined {
    const hex = port.toString(16).toUpperCase().padStart(4, '0');
    for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1]?.endsWith(`:${hex}`) && f[3] === '0A') {
        const a = f[1].split(':')[0]!;
        return [3, 2, 1, 0].map((i) => parseInt(a.slice(i * 2, i * 2 + 2), 16)).join('.');
      }
    }
    return undefined;
  }

  test('serves /metrics on 127.0.0.1 by default, parseable and agreeing with systemStats()', async (ctx) => {
    requireKsm(ctx);
    const e = await startExporter([]);
    expect(e.info?.address).toBe('127.0.0.1');
    expect(listeningAddress(e.info!.port)).toBe('127.0.0.1');
    const res = await fetch(e.info!.url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const families = parseExposition(text);
    expectConventions(families);
    const s = systemStats();
    for (const name of [
      'ksm_pages_sharing',
      'ksm_saved_bytes',
      'ksm_general_profit_bytes',
      'ksm_full_scans_total',
      'ksmd_cpu_seconds_total',
    ]) {
      expect(families.has(name), `${name} in\n${text}\n${e.err()}`).toBe(true);
    }
    // The exporter describes the host, not its own process.
    expect([...families.keys()].some((n) => n.startsWith('ksm_process_'))).toBe(false);
    expect(value(families, 'ksm_page_size_bytes')).toBe(s.pageSize);
    expect(value(families, 'ksm_max_page_sharing')).toBe(s.maxPageSharing);
    expect((await fetch(e.info!.url.replace('/metrics', '/nope'))).status).toBe(404);
    e.child.kill('SIGTERM');
    expect(await e.exit).toBe(0);
  });

  test('--host chooses the address', async (ctx) => {
    requireKsm(ctx);
    const e = await startExporter(['--host', '127.0.0.2']);
    expect(e.info?.address).toBe('127.0.0.2');
    expect(listeningAddress(e.info!.port)).toBe('127.0.0.2');
    const res = await fetch(e.info!.url);
    expect(parseExposition(await res.text()).has('ksm_pages_sharing')).toBe(true);
    e.child.kill('SIGINT');
    expect(await e.exit).toBe(0);
  });

  test('a port in use is exit 1 with the fix', async (ctx) => {
    requireKsm(ctx);
    const first = await startExporter([]);
    const r = spawnSync(process.execPath, [MAIN, 'exporter', '--port', String(first.info!.port)], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/in use.*--port/);
    first.child.kill('SIGTERM');
    await first.exit;
  });

  test('without prom-client: exit 1 saying how to install it; the other commands still work', () => {
    // A preload that makes prom-client impossible to resolve, as for a user who never installed it.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-noprom-'));
    onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
    const hide = path.join(dir, 'hide.js');
    fs.writeFileSync(
      hide,
      "const M = require('module'); const r = M._resolveFilename; M._resolveFilename = function (req, ...a) { if (req === 'prom-client') { const e = new Error('Cannot find module prom-client'); e.code = 'MODULE_NOT_FOUND'; throw e; } return r.call(this, req, ...a); };",
    );
    const env = { ...process.env, NODE_OPTIONS: `--require ${hide}` };
    const exporter = spawnSync(process.execPath, [MAIN, 'exporter', '--port', '0'], {
      cwd: ROOT,
      env,
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(exporter.status).toBe(1);
    expect(exporter.stderr).toMatch(/npm install prom-client/);
    const status = spawnSync(process.execPath, [MAIN, 'status', '--json'], {
      cwd: ROOT,
      env,
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(status.status).toBe(0);
  });
});
