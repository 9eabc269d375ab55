// The live spinner on a terminal (ora, loaded when the reporter is made): what each host is doing now; finished
// steps that changed or failed stay on screen.

import type { Ora } from 'ora'
import { mask } from './mask.ts'
import { render } from './report-lines.ts'
import type { Reporter, ReporterOptions, RunEvent } from './run-events.ts'

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
