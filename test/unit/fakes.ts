// Test doubles for the runner: a connection that records every script and answers from rules,
// an in-memory secrets store, and a free loopback port. Used only by unit tests.

import { createServer, type AddressInfo } from 'node:net'
import type { Connection, RunOptions, RunResult } from '../../lib/connection.ts'
import { ProvisionError } from '../../lib/errors.ts'
import { registerSecret } from '../../lib/mask.ts'
import type { SecretStore } from '../../lib/secrets.ts'

export type Responder = (script: string, opts: RunOptions) => Partial<RunResult> | undefined

export class FakeConnection implements Connection {
  readonly host: string
  readonly scripts: { script: string; stdin?: string }[] = []
  private readonly responder: Responder
  unreachable = false
  constructor(host: string, responder: Responder = () => undefined) {
    this.host = host
    this.responder = responder
  }
  async run(script: string, opts: RunOptions = {}): Promise<RunResult> {
    if (this.unreachable)
      throw new ProvisionError('unreachable', `cannot connect to ${this.host}: no route to host`, {
        place: { host: this.host },
      })
    this.scripts.push({ script, stdin: opts.stdin })
    const r = this.responder(script, opts) ?? {}
    return { code: r.code ?? 0, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
  }
  async reset(): Promise<void> {}
  async close(): Promise<void> {}
}

export class MemorySecrets implements SecretStore {
  readonly backend = 'file' as const
  readonly values = new Map<string, string>()
  readonly upserts: string[] = []
  constructor(values: Record<string, string> = {}) {
    for (const [k, v] of Object.entries(values)) this.values.set(k, v)
  }
  async resolveAll(refs: string[]): Promise<void> {
    const missing = refs.filter((r) => !this.values.has(r))
    if (missing.length) throw new ProvisionError('secrets', `cannot resolve ${missing.join(', ')}: no such item`)
    for (const r of refs) registerSecret(this.values.get(r)!)
  }
  get(ref: string): string {
    const v = this.values.get(ref)
    if (v === undefined) throw new ProvisionError('secrets', `${ref} was not resolved`)
    return v
  }
  async lookup(ref: string): Promise<string | undefined> {
    const v = this.values.get(ref)
    if (v !== undefined) registerSecret(v)
    return v
  }
  async upsert(ref: string, value: string): Promise<void> {
    registerSecret(value)
    this.values.set(ref, value)
    this.upserts.push(ref)
  }
}

/** Answer a batched facts script (see FactCache.gather) by answering each fact's script on its own. */
export function answerBatch(
  script: string,
  answer: (sub: string) => Partial<RunResult>,
): Partial<RunResult> | undefined {
  const m = /printf '%s\\n' '?(__FACT_\w+__) 0'?;/.exec(script)
  if (!m) return undefined
  const marker = m[1]
  // Each fact is a shell function f<i>() ( ... ) ahead of the code that runs them (see batchScript).
  const count = [...script.matchAll(/^f\d+\(\) \($/gm)].length
  let out = ''
  for (let i = 0; i < count; i++) {
    const open = `f${i}() (\n`
    const start = script.indexOf(open) + open.length
    const end = script.indexOf(i + 1 < count ? `\n)\nf${i + 1}() (\n` : '\n)\nif d=$(mktemp', start)
    const r = answer(script.slice(start, end))
    out += `${marker} ${i}\n${r.stdout ?? ''}\n${marker}rc ${r.code ?? 0}\n`
  }
  return { stdout: out, code: 0 }
}

/** Run fn, require a ProvisionError, return it (so each test can look at kind, place and text). */
export function thrown(fn: () => unknown): ProvisionError {
  try {
    fn()
  } catch (e) {
    if (!(e instanceof ProvisionError)) throw new Error(`expected a ProvisionError, got ${String(e)}`)
    return e
  }
  throw new Error('expected a ProvisionError, nothing was thrown')
}

/** A free loopback port: listen on port 0, note the port, close. */
export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer()
    s.on('error', fail)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo
      s.close(() => done(port))
    })
  })
}
