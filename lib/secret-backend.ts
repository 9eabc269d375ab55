// What the secrets store asks of a place secrets live (the YAML file, 1Password): resolve references in one go,
// write one value. Shared by the backends: what one reference resolved to, and error text that never shows a secret.

import type { ErrorPlace } from './errors.ts'
import { mask } from './mask.ts'
import type { SecretRef } from './secret-ref.ts'

// What a backend says about one reference.
export type Resolution =
  | { status: 'found'; value: string }
  /** creatable: upsert could create it (a missing item or field; a missing 1Password vault is not). */
  | { status: 'missing'; creatable: boolean; why: string }
  | { status: 'error'; why: string }

export interface Backend {
  readonly name: 'onepassword' | 'file'
  /** Where errors point (the file of the file backend). */
  readonly place: ErrorPlace
  readonly hint: string
  /** Resolve canonical refs in one go; throws ProvisionError when the whole request fails. */
  resolve(refs: SecretRef[]): Promise<Map<string, Resolution>>
  write(ref: SecretRef, value: string): Promise<void>
}

/** An error's message for a secrets error, masked (it may quote a value). */
export function errorMessage(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e)
  return mask(text || (e instanceof Error ? e.constructor.name : 'unknown error'))
}
