// A place's variables in an inventory (a group's vars, a host): each name known (a built-in variable, Ansible's name
// for one, or a variable the run's roles declare), set once, per host where it must be, and its value checked with
// its grammar at its line; controller paths taken relative to the inventory. App checks and placements are checked
// here too, so a bad entry is named at its line before any host is contacted.

import { isMap, isNode, isScalar, isSeq, type Pair } from 'yaml'
import { parseAppChecks } from './appchecks.ts'
import { expandPath, isControllerPath } from './controller-paths.ts'
import { ProvisionError } from './errors.ts'
import type { VarLayer } from './inventory.ts'
import { isNull, keyOf, type InventoryYaml, type Place } from './inventory-yaml.ts'
import { checkSpecAll, type VarProblem } from './var-check.ts'
import { knownVar, specOf, suggestVar, synonymNote, unknownVarHint, type DeclaredVars } from './var-names.ts'

export interface Layer {
  vars: VarLayer
  /** Variables that were set here but refused: later checks do not pile more errors on them. */
  failed: Set<string>
}

/** A placement entry: the node it names is checked once every host's node name is known. */
export interface Placement {
  workload: string
  node: string
  at: Place
}

/** What reading variables needs of the inventory: the declared variables, its folder, where placements go. */
export interface VarsReading {
  declared: DeclaredVars
  baseDir: string
  placements: Placement[]
}

/** The variables of one place (`where`: "host ..." or "vars of group ..."), problems reported in `y`. */
export function readVarLayer(y: InventoryYaml, r: VarsReading, raw: unknown, where: string, isHost: boolean): Layer {
  const { doc, at, report, resolved, deref, pairsOf, jsOf } = y
  const { declared, baseDir, placements } = r
  const layer: Layer = { vars: {}, failed: new Set() }
  const node = deref(raw)
  if (isNull(node)) return layer
  if (!isMap(node)) {
    report(`${where}: expected a map of variables`, node)
    return layer
  }
  const setBy = new Map<string, string>()
  for (const pair of pairsOf(node)) {
    const key = keyOf(pair)
    if (key === undefined) {
      report(`${where}: expected a variable name here`, pair)
      continue
    }
    const name = knownVar(key, declared)
    const spec = name === undefined ? undefined : specOf(name, declared)
    if (name === undefined || spec === undefined) {
      report(
        `unknown variable "${key}" in ${where}`,
        pair,
        unknownVarHint(key, declared) ?? `known variables: see README "Inventory variables"`,
      )
      // A misspelt name is most likely the variable it is close to: no "has no address" on top of "adress".
      const meant = knownVar(suggestVar(key, declared) ?? '', declared)
      if (meant) layer.failed.add(meant)
      continue
    }
    const label = key === name ? `"${key}"` : `"${key}" (${name})`
    const other = setBy.get(name)
    if (other !== undefined) {
      report(
        `"${key}" and "${other}" both set ${name} in ${where}`,
        pair,
        `keep one of them (${key === name ? other : key} is Ansible's name for ${name})`,
      )
      layer.failed.add(name)
      continue
    }
    setBy.set(name, key)
    if (spec.hostOnly && !isHost) {
      report(`${label} is per host; it cannot be set in ${where}`, pair)
      layer.failed.add(name)
      continue
    }
    const js = jsOf(pair.value, key)
    if (!js.ok) {
      layer.failed.add(name)
      continue
    }
    const checked = checkSpecAll(spec, js.value)
    if (checked.problems.length > 0) {
      layer.failed.add(name)
      const hint =
        synonymNote(key) ??
        (typeof js.value === 'string' && js.value.includes('{{')
          ? 'templates ("{{ ... }}") are not expanded here: write the value itself'
          : undefined)
      for (const p of checked.problems) report(`${key}: ${p.message}`, problemNode(resolved, pair, p), hint)
      continue
    }
    layer.vars[name] = isControllerPath(name, checked.value)
      ? expandPath(String(checked.value), baseDir)
      : checked.value
    const value = resolved(pair.value)
    // Each app check as the apps role will read it, so a bad entry is named at its line, before any host.
    if (name === 'app_checks' && isSeq(value))
      value.items.forEach((item, i) => {
        try {
          parseAppChecks([isNode(item) ? item.toJS(doc, { maxAliasCount: 1000 }) : item], {
            timeoutSec: 5,
            defaultServer: 'server',
          })
        } catch (e) {
          if (e instanceof ProvisionError)
            report(e.message.replace(/^app_checks\[0\]/, `app_checks[${i}]`), item, e.hint)
        }
      })
    // Where each placement names a node, to check once every host's node name is known.
    if (name === 'placement' && isMap(value))
      for (const entry of value.items) {
        const workload = keyOf(entry)
        const target = resolved(entry.value)
        if (workload !== undefined && isScalar(target) && typeof target.value === 'string')
          placements.push({ workload, node: target.value, at: at(target) })
      }
  }
  return layer
}

/** The node a variable's problem is in: the list item, the map key or value, else the value. */
function problemNode(resolved: (node: unknown) => unknown, pair: Pair, p: VarProblem): unknown {
  const value = resolved(pair.value) ?? pair
  if (p.index !== undefined && isSeq(value)) return value.items[p.index] ?? value
  if (p.key !== undefined && isMap(value)) {
    const entry = value.items.find((e) => keyOf(e) === p.key)
    if (entry) return p.inKey ? entry : (entry.value ?? entry)
  }
  return value
}
