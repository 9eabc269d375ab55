// ~/.ssh/config as `ssh NAME` reads it (lib/sshconfig.ts), and as the inventory takes it (applySshConfig in
// lib/inventory-sshconfig.ts): precedence, Host patterns, first match wins, Include, tokens, Match refused with a warning,
// and every value a host takes checked at file:line:col before any host is contacted.

import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import { runCli } from '../../lib/cli.ts'
import { LocalConnection } from '../../lib/connection.ts'
import { ProvisionError } from '../../lib/errors.ts'
import { parseExtraVars } from '../../lib/extra-vars.ts'
import { checkHosts } from '../../lib/host-checks.ts'
import { hostAddress } from '../../lib/host-identity.ts'
import { hostVars, parseInventory, type Inventory } from '../../lib/inventory.ts'
import { applySshConfig } from '../../lib/inventory-sshconfig.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import type { Playbook } from '../../lib/role.ts'
import { globMatches, hostMatches, SshConfig } from '../../lib/sshconfig.ts'
import { expandIdentityFile } from '../../lib/sshconfig-tokens.ts'
import type { Vars } from '../../lib/vars.ts'

const dir = mkdtempSync(join(tmpdir(), 'sshconfig-test-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

let n = 0
/** A file in the test directory (0600), with the given text; its path. */
function file(text: string, name = `f${++n}`): string {
  const path = join(dir, name)
  mkdirSync(join(path, '..'), { recursive: true })
  writeFileSync(path, text, { mode: 0o600 })
  chmodSync(path, 0o600)
  return path
}

function thrown(f: () => unknown): ProvisionError {
  try {
    f()
  } catch (e) {
    expect(e).toBeInstanceOf(ProvisionError)
    return e as ProvisionError
  }
  throw new Error('expected a ProvisionError')
}

/** Each problem as "file:line:col: message". */
function places(e: ProvisionError): string[] {
  return e.problems.map((p) => `${p.place.file}:${p.place.line}:${p.place.col}: ${p.message}`)
}

describe('reading an ssh config', () => {
  it('first value of each keyword wins across matching Host blocks; IdentityFile collects every one', () => {
    const cfg = SshConfig.parse(
      [
        '# the owner config',
        'Host pi-k3s',
        '  HostName 192.0.2.55',
        '  User owner',
        '  IdentityFile ~/.ssh/pi',
        'Host pi*',
        '  HostName 192.0.2.99',
        '  Port 2222',
        '  User someone-else',
        '  IdentityFile ~/.ssh/fallback',
        'Host *',
        '  User pi',
        '  Port 22',
      ].join('\n'),
      '/home/o/.ssh/config',
    )
    const c = cfg.lookup('pi-k3s')
    expect(c.hostName).toEqual({ value: '192.0.2.55', file: '/home/o/.ssh/config', line: 3, col: 12 })
    expect(c.user?.value).toBe('owner')
    expect(c.port).toMatchObject({ value: '2222', line: 8 })
    expect(c.identityFiles.map((f) => [f.value, f.line])).toEqual([
      ['~/.ssh/pi', 5],
      ['~/.ssh/fallback', 10],
    ])
    const other = cfg.lookup('pi3-worker-1')
    expect(other.hostName?.value).toBe('192.0.2.99')
    expect(other.user?.value).toBe('someone-else')
    const unrelated = cfg.lookup('github.com')
    expect(unrelated).toMatchObject({ user: { value: 'pi' }, port: { value: '22' }, identityFiles: [] })
    expect(unrelated.hostName).toBeUndefined()
  })

  it('lines before any Host apply to every host, and win over later blocks', () => {
    const c = SshConfig.parse('User early\nHost pi-k3s\n  User late\n', '/c').lookup('pi-k3s')
    expect(c.user?.value).toBe('early')
  })

  it('Host patterns: * any run, ? exactly one character, ! excludes, several per line', () => {
    expect(globMatches('pi?-worker-*', 'pi3-worker-12')).toBe(true)
    expect(globMatches('pi?-worker-*', 'pi-worker-1')).toBe(false) // ? is one character, never none
    expect(globMatches('pi?', 'pi')).toBe(false)
    expect(globMatches('*', '')).toBe(true)
    expect(globMatches('a*b*c', 'axxbyyc')).toBe(true)
    expect(globMatches('a*b*c', 'axxbyy')).toBe(false)
    expect(globMatches('pi.lan', 'pixlan')).toBe(false) // "." is itself
    expect(hostMatches(['pi*', '!pi3-worker-2'], 'pi3-worker-1')).toBe(true)
    expect(hostMatches(['pi*', '!pi3-worker-2'], 'pi3-worker-2')).toBe(false)
    expect(hostMatches(['!pi3-worker-2'], 'pi3-worker-1')).toBe(false) // a negation alone matches nothing
    expect(hostMatches(['nas', 'pi-k3s'], 'pi-k3s')).toBe(true)
    const cfg = SshConfig.parse('Host pi* !pi3-worker-2\n  User owner\n', '/c')
    expect(cfg.lookup('pi3-worker-1').user?.value).toBe('owner')
    expect(cfg.lookup('pi3-worker-2').user).toBeUndefined()
    // The name is matched lowercased, as ssh does.
    expect(cfg.lookup('PI3-Worker-1').user?.value).toBe('owner')
  })

  it('keywords in any case, "=" or spaces, quotes, escapes and trailing comments', () => {
    const cfg = SshConfig.parse(
      [
        'HOST pi-k3s',
        '\thostname=192.0.2.55',
        '  USER = owner # who I am',
        '  IdentityFile "/keys/my key"',
        "  IdentityFile '/keys/other key'",
        '  IdentityFile /keys/third\\ key',
      ].join('\n'),
      '/c',
    )
    const c = cfg.lookup('pi-k3s')
    expect(c.hostName?.value).toBe('192.0.2.55')
    expect(c.user?.value).toBe('owner')
    expect(c.identityFiles.map((f) => f.value)).toEqual(['/keys/my key', '/keys/other key', '/keys/third key'])
  })

  it('Match blocks are not evaluated: a warning names each, and its lines apply to no host', () => {
    const cfg = SshConfig.parse(
      [
        'Host pi-k3s',
        '  User owner',
        'Match host pi-k3s exec "true"',
        '  User matched',
        '  Port 2200',
        'Match all',
        '  Port 2222',
      ].join('\n'),
      '/home/o/.ssh/config',
    )
    expect(cfg.warnings).toEqual([
      '/home/o/.ssh/config:3: "Match" is not supported: the lines of this Match block are ignored for every host (put what the Pis need under a Host line)',
    ])
    const c = cfg.lookup('pi-k3s')
    expect(c.user?.value).toBe('owner')
    expect(c.port?.value).toBe('2222') // "Match all" is every host, like Host *
  })

  it('Include: relative to the config directory, * in the last part (sorted), conditional inside a Host block', () => {
    const base = join(dir, 'inc')
    file('Host pi-k3s\n  User from-a\n', 'inc/conf.d/a.conf')
    file('Host *\n  Port 2222\n', 'inc/conf.d/b.conf')
    file('User only-for-nas\n', 'inc/nas.conf')
    file('Host nope\n  User hidden\n', 'inc/conf.d/.hidden')
    const main = file('Include conf.d/*.conf\nHost nas\n  Include nas.conf\nHost *\n  User last\n', 'inc/config')
    const cfg = SshConfig.read(main)
    expect(cfg.lookup('pi-k3s')).toMatchObject({ user: { value: 'from-a', file: join(base, 'conf.d/a.conf') } })
    expect(cfg.lookup('pi-k3s').port).toMatchObject({ value: '2222', line: 2 })
    expect(cfg.lookup('nas').user).toMatchObject({ value: 'only-for-nas', line: 1 })
    expect(cfg.lookup('other').user?.value).toBe('last')
    // A file that is not there is skipped, as ssh does.
    expect(SshConfig.read(file('Include /nonexistent/config\nUser x\n')).lookup('h').user?.value).toBe('x')
  })

  it('Include of itself stops at 16 levels with an error at the line', () => {
    const self = join(dir, 'loop')
    writeFileSync(self, `Include ${self}\n`, { mode: 0o600 })
    const e = thrown(() => SshConfig.read(self))
    expect(e.problems.some((p) => p.message === 'Include nested deeper than 16 files')).toBe(true)
  })

  it('syntax errors, all at once, at file:line:col', () => {
    const path = '/home/o/.ssh/config'
    const e = thrown(() =>
      SshConfig.parse(
        ['Host pi-k3s', '  HostName', '  User "owner', '  Port 22 23', 'Host', '  Include'].join('\n'),
        path,
      ),
    )
    expect(places(e)).toEqual([
      `${path}:2:11: HostName: expected a value`,
      `${path}:3:8: unterminated double quote`,
      `${path}:4:11: Port: expected one value, got 2`,
      `${path}:5:5: Host: expected one or more host patterns`,
      `${path}:6:10: Include: expected one or more files`,
    ])
  })

  it('a file others can write is refused, as ssh refuses it', () => {
    const path = file('Host *\n  User pi\n')
    chmodSync(path, 0o666)
    const e = thrown(() => SshConfig.read(path))
    expect(e.message).toContain(`ssh config ${path} has mode 0666 or another owner`)
    expect(e.hint).toContain('chmod go-w')
  })
})

describe('tokens in IdentityFile', () => {
  const v = {
    remoteHost: '192.0.2.55',
    originalHost: 'pi-k3s',
    remoteUser: 'owner',
    port: 2222,
    localUser: 'me',
    home: '/home/me',
    uid: 1000,
    localHost: 'desk.example.org',
    env: { KEYS: '/srv/keys' },
  }
  it.each([
    ['~/.ssh/id_ed25519', '/home/me/.ssh/id_ed25519'],
    ['%d/.ssh/%n', '/home/me/.ssh/pi-k3s'],
    ['/k/%h_%p_%r', '/k/192.0.2.55_2222_owner'],
    ['/k/%u-%i-%l-%L', '/k/me-1000-desk.example.org-desk'],
    ['/k/100%%', '/k/100%'],
    ['${KEYS}/%n.key', '/srv/keys/pi-k3s.key'],
  ])('%s -> %s', (raw, want) => {
    expect(expandIdentityFile(raw, v)).toEqual({ path: want })
  })
  it.each([
    ['/k/%x', 'expected only the tokens %%, %d, %h, %i, %l, %L, %n, %p, %r and %u, got "%x"'],
    ['/k/%', 'expected only the tokens %%, %d, %h, %i, %l, %L, %n, %p, %r and %u, got "%"'],
    ['~root/.ssh/id', 'expected ~/ or a path: ~user is not supported here'],
    ['${NOPE}/id', 'expected environment variable NOPE to be set (it is used as ${NOPE})'],
    ['${KEYS/id', 'expected ${NAME} to be closed with "}"'],
  ])('%s is refused: %s', (raw, error) => {
    expect(expandIdentityFile(raw, v)).toEqual({ error })
  })
})

// ---------------------------------------------------------------------------------------------
// With the inventory

const INV = (hostVars = '', allVars = '') => `all:
  vars:
    secrets_backend: file
    secrets_file: /nonexistent/secrets.yaml
${allVars}  children:
    server:
      hosts:
        pi-k3s:
${hostVars}    agent:
      hosts:
        pi3-worker-1:
          address: 192.0.2.53
`

/** The inventory as a run loads it (addresses may come from the ssh config), the ssh config applied. */
function load(text: string, extra: string[] = []): { inv: Inventory; warnings: string[]; vars: (h: string) => Vars } {
  const invFile = file(text, `inv${++n}.yaml`)
  const inv = parseInventory(text, invFile, { sshConfig: true })
  const e = parseExtraVars(extra)
  const warnings = applySshConfig(inv, e)
  checkHosts(inv, e)
  return { inv, warnings, vars: (h) => hostVars(inv.hosts.get(h)!, {}, e) }
}

describe('the ssh config under the inventory', () => {
  const keyA = file('not read here', 'keys/a')
  const keyB = file('not read here', 'keys/b')

  it('a host with nothing but its name gets HostName, User, Port and IdentityFile', () => {
    const cfg = file(`Host pi-k3s\n  HostName 192.0.2.55\n  User owner\n  Port 2222\n  IdentityFile ${keyA}\n`)
    const { inv, vars } = load(INV('', `    ssh_config_file: ${cfg}\n`))
    expect(vars('pi-k3s')).toMatchObject({
      address: '192.0.2.55',
      ssh_user: 'owner',
      ssh_port: 2222,
      ssh_key_file: keyA,
    })
    expect(hostAddress(inv.hosts.get('pi-k3s')!)).toBe('192.0.2.55')
    expect(inv.hosts.get('pi-k3s')!.sshConfig?.from).toEqual({
      address: `${cfg}:2`,
      ssh_user: `${cfg}:3`,
      ssh_port: `${cfg}:4`,
      ssh_key_file: `${cfg}:5`,
    })
    // The other host is not named: defaults, and its own address.
    expect(vars('pi3-worker-1')).toMatchObject({ address: '192.0.2.53', ssh_user: 'pi', ssh_port: 22 })
    expect(vars('pi3-worker-1').ssh_key_file).toBeUndefined()
  })

  it('precedence: -e > host vars > group vars > ssh config > defaults', () => {
    const cfg = file(`Host *\n  HostName 192.0.2.99\n  User owner\n  Port 2222\n  IdentityFile ${keyA}\n`)
    const text = INV('          address: 192.0.2.55\n', `    ssh_config_file: ${cfg}\n    ssh_user: group-user\n`)
    const { vars } = load(text)
    expect(vars('pi-k3s')).toMatchObject({ address: '192.0.2.55', ssh_user: 'group-user', ssh_port: 2222 })
    const withE = load(text, ['ssh_port=2200', `ssh_key_file=${keyB}`]).vars('pi-k3s')
    expect(withE).toMatchObject({ ssh_port: 2200, ssh_key_file: keyB, ssh_user: 'group-user' })
    // A key from the secrets store counts as the host's key: IdentityFile is not used with it.
    const ref = load(INV('', `    ssh_config_file: ${cfg}\n    ssh_key_ref: op://v/i/f\n`)).vars('pi-k3s')
    expect(ref.ssh_key_file).toBeUndefined()
    expect(ref.ssh_key_ref).toBe('op://v/i/f')
  })

  it('IdentityFile: the first that exists, with tokens from the final address, user and port', () => {
    const cfg = file(
      `Host pi-k3s\n  HostName 192.0.2.55\n  IdentityFile ${dir}/keys/missing\n  IdentityFile ${dir}/keys/%n-%r-%p\n  IdentityFile ${keyA}\n`,
    )
    const tokened = file('not read here', 'keys/pi-k3s-pi-22')
    expect(load(INV('', `    ssh_config_file: ${cfg}\n`)).vars('pi-k3s').ssh_key_file).toBe(tokened)
    // None there: no key from the ssh config (the agent may still log in, as with ssh).
    const none = file(`Host pi-k3s\n  HostName 192.0.2.55\n  IdentityFile ${dir}/keys/missing\n`)
    expect(load(INV('', `    ssh_config_file: ${none}\n`)).vars('pi-k3s').ssh_key_file).toBeUndefined()
  })

  it('HostName %h is the inventory name', () => {
    const cfg = file('Host pi-*\n  HostName %h.example.org\n')
    expect(load(INV('', `    ssh_config_file: ${cfg}\n`)).vars('pi-k3s').address).toBe('pi-k3s.example.org')
  })

  it('hostile or wrong values are refused at file:line:col, naming the host, all at once, before any host', () => {
    const cfg = file(
      [
        'Host pi-k3s',
        '  HostName -oProxyCommand=touch',
        '  User "root;reboot"',
        '  Port ssh',
        '  IdentityFile /keys/%x',
        '  IdentitiesOnly maybe',
        'Host pi3-worker-1',
        '  Port 70000',
        '  HostName %z',
      ].join('\n'),
    )
    const e = thrown(() => load(INV('', `    ssh_config_file: ${cfg}\n`)))
    expect(e.message).toBe('the ssh config: 6 problems')
    expect(places(e)).toEqual([
      `${cfg}:2:12: HostName "-oProxyCommand=touch" for host "pi-k3s": expected an IPv4/IPv6 address or host name, got "-oProxyCommand=touch"`,
      `${cfg}:3:8: User "root;reboot" for host "pi-k3s": expected a login name (letters, digits, ".", "_" and "-", not starting with "-", not only digits, at most 32), got "root;reboot"`,
      `${cfg}:4:8: Port "ssh" for host "pi-k3s": expected a port number 1-65535 (a service name is not read)`,
      `${cfg}:5:16: IdentityFile "/keys/%x" for host "pi-k3s": expected only the tokens %%, %d, %h, %i, %l, %L, %n, %p, %r and %u, got "%x"`,
      `${cfg}:6:18: IdentitiesOnly "maybe" for host "pi-k3s": expected yes or no`,
      `${cfg}:8:8: Port "70000" for host "pi3-worker-1": expected a port number 1-65535, got 70000`,
    ])
    expect(e.problems[0].hint).toContain('ssh_config_file: none')
  })

  it('a value the inventory overrides is not checked (it is not used)', () => {
    const cfg = file('Host pi-k3s\n  HostName -bad\n')
    expect(load(INV('          address: 192.0.2.55\n', `    ssh_config_file: ${cfg}\n`)).vars('pi-k3s').address).toBe(
      '192.0.2.55',
    )
  })

  it('no address from the inventory nor a HostName: refused at the host, naming both places', () => {
    const cfg = file('Host pi-k3s\n  User owner\n')
    const e = thrown(() => load(INV('', `    ssh_config_file: ${cfg}\n`)))
    expect(e.message).toBe('host "pi-k3s" has no address')
    expect(e.hint).toBe(
      'add "address: <ip or name>" (or ansible_host) under the host, or a HostName for it in the ssh config',
    )
    expect(e.place.line).toBe(9)
  })

  it('two hosts the ssh config sends to one address are refused', () => {
    const cfg = file('Host *\n  HostName 192.0.2.53\n')
    const e = thrown(() => load(INV('', `    ssh_config_file: ${cfg}\n`)))
    expect(e.message).toBe('hosts "pi-k3s" and "pi3-worker-1" have the same address 192.0.2.53')
  })

  it('ssh_config_file: relative to the inventory; from -e relative to the working directory; none: not read', () => {
    file('Host pi-k3s\n  HostName 192.0.2.55\n', 'rel/ssh_config')
    const text = INV('', '    ssh_config_file: rel/ssh_config\n')
    expect(load(text).vars('pi-k3s').address).toBe('192.0.2.55')
    const off = thrown(() => load(text, ['ssh_config_file=none']))
    expect(off.message).toBe('host "pi-k3s" has no address')
    const named = thrown(() => load(INV('', '    ssh_config_file: rel/missing\n')))
    expect(named.message).toBe(`cannot read ssh config ${join(dir, 'rel/missing')}: ENOENT`)
  })

  it('warnings: Match blocks, and keywords that change the connection but are not followed', () => {
    const cfg = file(
      'Host pi*\n  HostName 192.0.2.55\n  ProxyJump bastion\nMatch exec "true"\n  User x\nHost github.com\n  ProxyJump none\n',
    )
    const { warnings } = load(INV('', `    ssh_config_file: ${cfg}\n`), [])
    expect(warnings).toEqual([
      `${cfg}:4: "Match" is not supported: the lines of this Match block are ignored for every host (put what the Pis need under a Host line)`,
      `${cfg}:3: ProxyJump (for pi-k3s, pi3-worker-1) is not followed: the run connects to the host directly`,
    ])
  })

  describe('the default ~/.ssh/config', () => {
    const saved = process.env.HOME
    let home: string
    beforeEach(() => {
      home = mkdtempSync(join(dir, 'home-'))
      process.env.HOME = home
    })
    afterEach(() => {
      process.env.HOME = saved
    })

    it('is read when it exists', () => {
      file('Host pi-k3s\n  HostName 192.0.2.55\n', `${home.slice(dir.length + 1)}/.ssh/config`)
      expect(load(INV()).vars('pi-k3s').address).toBe('192.0.2.55')
    })

    it('is not needed: without it the inventory alone decides', () => {
      const e = thrown(() => load(INV()))
      expect(e.message).toBe('host "pi-k3s" has no address')
      expect(load(INV('          address: 192.0.2.55\n')).vars('pi-k3s').ssh_user).toBe('pi')
    })

    it('parseInventory alone (no sshConfig option) never reads it', () => {
      file('Host pi-k3s\n  HostName 192.0.2.55\n', `${home.slice(dir.length + 1)}/.ssh/config`)
      const e = thrown(() => parseInventory(INV(), join(dir, 'plain.yaml')))
      expect(e.message).toBe('host "pi-k3s" has no address')
    })
  })
})

describe('a run with the ssh config (runCli)', () => {
  const noop: Playbook = {
    name: 'noop',
    plays: [{ name: 'nothing', hosts: 'all', roles: [{ name: 'noop', steps: [] }] }],
  }

  it('connects with the ssh config values, says the warnings, and --list-hosts shows the address', async () => {
    resetSecretsForTest()
    const key = file('not read here', 'keys/run')
    const cfg = file(
      `Host pi-k3s\n  HostName 192.0.2.55\n  User ${userInfo().username}\n  IdentityFile ${key}\nMatch all\nMatch user x\n`,
    )
    const invFile = file(INV('', `    ssh_config_file: ${cfg}\n`), 'run.yaml')
    const seen = new Map<string, Vars>()
    const lines: string[] = []
    const hooks = {
      write: (l: string) => lines.push(l),
      secrets: {
        backend: 'file' as const,
        resolveAll: async () => {},
        get: () => '',
        lookup: async () => undefined,
        upsert: async () => {},
      },
      connect: (h: { name: string }, vars: Vars) => {
        seen.set(h.name, vars)
        return new LocalConnection(h.name)
      },
    }
    const code = await runCli(noop, ['-i', invFile, '--retry-file', join(dir, 'r.retry')], hooks)
    expect(code, lines.join('\n')).toBe(0)
    expect(seen.get('pi-k3s')).toMatchObject({ address: '192.0.2.55', ssh_key_file: key })
    expect(lines.join('\n')).toContain(`WARNING: ${cfg}:6: "Match" is not supported`)
    lines.length = 0
    expect(await runCli(noop, ['-i', invFile, '--list-hosts'], hooks)).toBe(0)
    expect(lines.join('\n')).toContain('pi-k3s  192.0.2.55')
  })
})

describe('a public key as the key file (IdentityFile ~/.ssh/pi.pub, the 1Password SSH agent way)', () => {
  it('publicKeyBlob reads an OpenSSH public key line, and nothing else', async () => {
    const { execFileSync } = await import('node:child_process')
    const { publicKeyBlob } = await import('../../lib/ssh-identity.ts')
    const key = join(dir, 'pk')
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'me@desk', '-f', key])
    const pubText = execFileSync('ssh-keygen', ['-y', '-f', key], { encoding: 'utf8' })
    const blob = publicKeyBlob(`${pubText.trim()} me@desk\n`)
    expect(blob?.toString('base64')).toBe(pubText.split(' ')[1].trim())
    const { readFileSync } = await import('node:fs')
    expect(publicKeyBlob(readFileSync(key, 'utf8'))).toBeUndefined() // the private key
    expect(publicKeyBlob('ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAI')).toBeUndefined() // says ed25519 inside
    expect(publicKeyBlob('not a key')).toBeUndefined()
  })
})
