// Facts: a read-only shell script plus a parser (pyinfra's model). Cached per host for the run,
// dropped for a host as soon as one of its steps changes it, and gathered in batches: all the facts a
// role needs travel in one remote script, so a no-op rerun costs one round trip per role, not one per check.

import { ProvisionError } from './errors.ts'
import type { Connection, RunResult } from './connection.ts'
import { quote } from './shell.ts'

export interface Fact<T> {
  /** Cache key: two facts with the same key are the same question. */
  key: string
  script: string
  parse(r: RunResult): T
}

export function defineFact<T>(key: string, script: string, parse: (r: RunResult) => T): Fact<T> {
  return { key, script, parse }
}

export class FactCache {
  private readonly conn: Connection
  private readonly values = new Map<string, unknown>()
  private readonly pending = new Map<string, Promise<unknown>>()
  /** Number of round trips made for facts (for tests and benchmarks). */
  roundTrips = 0

  /** Told of every round trip: which facts, the exit code, how long (for -v and --json; never their answers). */
  private readonly onRun?: (keys: string[], code: number, ms: number) => void

  constructor(conn: Connection, onRun?: (keys: string[], code: number, ms: number) => void) {
    this.conn = conn
    this.onRun = onRun
  }

  private async run(keys: string[], script: string): Promise<RunResult> {
    this.roundTrips++
    const t0 = Date.now()
    const r = await this.conn.run(script)
    this.onRun?.(keys, r.code, Date.now() - t0)
    return r
  }

  async get<T>(fact: Fact<T>): Promise<T> {
    if (this.values.has(fact.key)) return this.values.get(fact.key) as T
    const inflight = this.pending.get(fact.key)
    if (inflight) return inflight as Promise<T>
    const p = (async () => {
      const r = await this.run([fact.key], fact.script)
      const v = fact.parse(r)
      this.values.set(fact.key, v)
      return v
    })().finally(() => this.pending.delete(fact.key))
    this.pending.set(fact.key, p)
    return p
  }

  /** Gather every fact not yet known in one remote script. Each fact's stdout and exit code are kept apart. */
  async gather(facts: readonly Fact<unknown>[]): Promise<void> {
    const todo = dedupe(facts.filter((f) => !this.values.has(f.key) && !this.pending.has(f.key)))
    if (todo.length === 0) return
    if (todo.length === 1) {
      await this.get(todo[0])
      return
    }
    const marker = `__FACT_${Math.random().toString(36).slice(2)}__`
    const script = batchScript(
      todo.map((f) => f.script),
      marker,
    )
    const p = (async () => {
      const r = await this.run(
        todo.map((f) => f.key),
        script,
      )
      // The batch itself did not run (sudo refused, no shell): that is no answer to any fact, and says why.
      if (r.code !== 0 && !r.stdout.includes(marker))
        throw new ProvisionError(
          'step',
          `reading facts failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-3).join(' ') || 'no output'}`,
          { place: { host: this.conn.host } },
        )
      const parts = splitBatch(r.stdout, marker, todo.length)
      todo.forEach((f, i) => {
        const part = parts[i] ?? { stdout: '', code: 255 }
        this.values.set(f.key, f.parse({ code: part.code, stdout: part.stdout, stderr: '' }))
      })
    })()
    for (const f of todo) {
      const one = p.then(() => this.values.get(f.key))
      one.catch(() => undefined) // the error reaches the caller through `await p`; don't report it twice as unhandled
      this.pending.set(f.key, one)
    }
    try {
      await p
    } finally {
      for (const f of todo) this.pending.delete(f.key)
    }
  }

  /** Forget everything: the host was changed, so what we read before may be stale. */
  invalidate(): void {
    this.values.clear()
  }
}

/**
 * The facts of a batch run side by side on the host (a role's cluster reads each start a kubectl, which
 * dominates on a Pi), each into its own file in RAM (/dev/shm: no SD-card writes), then print in order with
 * their exit codes. Where no temp dir can be made (a read-only or full disk) they run one after another.
 */
export function batchScript(scripts: readonly string[], marker: string): string {
  const head = (i: number) => `printf '%s\\n' ${quote(`${marker} ${i}`)}`
  const tail = (rc: string) => `printf '\\n%s %d\\n' ${quote(`${marker}rc`)} ${rc}`
  return [
    // Each fact is a function with a subshell body, so its text is sent once whichever way it runs.
    ...scripts.map((s, i) => `f${i}() (\n${s}\n)`),
    'if d=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d 2>/dev/null); then',
    `trap 'rm -rf "$d"' EXIT`,
    // Each job writes its own marked answer; one cat prints them in order (few process starts: 12 lab hosts share
    // 2 cores).
    ...scripts.map((_s, i) => `{ ${head(i)}; f${i} 2>/dev/null; ${tail('$?')}; } >"$d/${i}" &`),
    'wait',
    `cat ${scripts.map((_s, i) => `"$d/${i}"`).join(' ')}`,
    'else',
    ...scripts.map((_s, i) => `${head(i)}; f${i} 2>/dev/null; ${tail('$?')}`),
    'fi',
  ].join('\n')
}

function dedupe(facts: Fact<unknown>[]): Fact<unknown>[] {
  const seen = new Set<string>()
  return facts.filter((f) => {
    if (seen.has(f.key)) return false
    seen.add(f.key)
    return true
  })
}

export function splitBatch(stdout: string, marker: string, count: number): { stdout: string; code: number }[] {
  const out: { stdout: string; code: number }[] = []
  for (let i = 0; i < count; i++) {
    const head = `${marker} ${i}\n`
    const start = stdout.indexOf(head)
    if (start < 0) break
    const bodyStart = start + head.length
    const tail = `\n${marker}rc `
    const end = stdout.indexOf(tail, bodyStart)
    if (end < 0) break
    const rcEnd = stdout.indexOf('\n', end + tail.length)
    const code = Number(stdout.slice(end + tail.length, rcEnd < 0 ? undefined : rcEnd))
    out.push({ stdout: stdout.slice(bodyStart, end), code: Number.isFinite(code) ? code : 255 })
  }
  return out
}
