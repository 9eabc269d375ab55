// What a role is made of: defaults, ordered steps, handlers. And what a step sees while it runs.

import type { Connection, RunOptions, RunResult } from './connection.ts'
import type { Fact, FactCache } from './facts.ts'
import type { Inventory } from './inventory.ts'
import type { SecretStore } from './secrets.ts'
import type { Vars } from './vars.ts'

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
}

/** A command a step plans to run; planning is pure so it can be tested from recorded facts. */
export interface Command {
  script: string
  /** Input on stdin: file contents and secrets travel here, never in argv. */
  stdin?: string
  /** Default true. */
  sudo?: boolean
}

/** What a step would change: nothing (null), or commands with a one-line summary and maybe a diff. */
export interface Change {
  summary: string
  commands: Command[]
  diff?: string
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
  check: boolean
  diff: boolean
  conn: Connection
  facts: FactCache
  secrets: SecretStore
  /** Run-wide values roles hand to each other (e.g. the cluster token once known). */
  shared: Map<string, unknown>
  /** Another host of the inventory (connects on first use; strict host keys as always). */
  hostHandle(name: string): Promise<HostHandle>
  /** Run a script (as root unless sudo:false); logged at -v, output at -vv, secrets masked. */
  sh(script: string, opts?: ShOptions): Promise<RunResult>
  /** Like sh, but a non-zero exit fails the step with the command's error output. */
  must(script: string, opts?: MustOptions): Promise<RunResult>
  /** Carry out a planned change (or, in check mode, only report it). Drops this host's facts after changing it. */
  apply(change: Change | null, okMessage?: string): Promise<StepResult>
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
  /** When true, the step still runs in check mode (it must only read). */
  readOnly?: boolean
  /** A marker step: run the handlers notified so far, now (Ansible's flush_handlers). */
  flushHandlers?: boolean
  run(ctx: StepContext): Promise<StepResult>
}

export interface Handler extends Step {
  /** Handlers run at the end of the role, once per host, in the order the role lists them. */
  handler: true
}

export interface Role {
  name: string
  defaults?: Partial<Vars>
  /** Secret references the role needs resolved before any host is touched. */
  secrets?: (vars: Vars) => (string | undefined)[]
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
  return { name, flushHandlers: true, async run() { return { status: 'ok' } } }
}

export function handler(step: Step): Handler {
  return { ...step, handler: true }
}
