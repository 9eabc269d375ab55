// Colour or not, and Ansible's colours for each kind of line: zx's chalk on a terminal (or with FORCE_COLOR), never
// with NO_COLOR; nothing is loaded for a run that does not colour.

export type Paint = (text: string) => string

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
