// Building remote command lines. Targets run dash under `sudo sh -c`, so quoting is plain POSIX
// single quotes (zx's $'...' quoting is bash-only and breaks there).

/** Quote one word for a POSIX shell: wrap in single quotes, and write each ' as '\''. */
export function quote(word: string): string {
  if (word === '') return "''"
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word
  return `'${word.replace(/'/g, `'\\''`)}'`
}

/** Join argv into one command line, each word quoted. */
export function commandLine(argv: readonly string[]): string {
  return argv.map(quote).join(' ')
}

/** Wrap a script so it runs as root: `sudo -n sh -c '<script>'`; -n so a missing NOPASSWD rule fails instead of hanging on a prompt. */
export function asRoot(script: string, loginUser: string): string {
  if (loginUser === 'root') return `sh -c ${quote(script)}`
  return `sudo -n sh -c ${quote(script)}`
}

/** A heredoc-free way to put text in a file: the content travels on stdin, never in argv. */
export function writeFromStdin(path: string): string {
  return `cat > ${quote(path)}`
}

/**
 * A command that may block (a Type=notify unit with TimeoutStartSec=0, as k3s's, waits for ever for a k3s that
 * never gets ready), bounded on the host: after `seconds` it is stopped and the script fails with a line saying
 * what did not finish and which variable sets the bound. Exit 124, as timeout(1).
 */
export function bounded(command: string, seconds: number, what: string, setting: string): string {
  const said = quote(`${what} did not finish within ${seconds}s (${setting})`)
  return `( timeout -k 10 ${seconds} ${command}; rc=$?; if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo ${said} >&2; exit 124; fi; exit $rc )`
}
