// Step primitives that no role of the site uses yet, run for real on the controller through the runner with a
// LocalConnection (scripts under sh, as on a host): line in file and wait-for-port.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { LocalConnection } from '../../lib/connection.ts'
import { parseInventory } from '../../lib/inventory.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import type { Role } from '../../lib/role.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { lineInFile, waitForPort } from '../../lib/steps.ts'
import { MemorySecrets } from './fakes.ts'

const INV = 'all:\n  children:\n    server:\n      hosts:\n        here: { address: 127.0.0.1 }\n'
const owner = process.getuid?.() === 0 ? 'root' : null

async function runRole(role: Role, check = false) {
  const rep = new RecordingReporter(0)
  const s = await runPlaybook(
    { name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] },
    {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: () => new LocalConnection('here'),
      check,
    },
  )
  return { s, rep }
}

describe.runIf(owner)('lineInFile (as root: the planned script chowns to root)', () => {
  it('replaces the matching line, keeps the others, and a rerun changes nothing; --check writes nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'line-'))
    const f = join(dir, 'sshd_config')
    writeFileSync(f, 'Port 22\n#PasswordAuthentication yes\nUsePAM yes\n')
    const role: Role = {
      name: 'r',
      steps: [
        lineInFile('No password logins', () => ({
          path: f,
          line: 'PasswordAuthentication no',
          match: /^#?PasswordAuthentication\b/,
        })),
      ],
    }
    const dry = await runRole(role, true)
    expect(dry.s.counts.here.changed).toBe(1)
    expect(readFileSync(f, 'utf8')).toBe('Port 22\n#PasswordAuthentication yes\nUsePAM yes\n')
    const first = await runRole(role)
    expect(first.s.counts.here.changed).toBe(1)
    expect(readFileSync(f, 'utf8')).toBe('Port 22\nPasswordAuthentication no\nUsePAM yes\n')
    const second = await runRole(role)
    expect(second.s.counts.here.changed).toBe(0)
  })

  it('appends the line when nothing matches', async () => {
    const f = join(mkdtempSync(join(tmpdir(), 'line-')), 'modules')
    writeFileSync(f, 'overlay\n')
    await runRole({ name: 'r', steps: [lineInFile('br_netfilter at boot', () => ({ path: f, line: 'br_netfilter' }))] })
    expect(readFileSync(f, 'utf8')).toBe('overlay\nbr_netfilter\n')
  })
})

describe('waitForPort', () => {
  it('is ok as soon as something listens, and times out naming the port and host otherwise', async () => {
    const server = createServer((s) => s.end())
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as { port: number }).port
    try {
      const up = await runRole({
        name: 'r',
        steps: [waitForPort('Wait for the API', () => ({ host: '127.0.0.1', port, timeoutSec: 5 }))],
      })
      expect(up.s.exitCode, up.rep.lines.join('\n')).toBe(0)
    } finally {
      server.close()
    }
    const down = await runRole({
      name: 'r',
      steps: [waitForPort('Wait for the API', () => ({ host: '127.0.0.1', port, timeoutSec: 1 }))],
    })
    expect(down.s.exitCode).toBe(2)
    expect(down.rep.lines.join('\n')).toContain(`timed out after 1s waiting for port ${port} on 127.0.0.1`)
  })
})
