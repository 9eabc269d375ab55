import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { defineConfig } from 'vitest/config'
import { TEST_LAB_ENV } from './test/lab/test-lab.ts'

// One scratch directory per vitest run for every temporary file of the tests, removed at the end
// (test/scratch-setup.ts). Set here, in vitest's main process, so the global setups and the workers agree on it.
process.env.PI_TEST_SCRATCH ??= mkdtempSync(join(tmpdir(), 'pi-provision-tests-'))
const scratch = { TMPDIR: process.env.PI_TEST_SCRATCH }

// Two projects: fast unit tests that need nothing but Node, and lab tests that boot real
// Debian hosts under systemd-nspawn (root + Linux only; see test/lab/).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          env: scratch,
          globalSetup: ['test/scratch-setup.ts'],
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
          env: { ...TEST_LAB_ENV, ...scratch },
          globalSetup: ['test/lab/test-lab-setup.ts', 'test/scratch-setup.ts'],
        },
      },
    ],
  },
})
