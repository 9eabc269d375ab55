// A cluster as a fake server host answers it: the `kubectl get ... -o json` reads of roles/flux-bootstrap.ts
// (kubeFact, in a fact batch or alone) answered query by query. Used by the flux-bootstrap and apps unit tests.

import { createHash } from 'node:crypto'
import { KUBE_STDERR } from '../../lib/kube.ts'

export interface KubeAnswer {
  code?: number
  stdout?: string
  stderr?: string
}

export function list(items: readonly unknown[]): KubeAnswer {
  return { stdout: JSON.stringify({ apiVersion: 'v1', kind: 'List', items, metadata: { resourceVersion: '' } }) }
}

export function one(item: unknown): KubeAnswer {
  return { stdout: JSON.stringify(item) }
}

export const NONE: KubeAnswer = { stdout: '' }

export function ready(
  message = 'Applied revision: main@sha1:abc',
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { conditions: [{ type: 'Ready', status: 'True', reason: 'ReconciliationSucceeded', message }], ...extra }
}

export function notReady(message: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { conditions: [{ type: 'Ready', status: 'False', reason: 'ReconciliationFailed', message }], ...extra }
}

/** Answer one kubeFact script (in a gathered batch, or alone as kubeGet runs it): `answer` gets the query. */
export function answerKubeFact(
  script: string,
  answer: (query: string) => KubeAnswer,
): { stdout: string; code: number } | undefined {
  const q = /^k3s kubectl --kubeconfig \S+ get (.*?) -o json(?: -- (.*))? 2>"\$e"$/m.exec(script)
  if (!q) return undefined
  // The names after `--` as the query's last words, unquoted ('pi3-worker-2' -> pi3-worker-2).
  const a = answer(q[2] ? `${q[1]} ${q[2].replace(/'/g, '')}` : q[1])
  const code = a.code ?? 0
  return { code, stdout: `${a.stdout ?? ''}${code === 0 ? '' : `\n${KUBE_STDERR}\n${a.stderr ?? ''}`}` }
}

/** Items with their kind, as kubectl lists several types at once. */
export function kinded(kind: string, items: readonly Record<string, unknown>[]): Record<string, unknown>[] {
  return items.map((i) => ({ kind, ...i }))
}

/**
 * Answer a kubeFactNamed script (lib/kube.ts: `kubectl get -f -` of named objects, the Secret as a salted digest)
 * as the server would: the objects of `cluster` the list names, one JSON line each, and for the Secret the digest
 * the script's shell computes. `cluster` undefined: no k3s on the host (exit 127).
 */
export function answerNamedFact(
  script: string,
  cluster: readonly unknown[] | undefined,
  secretB64?: string,
): { stdout: string; code: number } | undefined {
  if (!script.includes(' get -f - --ignore-not-found -o jsonpath=')) return undefined
  if (!cluster) return { code: 127, stdout: '' }
  const list = /<<'EOF'\n(.*)\nEOF/.exec(script)
  const salt = /printf '%s' ([0-9a-f]+)"\$\{l#@@secret \}"/.exec(script)
  if (!list || !salt) throw new Error('not a kubeFactNamed script')
  const refs = (JSON.parse(list[1]) as { items: { kind: string; metadata: { name: string; namespace?: string } }[] })
    .items
  const lines: string[] = []
  for (const r of refs) {
    if (r.kind === 'Secret') {
      if (secretB64 !== undefined)
        lines.push(`@@digest ${createHash('sha256').update(`${salt[1]}${r.metadata.name}=${secretB64}`).digest('hex')}`)
      continue
    }
    const o = cluster.find((c) => {
      const { kind, metadata: md } = c as { kind?: string; metadata: { name: string; namespace?: string } }
      return kind === r.kind && md.name === r.metadata.name && (md.namespace ?? '') === (r.metadata.namespace ?? '')
    })
    if (o) lines.push(JSON.stringify(o))
  }
  return { code: 0, stdout: lines.map((l) => `${l}\n`).join('') }
}
