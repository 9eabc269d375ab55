// The lab's credentials: the login key every host trusts, the known_hosts file written by `up`, and the
// file-backed stand-in for the 1Password vault. Secret values are generated here and never printed.
import { randomInt, randomBytes } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml'
import { LAB_DIR, LAB_KEY, LAB_KNOWN_HOSTS, LAB_SECRETS_FILE, LAB_SSH_DIR } from './paths.ts'
import { run } from './run.ts'

export async function ensureLabKey(): Promise<void> {
  mkdirSync(LAB_SSH_DIR, { recursive: true, mode: 0o700 })
  if (!existsSync(LAB_KEY)) await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'pi-lab', '-f', LAB_KEY])
  chmodSync(LAB_KEY, 0o600)
}

/** Replaces the lines of these addresses with their current keys; other hosts' lines stay. */
export function writeKnownHosts(entries: readonly { address: string; keys: readonly string[] }[]): void {
  const addresses = new Set(entries.map((e) => e.address))
  const kept = existsSync(LAB_KNOWN_HOSTS)
    ? readFileSync(LAB_KNOWN_HOSTS, 'utf8')
        .split('\n')
        .filter((l) => l && !addresses.has(l.split(' ')[0]))
    : []
  const fresh = entries.flatMap((e) => e.keys.map((k) => `${e.address} ${k}`))
  writeFileSync(LAB_KNOWN_HOSTS, [...kept, ...fresh].join('\n') + '\n', { mode: 0o644 })
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

function randomAlnum(length: number): string {
  return Array.from({ length }, () => ALNUM[randomInt(ALNUM.length)]).join('')
}

/**
 * secrets.yaml: `op://pi-cluster/<item>/<field>` references resolve to nested keys. Made once; a test that
 * needs other values edits the file, and a re-run of `up` keeps them.
 */
export function ensureSecrets(): void {
  mkdirSync(LAB_DIR, { recursive: true })
  if (!existsSync(LAB_SECRETS_FILE)) {
    const text = [
      'pi-cluster:',
      '  onepassword-service-account:',
      `    token: ops_${randomBytes(48).toString('base64url')}`,
      '  flux-github-pat:',
      `    token: ghp_${randomAlnum(36)}`,
      '',
    ].join('\n')
    writeFileSync(LAB_SECRETS_FILE, text, { mode: 0o600, flag: 'wx' })
  }
  // Items added since a lab's file was made are appended, so an older lab keeps its values and gains the new ones.
  const doc = (parseYaml(readFileSync(LAB_SECRETS_FILE, 'utf8')) ?? {}) as Record<string, Record<string, unknown>>
  if (doc['pi-cluster']?.pihole === undefined) {
    doc['pi-cluster'] = { ...doc['pi-cluster'], pihole: { password: randomAlnum(24) } }
    writeFileSync(`${LAB_SECRETS_FILE}.new`, stringifyYaml(doc), { mode: 0o600 })
    renameSync(`${LAB_SECRETS_FILE}.new`, LAB_SECRETS_FILE)
  }
}
