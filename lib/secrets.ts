// Secret references ("op://vault/item/field") and the two places they can live: 1Password
// (through @1password/sdk, signed in by the desktop app for an account at the owner's desk, or by a
// service-account token for unattended runs) or a local YAML file for labs and offline runs. Both sit
// behind one SecretStore that resolves each reference at most once per run (1Password allows 1,000 reads
// a day per account), registers every value it learns for masking before anything can print it, and names
// the reference in every error.

import { mkdir, readFile, realpath, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { Document, LineCounter, isMap, isScalar, parseDocument } from 'yaml'
import type { Node as YamlNode, YAMLMap } from 'yaml'
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
import { writeFileAtomic } from './fsutil.ts'
import { ProvisionError } from './errors.ts'
import type { ErrorPlace } from './errors.ts'
import { mask, registerSecret } from './mask.ts'
import { counted } from './words.ts'

// ---------------------------------------------------------------------------------------------
// References

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

// ---------------------------------------------------------------------------------------------
// The store

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

export interface SecretStoreOptions {
  backend: 'onepassword' | 'file'
  /** The YAML file of the file backend. */
  file?: string
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

// What a backend says about one reference.
type Resolution =
  | { status: 'found'; value: string }
  /** creatable: upsert could create it (a missing item or field; a missing 1Password vault is not). */
  | { status: 'missing'; creatable: boolean; why: string }
  | { status: 'error'; why: string }

interface Backend {
  readonly name: 'onepassword' | 'file'
  /** Where errors point (the file of the file backend). */
  readonly place: ErrorPlace
  readonly hint: string
  /** Resolve canonical refs in one go; throws ProvisionError when the whole request fails. */
  resolve(refs: SecretRef[]): Promise<Map<string, Resolution>>
  write(ref: SecretRef, value: string): Promise<void>
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
    const parsed = parseAll(refs)
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

function parseAll(refs: string[]): SecretRef[] {
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

// ---------------------------------------------------------------------------------------------
// File backend: vault: { item: { field: value } } in a YAML file of mode 0600.

type FileData = Map<string, Map<string, Map<string, string>>>

class FileBackend implements Backend {
  readonly name = 'file'
  readonly path: string
  readonly place: ErrorPlace
  readonly hint: string
  #data: FileData

  private constructor(path: string, data: FileData) {
    this.path = path
    this.place = { file: path }
    this.hint = `add them to ${path} as  vault: { item: { field: value } }`
    this.#data = data
  }

  static async open(path: string): Promise<FileBackend> {
    const loaded = await readSecretsFile(path)
    return new FileBackend(path, loaded.data)
  }

  async resolve(refs: SecretRef[]): Promise<Map<string, Resolution>> {
    const out = new Map<string, Resolution>()
    for (const ref of refs) out.set(formatSecretRef(ref), this.#find(ref))
    return out
  }

  #find(ref: SecretRef): Resolution {
    const items = this.#data.get(ref.vault)
    if (!items) {
      const why =
        this.#data.size === 0
          ? `no vault "${ref.vault}" (the secrets file is empty or does not exist)`
          : `no vault "${ref.vault}" in the secrets file`
      return { status: 'missing', creatable: true, why }
    }
    const fields = items.get(ref.item)
    if (!fields) return { status: 'missing', creatable: true, why: `no item "${ref.item}" in vault "${ref.vault}"` }
    const value = fields.get(ref.field)
    if (value === undefined)
      return {
        status: 'missing',
        creatable: true,
        why: `item "${ref.item}" in vault "${ref.vault}" has no field "${ref.field}"`,
      }
    return { status: 'found', value }
  }

  async write(ref: SecretRef, value: string): Promise<void> {
    // Edit what is on disk now (not what was read at open), so hand edits made meanwhile and
    // comments survive; write through a symlink to its target.
    const target = await realpath(this.path).catch(() => this.path)
    const { doc } = await readSecretsFile(target)
    const edited = doc ?? new Document()
    setIn(edited, [ref.vault, ref.item, ref.field], value)
    try {
      await mkdir(dirname(target), { recursive: true, mode: 0o700 })
      await writeFileAtomic(target, edited.toString(), 0o600)
    } catch (e) {
      throw new ProvisionError(
        'secrets',
        `cannot write secrets file ${target} for ${formatSecretRef(ref)}: ${errnoCode(e) ?? errorMessage(e)}`,
        {
          place: { file: target },
          cause: e,
        },
      )
    }
    let items = this.#data.get(ref.vault)
    if (!items) {
      items = new Map()
      this.#data.set(ref.vault, items)
    }
    let fields = items.get(ref.item)
    if (!fields) {
      fields = new Map()
      items.set(ref.item, fields)
    }
    fields.set(ref.field, value)
  }
}

async function readSecretsFile(path: string): Promise<{ doc: Document | null; data: FileData }> {
  let text: string
  try {
    const st = await stat(path)
    if (!st.isFile())
      throw new ProvisionError('secrets', 'the secrets file is not a regular file', { place: { file: path } })
    if ((st.mode & 0o077) !== 0) {
      const mode = (st.mode & 0o777).toString(8).padStart(4, '0')
      throw new ProvisionError(
        'secrets',
        `the secrets file has mode ${mode}, so group or others can access it; ` +
          `refusing to use it: run chmod 600 ${path}`,
        {
          place: { file: path },
        },
      )
    }
    text = await readFile(path, 'utf8')
  } catch (e) {
    if (e instanceof ProvisionError) throw e
    if (errnoCode(e) === 'ENOENT') return { doc: null, data: new Map() }
    throw new ProvisionError('secrets', `cannot read the secrets file: ${errnoCode(e) ?? String(e)}`, {
      place: { file: path },
      cause: e,
    })
  }

  const lines = new LineCounter()
  // prettyErrors off: a pretty error quotes the offending line, which may hold a secret.
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true })
  const at = (offset: number): ErrorPlace => {
    const { line, col } = lines.linePos(offset)
    return { file: path, line, col }
  }
  if (doc.errors.length > 0) {
    const err = doc.errors[0]
    const more = doc.errors.length > 1 ? ` (and ${doc.errors.length - 1} more)` : ''
    throw new ProvisionError('secrets', `invalid YAML in secrets file: ${err.message}${more}`, {
      place: at(err.pos[0]),
    })
  }

  const data: FileData = new Map()
  const root = doc.contents
  if (root === null || (isScalar(root) && root.value === null)) return { doc, data }
  const shape = 'expected  vault: { item: { field: value } }'
  const asMap = (node: unknown, what: string, offset: number): YAMLMap => {
    if (isMap(node)) return node
    throw new ProvisionError('secrets', `${what} must be a mapping; ${shape}`, {
      place: at(nodeOffset(node) ?? offset),
    })
  }
  const keyOf = (key: unknown, offset: number): { name: string; offset: number } => {
    if (isScalar(key) && key.value !== null && typeof key.value !== 'object') {
      return { name: String(key.value), offset: key.range?.[0] ?? offset }
    }
    throw new ProvisionError('secrets', `keys must be plain names; ${shape}`, { place: at(nodeOffset(key) ?? offset) })
  }

  for (const vp of asMap(root, 'the secrets file', 0).items) {
    const vault = keyOf(vp.key, 0)
    const items = new Map<string, Map<string, string>>()
    data.set(vault.name, items)
    for (const ip of asMap(vp.value, `vault "${vault.name}"`, vault.offset).items) {
      const item = keyOf(ip.key, vault.offset)
      const fields = new Map<string, string>()
      items.set(item.name, fields)
      for (const fp of asMap(ip.value, `item "${vault.name}/${item.name}"`, item.offset).items) {
        const field = keyOf(fp.key, item.offset)
        const ref = `op://${vault.name}/${item.name}/${field.name}`
        const v = fp.value
        if (isScalar(v) && typeof v.value === 'string') fields.set(field.name, v.value)
        else if (isScalar(v) && v.value !== null && typeof v.value !== 'object') {
          // Never echo the value: a number here may still be a PIN.
          throw new ProvisionError(
            'secrets',
            `${ref}: the value is a ${typeof v.value}; quote it to make it a string`,
            { place: at(v.range?.[0] ?? field.offset) },
          )
        } else {
          throw new ProvisionError('secrets', `${ref}: the value must be a string`, {
            place: at(nodeOffset(v) ?? field.offset),
          })
        }
      }
    }
  }
  return { doc, data }
}

function nodeOffset(node: unknown): number | undefined {
  const range = (node as YamlNode | null)?.range
  return Array.isArray(range) ? range[0] : undefined
}

/** Set doc[a][b][c] = value, reusing existing keys (a key written 1234 is the number 1234). */
function setIn(doc: Document, path: string[], value: string): void {
  const keys: unknown[] = []
  let node: unknown = doc.contents
  for (const name of path) {
    let key: unknown = name
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === name)
      if (pair) {
        key = (pair.key as { value: unknown }).value
        node = pair.value
      } else node = undefined
    } else node = undefined
    keys.push(key)
  }
  if (doc.contents !== null && !isMap(doc.contents) && !(isScalar(doc.contents) && doc.contents.value === null)) {
    throw new ProvisionError('secrets', 'the secrets file is not a mapping; cannot add to it')
  }
  if (isScalar(doc.contents)) doc.contents = null
  doc.setIn(keys, value)
}

// ---------------------------------------------------------------------------------------------
// 1Password backend

type Sdk = typeof import('@1password/sdk')

const ACTIVE_ITEMS: ItemListFilter = { type: 'ByState', content: { active: true, archived: false } }

/** Where the 1Password app's switch for the SDK is. */
const DESKTOP_SETTING = 'Settings > Developer > Integrate with other apps'

class OnePasswordBackend implements Backend {
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

  static async open(opts: SecretStoreOptions): Promise<OnePasswordBackend> {
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

/**
 * What the SDK's desktop-app sign-in failures mean for the owner, with the setting or action that fixes each;
 * undefined for an error that is not about the app.
 */
export function desktopError(e: unknown, account: string, sdk: Sdk, doing?: string): ProvisionError | undefined {
  const text = errorMessage(e)
  const when = doing ? ` while ${doing}` : ''
  const err = (message: string, hint: string) => new ProvisionError('secrets', message, { hint, cause: e })
  const offHint = 'or unset op_account to use OP_SERVICE_ACCOUNT_TOKEN (unattended runs: -e op_account=none)'
  if (/desktop application not found|native library is not available|failed to initialize native library/i.test(text))
    return err(
      `the 1Password app was not found on this machine, and op_account "${account}" asks to sign in through it`,
      `install the 1Password desktop app and sign in to that account, ${offHint}`,
    )
  if (/unexpectedly dropped|not running|ECONNREFUSED/i.test(text))
    return err(
      `the 1Password app is not running, or dropped the connection${when}`,
      `start the 1Password app and unlock it (and keep ${DESKTOP_SETTING} on), then run again`,
    )
  if (/channel is closed|integrat|failed to send message/i.test(text))
    return err(
      `the 1Password app refused the connection${when}: its integration with other apps is off`,
      `in the 1Password app turn on ${DESKTOP_SETTING} ` +
        '(on Linux also Settings > Security > Unlock using system authentication), then run again',
    )
  if (/account/i.test(text) && /not found|no account|unknown|does not exist|not signed in/i.test(text))
    return err(
      `the 1Password app has no account "${account}"${when}`,
      'set op_account to the account as the app shows it at the top left of its sidebar (e.g. my.1password.com), ' +
        "or the account's ID",
    )
  const expired =
    e instanceof sdk.DesktopSessionExpiredError ||
    (e instanceof Error && e.constructor.name === 'DesktopSessionExpiredError')
  if (expired || /locked|denied|declined|cancel|not authori[sz]ed|authori[sz]ation|session expired/i.test(text))
    return err(
      `the 1Password app did not let this run in${when} (it is locked, or the request was declined)`,
      'unlock the 1Password app and approve the request it shows ' +
        '(Touch ID, Windows Hello, system authentication or the account password), then run again',
    )
  return undefined
}

/**
 * The SDK loads the desktop app's library while createClient starts (synchronously), and when it cannot, writes
 * "A critical error occurred while loading the native addon" to the console and fails later with "Native library
 * is not available". That line is kept off the owner's terminal; its reason becomes the error's.
 */
function quietNativeAddon<T>(start: () => Promise<T>): Promise<T> {
  const original = console.error
  let reason: unknown
  console.error = (...args: unknown[]) => {
    if (typeof args[0] === 'string' && args[0].includes('native addon')) reason = args[1] ?? args[0]
    else original(...args)
  }
  let started: Promise<T>
  try {
    started = start()
  } finally {
    console.error = original
  }
  return started.catch((e: unknown) => {
    if (reason === undefined) throw e
    throw new Error(`${errorMessage(reason)} (${errorMessage(e)})`, { cause: e })
  })
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

// ---------------------------------------------------------------------------------------------
// Helpers

function errorMessage(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e)
  return mask(text || (e instanceof Error ? e.constructor.name : 'unknown error'))
}

function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' ? e.code : undefined
}
