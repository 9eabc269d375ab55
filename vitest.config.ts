import { defineConfig } from 'vitest/config'

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
        },
      },
    ],
  },
})
