// Issue 3's proof that the runner really talks to real hosts: its own SSH connection to each lab host,
// a real reboot seen as a new boot_id, a reflashed host's new key refused, a cut host reported unreachable.

import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../../lib/cli.ts'
import { SshConnection } from '../../lib/connection.ts'
import { hostVars, loadInventory } from '../../lib/inventory.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import type { Playbook } from '../../lib/role.ts'
import { rebootHandler } from '../../lib/steps.ts'
import { DEFAULT_HOSTS, labAddress, labBootId, labCut, labDown, labHeal, labUp, labWipe } from '../lab/lab.ts'
import { LAB_INVENTORY } from './helpers.ts'

const inv = () => loadInventory(LAB_INVENTORY)

function sshTo(name: string): SshConnection {
  const v = hostVars(inv().hosts.get(name)!)
  return new SshConnection({
    host: name,
    address: v.address!,
    port: v.ssh_port,
    user: v.ssh_user,
    keyFile: v.ssh_key_file,
    knownHostsFile: v.known_hosts_file,
    trustNewHostKeys: false,
    connectTimeoutSec: 5,
  })
}

const whoami: Playbook = {
  name: 'whoami',
  plays: [
    {
      name: 'Who is there',
      hosts: 'all',
      roles: [
        {
          name: 'probe',
          steps: [
            {
              name: 'Read the hostname',
              async plan(ctx) {
                const r = await ctx.must('hostname')
                return { status: 'ok', message: r.stdout.trim() }
              },
            },
          ],
        },
      ],
    },
  ],
}

async function runWhoami(args: string[] = []) {
  resetSecretsForTest()
  const lines: string[] = []
  const dir = mkdtempSync(join(tmpdir(), 'lab-run-'))
  const code = await runCli(
    whoami,
    ['-i', LAB_INVENTORY, '--retry-file', join(dir, 'r.retry'), '-e', 'connect_timeout=3', ...args],
    { write: (l) => lines.push(l) },
  )
  return { code, out: lines.join('\n') }
}

beforeAll(async () => {
  await labUp(DEFAULT_HOSTS, { fresh: true })
})

afterAll(async () => {
  await labDown()
})

describe('the runner on real lab hosts', () => {
  it('runs commands on every host over its own SSH connection, as the login user and through sudo', async () => {
    for (const name of DEFAULT_HOSTS) {
      const c = sshTo(name)
      try {
        const root = await c.run('id -un; hostname')
        expect(root.code).toBe(0)
        expect(root.stdout).toBe(`root\n${name}\n`)
        const user = await c.run('id -un', { sudo: false })
        expect(user.stdout).toBe('pi\n')
        // A secret travels on stdin and arrives intact, quotes and all.
        const echo = await c.run('cat', { stdin: `it's a "secret" $HOME \\ \n` })
        expect(echo.stdout).toBe(`it's a "secret" $HOME \\ \n`)
      } finally {
        await c.close()
      }
    }
  })

  it('reboots a host for real: the reboot handler waits for a new boot_id', async () => {
    const before = await labBootId('pi3-worker-1')
    const pb: Playbook = {
      name: 'reboot',
      plays: [
        {
          name: 'Reboot one',
          hosts: 'pi3-worker-1',
          roles: [
            {
              name: 'r',
              steps: [
                {
                  name: 'Ask for a reboot',
                  notify: ['Reboot'],
                  async plan() {
                    return { summary: 'ask for a reboot' }
                  },
                },
              ],
              handlers: [rebootHandler('Reboot')],
            },
          ],
        },
      ],
    }
    resetSecretsForTest()
    const lines: string[] = []
    const code = await runCli(pb, ['-i', LAB_INVENTORY], { write: (l) => lines.push(l) })
    expect(code, lines.join('\n')).toBe(0)
    expect(lines.join('\n')).toMatch(/changed: \[pi3-worker-1\] r \| handler: Reboot \(rebooted in \d+\.\ds\)/)
    expect(await labBootId('pi3-worker-1')).not.toBe(before)
  })

  it('refuses a reflashed host whose key changed, naming both fingerprints and the way forward; the others run', async () => {
    await labWipe('pi3-worker-2')
    const { code, out } = await runWhoami()
    expect(code).toBe(4)
    expect(out).toMatch(
      new RegExp(
        `UNREACHABLE: \\[pi3-worker-2\\] HOST KEY CHANGED for pi3-worker-2 \\(${labAddress('pi3-worker-2').replaceAll('.', '\\.')}\\): known_hosts has SHA256:\\S+.*, the host now presents SHA256:\\S+\\. Refusing to connect\\.`,
      ),
    )
    expect(out).toContain('hint: if the host was reflashed, run playbooks/rebuild.mts pi3-worker-2')
    expect(out).toMatch(/ok: \[pi-k3s\] probe \| Read the hostname/)
    expect(out).toMatch(/pi3-worker-2\s+: ok=0\s+changed=0\s+unreachable=1\s+failed=0/)
    // --trust-new-host-keys does not help: only unknown keys may be trusted, never changed ones.
    const again = await runWhoami(['--trust-new-host-keys'])
    expect(again.code).toBe(4)
    expect(again.out).toContain('HOST KEY CHANGED for pi3-worker-2')
  })

  it('reports a cut host unreachable while the others succeed, exit 4; healed, it works again', async () => {
    await labCut('pi3-worker-1')
    try {
      const { code, out } = await runWhoami(['--limit', '!pi3-worker-2'])
      expect(code).toBe(4)
      expect(out).toContain(`UNREACHABLE: [pi3-worker-1] cannot connect to ${labAddress('pi3-worker-1')}:22`)
      expect(out).toMatch(/pi-k3s\s+: ok=1\s+changed=0\s+unreachable=0\s+failed=0/)
      expect(out).toMatch(/pi3-worker-1\s+: ok=0\s+changed=0\s+unreachable=1\s+failed=0/)
    } finally {
      await labHeal('pi3-worker-1')
    }
    const healed = await runWhoami(['--limit', 'pi3-worker-1'])
    expect(healed.code).toBe(0)
  })
})
