/**
 * Every test run leaves /sys/kernel/mm/ksm exactly as it found it. This snapshot is
 * taken before any test file runs and compared after the last, each under the
 * machine-wide test lock (so a test run in another shell, holding the lock with the
 * scanner boosted, is neither mistaken for a leak nor clobbered). A difference fails
 * the run, after putting the values back.
 */
import { ksmUnavailable, lockKsm } from './ksm';
import { diff, restore, snapshot } from './sysfs';

export default async function setup(): Promise<() => Promise<void>> {
  if (ksmUnavailable() !== null) return async () => {};
  let unlock = await lockKsm();
  const before = snapshot();
  unlock();
  return async () => {
    unlock = await lockKsm();
    try {
      const changed = diff(before, snapshot());
      if (changed.length > 0) {
        restore(before);
        throw new Error(`Tests left /sys/kernel/mm/ksm changed (now restored):\n  ${changed.join('\n  ')}`);
      }
    } finally {
      unlock();
    }
  };
}
