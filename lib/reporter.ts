// The ways a run's events are shown: a spinner on a TTY (tty-reporter.ts), plain lines for CI and pipes, JSON lines
// for machines (--json FILE), and a recording reporter for tests. Everything passes through mask(). Lines are
// coloured as Ansible colours them (palette.ts) on a terminal, never in --json or a file we write.

import { closeSync, constants, fchmodSync, openSync, writeSync } from 'node:fs'
import { mask } from './mask.ts'
import { loadPalette, useColour } from './palette.ts'
import { render } from './report-lines.ts'
import type { Reporter, ReporterOptions, RunEvent } from './run-events.ts'
import { canDrawSpinner, TtyReporter } from './tty-reporter.ts'

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
