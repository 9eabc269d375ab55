// One error family for everything the tool reports to a user. Each kind maps to an exit code
// and carries where it happened (file:line:col, host, role > step) so messages say what and where.

export type ErrorKind = 'usage' | 'inventory' | 'secrets' | 'hostkey' | 'unreachable' | 'step' | 'timeout' | 'interrupted'

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

  constructor(kind: ErrorKind, message: string, opts: { place?: ErrorPlace; hint?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'ProvisionError'
    this.kind = kind
    this.place = opts.place ?? {}
    this.hint = opts.hint
  }

  /** "file:line:col: message" or "host: message", then the hint on its own line. */
  describe(): string {
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
