// A cluster as a fake server host answers it: the `kubectl get ... -o json` reads of roles/flux-bootstrap.ts
// (kubeFact, in a fact batch or alone) answered query by query. Used by the flux-bootstrap and apps unit tests.

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
