// Global setup of the vitest `lab` project (vitest.config.ts), run in vitest's main process: the test lab's
// environment (test-lab.ts) before anything here imports paths.ts, and at the end the test lab brought down, so no
// test-lab host, artifact server, bridge, NAT rule or ip_forward change outlives the suite (PI_LAB_KEEP=1 keeps it
// up to look into a failure). The user's lab is another state dir, bridge and subnet: down here does not touch it.
import { existsSync } from 'node:fs'
import { TEST_LAB_ENV } from './test-lab.ts'

export function setup(): void {
  Object.assign(process.env, TEST_LAB_ENV)
}

export async function teardown(): Promise<void> {
  Object.assign(process.env, TEST_LAB_ENV)
  if (process.platform !== 'linux' || process.getuid?.() !== 0 || !existsSync(TEST_LAB_ENV.PI_LAB_DIR)) return
  const { labDown, labStatus } = await import('./lab.ts')
  if (process.env.PI_LAB_KEEP === '1') {
    const up = (await labStatus()).hosts.filter((h) => h.state === 'running').map((h) => h.name)
    process.stderr.write(
      `test lab kept up (PI_LAB_KEEP=1): ${up.join(' ') || 'no host'}; see it with: npm run lab -- --test-lab status\n`,
    )
    return
  }
  await labDown()
  const left = (await labStatus()).hosts.filter((h) => h.state !== 'stopped').map((h) => h.name)
  if (left.length) throw new Error(`test lab hosts still running after down: ${left.join(' ')}`)
}
