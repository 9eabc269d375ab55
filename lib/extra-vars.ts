// `-e key=value`: the run's extra variables, checked like inventory variables (Ansible's names too), every bad flag
// at once; each value remembers the flag as written, so later messages about it name the flag.

import { expandPath, isControllerPath } from './controller-paths.ts'
import { ProvisionError } from './errors.ts'
import type { VarLayer, VarsOptions } from './inventory.ts'
import { checkSpecAll } from './var-check.ts'
import { isSecretName, knownVar, specOf, synonymNote, unknownVarHint, type DeclaredVars } from './var-names.ts'
import type { VarName } from './vars.ts'

/** The -e flags as written, for the layers parseExtraVars made (messages name the flag). */
const extraFlags = new WeakMap<VarLayer, Map<string, string>>()

/** `-e key=value` as the user wrote it; a value that may be a secret is not shown. */
function flagText(key: string, raw: string, declared: DeclaredVars = {}): string {
  if (isSecretName(key, declared) && !raw.startsWith('op:')) return `-e ${key}=********`
  const shown = raw.length > 200 ? `${raw.slice(0, 200)}…` : raw
  return `-e ${key}=${/[\x00-\x1f\x7f]/.test(shown) ? JSON.stringify(shown) : shown}`
}

/** The -e flag that set `name` in this layer, as written (secrets hidden). */
export function flagOf(extra: VarLayer, name: VarName): string {
  const written = extraFlags.get(extra)?.get(name)
  if (written) return written
  const value = extra[name]
  return flagText(
    name,
    typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean'
      ? String(value)
      : (JSON.stringify(value) ?? ''),
  )
}

/**
 * Parse `-e key=value` pairs, validated like inventory variables (Ansible's names accepted too). Every bad flag is
 * reported at once, each naming the flag. The variables the run's roles declare are taken too (`opts.declared`).
 */
export function parseExtraVars(pairs: readonly string[], opts: VarsOptions = {}): VarLayer {
  const declared = opts.declared ?? {}
  const out: VarLayer = {}
  const flags = new Map<string, string>()
  const setBy = new Map<string, string>()
  const problems: ProvisionError[] = []
  const usage = (flag: string, message: string, hint?: string): void => {
    problems.push(new ProvisionError('usage', `${flag}: ${message}`, { hint }))
  }
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    if (eq <= 0) {
      usage(`-e ${pair}`, 'expected key=value')
      continue
    }
    const key = pair.slice(0, eq)
    const raw = pair.slice(eq + 1)
    const flag = flagText(key, raw, declared)
    const name = knownVar(key, declared)
    const spec = name === undefined ? undefined : specOf(name, declared)
    if (name === undefined || spec === undefined) {
      usage(flag, 'unknown variable', unknownVarHint(key, declared))
      continue
    }
    const other = setBy.get(name)
    if (other !== undefined && other !== key) {
      usage(flag, `${key} and ${other} both set ${name}`, 'give one of them')
      continue
    }
    setBy.set(name, key)
    let value: unknown = raw
    if (raw.startsWith('[') || raw.startsWith('{')) {
      try {
        value = JSON.parse(raw)
      } catch {
        usage(flag, 'value starts like JSON but does not parse')
        continue
      }
    }
    const checked = checkSpecAll(spec, value)
    if (checked.problems.length > 0) {
      for (const p of checked.problems) usage(flag, p.message, synonymNote(key))
      continue
    }
    out[name] = isControllerPath(name, checked.value) ? expandPath(String(checked.value), process.cwd()) : checked.value
    flags.set(name, flag)
  }
  if (problems.length > 0) throw ProvisionError.all(problems, `-e: ${problems.length} problems`, 'usage')
  extraFlags.set(out, flags)
  return out
}
