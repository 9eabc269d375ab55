// Where a pod may run and what a drain moves: the scheduler's node filters the tool needs (nodeSelector, required
// node affinity, NoSchedule/NoExecute taints and tolerations), the pods a drain evicts, and kubectl drain itself.
// Used by the apps role (placement), retire and update (pods that fit no other node are named before a drain).

import type { RunResult } from './connection.ts'
import { ProvisionError } from './errors.ts'
import { isReady, kubectl, nameOf, type KubeObject } from './kube.ts'
import type { Taint } from './node-metadata.ts'
import { bounded } from './shell.ts'

/**
 * On a Node a playbook drained (os-update, k3s-upgrade), naming which: that playbook may uncordon it. A node the
 * owner cordoned by hand has no mark and stays cordoned; a run cut off after its drain is finished by the next.
 */
export const DRAINED_MARK = 'pi-provision/drained-for'

interface Toleration {
  key?: string
  operator?: string
  value?: string
  effect?: string
}
interface SelectorRequirement {
  key: string
  operator: string
  values?: string[]
}

export function asArray<T>(v: unknown): T[] {
  return Array.isArray(v) ? (v as T[]) : []
}

export function asRecord(v: unknown): Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {}
}

function requirementHolds(labels: Record<string, string>, r: SelectorRequirement): boolean {
  const has = Object.hasOwn(labels, r.key)
  const v = labels[r.key]
  const values = r.values ?? []
  switch (r.operator) {
    case 'In':
      return has && values.includes(v)
    case 'NotIn':
      return !has || !values.includes(v)
    case 'Exists':
      return has
    case 'DoesNotExist':
      return !has
    case 'Gt':
      return has && Number(v) > Number(values[0])
    case 'Lt':
      return has && Number(v) < Number(values[0])
    default:
      return false
  }
}

function tolerates(tolerations: readonly Toleration[], t: Taint): boolean {
  return tolerations.some((tol) => {
    if (tol.effect && tol.effect !== t.effect) return false
    if (tol.operator === 'Exists') return !tol.key || tol.key === t.key
    return tol.key === t.key && (tol.value ?? '') === (t.value ?? '')
  })
}

/**
 * The nodes a pod with this spec may be scheduled on: nodeSelector, required node affinity, NoSchedule/NoExecute
 * taints.
 */
export function feasibleNodes(podSpec: Record<string, unknown>, nodes: readonly KubeObject[]): string[] {
  const selector = asRecord(podSpec.nodeSelector)
  const terms = asArray<{ matchExpressions?: SelectorRequirement[] }>(
    asRecord(asRecord(asRecord(podSpec.affinity).nodeAffinity).requiredDuringSchedulingIgnoredDuringExecution)
      .nodeSelectorTerms,
  )
  const tolerations = asArray<Toleration>(podSpec.tolerations)
  return nodes
    .filter((n) => {
      const labels = n.metadata.labels ?? {}
      if (n.spec?.unschedulable === true) return false
      if (!Object.entries(selector).every(([k, v]) => labels[k] === v)) return false
      if (
        terms.length &&
        !terms.some((t) => asArray<SelectorRequirement>(t.matchExpressions).every((r) => requirementHolds(labels, r)))
      )
        return false
      return asArray<Taint>(n.spec?.taints).every(
        (t) => (t.effect !== 'NoSchedule' && t.effect !== 'NoExecute') || tolerates(tolerations, t),
      )
    })
    .map((n) => n.metadata.name)
}

interface Pod extends KubeObject {
  spec?: { nodeName?: string }
  status?: { phase?: string }
}

/** A pod a drain of `node` evicts: on it, not a DaemonSet pod (they stay), not a static pod, not finished. */
function evicted(o: KubeObject, node: string): o is Pod {
  const p = o as Pod
  return (
    p.spec?.nodeName === node &&
    !(p.metadata.ownerReferences ?? []).some((r) => r.kind === 'DaemonSet') &&
    !p.metadata.annotations?.['kubernetes.io/config.mirror'] &&
    p.status?.phase !== 'Succeeded' &&
    p.status?.phase !== 'Failed'
  )
}

/** The pods a drain evicts from a node, by namespace/name. */
export function podsToEvict(pods: readonly KubeObject[], node: string): string[] {
  return pods
    .filter((p) => evicted(p, node))
    .map(nameOf)
    .sort()
}

/**
 * The pods a drain of `node` evicts that no other Ready, schedulable node can take (their nodeSelector, required
 * affinity or the taints elsewhere tie them to it): they wait Pending until it is back (or for good, when retired).
 */
export function podsWithNowhereElse(objects: readonly KubeObject[], node: string): string[] {
  const others = objects.filter((o) => o.kind === 'Node' && o.metadata.name !== node && isReady(o))
  return objects
    .filter((o) => o.kind === 'Pod' && evicted(o, node))
    .filter((p) => feasibleNodes((p.spec ?? {}) as Record<string, unknown>, others).length === 0)
    .map(nameOf)
    .sort()
}

/**
 * kubectl drain NODE on the server (`run` runs a script there as root), bounded by k3s_drain_timeout. On failure
 * the error shows kubectl's last lines; `left` says what state that leaves behind and how to go on.
 */
export async function drainNode(
  run: (script: string) => Promise<RunResult>,
  node: string,
  seconds: number,
  left: string,
): Promise<void> {
  const cmd = kubectl(`drain --ignore-daemonsets --delete-emptydir-data --timeout=${seconds}s`, node)
  // kubectl's own timeout ends the drain; the outer bound only catches a kubectl that hangs past it.
  const r = await run(bounded(cmd, seconds + 30, `kubectl drain ${node}`, 'k3s_drain_timeout'))
  if (r.code === 0) return
  const said = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-4).join('\n    ')
  throw new ProvisionError('step', `kubectl drain ${node} failed (exit ${r.code}); ${left}:\n    ${said}`, {
    hint:
      'a PodDisruptionBudget that allows no eviction, or a pod without a controller ' +
      '(kubectl drain --force would delete it for good), keeps a drain from finishing; ' +
      'deal with that pod, then run again (k3s_drain_timeout gives a slow eviction more time)',
  })
}

export interface MarkedDrain {
  /** Which playbook drains (the mark's value: update, k3s-upgrade). */
  by: string
  /** Cordoned by the owner before: drained, never marked, so it stays cordoned afterwards. */
  byHand: boolean
  /** Already marked by an earlier run that did not finish. */
  marked: boolean
  /** What the plan said: "evict N pods" or "cordon it". */
  what: string
  seconds: number
  /** What a failed drain leaves, for its message. */
  ifStopped: string
  /** Runs the drain (e.g. to add where the run stopped to its error); the drain itself by default. */
  around?: (drain: () => Promise<void>) => Promise<void>
}

/**
 * Mark the Node first (a run cut off mid-drain leaves a Node the next run knows it may uncordon), then drain it;
 * returns what to report. Shared by os-update and k3s-upgrade.
 */
export async function markAndDrain(
  server: {
    sh(script: string): Promise<RunResult>
    must(script: string, opts?: { what?: string }): Promise<RunResult>
  },
  name: string,
  d: MarkedDrain,
): Promise<string> {
  if (!d.byHand && !d.marked)
    await server.must(kubectl('annotate --overwrite node', name, `${DRAINED_MARK}=${d.by}`), {
      what: `mark the Node ${name}`,
    })
  const drain = () => drainNode((script) => server.sh(script), name, d.seconds, d.ifStopped)
  await (d.around ? d.around(drain) : drain())
  const done = d.what.replace(/^evict/, 'evicted').replace(/^cordon it/, 'cordoned')
  return `drained ${name} (${done})${d.byHand ? '; cordoned by hand, it stays cordoned' : ''}`
}

/** Uncordon a Node this tool drained and take its mark off, in one command; returns what to report. */
export async function uncordonMarked(
  server: { must(script: string, opts?: { what?: string }): Promise<RunResult> },
  name: string,
): Promise<string> {
  await server.must(`${kubectl('uncordon', name)} && ${kubectl('annotate node', name, `${DRAINED_MARK}-`)}`, {
    what: `uncordon ${name}`,
  })
  return `uncordoned ${name}`
}
