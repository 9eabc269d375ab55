// A variable's value checked against its spec and grammar (lib/grammar.ts): converted as the roles get it (`-e`
// strings too), and every problem named (each bad item of a list, each bad key and value of a map); a secret's value
// never shown.

import * as g from './grammar.ts'
import type { Grammar } from './grammar.ts'
import { VAR_SPECS, type VarName, type VarSpec } from './vars.ts'

/** One thing wrong with a value; for a list or map, which item or entry. */
export interface VarProblem {
  /** "expected ..., got ..." for a whole value; `what "item": expected ...` for an item or entry. */
  message: string
  /** The list item the problem is in. */
  index?: number
  /** The map entry the problem is in. */
  key?: string
  /** The problem is the map key itself, not its value. */
  inKey?: boolean
}

/**
 * Check one value against its spec and grammar: the value as the roles get it (`-e` strings converted), and every
 * problem (every bad item of a list, every bad key and value of a map).
 */
export function checkVarAll(name: VarName, value: unknown): { value?: unknown; problems: VarProblem[] } {
  return checkSpecAll(VAR_SPECS[name], value)
}

/** checkVarAll for any spec: a built-in one or one a role declares. */
export function checkSpecAll(spec: VarSpec, value: unknown): { value?: unknown; problems: VarProblem[] } {
  const bad = (message: string) => ({ problems: [{ message }] })
  const got = (x: unknown): string => (spec.secret ? secretShown(x) : g.shown(x))
  const whole = (x: unknown, grammar: Grammar<unknown> | undefined) => {
    if (!grammar) return { value: x, problems: [] }
    const r = g.verdict(grammar, x)
    return r.ok ? { value: r.value, problems: [] } : bad(`${r.expected}, got ${got(value)}`)
  }
  switch (spec.type) {
    case 'int': {
      const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0)
        return bad(`expected a whole number, got ${g.shown(value)}`)
      return whole(n, spec.grammar)
    }
    case 'bool': {
      if (value === 'true' || value === 'false') return { value: value === 'true', problems: [] }
      if (typeof value !== 'boolean') return bad(`expected true or false, got ${g.shown(value)}`)
      return { value, problems: [] }
    }
    case 'list': {
      const items: unknown[] | undefined =
        typeof value === 'string'
          ? value
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean)
          : Array.isArray(value)
            ? value
            : undefined
      if (!items) return bad(`expected a list, got ${g.shown(value)}`)
      const grammar = spec.grammar
      if (!grammar) return { value: items, problems: [] }
      const out: unknown[] = []
      const problems: VarProblem[] = []
      for (const [index, item] of items.entries()) {
        const x = typeof item === 'number' ? String(item) : item
        if (typeof x !== 'string') {
          problems.push({ index, message: `${grammar.what}: expected a string, got ${g.shown(item)}` })
          continue
        }
        const r = g.verdict(grammar, x)
        if (r.ok) out.push(r.value)
        else problems.push({ index, message: `${grammar.what} ${JSON.stringify(x)}: ${r.expected}` })
      }
      return problems.length ? { problems } : { value: out, problems }
    }
    case 'map': {
      if (value === null || typeof value !== 'object' || Array.isArray(value))
        return bad(`expected a map, got ${g.shown(value)}`)
      const entries: [string, unknown][] = []
      const problems: VarProblem[] = []
      for (const [key, raw] of Object.entries(value)) {
        const keyBad = spec.keys && g.complaint(spec.keys, key)
        if (keyBad) problems.push({ key, inKey: true, message: keyBad })
        const x = typeof raw === 'number' ? String(raw) : raw
        const valueBad = spec.values && g.complaint(spec.values, x)
        if (valueBad) problems.push({ key, message: `${JSON.stringify(key)} -> ${valueBad}` })
        entries.push([key, x])
      }
      return problems.length ? { problems } : { value: Object.fromEntries(entries), problems }
    }
    case 'secret-ref':
    case 'address':
    case 'url': {
      const s = typeof value === 'number' ? String(value) : value
      return whole(s, spec.grammar)
    }
    default: {
      const s = typeof value === 'number' ? String(value) : value
      if (typeof s !== 'string' || s === '') return bad(`expected a non-empty string, got ${got(value)}`)
      if (spec.choices && !spec.choices.includes(s))
        return bad(`expected one of ${spec.choices.join(', ')}, got ${got(value)}`)
      return whole(s, spec.grammar)
    }
  }
}

/**
 * Check one value against its spec; returns an error text ("expected ...", the first problem) or the value. Converts
 * `-e` strings.
 */
export function checkVar(name: VarName, value: unknown): { value?: unknown; error?: string } {
  const r = checkVarAll(name, value)
  return r.problems.length ? { error: r.problems[0].message } : { value: r.value }
}

/**
 * A value that should have been a secret reference: shown only when it looks like one (op:...), never a pasted secret.
 */
export function secretShown(x: unknown): string {
  if (typeof x === 'string' && !x.startsWith('op:'))
    return 'a value that is not one (not shown: it may be the secret itself)'
  return g.shown(x)
}
