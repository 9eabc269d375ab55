// The 1Password backend of the secrets store, through @1password/sdk: signed in by the desktop app for an account at
// the owner's desk (op_account), or by a service-account token for unattended runs. Resolves references in one
// round trip; writes a value as a concealed field, creating the item when it is missing.

import type {
  Item,
  ItemCreateParams,
  ItemField,
  ItemListFilter,
  ItemOverview,
  ResolveAllResponse,
  ResolveReferenceError,
  VaultOverview,
} from '@1password/sdk'
import { ProvisionError } from './errors.ts'
import type { ErrorPlace } from './errors.ts'
import { mask, registerSecret } from './mask.ts'
import { DESKTOP_SETTING, desktopError, quietNativeAddon } from './onepassword-desktop.ts'
import { errorMessage } from './secret-backend.ts'
import type { Backend, Resolution } from './secret-backend.ts'
import { formatSecretRef } from './secret-ref.ts'
import type { SecretRef } from './secret-ref.ts'

/**
 * The part of the @1password/sdk client this module uses. The real client (createClient's
 * result) is assigned to this type below, so tsc proves it fits; tests implement it with a fake.
 */
export interface OnePasswordClient {
  secrets: {
    resolveAll(secretReferences: string[]): Promise<ResolveAllResponse>
  }
  vaults: {
    list(): Promise<Array<Pick<VaultOverview, 'id' | 'title'>>>
  }
  items: {
    list(vaultId: string, ...filters: ItemListFilter[]): Promise<Array<Pick<ItemOverview, 'id' | 'title'>>>
    get(vaultId: string, itemId: string): Promise<Item>
    create(params: ItemCreateParams): Promise<unknown>
    put(item: Item): Promise<unknown>
  }
}

/** What @1password/sdk's createClient takes: the auth (a service-account token or a DesktopAuth) and our name. */
export type OnePasswordConfig = Parameters<Sdk['createClient']>[0]

/** How the 1Password backend signs in. */
export interface OnePasswordOptions {
  /**
   * 1Password: sign in through the desktop app for this account (op_account: as the app shows it, or its ID),
   * unlocked by the owner; undefined or "none": with OP_SERVICE_ACCOUNT_TOKEN (unattended runs).
   */
  account?: string
  /** Where OP_SERVICE_ACCOUNT_TOKEN is read from (default process.env). */
  env?: Record<string, string | undefined>
  integrationVersion?: string
  /**
   * Stands in for @1password/sdk's createClient (tests): it gets exactly the configuration the SDK would, a
   * DesktopAuth of the SDK's own class or the token, and its errors go through the same translation.
   */
  createClient?: (config: OnePasswordConfig) => Promise<OnePasswordClient>
}

export type Sdk = typeof import('@1password/sdk')

const ACTIVE_ITEMS: ItemListFilter = { type: 'ByState', content: { active: true, archived: false } }

export class OnePasswordBackend implements Backend {
  readonly name = 'onepassword'
  readonly place: ErrorPlace = {}
  readonly hint: string
  readonly #sdk: Sdk
  readonly #connect: () => Promise<OnePasswordClient>
  /** The account the desktop app signs in (op_account); undefined: the service-account token. */
  readonly #account: string | undefined
  /** Who must see the vaults, for messages: the service account, or the owner's account. */
  readonly #who: string
  #client: Promise<OnePasswordClient> | undefined
  #vaults: Promise<Array<Pick<VaultOverview, 'id' | 'title'>>> | undefined

  private constructor(sdk: Sdk, connect: () => Promise<OnePasswordClient>, account: string | undefined) {
    this.#sdk = sdk
    this.#connect = connect
    this.#account = account
    this.#who = account === undefined ? 'the service account' : `account "${account}"`
    this.hint =
      `check the references against 1Password; ${this.#who} needs read access ` +
      '(write access for values this tool generates) to the vault'
  }

  static async open(opts: OnePasswordOptions): Promise<OnePasswordBackend> {
    const env = opts.env ?? process.env
    const raw = env.OP_SERVICE_ACCOUNT_TOKEN
    // A token in the environment is a secret whether or not this run uses it.
    if (raw !== undefined && raw.trim() !== '') {
      registerSecret(raw)
      registerSecret(raw.trim())
    }
    const account = opts.account !== undefined && opts.account !== 'none' ? opts.account : undefined
    const integrationVersion = opts.integrationVersion ?? 'dev'
    if (account !== undefined) {
      // At the owner's desk: the 1Password app signs in (and asks to be unlocked); no token on this machine.
      const sdk: Sdk = await import('@1password/sdk')
      const config: OnePasswordConfig = {
        auth: new sdk.DesktopAuth(account),
        integrationName: 'pi-provision',
        integrationVersion,
      }
      const create = opts.createClient ?? ((c: OnePasswordConfig): Promise<OnePasswordClient> => sdk.createClient(c))
      return new OnePasswordBackend(sdk, () => quietNativeAddon(() => create(config)), account)
    }
    if (raw === undefined || raw.trim() === '') {
      throw new ProvisionError(
        'secrets',
        'OP_SERVICE_ACCOUNT_TOKEN is not set, and the inventory selected the 1Password secrets backend',
        {
          hint:
            'export OP_SERVICE_ACCOUNT_TOKEN=<service-account token, starts with ops_>, ' +
            'or at your desk set op_account to your 1Password account to sign in through the 1Password app ' +
            '(or select the file backend in the inventory)',
        },
      )
    }
    const token = raw.trim()
    if (!token.startsWith('ops_')) {
      throw new ProvisionError(
        'secrets',
        'OP_SERVICE_ACCOUNT_TOKEN is malformed: a 1Password service-account token starts with "ops_"',
        {
          hint:
            'copy the token again from 1Password (Developer > Service Accounts); ' +
            'a Connect token or a personal session token will not work',
        },
      )
    }
    // Loaded only when 1Password is used: the SDK starts a WebAssembly core.
    const sdk: Sdk = await import('@1password/sdk')
    const config: OnePasswordConfig = { auth: token, integrationName: 'pi-provision', integrationVersion }
    const create = opts.createClient ?? ((c: OnePasswordConfig): Promise<OnePasswordClient> => sdk.createClient(c))
    // Signing in is a network round trip: do it when the first secret is needed, not at open.
    return new OnePasswordBackend(sdk, () => create(config), undefined)
  }

  #clientOnce(): Promise<OnePasswordClient> {
    if (!this.#client) {
      const attempt = this.#connect().catch((e: unknown) => {
        this.#client = undefined
        if (this.#isRateLimit(e)) throw this.#translate(e, 'signing in to 1Password')
        if (this.#account !== undefined)
          throw (
            desktopError(e, this.#account, this.#sdk) ??
            new ProvisionError(
              'secrets',
              `cannot sign in to 1Password through the 1Password app (op_account "${this.#account}"): ` +
                errorMessage(e),
              {
                hint:
                  'check that the 1Password app runs, is unlocked, is signed in to that account, ' +
                  `and has ${DESKTOP_SETTING} on`,
                cause: e,
              },
            )
          )
        throw new ProvisionError(
          'secrets',
          `cannot sign in to 1Password with OP_SERVICE_ACCOUNT_TOKEN: ${errorMessage(e)}`,
          {
            hint:
              'check that the service-account token is current (not revoked or expired) ' +
              'and that 1Password is reachable from this machine',
            cause: e,
          },
        )
      })
      this.#client = attempt
    }
    return this.#client
  }

  async resolve(refs: SecretRef[]): Promise<Map<string, Resolution>> {
    const client = await this.#clientOnce()
    const keys = refs.map(formatSecretRef)
    let response: ResolveAllResponse
    try {
      response = await client.secrets.resolveAll(keys)
    } catch (e) {
      throw this.#translate(e, `resolving ${keys.join(', ')}`)
    }
    const answers = response?.individualResponses ?? {}
    const out = new Map<string, Resolution>()
    refs.forEach((ref, i) => {
      const key = keys[i]
      const r = Object.hasOwn(answers, key) ? answers[key] : undefined
      if (!r) out.set(key, { status: 'error', why: '1Password returned no answer for it' })
      else if (r.error) out.set(key, describeResolveError(ref, r.error, this.#who))
      else if (r.content && typeof r.content.secret === 'string')
        out.set(key, { status: 'found', value: r.content.secret })
      else out.set(key, { status: 'error', why: '1Password returned neither a value nor an error for it' })
    })
    return out
  }

  async write(ref: SecretRef, value: string): Promise<void> {
    const key = formatSecretRef(ref)
    const client = await this.#clientOnce()
    const sdk = this.#sdk

    const vaults = await this.#listVaults(client, key)
    const vault = pickByTitle(vaults, ref.vault, key, 'vaults')
    if (!vault) {
      throw new ProvisionError('secrets', `${key}: no vault "${ref.vault}" that ${this.#who} can see`, {
        hint: this.hint,
      })
    }

    let overviews: Array<Pick<ItemOverview, 'id' | 'title'>>
    try {
      overviews = await client.items.list(vault.id, ACTIVE_ITEMS)
    } catch (e) {
      throw this.#translate(e, `listing the items of vault "${ref.vault}" for ${key}`)
    }
    const found = pickByTitle(overviews, ref.item, key, `items in vault "${ref.vault}"`)

    if (!found) {
      const isPassword = ref.field === 'password'
      const field: ItemField = {
        id: isPassword ? 'password' : fieldId(ref.field, []),
        title: ref.field,
        fieldType: sdk.ItemFieldType.Concealed,
        value,
      }
      const params: ItemCreateParams = {
        // A Password item's built-in field is "password"; any other name becomes a custom
        // concealed field of a Secure Note (the SDK puts it in an untitled section).
        category: isPassword ? sdk.ItemCategory.Password : sdk.ItemCategory.SecureNote,
        vaultId: vault.id,
        title: ref.item,
        fields: [field],
      }
      try {
        await client.items.create(params)
      } catch (e) {
        throw this.#translate(e, `creating item "${ref.item}" in vault "${ref.vault}" for ${key}`)
      }
      return
    }

    let item: Item
    try {
      item = await client.items.get(vault.id, found.id)
    } catch (e) {
      throw this.#translate(e, `reading item "${ref.item}" in vault "${ref.vault}" for ${key}`)
    }
    // As 1Password matches a reference's field: by label (exact, then ignoring case), else by ID.
    let matches = item.fields.filter((f) => f.title === ref.field)
    if (matches.length === 0) matches = item.fields.filter((f) => f.title.toLowerCase() === ref.field.toLowerCase())
    if (matches.length === 0) matches = item.fields.filter((f) => f.id === ref.field)
    if (matches.length > 1) {
      throw new ProvisionError(
        'secrets',
        `${key}: item "${ref.item}" has ${matches.length} fields named "${ref.field}"; rename all but one in 1Password`,
      )
    }
    const current = matches[0]
    // nothing to change
    if (current && current.value === value && current.fieldType === sdk.ItemFieldType.Concealed) return
    const fields: ItemField[] = current
      ? item.fields.map((f) => (f === current ? { ...f, value, fieldType: sdk.ItemFieldType.Concealed } : f))
      : [
          ...item.fields,
          {
            id: fieldId(
              ref.field,
              item.fields.map((f) => f.id),
            ),
            title: ref.field,
            fieldType: sdk.ItemFieldType.Concealed,
            value,
          },
        ]
    try {
      await client.items.put({ ...item, fields })
    } catch (e) {
      throw this.#translate(e, `updating item "${ref.item}" in vault "${ref.vault}" for ${key}`)
    }
  }

  #listVaults(client: OnePasswordClient, key: string): Promise<Array<Pick<VaultOverview, 'id' | 'title'>>> {
    if (!this.#vaults) {
      this.#vaults = client.vaults.list().catch((e: unknown) => {
        this.#vaults = undefined
        throw this.#translate(e, `listing vaults for ${key}`)
      })
    }
    return this.#vaults
  }

  #isRateLimit(e: unknown): boolean {
    return (
      e instanceof this.#sdk.RateLimitExceededError ||
      (e instanceof Error && e.constructor.name === 'RateLimitExceededError')
    )
  }

  #translate(e: unknown, doing: string): ProvisionError {
    if (e instanceof ProvisionError) return e
    if (this.#isRateLimit(e)) {
      return new ProvisionError('secrets', `1Password rate limit exceeded while ${doing}`, {
        hint:
          'service-account reads are limited (1,000 an hour per token; 1,000 a day per Families account): ' +
          'wait for the limit to reset, then rerun',
        cause: e,
      })
    }
    // The app can lock, or its integration be turned off, in the middle of a run.
    const desktop = this.#account !== undefined ? desktopError(e, this.#account, this.#sdk, doing) : undefined
    return desktop ?? new ProvisionError('secrets', `1Password failed while ${doing}: ${errorMessage(e)}`, { cause: e })
  }
}

function describeResolveError(ref: SecretRef, err: ResolveReferenceError, who: string): Resolution {
  switch (err.type) {
    case 'vaultNotFound':
      return { status: 'missing', creatable: false, why: `no vault "${ref.vault}" that ${who} can see` }
    case 'itemNotFound':
      return { status: 'missing', creatable: true, why: `no item "${ref.item}" in vault "${ref.vault}"` }
    case 'fieldNotFound':
      return {
        status: 'missing',
        creatable: true,
        why: `item "${ref.item}" in vault "${ref.vault}" has no field "${ref.field}"`,
      }
    case 'tooManyVaults':
      return { status: 'error', why: `several vaults are titled "${ref.vault}"; use the vault's ID or rename one` }
    case 'tooManyItems':
      return {
        status: 'error',
        why: `several items in vault "${ref.vault}" are titled "${ref.item}"; use the item's ID or rename one`,
      }
    case 'tooManyMatchingFields':
      return { status: 'error', why: `item "${ref.item}" has several fields named "${ref.field}"; rename all but one` }
    case 'parsing':
      return { status: 'error', why: `1Password cannot parse the reference: ${mask(String(err.message))}` }
    default:
      return {
        status: 'error',
        why: `1Password cannot resolve it (${err.type}${err.message ? `: ${mask(String(err.message))}` : ''})`,
      }
  }
}

/** The one entry titled `name` (exactly, else case-insensitively), or with ID `name`; undefined when none. */
function pickByTitle<T extends { id: string; title: string }>(
  list: T[],
  name: string,
  key: string,
  what: string,
): T | undefined {
  let hits = list.filter((x) => x.title === name)
  if (hits.length === 0) hits = list.filter((x) => x.title.toLowerCase() === name.toLowerCase())
  if (hits.length === 0) hits = list.filter((x) => x.id === name)
  if (hits.length > 1) {
    throw new ProvisionError(
      'secrets',
      `${key}: ${hits.length} ${what} are titled "${name}"; rename all but one or use the ID in the reference`,
    )
  }
  return hits[0]
}

function fieldId(title: string, taken: string[]): string {
  const base =
    title
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '_')
      .replace(/^_+|_+$/g, '') || 'field'
  let id = base
  for (let n = 2; taken.includes(id); n++) id = `${base}_${n}`
  return id
}
