// Who the controller logs in as: the private key read from ssh_key_file, its public key beside it, and an ssh-agent
// that offers that key first.

import { readFile } from 'node:fs/promises'
import ssh2 from 'ssh2'
import type { IdentityCallback, ParsedKey } from 'ssh2'
import { errnoCode, ProvisionError } from './errors.ts'
import { expandPath } from './controller-paths.ts'

/** An ssh-agent whose key matching `prefer` (an SSH public key blob) is offered first. */
export class PreferringAgent extends ssh2.OpenSSHAgent {
  readonly #prefer: Buffer
  /** Whether the agent held the preferred key (undefined until it was asked). */
  held: boolean | undefined

  constructor(socket: string, prefer: Buffer) {
    super(socket)
    this.#prefer = prefer
  }

  override getIdentities(cb: IdentityCallback<ParsedKey>): void {
    super.getIdentities((err, keys) => {
      if (err || !keys) return cb(err, keys)
      const mine = keys.filter((k) => 'getPublicSSH' in k && k.getPublicSSH().equals(this.#prefer))
      this.held = mine.length > 0
      cb(undefined, [...mine, ...keys.filter((k) => !mine.includes(k))])
    })
  }
}

/** The key blob of an OpenSSH public key line ("ssh-ed25519 AAAA... comment"); undefined for anything else. */
export function publicKeyBlob(text: string): Buffer | undefined {
  const m = /^\s*((?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+)\s+([A-Za-z0-9+/]+={0,3})(?:\s[^\n]*)?\s*$/.exec(text)
  if (!m) return undefined
  const blob = Buffer.from(m[2], 'base64')
  // The blob starts with its own type name: a line whose base64 says another type is not a public key.
  const len = blob.length >= 4 ? blob.readUInt32BE(0) : -1
  return len > 0 && blob.subarray(4, 4 + len).toString('latin1') === m[1] ? blob : undefined
}

export async function readPublicBeside(keyFile: string): Promise<Buffer | undefined> {
  try {
    return publicKeyBlob(await readFile(`${expandPath(keyFile, process.cwd())}.pub`, 'utf8'))
  } catch {
    return undefined
  }
}

export async function readKey(path: string, host: string): Promise<string> {
  try {
    return await readFile(expandPath(path, process.cwd()), 'utf8')
  } catch (e) {
    throw new ProvisionError('unreachable', `cannot read SSH key ${path}: ${errnoCode(e) ?? String(e)}`, {
      place: { host },
    })
  }
}
