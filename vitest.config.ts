import { defineConfig } from 'vitest/config'
import { TEST_LAB_ENV } from './test/lab/test-lab.ts'

// Two projects: fast unit tests that need nothing but Node, and lab tests that boot real
// Debian hosts under systemd-nspawn (root + Linux only; see test/lab/).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
        },
      },
      {
        test: {
          name: 'lab',
          include: ['test/e2e/**/*.test.ts'],
          fileParallelism: false,
          testTimeout: 600_000,
          hookTimeout: 900_000,
          // The lab tests run on a lab of their own, never the user's (test/lab/test-lab.ts): its environment is
          // in the workers' process.env before a test file imports test/lab/paths.ts, and the global setup sets it
          // for itself and brings that lab down at the end.
          env: { ...TEST_LAB_ENV },
          globalSetup: ['test/lab/test-lab-setup.ts'],
        },
      },
    ],
  },
})
