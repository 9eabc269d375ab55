// Logging in as the owner does, on the lab's real sshd and sudo: through an ssh-agent only (no key file), with a
// passphrase-protected key whose passphrase is in the secrets store, and as a normal user whose sudo asks for a
// password (from the secrets store too). Each also fails the way the owner should see it when the piece is missing.

import { execFileSync, spawnSync } from 'node:child_process'
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse, stringify } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../../lib/cli.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import type { Playbook } from '../../lib/role.ts'
import { DEFAULT_HOSTS, labAddress, labDown, labUp } from '../lab/lab.ts'
import { LAB_KEY, LAB_SECRETS_FILE } from '../lab/paths.ts'
import { LAB_INVENTORY, onHost } from './helpers.ts'

const PASSPHRASE = 'lab key pass-phrase 7f3a'
const SUDO_PASSWORD = 'owner sudo pw 91c2'

/** Who a command runs as, as root (through sudo) and as the login user. */
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
              name: 'Ask who runs the commands',
              async plan(ctx) {
                const root = (await ctx.must('id -un')).stdout.trim()
                const user = (await ctx.must('id -un', { sudo: false })).stdout.trim()
                return { status: 'ok', message: `${root} via ${user}` }
              },
            },
          ],
        },
      ],
    },
  ],
}

const work = mkdtempSync(join(tmpdir(), 'login-'))

/** The lab inventory with some lines changed (each [from, to] must be there: the test says so if the file moved on). */
function inventory(name: string, edits: [string, string][], append = ''): string {
  let text = readFileSync(LAB_INVENTORY, 'utf8')
  for (const [from, to] of edits) {
    if (!text.includes(from)) throw new Error(`${LAB_INVENTORY} has no line ${JSON.stringify(from)}`)
    text = text.replace(from, to)
  }
  const file = join(work, `${name}.yaml`)
  writeFileSync(file, text + append)
  return file
}

async function run(inv: string, env: Record<string, string | undefined>, args: string[] = []) {
  resetSecretsForTest()
  const saved = { SSH_AUTH_SOCK: process.env.SSH_AUTH_SOCK }
  for (const [k, v] of Object.entries(env)) v === undefined ? delete process.env[k] : (process.env[k] = v)
  const lines: string[] = []
  try {
    const code = await runCli(
      whoami,
      ['-i', inv, '-vv', '--retry-file', join(work, 'r.retry'), '-e', 'connect_timeout=3', ...args],
      { write: (l) => lines.push(l) },
    )
    return { code, out: lines.join('\n') }
  } finally {
    if (saved.SSH_AUTH_SOCK === undefined) delete process.env.SSH_AUTH_SOCK
    else process.env.SSH_AUTH_SOCK = saved.SSH_AUTH_SOCK
  }
}

let agentPid = ''
let agentSock = ''

beforeAll(async () => {
  await labUp(DEFAULT_HOSTS, { fresh: true })
  // A real ssh-agent holding the lab key.
  agentSock = join(work, 'agent.sock')
  const out = execFileSync('ssh-agent', ['-s', '-a', agentSock], { encoding: 'utf8' })
  agentPid = /SSH_AGENT_PID=(\d+)/.exec(out)?.[1] ?? ''
  const add = spawnSync('ssh-add', [LAB_KEY], { env: { ...process.env, SSH_AUTH_SOCK: agentSock }, encoding: 'utf8' })
  if (add.status !== 0) throw new Error(`ssh-add: ${add.stderr}`)
  // The owner's own user on pi3-worker-2: the lab key, and sudo that asks for a password.
  await onHost(
    'pi3-worker-2',
    [
      'useradd -m -s /bin/sh owner',
      `echo 'owner:${SUDO_PASSWORD}' | chpasswd`,
      'mkdir -p /home/owner/.ssh && cp /home/pi/.ssh/authorized_keys /home/owner/.ssh/ && chown -R owner:owner /home/owner/.ssh && chmod 700 /home/owner/.ssh',
      "echo 'owner ALL=(ALL:ALL) ALL' > /etc/sudoers.d/020_owner && chmod 440 /etc/sudoers.d/020_owner",
    ].join(' && '),
  )
  // The secrets store with the key's passphrase and the owner's sudo password.
  const secrets = (parse(readFileSync(LAB_SECRETS_FILE, 'utf8')) ?? {}) as Record<
    string,
    Record<string, Record<string, string>>
  >
  secrets['pi-cluster'] = {
    ...secrets['pi-cluster'],
    'pi-ssh': { passphrase: PASSPHRASE },
    'owner-sudo': { password: SUDO_PASSWORD },
  }
  writeFileSync(join(work, 'secrets.yaml'), stringify(secrets), { mode: 0o600 })
}, 600_000)

afterAll(async () => {
  if (agentPid) process.kill(Number(agentPid))
  await labDown()
})

describe('logging in as the owner does', () => {
  const secretsLine: [string, string] = [
    `secrets_file: ${LAB_SECRETS_FILE}`,
    `secrets_file: ${join(work, 'secrets.yaml')}`,
  ]

  it('through an ssh-agent only: no key file in the inventory, the agent at SSH_AUTH_SOCK holds the key', async () => {
    const inv = inventory('agent', [[`    ssh_key_file: ${LAB_KEY}\n`, '']])
    const ok = await run(inv, { SSH_AUTH_SOCK: agentSock })
    expect(ok.code, ok.out).toBe(0)
    for (const h of DEFAULT_HOSTS)
      expect(ok.out).toContain(`ok: [${h}] probe | Ask who runs the commands (root via pi)`)
    // Without the agent there is nothing to log in with, and the message says so.
    const none = await run(inv, { SSH_AUTH_SOCK: undefined })
    expect(none.code, none.out).toBe(4)
    expect(none.out).toContain(
      'authentication failed for user pi (check ssh_user and ssh_key_file or ssh_key_ref; no ssh-agent: SSH_AUTH_SOCK is not set)',
    )
  })

  it('with a passphrase-protected key: the passphrase comes from the secrets store and is never shown', async () => {
    const key = join(work, 'id_ed25519_encrypted')
    copyFileSync(LAB_KEY, key)
    execFileSync('ssh-keygen', ['-q', '-p', '-P', '', '-N', PASSPHRASE, '-f', key])
    expect(readFileSync(key, 'utf8')).not.toBe(readFileSync(LAB_KEY, 'utf8'))
    const edits: [string, string][] = [[`ssh_key_file: ${LAB_KEY}`, `ssh_key_file: ${key}`], secretsLine]
    const inv = inventory('passphrase', edits, '')
    const withRef = inventory('passphrase-ref', [
      ...edits,
      ['    ssh_user: pi\n', '    ssh_user: pi\n    ssh_key_passphrase_ref: op://pi-cluster/pi-ssh/passphrase\n'],
    ])
    const ok = await run(withRef, { SSH_AUTH_SOCK: undefined })
    expect(ok.code, ok.out).toBe(0)
    expect(ok.out).toContain('ok: [pi-k3s] probe | Ask who runs the commands (root via pi)')
    expect(ok.out).not.toContain(PASSPHRASE)
    // Without it: refused at once, saying what to do (not four retries as if the host were down).
    const refused = await run(inv, { SSH_AUTH_SOCK: undefined }, ['--limit', 'pi-k3s'])
    expect(refused.code, refused.out).toBe(4)
    expect(refused.out).toContain(
      `cannot use the SSH key (ssh_key_file ${key}): it is encrypted and no passphrase was given`,
    )
    expect(refused.out).not.toContain('attempts over')
  })

  it('as a normal user whose sudo asks for a password: given on stdin from the secrets store, never in argv or output', async () => {
    const host = `          address: ${labAddress('pi3-worker-2')}\n`
    const base: [string, string][] = [secretsLine, [host, `${host}          ssh_user: owner\n`]]
    const ok = await run(
      inventory('sudo', [
        ...base,
        [
          host + '          ssh_user: owner\n',
          `${host}          ssh_user: owner\n          become_password_ref: op://pi-cluster/owner-sudo/password\n`,
        ],
      ]),
      {},
      ['--limit', 'pi3-worker-2'],
    )
    expect(ok.code, ok.out).toBe(0)
    expect(ok.out).toContain('ok: [pi3-worker-2] probe | Ask who runs the commands (root via owner)')
    expect(ok.out).not.toContain(SUDO_PASSWORD)
    // Without the password sudo refuses (-n: never a prompt that would hang the run).
    const refused = await run(inventory('sudo-none', base), {}, ['--limit', 'pi3-worker-2'])
    expect(refused.code, refused.out).toBe(2)
    expect(refused.out).toMatch(/a password is required/)
  })
})
