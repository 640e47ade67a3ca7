/**
 * Direct snapshot/restore of /sys/kernel/mm/ksm for the test harness. Kept apart from
 * lib/control.ts on purpose: the check that tests leave the machine as they found it
 * must not depend on the code under test.
 */
import fs from 'node:fs';

export const KSM = '/sys/kernel/mm/ksm';

/** Every writable knob, in the order in which writing them back is accepted. */
export const WRITABLE = [
  'advisor_mode',
  'pages_to_scan',
  'sleep_millisecs',
  'smart_scan',
  'use_zero_pages',
  'merge_across_nodes',
  'max_page_sharing',
  'stable_node_chains_prune_millisecs',
  'advisor_max_cpu',
  'advisor_target_scan_time',
  'advisor_min_pages_to_scan',
  'advisor_max_pages_to_scan',
  'run',
] as const;

export type Snapshot = Record<string, string>;

/** The raw text of every writable knob that exists (advisor_mode as its selected word). */
export function snapshot(): Snapshot {
  const out: Snapshot = {};
  for (const name of WRITABLE) {
    const file = `${KSM}/${name}`;
    if (!fs.existsSync(file)) continue;
    let text = fs.readFileSync(file, 'utf8').trim();
    if (name === 'advisor_mode') text = /\[(\S+)\]/.exec(text)?.[1] ?? text;
    out[name] = text;
  }
  return out;
}

function write(name: string, value: string): void {
  fs.writeFileSync(`${KSM}/${name}`, value);
}

/**
 * Writes a snapshot back. pages_to_scan cannot be written under the scan-time advisor,
 * and merge_across_nodes/max_page_sharing refuse (EBUSY) while pages are shared, so the
 * advisor goes to none first and those two are only written when they differ.
 */
export function restore(snap: Snapshot): void {
  const now = snapshot();
  if (now.advisor_mode !== undefined && now.advisor_mode !== 'none') write('advisor_mode', 'none');
  for (const name of WRITABLE) {
    if (name === 'advisor_mode' || name === 'run') continue;
    const want = snap[name];
    if (want === undefined || now[name] === want) continue;
    write(name, want);
  }
  if (snap.advisor_mode !== undefined) write('advisor_mode', snap.advisor_mode);
  if (snap.run !== undefined && snapshot().run !== snap.run) write('run', snap.run);
}

/** Lines "name: before -> after" for every knob that differs. */
export function diff(a: Snapshot, b: Snapshot): string[] {
  const names = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...names].filter((n) => a[n] !== b[n]).map((n) => `${n}: ${a[n]} -> ${b[n]}`);
}

export function canWrite(): string | null {
  if (process.platform !== 'linux') return `not Linux (${process.platform})`;
  if (!fs.existsSync(`${KSM}/run`)) return `${KSM} does not exist (kernel without CONFIG_KSM)`;
  try {
    fs.accessSync(`${KSM}/run`, fs.constants.W_OK);
  } catch (err) {
    return `${KSM} is not writable (${(err as NodeJS.ErrnoException).code}): run the tests as root on a host with writable sysfs`;
  }
  return null;
}
