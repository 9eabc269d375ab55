// Private keys as the owner has them, made into what ssh2 reads: OpenSSH and PEM keys as they are (an encrypted
// one with its passphrase, or a clear error saying how to give it), and PKCS#8 keys, which 1Password hands out for
// its SSH Key items and ssh2 does not read for Ed25519, converted to the OpenSSH format.

import { createPrivateKey, randomBytes, type KeyObject } from 'node:crypto'
import ssh2 from 'ssh2'
import { ProvisionError } from './errors.ts'
import { registerSecret } from './mask.ts'

/** Where a key came from, for messages: "ssh_key_file ~/.ssh/id_ed25519" or "ssh_key_ref op://...". */
export interface KeySource {
  what: string
  host: string
}

/**
 * The key text ssh2 should get. Throws a ProvisionError (kind 'unreachable': the host cannot be logged into) that
 * says what is wrong with the key and what to do, never showing the key.
 */
export function keyForSsh(text: string, source: KeySource, passphrase?: string): string {
  const pem = text.trim() + '\n'
  registerSecret(pem.trim())
  if (/-----BEGIN (ENCRYPTED )?PRIVATE KEY-----/.test(pem)) return fromPkcs8(pem, source, passphrase)
  const parsed = ssh2.utils.parseKey(pem, passphrase)
  if (parsed instanceof Error) {
    const encrypted = /encrypted|passphrase|decrypt/i.test(parsed.message)
    throw new ProvisionError(
      'unreachable',
      `cannot use the SSH key (${source.what}): ${encrypted ? lockedKey(passphrase) : parsed.message}`,
      {
        place: { host: source.host },
        hint: encrypted
          ? 'load it into your ssh-agent (ssh-add; the 1Password SSH agent works) ' +
            'or set ssh_key_passphrase_ref to its passphrase in the secrets store'
          : undefined,
      },
    )
  }
  return pem
}

/** Why an encrypted key did not open. */
function lockedKey(passphrase: string | undefined): string {
  return passphrase ? 'the passphrase does not open it' : 'it is encrypted and no passphrase was given'
}

function fromPkcs8(pem: string, source: KeySource, passphrase?: string): string {
  let key: KeyObject
  try {
    key = createPrivateKey({ key: pem, format: 'pem', passphrase })
  } catch (e) {
    const encrypted = /ENCRYPTED/.test(pem)
    throw new ProvisionError(
      'unreachable',
      `cannot use the SSH key (${source.what}): ` +
        (encrypted ? lockedKey(passphrase) : `not a private key PKCS#8 can read (${(e as Error).message})`),
      {
        place: { host: source.host },
        hint: encrypted
          ? 'set ssh_key_passphrase_ref to its passphrase in the secrets store, or load it into your ssh-agent'
          : undefined,
      },
    )
  }
  switch (key.asymmetricKeyType) {
    case 'ed25519':
      return openSshEd25519(key)
    case 'rsa':
      return key.export({ type: 'pkcs1', format: 'pem' }).toString()
    case 'ec':
      return key.export({ type: 'sec1', format: 'pem' }).toString()
    default:
      throw new ProvisionError(
        'unreachable',
        `cannot use the SSH key (${source.what}): ${key.asymmetricKeyType} keys are not supported for SSH here ` +
          '(use ed25519, RSA or ECDSA)',
        { place: { host: source.host } },
      )
  }
}

/** An Ed25519 key in OpenSSH's own format ("openssh-key-v1", unencrypted: it stays in this process's memory). */
export function openSshEd25519(key: KeyObject, comment = ''): string {
  const jwk = key.export({ format: 'jwk' })
  if (!jwk.d || !jwk.x) throw new Error('not an Ed25519 private key')
  const seed = Buffer.from(jwk.d, 'base64url')
  const pub = Buffer.from(jwk.x, 'base64url')
  const str = (b: Buffer | string) => {
    const data = typeof b === 'string' ? Buffer.from(b) : b
    const len = Buffer.alloc(4)
    len.writeUInt32BE(data.length)
    return Buffer.concat([len, data])
  }
  const u32 = (n: number) => {
    const b = Buffer.alloc(4)
    b.writeUInt32BE(n)
    return b
  }
  const publicBlob = Buffer.concat([str('ssh-ed25519'), str(pub)])
  const check = randomBytes(4).readUInt32BE(0)
  let secret = Buffer.concat([
    u32(check),
    u32(check),
    str('ssh-ed25519'),
    str(pub),
    str(Buffer.concat([seed, pub])),
    str(comment),
  ])
  // Padded to the cipher's block size (8 for "none") with 1, 2, 3, ...
  const pad = (8 - (secret.length % 8)) % 8
  secret = Buffer.concat([secret, Buffer.from(Array.from({ length: pad }, (_, i) => i + 1))])
  const body = Buffer.concat([
    Buffer.from('openssh-key-v1\0'),
    str('none'),
    str('none'),
    str(''),
    u32(1),
    str(publicBlob),
    str(secret),
  ]).toString('base64')
  const lines = body.match(/.{1,70}/g) ?? []
  const out = ['-----BEGIN OPENSSH PRIVATE KEY-----', ...lines, '-----END OPENSSH PRIVATE KEY-----', ''].join('\n')
  registerSecret(body)
  for (const l of lines) registerSecret(l)
  return out
}
