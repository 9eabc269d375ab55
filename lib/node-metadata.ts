// A Node's labels and taints, live: what the inventory asks for against what the Node has, planned as one kubectl
// label/taint/annotate script that adds and changes, and removes only what this tool set before (recorded in
// annotations on the Node); labels and taints set by hand stay.

import { ProvisionError } from './errors.ts'
import { kubectl } from './kube.ts'

/** The label and taint keys this tool set on a Node, so it removes only its own (one by hand stays). */
export const MANAGED_LABELS = 'pi-provision/managed-labels'
export const MANAGED_TAINTS = 'pi-provision/managed-taints'

export interface Taint {
  key: string
  value?: string
  effect: string
}

export interface NodeMetadata {
  labels: Record<string, string>
  annotations: Record<string, string>
  taints: Taint[]
}

/** "key=value:Effect" or "key:Effect" (the inventory's grammar, checked at load) as a taint. */
export function parseTaint(t: string): Taint {
  const m = /^([^=:]+)(?:=([^:]*))?:(\w+)$/.exec(t)
  if (!m) throw new ProvisionError('step', `taint "${t}": expected key=value:Effect`)
  return { key: m[1], value: m[2] || undefined, effect: m[3] }
}

const taintId = (t: Taint) => `${t.key}:${t.effect}`
export const sameTaint = (a: Taint, b: Taint): boolean =>
  a.key === b.key && a.effect === b.effect && (a.value ?? '') === (b.value ?? '')

function managedKeys(annotations: Record<string, string>, name: string): string[] | undefined {
  const raw = annotations[name]
  if (raw === undefined) return undefined
  try {
    const v: unknown = JSON.parse(raw)
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []
  } catch {
    return []
  }
}

/**
 * What it takes to give a live Node the inventory's labels ("k=v") and taints ("k=v:Effect"): kubectl label, taint
 * and annotate lines for the server, or null when it has them. Labels and taints the tool set before (recorded in
 * the Node's annotations) and the inventory no longer names are removed; any other label or taint (set by hand, by
 * k3s, by a controller) is left alone. k3s applies config.yaml's node-label / node-taint only when a node registers,
 * so this is how a change reaches a node that is already in the cluster.
 */
export function planNodeMetadata(
  node: NodeMetadata,
  name: string,
  labels: readonly string[],
  taints: readonly string[],
): { summary: string; script: string } | null {
  const wantLabels = new Map(labels.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
  const wantTaints = taints.map(parseTaint)
  const hadLabels = managedKeys(node.annotations, MANAGED_LABELS) ?? []
  const hadTaints = managedKeys(node.annotations, MANAGED_TAINTS) ?? []
  const setLabels = [...wantLabels].filter(([k, v]) => node.labels[k] !== v).map(([k, v]) => `${k}=${v}`)
  const dropLabels = hadLabels.filter((k) => !wantLabels.has(k) && k in node.labels)
  const addTaints = wantTaints.filter((t) => !node.taints.some((x) => sameTaint(x, t)))
  const dropTaints = hadTaints.filter(
    (id) => !wantTaints.some((t) => taintId(t) === id) && node.taints.some((x) => taintId(x) === id),
  )
  const managed = {
    [MANAGED_LABELS]: JSON.stringify([...wantLabels.keys()].sort()),
    [MANAGED_TAINTS]: JSON.stringify(wantTaints.map(taintId).sort()),
  }
  const annotate = Object.entries(managed).filter(([k, v]) => node.annotations[k] !== v)
  if (!setLabels.length && !dropLabels.length && !addTaints.length && !dropTaints.length && !annotate.length)
    return null
  const lines: string[] = []
  const what: string[] = []
  if (setLabels.length || dropLabels.length) {
    lines.push(kubectl('label --overwrite node', name, ...setLabels, ...dropLabels.map((k) => `${k}-`)))
    what.push(...setLabels.map((l) => `label ${l}`), ...dropLabels.map((k) => `remove label ${k}`))
  }
  // One taint per line: kubectl taint refuses to add and remove the same key in one call.
  for (const id of dropTaints) lines.push(kubectl('taint node', name, `${id}-`))
  for (const t of addTaints)
    lines.push(kubectl('taint --overwrite node', name, `${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`))
  what.push(
    ...dropTaints.map((id) => `remove taint ${id}`),
    ...addTaints.map((t) => `taint ${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`),
  )
  if (annotate.length) lines.push(kubectl('annotate --overwrite node', name, ...annotate.map(([k, v]) => `${k}=${v}`)))
  return {
    summary: what.length ? what.join(', ') : 'record which labels and taints the inventory sets',
    script: lines.map((l) => `${l} >/dev/null`).join(' && \\\n'),
  }
}
