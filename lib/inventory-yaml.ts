// An inventory file's YAML read with positions: every problem is reported at its file:line:col and all of them
// at once (sorted by place); aliases and YAML 1.1 merge keys (`<<: *anchor`) are followed, each problem at the
// node it is about.

import { isAlias, isMap, isNode, isScalar, isSeq, LineCounter, parseDocument } from 'yaml'
import type { Document, Pair, YAMLMap } from 'yaml'
import { ProvisionError } from './errors.ts'

export type Place = { line: number; col: number }

/** A parsed inventory file and the means to report problems at its nodes. */
export interface InventoryYaml {
  doc: Document
  /** Every problem reported so far, in the order reported. */
  problems: ProvisionError[]
  at(node: unknown): Place
  reportAt(message: string, place: Place, hint?: string): void
  report(message: string, node?: unknown, hint?: string): void
  /** Throws every problem reported so far, sorted by place; nothing when there is none. */
  finish(): void
  resolved(node: unknown): unknown
  deref(node: unknown): unknown
  pairsOf(map: YAMLMap, depth?: number): Pair[]
  jsOf(node: unknown, where: string): { ok: true; value: unknown } | { ok: false }
}

/** Parse the text; a YAML syntax error is thrown here, alone (nothing else of the file can be trusted). */
export function readInventoryYaml(text: string, file: string): InventoryYaml {
  const lines = new LineCounter()
  // merge: YAML 1.1's `<<: *anchor` (Ansible inventories use it for hosts alike), expanded by pairsOf below.
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false, merge: true })
  const problems: ProvisionError[] = []
  const at = (node: unknown): Place => {
    const range = isNode(node) ? node.range : isPairLike(node) && isNode(node.key) ? node.key.range : undefined
    return range ? lines.linePos(range[0]) : { line: 1, col: 1 }
  }
  const reportAt = (message: string, place: Place, hint?: string): void => {
    problems.push(new ProvisionError('inventory', message, { place: { file, line: place.line, col: place.col }, hint }))
  }
  const report = (message: string, node?: unknown, hint?: string): void => reportAt(message, at(node), hint)
  const finish = (): void => {
    if (problems.length === 0) return
    const sorted = problems
      .map((p, i) => ({ p, i }))
      .sort(
        (a, b) =>
          (a.p.place.line ?? 0) - (b.p.place.line ?? 0) || (a.p.place.col ?? 0) - (b.p.place.col ?? 0) || a.i - b.i,
      )
      .map((x) => x.p)
    throw ProvisionError.all(sorted, `${file}: ${sorted.length} problems`, 'inventory')
  }

  // YAML syntax: nothing below can be trusted, so these are reported alone.
  if (doc.errors.length > 0) {
    for (const err of doc.errors) {
      const pos = err.linePos?.[0] ?? lines.linePos(err.pos[0])
      const msg =
        err.code === 'DUPLICATE_KEY'
          ? 'duplicate key (a host or group is defined twice in the same map)'
          : err.message.split('\n')[0]
      reportAt(msg, pos)
    }
    finish()
  }

  /** The node an alias stands for (positions then point at the anchor's node). */
  const resolved = (node: unknown): unknown => (isAlias(node) ? node.resolve(doc) : node)
  const deref = (node: unknown): unknown => {
    const target = resolved(node)
    if (isAlias(node) && target === undefined)
      report(`unresolved alias *${node.source}: no anchor &${node.source} before it`, node)
    return target
  }
  /**
   * A map's pairs with its merge keys expanded (`<<: *anchor` or `<<: [*a, *b]`): the map's own keys win, then
   * the merged maps' in order, as YAML 1.1 says. Merged pairs keep their own positions (the anchor's lines).
   */
  const pairsOf = (map: YAMLMap, depth = 0): Pair[] => {
    const own = map.items.filter((p) => !isMergeKey(p))
    const seen = new Set(own.map(keyOf))
    const merged: Pair[] = []
    for (const p of map.items.filter(isMergeKey)) {
      const target = deref(p.value)
      for (const source of isSeq(target) ? target.items : [p.value]) {
        const m = deref(source)
        if (!isMap(m) || depth > 16) {
          report('"<<" merges a map: an alias of one (<<: *name) or a list of them', p)
          continue
        }
        for (const q of pairsOf(m, depth + 1)) {
          const k = keyOf(q)
          if (seen.has(k)) continue
          seen.add(k)
          merged.push(q)
        }
      }
    }
    return [...own, ...merged]
  }
  /** A YAML value as plain data; aliases resolved (bounded), problems reported at the node. */
  const jsOf = (node: unknown, where: string): { ok: true; value: unknown } | { ok: false } => {
    if (!isNode(node)) return { ok: true, value: node ?? null }
    try {
      return { ok: true, value: node.toJS(doc, { maxAliasCount: 1000 }) }
    } catch (e) {
      report(`${where}: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`, node)
      return { ok: false }
    }
  }
  return { doc, problems, at, reportAt, report, finish, resolved, deref, pairsOf, jsOf }
}

/** A map key as text; undefined for a missing, null or non-scalar key. */
/** `<<` parsed as YAML 1.1's merge key (the yaml library gives it a symbol for a value). */
function isMergeKey(pair: Pair): boolean {
  return isScalar(pair.key) && typeof pair.key.value === 'symbol'
}

export function keyOf(pair: Pair): string | undefined {
  const k = pair.key
  if (isScalar(k)) return k.value === null || k.value === undefined ? undefined : String(k.value)
  if (k === null || k === undefined || isNode(k)) return undefined
  return String(k)
}

export function isNull(node: unknown): boolean {
  return node === null || node === undefined || (isScalar(node) && node.value === null)
}

function isPairLike(x: unknown): x is Pair {
  return typeof x === 'object' && x !== null && 'key' in x && 'value' in x
}
