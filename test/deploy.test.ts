/**
 * deploy/: what an operator installs, proven as far as this machine allows.
 * - The Prometheus rules and their unit tests, and the systemd units (verify, security
 *   score), through deploy/check.sh (promtool, systemd-analyze; offline).
 * - What the autotune unit relies on when it stops: `node-ksm autotune` puts back every
 *   setting on SIGTERM, and after a SIGKILL mid-boost `node-ksm restore` (its
 *   ExecStopPost) does.
 * - Every query of the Grafana dashboard, and every recording rule, evaluated by a real
 *   Prometheus (Debian's) scraping a real exporter while duplicates are merged, so the
 *   answers are real values, not just present series.
 * The units themselves are not started: this machine does not run systemd as PID 1.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, onTestFinished, test, vi } from 'vitest';
import { pageSize } from '../lib/memory';
import { skipTest } from './helpers/skips';
import { lockKsm, pollUntil, requireKsm, withFastKsm } from './helpers/ksm';
import { snapshot } from './helpers/sysfs';

vi.setConfig({ testTimeout: 600_000 });

const ROOT = path.join(__dirname, '..');
const MAIN = path.join(ROOT, 'dist/cli/main.js');
const DEPLOY = path.join(ROOT, 'deploy');

function requireTool(ctx: { skip: (note?: string) => void }, tool: string, pkg: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0) return;
  const reason = `${tool} is not installed (Debian: ${pkg}; .ci/deps.sh installs it)`;
  skipTest(ctx, reason);
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** A child process with its output collected, and a promise of its exit code. */
function start(cmd: string, args: string[]) {
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, exit, out: () => out, err: () => err };
}

/** Children holding the same `pages` pages in mergeable memory, named `title`. */
async function holders(count: number, title: string, pages: number): Promise<number[]> {
  const code = `process.title = ${JSON.stringify(title)};
    const ksm = require(${JSON.stringify(path.join(ROOT, 'dist/index.js'))});
    const b = ksm.alloc(${pages} * ksm.pageSize);
    for (let p = 0; p < ${pages}; p++) b.fill((p % 251) + 1, p * ksm.pageSize, (p + 1) * ksm.pageSize);
    console.log('ready'); process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`;
  const kids = Array.from({ length: count }, () => {
    const k = spawn(process.execPath, ['-e', code], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(k);
    return k;
  });
  await Promise.all(kids.map((k) => new Promise((resolve) => k.stdout.once('data', resolve))));
  return kids.map((k) => k.pid!);
}

describe('deploy/check.sh: promtool and systemd-analyze, offline', () => {
  test('rules and their unit tests pass, the units verify, and their exposure is low', (ctx) => {
    requireTool(ctx, 'promtool', 'prometheus');
    requireTool(ctx, 'systemd-analyze', 'systemd');
    const r = spawnSync('bash', [path.join(DEPLOY, 'check.sh')], { encoding: 'utf8' });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS: 13 rules found/);
    expect(r.stdout).toMatch(/Unit Testing:.*\n\s+SUCCESS/);
    const scores = [...r.stdout.matchAll(/exposure level for (\S+): ([\d.]+)/g)].map((m) => [m[1], Number(m[2])]);
    expect(scores.map((s) => s[0])).toEqual(['node-ksm-exporter.service', 'node-ksm-autotune.service']);
    for (const [, score] of scores) expect(score).toBeLessThanOrEqual(2.5);
  });

  test('the units start the installed package with node, not npx, at a path the package ships', () => {
    for (const unit of ['node-ksm-exporter.service', 'node-ksm-autotune.service']) {
      const text = fs.readFileSync(path.join(DEPLOY, 'systemd', unit), 'utf8');
      const exec = /^ExecStart=(\S+) (\S+) (\w+)/m.exec(text)!;
      expect(exec[1]).toBe('/usr/bin/node');
      expect(text).not.toMatch(/npx/);
      const inPackage = exec[2]!.replace(/^\/opt\/node-ksm\/node_modules\/node-ksm\//, '');
      expect(inPackage).toBe('dist/cli/main.js');
      expect(fs.existsSync(path.join(ROOT, inPackage))).toBe(true);
      expect(text).toMatch(/^ProtectSystem=strict$/m);
      expect(text).toMatch(/^NoNewPrivileges=yes$/m);
      expect(text).toMatch(/^CapabilityBoundingSet=CAP_DAC_READ_SEARCH$/m);
    }
    const autotune = fs.readFileSync(path.join(DEPLOY, 'systemd', 'node-ksm-autotune.service'), 'utf8');
    expect(autotune).toMatch(/^ReadWritePaths=\/sys\/kernel\/mm\/ksm \/run\/node-ksm$/m);
    expect(autotune).toMatch(/^ExecStopPost=.* restore$/m);
  });
});

describe('node-ksm autotune as the unit stops it', () => {
  /** Runs autotune under the test lock until it has boosted for the work `holders` make; returns it. */
  async function boosted() {
    const a = start(process.execPath, [MAIN, 'autotune', '--json', '--interval', '50ms']);
    await pollUntil(() => a.out().includes('\n') || a.child.exitCode !== null, 30_000);
    expect(JSON.parse(a.out().split('\n')[0]!)).toMatchObject({ state: 'idle' });
    await holders(2, 'ksm-autotune-unit', 4096);
    const isBoosted = () => a.out().includes('"state":"boosted"');
    expect(await pollUntil(isBoosted, 60_000), `${a.out()}\n${a.err()}`).toBe(true);
    return a;
  }

  test('SIGTERM (systemctl stop) while boosted: exit 0 and every setting back as found', async (ctx) => {
    requireKsm(ctx);
    const unlock = await lockKsm();
    onTestFinished(unlock);
    const before = snapshot();
    const a = await boosted();
    expect(snapshot()).not.toEqual(before);
    a.child.kill('SIGTERM');
    expect(await a.exit).toBe(0);
    expect(snapshot()).toEqual(before);
    const events = a
      .out()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { state: string });
    expect(events.at(-1)!.state).toBe('stopped');
  });

  test('SIGKILL mid-boost (TimeoutStopSec ran out, OOM): the ExecStopPost restore undoes the boost', async (ctx) => {
    requireKsm(ctx);
    const unlock = await lockKsm();
    onTestFinished(unlock);
    const before = snapshot();
    const a = await boosted();
    a.child.kill('SIGKILL');
    await a.exit;
    const r = spawnSync(process.execPath, [MAIN, 'restore', '--json'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ restored: true });
    // The boost is undone: the scanner is back at the speed found. What `restore` cannot
    // know is autotune's own idle step (it starts a stopped scanner, run=1, at the kernel's
    // idle cost): autotune keeps its starting point in memory only, so after a SIGKILL
    // run stays 1 where it was 0. SIGTERM, above, restores that too.
    const after = snapshot();
    expect({ ...after, run: before.run }).toEqual(before);
    expect([before.run, '1']).toContain(after.run);
  });
});

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

interface PromResult {
  metric: Record<string, string>;
  value: [number, string];
}

describe('the Grafana dashboard against a real Prometheus', () => {
  const JOB = 'node-ksm';
  const DASHBOARD = JSON.parse(fs.readFileSync(path.join(DEPLOY, 'grafana/node-ksm.json'), 'utf8')) as {
    panels: Array<{ title: string; targets: Array<{ expr: string; refId: string }> }>;
    templating: { list: Array<{ name: string; type: string; definition?: string }> };
  };
  /** Grafana's variables as a dashboard user with every host selected has them. */
  const substitute = (expr: string) =>
    expr.replaceAll('$__rate_interval', '1m').replaceAll('$job', JOB).replaceAll('$instance', '.*');

  async function startPrometheus(exporterPort: number) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-prom-'));
    onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
    fs.copyFileSync(path.join(DEPLOY, 'prometheus/node-ksm.rules.yml'), path.join(dir, 'node-ksm.rules.yml'));
    fs.writeFileSync(
      path.join(dir, 'prometheus.yml'),
      [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        'rule_files: [node-ksm.rules.yml]',
        'scrape_configs:',
        `  - job_name: ${JOB}`,
        `    static_configs: [{ targets: ['127.0.0.1:${exporterPort}'] }]`,
        '',
      ].join('\n'),
    );
    const port = await freePort();
    const p = start('prometheus', [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ]);
    onTestFinished(async () => {
      p.child.kill('SIGTERM');
      await p.exit;
    });
    const api = async <T>(route: string): Promise<T> => {
      const res = await fetch(`http://127.0.0.1:${port}/api/v1/${route}`);
      const body = (await res.json()) as { status: string; data: T; error?: string };
      if (body.status !== 'success') throw new Error(`${route}: ${body.error}`);
      return body.data;
    };
    const query = async (expr: string) =>
      (await api<{ result: PromResult[] }>(`query?query=${encodeURIComponent(expr)}`)).result;
    return { query, api, log: p.err };
  }

  /** What each panel must show while 3 processes hold merged duplicates under a fast scanner. */
  const EXPECT: Record<string, (rs: PromResult[], ref: string) => void> = {
    'Memory saved, fleet': (rs) => expect(Number(rs[0]!.value[1])).toBeGreaterThanOrEqual(2 * 1024 * pageSize),
    'ksmd CPU, fleet': (rs) => expect(Number(rs[0]!.value[1])).toBeGreaterThan(0),
    'Hosts scanning': (rs) => expect(Number(rs[0]!.value[1])).toBe(1),
    'Sharing ratio, fleet': (rs) => expect(Number(rs[0]!.value[1])).toBeGreaterThanOrEqual(1),
    'Memory saved': (rs) => expect(Number(rs[0]!.value[1])).toBeGreaterThanOrEqual(2 * 1024 * pageSize),
    'Sharing ratio': (rs) => expect(Number(rs[0]!.value[1])).toBeGreaterThanOrEqual(1),
    'ksmd CPU': (rs) => expect(Number(rs[0]!.value[1])).toBeGreaterThan(0),
    'Full scans per minute': (rs) => expect(Number(rs[0]!.value[1])).toBeGreaterThan(0),
    'Top process groups by savings': (rs) => {
      const ours = rs.find((r) => r.metric.comm === 'ksm-dash-test');
      expect(ours, JSON.stringify(rs)).toBeDefined();
      expect(Number(ours!.value[1])).toBeGreaterThan(0);
    },
    'Merged memory per process group': (rs) => {
      const ours = rs.find((r) => r.metric.comm === 'ksm-dash-test');
      expect(Number(ours?.value[1])).toBe(3 * 1024 * pageSize);
    },
    pages_to_scan: (rs) => expect(Number(rs[0]!.value[1])).toBe(10_000),
    'Sleep between batches': (rs) => expect(Number(rs[0]!.value[1])).toBe(0),
    'run, smart_scan, advisor': (rs, ref) =>
      expect(Number(rs[0]!.value[1])).toBe(ref === 'A' ? 1 : ref === 'B' ? 0 : 1),
    Pages: (rs, ref) => {
      if (ref === 'B') expect(Number(rs[0]!.value[1])).toBeGreaterThanOrEqual(2 * 1024);
    },
  };

  test('every query returns series, with the values the merged duplicates make', async (ctx) => {
    requireKsm(ctx);
    requireTool(ctx, 'prometheus', 'prometheus');
    requireTool(ctx, 'promtool', 'prometheus');
    await withFastKsm(async () => {
      const pids = await holders(3, 'ksm-dash-test', 1024);
      const merged = () =>
        pids.every((pid) => Number(fs.readFileSync(`/proc/${pid}/ksm_merging_pages`, 'utf8')) >= 1024);
      expect(await pollUntil(merged, 120_000)).toBe(true);

      const exporter = start(process.execPath, [MAIN, 'exporter', '--json', '--port', '0']);
      expect(await pollUntil(() => exporter.out().includes('\n'), 30_000)).toBe(true);
      const { port, url } = JSON.parse(exporter.out().split('\n')[0]!) as { port: number; url: string };

      // The exporter's text passes promtool's lint.
      const text = await (await fetch(url)).text();
      const lint = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
      expect(lint.status, `${lint.stdout}${lint.stderr}`).toBe(0);
      expect(`${lint.stdout}${lint.stderr}`.trim()).toBe('');

      const prom = await startPrometheus(port);
      // Three scrapes (rates need two samples), and every rule group evaluated since.
      const scraped = async () =>
        Number((await prom.query(`count_over_time(up{job="${JOB}"}[1m])`).catch(() => []))[0]?.value[1] ?? 0) >= 3;
      for (let i = 0; i < 300 && !(await scraped()); i++) await sleep(200);
      expect(await scraped(), prom.log()).toBe(true);
      expect(Number((await prom.query(`up{job="${JOB}"}`))[0]!.value[1])).toBe(1);
      await sleep(2500);

      for (const panel of DASHBOARD.panels) {
        for (const target of panel.targets) {
          const rs = await prom.query(substitute(target.expr));
          expect(rs.length, `${panel.title} ${target.refId}: ${target.expr}`).toBeGreaterThan(0);
          const check = EXPECT[panel.title];
          expect(check, `no expectation for panel "${panel.title}"`).toBeDefined();
          check!(rs, target.refId);
        }
      }
      // The template variables: label_values(metric, label) lists the label's values.
      for (const v of DASHBOARD.templating.list.filter((t) => t.type === 'query')) {
        const m = /^label_values\((.*), (\w+)\)$/.exec(substitute(v.definition!))!;
        const values = await prom.api<string[]>(`label/${m[2]}/values?match[]=${encodeURIComponent(m[1]!)}`);
        expect(values, v.name).toContain(m[2] === 'job' ? JOB : `127.0.0.1:${port}`);
      }
      // Every recording rule yields series from the live exporter, and every alert loads healthy.
      const groups = (
        await prom.api<{ groups: Array<{ rules: Array<{ name: string; type: string; health: string }> }> }>('rules')
      ).groups.flatMap((g) => g.rules);
      expect(groups).toHaveLength(13);
      for (const rule of groups) {
        expect(rule.health, rule.name).toBe('ok');
        if (rule.type === 'recording') expect((await prom.query(rule.name)).length, rule.name).toBeGreaterThan(0);
      }
      const saved = await prom.query('instance:ksm_group_merged_bytes:sum{comm="ksm-dash-test"}');
      expect(Number(saved[0]!.value[1])).toBe(3 * 1024 * pageSize);
      exporter.child.kill('SIGTERM');
      expect(await exporter.exit).toBe(0);
    });
  });
});
