// Host keys at connect time: the key algorithms asked for (the ones known_hosts has for the host first, so a known
// host is checked against its known key), and what a refused host key is told as (changed, revoked, unknown).

import type { ServerHostKeyAlgorithm } from 'ssh2'
import { ProvisionError } from './errors.ts'
import { fingerprint, type HostKeyVerdict } from './knownhosts.ts'
import type { SshTarget } from './connection.ts'

export function orderHostKeyAlgorithms(known: string[]): ServerHostKeyAlgorithm[] {
  const all: ServerHostKeyAlgorithm[] = [
    'ssh-ed25519',
    'ecdsa-sha2-nistp256',
    'ecdsa-sha2-nistp384',
    'ecdsa-sha2-nistp521',
    'rsa-sha2-512',
    'rsa-sha2-256',
    'ssh-rsa',
  ]
  const wanted = new Set<string>()
  for (const k of known) {
    if (k === 'ssh-rsa') for (const a of ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] as const) wanted.add(a)
    else wanted.add(k)
  }
  return [...all.filter((a) => wanted.has(a)), ...all.filter((a) => !wanted.has(a))]
}

/** `unrecorded`: the fingerprint of a key this connection accepted earlier in the run without recording it. */
export function hostKeyError(
  t: SshTarget,
  khPath: string,
  v: HostKeyVerdict,
  key: Buffer,
  unrecorded?: string,
): ProvisionError {
  const got = fingerprint(key)
  const who = `${t.host} (${t.address}${t.port === 22 ? '' : `:${t.port}`})`
  if (v.status === 'changed' && unrecorded !== undefined && v.expected.includes(unrecorded))
    return new ProvisionError(
      'hostkey',
      `HOST KEY CHANGED for ${who} during this run: it presented ${unrecorded} (accepted, not recorded), ` +
        `now ${got}. Refusing to connect.`,
      {
        place: { host: t.host },
        hint: 'treat this as an attack unless the host was reflashed during the run',
      },
    )
  if (v.status === 'changed')
    return new ProvisionError(
      'hostkey',
      `HOST KEY CHANGED for ${who}: known_hosts has ${v.expected.join(', ')}, ` +
        `the host now presents ${got}. Refusing to connect.`,
      {
        place: { host: t.host },
        hint:
          `if the host was reflashed, run playbooks/rebuild.mts ${t.host} ` +
          `(or: ssh-keygen -R ${t.address} -f ${khPath}, then rerun with --trust-new-host-keys); ` +
          'otherwise treat this as an attack',
      },
    )
  if (v.status === 'revoked')
    return new ProvisionError(
      'hostkey',
      `host key ${got} of ${who} is marked @revoked in ${khPath}; refusing to connect`,
      { place: { host: t.host } },
    )
  return new ProvisionError('hostkey', `unknown host key for ${who}: ${got} is not in ${khPath}; refusing to connect`, {
    place: { host: t.host },
    hint:
      'check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), ' +
      'then rerun with --trust-new-host-keys to record it',
  })
}
