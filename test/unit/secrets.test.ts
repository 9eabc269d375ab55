import {
  chmodSync,
  lstatSync,
  mkdtempSync,
  symlinkSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  DesktopAuth,
  DesktopSessionExpiredError,
  ItemCategory,
  ItemFieldType,
  RateLimitExceededError,
} from '@1password/sdk'
import type { Item, ItemCreateParams, ItemField, ItemListFilter, ResolveAllResponse } from '@1password/sdk'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { ProvisionError, errorText } from '../../lib/errors.ts'
import { mask, resetSecretsForTest } from '../../lib/mask.ts'
import type { OnePasswordClient, OnePasswordConfig } from '../../lib/onepassword.ts'
import { parseSecretRef } from '../../lib/secret-ref.ts'
import { openSecretStore, type SecretStore } from '../../lib/secrets.ts'

const MASKED = '********'

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'secrets-test-'))
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})
beforeEach(() => {
  resetSecretsForTest()
})

async function failure(p: Promise<unknown> | (() => unknown)): Promise<ProvisionError> {
  try {
    if (typeof p === 'function') await p()
    else await p
  } catch (e) {
    expect(e).toBeInstanceOf(ProvisionError)
    return e as ProvisionError
  }
  throw new Error('expected a ProvisionError, nothing was thrown')
}

describe('parseSecretRef', () => {
  it('splits op://vault/item/field', () => {
    expect(parseSecretRef('op://pi-cluster/k3s node token/credential')).toEqual({
      vault: 'pi-cluster',
      item: 'k3s node token',
      field: 'credential',
    })
  })

  it.each([
    'pi-cluster/item/field',
    'op://pi-cluster/item',
    'op://pi-cluster/item/section/field',
    'op://v//f',
    'op://v/i/f?attribute=otp',
    'op://v/i/f/',
    ' op://v/i/f',
    '',
  ])('rejects %j naming it', async (ref) => {
    const e = await failure(() => parseSecretRef(ref))
    expect(e.kind).toBe('secrets')
    expect(e.message).toContain(JSON.stringify(ref))
  })
})

// ---------------------------------------------------------------------------------------------
// File backend

function secretsFile(name: string, content: string, mode = 0o600): string {
  const path = join(dir, name)
  writeFileSync(path, content, { mode })
  chmodSync(path, mode)
  return path
}

const FILE_CONTENT = `# lab secrets
pi-cluster:
  k3s:
    token: "K10deadbeef::server:file-secret-1"   # generated
  flux-github-pat:
    credential: ghp_fileSecret2
  ssh:
    key: |
      -----BEGIN OPENSSH PRIVATE KEY-----
      file-secret-3-body
      -----END OPENSSH PRIVATE KEY-----
other:
  x:
    y: file-secret-4
`

describe('file backend', () => {
  it('resolves refs, caches them and masks every value', async () => {
    const store = await openSecretStore({ backend: 'file', file: secretsFile('basic.yaml', FILE_CONTENT) })
    expect(store.backend).toBe('file')
    const refs = ['op://pi-cluster/k3s/token', 'op://pi-cluster/flux-github-pat/credential', 'op://pi-cluster/ssh/key']
    for (const v of ['file-secret-1', 'ghp_fileSecret2', 'file-secret-3-body'])
      expect(mask(`x ${v} x`)).toBe(`x ${v} x`)
    await store.resolveAll(refs)
    expect(store.get(refs[0])).toBe('K10deadbeef::server:file-secret-1')
    expect(store.get(refs[1])).toBe('ghp_fileSecret2')
    expect(store.get(refs[2])).toBe(
      '-----BEGIN OPENSSH PRIVATE KEY-----\nfile-secret-3-body\n-----END OPENSSH PRIVATE KEY-----\n',
    )
    for (const r of refs) expect(mask(`value=${store.get(r)}.`)).toBe(`value=${MASKED}.`)
    // Not resolved, so not registered: only values the run uses are masked.
    expect(mask('file-secret-4')).toBe('file-secret-4')
  })

  it('throws from get() for a ref that was not resolved', async () => {
    const store = await openSecretStore({ backend: 'file', file: secretsFile('get.yaml', FILE_CONTENT) })
    const e = await failure(() => store.get('op://other/x/y'))
    expect(e.kind).toBe('secrets')
    expect(e.message).toContain('op://other/x/y')
    expect(e.message).not.toContain('file-secret-4')
  })

  it('names every missing ref and why, with the file, and no value', async () => {
    const path = secretsFile('missing.yaml', FILE_CONTENT)
    const store = await openSecretStore({ backend: 'file', file: path })
    const e = await failure(
      store.resolveAll([
        'op://pi-cluster/k3s/token',
        'op://nope/a/b',
        'op://pi-cluster/absent/f',
        'op://pi-cluster/k3s/nofield',
      ]),
    )
    expect(e.kind).toBe('secrets')
    expect(e.place.file).toBe(path)
    expect(e.message).toContain('cannot resolve 3 secret references')
    expect(e.message).toContain('op://nope/a/b: no vault "nope"')
    expect(e.message).toContain('op://pi-cluster/absent/f: no item "absent" in vault "pi-cluster"')
    expect(e.message).toContain('op://pi-cluster/k3s/nofield: item "k3s" in vault "pi-cluster" has no field "nofield"')
    expect(errorText(e)).not.toContain('file-secret')
    // The resolvable one is still usable, and masked.
    expect(mask(store.get('op://pi-cluster/k3s/token'))).toBe(MASKED)
    await expect(failure(() => store.get('op://nope/a/b'))).resolves.toMatchObject({
      message: expect.stringContaining('op://nope/a/b'),
    })
  })

  it('reports bad YAML as file:line:col without quoting the line (it may hold a secret)', async () => {
    const path = secretsFile('bad.yaml', 'pi-cluster:\n  k3s:\n    token: [file-secret-5\n  other: 1\n')
    const e = await failure(openSecretStore({ backend: 'file', file: path }))
    expect(e.kind).toBe('secrets')
    expect(e.place).toMatchObject({ file: path, line: expect.any(Number), col: expect.any(Number) })
    expect(e.describe()).toMatch(new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: invalid YAML`))
    expect(errorText(e)).not.toContain('file-secret-5')
  })

  it('reports duplicate keys and wrong shapes at their position', async () => {
    const dup = secretsFile('dup.yaml', 'v:\n  i:\n    f: a-secret\n    f: b-secret\n')
    const e1 = await failure(openSecretStore({ backend: 'file', file: dup }))
    expect(e1.describe()).toContain(`${dup}:4:5`)
    expect(errorText(e1)).not.toMatch(/[ab]-secret/)

    const num = secretsFile('num.yaml', 'v:\n  i:\n    pin: 987654\n')
    const e2 = await failure(openSecretStore({ backend: 'file', file: num }))
    expect(e2.describe()).toContain(`${num}:3:10`)
    expect(e2.message).toContain('op://v/i/pin')
    expect(e2.message).toContain('quote it')
    expect(errorText(e2)).not.toContain('987654')

    const flat = secretsFile('flat.yaml', 'v:\n  i: just-a-string\n')
    const e3 = await failure(openSecretStore({ backend: 'file', file: flat }))
    expect(e3.describe()).toContain(`${flat}:2:6`)
    expect(e3.message).toContain('vault: { item: { field: value } }')
  })

  it.each([0o644, 0o640, 0o604, 0o660])('refuses a file of mode %o with a chmod 600 hint', async (mode) => {
    const path = secretsFile(`open-${mode.toString(8)}.yaml`, FILE_CONTENT, mode)
    const e = await failure(openSecretStore({ backend: 'file', file: path }))
    expect(e.kind).toBe('secrets')
    expect(e.message).toContain(`chmod 600 ${path}`)
    expect(errorText(e)).not.toContain('file-secret')
  })

  it('accepts 0400', async () => {
    const store = await openSecretStore({ backend: 'file', file: secretsFile('ro.yaml', FILE_CONTENT, 0o400) })
    await store.resolveAll(['op://other/x/y'])
    expect(store.get('op://other/x/y')).toBe('file-secret-4')
  })

  it('treats a missing file as an empty store and creates it 0600 on upsert', async () => {
    const path = join(dir, 'fresh', 'nested', 'secrets.yaml')
    const store = await openSecretStore({ backend: 'file', file: path })
    expect(await store.lookup('op://pi-cluster/k3s/token')).toBeUndefined()
    const e = await failure(store.resolveAll(['op://pi-cluster/k3s/token']))
    expect(e.message).toContain('op://pi-cluster/k3s/token')
    await store.upsert('op://pi-cluster/k3s/token', 'K10generated::server:fresh-secret')
    expect(statSync(path).mode & 0o777).toBe(0o600)
    expect(statSync(join(dir, 'fresh')).mode & 0o777).toBe(0o700)
    expect(store.get('op://pi-cluster/k3s/token')).toBe('K10generated::server:fresh-secret')
    expect(await store.lookup('op://pi-cluster/k3s/token')).toBe('K10generated::server:fresh-secret')
    const again = await openSecretStore({ backend: 'file', file: path })
    expect(await again.lookup('op://pi-cluster/k3s/token')).toBe('K10generated::server:fresh-secret')
  })

  it('upserts atomically, keeps 0600, other values and comments', async () => {
    const path = secretsFile('upsert.yaml', FILE_CONTENT)
    const inode = statSync(path).ino
    const store = await openSecretStore({ backend: 'file', file: path })
    expect(await store.lookup('op://pi-cluster/k3s/token')).toBe('K10deadbeef::server:file-secret-1')
    // The registry learns the value before anything is written.
    expect(mask('new-secret-6')).toBe('new-secret-6')
    await store.upsert('op://pi-cluster/k3s/token', 'new-secret-6')
    expect(mask('new-secret-6')).toBe(MASKED)
    await store.upsert('op://pi-cluster/newitem/multi', 'line one\nline two: # not a comment\n')
    await store.upsert('op://brand-new/item/field', 'new-secret-7')

    expect(statSync(path).ino).not.toBe(inode)
    expect(statSync(path).mode & 0o777).toBe(0o600)
    expect(readdirSync(dir).filter((f) => f.includes('upsert.yaml') && f !== 'upsert.yaml')).toEqual([])
    const text = readFileSync(path, 'utf8')
    expect(text).toContain('# lab secrets')
    expect(text).toContain('# generated')
    expect(store.get('op://pi-cluster/k3s/token')).toBe('new-secret-6')

    const reread = await openSecretStore({ backend: 'file', file: path })
    const all = {
      'op://pi-cluster/k3s/token': 'new-secret-6',
      'op://pi-cluster/flux-github-pat/credential': 'ghp_fileSecret2',
      'op://pi-cluster/ssh/key':
        '-----BEGIN OPENSSH PRIVATE KEY-----\nfile-secret-3-body\n-----END OPENSSH PRIVATE KEY-----\n',
      'op://other/x/y': 'file-secret-4',
      'op://pi-cluster/newitem/multi': 'line one\nline two: # not a comment\n',
      'op://brand-new/item/field': 'new-secret-7',
    }
    await reread.resolveAll(Object.keys(all))
    for (const [ref, value] of Object.entries(all)) expect(reread.get(ref)).toBe(value)
  })

  it('writes through a symlink, keeping the link', async () => {
    const real = secretsFile('real.yaml', FILE_CONTENT)
    const link = join(dir, 'link.yaml')
    symlinkSync(real, link)
    const store = await openSecretStore({ backend: 'file', file: link })
    await store.upsert('op://other/x/y', 'via-link-secret')
    expect(lstatSync(link).isSymbolicLink()).toBe(true)
    expect(readFileSync(real, 'utf8')).toContain('via-link-secret')
  })

  it('keeps edits made to the file after it was opened', async () => {
    const path = secretsFile('concurrent.yaml', FILE_CONTENT)
    const store = await openSecretStore({ backend: 'file', file: path })
    writeFileSync(path, FILE_CONTENT + 'added:\n  by:\n    hand: meanwhile\n')
    await store.upsert('op://pi-cluster/k3s/token', 'new-secret-8')
    const reread = await openSecretStore({ backend: 'file', file: path })
    expect(await reread.lookup('op://added/by/hand')).toBe('meanwhile')
    expect(await reread.lookup('op://pi-cluster/k3s/token')).toBe('new-secret-8')
  })
})

// ---------------------------------------------------------------------------------------------
// 1Password backend against a fake client that records every SDK call

const TOKEN = 'ops_eyJzaWduSW5BZGRyZXNzIjoiZmFrZSJ9planted-token'
const ACTIVE: ItemListFilter = { type: 'ByState', content: { active: true, archived: false } }

type Call = [string, ...unknown[]]

function field(id: string, title: string, value: string, fieldType = ItemFieldType.Concealed): ItemField {
  return { id, title, fieldType, value }
}

function item(id: string, vaultId: string, title: string, fields: ItemField[], category = ItemCategory.Password): Item {
  const at = new Date('2025-01-01T00:00:00Z')
  return {
    id,
    title,
    category,
    vaultId,
    fields,
    sections: [],
    notes: 'keep me',
    tags: ['k3s'],
    websites: [],
    version: 3,
    files: [],
    createdAt: at,
    updatedAt: at,
  }
}

class FakeOnePassword implements OnePasswordClient {
  calls: Call[] = []
  vaultList = [
    { id: 'vlt-pi', title: 'pi-cluster' },
    { id: 'vlt-other', title: 'Private' },
  ]
  records: Item[] = [
    item('itm-k3s', 'vlt-pi', 'k3s-token', [field('password', 'password', 'op-secret-k3s')]),
    item('itm-pat', 'vlt-pi', 'flux-github-pat', [
      field('username', 'username', 'mtgibbs', ItemFieldType.Text),
      field('credential', 'credential', 'ghp_opSecretPat'),
    ]),
    item('itm-eso', 'vlt-pi', 'eso', [field('token', 'token', 'ops_opSecretEso')]),
  ]
  failNext: { method: string; error: Error } | undefined
  /** What createClient throws (signing in fails). */
  signInError: Error | undefined
  /** resolveAll answers only once this settles (to hold a read in flight). */
  gate: Promise<void> = Promise.resolve()
  #nextId = 1

  #maybeFail(method: string): void {
    if (this.failNext?.method === method) {
      const { error } = this.failNext
      this.failNext = undefined
      throw error
    }
  }

  secrets = {
    resolveAll: async (refs: string[]): Promise<ResolveAllResponse> => {
      this.calls.push(['secrets.resolveAll', [...refs]])
      this.#maybeFail('secrets.resolveAll')
      const out: ResolveAllResponse = { individualResponses: {} }
      for (const ref of refs) {
        const [v, i, f] = ref.slice('op://'.length).split('/')
        const vault = this.vaultList.find((x) => x.title === v)
        const it = vault && this.records.find((x) => x.vaultId === vault.id && x.title === i)
        const fl = it?.fields.find((x) => x.title === f)
        out.individualResponses[ref] = !vault
          ? { error: { type: 'vaultNotFound' } }
          : !it
            ? { error: { type: 'itemNotFound' } }
            : !fl
              ? { error: { type: 'fieldNotFound' } }
              : { content: { secret: fl.value, itemId: it.id, vaultId: vault.id } }
      }
      await this.gate // the answer reflects the state when the read arrived
      return out
    },
  }

  vaults = {
    list: async () => {
      this.calls.push(['vaults.list'])
      this.#maybeFail('vaults.list')
      return this.vaultList
    },
  }

  items = {
    list: async (vaultId: string, ...filters: ItemListFilter[]) => {
      this.calls.push(['items.list', vaultId, ...filters])
      return this.records.filter((x) => x.vaultId === vaultId).map((x) => ({ id: x.id, title: x.title }))
    },
    get: async (vaultId: string, itemId: string): Promise<Item> => {
      this.calls.push(['items.get', vaultId, itemId])
      const found = this.records.find((x) => x.vaultId === vaultId && x.id === itemId)
      if (!found) throw new Error('item not found')
      return structuredClone(found)
    },
    create: async (params: ItemCreateParams): Promise<Item> => {
      this.calls.push(['items.create', structuredClone(params)])
      this.#maybeFail('items.create')
      const created = item(
        `itm-new-${this.#nextId++}`,
        params.vaultId,
        params.title,
        params.fields ?? [],
        params.category,
      )
      this.records.push(created)
      return created
    },
    put: async (next: Item): Promise<Item> => {
      this.calls.push(['items.put', structuredClone(next)])
      this.records = this.records.map((x) => (x.id === next.id ? { ...next, version: next.version + 1 } : x))
      return next
    },
  }
}

async function open1p(
  fake: FakeOnePassword,
  env: Record<string, string | undefined> = { OP_SERVICE_ACCOUNT_TOKEN: TOKEN },
  account?: string,
): Promise<{ store: SecretStore; tokens: string[]; configs: OnePasswordConfig[] }> {
  const tokens: string[] = []
  const configs: OnePasswordConfig[] = []
  const store = await openSecretStore({
    backend: 'onepassword',
    env,
    account,
    // The stand-in for the SDK's createClient: it gets the configuration the SDK would.
    createClient: async (config) => {
      configs.push(config)
      if (typeof config.auth === 'string') tokens.push(config.auth)
      fake.calls.push(['createClient'])
      if (fake.signInError) throw fake.signInError
      return fake
    },
  })
  return { store, tokens, configs }
}

describe('1Password backend', () => {
  it('resolves all refs in one resolveAll call and never asks again', async () => {
    const fake = new FakeOnePassword()
    const { store, tokens } = await open1p(fake)
    expect(store.backend).toBe('onepassword')
    expect(fake.calls).toEqual([]) // signing in waits until a secret is needed
    const refs = [
      'op://pi-cluster/k3s-token/password',
      'op://pi-cluster/flux-github-pat/credential',
      'op://pi-cluster/eso/token',
      'op://pi-cluster/k3s-token/password',
    ]
    await store.resolveAll(refs)
    expect(tokens).toEqual([TOKEN])
    expect(fake.calls).toEqual([
      ['createClient'],
      [
        'secrets.resolveAll',
        [
          'op://pi-cluster/k3s-token/password',
          'op://pi-cluster/flux-github-pat/credential',
          'op://pi-cluster/eso/token',
        ],
      ],
    ])

    expect(store.get(refs[0])).toBe('op-secret-k3s')
    expect(store.get(refs[1])).toBe('ghp_opSecretPat')
    expect(store.get(refs[2])).toBe('ops_opSecretEso')
    for (let n = 0; n < 3; n++) for (const r of refs) store.get(r)
    await store.resolveAll(refs)
    expect(await store.lookup(refs[1])).toBe('ghp_opSecretPat')
    expect(fake.calls).toHaveLength(2)

    for (const v of ['op-secret-k3s', 'ghp_opSecretPat', 'ops_opSecretEso', TOKEN])
      expect(mask(`[${v}]`)).toBe(`[${MASKED}]`)
  })

  it('shares one in-flight call between concurrent callers', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    const ref = 'op://pi-cluster/eso/token'
    const [, a, b] = await Promise.all([store.resolveAll([ref]), store.lookup(ref), store.lookup(ref)])
    expect(a).toBe('ops_opSecretEso')
    expect(b).toBe('ops_opSecretEso')
    expect(fake.calls.filter((c) => c[0] === 'secrets.resolveAll')).toEqual([['secrets.resolveAll', [ref]]])
  })

  it('names every unknown vault, item and field', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    const e = await failure(
      store.resolveAll([
        'op://pi-cluster/k3s-token/password',
        'op://pi-klaster/k3s-token/password',
        'op://pi-cluster/k3s-tokn/password',
        'op://pi-cluster/k3s-token/credential',
      ]),
    )
    expect(e.kind).toBe('secrets')
    expect(e.message).toContain('cannot resolve 3 secret references')
    expect(e.message).toContain('op://pi-klaster/k3s-token/password: no vault "pi-klaster"')
    expect(e.message).toContain('op://pi-cluster/k3s-tokn/password: no item "k3s-tokn" in vault "pi-cluster"')
    expect(e.message).toContain(
      'op://pi-cluster/k3s-token/credential: item "k3s-token" in vault "pi-cluster" has no field "credential"',
    )
    expect(errorText(e)).not.toContain('op-secret-k3s')
    expect(errorText(e)).not.toContain(TOKEN)
    expect(store.get('op://pi-cluster/k3s-token/password')).toBe('op-secret-k3s')
    expect(fake.calls.filter((c) => c[0] === 'secrets.resolveAll')).toHaveLength(1)
  })

  it('rejects malformed refs before any call, naming each', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    const e = await failure(store.resolveAll(['op://pi-cluster/eso/token', 'pi-cluster/eso/token', 'op://a/b/c/d']))
    expect(e.message).toContain('"pi-cluster/eso/token"')
    expect(e.message).toContain('"op://a/b/c/d"')
    expect(fake.calls).toEqual([])
  })

  it('lookup: undefined for a missing item or field (cached), an error for a missing vault', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    expect(await store.lookup('op://pi-cluster/k3s-node-token/token')).toBeUndefined()
    expect(await store.lookup('op://pi-cluster/k3s-node-token/token')).toBeUndefined()
    expect(await store.lookup('op://pi-cluster/eso/other')).toBeUndefined()
    expect(fake.calls).toEqual([
      ['createClient'],
      ['secrets.resolveAll', ['op://pi-cluster/k3s-node-token/token']],
      ['secrets.resolveAll', ['op://pi-cluster/eso/other']],
    ])
    const e = await failure(store.lookup('op://nope/x/y'))
    expect(e.message).toContain('op://nope/x/y')
    expect(e.message).toContain('no vault "nope"')
    const g = await failure(() => store.get('op://pi-cluster/k3s-node-token/token'))
    expect(g.message).toContain('op://pi-cluster/k3s-node-token/token')
  })

  it('upsert creates a missing item with a concealed field in the right vault', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    const ref = 'op://pi-cluster/k3s-node-token/token'
    expect(await store.lookup(ref)).toBeUndefined()
    fake.calls = []
    const value = 'K10abc::server:op-generated-secret'
    await store.upsert(ref, value)
    expect(fake.calls).toEqual([
      ['vaults.list'],
      ['items.list', 'vlt-pi', ACTIVE],
      [
        'items.create',
        {
          category: ItemCategory.SecureNote,
          vaultId: 'vlt-pi',
          title: 'k3s-node-token',
          fields: [{ id: 'token', title: 'token', fieldType: ItemFieldType.Concealed, value }],
        },
      ],
    ])
    expect(mask(value)).toBe(MASKED)
    // The new value is cached: no read of what was just written.
    expect(store.get(ref)).toBe(value)
    expect(await store.lookup(ref)).toBe(value)
    expect(fake.calls).toHaveLength(3)

    // A "password" field makes a Password item with its built-in password field.
    await store.upsert('op://pi-cluster/pihole-admin/password', 'op-generated-pw')
    expect(fake.calls.slice(3)).toEqual([
      ['items.list', 'vlt-pi', ACTIVE], // the vault list is not read twice
      [
        'items.create',
        {
          category: ItemCategory.Password,
          vaultId: 'vlt-pi',
          title: 'pihole-admin',
          fields: [{ id: 'password', title: 'password', fieldType: ItemFieldType.Concealed, value: 'op-generated-pw' }],
        },
      ],
    ])
  })

  it('upsert updates the field of an existing item with items.put, keeping everything else', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    const original = structuredClone(fake.records[1])
    await store.upsert('op://pi-cluster/flux-github-pat/credential', 'ghp_rotatedSecret')
    expect(fake.calls).toEqual([
      ['createClient'],
      ['vaults.list'],
      ['items.list', 'vlt-pi', ACTIVE],
      ['items.get', 'vlt-pi', 'itm-pat'],
      [
        'items.put',
        { ...original, fields: [original.fields[0], { ...original.fields[1], value: 'ghp_rotatedSecret' }] },
      ],
    ])
    expect(mask('ghp_rotatedSecret')).toBe(MASKED)
    expect(store.get('op://pi-cluster/flux-github-pat/credential')).toBe('ghp_rotatedSecret')

    // A new field on an existing item is appended, concealed.
    fake.calls = []
    await store.upsert('op://pi-cluster/eso/Backup Token', 'ops_newFieldSecret')
    const put = fake.calls.find((c) => c[0] === 'items.put')?.[1] as Item
    expect(fake.calls.map((c) => c[0])).toEqual(['items.list', 'items.get', 'items.put'])
    expect(put.id).toBe('itm-eso')
    expect(put.vaultId).toBe('vlt-pi')
    expect(put.fields).toEqual([
      field('token', 'token', 'ops_opSecretEso'),
      { id: 'backup_token', title: 'Backup Token', fieldType: ItemFieldType.Concealed, value: 'ops_newFieldSecret' },
    ])

    // The field is found as 1Password finds it: by label ignoring case, so no duplicate is added.
    fake.calls = []
    await store.upsert('op://pi-cluster/k3s-token/Password', 'op-rotated-k3s')
    const put2 = fake.calls.find((c) => c[0] === 'items.put')?.[1] as Item
    expect(put2.id).toBe('itm-k3s')
    expect(put2.fields).toEqual([field('password', 'password', 'op-rotated-k3s')])

    // Writing the value that is already there changes nothing.
    fake.calls = []
    await store.upsert('op://pi-cluster/eso/token', 'ops_opSecretEso')
    expect(fake.calls.map((c) => c[0])).toEqual(['items.list', 'items.get'])
  })

  it('a read still in flight does not undo an upsert that finished first', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    let open = (): void => undefined
    fake.gate = new Promise((resolve) => (open = resolve))
    const ref = 'op://pi-cluster/eso/token'
    const reading = store.lookup(ref)
    await store.upsert(ref, 'ops_writtenWhileReading')
    open()
    await reading
    expect(store.get(ref)).toBe('ops_writtenWhileReading')
    expect(await store.lookup(ref)).toBe('ops_writtenWhileReading')
  })

  it('upsert into an unknown vault names the ref', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    const e = await failure(store.upsert('op://homelab/k3s/token', 'some-secret-9'))
    expect(e.kind).toBe('secrets')
    expect(e.message).toContain('op://homelab/k3s/token')
    expect(e.message).toContain('no vault "homelab"')
    expect(errorText(e)).not.toContain('some-secret-9')
    expect(fake.calls.map((c) => c[0])).toEqual(['createClient', 'vaults.list'])
  })

  it('translates SDK errors, naming the ref and masking secrets they echo', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    fake.failNext = {
      method: 'items.create',
      error: new Error('item validation failed: value leaked-secret-10 too long'),
    }
    const e = await failure(store.upsert('op://pi-cluster/new/token', 'leaked-secret-10'))
    expect(e.message).toContain('op://pi-cluster/new/token')
    expect(e.message).toContain('item validation failed')
    expect(errorText(e)).not.toContain('leaked-secret-10')
  })

  it('reports the rate limit clearly, and asks again on the next call', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake)
    fake.failNext = { method: 'secrets.resolveAll', error: new RateLimitExceededError('rate limit exceeded') }
    const e = await failure(store.resolveAll(['op://pi-cluster/eso/token']))
    expect(e.kind).toBe('secrets')
    expect(e.message).toMatch(/rate limit exceeded while resolving op:\/\/pi-cluster\/eso\/token/)
    expect(e.hint).toMatch(/1,000/)
    await store.resolveAll(['op://pi-cluster/eso/token'])
    expect(store.get('op://pi-cluster/eso/token')).toBe('ops_opSecretEso')
  })

  it('wraps a failed sign-in without showing the token', async () => {
    const store = await openSecretStore({
      backend: 'onepassword',
      env: { OP_SERVICE_ACCOUNT_TOKEN: TOKEN },
      createClient: async (config) => {
        throw new Error(`invalid service account token ${String(config.auth)}`)
      },
    })
    const e = await failure(store.resolveAll(['op://pi-cluster/eso/token']))
    expect(e.kind).toBe('secrets')
    expect(e.message).toContain('cannot sign in to 1Password')
    expect(errorText(e)).not.toContain(TOKEN)
    expect(errorText(e)).toContain(MASKED)
  })

  it.each([
    ['missing', {}],
    ['empty', { OP_SERVICE_ACCOUNT_TOKEN: '  ' }],
  ])('a %s token says to set it and that 1Password was selected', async (_what, env) => {
    const fake = new FakeOnePassword()
    const e = await failure(open1p(fake, env))
    expect(e.kind).toBe('secrets')
    expect(e.message).toContain('OP_SERVICE_ACCOUNT_TOKEN is not set')
    expect(e.message).toContain('1Password')
    expect(e.hint).toContain('export OP_SERVICE_ACCOUNT_TOKEN')
    expect(fake.calls).toEqual([])
  })

  it('a malformed token is refused without echoing it, and is masked', async () => {
    const fake = new FakeOnePassword()
    const bad = 'eyJhbGciOiJFUzI1NiJ9.not-a-service-account-token'
    const e = await failure(open1p(fake, { OP_SERVICE_ACCOUNT_TOKEN: bad }))
    expect(e.message).toContain('malformed')
    expect(e.message).toContain('ops_')
    expect(errorText(e)).not.toContain(bad)
    expect(mask(bad)).toBe(MASKED)
    expect(fake.calls).toEqual([])
  })

  it('reads the token from process.env by default', async () => {
    const saved = process.env.OP_SERVICE_ACCOUNT_TOKEN
    delete process.env.OP_SERVICE_ACCOUNT_TOKEN
    try {
      const e = await failure(
        openSecretStore({ backend: 'onepassword', createClient: async () => new FakeOnePassword() }),
      )
      expect(e.message).toContain('OP_SERVICE_ACCOUNT_TOKEN is not set')
    } finally {
      if (saved !== undefined) process.env.OP_SERVICE_ACCOUNT_TOKEN = saved
    }
  })
})

// The 1Password app at the owner's desk (op_account): the same backend and the same stand-in, signed in by the
// SDK's DesktopAuth instead of a token. The SDK errors below are the texts the SDKs give (the channel and dropped
// connection ones are in 1Password's SDKs; account and denial texts are not documented: those cases are matched
// by their words).
describe('1Password desktop app (op_account)', () => {
  const ACCOUNT = 'my.1password.com'

  it('signs in with a DesktopAuth for the account: no token needed, none passed', async () => {
    const fake = new FakeOnePassword()
    const { store, tokens, configs } = await open1p(fake, {}, ACCOUNT)
    expect(fake.calls).toEqual([])
    await store.resolveAll(['op://pi-cluster/eso/token'])
    expect(store.get('op://pi-cluster/eso/token')).toBe('ops_opSecretEso')
    expect(configs).toHaveLength(1)
    expect(configs[0].auth).toBeInstanceOf(DesktopAuth)
    expect((configs[0].auth as DesktopAuth).accountName).toBe(ACCOUNT)
    expect(configs[0].integrationName).toBe('pi-provision')
    expect(tokens).toEqual([])
  })

  it('with a token in the environment too: op_account wins, and the token is masked, never passed', async () => {
    const fake = new FakeOnePassword()
    const { store, configs } = await open1p(fake, { OP_SERVICE_ACCOUNT_TOKEN: TOKEN }, ACCOUNT)
    await store.resolveAll(['op://pi-cluster/eso/token'])
    expect(configs[0].auth).toBeInstanceOf(DesktopAuth)
    expect(JSON.stringify(configs[0])).not.toContain(TOKEN)
    expect(mask(`x ${TOKEN} y`)).toBe(`x ${MASKED} y`)
  })

  it.each([
    ['unset', undefined],
    ['none', 'none'],
  ])('op_account %s: the service-account token, as before', async (_what, account) => {
    const fake = new FakeOnePassword()
    const { store, configs } = await open1p(fake, { OP_SERVICE_ACCOUNT_TOKEN: TOKEN }, account)
    await store.resolveAll(['op://pi-cluster/eso/token'])
    expect(configs[0].auth).toBe(TOKEN)
    const missing = await failure(open1p(new FakeOnePassword(), {}, account))
    expect(missing.message).toContain('OP_SERVICE_ACCOUNT_TOKEN is not set')
    expect(missing.hint).toContain('op_account')
  })

  const ERRORS: [string, Error, RegExp, RegExp][] = [
    [
      'the app is not installed',
      new Error('Native library is not available.'),
      /1Password app was not found on this machine, and op_account "my.1password.com" asks/,
      /install the 1Password desktop app.*unset op_account/,
    ],
    [
      'the integration is off',
      new Error(
        'desktop app connection channel is closed. Make sure Settings > Developer > Integrate with other apps is enabled, or contact 1Password support',
      ),
      /refused the connection: its integration with other apps is off/,
      /turn on Settings > Developer > Integrate with other apps/,
    ],
    [
      'the integration is off (older text)',
      new Error(
        'error initializing client: failed to send message to Desktop App. Please make sure the integrations is enabled or otherwise contact 1Password support. Return code: -3',
      ),
      /integration with other apps is off/,
      /Settings > Developer > Integrate with other apps/,
    ],
    [
      'the app is not running',
      new Error(
        'connection was unexpectedly dropped by the desktop app. Make sure the desktop app is running and Settings > Developer > Integrate with other apps is enabled, or contact 1Password support',
      ),
      /1Password app is not running, or dropped the connection/,
      /start the 1Password app and unlock it/,
    ],
    [
      'the app is locked',
      new DesktopSessionExpiredError('desktop session expired'),
      /did not let this run in \(it is locked, or the request was declined\)/,
      /unlock the 1Password app and approve the request/,
    ],
    [
      'the request is declined',
      new Error('authorization denied by the user'),
      /it is locked, or the request was declined/,
      /approve the request/,
    ],
    [
      'no such account',
      new Error('no account found matching my.1password.com'),
      /1Password app has no account "my.1password.com"/,
      /top left of its sidebar/,
    ],
  ]

  it.each(ERRORS)('%s: an owner-readable error naming what to do', async (_what, error, message, hint) => {
    const fake = new FakeOnePassword()
    fake.signInError = error
    const { store } = await open1p(fake, { OP_SERVICE_ACCOUNT_TOKEN: TOKEN }, ACCOUNT)
    const e = await failure(store.resolveAll(['op://pi-cluster/eso/token']))
    expect(e.kind).toBe('secrets')
    expect(e.message).toMatch(message)
    expect(e.hint).toMatch(hint)
    expect(errorText(e)).not.toContain(TOKEN)
    // Not remembered: once the owner fixed it, the next call signs in.
    fake.signInError = undefined
    await store.resolveAll(['op://pi-cluster/eso/token'])
  })

  it('an unknown sign-in failure says what it was and where to look', async () => {
    const fake = new FakeOnePassword()
    fake.signInError = new Error('something unexpected')
    const { store } = await open1p(fake, {}, ACCOUNT)
    const e = await failure(store.resolveAll(['op://pi-cluster/eso/token']))
    expect(e.message).toBe(
      'cannot sign in to 1Password through the 1Password app (op_account "my.1password.com"): something unexpected',
    )
    expect(e.hint).toContain('Integrate with other apps')
  })

  it('the app turned off or locked mid-run: the failing call says so, naming what it was doing', async () => {
    const fake = new FakeOnePassword()
    const { store } = await open1p(fake, {}, ACCOUNT)
    await store.resolveAll(['op://pi-cluster/eso/token'])
    fake.failNext = {
      method: 'secrets.resolveAll',
      error: new Error('desktop app connection channel is closed. Make sure Settings > Developer > Integrate ...'),
    }
    const e = await failure(store.resolveAll(['op://pi-cluster/k3s-token/password']))
    expect(e.message).toBe(
      'the 1Password app refused the connection while resolving op://pi-cluster/k3s-token/password: its integration with other apps is off',
    )
    // Messages about access name the account, not a service account.
    const vault = await failure(store.lookup('op://homelab/k3s/token'))
    expect(vault.message).toContain('no vault "homelab" that account "my.1password.com" can see')
  })

  it('chosen by the inventory: op_account opens the desktop-app store, -e op_account=none the token one', async () => {
    const { openStoreFor } = await import('../../lib/cli.ts')
    const { parseExtraVars } = await import('../../lib/extra-vars.ts')
    const { parseInventory } = await import('../../lib/inventory.ts')
    const inv = (vars: string) =>
      parseInventory(
        `all:\n  vars:\n    secrets_backend: onepassword\n${vars}  children:\n    server:\n      hosts:\n        s1: { address: 192.0.2.1 }\n`,
        '/tmp/inv.yaml',
      )
    const saved = process.env.OP_SERVICE_ACCOUNT_TOKEN
    delete process.env.OP_SERVICE_ACCOUNT_TOKEN
    try {
      // Nothing is asked of 1Password until a secret is needed: the store opens without a token.
      const desk = inv(`    op_account: ${ACCOUNT}\n`)
      expect((await openStoreFor(desk, {})).backend).toBe('onepassword')
      const token = await failure(openStoreFor(desk, parseExtraVars(['op_account=none'])))
      expect(token.message).toContain('OP_SERVICE_ACCOUNT_TOKEN is not set')
      expect((await failure(openStoreFor(inv(''), {}))).message).toContain('OP_SERVICE_ACCOUNT_TOKEN is not set')
    } finally {
      if (saved !== undefined) process.env.OP_SERVICE_ACCOUNT_TOKEN = saved
    }
    const bad = await failure(() => inv('    op_account: "-x"\n'))
    expect(bad.message).toMatch(/^op_account: expected a 1Password account as the desktop app shows it/)
  })

  it("the SDK's console line about a missing app is kept off the terminal; its reason becomes the error's", async () => {
    const printed: unknown[][] = []
    const original = console.error
    console.error = (...args: unknown[]) => void printed.push(args)
    try {
      const store = await openSecretStore({
        backend: 'onepassword',
        env: {},
        account: ACCOUNT,
        // As @1password/sdk 0.5 does without the app: logs while createClient starts, then fails.
        createClient: async () => {
          console.error(
            'A critical error occurred while loading the native addon:',
            new Error('1Password desktop application not found'),
          )
          console.error('some other line')
          throw new Error('Native library is not available.')
        },
      })
      const e = await failure(store.resolveAll(['op://pi-cluster/eso/token']))
      expect(e.message).toContain('1Password app was not found on this machine')
      expect(errorText(e)).not.toContain('native addon')
      expect((e.cause as Error).message).toContain('1Password desktop application not found')
      expect(printed).toEqual([['some other line']])
    } finally {
      console.error = original
    }
    expect(console.error).toBe(original)
  })
})
