// What a run costs on the hosts: round trips, fact reads, and the kubectl and flux processes each host's scripts
// start (by the role that was acting), the first connection's time, and where the run's wall time went; counted where
// every script passes, a host's connection.

import { AsyncLocalStorage } from 'node:async_hooks'
import { SshConnection, type Connection, type RunOptions, type RunResult } from './connection.ts'
import { clusterCalls } from './kube.ts'
import type { HostCost, RunStats } from './run-events.ts'

/** The role whose step, facts or handler is running: what a round trip on any host is counted against. */
export const acting = new AsyncLocalStorage<string>()

/** A span of wall time (ms since the process started) with a script in flight, and what it was for. */
export interface Span {
  start: number
  end: number
  kind: 'connect' | 'cluster' | 'facts' | 'commands'
}

/** Round trips, cluster calls and busy spans of one host, counted where every script passes: its connection. */
export class HostMeter {
  readonly cost: HostCost = { roundTrips: 0, factReads: 0, kubectl: 0, flux: 0, connectMs: 0, roles: {} }
  readonly spans: Span[] = []

  count(script: string, facts: boolean, start: number, end: number): void {
    const calls = clusterCalls(script)
    this.cost.roundTrips++
    if (facts) this.cost.factReads++
    this.cost.kubectl += calls.kubectl
    this.cost.flux += calls.flux
    const role = acting.getStore() ?? '(runner)'
    const r = this.cost.roles[role] ?? { roundTrips: 0, kubectl: 0, flux: 0 }
    this.cost.roles[role] = r
    r.roundTrips++
    r.kubectl += calls.kubectl
    r.flux += calls.flux
    const kind = calls.kubectl || calls.flux ? 'cluster' : facts ? 'facts' : 'commands'
    this.spans.push({ start, end, kind })
  }
}

/**
 * A host's connection as the run uses it: every script counted and timed (facts apart from commands), and the
 * first connection timed on its own. Everything else is the connection's.
 */
export class MeteredConnection implements Connection {
  readonly host: string
  readonly sshAnswers?: (deadline: number) => Promise<boolean>
  private readonly inner: Connection
  private readonly meter: HostMeter
  private readonly facts: boolean

  constructor(inner: Connection, meter: HostMeter, facts = false) {
    this.inner = inner
    this.host = inner.host
    this.meter = meter
    this.facts = facts
    if (inner.sshAnswers) this.sshAnswers = (deadline) => inner.sshAnswers!(deadline)
  }

  /** The same connection and meter, counting its scripts as fact reads. */
  forFacts(): MeteredConnection {
    return new MeteredConnection(this.inner, this.meter, true)
  }

  async run(script: string, opts?: RunOptions): Promise<RunResult> {
    if (this.meter.cost.connectMs === 0 && this.inner instanceof SshConnection && opts?.connectWithinMs === undefined) {
      const t0 = performance.now()
      await this.inner.connect()
      const t1 = performance.now()
      this.meter.cost.connectMs ||= Math.max(1, Math.round(t1 - t0))
      this.meter.spans.push({ start: t0, end: t1, kind: 'connect' })
    }
    const start = performance.now()
    try {
      return await this.inner.run(script, opts)
    } finally {
      this.meter.count(script, this.facts, start, performance.now())
    }
  }

  reset(): Promise<void> {
    return this.inner.reset()
  }

  close(): Promise<void> {
    return this.inner.close()
  }
}

/**
 * Wall time from `from` to `to` by what was in flight on any host: each instant counted once, under the first kind
 * in flight of connect, cluster, facts, commands; the rest is the controller's (planning, probes, waits, idle).
 */
export function wallByKind(spans: readonly Span[], from: number, to: number): RunStats['wall'] {
  const order: Span['kind'][] = ['connect', 'cluster', 'facts', 'commands']
  const edges = [...new Set([from, to, ...spans.flatMap((s) => [s.start, s.end])])]
    .filter((t) => t >= from && t <= to)
    .sort((a, b) => a - b)
  const out = { connect: 0, cluster: 0, facts: 0, commands: 0, controller: 0 }
  for (let i = 0; i + 1 < edges.length; i++) {
    const [a, b] = [edges[i], edges[i + 1]]
    const kinds = new Set(spans.filter((s) => s.start <= a && s.end >= b).map((s) => s.kind))
    const k = order.find((o) => kinds.has(o)) ?? 'controller'
    out[k] += b - a
  }
  for (const k of Object.keys(out) as (keyof typeof out)[]) out[k] = Math.round(out[k])
  return out
}

/** The milestones of this process so far (performance marks named pi-provision:*), in ms since it started. */
export function milestones(): Record<string, number> {
  const marks: Record<string, number> = {}
  for (const m of performance.getEntriesByType('mark'))
    if (m.name.startsWith('pi-provision:')) marks[m.name.slice('pi-provision:'.length)] = Math.round(m.startTime)
  return marks
}
