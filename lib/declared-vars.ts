// The variables a playbook's roles declare (Role.vars), checked together before any host is contacted: no built-in
// name or Ansible's name for one, one spec per name across roles, defaults their own spec takes.

import { ProvisionError } from './errors.ts'
import { checkSpecAll } from './var-check.ts'
import { VAR_SYNONYMS, type DeclaredVars, type VarSynonym } from './var-names.ts'
import { isVarName, VAR_SPECS, type VarSpec } from './vars.ts'

/**
 * A role's declared variable: its spec, and for roles the value it has when nothing sets it, or that it must be set.
 */
export interface DeclaredVarSpec extends VarSpec {
  /** The value when neither the inventory nor -e sets one; checked by the spec like any other value. */
  default?: unknown
  /**
   * No default: the inventory or -e must set it for every host the role runs on (checked before any host is
   * contacted).
   */
  required?: boolean
}

/** A variable name a role may declare: what `-e name=...` and a YAML key can both carry plainly. */
const DECLARED_NAME = /^[a-z][a-z0-9_]{0,63}$/

/**
 * The variables the roles of a playbook declare, checked: a name that is a built-in variable (or Ansible's name for
 * one), one that two roles declare with different specs (`doc` aside), a default its own spec refuses, a required
 * variable with a default. Every problem at once, as usage errors naming the roles (exit 1, before any host).
 */
export function declaredVars(
  roles: Iterable<{ readonly name: string; readonly vars?: Readonly<Record<string, DeclaredVarSpec>> }>,
): DeclaredVars {
  const out: Record<string, DeclaredVarSpec> = {}
  const owner = new Map<string, string>()
  const problems: ProvisionError[] = []
  const seen = new Set<unknown>()
  const bad = (message: string, hint?: string): void =>
    void problems.push(new ProvisionError('usage', message, { hint }))
  for (const role of roles) {
    if (!role.vars || seen.has(role)) continue
    seen.add(role)
    for (const [name, spec] of Object.entries(role.vars)) {
      const what = `role ${role.name} declares variable "${name}"`
      if (isVarName(name)) {
        const example = `${role.name.replace(/\W+/g, '_')}_${name}`
        bad(
          `${what}, which is a built-in variable (${VAR_SPECS[name].doc})`,
          `read the built-in one as ctx.vars.${name}, or give the role's own another name (e.g. ${example})`,
        )
        continue
      }
      if (Object.hasOwn(VAR_SYNONYMS, name)) {
        bad(
          `${what}, which is Ansible's name for the built-in variable ${VAR_SYNONYMS[name as VarSynonym]}`,
          'give it another name',
        )
        continue
      }
      if (!DECLARED_NAME.test(name)) {
        bad(`${what}: expected a name of lowercase letters, digits and "_", starting with a letter (at most 64)`)
        continue
      }
      if (spec.required && spec.default !== undefined)
        bad(`${what} as required and with a default: a variable with a default is never missing`, 'drop one of them')
      if (spec.default !== undefined) {
        const checked = checkSpecAll(spec, spec.default)
        for (const p of checked.problems) {
          const item = p.index !== undefined ? ` (item ${p.index + 1})` : ''
          bad(`${what} with a default its own spec refuses: ${p.message}${item}`)
        }
      }
      const first = owner.get(name)
      if (first !== undefined) {
        const diff = specDifference(out[name], spec)
        if (diff)
          bad(
            `roles ${first} and ${role.name} both declare variable "${name}", with different specs (${diff})`,
            'one variable has one spec: declare it once (export the spec and use it in both roles), ' +
              'or give one of them another name',
          )
        continue
      }
      owner.set(name, role.name)
      out[name] = spec
    }
  }
  if (problems.length > 0)
    throw ProvisionError.all(problems, `the playbook's role variables: ${problems.length} problems`, 'usage')
  return out
}

/** What differs between two specs of one name (doc aside), or undefined when they are the same. */
function specDifference(a: DeclaredVarSpec, b: DeclaredVarSpec): string | undefined {
  if (a === b) return undefined
  const fields = ['type', 'hostOnly', 'secret', 'required', 'grammar', 'keys', 'values'] as const
  for (const f of fields) if (a[f] !== b[f]) return f === 'type' ? `type ${a.type} and ${b.type}` : `their ${f} differs`
  if (JSON.stringify(a.choices) !== JSON.stringify(b.choices)) return 'their choices differ'
  if (JSON.stringify(a.default) !== JSON.stringify(b.default)) return 'their defaults differ'
  return undefined
}
