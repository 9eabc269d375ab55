// Reading Flux's state the way `flux get kustomizations -A; flux get helmreleases -A` shows it: the revision a
// reconcile fetched or applied, and whether every Kustomization and HelmRelease is Ready and caught up.

import { conditionOf, field, nameOf, type KubeObject } from './kube.ts'

/** The annotation that asks Flux to reconcile now (as `flux reconcile` sets it). */
export const REQUESTED_AT = 'reconcile.fluxcd.io/requestedAt'

/** "✔ fetched revision main@sha1:abc" / "✔ applied revision main@sha1:abc" -> the revision. */
export function parseRevision(output: string): string | undefined {
  const m = /(?:fetched|applied) revision (\S+)/.exec(output)
  return m ? m[1] : undefined
}

export interface FluxItem {
  kind: 'Kustomization' | 'HelmRelease'
  name: string
  ready: boolean
  suspended: boolean
  /** The Ready condition's message, or why it does not count yet. */
  message: string
}

export interface Readiness {
  items: FluxItem[]
  ready: number
  total: number
  notReady: FluxItem[]
}

/**
 * Ready means: the Ready condition is True, and the object has caught up with what was asked of it: a
 * Kustomization of GitRepository flux-system has applied `revision` (when known), a reconcile request
 * (`requestedAt`) has been handled, and a HelmRelease has observed its latest generation.
 */
export function readiness(
  kustomizations: readonly KubeObject[],
  helmReleases: readonly KubeObject[],
  opts: { revision?: string; requestedAt?: string } = {},
): Readiness {
  const items: FluxItem[] = []
  const judge = (o: KubeObject, kind: FluxItem['kind']): FluxItem => {
    const c = conditionOf(o)
    const suspended = o.spec?.suspend === true
    const base = { kind, name: nameOf(o), suspended }
    if (c?.status !== 'True')
      return { ...base, ready: false, message: c?.message ?? (c ? `Ready=${c.status}` : 'not reconciled yet') }
    if (suspended) return { ...base, ready: true, message: 'suspended (last state Ready)' }
    if (kind === 'Kustomization') {
      const src = field(o, 'spec', 'sourceRef', 'name')
      const srcKind = field(o, 'spec', 'sourceRef', 'kind') ?? 'GitRepository'
      const applied = field(o, 'status', 'lastAppliedRevision')
      if (opts.revision && srcKind === 'GitRepository' && src === 'flux-system' && applied !== opts.revision)
        return { ...base, ready: false, message: `still at ${applied ?? 'no revision'}, not ${opts.revision}` }
      const asked = o.metadata.annotations?.[REQUESTED_AT]
      if (
        opts.requestedAt &&
        asked === opts.requestedAt &&
        field(o, 'status', 'lastHandledReconcileAt') !== opts.requestedAt
      )
        return { ...base, ready: false, message: 'reconcile requested, not handled yet' }
    } else {
      const gen = o.metadata.generation
      const seen = o.status?.observedGeneration
      if (typeof gen === 'number' && typeof seen === 'number' && seen < gen)
        return { ...base, ready: false, message: `generation ${gen} not observed yet (at ${seen})` }
    }
    return { ...base, ready: true, message: c.message ?? '' }
  }
  for (const o of kustomizations) items.push(judge(o, 'Kustomization'))
  for (const o of helmReleases) items.push(judge(o, 'HelmRelease'))
  const notReady = items.filter((i) => !i.ready)
  return { items, ready: items.length - notReady.length, total: items.length, notReady }
}

export function describeNotReady(items: readonly FluxItem[], max = items.length): string {
  const shown = items.slice(0, max).map((i) => `${i.kind} ${i.name}: ${i.message}`)
  return shown.join('; ') + (items.length > max ? `; and ${items.length - max} more` : '')
}
