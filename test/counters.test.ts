import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { KernelFile, KernelFiles } from '../lib/counters';
import { alloc, free } from '../lib/memory';

const rssKiB = (text: string | undefined) => Number(/^VmRSS:\s+(\d+) kB/m.exec(text ?? '')?.[1]);

describe('KernelFile: a small kernel file kept open and read again', () => {
  it('prints a proc file afresh on every reading', () => {
    const f = new KernelFile('/proc/self/status');
    try {
      const before = rssKiB(f.text());
      const buf = alloc(32 * 1024 * 1024);
      try {
        buf.fill(1);
        expect(rssKiB(f.text()) - before).toBeGreaterThanOrEqual(30 * 1024);
      } finally {
        free(buf);
      }
    } finally {
      f.close();
    }
  });

  it('reads a number, and a file that is not there as undefined, once and for all', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-counters-'));
    try {
      const file = path.join(dir, 'n');
      fs.writeFileSync(file, '42\n');
      const f = new KernelFile(file);
      expect(f.number()).toBe(42);
      fs.writeFileSync(file, '-7\n');
      expect(f.number()).toBe(-7);
      fs.writeFileSync(file, 'many\n');
      expect(f.number()).toBeUndefined();
      f.close();
      f.close(); // idempotent
      const missing = new KernelFile(path.join(dir, 'nope'));
      expect(missing.text()).toBeUndefined();
      expect(missing.gone).toBe(true);
      fs.writeFileSync(path.join(dir, 'nope'), '1');
      expect(missing.number()).toBeUndefined(); // an optional file of this kernel stays missing
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a process's file reads as undefined once the process is gone", async () => {
    const child = spawn(process.execPath, ['-e', 'process.stdin.resume()'], { stdio: ['pipe', 'ignore', 'ignore'] });
    await once(child, 'spawn');
    const f = new KernelFile(`/proc/${child.pid}/status`);
    expect(f.text()).toMatch(/^Pid:\s+\d+/m);
    child.kill('SIGKILL');
    await once(child, 'exit');
    expect(f.text()).toBeUndefined();
    expect(f.gone).toBe(true);
  });

  it('other errors are KsmErrors with the errno', () => {
    const f = new KernelFile('/proc/self/mem'); // reading offset 0 of our own memory: EIO
    expect(() => f.text()).toThrow(expect.objectContaining({ name: 'KsmError', code: 'EIO' }));
    f.close();
  });

  it('KernelFiles reads and closes a set', () => {
    const files = new KernelFiles({ loadavg: '/proc/loadavg', none: '/proc/self/no-such-file' });
    expect(files.file('loadavg').text()).toMatch(/^\d+\.\d+ /);
    expect(files.number('none')).toBeUndefined();
    files.close();
  });
});
