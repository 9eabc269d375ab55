// Run events and the ways they are shown: a spinner on a TTY (ora), plain lines for CI and pipes,
// JSON lines for machines (--json FILE), and a recording reporter for tests. Everything passes through mask().
// Lines are coloured as Ansible colours them (zx's chalk) on a terminal, never in --json or a file we write.

import { closeSync, constants, fchmodSync, openSync, writeSync } from 'node:fs'
import type { Ora } from 'ora'
import { mask } from './mask.ts'
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

type Paint = (text: string) => string

/** How each kind of line is painted: Ansible's colours, or none. */
export interface Palette {
  /** Colour at all (the spinner's own colour follows it). */
  on: boolean
  ok: Paint
  changed: Paint
  /** Failed and unreachable hosts and steps, errors. */
  failed: Paint
  skipped: Paint
  warning: Paint
  diffAdd: Paint
  diffDel: Paint
  diffHunk: Paint
}

const same: Paint = (text) => text

export const PLAIN: Palette = {
  on: false,
  ok: same,
  changed: same,
  failed: same,
  skipped: same,
  warning: same,
  diffAdd: same,
  diffDel: same,
  diffHunk: same,
}

/**
 * Colour or not, as chalk's supports-color decides for a stream, and NO_COLOR (no-color.org): FORCE_COLOR colours
 * even through a pipe or into a file (FORCE_COLOR=0 or false: never), and wins over NO_COLOR, as in Node itself;
 * otherwise NO_COLOR with any value but '' turns colour off; otherwise only a TTY whose TERM is not dumb.
 */
export function useColour(
  out: Pick<NodeJS.WriteStream, 'isTTY'> | undefined,
  env: Record<string, string | undefined> = process.env,
): boolean {
  const force = env.FORCE_COLOR
  if (force !== undefined) return force !== '0' && force !== 'false'
  if (env.NO_COLOR) return false
  return Boolean(out?.isTTY) && env.TERM !== 'dumb'
}

/**
 * Ansible's colours from zx's chalk (ok green, changed yellow, failed and unreachable red, skipped cyan, warnings
 * magenta; diffs: added green, removed red, hunks cyan), or PLAIN without loading anything. zx/core, not zx: the
 * same chalk without zx's other vendored packages (about 20 ms to import against 55 ms), and only for a run that
 * colours, so --list-hosts and piped runs pay nothing.
 */
export async function loadPalette(colour: boolean): Promise<Palette> {
  if (!colour) return PLAIN
  const { chalk } = await import('zx/core')
  // An instance of our own at level 1 (16 colours, all this uses), as chalk advises a module: zx's shared one keeps
  // the level it found for stdout, and its level is not ours to decide (chalk.constructor is chalk's factory; zx
  // exports the instance only).
  const make = chalk.constructor as unknown as (options: { level: number }) => typeof chalk
  const c = make({ level: 1 })
  // One argument each: a chalk style joins all it is given (lines.map(c.red) would append the index and array).
  const one =
    (style: typeof c.red): Paint =>
    (text) =>
      style(text)
  return {
    on: true,
    ok: one(c.green),
    changed: one(c.yellow),
    failed: one(c.red),
    skipped: one(c.cyan),
    warning: one(c.magenta),
    diffAdd: one(c.green),
    diffDel: one(c.red),
    diffHunk: one(c.cyan),
  }
}

const STATUS_WORD: Record<StepStatus, string> = { ok: 'ok', changed: 'changed', failed: 'FAILED', skipped: 'skipping' }

export function formatStepLine(e: Extract<RunEvent, { kind: 'step-end' }>): string {
  const label = `${STATUS_WORD[e.status]}: [${e.host}] ${e.role} | ${e.handler ? 'handler: ' : ''}${e.step}`
  return e.message ? `${label} (${e.message})` : label
}

/** The recap's cost lines (-v): per host its round trips and cluster calls, then where the time went. */
export function formatStats(s: RunStats): string[] {
  const calls = (c: { roundTrips: number; kubectl: number; flux: number }) =>
    `${c.roundTrips} round trip${c.roundTrips === 1 ? '' : 's'}, ${c.kubectl} kubectl, ${c.flux} flux`
  const lines = ['cost on the hosts:']
  for (const [host, c] of Object.entries(s.hosts)) {
    const roles = Object.entries(c.roles)
      .filter(([, r]) => r.kubectl || r.flux)
      .map(([role, r]) => `${role} ${r.kubectl + r.flux}`)
    lines.push(
      `  ${host}: ${calls(c)}` +
        `${roles.length ? ` (cluster calls by role: ${roles.join(', ')})` : ''}; connected in ${c.connectMs} ms`,
    )
  }
  const m = s.marks
  const sec = (ms: number | undefined) => (ms === undefined ? '?' : (ms / 1000).toFixed(2))
  const span = (a: string, b: string) => (m[a] !== undefined && m[b] !== undefined ? sec(m[b] - m[a]) : '?')
  const w = s.wall
  lines.push(
    `time: start-up ${sec(m.run)}s (node and zx ${sec(m.playbook)}, modules ${span('playbook', 'main')}, ` +
      `inventory ${span('main', 'inventory')}, secrets ${span('inventory', 'secrets')}); ` +
      `run ${span('run', 'recap')}s (connecting ${sec(w.connect)}, cluster calls ${sec(w.cluster)}, ` +
      `facts ${sec(w.facts)}, commands ${sec(w.commands)}, controller ${sec(w.controller)})`,
  )
  return lines
}

/**
 * The recap. Coloured as Ansible's: a host's name by its worst outcome (red failed or unreachable, yellow changed,
 * green otherwise), each count that is not 0 in its status's colour; the padding is the plain text's.
 */
export function formatRecap(e: Extract<RunEvent, { kind: 'recap' }>, p: Palette = PLAIN): string[] {
  const names = Object.keys(e.hosts)
  const width = Math.max(26, ...names.map((n) => n.length + 1))
  const lines = ['', `PLAY RECAP ${'*'.repeat(60)}`]
  const paint: Record<keyof HostCounts, Paint> = {
    ok: p.ok,
    changed: p.changed,
    unreachable: p.failed,
    failed: p.failed,
    skipped: p.skipped,
  }
  for (const n of names) {
    const c = e.hosts[n]
    const cell = (k: keyof HostCounts) => {
      const text = `${k}=${c[k]}`
      const pad = ' '.repeat(
        Math.max(0, (k === 'unreachable' ? 17 : k === 'changed' ? 12 : k === 'failed' ? 11 : 7) - text.length),
      )
      return (c[k] ? paint[k](text) : text) + pad
    }
    const host = c.failed || c.unreachable ? p.failed : c.changed ? p.changed : p.ok
    lines.push(
      (
        `${host(n)}${' '.repeat(width - n.length)}: ${cell('ok')} ${cell('changed')} ` +
        `${cell('unreachable')} ${cell('failed')} ${cell('skipped')}`
      ).trimEnd(),
    )
  }
  lines.push('', `finished in ${e.seconds.toFixed(2)}s, exit ${e.exitCode}`)
  if (e.retryFile) lines.push(`retry the failed and unreachable hosts with: --limit @${e.retryFile}`)
  if (e.rerun)
    lines.push(
      e.exitCode === 130
        ? `to finish the job, run it again: ${e.rerun}`
        : `once the failed and unreachable hosts are fixed, run it again: ${e.rerun}`,
    )
  return lines
}

/** Plain text: one line per finished step, failures with their message, the recap at the end. */
export class PlainReporter implements Reporter {
  private readonly opts: ReporterOptions
  private readonly write: (line: string) => void
  constructor(opts: ReporterOptions) {
    this.opts = opts
    const out = opts.terminal ?? process.stdout
    this.write = opts.write ?? ((l) => out.write(l + '\n'))
  }
  emit(e: RunEvent): void {
    for (const line of render(e, this.opts)) this.write(line)
  }
  close(): void {}
}

/** An event's lines, masked, then painted (so no escape splits a secret; the recap holds only names and counts). */
function render(e: RunEvent, opts: ReporterOptions): string[] {
  const p = opts.palette ?? PLAIN
  if (e.kind === 'recap')
    return [...formatRecap(e, p), ...(opts.verbosity >= 1 && e.stats ? formatStats(e.stats) : [])].map(mask)
  const lines = renderPlain(e, opts).map(mask)
  if (!p.on) return lines
  switch (e.kind) {
    case 'step-end': {
      const status = { ok: p.ok, changed: p.changed, failed: p.failed, skipped: p.skipped }[e.status]
      return lines.map((l, i) => (i === 0 ? status(l) : paintDiffLine(l, p)))
    }
    case 'unreachable':
    case 'error':
      return lines.map((l) => p.failed(l))
    case 'warning':
      return lines.map((l) => p.warning(l))
    case 'play-start':
      return lines.map((l) => (l.startsWith('skipping:') ? p.skipped(l) : l))
    default:
      return lines
  }
}

function paintDiffLine(l: string, p: Palette): string {
  if (l.startsWith('+++') || l.startsWith('---')) return l
  if (l.startsWith('+')) return p.diffAdd(l)
  if (l.startsWith('-')) return p.diffDel(l)
  if (l.startsWith('@@')) return p.diffHunk(l)
  return l
}

function renderPlain(e: RunEvent, opts: ReporterOptions): string[] {
  switch (e.kind) {
    case 'run-start':
      return [
        `${e.check ? 'CHECK MODE: nothing will be changed. ' : ''}` +
          `${e.playbook} on ${e.hosts.length} host(s) from ${e.inventory}`,
      ]
    case 'play-start':
      return [
        '',
        `PLAY [${e.play}] ${'*'.repeat(Math.max(3, 60 - e.play.length))}`,
        ...(e.hosts.length === 0 ? ['skipping: no hosts matched'] : []),
      ]
    case 'step-start':
      return []
    case 'step-end': {
      if (e.status === 'ok' && opts.verbosity < 1 && !e.message?.startsWith('rebooted'))
        return [formatStepLine({ ...e, message: undefined })]
      const out = [formatStepLine(e)]
      if (opts.showDiff && e.diff) out.push(...e.diff.replace(/\n$/, '').split('\n'))
      return out
    }
    case 'unreachable':
      return [`UNREACHABLE: [${e.host}] ${e.message}`]
    case 'command': {
      if (opts.verbosity < 1) return []
      const out = [
        `  [${e.host}] $ ${e.script.split('\n')[0]}${e.script.includes('\n') ? ' …' : ''}` +
          `  -> exit ${e.code} (${e.ms} ms)`,
      ]
      if (opts.verbosity >= 2) {
        if (e.stdout.trim())
          out.push(
            ...e.stdout
              .replace(/\n$/, '')
              .split('\n')
              .map((l) => `    | ${l}`),
          )
        if (e.stderr.trim())
          out.push(
            ...e.stderr
              .replace(/\n$/, '')
              .split('\n')
              .map((l) => `    ! ${l}`),
          )
      }
      return out
    }
    case 'facts':
      return opts.verbosity < 1
        ? []
        : [
            `  [${e.host}] read ${e.keys.length} fact${e.keys.length === 1 ? '' : 's'} in one round trip: ` +
              `${e.keys.join(', ')}  -> exit ${e.code} (${e.ms} ms)`,
          ]
    case 'warning':
      return [`WARNING: ${e.host ? `[${e.host}] ` : ''}${e.message}`]
    case 'info': {
      // Progress and tables from a step: the first line names the host, the rest (e.g. table rows) stay as written.
      const [first, ...rest] = e.message.split('\n')
      return [`[${e.host}] ${first}`, ...rest]
    }
    case 'error':
      return [`ERROR: ${e.message}`]
    case 'interrupted':
      return [`interrupted: ${e.message}`]
    case 'recap':
      return [...formatRecap(e), ...(opts.verbosity >= 1 && e.stats ? formatStats(e.stats) : [])]
  }
}

/**
 * A live spinner naming what each host is doing; finished steps that changed or failed stay on screen. ora is
 * loaded when the reporter is made, not with the tool's modules (a run without a terminal never needs it): the
 * spinner appears once it is there, a few ms into the run, while the first connections are made.
 */
export class TtyReporter implements Reporter {
  private readonly opts: ReporterOptions
  private spinner: Ora | undefined
  private closed = false
  private readonly active = new Map<string, string>()
  private readonly out: NodeJS.WriteStream
  constructor(opts: ReporterOptions) {
    this.opts = opts
    this.out = opts.terminal ?? process.stdout
    void import('ora').then(({ default: ora }) => {
      if (this.closed) return
      // Chosen only for a terminal outside CI (createReporter), so the spinner is always drawn; its colour (ora's
      // cyan) only when the lines are coloured too.
      this.spinner = ora({
        stream: this.out,
        discardStdin: false,
        isEnabled: true,
        color: this.opts.palette?.on ? 'cyan' : false,
      })
      this.refresh()
    })
  }
  emit(e: RunEvent): void {
    if (e.kind === 'step-start') {
      this.active.set(e.host, `${e.role} | ${e.step}`)
      this.refresh()
      return
    }
    if (e.kind === 'step-end') {
      this.active.delete(e.host)
      const show = e.status !== 'ok' || this.opts.verbosity >= 1
      if (show) this.persist(render(e, this.opts))
      this.refresh()
      return
    }
    if (e.kind === 'recap') this.spinner?.stop()
    const lines = render(e, this.opts)
    if (lines.length) this.persist(lines)
  }
  /** Lines from render(): masked and painted. */
  private persist(lines: string[]): void {
    const wasSpinning = this.spinner?.isSpinning ?? false
    this.spinner?.stop()
    for (const l of lines) this.out.write(l + '\n')
    if (wasSpinning && this.active.size > 0) this.spinner?.start()
  }
  private refresh(): void {
    const spinner = this.spinner
    if (!spinner) return
    if (this.active.size === 0) {
      spinner.stop()
      return
    }
    // One line per host, cut to the terminal's width: a wrapped line would leave the redraw a line short.
    const width = Math.max(20, (this.out.columns ?? 80) - 4)
    spinner.text = [...this.active].map(([h, s]) => cut(mask(`[${h}] ${s}`), width)).join('\n  ')
    if (!spinner.isSpinning) spinner.start()
  }
  close(): void {
    this.closed = true
    this.spinner?.stop()
  }
}

function cut(line: string, width: number): string {
  return line.length > width ? `${line.slice(0, width - 1)}…` : line
}

/**
 * One JSON object per line, for CI and tools. It follows the terminal's verbosity rules: commands and fact round
 * trips only from -v, command output only from -vv (a CI log of --json is read by more people than the run's own
 * terminal). The file is the owner's only (0600, also when it existed with another mode) and never reached through
 * a symlink planted at its name.
 */
export class JsonReporter implements Reporter {
  private readonly fd: number
  private readonly verbosity: number
  constructor(file: string, verbosity = 0) {
    this.verbosity = verbosity
    this.fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o600)
    fchmodSync(this.fd, 0o600)
  }
  emit(e: RunEvent): void {
    const shown = jsonView(e, this.verbosity)
    if (shown) writeSync(this.fd, mask(JSON.stringify({ time: new Date().toISOString(), ...shown })) + '\n')
  }
  close(): void {
    closeSync(this.fd)
  }
}

/** An event as --json shows it at this verbosity, or null when that verbosity shows nothing of it. */
export function jsonView(e: RunEvent, verbosity: number): RunEvent | null {
  if ((e.kind === 'command' || e.kind === 'facts') && verbosity < 1) return null
  if (e.kind === 'command' && verbosity < 2) return { ...e, stdout: '', stderr: '' }
  return e
}

/** Keeps events (masked) for tests. */
export class RecordingReporter implements Reporter {
  readonly events: RunEvent[] = []
  readonly lines: string[] = []
  private readonly plain: PlainReporter
  constructor(verbosity = 2) {
    this.plain = new PlainReporter({ verbosity, showDiff: true, write: (l) => this.lines.push(l) })
  }
  emit(e: RunEvent): void {
    this.events.push(JSON.parse(mask(JSON.stringify(e))) as RunEvent)
    this.plain.emit(e)
  }
  close(): void {}
}

export class FanOut implements Reporter {
  private readonly reporters: Reporter[]
  constructor(reporters: Reporter[]) {
    this.reporters = reporters
  }
  emit(e: RunEvent): void {
    for (const r of this.reporters) r.emit(e)
  }
  close(): void {
    for (const r of this.reporters) r.close()
  }
}

/**
 * The live spinner animates only on a TTY (as ora's is-interactive decides: not with TERM=dumb, not with CI set to
 * anything), and one that knows its width: a pseudo-terminal without a size (`script` run without one, some CI
 * runners, `ssh -t` from a pipe) reports 0 columns, and redrawing on it never ends. Elsewhere: plain lines.
 */
export function canDrawSpinner(
  out: Pick<NodeJS.WriteStream, 'isTTY' | 'columns'>,
  env: Record<string, string | undefined> = process.env,
): boolean {
  return Boolean(out.isTTY) && env.TERM !== 'dumb' && env.CI === undefined && (out.columns ?? 0) >= 20
}

/**
 * The reporter for a run: the spinner or plain lines on stdout (or `write`), coloured when useColour says so (a
 * `write` of the caller's is no terminal: plain unless `colour` asks), and --json beside them, never coloured.
 */
export async function createReporter(opts: ReporterOptions): Promise<Reporter> {
  const out = opts.terminal ?? process.stdout
  const env = opts.env ?? process.env
  const tty = opts.tty ?? (opts.write ? false : canDrawSpinner(out, env))
  const palette = opts.palette ?? (await loadPalette(opts.colour ?? (opts.write ? false : useColour(out, env))))
  const o = { ...opts, palette }
  const main: Reporter = tty ? new TtyReporter(o) : new PlainReporter(o)
  return opts.jsonFile ? new FanOut([main, new JsonReporter(opts.jsonFile, opts.verbosity)]) : main
}
