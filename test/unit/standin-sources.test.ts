// The stand-ins' sources (test/standins/) hold no kubectl imitation: `k3s kubectl` execs the real client, and the
// flux stand-in talks to the Kubernetes API over TLS. This fails if an imitation's entry points come back.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'

const STANDINS = resolve(import.meta.dirname, '../standins')

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name)
    if (statSync(p).isDirectory()) return name === '__pycache__' ? [] : sources(p)
    const text = readFileSync(p, 'utf8')
    return name.endsWith('.py') || text.startsWith('#!/usr/bin/env python3') ? [p] : []
  })
}

/** What the kubectl imitation was made of: its parser, its verbs, its client class, its RPC, its switch-off path. */
const IMITATION = [
  /\bdef parse_kubectl\b/,
  /\bdef k_(get|apply|create|delete|label|taint|cordon|drain|wait)\b/,
  /\bclass Kube\b/,
  /\bclass KubectlExit\b/,
  /\/standin\/v1\//,
  /\bdef (op_get|op_apply|op_delete)\b/,
  /Kustomize Version/,
  /PI_LAB_REAL_KUBECTL/,
]

describe('the stand-ins have no kubectl imitation', () => {
  const files = sources(STANDINS)

  it('finds the k3s and flux stand-ins', () => {
    const names = files.map((f) => relative(STANDINS, f))
    expect(names).toContain('k3s/k3s-standin.py')
    expect(names).toContain('flux/flux')
  })

  it.each(IMITATION.map((re) => [String(re), re] as const))('no %s', (_, re) => {
    const hits = files.filter((f) => re.test(readFileSync(f, 'utf8'))).map((f) => relative(STANDINS, f))
    expect(hits).toEqual([])
  })
})
