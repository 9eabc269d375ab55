// Building remote command lines. Targets run dash under `sudo sh -c`, so quoting is plain POSIX
// single quotes (zx's $'...' quoting is bash-only and breaks there).

/** Quote one word for a POSIX shell: wrap in single quotes, and write each ' as '\''. */
export function quote(word: string): string {
  if (word === '') return "''"
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word
  return `'${word.replace(/'/g, `'\\''`)}'`
}

/**
 * Wrap a script so it runs as root: `sudo -n sh -c '<script>'`; -n so a missing NOPASSWD rule fails instead of
 * hanging on a prompt. With `password` (a host whose sudo asks for one: become_password_ref), the first line of
 * stdin is the password: the shell reads that one line (the rest stays the script's stdin), hands it to
 * `sudo -S -v` through the printf builtin (never argv), and the script then runs on sudo's fresh timestamp.
 */
export function asRoot(script: string, loginUser: string, opts: { password?: boolean } = {}): string {
  if (loginUser === 'root') return `sh -c ${quote(script)}`
  if (!opts.password) return `sudo -n sh -c ${quote(script)}`
  return [
    'IFS= read -r pi_provision_pw',
    `printf '%s\\n' "$pi_provision_pw" | sudo -S -p '' -v 2>/dev/null || { unset pi_provision_pw; ` +
      `echo 'sudo did not take the password from become_password_ref' >&2; exit 126; }`,
    'unset pi_provision_pw',
    `sudo -n sh -c ${quote(script)}`,
  ].join('; ')
}

/**
 * A command that may block (a Type=notify unit with TimeoutStartSec=0, as k3s's, waits for ever for a k3s that
 * never gets ready), bounded on the host: after `seconds` it is stopped and the script fails with a line saying
 * what did not finish and which variable sets the bound. Exit 124, as timeout(1).
 */
export function bounded(command: string, seconds: number, what: string, setting: string): string {
  const said = quote(`${what} did not finish within ${seconds}s (${setting})`)
  const timedOut = `if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo ${said} >&2; exit 124; fi`
  return `( timeout -k 10 ${seconds} ${command}; rc=$?; ${timedOut}; exit $rc )`
}
