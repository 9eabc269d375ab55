// One error family for everything the tool reports to a user. Each kind maps to an exit code
// and carries where it happened (file:line:col, host, role > step) so messages say what and where.

export type ErrorKind =
  | 'usage'
  | 'inventory'
  | 'secrets'
  | 'hostkey'
  | 'unreachable'
  | 'step'
  | 'timeout'
  | 'interrupted'

export interface ErrorPlace {
  file?: string
  line?: number
  col?: number
  host?: string
  role?: string
  step?: string
}

export class ProvisionError extends Error {
  readonly kind: ErrorKind
  readonly place: ErrorPlace
  readonly hint?: string
  readonly #problems: readonly ProvisionError[] | undefined

  constructor(
    kind: ErrorKind,
    message: string,
    opts: { place?: ErrorPlace; hint?: string; cause?: unknown; problems?: readonly ProvisionError[] } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'ProvisionError'
    this.kind = kind
    this.place = opts.place ?? {}
    this.hint = opts.hint
    this.#problems = opts.problems && opts.problems.length > 0 ? [...opts.problems] : undefined
  }

  /**
   * Several problems found together (every error of an inventory file, every bad -e): one error whose message is
   * a summary, whose place is the first problem's, and whose describe() lists every problem with its place and hint.
   * A single problem is returned as it is.
   */
  static all(problems: readonly ProvisionError[], summary: string, kind?: ErrorKind): ProvisionError {
    if (problems.length === 1) return problems[0]
    return new ProvisionError(kind ?? problems[0]?.kind ?? 'usage', summary, { place: problems[0]?.place, problems })
  }

  /** Every problem this error reports: itself, or the ones it was made of (ProvisionError.all). */
  get problems(): readonly ProvisionError[] {
    return this.#problems ?? [this]
  }

  /**
   * "file:line:col: message" or "host: message", then the hint on its own line; for several problems, the summary
   * and then each.
   */
  describe(): string {
    if (this.#problems) return [this.message, ...this.#problems.map((p) => p.describe())].join('\n')
    const { file, line, col, host, role, step } = this.place
    let where = ''
    if (file) where = line ? `${file}:${line}:${col ?? 1}` : file
    else if (host) where = [host, role, step].filter(Boolean).join(' > ')
    const head = where ? `${where}: ${this.message}` : this.message
    return this.hint ? `${head}\n  hint: ${this.hint}` : head
  }
}

export const isProvisionError = (e: unknown): e is ProvisionError => e instanceof ProvisionError

/** Text of any thrown value, for reports. */
export function errorText(e: unknown): string {
  if (e instanceof ProvisionError) return e.describe()
  if (e instanceof Error) return e.message
  return String(e)
}

/** The errno code of a Node fs/net error (ENOENT, EACCES...), if it is one. */
export function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' ? e.code : undefined
}
