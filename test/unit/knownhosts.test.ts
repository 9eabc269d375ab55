import { execFileSync } from 'node:child_process'
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { ProvisionError } from '../../lib/errors.ts'
import { addKnownHost, removeKnownHost } from '../../lib/knownhosts-write.ts'
import {
  checkHostKey,
  fingerprint,
  keyType,
  knownKeyTypes,
  loadKnownHosts,
  withSessionKey,
  type KnownHosts,
} from '../../lib/knownhosts.ts'

// writeFileAtomic names its temp file with randomBytes(6): a test can make the next name known in
// advance, to plant something there first. Every other call gets real random bytes.
const nextTempBytes = vi.hoisted(() => ({ value: null as Buffer | null }))
vi.mock('node:crypto', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:crypto')>()
  const randomBytes = (size: number): Buffer => {
    const fixed = nextTempBytes.value
    if (size === 6 && fixed) {
      nextTempBytes.value = null
      return Buffer.from(fixed)
    }
    return real.randomBytes(size)
  }
  return { ...real, randomBytes }
})

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
    const bad = [
      Buffer.alloc(0),
      Buffer.from([0, 0, 0, 50, 0x61]),
      Buffer.from([0, 0, 0, 0, 1, 2]),
      Buffer.from([0, 0, 0, 3, 0x61, 0x0a, 0x62, 1]),
    ]
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
    const k = await kh(
      `# a comment\n\n   \n  # indented comment\npi-k3s ${keys.ed1.line} root@pi\r\n@revoked * ${keys.ed2.line}\n`,
    )
    expect(k.entries.map((e) => [e.line, e.marker, e.hostField, e.keyType, e.comment])).toEqual([
      [5, undefined, 'pi-k3s', 'ssh-ed25519', 'root@pi'],
      [6, 'revoked', '*', 'ssh-ed25519', ''],
    ])
  })

  // Each kind of malformed line, between two good ones: it is skipped with a reason, and both
  // neighbours still count (with their own line numbers).
  const b64 = () => keys.ed1.line.split(' ')[1]
  const malformed: Array<[string, () => string, RegExp]> = [
    ['a lone word (garbage)', () => 'garbage', /^missing the key type and key$/],
    ['a missing key field', () => 'pi ssh-ed25519', /^missing the key$/],
    ['a marker and nothing else', () => '@revoked', /^missing the host names, key type and key$/],
    ['a marker with a missing key', () => '@revoked pi ssh-ed25519', /^missing the key$/],
    [
      'an unknown marker',
      () => `@trusted pi ${keys.ed1.line}`,
      /^unknown marker @trusted \(expected @revoked or @cert-authority\)$/,
    ],
    [
      'an unknown marker that could be anything',
      () => `@${b64()} pi ${keys.ed1.line}`,
      /^unknown marker \(an unreadable name\)/,
    ],
    ['bad base64 (bad characters)', () => 'pi ssh-ed25519 AAAA!!!!', /^bad base64 in the key$/],
    ['bad base64 (cut short)', () => `pi ssh-ed25519 ${b64().slice(0, -3)}`, /^bad base64 in the key$/],
    [
      'base64 that is no SSH key',
      () => `pi ssh-ed25519 ${Buffer.from('hello, world').toString('base64')}`,
      /^the key is not an SSH public key \(implausible key type length \d+\)$/,
    ],
    // 4-byte length + 'ssh-ed25519' and nothing after it.
    [
      'a key cut after its type',
      () => `pi ssh-ed25519 ${keys.ed1.blob.subarray(0, 15).toString('base64')}`,
      /^the key is not an SSH public key \(no key data after the type ssh-ed25519\)$/,
    ],
    [
      'a key type that disagrees with the key',
      () => `pi ssh-rsa ${b64()}`,
      /^the line says ssh-rsa but the key is ssh-ed25519$/,
    ],
    [
      'the key pasted where the type goes',
      () => `pi ${b64()} ${b64()}`,
      /^the line says \(an unreadable name\) but the key is ssh-ed25519$/,
    ],
    ['a broken hashed name', () => `|1|abc|def ${keys.ed1.line}`, /^malformed hashed host name/],
    [
      'an unknown hash kind',
      () => `|2|${'A'.repeat(28)}|${'A'.repeat(28)} ${keys.ed1.line}`,
      /^unsupported hashed host name/,
    ],
    ['an empty name in the host list', () => `pi,,other ${keys.ed1.line}`, /^an empty name in the host list$/],
    ['an SSH-1 RSA key', () => 'pi 2048 35 1234567890123456789', /^an SSH-1 key \(not supported\)$/],
    ['a private key pasted by mistake', () => '-----BEGIN OPENSSH PRIVATE KEY-----', /^bad base64 in the key$/],
    ['binary junk', () => '\u0000\u0001\u0002 \u00ff\ufffd \u0007', /^bad base64 in the key$/],
  ]

  it.each(malformed)('skips %s with a reason, keeping both neighbours', async (_what, badLine, reason) => {
    const bad = badLine()
    const k = await kh(`before ${keys.ed2.line}\n${bad}\nafter ${keys.ec256.line}\n`)
    expect(k.entries.map((e) => [e.line, e.hostField])).toEqual([
      [1, 'before'],
      [3, 'after'],
    ])
    expect(k.warnings).toHaveLength(1)
    expect(k.warnings[0].line).toBe(2)
    expect(k.warnings[0].reason).toMatch(reason)
    // The reason never quotes key material (nor the line).
    expect(k.warnings[0].reason).not.toContain(b64().slice(0, 16))
    expect(k.warnings[0].reason).not.toContain('BEGIN')
    expect(checkHostKey(k, 'before', 22, keys.ed2.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'after', 22, keys.ec256.blob)).toEqual({ status: 'match' })
  })

  it('keeps going after many bad lines, CRLF lines and a bad last line without a newline', async () => {
    const lines = [
      `a ${keys.ed1.line}\r`,
      'x',
      `b ${keys.ed2.line}`,
      `@nope b ${keys.ed2.line}\r`,
      '',
      `c ${keys.rsa.line}`,
      `pi ssh-ed25519 AAAA!!!!`,
    ]
    const k = await kh(lines.join('\n'))
    expect(k.entries.map((e) => [e.line, e.hostField])).toEqual([
      [1, 'a'],
      [3, 'b'],
      [6, 'c'],
    ])
    expect(k.warnings.map((w) => w.line)).toEqual([2, 4, 7])
  })

  it('still fails for a file it cannot read at all', async () => {
    await expect(loadKnownHosts(dir)).rejects.toMatchObject({ kind: 'hostkey' })
  })
})

describe('writing a file with malformed lines', () => {
  it('addKnownHost appends on a line of its own and keeps the bad lines byte for byte', async () => {
    const before = `pi-a ${keys.ed1.line}\n@bogus\r\nlast line without newline !!!`
    const path = khFile('add-malformed', before)
    await addKnownHost(path, 'pi-b', 22, keys.ed2.blob)
    expect(readFileSync(path, 'utf8')).toBe(`${before}\npi-b ${keys.ed2.line}\n`)
    const k = await loadKnownHosts(path)
    expect(k.warnings.map((w) => w.line)).toEqual([2, 3])
    expect(checkHostKey(k, 'pi-b', 22, keys.ed2.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'pi-a', 22, keys.ed1.blob)).toEqual({ status: 'match' })
  })

  it('addKnownHost still refuses a changed key when a bad line sits next to the known one', async () => {
    const path = khFile('add-malformed-changed', `garbage\npi ${keys.ed1.line}\ngarbage too\n`)
    await expect(addKnownHost(path, 'pi', 22, keys.ed2.blob)).rejects.toMatchObject({ kind: 'hostkey' })
  })

  it('bytes that are not UTF-8: loading skips the line; a rewrite refuses (naming the line) rather than alter it', async () => {
    const junk = Buffer.from([0x70, 0x69, 0x20, 0xff, 0xfe, 0x20, 0x80, 0x0a]) // "pi \xff\xfe \x80\n"
    const good = Buffer.from(`pi-a ${keys.ed1.line}\n`)
    const path = join(dir, 'not-utf8')
    const content = Buffer.concat([good, junk, good])
    writeFileSync(path, content)
    const k = await loadKnownHosts(path)
    expect(k.entries.map((e) => e.line)).toEqual([1, 3])
    expect(k.warnings).toEqual([{ line: 2, reason: 'bad base64 in the key' }])
    // A no-op add and a remove that finds nothing write nothing, so they are fine.
    await addKnownHost(path, 'pi-a', 22, keys.ed1.blob)
    expect(await removeKnownHost(path, 'nobody')).toBe(0)
    // A real rewrite is refused and the file stays as it was.
    const err = await addKnownHost(path, 'pi-b', 22, keys.ed2.blob).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ProvisionError)
    expect((err as ProvisionError).place).toMatchObject({ file: path, line: 2 })
    await expect(removeKnownHost(path, 'pi-a')).rejects.toMatchObject({ kind: 'hostkey', place: { line: 2 } })
    expect(readFileSync(path).equals(content)).toBe(true)
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
    expect(checkHostKey(k, '203.0.113.55', 22, keys.ed1.blob)).toEqual({
      status: 'changed',
      expected: [keys.ed2.sshKeygenFingerprint],
      got: keys.ed1.sshKeygenFingerprint,
    })
    expect(checkHostKey(k, '203.0.113.55', 2200, keys.ed1.blob)).toEqual({ status: 'unknown' })
  })

  it('matches comma-separated host lists', async () => {
    const k = await kh(`pi-k3s,203.0.113.55,[pi-k3s]:2222 ${keys.ed1.line}\n`)
    for (const [h, p] of [
      ['pi-k3s', 22],
      ['203.0.113.55', 22],
      ['pi-k3s', 2222],
    ] as const) {
      expect(checkHostKey(k, h, p, keys.ed1.blob)).toEqual({ status: 'match' })
    }
    expect(checkHostKey(k, '203.0.113.5', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
  })

  it('supports * and ? wildcards and !negation', async () => {
    const k = await kh(
      `*.lan,!evil.lan ${keys.ed1.line}\npi3-worker-? ${keys.ec256.line}\n203.0.113.* ${keys.rsa.line}\n`,
    )
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
    const path = khFile(
      'hashed',
      `pi-k3s ${keys.ed1.line}\n[pi-k3s]:2222 ${keys.ec256.line}\n203.0.113.53 ${keys.rsa.line}\n`,
    )
    sh('ssh-keygen', ['-q', '-H', '-f', path])
    const k = await loadKnownHosts(path)
    expect(k.entries).toHaveLength(3)
    expect(k.entries.every((e) => e.hosts.kind === 'hashed' && e.hostField.startsWith('|1|'))).toBe(true)
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'pi-k3s', 2222, keys.ec256.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, '203.0.113.53', 22, keys.rsa.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed2.blob)).toEqual({
      status: 'changed',
      expected: [keys.ed1.sshKeygenFingerprint],
      got: keys.ed2.sshKeygenFingerprint,
    })
    for (const [name, host, port] of [
      ['pi-k3s', 'pi-k3s', 22],
      ['[pi-k3s]:2222', 'pi-k3s', 2222],
      ['203.0.113.53', '203.0.113.53', 22],
      ['pi3', 'pi3', 22],
    ] as const) {
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
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({
      status: 'revoked',
      got: keys.ed1.sshKeygenFingerprint,
    })
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
    expect(v).toEqual({
      status: 'changed',
      expected: [keys.ed1.sshKeygenFingerprint, keys.ed2.sshKeygenFingerprint],
      got: ed3.sshKeygenFingerprint,
    })
  })

  it('treats a key of a type not known for the host as unknown (like OpenSSH), naming the known types', async () => {
    const k = await kh(`pi-k3s ${keys.rsa.line}\npi-k3s ${keys.ec256.line}\nother ${keys.ed1.line}\n`)
    expect(checkHostKey(k, 'pi-k3s', 22, keys.ed1.blob)).toEqual({
      status: 'unknown',
      knownTypes: ['ssh-rsa', 'ecdsa-sha2-nistp256'],
    })
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
  const others = () => [
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
    const lines = [
      o[0],
      `pi-k3s ${keys.ed1.line}`,
      o[1],
      hashedPi,
      o[2],
      o[3],
      `PI-K3S ${keys.rsa.line}\r`,
      hashedWorker2,
      o[4],
      o[5],
      o[6],
    ]
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

describe('withSessionKey (a key accepted for this run, not recorded)', () => {
  it('counts as known for that host and port only, without changing the loaded file', async () => {
    const k = await kh(`other ${keys.ed2.line}\n`)
    const s = withSessionKey(k, '203.0.113.9', 2222, keys.ed1.blob)
    expect(k.entries).toHaveLength(1)
    expect(checkHostKey(s, '203.0.113.9', 2222, keys.ed1.blob)).toEqual({ status: 'match' })
    expect(checkHostKey(s, '203.0.113.9', 2222, keys.ed2.blob)).toEqual({
      status: 'changed',
      expected: [keys.ed1.sshKeygenFingerprint],
      got: keys.ed2.sshKeygenFingerprint,
    })
    expect(checkHostKey(s, '203.0.113.9', 2222, keys.rsa.blob)).toEqual({
      status: 'unknown',
      knownTypes: ['ssh-ed25519'],
    })
    expect(checkHostKey(s, '203.0.113.9', 22, keys.ed1.blob)).toEqual({ status: 'unknown' })
    expect(checkHostKey(s, '203.0.113.90', 2222, keys.ed1.blob)).toEqual({ status: 'unknown' })
    expect(knownKeyTypes(s, '203.0.113.9', 2222)).toEqual(['ssh-ed25519'])
  })
})

describe('known_hosts writes', () => {
  const isLink = (p: string) => lstatSync(p).isSymbolicLink()
  const tmpFiles = (d: string) => readdirSync(d).filter((f) => f.endsWith('.tmp'))

  it('writes the target of a symlinked known_hosts (add and remove); the link stays a link and the target keeps its mode', async () => {
    const base = mkdtempSync(join(dir, 'link-'))
    mkdirSync(join(base, 'dotfiles', 'ssh'), { recursive: true })
    mkdirSync(join(base, 'home', '.ssh'), { recursive: true })
    const real = join(base, 'dotfiles', 'ssh', 'known_hosts')
    writeFileSync(real, `old ${keys.rsa.line}\n`)
    chmodSync(real, 0o644)
    const link = join(base, 'home', '.ssh', 'known_hosts')
    symlinkSync('../../dotfiles/ssh/known_hosts', link) // relative, as stow makes them

    await addKnownHost(link, 'pi', 22, keys.ed1.blob)
    expect(isLink(link)).toBe(true)
    expect(readlinkSync(link)).toBe('../../dotfiles/ssh/known_hosts')
    expect(readFileSync(real, 'utf8')).toBe(`old ${keys.rsa.line}\npi ${keys.ed1.line}\n`)
    expect(statSync(real).mode & 0o777).toBe(0o644)

    expect(await removeKnownHost(link, 'old')).toBe(1)
    expect(isLink(link)).toBe(true)
    expect(readFileSync(real, 'utf8')).toBe(`pi ${keys.ed1.line}\n`)
    expect(statSync(real).mode & 0o777).toBe(0o644)
    expect(tmpFiles(join(base, 'dotfiles', 'ssh'))).toEqual([])
    expect(tmpFiles(join(base, 'home', '.ssh'))).toEqual([])
  })

  it('follows a chain of links, a relative one resolved from its real directory (not the path it was reached by)', async () => {
    const base = mkdtempSync(join(dir, 'chain-'))
    mkdirSync(join(base, 'dotfiles', 'ssh'), { recursive: true })
    mkdirSync(join(base, 'dotfiles', 'shared'), { recursive: true })
    mkdirSync(join(base, 'home'))
    const real = join(base, 'dotfiles', 'shared', 'known_hosts')
    writeFileSync(real, '')
    symlinkSync('../dotfiles/ssh', join(base, 'home', '.ssh')) // a symlinked directory
    symlinkSync('../shared/kh-link', join(base, 'dotfiles', 'ssh', 'known_hosts')) // "../" from dotfiles/ssh, not home/.ssh
    symlinkSync('known_hosts', join(base, 'dotfiles', 'shared', 'kh-link'))

    await addKnownHost(join(base, 'home', '.ssh', 'known_hosts'), 'pi', 22, keys.ed1.blob)
    expect(readFileSync(real, 'utf8')).toBe(`pi ${keys.ed1.line}\n`)
    expect(isLink(join(base, 'dotfiles', 'ssh', 'known_hosts'))).toBe(true)
    expect(isLink(join(base, 'dotfiles', 'shared', 'kh-link'))).toBe(true)
    expect(existsSync(join(base, 'shared'))).toBe(false)
  })

  it('a link to a file that does not exist yet: creates that file 0600 in a new 0700 directory, and keeps the link', async () => {
    const base = mkdtempSync(join(dir, 'dangling-'))
    const link = join(base, 'known_hosts')
    symlinkSync('dotfiles/ssh/known_hosts', link)
    await addKnownHost(link, 'pi', 22, keys.ed1.blob)
    expect(isLink(link)).toBe(true)
    const real = join(base, 'dotfiles', 'ssh', 'known_hosts')
    expect(readFileSync(real, 'utf8')).toBe(`pi ${keys.ed1.line}\n`)
    expect(statSync(real).mode & 0o777).toBe(0o600)
    expect(statSync(join(base, 'dotfiles')).mode & 0o777).toBe(0o700)
    expect(statSync(join(base, 'dotfiles', 'ssh')).mode & 0o777).toBe(0o700)
  })

  it('a symlink loop is an error, not a hang, and writes nothing', async () => {
    const base = mkdtempSync(join(dir, 'loop-'))
    symlinkSync('b', join(base, 'a'))
    symlinkSync('a', join(base, 'b'))
    await expect(addKnownHost(join(base, 'a'), 'pi', 22, keys.ed1.blob)).rejects.toMatchObject({
      kind: 'hostkey',
      message: expect.stringContaining('symbolic links'),
    })
    await expect(removeKnownHost(join(base, 'a'), 'pi')).rejects.toMatchObject({ kind: 'hostkey' })
    expect(readdirSync(base).sort()).toEqual(['a', 'b'])
  })

  it.each([
    ['an existing file', true],
    ['a file that does not exist yet', false],
  ])('does not write through a symlink planted at its temp path (to %s)', async (_what, victimExists) => {
    const base = mkdtempSync(join(dir, 'plant-'))
    const path = khFile(`plant-${victimExists}`, `pi-a ${keys.ed1.line}\n`, 0o644)
    const before = readFileSync(path)
    const victim = join(base, 'victim')
    if (victimExists) writeFileSync(victim, 'precious\n')
    const bytes = Buffer.from('0123456789ab', 'hex')
    const tmp = join(dir, `.plant-${victimExists}.${process.pid}.${bytes.toString('hex')}.tmp`)
    symlinkSync(victim, tmp)
    nextTempBytes.value = bytes

    await expect(addKnownHost(path, 'pi-b', 22, keys.ed2.blob)).rejects.toMatchObject({
      kind: 'hostkey',
      message: expect.stringContaining('EEXIST'),
    })
    expect(nextTempBytes.value).toBe(null) // the planted name was the one tried
    if (victimExists) expect(readFileSync(victim, 'utf8')).toBe('precious\n')
    else expect(existsSync(victim)).toBe(false)
    expect(readFileSync(path).equals(before)).toBe(true)
    expect(statSync(path).mode & 0o777).toBe(0o644)
    // The next write takes a fresh random name and succeeds.
    await addKnownHost(path, 'pi-b', 22, keys.ed2.blob)
    expect(readFileSync(path, 'utf8')).toBe(`pi-a ${keys.ed1.line}\npi-b ${keys.ed2.line}\n`)
  })

  it.each([0, 0o077])('creates the file 0600 and its directory 0700 whatever the umask (%o)', async (mask) => {
    const old = process.umask(mask)
    try {
      const path = join(dir, `umask-${mask}`, 'known_hosts')
      await addKnownHost(path, 'pi', 22, keys.ed1.blob)
      expect(statSync(path).mode & 0o777).toBe(0o600)
      expect(statSync(join(dir, `umask-${mask}`)).mode & 0o777).toBe(0o700)
    } finally {
      process.umask(old)
    }
  })

  it('a reader never sees a partial file while writes go on (each write replaces the file whole)', async () => {
    const path = join(dir, 'readers', 'known_hosts')
    let writing = true
    const seen: number[] = []
    const reader = (async () => {
      while (writing) {
        const text = existsSync(path) ? readFileSync(path, 'utf8') : ''
        const k = await loadKnownHosts(path)
        expect(k.warnings).toEqual([])
        expect(text === '' || text.endsWith('\n')).toBe(true)
        seen.push(k.entries.length)
        await new Promise((r) => setImmediate(r))
      }
    })()
    for (let i = 0; i < 40; i++) await addKnownHost(path, `pi-${i}`, 22, keys.ed1.blob)
    writing = false
    await reader
    expect(seen.length).toBeGreaterThan(5)
    // Never fewer entries than a read before it saw: no moment where the file was cut short.
    expect(seen.every((n, i) => i === 0 || n >= seen[i - 1])).toBe(true)
    expect((await loadKnownHosts(path)).entries).toHaveLength(40)
  })
})
