// The External Secrets Operator: the Secret it bootstraps from (the 1Password service-account token, which
// flux-bootstrap applies and compares by a salted digest, never the value), and the check the owner makes
// (`kubectl get clustersecretstores; kubectl get externalsecrets -A`): the ClusterSecretStore Ready and every
// ExternalSecret synced.

import { createHash } from 'node:crypto'
import { conditionOf, isReady, nameOf, type KubeObject, type NamedRead } from './kube.ts'

/** The ClusterSecretStore the cluster reads 1Password through. */
export const SECRET_STORE = 'onepassword'

export interface EsoReport {
  ok: boolean
  message: string
}

export function checkEso(stores: readonly KubeObject[], externalSecrets: readonly KubeObject[]): EsoReport {
  const store = stores.find((s) => s.metadata.name === SECRET_STORE)
  const problems: string[] = []
  if (!store) problems.push(`ClusterSecretStore ${SECRET_STORE} does not exist`)
  else if (!isReady(store))
    problems.push(
      `ClusterSecretStore ${SECRET_STORE} is not Ready: ${conditionOf(store)?.message ?? 'no Ready condition'}`,
    )
  const unsynced = externalSecrets.filter((e) => !isReady(e))
  for (const e of unsynced) {
    const c = conditionOf(e)
    problems.push(`ExternalSecret ${nameOf(e)} not synced: ${c?.message ?? c?.reason ?? 'no Ready condition'}`)
  }
  const synced = `${externalSecrets.length - unsynced.length}/${externalSecrets.length} ExternalSecrets synced`
  if (problems.length) return { ok: false, message: `${problems.join('; ')} (${synced})` }
  return { ok: true, message: `ClusterSecretStore ${SECRET_STORE} Ready; ${synced}` }
}

// ---------------------------------------------------------------- the bootstrap Secret

export const ESO_NAMESPACE = 'external-secrets'
export const ESO_SECRET = 'onepassword-service-account'
export const ESO_KEY = 'token'

/** The Secret as applied (server-side apply: no last-applied annotation holding the value a second time). */
export function esoSecretManifest(tokenBase64: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: ESO_SECRET,
      namespace: ESO_NAMESPACE,
      labels: { 'app.kubernetes.io/managed-by': 'pi-provision' },
    },
    type: 'Opaque',
    data: { [ESO_KEY]: tokenBase64 },
  })
}

/**
 * Whether the Secret holds the wanted value, read with the role's other facts (which have no stdin): the server
 * answers "absent" or a sha256 of a per-run random salt + "name=<base64 value>", never the value; the controller
 * compares it with the same digest of the value it wants.
 */
export type SecretState = { state: 'absent' } | { state: 'present'; digest: string } | { state: 'error'; error: string }

export function esoSecretDigest(salt: string, tokenBase64: string): string {
  return createHash('sha256').update(`${salt}${ESO_SECRET}=${tokenBase64}`).digest('hex')
}

/** The ESO Secret as the role's read found it: absent, or present with the digest the server answered. */
export function secretState(read: NamedRead): SecretState {
  if (read.error) return { state: 'error', error: `cannot read Secret ${ESO_NAMESPACE}/${ESO_SECRET}: ${read.error}` }
  return read.secretDigest ? { state: 'present', digest: read.secretDigest } : { state: 'absent' }
}
