// The runner: plays x hosts. Hosts run concurrently (forks), in rolling batches (serial); each host
// goes through its roles' steps in order, then the handlers its steps notified. A failing host stops
// alone; the recap and the exit code say what happened to each.

import pLimit from 'p-limit'
import { SshConnection, type Connection, type RunResult, type SshTarget } from './connection.ts'
import { errorText, ProvisionError } from './errors.ts'
import { writeFileAtomic } from './fsutil.ts'
import { defineFact, FactCache, type Fact } from './facts.ts'
import { quote } from './shell.ts'
import { hostVars, type Inventory, type InventoryHost, type VarLayer } from './inventory.ts'
import { mask } from './mask.ts'
import type { HostCost, HostCounts, Reporter, RunStats } from './run-events.ts'
import {
  isChange,
  runState,
  type HostHandle,
  type MustOptions,
  type Play,
  type Playbook,
  type Role,
  type ShOptions,
  type Step,
  type StepContext,
  type StepResult,
} from './role.ts'
import type { SecretStore } from './secrets.ts'
import type { Vars } from './vars.ts'
import { acting, HostMeter, MeteredConnection, milestones, wallByKind } from './run-cost.ts'
import { planHosts, requiredSecrets, stepSelected, validatePlaybook } from './run-plan.ts'

export interface RunnerOptions {
  inventory: Inventory
  limit?: string
  check?: boolean
  diff?: boolean
  tags?: string[]
  skipTags?: string[]
  forks?: number
  extraVars?: VarLayer
  /** Record the key of a host not yet in known_hosts: true for all hosts, or only these hosts (a rebuild). */
  trustNewHostKeys?: boolean | readonly string[]
  reporter: Reporter
  secrets: SecretStore
  /** Make a connection for a host (tests inject fakes); default: SSH from the host's variables. */
  connect?: (host: InventoryHost, vars: Vars) => Connection
  retryFile?: string
  /** Aborted on Ctrl-C: no new step starts; running ones finish; the recap is printed. */
  signal?: AbortSignal
}

export interface RunSummary {
  exitCode: number
  counts: Record<string, HostCounts>
  failed: string[]
  unreachable: string[]
  interrupted: boolean
  seconds: number
}

/** Where a host keeps the handlers it is owed, one file per role. */
export const PENDING_DIR = '/var/lib/pi-provision/handlers'

export function pendingHandlersFact(role: string): Fact<string[]> {
  return defineFact(`pending-handlers:${role}`, `cat ${quote(`${PENDING_DIR}/${role}`)} 2>/dev/null; true`, (r) =>
    r.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean),
  )
}

export function savePendingHandlers(role: string, names: string[]): string {
  const file = quote(`${PENDING_DIR}/${role}`)
  if (names.length === 0) return `rm -f ${file}`
  const write = `printf '%s\\n' ${names.map(quote).join(' ')} > ${file}.tmp`
  return `mkdir -p ${PENDING_DIR} && ${write} && mv -f ${file}.tmp ${file}`
}

const STEP_RECONNECT_RETRIES = 2

export const EXIT = { ok: 0, usage: 1, failed: 2, unreachable: 4, interrupted: 130 } as const

interface HostRuntime extends Omit<HostHandle, 'sh' | 'must'> {
  host: InventoryHost
  counts: HostCounts
  state: 'ok' | 'failed' | 'unreachable'
  meter: HostMeter
}
export async function runPlaybook(pb: Playbook, opts: RunnerOptions): Promise<RunSummary> {
  validatePlaybook(pb)
  return new PlaybookRun(pb, opts).run()
}

/** The role a host is running, with what its handlers need: the context and the handlers notified so far. */
interface RoleRun {
  rt: HostRuntime
  role: Role
  ctx: StepContext
  notified: Set<string>
}

/**
 * One run of a playbook, as small steps: select the hosts, resolve the secrets, run each play (in batches, hosts in
 * parallel), each host's roles (facts, steps, handlers), then close the connections and print the recap.
 */
class PlaybookRun {
  private readonly pb: Playbook
  private readonly opts: RunnerOptions
  private readonly rep: Reporter
  private readonly check: boolean
  private readonly extra: VarLayer
  private readonly started = Date.now()
  private readonly runtimes = new Map<string, HostRuntime>()
  private readonly state = runState()
  private stopAll = false

  constructor(pb: Playbook, opts: RunnerOptions) {
    this.pb = pb
    this.opts = opts
    this.rep = opts.reporter
    this.check = opts.check ?? false
    this.extra = opts.extraVars ?? {}
  }

  async run(): Promise<RunSummary> {
    const { inventory: inv, limit } = this.opts
    const plan = planHosts(this.pb, inv, limit)
    if (limit && plan.every((p) => p.hosts.length === 0))
      throw new ProvisionError('usage', `--limit ${limit} matches no host of any play`)
    const touched = [...new Set(plan.flatMap((p) => p.hosts))]
    performance.clearMarks('pi-provision:run')
    performance.mark('pi-provision:run')
    this.rep.emit({ kind: 'run-start', playbook: this.pb.name, inventory: inv.file, check: this.check, hosts: touched })
    await this.opts.secrets.resolveAll(requiredSecrets(this.pb, inv, limit, this.extra))
    for (const h of touched) this.runtime(h)
    for (const { play, hosts } of plan) {
      if (this.stopAll || this.interrupted()) break
      await this.runPlay(play, hosts)
    }
    await Promise.all([...this.runtimes.values()].map((rt) => rt.conn.close().catch(() => undefined)))
    return this.recap(touched)
  }

  /** What the run cost on each host it touched, and where its wall time went (see RunStats). */
  private stats(touched: readonly string[]): RunStats {
    performance.clearMarks('pi-provision:recap')
    performance.mark('pi-provision:recap')
    const marks = milestones()
    const hosts: Record<string, HostCost> = {}
    for (const h of touched) hosts[h] = this.runtime(h).meter.cost
    const spans = touched.flatMap((h) => this.runtime(h).meter.spans)
    return {
      origin: Math.round(performance.timeOrigin),
      marks,
      wall: wallByKind(spans, marks.run ?? 0, marks.recap ?? performance.now()),
      hosts,
    }
  }

  private interrupted(): boolean {
    return this.opts.signal?.aborted ?? false
  }

  /** A play: its live hosts in batches (serial), each batch in parallel within --forks; failure policies after each. */
  private async runPlay(play: Play, hosts: readonly string[]): Promise<void> {
    const live = hosts.filter((h) => this.runtime(h).state === 'ok')
    this.rep.emit({ kind: 'play-start', play: play.name, hosts: live })
    for (const batch of batches(live, play.serial)) {
      if (this.stopAll || this.interrupted()) break
      const limit = pLimit(Math.max(1, this.opts.forks ?? 10))
      await Promise.all(batch.map((h) => limit(() => this.runHost(this.runtime(h), play))))
      const failedHere = batch.filter((h) => this.runtime(h).state !== 'ok').length
      if (failedHere > 0 && play.anyErrorsFatal) {
        this.rep.emit({
          kind: 'warning',
          message: `play "${play.name}" has any_errors_fatal: stopping the run after ${failedHere} failed host(s)`,
        })
        this.stopAll = true
      }
      if (play.maxFailPercentage !== undefined && (failedHere / batch.length) * 100 > play.maxFailPercentage) {
        this.rep.emit({
          kind: 'warning',
          message:
            `play "${play.name}": ${failedHere} of ${batch.length} host(s) failed, ` +
            `more than max_fail_percentage ${play.maxFailPercentage}%: stopping`,
        })
        this.stopAll = true
      }
    }
  }

  private async runHost(rt: HostRuntime, play: Play): Promise<void> {
    for (const role of play.roles) {
      if (rt.state !== 'ok' || this.interrupted()) return
      await acting.run(role.name, () => this.runRole(rt, role))
    }
  }

  /** A role on a host: its facts in one round trip, its selected steps in order, then the handlers they notified. */
  private async runRole(rt: HostRuntime, role: Role): Promise<void> {
    const ctx = this.makeContext(rt, hostVars(rt.host, role.defaults, this.extra))
    const steps = role.steps.filter((s) => stepSelected(s, role, this.opts.tags ?? [], this.opts.skipTags ?? []))
    const handlerNames = (role.handlers ?? []).map((h) => h.name)
    const pending = pendingHandlersFact(role.name)
    const r: RoleRun = { rt, role, ctx, notified: new Set<string>() }
    // One round trip for every fact the role's steps declared, and the handlers a failed run left owed.
    try {
      await rt.facts.gather([pending, ...steps.flatMap((s) => s.facts?.(ctx) ?? [])])
      if (handlerNames.length)
        r.notified = new Set((await rt.facts.get(pending)).filter((h) => handlerNames.includes(h)))
    } catch (e) {
      this.recordError(rt, role, steps[0]?.name ?? 'Gather facts', e, false)
      return
    }
    for (const step of steps) {
      if (rt.state !== 'ok' || this.interrupted()) break
      if (step.flushHandlers) {
        await this.flushHandlers(r)
        continue
      }
      const res = await this.runStep(rt, role, step, ctx, false)
      const fresh = res?.status === 'changed' ? (res.notify ?? step.notify ?? []).filter((h) => !r.notified.has(h)) : []
      if (fresh.length) {
        for (const h of fresh) r.notified.add(h)
        await this.rememberHandlers(r).catch((e: unknown) => this.recordError(rt, role, step.name, e, false))
      }
    }
    await this.flushHandlers(r)
  }

  /**
   * Handlers owed are written down on the host, so a run that fails before they run does not lose them (a reboot
   * for a cmdline.txt edited by a failed run still happens on the next run).
   */
  private async rememberHandlers({ rt, role, notified }: RoleRun): Promise<void> {
    if (this.check || !role.handlers?.length) return
    const res = await rt.conn.run(savePendingHandlers(role.name, [...notified]))
    if (res.code !== 0)
      throw new ProvisionError('step', `cannot record pending handlers in ${PENDING_DIR}: ${res.stderr.trim()}`)
  }

  /**
   * The handlers notified so far, in the order the role lists them; they still run after Ctrl-C
   * (no host half-done).
   */
  private async flushHandlers(r: RoleRun): Promise<void> {
    for (const h of r.role.handlers ?? []) {
      if (r.rt.state !== 'ok' || !r.notified.has(h.name)) continue
      const res = await this.runStep(r.rt, r.role, h, r.ctx, true)
      if (!res || res.status === 'failed') return
      r.notified.delete(h.name)
      await this.rememberHandlers(r).catch((e: unknown) => this.recordError(r.rt, r.role, h.name, e, true))
    }
  }

  private async runStep(
    rt: HostRuntime,
    role: Role,
    step: Step,
    ctx: StepContext,
    isHandler: boolean,
  ): Promise<StepResult | undefined> {
    const t0 = Date.now()
    const base = { host: rt.name, role: role.name, step: step.name, handler: isHandler }
    try {
      if (step.when && !(await step.when(ctx))) {
        rt.counts.skipped++
        this.rep.emit({ kind: 'step-end', ...base, status: 'skipped', ms: Date.now() - t0 })
        return { status: 'skipped' }
      }
      this.rep.emit({ kind: 'step-start', ...base })
      const res = await this.runWithReconnect(rt, step, ctx)
      if (res.status === 'failed') {
        rt.counts.failed++
        rt.state = 'failed'
      } else if (res.status === 'skipped') rt.counts.skipped++
      else {
        rt.counts.ok++
        if (res.status === 'changed') rt.counts.changed++
      }
      this.rep.emit({
        kind: 'step-end',
        ...base,
        status: res.status,
        message: res.message,
        diff: this.opts.diff ? res.diff : undefined,
        ms: Date.now() - t0,
      })
      return res
    } catch (e) {
      this.recordError(rt, role, step.name, e, isHandler, Date.now() - t0)
      return undefined
    }
  }

  /**
   * Steps check before they change, so one whose connection dropped mid-way can run again: reconnect
   * and retry a bounded number of times. A host that answered before and cannot be reached again has
   * died mid-run: that fails its step (the host is not "unreachable from the start").
   */
  private async runWithReconnect(rt: HostRuntime, step: Step, ctx: StepContext): Promise<StepResult> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.carryOut(rt, step, ctx)
      } catch (e) {
        const lost = e instanceof ProvisionError && e.kind === 'unreachable' && /connection lost/.test(e.message)
        if (!lost) throw e
        rt.facts.invalidate()
        if (attempt > STEP_RECONNECT_RETRIES)
          throw new ProvisionError('step', `${e.message}; gave up after ${attempt} attempts`, {
            place: { host: rt.name },
          })
        this.rep.emit({
          kind: 'warning',
          host: rt.name,
          message: `${e.message}: reconnecting and running "${step.name}" again (attempt ${attempt + 1})`,
        })
        await rt.conn.reset()
        try {
          await rt.conn.run('true')
        } catch (again) {
          throw new ProvisionError('step', `the host went away mid-run: ${(again as Error).message}`, {
            place: { host: rt.name },
            cause: again,
          })
        }
      }
    }
  }

  /**
   * A step's plan, carried out: its commands on the host, then its apply. Under --check nothing is carried out: the
   * change is reported as what would be done, and a step that cannot plan without real changes before it is skipped.
   */
  private async carryOut(rt: HostRuntime, step: Step, ctx: StepContext): Promise<StepResult> {
    if (this.check && step.onlyForReal) return { status: 'skipped', message: `check mode: ${step.onlyForReal}` }
    const plan = await step.plan(ctx)
    if (!isChange(plan)) return plan ?? { status: 'ok' }
    if (this.check) return { status: 'changed', message: `would ${plan.summary}`, diff: plan.diff, notify: plan.notify }
    let said: string | void
    try {
      for (const c of plan.commands ?? [])
        await this.mustOn(rt, c.script, { stdin: c.stdin, sudo: c.sudo, what: plan.summary })
      said = await plan.apply?.(ctx)
    } finally {
      // The host changed (or may have, if a command failed half-way): what was read of it is stale.
      rt.facts.invalidate()
    }
    return { status: 'changed', message: said || plan.summary, diff: plan.diff, notify: plan.notify }
  }

  /** Count an error against the host, which stops. */
  private recordError(rt: HostRuntime, role: Role, step: string, e: unknown, isHandler: boolean, ms = 0): void {
    const pe = e instanceof ProvisionError ? e : null
    if (pe && (pe.kind === 'unreachable' || pe.kind === 'hostkey')) {
      rt.counts.unreachable++
      rt.state = 'unreachable'
      this.rep.emit({
        kind: 'unreachable',
        host: rt.name,
        message: pe.message + (pe.hint ? `\n  hint: ${pe.hint}` : ''),
      })
    } else {
      rt.counts.failed++
      rt.state = 'failed'
      this.rep.emit({
        kind: 'step-end',
        host: rt.name,
        role: role.name,
        step,
        handler: isHandler,
        status: 'failed',
        message: errorText(e),
        ms,
      })
    }
  }

  /**
   * A command on a host, shown at -v (output at -vv) under that host's name. A credential's output (secretOutput)
   * is replaced by its size before any reporter sees the event.
   */
  private async logged(rt: HostRuntime, script: string, o: ShOptions = {}): Promise<RunResult> {
    const { secretOutput, ...run } = o
    const t0 = Date.now()
    const r = await rt.conn.run(script, run)
    const stdout = secretOutput && r.stdout ? withheld(r.stdout) : r.stdout
    this.rep.emit({
      kind: 'command',
      host: rt.name,
      script,
      code: r.code,
      stdout,
      stderr: r.stderr,
      ms: Date.now() - t0,
    })
    return r
  }

  /** Like logged, but a non-zero exit fails the step with the command's last error lines, naming the host. */
  private async mustOn(rt: HostRuntime, script: string, o: MustOptions = {}): Promise<RunResult> {
    const r = await this.logged(rt, script, o)
    if (r.code !== 0) {
      // A credential's stdout never becomes an error message; its stderr (what went wrong) still may.
      const out = (r.stderr.trim() || (o.secretOutput ? '' : r.stdout.trim())).split('\n').slice(-6).join('\n    ')
      throw new ProvisionError('step', `${o.what ?? `command failed`} (exit ${r.code})${out ? `:\n    ${out}` : ''}`, {
        place: { host: rt.name },
      })
    }
    return r
  }

  /** What a step sees of its host and of the run. */
  private makeContext(rt: HostRuntime, vars: Vars): StepContext {
    return {
      host: rt.name,
      vars,
      groups: rt.host.groups,
      inventory: this.opts.inventory,
      diff: this.opts.diff ?? false,
      conn: rt.conn,
      facts: rt.facts,
      secrets: this.opts.secrets,
      state: this.state,
      hostHandle: async (name) => {
        const other = this.runtime(name)
        return {
          name,
          vars: other.vars,
          conn: other.conn,
          facts: other.facts,
          sh: (script, o) => this.logged(other, script, o),
          must: (script, o) => this.mustOn(other, script, o),
        }
      },
      sh: (script, o) => this.logged(rt, script, o),
      must: (script, o) => this.mustOn(rt, script, o),
      log: (text) => this.rep.emit({ kind: 'info', host: rt.name, message: text }),
      warn: (text) => this.rep.emit({ kind: 'warning', host: rt.name, message: text }),
    }
  }

  /** A host's runtime: its connection (made on first use: strict host keys), facts cache and counts. */
  private runtime(name: string): HostRuntime {
    let rt = this.runtimes.get(name)
    if (!rt) {
      const host = this.opts.inventory.hosts.get(name)
      if (!host) throw new ProvisionError('usage', `no host "${name}" in the inventory`)
      const vars = hostVars(host, {}, this.extra)
      const meter = new HostMeter()
      const conn = new MeteredConnection(this.connect(host, vars), meter)
      const facts = new FactCache(conn.forFacts(), (keys, code, ms) =>
        this.rep.emit({ kind: 'facts', host: name, keys, code, ms }),
      )
      rt = {
        name,
        host,
        vars,
        conn,
        facts,
        counts: { ok: 0, changed: 0, unreachable: 0, failed: 0, skipped: 0 },
        state: 'ok',
        meter,
      }
      this.runtimes.set(name, rt)
    }
    return rt
  }

  private connect(host: InventoryHost, vars: Vars): Connection {
    if (this.opts.connect) return this.opts.connect(host, vars)
    const trust = this.opts.trustNewHostKeys
    return sshFor(host, vars, {
      trustNewHostKeys: Array.isArray(trust) ? trust.includes(host.name) : trust === true,
      // --check writes nothing anywhere: a first-seen key is accepted for this run only.
      recordNewHostKeys: !this.check,
      secrets: this.opts.secrets,
      onNewHostKey: (fp, recorded) =>
        this.rep.emit({
          kind: 'warning',
          host: host.name,
          message:
            `${recorded ? 'recorded' : 'check mode: accepted for this run, would record'} ` +
            `its new host key ${fp} in ${vars.known_hosts_file}`,
        }),
      onKnownHostsWarning: (message) => this.rep.emit({ kind: 'warning', message }),
    })
  }

  /** Counts, exit code, the retry file (not under --check) and the recap event. */
  private async recap(touched: readonly string[]): Promise<RunSummary> {
    const counts: Record<string, HostCounts> = {}
    for (const h of touched) counts[h] = this.runtime(h).counts
    const failed = touched.filter((h) => this.runtime(h).state === 'failed')
    const unreachable = touched.filter((h) => this.runtime(h).state === 'unreachable')
    const wasInterrupted = this.interrupted()
    const exitCode = wasInterrupted
      ? EXIT.interrupted
      : failed.length
        ? EXIT.failed
        : unreachable.length
          ? EXIT.unreachable
          : EXIT.ok
    let retryFile: string | undefined
    // A retire or rebuild cut short by Ctrl-C is finished the same way as one with a failed host.
    const rerun = failed.length || unreachable.length || wasInterrupted ? this.pb.rerun : undefined
    // --check writes nothing anywhere, the retry file included; otherwise it is the owner's only
    // and never half written.
    if (this.opts.retryFile && !this.check && !this.pb.rerun && (failed.length || unreachable.length)) {
      await writeFileAtomic(this.opts.retryFile, mask([...failed, ...unreachable].join('\n') + '\n'), 0o600)
      retryFile = this.opts.retryFile
    }
    const seconds = (Date.now() - this.started) / 1000
    const stats = this.stats(touched)
    this.rep.emit({ kind: 'recap', hosts: counts, seconds, exitCode, retryFile, rerun, stats })
    return { exitCode, counts, failed, unreachable, interrupted: wasInterrupted, seconds }
  }
}

/** What a reporter is told of a credential's output: its size, never its bytes. */
export function withheld(output: string): string {
  return `(${Buffer.byteLength(output)} bytes of credential output not shown)\n`
}

export function batches<T>(items: readonly T[], serial: number | string | undefined): T[][] {
  if (serial === undefined || items.length === 0) return [items.slice()]
  let size =
    typeof serial === 'number'
      ? serial
      : /^\d+%$/.test(serial)
        ? Math.ceil((items.length * parseInt(serial, 10)) / 100)
        : parseInt(serial, 10)
  if (!Number.isFinite(size) || size < 1) size = 1
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

function sshFor(
  host: InventoryHost,
  vars: Vars,
  o: Pick<SshTarget, 'trustNewHostKeys' | 'recordNewHostKeys' | 'onNewHostKey' | 'onKnownHostsWarning'> & {
    secrets: SecretStore
  },
): Connection {
  return new SshConnection({
    host: host.name,
    address: vars.address!,
    port: vars.ssh_port,
    user: vars.ssh_user,
    keyFile: vars.ssh_key_file,
    keyText: vars.ssh_key_ref ? o.secrets.get(vars.ssh_key_ref) : undefined,
    sudoPassword: vars.become_password_ref ? o.secrets.get(vars.become_password_ref) : undefined,
    keyPassphrase: vars.ssh_key_passphrase_ref ? o.secrets.get(vars.ssh_key_passphrase_ref) : undefined,
    keyRef: vars.ssh_key_ref,
    // The agent the owner's own `ssh` uses (1Password's SSH agent included), when there is one.
    agentSocket: vars.ssh_agent ? process.env.SSH_AUTH_SOCK || undefined : undefined,
    knownHostsFile: vars.known_hosts_file,
    trustNewHostKeys: o.trustNewHostKeys,
    recordNewHostKeys: o.recordNewHostKeys,
    onNewHostKey: o.onNewHostKey,
    onKnownHostsWarning: o.onKnownHostsWarning,
    connectTimeoutSec: vars.connect_timeout,
  })
}
