/**
 * vitest config for `npm run test:kernels`: the same pool and global setup as the project's
 * (the guest's own /sys/kernel/mm/ksm is snapshotted and compared), run from a read-only
 * work tree, so every cache goes to the guest's tmpfs /tmp.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import base from '../vitest.config.mjs';

export default defineConfig({
  ...base,
  root: fileURLToPath(new URL('..', import.meta.url)),
  cacheDir: process.env.NODE_KSM_VITE_CACHE ?? '/tmp/node-ksm-vite',
  test: {
    ...base.test,
    // Emulated guests run ~10-30x slower than the host.
    testTimeout: 600_000,
    hookTimeout: 300_000,
  },
});
