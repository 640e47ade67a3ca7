/**
 * Resource faults, each injected into a child process of its own: an address-space limit,
 * an exhausted vm.max_map_count, a memory cgroup too small for the copies that unmerging
 * makes, and a read-only /sys/kernel/mm/ksm. The library must report each as a KsmError
 * (or finish), and the process must stay alive and working — never crash, never hang.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { lockKsm, requireKsm, requireNative, withFastKsm } from './helpers/ksm';
import { KSM, diff, snapshot } from './helpers/sysfs';
import { DIST, ensureDist } from './helpers/dist';
import { skipTest, type SkipContext } from './helpers/skips';

const MiB = 1024 * 1024;

// The children load the compiled library.
beforeAll(() => {
  expect(ensureDist()).toBe(true);
}, 120_000);

/** Prelude for child scripts: the library and a compact description of an error. */
const PRELUDE = `
const fs = require('node:fs');
const m = require(${JSON.stringify(`${DIST}/memory.js`)});
const { Arena } = require(${JSON.stringify(`${DIST}/arena.js`)});
const { bufferStats } = require(${JSON.stringify(`${DIST}/buffer-stats.js`)});
const { KsmError } = require(${JSON.stringify(`${DIST}/errors.js`)});
const shape = (e) => ({ name: e && e.name, ksm: e instanceof KsmError, code: e && e.code, syscall: e && e.syscall });
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
`;

interface ChildResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  lines: Array<Record<string, unknown>>;
  stderr: string;
}

function runChild(
  script: string,
  options: { args?: string[]; timeoutMs?: number; cmd?: string[]; flags?: string[]; cwd?: string } = {},
): ChildResult {
  const cmd = options.cmd ?? [];
  const argv = [
    ...cmd,
    process.execPath,
    '--expose-gc',
    ...(options.flags ?? []),
    '-e',
    PRELUDE + script,
    ...(options.args ?? []),
  ];
  const r = spawnSync(argv[0]!, argv.slice(1), {
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 120_000,
    killSignal: 'SIGKILL',
    cwd: options.cwd,
  });
  const lines = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { status: r.status, signal: r.signal, lines, stderr: r.stderr };
}

/**
 * The backtrace of the crashed thread from the core file a child left in `dir` (the
 * kernel's core_pattern here is a plain file name, written to the process's cwd), or
 * null when there is no core or no gdb to read it.
 */
function crashBacktrace(dir: string): string | null {
  const core = fs.readdirSync(dir).find((f) => /^core(\.\d+)?$/.test(f));
  if (core === undefined) return null;
  const r = spawnSync('gdb', ['-q', '-batch', '-ex', 'bt 30', process.execPath, path.join(dir, core)], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  return r.status === 0 && /^#0 /m.test(r.stdout) ? r.stdout.slice(r.stdout.search(/^#0 /m)) : null;
}

// The sanitizer runtime reserves terabytes of shadow address space and its own maps.
const nativeOk = (ctx: SkipContext) =>
  requireNative(ctx, 'address-space faults are meaningless under AddressSanitizer');

describe('address-space limit (prlimit --as)', () => {
  it('alloc and Arena report ENOMEM as a KsmError, and the process keeps working', (ctx) => {
    nativeOk(ctx);
    // The child caps its own address space a little above what it already uses.
    const r = runChild(`
      const vm = Number(/VmSize:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
      require('node:child_process').execFileSync('prlimit', ['--pid', String(process.pid), '--as=' + (vm + 256 * 2 ** 20)]);
      const res = { limit: vm + 256 * 2 ** 20 };
      try { m.alloc(1024 * 2 ** 20); res.big = 'allocated'; } catch (e) { res.big = shape(e); }
      const keep = new Array(64);
      let n = 0;
      try { for (; n < 64; n++) keep[n] = m.alloc(16 * 2 ** 20); res.many = 'allocated'; } catch (e) { res.many = shape(e); }
      res.manyCount = n;
      try { new Arena({ chunkSize: 512 * 2 ** 20 }).alloc(10); res.arena = 'allocated'; } catch (e) { res.arena = shape(e); }
      for (let i = 0; i < n; i++) m.free(keep[i]);
      const again = m.alloc(16 * 2 ** 20);
      again.fill(7);
      res.after = again.length;
      out(res);
    `);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const res = r.lines[0]!;
    const enomem = { ksm: true, code: 'ENOMEM', syscall: 'mmap' };
    expect(res.big).toMatchObject(enomem);
    expect(res.many).toMatchObject(enomem);
    expect(res.manyCount).toBeGreaterThan(0);
    expect(res.arena).toMatchObject(enomem);
    expect(res.after).toBe(16 * MiB);
  });
});

describe('vm.max_map_count exhausted', () => {
  it('alloc reports ENOMEM as a KsmError once the map count is full, and works again after frees', (ctx) => {
    nativeOk(ctx);
    // Neighbouring buffers alternate their flags so the kernel cannot join them into one
    // VMA: every alloc costs a map until the count (65530 by default) runs out. This
    // fills only the child's own map count; the global sysctl is left alone.
    // Each attempt runs in a directory of its own, allowed a core file: a crash is then
    // judged by its backtrace.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksm-maps-'));
    const attempt = () => {
      for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { force: true });
      return runChild(
        `
      // Once the map count is full, V8 itself cannot map memory either: compiling a
      // function then aborts the process (seen: Zone::Expand under CompileLazy). So all
      // that runs after the fill is compiled first (and kept: --no-flush-bytecode), and
      // the first thing done after the failure is to give maps back.
      const res = { max: Number(fs.readFileSync('/proc/sys/vm/max_map_count', 'utf8')) };
      const arena = new Arena({ chunkSize: 2 ** 20 });
      arena.release(arena.alloc(10));
      arena.close();
      const arena2 = new Arena({ chunkSize: 2 ** 20 });
      arena2.stats();
      shape(new KsmError('warm-up', 'X'));
      m.free(m.alloc(1));
      JSON.stringify(res);
      const keep = new Array(200000).fill(null);
      let n = 0;
      let failure = null;
      let arenaFailure = null;
      try {
        for (; n < 200000; n++) keep[n] = m.alloc(4096, { mergeable: n % 2 === 0 });
      } catch (e) { failure = e; }
      // The map count is full: an arena needing a new chunk fails the same way, or gets
      // one anyway. The kernel refuses a mapping only once the count is above the limit,
      // and a new chunk whose flags match its neighbour's merges into it as soon as it is
      // advised, giving the slot back (seen in about one run in four), so both outcomes
      // are legitimate; what must hold is a documented error and an arena that counts
      // only what it really handed out. One attempt only, and nothing else, before the
      // maps go back: with none left, Node and V8 themselves abort on their next mapping
      // (seen: std::bad_alloc from Node's own code, Zone OOM in V8's compiler).
      let arenaOk = 0;
      try { arena2.alloc(10); arenaOk = 1; } catch (e) { arenaFailure = e; }
      for (let i = 0; i < 2000; i++) m.free(keep[i]);
      res.arenaOk = arenaOk;
      res.arenaLive = arena2.stats().liveBuffers;
      res.err = failure ? shape(failure) : 'never failed';
      res.arena = arenaFailure ? shape(arenaFailure) : 'allocated';
      res.count = n;
      const again = m.alloc(4096 * 4);
      again.fill(1);
      res.after = again.length;
      for (let i = 2000; i < n; i++) m.free(keep[i]);
      out(res);
    `,
        { flags: ['--no-flush-bytecode'], cmd: ['prlimit', '--core=unlimited', '--'], cwd: dir },
      );
    };
    // With no map left, Node and V8 abort on their own next mapping (std::bad_alloc from
    // Node's C++, V8's "out of memory"), or V8 crashes outright (a SIGSEGV in its lazy
    // compiler): seen in about one CI run of four and in 2 of ~100 local runs, in their
    // code. Such a run proves nothing either way and is run again, up to three attempts:
    // an abort that says it ran out of memory, or a crash whose backtrace (from the core
    // file, read with gdb) has no frame in the addon. A crash in the addon, or one that
    // cannot be read, fails at once.
    let r!: ChildResult;
    let backtrace!: string | null;
    try {
      for (let i = 1; ; i++) {
        r = attempt();
        backtrace = r.signal === 'SIGSEGV' || r.signal === 'SIGBUS' ? crashBacktrace(dir) : null;
        const nodeOom = r.signal === 'SIGABRT' && /std::bad_alloc|out of memory|Allocation failed/.test(r.stderr);
        const nodeCrash = backtrace !== null && !/ksm\.node|ksm::/.test(backtrace);
        if (i === 3 || !(nodeOom || nodeCrash)) break;
        void ctx.annotate(
          `attempt ${i}: Node/V8 ${nodeOom ? 'aborted' : 'crashed'} for want of a mapping: ` +
            (nodeOom
              ? (r.stderr.split('\n').find((l) => l.trim()) ?? '')
              : backtrace!.split('\n').slice(0, 6).join(' | ')),
        );
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    expect(r.signal, `${r.stderr}\n${backtrace ?? '(no backtrace)'}`).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const res = r.lines[0]!;
    // mmap says ENOMEM; when the new mapping first joined its neighbour and MADV_MERGEABLE
    // must split it again, madvise says EAGAIN (the kernel's word for a failed VMA split).
    expect(res.err).toMatchObject({ ksm: true });
    expect(['ENOMEM', 'EAGAIN']).toContain((res.err as { code: string }).code);
    expect(res.count as number).toBeGreaterThan((res.max as number) / 2);
    if (res.arena !== 'allocated') {
      expect(res.arena).toMatchObject({ ksm: true });
      expect(['ENOMEM', 'EAGAIN']).toContain((res.arena as { code: string }).code);
    }
    expect(res.arenaLive).toBe(res.arenaOk);
    expect(res.after).toBe(16384);
  });
});

/** The memory cgroup controller this machine offers: v2 unified, or v1's memory hierarchy. */
function memoryCgroup(): { version: 1 | 2; parent: string } | string {
  if (process.getuid?.() !== 0) return 'needs root';
  try {
    if (fs.readFileSync('/sys/fs/cgroup/cgroup.controllers', 'utf8').split(/\s+/).includes('memory')) {
      return { version: 2, parent: '/sys/fs/cgroup' };
    }
  } catch {
    // not a v2 root
  }
  const line = fs
    .readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l));
  if (line && fs.existsSync('/sys/fs/cgroup/memory/cgroup.procs')) {
    // Under our own group, so whatever limits it has still apply to the child.
    return { version: 1, parent: path.join('/sys/fs/cgroup/memory', line.split(':')[2]!) };
  }
  return 'no memory cgroup controller is mounted';
}

const CAP_SYS_RESOURCE = 24;

/** Whether this process's effective capabilities include `bit` (capability(7) numbering). */
function hasCapability(bit: number): boolean {
  const hex = /^CapEff:\s+([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1];
  return hex !== undefined && ((BigInt(`0x${hex}`) >> BigInt(bit)) & 1n) === 1n;
}

describe('unmerging under a memory cgroup that cannot hold the copies', () => {
  for (const unkillable of [false, true]) {
    it(`setMergeable(false) of 64 MiB merged ends with an error, completion or the cgroup's OOM kill, never a hang${unkillable ? ' (child exempt from the OOM killer)' : ''}`, async (ctx) => {
      requireKsm(ctx);
      nativeOk(ctx);
      if (unkillable && !hasCapability(CAP_SYS_RESOURCE)) {
        skipTest(ctx, 'no CAP_SYS_RESOURCE: oom_score_adj cannot be lowered, even by root', 'capability');
      }
      const cg = memoryCgroup();
      if (typeof cg === 'string') skipTest(ctx, cg);
      const dir = path.join(cg.parent, `node-ksm-fault-${process.pid}-${unkillable ? 'u' : 'k'}`);
      const script = `
        ${unkillable ? "try { fs.writeFileSync('/proc/self/oom_score_adj', '-1000'); } catch (e) { out({ skip: 'cannot lower oom_score_adj here (' + e.code + ')' }); process.exit(0); }" : ''}
        const buf = m.alloc(64 * 2 ** 20);
        buf.fill(0x5a); // every page the same: they merge into one
        const deadline = Date.now() + 60000;
        const poll = () => {
          const s = bufferStats(buf);
          if (s.mergedPages >= s.pages * 0.9 || Date.now() > deadline) {
            out({ merged: s.mergedPages, pages: s.pages });
            process.stdin.once('data', () => {
              const t0 = Date.now();
              try { m.setMergeable(buf, false); out({ result: 'completed', ms: Date.now() - t0 }); }
              catch (e) { out({ result: shape(e), ms: Date.now() - t0 }); }
              process.exit(0);
            });
          } else setTimeout(poll, 50);
        };
        poll();
      `;
      await withFastKsm(async () => {
        const child = spawn(process.execPath, ['-e', PRELUDE + script], { stdio: ['pipe', 'pipe', 'pipe'] });
        const lines: Array<Record<string, unknown>> = [];
        let stderr = '';
        child.stderr.on('data', (d) => (stderr += d));
        let buffered = '';
        const gotLine = new Promise<void>((resolve) =>
          child.stdout.on('data', (d) => {
            buffered += d;
            for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
              lines.push(JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>);
              buffered = buffered.slice(nl + 1);
              resolve();
            }
          }),
        );
        const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
          child.on('exit', (code, signal) => resolve({ code, signal })),
        );
        let hung = false;
        try {
          // A child that dies before it answers must fail the test, not hang it.
          const early = await Promise.race([gotLine.then(() => null), exited]);
          expect(early, stderr).toBeNull();
          const merged = lines[0]!;
          if (typeof merged.skip === 'string') skipTest(ctx, merged.skip);
          expect(merged.merged as number, stderr).toBeGreaterThan((merged.pages as number) * 0.5);
          fs.mkdirSync(dir);
          // Room for the child's own few pages, not for 64 MiB of copies.
          fs.writeFileSync(path.join(dir, cg.version === 2 ? 'memory.max' : 'memory.limit_in_bytes'), String(16 * MiB));
          if (cg.version === 2) fs.writeFileSync(path.join(dir, 'memory.swap.max'), '0');
          fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(child.pid));
          child.stdin.write('go\n');
          const timer = setTimeout(() => {
            hung = true;
            child.kill('SIGKILL');
          }, 60_000);
          const end = await exited;
          clearTimeout(timer);
          expect(hung, 'unmerging hung for 60 s').toBe(false);
          const oomKills =
            cg.version === 2
              ? Number(/oom_kill (\d+)/.exec(fs.readFileSync(path.join(dir, 'memory.events'), 'utf8'))?.[1] ?? 0)
              : Number(/oom_kill (\d+)/.exec(fs.readFileSync(path.join(dir, 'memory.oom_control'), 'utf8'))?.[1] ?? 0);
          const result = lines[1]?.result;
          const outcome = `outcome: ${JSON.stringify(result ?? end)}, ${JSON.stringify(lines[1]?.ms ?? '?')} ms (cgroup OOM kills: ${oomKills})`;
          await ctx.annotate(outcome);
          console.log(`unmerge under a 16 MiB memory cgroup: ${outcome}`);
          if (result === undefined) {
            // No answer: only acceptable as the cgroup's OOM killer's doing.
            expect(end.signal, stderr).toBe('SIGKILL');
            expect(oomKills).toBeGreaterThan(0);
            expect(unkillable).toBe(false);
          } else if (result !== 'completed') {
            expect(result).toMatchObject({ ksm: true });
            expect(['ENOMEM', 'EAGAIN']).toContain((result as { code: string }).code);
          }
        } finally {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
          await exited;
          // The group can only go once it is empty; the child is dead by now.
          for (let i = 0; i < 50 && fs.existsSync(dir); i++) {
            try {
              fs.rmdirSync(dir);
            } catch {
              await new Promise((r) => setTimeout(r, 100));
            }
          }
        }
        expect(fs.existsSync(dir)).toBe(false);
      });
    }, 900_000); // withFastKsm may wait for other test runs' lock first
  }
});

let readOnlyResult: Record<string, unknown> | null = null;

describe('read-only /sys/kernel/mm/ksm (private mount namespace)', () => {
  it('configure, boost and restore answer ERR_KSM_PERMISSION; nothing outside changes', async (ctx) => {
    requireKsm(ctx);
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksm-ro-'));
    const script = `
      const c = require(${JSON.stringify(`${DIST}/control.js`)});
      const b = require(${JSON.stringify(`${DIST}/boost.js`)});
      // Never write to a writable sysfs by mistake: prove the mount is read-only first.
      try { fs.accessSync('${KSM}/run', fs.constants.W_OK); out({ readOnly: false }); process.exit(0); } catch (e) { if (e.code !== 'EROFS') { out({ readOnly: e.code }); process.exit(0); } }
      (async () => {
        const res = { readOnly: true };
        const s = c.readSettings();
        try { c.configure({ sleepMillisecs: s.sleepMillisecs + 1 }); res.configure = 'wrote'; } catch (e) { res.configure = shape(e); }
        try { const h = await b.boost({ stateDir: process.argv[1] }); res.boost = 'boosted'; await h.release(); } catch (e) { res.boost = shape(e); }
        res.state = b.boostState({ stateDir: process.argv[1] });
        try { res.restore = await b.restore({ stateDir: process.argv[1] }); } catch (e) { res.restore = shape(e); }
        out(res);
      })();
    `;
    const unlock = await lockKsm();
    const before = snapshot();
    try {
      const cmd = `mount --bind ${KSM} ${KSM} && mount -o remount,bind,ro ${KSM} && exec "$0" "$@"`;
      const r = runChild(script, {
        cmd: ['unshare', '-m', '--propagation', 'private', 'sh', '-c', cmd],
        args: [stateDir],
      });
      if (r.status !== 0 && r.lines.length === 0)
        skipTest(ctx, `cannot make a read-only mount namespace here: ${r.stderr.split('\n')[0]}`);
      expect(r.signal, r.stderr).toBeNull();
      const res = r.lines[0]!;
      expect(res.readOnly).toBe(true);
      expect(res.configure).toMatchObject({ ksm: true, code: 'ERR_KSM_PERMISSION' });
      expect(res.boost).toMatchObject({ ksm: true, code: 'ERR_KSM_PERMISSION' });
      readOnlyResult = res;
    } finally {
      const changed = diff(before, snapshot());
      unlock();
      fs.rmSync(stateDir, { recursive: true, force: true });
      expect(changed).toEqual([]);
    }
  }, 900_000);

  // Found here (lib/boost.ts acquireLocked): when configure() failed and no other holder
  // remained, restoreOriginals() failed the same way and the file kept the failed holder,
  // so boostState() reported a boost that never happened and restore() refused.
  it('a boost that could not write leaves no holder behind', (ctx) => {
    if (readOnlyResult === null) skipTest(ctx, 'the read-only test did not run');
    expect(readOnlyResult.state).toBeNull();
  });
});
