// A cluster as a fake server host answers it: the batched `kubectl get ... -o json` scripts of
// roles/flux-bootstrap.ts (kubeGetMany) answered query by query. Used by the flux-bootstrap and apps unit tests.

import type { RunResult } from '../../lib/connection.ts'
import { KUBE_STDERR } from '../../roles/flux-bootstrap.ts'

export interface KubeAnswer {
  code?: number
  stdout?: string
  stderr?: string
}

/** Answer a kubeGetMany script: `answer` gets each query (the words between `get` and `-o json`). */
export function answerKubeBatch(script: string, answer: (query: string) => KubeAnswer): Partial<RunResult> | undefined {
  const m = /printf '%s\\n' '(__KUBE_[0-9a-f]+__) 0'/.exec(script)
  if (!m) return undefined
  const marker = m[1]
  let out = ''
  // The reads are started in the background (`( ... get QUERY -o json >"$d/N.out" ...) &`), printed in order after `wait`.
  for (const line of script.split('\n')) {
    const q = /^\( .* get (.*) -o json >"\$d\/(\d+)\.out"/.exec(line)
    if (!q) continue
    const a = answer(q[1])
    out += `${marker} ${q[2]}\n${a.stdout ?? ''}\n${marker}rc ${a.code ?? 0}\n`
    for (const l of (a.stderr ?? '').split('\n').filter(Boolean)) out += `${marker}err ${l}\n`
  }
  return { code: 0, stdout: out }
}

export function list(items: readonly unknown[]): KubeAnswer {
  return { stdout: JSON.stringify({ apiVersion: 'v1', kind: 'List', items, metadata: { resourceVersion: '' } }) }
}

export function one(item: unknown): KubeAnswer {
  return { stdout: JSON.stringify(item) }
}

export const NONE: KubeAnswer = { stdout: '' }

export function ready(message = 'Applied revision: main@sha1:abc', extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { conditions: [{ type: 'Ready', status: 'True', reason: 'ReconciliationSucceeded', message }], ...extra }
}

export function notReady(message: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { conditions: [{ type: 'Ready', status: 'False', reason: 'ReconciliationFailed', message }], ...extra }
}

/** Answer one kubeFact script (a fact in a gathered batch): `answer` gets the query, as answerKubeBatch's does. */
export function answerKubeFact(script: string, answer: (query: string) => KubeAnswer): { stdout: string; code: number } | undefined {
  const q = /^k3s kubectl --kubeconfig \S+ get (.*) -o json 2>"\$e"$/m.exec(script)
  if (!q) return undefined
  const a = answer(q[1])
  const code = a.code ?? 0
  return { code, stdout: `${a.stdout ?? ''}${code === 0 ? '' : `\n${KUBE_STDERR}\n${a.stderr ?? ''}`}` }
}

/** Items with their kind, as kubectl lists several types at once. */
export function kinded(kind: string, items: readonly Record<string, unknown>[]): Record<string, unknown>[] {
  return items.map((i) => ({ kind, ...i }))
}
