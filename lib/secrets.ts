// The secrets store: one SecretStore over the two places secrets can live, 1Password (lib/onepassword.ts) or a
// local YAML file for labs and offline runs (lib/secrets-file.ts). It resolves each reference (lib/secret-ref.ts)
// at most once per run (1Password allows 1,000 reads a day per account), registers every value it learns for
// masking before anything can print it, and names the reference in every error.

import { ProvisionError } from './errors.ts'
import { registerSecret } from './mask.ts'
import { OnePasswordBackend } from './onepassword.ts'
import type { OnePasswordOptions } from './onepassword.ts'
import type { Backend, Resolution } from './secret-backend.ts'
import { formatSecretRef, parseSecretRef, parseSecretRefs } from './secret-ref.ts'
import type { SecretRef } from './secret-ref.ts'
import { FileBackend } from './secrets-file.ts'
import { counted } from './words.ts'

export interface SecretStore {
  readonly backend: 'onepassword' | 'file'
  /**
   * Resolve every ref once (one round trip for 1Password: resolveAll), register each value with registerSecret,
   * cache. Throws ProvisionError('secrets') naming every unresolvable ref and why (unknown vault / item / field).
   */
  resolveAll(refs: string[]): Promise<void>
  /** A cached value; throws if it was not resolved first. */
  get(ref: string): string
  /**
   * Value or undefined when the item/field does not exist (for generate-on-first-run values such as the k3s
   * token). Cached.
   */
  lookup(ref: string): Promise<string | undefined>
  /** Create or update the value (concealed field). Registers it for masking first. */
  upsert(ref: string, value: string): Promise<void>
}

export interface SecretStoreOptions extends OnePasswordOptions {
  backend: 'onepassword' | 'file'
  /** The YAML file of the file backend. */
  file?: string
}

export async function openSecretStore(opts: SecretStoreOptions): Promise<SecretStore> {
  if (opts.backend === 'file') {
    if (!opts.file) throw new ProvisionError('secrets', 'the file secrets backend needs a file path')
    const backend = await FileBackend.open(opts.file)
    return new CachingStore(backend)
  }
  if (opts.backend === 'onepassword') {
    const backend = await OnePasswordBackend.open(opts)
    return new CachingStore(backend)
  }
  throw new ProvisionError(
    'secrets',
    `unknown secrets backend ${JSON.stringify(String(opts.backend))}: expected onepassword or file`,
  )
}

class CachingStore implements SecretStore {
  readonly backend: 'onepassword' | 'file'
  readonly #impl: Backend
  /** Settled or in-flight answers, one per canonical ref: each ref costs at most one read per run. */
  readonly #answers = new Map<string, Promise<Resolution>>()
  /** Settled values, for the synchronous get(). */
  readonly #values = new Map<string, string>()
  readonly #absent = new Map<string, string>()
  #writes: Promise<unknown> = Promise.resolve()

  constructor(impl: Backend) {
    this.#impl = impl
    this.backend = impl.name
  }

  async resolveAll(refs: string[]): Promise<void> {
    const parsed = parseSecretRefs(refs)
    const answers = this.#answersFor(parsed)
    const failures: string[] = []
    for (const [key, answer] of answers) {
      const r = await answer
      if (r.status !== 'found') failures.push(`  ${key}: ${r.why}`)
    }
    if (failures.length > 0) {
      const n = failures.length
      throw new ProvisionError(
        'secrets',
        `cannot resolve ${counted(n, 'secret reference')} (${this.#impl.name} backend):\n${failures.join('\n')}`,
        { place: this.#impl.place, hint: this.#impl.hint },
      )
    }
  }

  get(ref: string): string {
    const key = formatSecretRef(parseSecretRef(ref))
    const value = this.#values.get(key)
    if (value !== undefined) return value
    const why = this.#absent.get(key)
    if (why !== undefined)
      throw new ProvisionError('secrets', `${key}: ${why}`, { place: this.#impl.place, hint: this.#impl.hint })
    throw new ProvisionError('secrets', `${key} was used before it was resolved`, {
      hint:
        'every reference must be passed to resolveAll (or lookup) before get: ' +
        'this is a bug in the role that uses it',
    })
  }

  async lookup(ref: string): Promise<string | undefined> {
    const parsed = parseSecretRef(ref)
    const [[key, answer]] = this.#answersFor([parsed])
    const r = await answer
    if (r.status === 'found') return r.value
    if (r.status === 'missing' && r.creatable) return undefined
    throw new ProvisionError('secrets', `${key}: ${r.why}`, { place: this.#impl.place, hint: this.#impl.hint })
  }

  async upsert(ref: string, value: string): Promise<void> {
    if (typeof value !== 'string') throw new ProvisionError('secrets', `${ref}: the value to store must be a string`)
    registerSecret(value)
    const parsed = parseSecretRef(ref)
    const key = formatSecretRef(parsed)
    // One write at a time: two upserts into the same item must not race on its version.
    const run = this.#writes.then(() => this.#impl.write(parsed, value))
    this.#writes = run.catch(() => undefined)
    await run
    this.#values.set(key, value)
    this.#absent.delete(key)
    this.#answers.set(key, Promise.resolve({ status: 'found', value }))
  }

  /** An answer per distinct ref, asking the backend once for all refs not asked before. */
  #answersFor(refs: SecretRef[]): Map<string, Promise<Resolution>> {
    const keys = [...new Set(refs.map(formatSecretRef))]
    const fresh = new Map<string, SecretRef>()
    for (const ref of refs) {
      const key = formatSecretRef(ref)
      if (!this.#answers.has(key)) fresh.set(key, ref)
    }
    if (fresh.size > 0) {
      const batch = this.#impl.resolve([...fresh.values()])
      for (const key of fresh.keys()) {
        // An upsert that finished while this read was in flight has replaced the answer: the
        // read then neither overwrites the new value nor forgets it.
        const current = (): boolean => this.#answers.get(key) === answer
        const answer: Promise<Resolution> = batch.then(
          (results): Resolution => {
            const r = results.get(key) ?? { status: 'error', why: 'the backend returned no answer for it' }
            if (current()) this.#settle(key, r)
            return r
          },
          (e: unknown) => {
            if (current()) this.#answers.delete(key)
            throw e
          },
        )
        // Callers await these; this only keeps a rejection nobody awaited from crashing the run.
        answer.catch(() => undefined)
        this.#answers.set(key, answer)
      }
    }
    const out = new Map<string, Promise<Resolution>>()
    for (const key of keys) {
      const answer = this.#answers.get(key)
      if (answer) out.set(key, answer)
    }
    return out
  }

  #settle(key: string, r: Resolution): void {
    if (r.status === 'found') {
      registerSecret(r.value)
      this.#values.set(key, r.value)
    } else if (r.status === 'missing') {
      this.#absent.set(key, r.why)
    } else {
      // A failure that is not "it does not exist" may be transient: let a later call ask again.
      this.#answers.delete(key)
    }
  }
}
