// Placement: the inventory's workload -> node rules (Pi-hole on pi-k3s...) and the check that the named workloads'
// pods run on that node, or are pinned there (a CronJob between runs), with what is wrong otherwise.

import { ProvisionError } from './errors.ts'
import { conditionOf, field, nameOf, type KubeObject } from './kube.ts'
import { asRecord, feasibleNodes } from './scheduling.ts'

export interface PlacementRule {
  /** As written in the inventory: name, namespace/name or namespace/*. */
  key: string
  namespace?: string
  /** A workload name, or '*' for every workload of the namespace. */
  name: string
  node: string
}

export function parsePlacement(raw: unknown): PlacementRule[] {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    throw new ProvisionError('inventory', 'placement must be a map of workload -> node')
  return Object.entries(raw).map(([key, node]) => {
    if (typeof node !== 'string' || node === '')
      throw new ProvisionError(
        'inventory',
        `placement ${key}: the node must be a node name, got ${JSON.stringify(node)}`,
      )
    const parts = key.split('/')
    const ok =
      parts.length <= 2 &&
      parts.every((p) => /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$|^\*$/.test(p)) &&
      !(parts.length === 1 && parts[0] === '*')
    if (!ok)
      throw new ProvisionError(
        'inventory',
        `placement key ${JSON.stringify(key)}: expected name, namespace/name or namespace/*`,
      )
    return parts.length === 2 ? { key, namespace: parts[0], name: parts[1], node } : { key, name: parts[0], node }
  })
}

export const WORKLOAD_KINDS = ['Deployment', 'StatefulSet', 'DaemonSet', 'CronJob'] as const

function podTemplateSpec(w: KubeObject): Record<string, unknown> {
  const spec = asRecord(w.spec)
  if (w.kind === 'CronJob') return asRecord(asRecord(asRecord(asRecord(asRecord(spec.jobTemplate).spec).template).spec))
  return asRecord(asRecord(spec.template).spec)
}

function matchLabels(w: KubeObject): Record<string, string> {
  const spec = asRecord(w.spec)
  const m = asRecord(asRecord(spec.selector).matchLabels)
  const fromTemplate = asRecord(asRecord(asRecord(spec.template).metadata).labels)
  const chosen = Object.keys(m).length ? m : fromTemplate
  return Object.fromEntries(Object.entries(chosen).filter((e): e is [string, string] => typeof e[1] === 'string'))
}

function podsOf(w: KubeObject, pods: readonly KubeObject[]): KubeObject[] {
  const ns = w.metadata.namespace
  const inNs = pods.filter((p) => p.metadata.namespace === ns)
  if (w.kind === 'CronJob') {
    // Pods of the Jobs this CronJob started (Job names are <cronjob>-<schedule time>).
    const prefix = `${w.metadata.name}-`
    return inNs.filter((p) =>
      (p.metadata.labels?.['job-name'] ?? p.metadata.labels?.['batch.kubernetes.io/job-name'] ?? '').startsWith(prefix),
    )
  }
  const sel = matchLabels(w)
  if (Object.keys(sel).length === 0) return []
  return inNs.filter((p) => Object.entries(sel).every(([k, v]) => p.metadata.labels?.[k] === v))
}

export interface PlacementResult {
  key: string
  node: string
  ok: boolean
  detail: string
}

/**
 * Each rule against the cluster: the workloads it names have their pods on that node
 * (a CronJob between runs: it is pinned there).
 */
export function checkPlacement(
  rules: readonly PlacementRule[],
  cluster: { nodes: readonly KubeObject[]; pods: readonly KubeObject[]; workloads: readonly KubeObject[] },
): PlacementResult[] {
  return rules.map((rule): PlacementResult => {
    const found = cluster.workloads.filter(
      (w) =>
        (WORKLOAD_KINDS as readonly string[]).includes(w.kind ?? '') &&
        (!rule.namespace || w.metadata.namespace === rule.namespace) &&
        (rule.name === '*' || w.metadata.name === rule.name),
    )
    const base = { key: rule.key, node: rule.node }
    if (!cluster.nodes.some((n) => n.metadata.name === rule.node))
      return { ...base, ok: false, detail: `there is no node ${rule.node}` }
    if (found.length === 0)
      return {
        ...base,
        ok: false,
        detail:
          'no Deployment, StatefulSet, DaemonSet or CronJob ' +
          (rule.name === '*' ? `in namespace ${rule.namespace}` : rule.key),
      }
    const problems: string[] = []
    const fine: string[] = []
    for (const w of found) {
      const what = `${w.kind} ${nameOf(w)}`
      const feasible = feasibleNodes(podTemplateSpec(w), cluster.nodes)
      const pinned = feasible.length === 1 && feasible[0] === rule.node
      const pods = podsOf(w, cluster.pods)
      if (pods.length === 0) {
        if (w.kind !== 'CronJob') {
          problems.push(`${what} has no pods`)
          continue
        }
        if (pinned) fine.push(`${what} is pinned to ${rule.node} (no run yet)`)
        else if (feasible.includes(rule.node))
          problems.push(`${what} may run on ${feasible.join(', ')}: pin it to ${rule.node} with a nodeSelector`)
        else
          problems.push(
            `${what} cannot run on ${rule.node}: its nodeSelector/affinity allows ${feasible.join(', ') || 'no node'}`,
          )
        continue
      }
      const wrong: string[] = []
      for (const p of pods) {
        const node = field(p, 'spec', 'nodeName')
        if (!node) {
          const c = conditionOf(p, 'PodScheduled')
          wrong.push(`pod ${p.metadata.name} is not scheduled${c?.message ? `: ${c.message}` : ''}`)
        } else if (node !== rule.node) wrong.push(`pod ${p.metadata.name} runs on ${node}`)
      }
      if (wrong.length) problems.push(`${what}: ${wrong.join(', ')}`)
      else
        fine.push(
          `${what}: ${pods.length} pod${pods.length > 1 ? 's' : ''} on ${rule.node}` +
            (pinned ? '' : ' (not pinned: the scheduler may move it)'),
        )
    }
    return problems.length
      ? { ...base, ok: false, detail: problems.join('; ') }
      : { ...base, ok: true, detail: fine.join('; ') }
  })
}
