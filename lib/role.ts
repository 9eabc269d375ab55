// What a role is made of: defaults, ordered steps, handlers. And what a step sees while it runs.

import type { Connection, RunOptions, RunResult } from './connection.ts'
import { ProvisionError } from './errors.ts'
import type { Fact, FactCache } from './facts.ts'
import type { Grammar } from './grammar.ts'
import type { Inventory } from './inventory.ts'
import type { SecretStore } from './secrets.ts'
import type { DeclaredVarSpec } from './declared-vars.ts'
import type { Vars, VarSpec } from './vars.ts'

export type StepStatus = 'ok' | 'changed' | 'failed' | 'skipped'

/** How a step runs a command: the connection's options, and whether its output is a credential. */
export interface ShOptions extends RunOptions {
  /**
   * The command prints a credential (a kubeconfig, a token, a key, a backup): its stdout reaches the step and
   * nothing else, at any verbosity; no reporter, no --json file and no error message ever carries it.
   */
  secretOutput?: boolean
}

/** Like ShOptions, with the words a failure starts with ("restart k3s", "read the token"). */
export interface MustOptions extends ShOptions {
  what?: string
}

export interface StepResult {
  status: StepStatus
  /** One line for people: what was (or would be) done, or why it failed / was skipped. */
  message?: string
  /** Unified diff of a file edit (shown with --diff). */
  diff?: string
  /** The handlers this change notifies, when not the step's own `notify` (a change that needs no restart: []). */
  notify?: readonly string[]
}

/** A command a step plans to run; planning is pure so it can be tested from recorded facts. */
export interface Command {
  script: string
  /** Input on stdin: file contents and secrets travel here, never in argv. */
  stdin?: string
  /** Default true. */
  sudo?: boolean
}

/**
 * What a step would change. The runner carries it out (its commands, then `apply`), or under --check only shows it
 * ("would <summary>") and carries out nothing: a step never needs to know which.
 */
export interface Change {
  /** What is done, as a verb phrase: "create /etc/foo.conf", "upgrade k3s v1.33 -> v1.34". */
  summary: string
  /** Commands run on the step's host, in order; a non-zero exit fails the step with `summary` in the message. */
  commands?: Command[]
  /**
   * Work that is not a list of commands on this host: a file on the controller, the secrets store, a command on the
   * server for an agent's step, a wait for what the commands started. Runs after the commands, only for real. What
   * it returns replaces `summary` in the report ("rebooted in 1.2s").
   */
  apply?: (ctx: StepContext) => Promise<string | void>
  /** Unified diff of a file edit (shown with --diff, also under --check). */
  diff?: string
  /** The handlers this change notifies, when not the step's own `notify` (a change that needs no restart: []). */
  notify?: readonly string[]
}

/** What a step's plan says: nothing to do (null), a change, or a verdict (ok with a message, skipped, failed). */
export type Plan = Change | null | { status: 'ok' | 'skipped' | 'failed'; message?: string }

export function isChange(p: Plan): p is Change {
  return p !== null && 'summary' in p
}

/**
 * A slot of the run's shared state (what one step or role learns that another needs: the cluster token, whether
 * the installer already restarted k3s on a host), declared with its type by the module that owns the value.
 */
export interface RunKey<T> {
  readonly name: string
  /** Never set: carries T, so get() and set() are typed by the key. */
  readonly type?: T
}

export function runKey<T>(name: string): RunKey<T> {
  return { name }
}

/** The run's shared state, typed by its keys; a value may be run-wide or one host's (`host`). */
export interface RunState {
  get<T>(key: RunKey<T>, host?: string): T | undefined
  set<T>(key: RunKey<T>, value: T, host?: string): void
  delete<T>(key: RunKey<T>, host?: string): void
}

/** A RunState in memory (one per run). */
export function runState(): RunState {
  const values = new Map<string, unknown>()
  const at = (key: RunKey<unknown>, host?: string) => (host === undefined ? key.name : `${key.name}@${host}`)
  return {
    get: <T>(key: RunKey<T>, host?: string) => values.get(at(key, host)) as T | undefined,
    set: (key, value, host) => void values.set(at(key, host), value),
    delete: (key, host) => void values.delete(at(key, host)),
  }
}

export interface HostHandle {
  name: string
  vars: Vars
  conn: Connection
  facts: FactCache
  /** Run a script there (as root unless sudo:false), shown at -v under that host's name like the step's own. */
  sh(script: string, opts?: ShOptions): Promise<RunResult>
  /** Like sh, but a non-zero exit fails the step with the command's error output, naming that host. */
  must(script: string, opts?: MustOptions): Promise<RunResult>
}

export interface StepContext {
  host: string
  vars: Vars
  groups: readonly string[]
  inventory: Inventory
  diff: boolean
  conn: Connection
  facts: FactCache
  secrets: SecretStore
  /** Run-wide values steps and roles hand to each other, typed by their keys (e.g. the cluster token once known). */
  state: RunState
  /** Another host of the inventory (connects on first use; strict host keys as always). */
  hostHandle(name: string): Promise<HostHandle>
  /** Run a script (as root unless sudo:false); logged at -v, output at -vv, secrets masked. */
  sh(script: string, opts?: ShOptions): Promise<RunResult>
  /** Like sh, but a non-zero exit fails the step with the command's error output. */
  must(script: string, opts?: MustOptions): Promise<RunResult>
  log(text: string): void
  /** Something the owner should act on that does not fail the step (printed as WARNING). */
  warn(text: string): void
}

export interface Step {
  /** Imperative sentence, e.g. "Add cgroup flags to cmdline.txt". */
  name: string
  tags?: readonly string[]
  /** Handler names queued when this step reports changed. */
  notify?: readonly string[]
  /** Run only when this says so; otherwise skipped. */
  when?: (ctx: StepContext) => boolean | Promise<boolean>
  /** Facts this step will read, so the role's facts can be gathered in one round trip. */
  facts?: (ctx: StepContext) => Fact<unknown>[]
  /**
   * A step that cannot plan without what earlier steps do for real (a wait for the API an install starts, a check
   * after a reboot): under --check it is skipped with this reason instead of planned.
   */
  onlyForReal?: string
  /** A marker step: run the handlers notified so far, now (Ansible's flush_handlers). */
  flushHandlers?: boolean
  /** Read (facts, the cluster) and say what would change. Changes nothing itself: the runner applies the plan. */
  plan(ctx: StepContext): Promise<Plan>
}

export interface Handler extends Step {
  /** Handlers run at the end of the role, once per host, in the order the role lists them. */
  handler: true
}

export interface Role {
  name: string
  /** Defaults of built-in variables for this role (a declared variable's default is in its declaration). */
  defaults?: Partial<Vars>
  /**
   * Variables of the role's own, with the spec shape of VAR_SPECS (type, doc, grammar) plus a default or
   * `required`: the inventory and -e of a playbook with this role take them, checked like the built-in ones before
   * any host is contacted. Steps read them typed with roleVars(ctx, specs). See docs/writing-a-role.md.
   */
  vars?: RoleVarSpecs
  /** Secret references the role needs resolved before any host is touched. */
  secrets?: (vars: Vars) => (string | undefined)[]
  /**
   * Checks of what the role will read from the secrets store and may not exist yet (so it cannot be in `secrets`),
   * run before any host is touched: a value that is there but unusable stops the run then (exit 1).
   */
  checkSecrets?: (vars: Vars, secrets: SecretStore) => Promise<void>
  steps: Step[]
  handlers?: Handler[]
}

export interface Play {
  name: string
  /** Host pattern, e.g. "all", "server", "agent". */
  hosts: string
  roles: Role[]
  /** Rolling batches: a number of hosts, or a percentage like "30%". */
  serial?: number | string
  /** Stop the whole run when any host of this play fails. */
  anyErrorsFatal?: boolean
  /** Abort the play when more than this share of a batch failed. */
  maxFailPercentage?: number
}

export interface Playbook {
  name: string
  plays: Play[]
  /**
   * How to finish the job after a failed or unreachable host, when `--limit @retry-file` cannot: a playbook about
   * one named host whose plays also run on others (retire, rebuild) is run again whole. No retry file is written.
   */
  rerun?: string
}

/** Run the handlers notified so far before the next step (e.g. reboot, then verify). */
export function flushHandlers(name = 'Run notified handlers now'): Step {
  return {
    name,
    flushHandlers: true,
    async plan() {
      return null
    },
  }
}

export function handler(step: Step): Handler {
  return { ...step, handler: true }
}

// ---------------------------------------------------------------- a role's own variables

/** A variable a role declares: a VarSpec (type, doc, grammar...) with a default or `required`. */
export type RoleVarSpec = DeclaredVarSpec

export type RoleVarSpecs = Readonly<Record<string, RoleVarSpec>>

/** The value type of a variable of this spec, as the inventory loader and -e leave it. */
export type VarValue<S extends VarSpec> = S['type'] extends 'int'
  ? number
  : S['type'] extends 'bool'
    ? boolean
    : S['type'] extends 'list'
      ? readonly (S extends { grammar: Grammar<infer T> } ? T : unknown)[]
      : S['type'] extends 'map'
        ? Readonly<Record<string, S extends { values: Grammar<infer T> } ? T : unknown>>
        : S extends { choices: readonly (infer C)[] }
          ? C
          : S extends { grammar: Grammar<infer T> }
            ? T
            : string

/** This host's values of a role's variables: always there when required or defaulted, else possibly undefined. */
export type RoleVarValues<V extends RoleVarSpecs> = {
  readonly [K in keyof V]: V[K] extends { required: true } | { default: unknown }
    ? VarValue<V[K]>
    : VarValue<V[K]> | undefined
}

/**
 * Declare a role's variables (the object is returned as it is): the names, types and defaults stay known to
 * TypeScript, so roleVars() is typed by them and a default of the wrong type does not compile.
 */
export function defineVars<const V extends RoleVarSpecs>(
  specs: V & { readonly [K in keyof V]: { readonly default?: VarValue<V[K]> } },
): V {
  return specs
}

/**
 * A role's variables for this host, typed by their declaration: the inventory's or -e's value, else the
 * declaration's default. A required one that is missing fails the step (the command line refuses that before
 * any host is contacted; this is for a role run some other way).
 */
export function roleVars<V extends RoleVarSpecs>(
  ctx: { readonly host?: string; readonly vars: Vars },
  specs: V,
): RoleVarValues<V> {
  const set = ctx.vars as unknown as Readonly<Record<string, unknown>>
  const out: Record<string, unknown> = {}
  for (const [name, spec] of Object.entries(specs)) {
    const value = set[name] ?? spec.default
    if (value === undefined && spec.required)
      throw new ProvisionError('step', `variable ${name} is not set (${spec.doc})`, {
        place: { host: ctx.host },
        hint: `set it in the inventory or with -e ${name}=...`,
      })
    out[name] = value
  }
  return out as RoleVarValues<V>
}
