/**
 * examples/shared-dataset: a node:cluster service whose workers build the same table.
 * Runs the example as users run it (its own process group, the built package), checks
 * every answer against the generator, and that the workers' copies really merge.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { pageSize } from '../lib/memory.js';
import { processStats } from '../lib/stats.js';
import { requireKsm, withFastKsm } from './helpers/ksm.js';
import { FEATURES, RECORD_BYTES, expectedItem } from '../examples/shared-dataset/dataset.mjs';

const SERVER = fileURLToPath(new URL('../examples/shared-dataset/server.mts', import.meta.url));
const MIB = 32;
const RECORDS = (MIB * 1024 * 1024) / RECORD_BYTES;
const PAGES = (MIB * 1024 * 1024) / pageSize;

/** One line of the primary's --log json output. */
type Event = { event: string; [k: string]: unknown };
interface Worker {
  id: number;
  pid: number;
  directPort: number;
}
/** GET /item/:id (with ?page, `page`). */
interface ItemAnswer {
  id: number;
  version: number;
  features: number[];
  worker: number;
  page?: { index: number; merged: boolean | null };
}
/** The parts of GET /stats the tests look at. */
interface StatsAnswer {
  mode: 'ksm' | 'plain';
  dataset: { buffer: { mergedPages: number; mergeable: boolean } | { error: string } };
  system: { savedBytes: number };
}

/** The example's primary (and through it the workers), reporting events as JSON lines. */
class Service {
  readonly child: ChildProcess;
  readonly events: Event[] = [];
  readonly stderr: string[] = [];
  private wake = () => {};
  private exited = false;

  constructor(args: string[]) {
    // detached: a process group of its own, so the workers die with it in finally.
    this.child = spawn(
      process.execPath,
      ['--import', 'tsx', SERVER, '--workers', '2', '--mib', String(MIB), '--port', '0', '--log', 'json', ...args],
      {
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    readline.createInterface({ input: this.child.stdout! }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as Event);
      } catch {
        this.events.push({ event: 'text', line });
      }
      this.wake();
    });
    readline.createInterface({ input: this.child.stderr! }).on('line', (line) => this.stderr.push(line));
    this.child.on('exit', () => {
      this.exited = true;
      this.wake();
    });
  }

  /** The first event named `name`; fails on an error event, an early exit or after timeoutMs. */
  async next(name: string, timeoutMs: number): Promise<Event> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find((e) => e.event === name);
      if (found) return found;
      const bad = this.events.find((e) => e.event === 'error' || e.event === 'merge-stalled');
      if (bad || this.exited || Date.now() > deadline) {
        throw new Error(
          `waiting for "${name}": ${JSON.stringify(bad ?? { exited: this.exited })}\n${this.events.map((e) => JSON.stringify(e)).join('\n')}\n${this.stderr.join('\n')}`,
        );
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 200);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  async stop(): Promise<void> {
    if (this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    if (!this.exited) await new Promise((resolve) => this.child.once('exit', resolve));
  }
}

async function withService<T>(
  args: string[],
  fn: (s: Service, workers: Worker[], port: number) => Promise<T>,
): Promise<T> {
  const s = new Service(args);
  try {
    const ready = await s.next('ready', 120_000);
    return await fn(s, ready.workers as Worker[], ready.port as number);
  } finally {
    await s.stop();
  }
}

async function get<T = ItemAnswer>(port: number, url: string): Promise<{ status: number; body: T }> {
  const r = await fetch(`http://127.0.0.1:${port}${url}`);
  return { status: r.status, body: (await r.json()) as T };
}

async function put(port: number, url: string, body: string): Promise<{ status: number; body: ItemAnswer }> {
  const r = await fetch(`http://127.0.0.1:${port}${url}`, {
    method: 'PUT',
    body,
    headers: { 'content-type': 'application/json' },
  });
  return { status: r.status, body: (await r.json()) as ItemAnswer };
}

/** Ids across the whole table: both ends, page edges, and a spread in between. */
const SAMPLE = [0, 1, 63, 64, RECORDS - 1, ...Array.from({ length: 40 }, (_, i) => (i * 2654435761) % RECORDS)];

async function expectCorrectLookups(workers: Worker[]): Promise<void> {
  for (const w of workers) {
    for (const id of SAMPLE) {
      const r = await get(w.directPort, `/item/${id}`);
      expect(r.status).toBe(200);
      expect(r.body).toEqual({ ...expectedItem(id), worker: w.id });
    }
  }
}

describe('examples/shared-dataset', { timeout: 600_000 }, () => {
  it('serves correct lookups from every worker, and the workers\u2019 copies merge', (ctx) => {
    requireKsm(ctx);
    return withFastKsm(() =>
      withService([], async (s, workers, port) => {
        expect(workers).toHaveLength(2);
        await expectCorrectLookups(workers);
        // The shared port hands connections to the workers in turn.
        const seen = new Set<number>();
        for (let i = 0; i < 8; i++) {
          const id = SAMPLE[i]!;
          const r = await get(port, `/item/${id}`);
          expect(r.body).toEqual({ ...expectedItem(id), worker: r.body.worker });
          seen.add(r.body.worker);
        }
        expect([...seen].sort()).toEqual(workers.map((w) => w.id).sort());

        const merged = await s.next('merged', 300_000);
        expect(merged).toMatchObject({ totalPages: 2 * PAGES });
        expect(merged.ratio as number).toBeGreaterThanOrEqual(0.95);
        // Counted again here, independently of the primary.
        const merging = workers.reduce((sum, w) => sum + (processStats(w.pid).mergingPages ?? 0), 0);
        expect(merging).toBeGreaterThanOrEqual(0.95 * 2 * PAGES);
        for (const w of workers) {
          const { body } = await get<StatsAnswer>(w.directPort, '/stats');
          expect(body).toMatchObject({
            mode: 'ksm',
            worker: { id: w.id, pid: w.pid },
            dataset: { bytes: MIB * 1024 * 1024, records: RECORDS },
          });
          expect(body.dataset.buffer).toMatchObject({ mergeable: true, pages: PAGES });
          expect((body.dataset.buffer as { mergedPages: number }).mergedPages).toBeGreaterThanOrEqual(0.95 * PAGES);
          expect(body.system.savedBytes).toBeGreaterThan(0);
        }
        await expectCorrectLookups(workers); // reads from merged pages
      }),
    );
  });

  it('a write gives that worker private pages for what it wrote, and every worker still reads correctly', (ctx) => {
    requireKsm(ctx);
    return withFastKsm(() =>
      withService([], async (s, workers) => {
        await s.next('merged', 300_000);
        const [a, b] = workers as [Worker, Worker];
        const perPage = pageSize / RECORD_BYTES;
        const written = [3, 5 * perPage + 7]; // records on pages 0 and 5
        const untouched = 3 * perPage + 1; // page 3, between them
        const mergedPages = async () =>
          ((await get<StatsAnswer>(a.directPort, '/stats')).body.dataset.buffer as { mergedPages: number }).mergedPages;
        const before = await mergedPages();
        expect((await get(a.directPort, `/item/${untouched}?page`)).body.page).toMatchObject({
          index: 3,
          merged: true,
        });

        const updates = written.map((id) => Array.from({ length: FEATURES }, (_, k) => id + k / 3));
        for (const [i, id] of written.entries()) {
          const r = await put(a.directPort, `/item/${id}`, JSON.stringify({ features: updates[i] }));
          expect(r.status).toBe(200);
          expect(r.body).toMatchObject({ id, version: 1, features: updates[i]!.map(Math.fround), worker: a.id });
          expect(r.body.page).toMatchObject({ index: Math.floor(id / perPage), merged: false });
        }
        for (const [i, id] of written.entries()) {
          const mine = (await get(a.directPort, `/item/${id}?page`)).body;
          expect(mine).toMatchObject({
            id,
            version: 1,
            features: updates[i]!.map(Math.fround),
            page: { merged: false },
          });
          expect((await get(b.directPort, `/item/${id}`)).body).toEqual({ ...expectedItem(id), worker: b.id });
        }
        // Only the written pages left the merged copy.
        expect((await get(a.directPort, `/item/${untouched}?page`)).body.page).toMatchObject({ merged: true });
        const after = await mergedPages();
        expect(after).toBeLessThanOrEqual(PAGES - written.length);
        expect(after).toBeGreaterThanOrEqual(before - written.length - 0.01 * PAGES);
        // Everything else reads as generated, in both workers.
        for (const w of workers) {
          for (const id of SAMPLE.filter((x) => !written.includes(x))) {
            expect((await get(w.directPort, `/item/${id}`)).body).toEqual({ ...expectedItem(id), worker: w.id });
          }
        }
      }),
    );
  });

  it('--no-ksm serves the same answers from plain Buffers, and rejects bad requests', () =>
    withService(['--no-ksm'], async (s, workers) => {
      await expectCorrectLookups(workers);
      const { body } = await get<StatsAnswer>(workers[0]!.directPort, '/stats');
      expect(body.mode).toBe('plain');
      if (!('error' in body.dataset.buffer)) expect(body.dataset.buffer.mergeable).toBe(false);
      expect(s.events.some((e) => e.event === 'note')).toBe(true);

      const port = workers[1]!.directPort;
      expect((await get(port, `/item/${RECORDS}`)).status).toBe(404);
      expect((await get(port, '/item/-1')).status).toBe(404);
      expect((await get(port, '/item/1e3')).status).toBe(404);
      expect((await get(port, '/nothing')).status).toBe(404);
      expect((await put(port, '/item/1', 'not json')).status).toBe(400);
      expect((await put(port, '/item/1', JSON.stringify({ features: [1, 2] }))).status).toBe(400);
      expect((await put(port, '/item/1', JSON.stringify({ features: Array(FEATURES).fill('x') }))).status).toBe(400);
      expect((await put(port, '/item/1', 'x'.repeat(10_000))).status).toBe(413);
      const r = await fetch(`http://127.0.0.1:${port}/item/1`, { method: 'DELETE' });
      expect(r.status).toBe(405);
      expect(r.headers.get('allow')).toBe('GET, PUT');
      // Nothing above changed the table.
      expect((await get(port, '/item/1')).body).toEqual({ ...expectedItem(1), worker: workers[1]!.id });
    }));

  it('refuses bad options with a usage message', async () => {
    for (const args of [
      ['--workers', '0'],
      ['--mib', 'lots'],
      ['--log', 'xml'],
      ['--no-ksm', '--boost'],
      ['--bogus'],
    ]) {
      const child = spawn(process.execPath, ['--import', 'tsx', SERVER, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let err = '';
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      const code = await new Promise((resolve) => child.on('exit', resolve));
      expect(code).toBe(2);
      expect(err).toContain('Usage:');
    }
  });
});
