// A secret reference, "op://vault/item/field": its grammar, parsed and written back. Every store and
// every error names a reference in this one canonical form.

import { ProvisionError } from './errors.ts'

export interface SecretRef {
  vault: string
  item: string
  field: string
}

const REF_SHAPE = /^op:\/\/([^/]+)\/([^/]+)\/([^/]+)$/

/**
 * Parse "op://vault/item/field". Sections (op://vault/item/section/field) and query parameters
 * (?attribute=otp) are not supported: a field label that is unique in its item resolves
 * without its section.
 */
export function parseSecretRef(ref: string): SecretRef {
  const text = typeof ref === 'string' ? ref : String(ref)
  const m = REF_SHAPE.exec(text)
  const parts = m ? [m[1], m[2], m[3]] : []
  const bad = !m || parts.some((p) => p.trim() !== p || p.includes('?'))
  if (bad) {
    throw new ProvisionError(
      'secrets',
      `${JSON.stringify(text)} is not a secret reference: expected op://vault/item/field`,
      {
        hint:
          'three non-empty parts separated by "/", no section and no ?query ' +
          '(for example op://pi-cluster/k3s-token/credential)',
      },
    )
  }
  return { vault: parts[0], item: parts[1], field: parts[2] }
}

export function formatSecretRef(ref: SecretRef): string {
  return `op://${ref.vault}/${ref.item}/${ref.field}`
}

/** Every ref of a list parsed, or one error naming all that are not references. */
export function parseSecretRefs(refs: string[]): SecretRef[] {
  if (!Array.isArray(refs)) throw new ProvisionError('secrets', 'resolveAll expects a list of op:// references')
  const parsed: SecretRef[] = []
  const bad: string[] = []
  for (const ref of refs) {
    try {
      parsed.push(parseSecretRef(ref))
    } catch {
      bad.push(JSON.stringify(String(ref)))
    }
  }
  if (bad.length > 0) {
    throw new ProvisionError('secrets', `not secret references (expected op://vault/item/field): ${bad.join(', ')}`)
  }
  return parsed
}
