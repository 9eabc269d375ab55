// The file backend of the secrets store: vault: { item: { field: value } } in a YAML file of mode 0600, for labs
// and offline runs. Read with positions for its errors (never quoting a value), written back with comments kept.

import { mkdir, readFile, realpath, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { Document, LineCounter, isMap, isScalar, parseDocument } from 'yaml'
import type { Node as YamlNode, YAMLMap } from 'yaml'
import { writeFileAtomic } from './fsutil.ts'
import { errnoCode, ProvisionError } from './errors.ts'
import type { ErrorPlace } from './errors.ts'
import { errorMessage } from './secret-backend.ts'
import type { Backend, Resolution } from './secret-backend.ts'
import { formatSecretRef } from './secret-ref.ts'
import type { SecretRef } from './secret-ref.ts'

type FileData = Map<string, Map<string, Map<string, string>>>

export class FileBackend implements Backend {
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
