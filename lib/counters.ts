/**
 * Small kernel files read again and again (ksmd's counters, a process's ksm_stat): opened
 * once and re-read with pread at offset 0, which makes sysfs attributes and seq_file
 * files in /proc print their text afresh. Measured here: ~4 µs of CPU a reading, against
 * ~20 µs for open + read + close (readFileSync), so waitForMerge can poll every
 * millisecond while pages merge and autotune can look every few tens of milliseconds for
 * a cost of about a tenth of a percent of a core.
 */
import fs from 'node:fs';
import { fromFsError } from './errors';
import { parseInteger } from './procfs';

// Readings are synchronous and the files are small (ksm_stat is ~150 bytes).
const scratch = Buffer.allocUnsafe(4096);

/** Errors that mean "not there": the file (an older kernel) or the process (it exited). */
const GONE = new Set(['ENOENT', 'ESRCH', 'ENXIO']);

export class KernelFile {
  private fd: number | undefined;
  private missing = false;

  constructor(readonly path: string) {}

  /** The file's text, or undefined when it does not exist (or its process is gone). Other errors as KsmError. */
  text(): string | undefined {
    if (this.missing) return undefined;
    try {
      this.fd ??= fs.openSync(this.path, 'r');
      const n = fs.readSync(this.fd, scratch, 0, scratch.length, 0);
      return scratch.toString('latin1', 0, n);
    } catch (err) {
      if (GONE.has((err as NodeJS.ErrnoException).code ?? '')) {
        this.close();
        this.missing = true;
        return undefined;
      }
      throw fromFsError(err);
    }
  }

  /** The file as one integer, or undefined when it is missing or not a number. */
  number(): number | undefined {
    return parseInteger(this.text());
  }

  /** Whether the last reading found the file missing. */
  get gone(): boolean {
    return this.missing;
  }

  close(): void {
    if (this.fd === undefined) return;
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed: nothing held
    }
    this.fd = undefined;
  }
}

/** A set of files read together, closed together. */
export class KernelFiles<K extends string> {
  private readonly files: Map<K, KernelFile>;
  constructor(paths: Record<K, string>) {
    this.files = new Map(Object.entries(paths).map(([k, p]) => [k as K, new KernelFile(p as string)]));
  }

  file(name: K): KernelFile {
    return this.files.get(name)!;
  }

  number(name: K): number | undefined {
    return this.files.get(name)!.number();
  }

  close(): void {
    for (const f of this.files.values()) f.close();
  }
}
