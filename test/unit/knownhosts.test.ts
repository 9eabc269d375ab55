import { execFileSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ProvisionError } from '../../lib/errors.ts'
import {
  addKnownHost,
  checkHostKey,
  fingerprint,
  keyType,
  knownKeyTypes,
  loadKnownHosts,
  removeKnownHost,
  type KnownHosts,
} from '../../lib/knownhosts.ts'

// Real keys from ssh-keygen; the blob is what ssh2's hostVerifier receives: the .pub base64 decoded.
interface TestKey {
  name: string
  line: string // "type base64" as in known_hosts
  blob: Buffer
  sshKeygenFingerprint: string
}

let dir: string
const keys: Record<string, TestKey> = {}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

function makeKey(name: string, args: string[]): TestKey {
  const file = join(dir, name)
  sh('ssh-keygen', ['-q', '-N', '', '-C', `${name}@test`, '-f', file, ...args])
  const pub = readFileSync(`${file}.pub`, 'utf8').trim().split(/\s+/)
  const fp = sh('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${file}.pub`]).split(/\s+/)[1]
  return { name, line: `${pub[0]} ${pub[1]}`, blob: Buffer.from(pub[1], 'base64'), sshKeygenFingerprint: fp }
}

function khFile(name: string, content: string, mode = 0o600): string {
  const path = join(dir, name)
  writeFileSync(path, content, { mode })
  chmodSync(path, mode)
  return path
}

function kh(entries: string): Promise<KnownHosts> {
  return loadKnownHosts(khFile(`kh-${Math.random().toString(36).slice(2)}`, entries))
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'knownhosts-test-'))
  keys.ed1 = makeKey('ed1', ['-t', 'ed25519'])
  keys.ed2 = makeKey('ed2', ['-t', 'ed25519'])
  keys.ec256 = makeKey('ec256', ['-t', 'ecdsa', '-b', '256'])
  keys.ec384 = makeKey('ec384', ['-t', 'ecdsa', '-b', '384'])
  keys.rsa = makeKey('rsa', ['-t', 'rsa', '-b', '2048'])
}, 60_000)

afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

describe('key blobs', () => {
  it('reads the key type from the blob', () => {
    expect(keyType(keys.ed1.blob)).toBe('ssh-ed25519')
    expect(keyType(keys.ec256.blob)).toBe('ecdsa-sha2-nistp256')
    expect(keyType(keys.ec384.blob)).toBe('ecdsa-sha2-nistp384')
    expect(keyType(keys.rsa.blob)).toBe('ssh-rsa')
  })

  it('computes the same fingerprints as ssh-keygen -lf', () => {
    for (const k of Object.values(keys)) {
      expect(k.sshKeygenFingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/)
      expect(fingerprint(k.blob)).toBe(k.sshKeygenFingerprint)
    }
  })

  it('rejects malformed blobs with a hostkey error', () => {
    const bad = [Buffer.alloc(0), Buffer.from([0, 0, 0, 50, 0x61]), Buffer.from([0, 0, 0, 0, 1, 2]), Buffer.from([0, 0, 0, 3, 0x61, 0x0a, 0x62, 1])]
    for (const b of bad) {
      expect(() => keyType(b)).toThrow(ProvisionError)
      try {
        keyType(b)
      } catch (e) {
        expect((e as ProvisionError).kind).toBe('hostkey')
      }
    }
  })
})

describe('loadKnownHosts', () => {
  it('treats a missing file as empty', async () => {
    const k = await loadKnownHosts(join(dir, 'nope', 'known_hosts'))
    expect(k.entries).toEqual([])
    expect(checkHostKey(k, 'pi', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
  })

  it('skips comments and blank lines, keeps line numbers, markers and comments', async () => {
    const k = await kh(`# a comment\n\n   \n  # indented comment\npi-k3s ${keys.ed1.line} root@pi\r\n@revoked * ${keys.ed2.line}\n`)
    expect(k.entries.map((e) => [e.line, e.marker, e.hostField, e.keyType, e.comment])).toEqual([
      [5, undefined, 'pi-k3s', 'ssh-ed25519', 'root@pi'],
      [6, 'revoked', '*', 'ssh-ed25519', ''],
    ])
  })

  it.each([
    ['too few fields', `pi ssh-ed25519\n`],
    ['an unknown marker', `@trusted pi ${'KEY'}\n`],
    ['bad base64', `pi ssh-ed25519 AAAA!!!!\n`],
    ['a key type that disagrees with the key', `pi ssh-rsa KEY\n`],
    ['a broken hashed name', `|1|abc|def ssh-ed25519 KEY\n`],
  ])('names path:line for %s', async (_what, badLine) => {
    const path = khFile(`bad-${Math.random().toString(36).slice(2)}`, `# ok\npi ${keys.ed1.line}\n${badLine.replace('KEY', keys.ed1.line.split(' ')[1])}`)
    const err = await loadKnownHosts(path).then(
      () => null,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(ProvisionError)
    const pe = err as ProvisionError
    expect(pe.kind).toBe('hostkey')
    expect(pe.place).toMatchObject({ file: path, line: 3 })
    expect(pe.describe()).toContain(`${path}:3`)
  })
})

describe('checkHostKey', () => {
  it('matches a plain entry on port 22 only', async () => {
    const k = await kh(`pi-k3s ${keys.ed1.line}\n`)
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'PI-K3S', 22, keys.ed1.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'pi-k3s', 2222, keys.ed1.blob)).toEqual({ status: 'unknown' })
    expect(checkHostKey(k, 'other', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
  })

  it('uses [host]:port for other ports', async () => {
    const k = await kh(`[203.0.113.55]:2222 ${keys.ed1.line}\n203.0.113.55 ${keys.ed2.line}\n`)
    expect(checkHostKey(k, '203.0.113.55', 2222, keys.ed1.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, '203.0.113.55', 22, keys.ed2.blob)).toEqual({ status: 'match' })
    // Each port has its own key: ed1 on port 22 is a changed key, not a match.
    expect(checkHostKey(k, '203.0.113.55', 22, keys.ed1.blob)).toEqual({ status: 'changed', expected: [keys.ed2.sshKeygenFingerprint], got: keys.ed1.sshKeygenFingerprint })
    expect(checkHostKey(k, '203.0.113.55', 2200, keys.ed1.blob)).toEqual({ status: 'unknown' })
  })

  it('matches comma-separated host lists', async () => {
    const k = await kh(`pi-k3s,203.0.113.55,[pi-k3s]:2222 ${keys.ed1.line}\n`)
    for (const [h, p] of [['pi-k3s', 22], ['203.0.113.55', 22], ['pi-k3s', 2222]] as const) {
      expect(checkHostKey(k, h, p, keys.ed1.blob)).toEqual({ status: 'match' })
    }
    expect(checkHostKey(k, '203.0.113.5', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
  })

  it('supports * and ? wildcards and !negation', async () => {
    const k = await kh(`*.lan,!evil.lan ${keys.ed1.line}\npi3-worker-? ${keys.ec256.line}\n203.0.113.* ${keys.rsa.line}\n`)
    expect(checkHostKey(k, 'pi-k3s.lan', 22, keys.ed1.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'evil.lan', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
    expect(checkHostKey(k, 'lan', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
    expect(checkHostKey(k, 'pi3-worker-1', 22, keys.ec256.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'pi3-worker-12', 22, keys.ec256.blob)).toEqual({ status: 'unknown' })
    expect(checkHostKey(k, '203.0.113.53', 22, keys.rsa.blob)).toEqual({ status: 'match' })
    // A pattern without brackets does not cover another port ("[x]:2222" is the name checked).
    expect(checkHostKey(k, 'pi-k3s.lan', 2222, keys.ed1.blob)).toEqual({ status: 'unknown' })
  })

  it('matches entries hashed by ssh-keygen -H, and agrees with ssh-keygen -F', async () => {
    const path = khFile('hashed', `pi-k3s ${keys.ed1.line}\n[pi-k3s]:2222 ${keys.ec256.line}\n203.0.113.53 ${keys.rsa.line}\n`)
    sh('ssh-keygen', ['-q', '-H', '-f', path])
    const k = await loadKnownHosts(path)
    expect(k.entries).toHaveLength(3)
    expect(k.entries.every((e) => e.hosts.kind === 'hashed' && e.hostField.startsWith('|1|'))).toBe(true)
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'pi-k3s', 2222, keys.ec256.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, '203.0.113.53', 22, keys.rsa.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed2.blob)).toEqual({ status: 'changed', expected: [keys.ed1.sshKeygenFingerprint], got: keys.ed2.sshKeygenFingerprint })
    for (const [name, host, port] of [['pi-k3s', 'pi-k3s', 22], ['[pi-k3s]:2222', 'pi-k3s', 2222], ['203.0.113.53', '203.0.113.53', 22], ['pi3', 'pi3', 22]] as const) {
      let found = false
      try {
        found = sh('ssh-keygen', ['-F', name, '-f', path]).includes('found')
      } catch {
        found = false // ssh-keygen -F exits 1 when nothing is found
      }
      expect(knownKeyTypes(k, host, port).length > 0, name).toBe(found)
    }
  })

  it('reports a revoked key even when it is also listed as valid', async () => {
    const k = await kh(`pi-k3s ${keys.ed1.line}\n@revoked * ${keys.ed1.line}\n`)
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({ status: 'revoked', got: keys.ed1.sshKeygenFingerprint })
    // Revocation is per key, not per host: the host's other keys are unaffected.
    const k2 = await kh(`pi-k3s ${keys.ed1.line}\npi-k3s ${keys.rsa.line}\n@revoked * ${keys.ed1.line}\n`)
    expect(checkHostKey(k2, 'pi-k3s', 22, keys.rsa.blob)).toEqual({ status: 'match' })
  })

  it('ignores @cert-authority lines for plain host keys', async () => {
    const k = await kh(`@cert-authority *.lan ${keys.ed1.line}\n`)
    expect(checkHostKey(k, 'pi.lan', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
    expect(knownKeyTypes(k, 'pi.lan', 22)).toEqual([])
  })

  it('reports a changed key with every expected fingerprint and the presented one', async () => {
    const k = await kh(`pi-k3s ${keys.ed1.line}\n*.lan,pi-k3s ${keys.ed2.line}\npi-k3s ${keys.rsa.line}\n`)
    const ed3 = makeKey('ed3', ['-t', 'ed25519'])
    const v = checkHostKey(k, 'pi-k3s', 22, ed3.blob)
    expect(v).toEqual({ status: 'changed', expected: [keys.ed1.sshKeygenFingerprint, keys.ed2.sshKeygenFingerprint], got: ed3.sshKeygenFingerprint })
  })

  it('treats a key of a type not known for the host as unknown (like OpenSSH), naming the known types', async () => {
    const k = await kh(`pi-k3s ${keys.rsa.line}\npi-k3s ${keys.ec256.line}\nother ${keys.ed1.line}\n`)
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({ status: 'unknown', knownTypes: ['ssh-rsa', 'ecdsa-sha2-nistp256'] })
    expect(knownKeyTypes(k, 'pi-k3s', 22)).toEqual(['ssh-rsa', 'ecdsa-sha2-nistp256'])
    expect(knownKeyTypes(k, 'pi-k3s', 2222)).toEqual([])
    expect(knownKeyTypes(k, 'nobody', 22)).toEqual([])
  })
})

describe('addKnownHost', () => {
  it('creates the directory 0700 and the file 0600, then matches', async () => {
    const path = join(dir, 'new-dir', 'sub', 'known_hosts')
    await addKnownHost(path, 'pi-k3s', 22, keys.ed1.blob)
    expect(statSync(join(dir, 'new-dir')).mode & 0o777).toBe(0o700)
    expect(statSync(join(dir, 'new-dir', 'sub')).mode & 0o777).toBe(0o700)
    expect(statSync(path).mode & 0o777).toBe(0o600)
    expect(readFileSync(path, 'utf8')).toBe(`pi-k3s ${keys.ed1.line}\n`)
    expect(checkHostKey(await loadKnownHosts(path), 'pi-k3s', 22, keys.ed1.blob)).toEqual({ status: 'match' })
    // ssh-keygen reads what we wrote.
    expect(sh('ssh-keygen', ['-F', 'pi-k3s', '-f', path])).toContain('found')
  })

  it('appends atomically, keeps existing bytes and mode, writes [host]:port', async () => {
    const before = `# mine\nold ${keys.rsa.line} no newline at end`
    const path = khFile('append', before, 0o644)
    const inode = statSync(path).ino
    await addKnownHost(path, '203.0.113.55', 2222, keys.ec256.blob)
    const after = readFileSync(path, 'utf8')
    expect(after).toBe(`${before}\n[203.0.113.55]:2222 ${keys.ec256.line}\n`)
    expect(statSync(path).ino).not.toBe(inode) // replaced by rename, never rewritten in place
    expect(statSync(path).mode & 0o777).toBe(0o644)
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([])
    expect(checkHostKey(await loadKnownHosts(path), '203.0.113.55', 2222, keys.ec256.blob)).toEqual({ status: 'match' })
  })

  it('is a no-op when the key is already known', async () => {
    const path = khFile('noop', `pi-k3s,pi ${keys.ed1.line}\n`)
    await addKnownHost(path, 'pi', 22, keys.ed1.blob)
    expect(readFileSync(path, 'utf8')).toBe(`pi-k3s,pi ${keys.ed1.line}\n`)
  })

  it('refuses to add a key that replaces a known one', async () => {
    const path = khFile('refuse', `pi-k3s ${keys.ed1.line}\n`)
    await expect(addKnownHost(path, 'pi-k3s', 22, keys.ed2.blob)).rejects.toMatchObject({ kind: 'hostkey' })
    expect(readFileSync(path, 'utf8')).toBe(`pi-k3s ${keys.ed1.line}\n`)
  })

  it('hashes the name on request, readable by ssh-keygen -F', async () => {
    const path = join(dir, 'hashed-add')
    await addKnownHost(path, 'pi3-worker-1', 2222, keys.ed1.blob, { hash: true })
    const text = readFileSync(path, 'utf8')
    expect(text).not.toContain('pi3-worker-1')
    expect(text).toMatch(/^\|1\|[A-Za-z0-9+/=]{28}\|[A-Za-z0-9+/=]{28} ssh-ed25519 /)
    expect(sh('ssh-keygen', ['-F', '[pi3-worker-1]:2222', '-f', path])).toContain('found')
    expect(checkHostKey(await loadKnownHosts(path), 'pi3-worker-1', 2222, keys.ed1.blob)).toEqual({ status: 'match' })
  })

  it('loses no host when parallel workers add at once', async () => {
    const path = join(dir, 'parallel', 'known_hosts')
    const hosts = Array.from({ length: 12 }, (_, i) => `pi-${i}`)
    await Promise.all(hosts.map((h, i) => addKnownHost(path, h, 22, [keys.ed1, keys.ed2, keys.ec256][i % 3].blob)))
    const k = await loadKnownHosts(path)
    expect(k.entries.map((e) => e.hostField).sort()).toEqual([...hosts].sort())
  })
})

describe('removeKnownHost', () => {
  const others = () =>
    [
      '# managed by hand',
      `pi3-worker-1 ${keys.ec256.line} kept comment`,
      '',
      `[pi-k3s]:2222 ${keys.ed2.line}`,
      `*.lan ${keys.rsa.line}`,
      `@revoked pi-k3s ${keys.ed2.line}`,
      `203.0.113.56\t${keys.ed1.line}`,
    ]

  it('removes plain and hashed entries of the host and leaves other lines byte-identical', async () => {
    // Hash two entries the way ssh-keygen does, then mix them with plain lines.
    const hashedPath = khFile('to-hash', `pi-k3s ${keys.ec384.line}\npi3-worker-2 ${keys.ed2.line}\n`)
    sh('ssh-keygen', ['-q', '-H', '-f', hashedPath])
    const [hashedPi, hashedWorker2] = readFileSync(hashedPath, 'utf8').trimEnd().split('\n')
    const o = others()
    const lines = [o[0], `pi-k3s ${keys.ed1.line}`, o[1], hashedPi, o[2], o[3], `PI-K3S ${keys.rsa.line}\r`, hashedWorker2, o[4], o[5], o[6]]
    const path = khFile('remove', lines.join('\n') + '\n', 0o640)
    const inode = statSync(path).ino

    expect(await removeKnownHost(path, 'pi-k3s')).toBe(3)
    expect(readFileSync(path, 'utf8')).toBe([o[0], o[1], o[2], o[3], hashedWorker2, o[4], o[5], o[6]].join('\n') + '\n')
    expect(statSync(path).mode & 0o777).toBe(0o640)
    expect(statSync(path).ino).not.toBe(inode)
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([])

    const k = await loadKnownHosts(path)
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
    expect(checkHostKey(k, 'pi-k3s', 2222, keys.ed2.blob)).toEqual({ status: 'match' }) // other port untouched
    expect(checkHostKey(k, 'pi3-worker-2', 22, keys.ed2.blob)).toEqual({ status: 'match' })
  })

  it('removes only the given port', async () => {
    const o = others()
    const path = khFile('remove-port', o.join('\n') + '\n')
    expect(await removeKnownHost(path, 'pi-k3s', 2222)).toBe(1)
    expect(readFileSync(path, 'utf8')).toBe([o[0], o[1], o[2], o[4], o[5], o[6]].join('\n') + '\n')
  })

  it('drops only the host from a shared line, so the other hosts stay trusted', async () => {
    const path = khFile('remove-list', `pi-k3s,203.0.113.55,pi ${keys.ed1.line} c\nx ${keys.ed2.line}`)
    expect(await removeKnownHost(path, '203.0.113.55')).toBe(1)
    expect(readFileSync(path, 'utf8')).toBe(`pi-k3s,pi ${keys.ed1.line} c\nx ${keys.ed2.line}`)
    expect(await removeKnownHost(path, 'pi-k3s')).toBe(1)
    expect(await removeKnownHost(path, 'pi')).toBe(1)
    expect(readFileSync(path, 'utf8')).toBe(`x ${keys.ed2.line}`)
  })

  it('agrees with ssh-keygen -R on a file without shared lines', async () => {
    const o = others()
    const content = [`pi-k3s ${keys.ed1.line}`, ...o, `pi-k3s ${keys.rsa.line}`].join('\n') + '\n'
    const ours = khFile('ours', content)
    const theirs = khFile('theirs', content)
    expect(await removeKnownHost(ours, 'pi-k3s')).toBe(2)
    sh('ssh-keygen', ['-R', 'pi-k3s', '-f', theirs])
    expect(readFileSync(ours, 'utf8')).toBe(readFileSync(theirs, 'utf8'))
  })

  it('returns 0 and leaves the file alone when the host is not there, or the file is missing', async () => {
    const o = others()
    const path = khFile('remove-none', o.join('\n'))
    const inode = statSync(path).ino
    expect(await removeKnownHost(path, 'nobody')).toBe(0)
    expect(await removeKnownHost(path, 'x.lan')).toBe(0) // wildcard lines are not "this host's" entries
    expect(statSync(path).ino).toBe(inode)
    expect(readFileSync(path, 'utf8')).toBe(o.join('\n'))
    expect(await removeKnownHost(join(dir, 'missing', 'known_hosts'), 'pi')).toBe(0)
  })
})
