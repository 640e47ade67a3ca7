/**
 * The harness itself. A test process SIGKILLed inside withFastKsm (a vitest timeout,
 * `timeout`, Ctrl-C twice) runs no `finally`: it leaves the fast settings, its snapshot
 * file, and a released flock. The next holder of the lock must put the settings back.
 */
import fs from 'node:fs';
import { beforeEach, expect, it } from 'vitest';
import { FAST, SNAPSHOT_FILE, lockKsm, requireKsm } from './helpers/ksm';
import { restore, snapshot } from './helpers/sysfs';

beforeEach(({ skip }) => requireKsm({ skip }));

it('restores the settings a test process killed inside withFastKsm left behind', async () => {
  let unlock = await lockKsm();
  const before = snapshot();
  try {
    // Exactly what withFastKsm has done by the time its process can be killed.
    fs.writeFileSync(SNAPSHOT_FILE, JSON.stringify(before));
    restore({ ...before, ...FAST });
    expect(snapshot().sleep_millisecs).toBe('0');
  } catch (err) {
    restore(before);
    throw err;
  } finally {
    unlock(); // as the kernel does when the process dies
  }
  unlock = await lockKsm();
  try {
    expect(snapshot()).toEqual(before);
    expect(fs.existsSync(SNAPSHOT_FILE)).toBe(false);
  } finally {
    restore(before);
    unlock();
  }
});
