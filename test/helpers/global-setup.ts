/**
 * Every test run leaves /sys/kernel/mm/ksm exactly as it found it. This snapshot is
 * taken before any test file runs and compared after the last; a difference fails the
 * run (after putting the values back, so that a failed run does not leave the machine
 * boosted either).
 */
import { canWrite, diff, restore, snapshot } from './sysfs';

export default function setup(): () => void {
  if (canWrite() !== null) return () => {};
  const before = snapshot();
  return () => {
    const after = snapshot();
    const changed = diff(before, after);
    if (changed.length > 0) {
      restore(before);
      throw new Error(`Tests left /sys/kernel/mm/ksm changed (now restored):\n  ${changed.join('\n  ')}`);
    }
  };
}
