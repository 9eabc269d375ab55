// Keys as owners have them: a PKCS#8 Ed25519 key as 1Password's SSH Key items hand it out, encrypted keys with
// their passphrase from the secrets store, and the errors that say what to do when a key cannot be used.

import { generateKeyPairSync } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import ssh2, { type ParsedKey } from 'ssh2'
import { describe, expect, it } from 'vitest'
import { ProvisionError } from '../../lib/errors.ts'
import { mask, resetSecretsForTest } from '../../lib/mask.ts'
import { keyForSsh } from '../../lib/sshkeys.ts'

const src = { what: 'ssh_key_ref op://pi-cluster/pi-ssh/private key', host: 'pi-k3s' }

function parsed(text: string, passphrase?: string): ParsedKey {
  const k = ssh2.utils.parseKey(text, passphrase)
  if (k instanceof Error) throw k
  return k
}

function refusal(fn: () => unknown): ProvisionError {
  try {
    fn()
  } catch (e) {
    if (e instanceof ProvisionError) return e
    throw e
  }
  throw new Error('expected a refusal')
}

describe('keyForSsh', () => {
  it('converts a PKCS#8 Ed25519 key (as 1Password hands it out) into one ssh2 reads, the same key', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519')
    const pkcs8 = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    expect(pkcs8).toContain('BEGIN PRIVATE KEY')
    expect(ssh2.utils.parseKey(pkcs8)).toBeInstanceOf(Error) // what ssh2 does with it as it is
    const converted = keyForSsh(pkcs8, src)
    const key = parsed(converted)
    expect(key.type).toBe('ssh-ed25519')
    expect(key.isPrivateKey()).toBe(true)
    // The same key: its public half, as ssh2 and as OpenSSH's own ssh-keygen read the converted file, is node's.
    const raw = publicKey.export({ format: 'jwk' }).x!
    expect(key.getPublicSSH().subarray(-32).toString('base64url')).toBe(raw)
    const file = join(mkdtempSync(join(tmpdir(), 'sshkeys-')), 'id')
    writeFileSync(file, converted, { mode: 0o600 })
    const pub = execFileSync('ssh-keygen', ['-y', '-f', file], { encoding: 'utf8' }).trim().split(' ')
    expect(pub[0]).toBe('ssh-ed25519')
    expect(Buffer.from(pub[1], 'base64').subarray(-32).toString('base64url')).toBe(raw)
  })

  it('takes an encrypted PKCS#8 key with its passphrase, and says what is wrong without it', () => {
    const { privateKey } = generateKeyPairSync('ed25519', {
      privateKeyEncoding: { type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'correct horse' },
      publicKeyEncoding: { type: 'spki', format: 'pem' },
    })
    expect(parsed(keyForSsh(privateKey, src, 'correct horse')).type).toBe('ssh-ed25519')
    const none = refusal(() => keyForSsh(privateKey, src))
    expect(none.message).toBe(
      'cannot use the SSH key (ssh_key_ref op://pi-cluster/pi-ssh/private key): it is encrypted and no passphrase was given',
    )
    expect(none.place.host).toBe('pi-k3s')
    expect(refusal(() => keyForSsh(privateKey, src, 'wrong')).message).toContain('the passphrase does not open it')
  })

  it('converts PKCS#8 RSA and ECDSA keys to the PEM forms ssh2 reads', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
      .privateKey.export({ type: 'pkcs8', format: 'pem' })
      .toString()
    expect(parsed(keyForSsh(rsa, src)).type).toBe('ssh-rsa')
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      .privateKey.export({ type: 'pkcs8', format: 'pem' })
      .toString()
    expect(parsed(keyForSsh(ec, src)).type).toBe('ecdsa-sha2-nistp256')
  })

  it('an encrypted OpenSSH key file (ssh-keygen -N): opened with the passphrase from the store, refused with a hint without', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sshkeys-'))
    execFileSync('ssh-keygen', [
      '-q',
      '-t',
      'ed25519',
      '-N',
      'pass phrase',
      '-f',
      join(dir, 'id'),
      '-C',
      'owner@laptop',
    ])
    const text = readFileSync(join(dir, 'id'), 'utf8')
    const file = { what: 'ssh_key_file ~/.ssh/id_ed25519', host: 'pi3-worker-1' }
    expect(parsed(keyForSsh(text, file, 'pass phrase'), 'pass phrase').type).toBe('ssh-ed25519')
    const e = refusal(() => keyForSsh(text, file))
    expect(e.message).toBe(
      'cannot use the SSH key (ssh_key_file ~/.ssh/id_ed25519): it is encrypted and no passphrase was given',
    )
    expect(e.hint).toContain('ssh-agent')
    expect(e.hint).toContain('ssh_key_passphrase_ref')
  })

  it('masks the key it read, converted too, from then on', () => {
    resetSecretsForTest()
    const pkcs8 = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    const converted = keyForSsh(pkcs8, src)
    const bodyLine = converted.split('\n')[1]
    expect(mask(`x ${bodyLine} y`)).toBe('x ******** y')
    expect(mask(pkcs8.trim())).toBe('********')
  })
})
