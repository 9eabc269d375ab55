// What a run tells its reporters: the events, what a run cost, and the Reporter interface every way of showing them
// implements (lib/reporter.ts, lib/tty-reporter.ts).

import type { Palette } from './palette.ts'
import type { StepStatus } from './role.ts'

export interface HostCounts {
  ok: number
  changed: number
  unreachable: number
  failed: number
  skipped: number
}

/** What a run cost on one host: the scripts sent over its SSH connection and the cluster clients they started. */
export interface HostCost {
  /** Scripts run over the host's connection (fact batches and commands): one round trip each. */
  roundTrips: number
  /** Of those, the ones that read facts. */
  factReads: number
  /** kubectl processes those scripts started (every kubectl line is lib/kube.ts's). */
  kubectl: number
  /** flux CLI processes. */
  flux: number
  /** ms to open the first connection (0: it never connected). */
  connectMs: number
  /** The same by the role whose step, facts or handler sent the script (an agent's role asks the server too). */
  roles: Record<string, { roundTrips: number; kubectl: number; flux: number }>
}

/** Where a run's time went and what it cost on the hosts (the recap's; shown at -v, always in --json). */
export interface RunStats {
  /** When this process started (epoch ms). */
  origin: number
  /**
   * Milestones in ms since the process started: playbook (its first line ran), main (the modules are loaded),
   * inventory (read and checked), secrets (resolved), run (the runner starts), recap.
   */
  marks: Record<string, number>
  /**
   * Wall ms from run to recap by what was in flight on any host, each instant counted once under the first of:
   * connecting, cluster calls (kubectl, flux), fact reads, commands; the rest is the controller's own (planning,
   * probes from the controller, waits between polls).
   */
  wall: { connect: number; cluster: number; facts: number; commands: number; controller: number }
  hosts: Record<string, HostCost>
}

export type RunEvent =
  | { kind: 'run-start'; playbook: string; inventory: string; check: boolean; hosts: string[] }
  | { kind: 'play-start'; play: string; hosts: string[] }
  | { kind: 'step-start'; host: string; role: string; step: string; handler: boolean }
  | {
      kind: 'step-end'
      host: string
      role: string
      step: string
      handler: boolean
      status: StepStatus
      message?: string
      diff?: string
      ms: number
    }
  | { kind: 'unreachable'; host: string; message: string }
  | { kind: 'command'; host: string; script: string; code: number; stdout: string; stderr: string; ms: number }
  /** A round trip reading facts: their names only (their answers may hold file contents, secrets among them). */
  | { kind: 'facts'; host: string; keys: string[]; code: number; ms: number }
  | { kind: 'warning'; message: string; host?: string }
  | { kind: 'info'; message: string; host: string }
  | {
      kind: 'recap'
      hosts: Record<string, HostCounts>
      seconds: number
      exitCode: number
      retryFile?: string
      rerun?: string
      stats?: RunStats
    }
  | { kind: 'error'; message: string }
  /** Ctrl-C came: no new step starts from here on (in --json, what follows it happened after the signal). */
  | { kind: 'interrupted'; message: string }

export interface Reporter {
  emit(event: RunEvent): void
  close(): void
}

export interface ReporterOptions {
  verbosity: number
  showDiff: boolean
  /** Plain lines (false) or a live spinner (true). Default: spinner only on a TTY outside CI. */
  tty?: boolean
  jsonFile?: string
  /** Where plain lines go (stdout by default). */
  write?: (line: string) => void
  /** The stream lines go to when no `write` is given, and the terminal the live spinner draws on (stdout). */
  terminal?: NodeJS.WriteStream
  /** Colour, from loadPalette (createReporter decides it with useColour); plain when not given. */
  palette?: Palette
  /** Colour or not, instead of useColour's decision (createReporter). */
  colour?: boolean
  /** The environment the colour and spinner decisions read (process.env by default). */
  env?: Record<string, string | undefined>
}
