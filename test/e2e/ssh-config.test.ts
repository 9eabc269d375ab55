// The owner's ~/.ssh/config, on the lab's real sshd: a host the inventory names with no address, user or key is
// reached as `ssh NAME` would reach it, through an ssh config (ssh_config_file) that gives its HostName, User,
// Port (a second port its sshd listens on, and the only one known_hosts knows for it) and IdentityFile (with a
// token). pi-prep --check runs through it as the owner runs it; the ssh config turned off, or with a hostile
// HostName, the run stops before any host. And the 1Password SSH agent's way: IdentityFile naming a public key,
// the agent holding more keys than sshd lets a client try, the named one offered first.

import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli } from '../../lib/cli.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import type { Playbook } from '../../lib/role.ts'
import { DEFAULT_HOSTS, labDown, labUp } from '../lab/lab.ts'
import { LAB_KEY, LAB_KNOWN_HOSTS } from '../lab/paths.ts'
import { LAB_INVENTORY, onHost, parseRecap, REPO } from './helpers.ts'

const PORT = 2222
const work = mkdtempSync(join(tmpdir(), 'ssh-config-'))
const labText = readFileSync(LAB_INVENTORY, 'utf8')
/** The host reached only through the ssh config: the last of the lab's hosts. */
const target = DEFAULT_HOSTS[DEFAULT_HOSTS.length - 1]
const address = addressOf(labText, target)

/** A host's address as the lab inventory gives it (wherever the host is in its groups). */
function addressOf(text: string, host: string): string {
  const found: string[] = []
  const walk = (node: unknown): void => {
    if (!node || typeof node !== 'object') return
    for (const [k, v] of Object.entries(node)) {
      if (k === 'hosts' && v && typeof v === 'object' && host in v) {
        const a = (v as Record<string, { address?: string }>)[host]?.address
        if (a) found.push(a)
      }
      walk(v)
    }
  }
  walk(parse(text))
  if (found.length !== 1) throw new Error(`inventory/lab.yaml does not give ${host} one address`)
  return found[0]
}

/**
 * The lab inventory as an owner with an ssh config writes it: no ssh_user or ssh_key_file under all.vars, no
 * address for `target`, known_hosts a copy, ssh_config_file naming `config`.
 */
function inventory(name: string, config: string): string {
  const lines = labText.split('\n')
  const out: string[] = []
  let dropAddress = false
  let inAllVars = false
  for (const line of lines) {
    if (/^ {2}vars:\s*$/.test(line) && !inAllVars && out.length < 10) {
      out.push(line, `    ssh_config_file: ${config}`, `    known_hosts_file: ${join(work, 'known_hosts')}`)
      inAllVars = true
      continue
    }
    if (/^ {4}(ssh_user|ssh_key_file|ssh_config_file|known_hosts_file):/.test(line)) continue
    if (line.trim() === `${target}:`) dropAddress = true
    else if (dropAddress && /^\s+address:/.test(line)) {
      dropAddress = false
      continue
    }
    out.push(line)
  }
  const text = out.join('\n')
  if (!inAllVars || text.includes(`address: ${address}`)) throw new Error('inventory/lab.yaml is not as expected')
  const file = join(work, `${name}.yaml`)
  writeFileSync(file, text)
  return file
}

/** An ssh config file (0600, as ssh wants it). */
function sshConfig(name: string, text: string): string {
  const file = join(work, name)
  writeFileSync(file, text, { mode: 0o600 })
  chmodSync(file, 0o600)
  return file
}

/** Who runs a command as root (through sudo) and as the login user. */
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

async function whoamiRun(inv: string, env: Record<string, string | undefined>, args: string[] = []) {
  resetSecretsForTest()
  const saved = process.env.SSH_AUTH_SOCK
  if (env.SSH_AUTH_SOCK === undefined) delete process.env.SSH_AUTH_SOCK
  else process.env.SSH_AUTH_SOCK = env.SSH_AUTH_SOCK
  const lines: string[] = []
  try {
    const code = await runCli(
      whoami,
      ['-i', inv, '-vv', '--retry-file', join(work, 'r.retry'), '-e', 'connect_timeout=3', ...args],
      { write: (l) => lines.push(l) },
    )
    return { code, out: lines.join('\n') }
  } finally {
    if (saved === undefined) delete process.env.SSH_AUTH_SOCK
    else process.env.SSH_AUTH_SOCK = saved
  }
}

/** `npx zx playbooks/<name>.mts -i inv ...args` as the owner types it, without an ssh-agent. */
function playbook(name: string, inv: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const env: Record<string, string | undefined> = { ...process.env, CI: '1' }
    delete env.SSH_AUTH_SOCK
    const child = spawn('npx', ['zx', `playbooks/${name}.mts`, '-i', inv, ...args], {
      cwd: REPO,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? 255, out }))
  })
}

let agentPid = ''

beforeAll(async () => {
  await labUp(DEFAULT_HOSTS, { fresh: true })
  // The owner's own user on the target, with the lab key and sudo; its sshd also on PORT.
  await onHost(
    target,
    [
      'useradd -m -s /bin/sh owner',
      'mkdir -p /home/owner/.ssh && cp /home/pi/.ssh/authorized_keys /home/owner/.ssh/',
      'chown -R owner:owner /home/owner/.ssh && chmod 700 /home/owner/.ssh',
      "echo 'owner ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/020_owner && chmod 440 /etc/sudoers.d/020_owner",
      `printf 'Port 22\\nPort ${PORT}\\n' > /etc/ssh/sshd_config.d/20-second-port.conf`,
      'systemctl restart ssh.service',
      `for i in $(seq 50); do ss -ltn | grep -q ':${PORT} ' && break; sleep 0.1; done; ss -ltn | grep -q ':${PORT} '`,
    ].join(' && '),
  )
  // known_hosts as the owner's: the target known only on PORT (so a login on port 22 would be refused).
  const known = readFileSync(LAB_KNOWN_HOSTS, 'utf8').split('\n').filter(Boolean)
  const targetKeys = known.filter((l) => l.split(' ')[0] === address)
  if (targetKeys.length === 0) throw new Error(`${LAB_KNOWN_HOSTS} has no key of ${address}`)
  const rest = known.filter((l) => l.split(' ')[0] !== address)
  const moved = targetKeys.map((l) => `[${address}]:${PORT} ${l.split(' ').slice(1).join(' ')}`)
  writeFileSync(join(work, 'known_hosts'), [...rest, ...moved, ''].join('\n'))
  // The key where the owner keeps it, named after the host (IdentityFile .../id_%n).
  mkdirSync(join(work, 'keys'), { mode: 0o700 })
  copyFileSync(LAB_KEY, join(work, 'keys', `id_${target}`))
  chmodSync(join(work, 'keys', `id_${target}`), 0o600)
}, 600_000)

afterAll(async () => {
  if (agentPid) process.kill(Number(agentPid))
  // It holds a copy of the lab key.
  rmSync(work, { recursive: true, force: true })
  await labDown()
})

describe("the owner's ssh config", () => {
  const config = () =>
    sshConfig(
      'config',
      [
        '# as ~/.ssh/config',
        `Host ${target}`,
        `  HostName ${address}`,
        '  User owner',
        `  Port ${PORT}`,
        `  IdentityFile ${work}/keys/id_%n`,
        'Host *',
        '  User pi',
        `  IdentityFile ${LAB_KEY}`,
        '',
      ].join('\n'),
    )

  it('gives a host its address, user, port and key: whoami, then pi-prep --check as the owner runs it', async () => {
    const inv = inventory('owner', config())
    const who = await whoamiRun(inv, { SSH_AUTH_SOCK: undefined })
    expect(who.code, who.out).toBe(0)
    expect(who.out).toContain(`ok: [${target}] probe | Ask who runs the commands (root via owner)`)
    for (const h of DEFAULT_HOSTS.filter((x) => x !== target))
      expect(who.out).toContain(`ok: [${h}] probe | Ask who runs the commands (root via pi)`)

    const list = await playbook('pi-prep', inv, ['--list-hosts'])
    expect(list.code, list.out).toBe(0)
    expect(list.out).toContain(`${target}  ${address}`)

    const check = await playbook('pi-prep', inv, ['--check'])
    expect(check.code, check.out).toBe(0)
    const recap = parseRecap(check.out)
    for (const h of DEFAULT_HOSTS) expect(recap[h], check.out).toMatchObject({ unreachable: 0, failed: 0 })
  })

  it('without it (ssh_config_file=none) the host has no address, and the run stops before any host', async () => {
    const inv = inventory('owner-off', config())
    const off = await playbook('pi-prep', inv, ['--check', '-e', 'ssh_config_file=none'])
    expect(off.code, off.out).toBe(1)
    expect(off.out).toContain(`host "${target}" has no address`)
    expect(off.out).toContain('or a HostName for it in the ssh config')
    expect(off.out).not.toContain('PLAY')
  })

  it('a hostile HostName is refused at its file:line:col before any host', async () => {
    const bad = sshConfig('bad', `Host ${target}\n  HostName -oProxyCommand=reboot\n  User owner\n`)
    const run = await playbook('pi-prep', inventory('owner-bad', bad), ['--check'])
    expect(run.code, run.out).toBe(1)
    expect(run.out).toContain(
      `${bad}:2:12: HostName "-oProxyCommand=reboot" for host "${target}": expected an IPv4/IPv6 address or host name`,
    )
    expect(run.out).not.toContain('PLAY')
  })

  it('IdentityFile naming a public key: the agent key it names is offered first, among more keys than sshd allows', async () => {
    // An agent holding six other keys before the lab key: offered in the agent's order, sshd's MaxAuthTries (6)
    // would end the login before the lab key.
    const sock = join(work, 'agent.sock')
    const started = execFileSync('ssh-agent', ['-s', '-a', sock], { encoding: 'utf8' })
    agentPid = /SSH_AGENT_PID=(\d+)/.exec(started)?.[1] ?? ''
    const env = { ...process.env, SSH_AUTH_SOCK: sock }
    for (let i = 0; i < 6; i++) {
      const decoy = join(work, `decoy${i}`)
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', decoy])
      expect(spawnSync('ssh-add', [decoy], { env }).status).toBe(0)
    }
    expect(spawnSync('ssh-add', [LAB_KEY], { env }).status).toBe(0)
    const pub = join(work, 'lab.pub')
    writeFileSync(pub, execFileSync('ssh-keygen', ['-y', '-f', LAB_KEY], { encoding: 'utf8' }))
    const cfg = sshConfig(
      'config-agent',
      [
        `Host ${target}`,
        `  HostName ${address}`,
        `  Port ${PORT}`,
        '  User owner',
        '  IdentitiesOnly yes',
        `  IdentityFile ${pub}`,
        '',
      ].join('\n'),
    )
    const inv = inventory('owner-agent', cfg)
    const ok = await whoamiRun(inv, { SSH_AUTH_SOCK: sock }, ['--limit', target])
    expect(ok.code, ok.out).toBe(0)
    expect(ok.out).toContain(`ok: [${target}] probe | Ask who runs the commands (root via owner)`)
    // The same agent with the key named by no IdentityFile: the decoys come first and sshd gives up.
    const plain = sshConfig(
      'config-plain',
      [`Host ${target}`, `  HostName ${address}`, `  Port ${PORT}`, '  User owner', ''].join('\n'),
    )
    const refused = await whoamiRun(inventory('owner-plain', plain), { SSH_AUTH_SOCK: sock }, ['--limit', target])
    expect(refused.code, refused.out).toBe(4)
    // Without an agent a public key cannot log in, and the message says why (no four retries).
    const none = await whoamiRun(inv, { SSH_AUTH_SOCK: undefined }, ['--limit', target])
    expect(none.code, none.out).toBe(4)
    expect(none.out).toContain(
      `cannot use the SSH key (ssh_key_file ${pub}): it is a public key, whose private half must be in an ssh-agent, and SSH_AUTH_SOCK is not set`,
    )
    expect(none.out).not.toContain('attempts over')
  })
})
