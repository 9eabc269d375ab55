// Global setup of both vitest projects (vitest.config.ts): every temporary file or directory a test makes through
// os.tmpdir() lands in one scratch directory per vitest run (its workers and their children get TMPDIR), and the
// scratch goes at the end. Tests plant credentials (tokens, keys, kubeconfigs) in temporary files: none of them
// may outlive the run in /tmp. PI_TEST_KEEP_SCRATCH=1 keeps it to look into a failure.
import { rmSync } from 'node:fs'

// Only a teardown: vitest takes a global setup file that exports setup, teardown or both.
export function teardown(): void {
  const scratch = process.env.PI_TEST_SCRATCH
  if (!scratch) return
  if (process.env.PI_TEST_KEEP_SCRATCH === '1') {
    process.stderr.write(`test scratch kept (PI_TEST_KEEP_SCRATCH=1): ${scratch}\n`)
    return
  }
  rmSync(scratch, { recursive: true, force: true })
}
