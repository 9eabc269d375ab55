import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { asRoot, bounded, quote } from '../../lib/shell.ts'

// Each word goes through a real shell (dash as /bin/sh on Debian, and bash: the login shell that runs an
// SSH command line may be either) and must come out byte for byte.

const WORDS: Record<string, string> = {
  'single quote': "it's",
  'only single quotes': "'''",
  'double quotes': 'say "hi"',
  newline: 'line one\nline two',
  'trailing newline': 'ends with newline\n',
  'dollar HOME': '$HOME',
  'braced var': '${HOME}/x',
  'command substitution': '$(id)',
  backticks: '`id`',
  backslashes: 'C:\\dir\\n\\\\',
  glob: '*',
  'glob in a word': 'file*.txt',
  'question mark and brackets': '[ab]?',
  empty: '',
  spaces: '  two  spaces  ',
  tab: 'a\tb',
  unicode: 'héllo wörld ✓ 日本',
  'leading dash': '-n',
  'leading dashes with space': '--name=x y',
  tilde: '~',
  'tilde path': '~/x',
  semicolon: 'a; rm -rf /nonexistent-dir-for-test',
  'pipe and ampersand': 'a | b && c &',
  redirect: '> /tmp/should-not-exist-shell-test',
  'hash comment': '# not a comment',
  'history bang': '!!',
  braces: '{a,b}',
  'safe word': 'abc-1.2_3/x:y,z@%+=',
  percent: '%s %d',
  'mixed quotes': `'"'"'`,
}

let dir: string
const shells = ['/bin/sh', 'bash']

/** Run a command line in `shell` with cwd=dir (which has files, so an unquoted * would expand). */
function run(shell: string, line: string, stdin = ''): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(shell, ['-c', line], {
    cwd: dir,
    input: stdin,
    encoding: 'utf8',
    env: { ...process.env, HOME: '/home/someone' },
  })
  return { stdout: r.stdout, stderr: r.stderr, status: r.status }
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'shell-test-'))
  for (const f of ['file1.txt', 'file2.txt', 'a', 'b']) writeFileSync(join(dir, f), '')
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('quote', () => {
  it('/bin/sh is dash here (the shell the targets use)', () => {
    expect(execFileSync('readlink', ['-f', '/bin/sh'], { encoding: 'utf8' }).trim()).toMatch(/dash$/)
  })

  it('leaves safe words alone and single-quotes the rest', () => {
    expect(quote('abc')).toBe('abc')
    expect(quote('/etc/rancher/k3s/config.yaml')).toBe('/etc/rancher/k3s/config.yaml')
    expect(quote('root:root')).toBe('root:root')
    expect(quote('')).toBe("''")
    expect(quote('a b')).toBe("'a b'")
    expect(quote("it's")).toBe("'it'\\''s'")
    expect(quote('$HOME')).toBe("'$HOME'")
  })

  for (const shell of shells) {
    describe(`through ${shell} -c`, () => {
      for (const [name, word] of Object.entries(WORDS)) {
        it(`${name}: ${JSON.stringify(word)}`, () => {
          const r = run(shell, `printf '%s\\n' ${quote(word)}`)
          expect(r.stderr).toBe('')
          expect(r.status).toBe(0)
          expect(r.stdout).toBe(`${word}\n`)
          // and it is exactly one word
          expect(run(shell, `set -- ${quote(word)}; echo $#`).stdout).toBe('1\n')
        })
      }
    })
  }
})

describe('asRoot', () => {
  const script = `x='inner value'; printf '%s|%s|%s\\n' "$x" "it's" "$(printf sub)"; printf '%s\\n' "$HOME"`
  const expected = "inner value|it's|sub\n/home/someone\n"

  it('as root: sh -c with the script quoted, run directly (no sudo)', () => {
    const line = asRoot(script, 'root')
    expect(line.startsWith('sh -c ')).toBe(true)
    expect(line).not.toContain('sudo')
    for (const shell of shells) {
      const r = run(shell, line)
      expect(r.stderr).toBe('')
      expect(r.stdout).toBe(expected)
    }
  })

  it('as root: the script’s exit code comes back', () => {
    expect(run('/bin/sh', asRoot('exit 7', 'root')).status).toBe(7)
  })

  describe('as another user: sudo -n sh -c <script> (with a stand-in sudo that records its argv)', () => {
    let binDir: string
    let logFile: string
    beforeAll(() => {
      binDir = join(dir, 'bin')
      mkdirSync(binDir)
      logFile = join(dir, 'sudo-argv')
      // Not sudo: records its arguments NUL-separated, insists on -n first (never prompt), then runs the rest.
      writeFileSync(
        join(binDir, 'sudo'),
        `#!/bin/sh\nprintf '%s\\0' "$@" > "$SUDO_LOG"\n[ "$1" = "-n" ] || { echo "stand-in sudo: -n missing" >&2; exit 99; }\nshift\nexec "$@"\n`,
      )
      chmodSync(join(binDir, 'sudo'), 0o755)
    })

    for (const shell of shells) {
      it(`sudo receives exactly [-n, sh, -c, script] and the script runs intact (${shell})`, () => {
        const line = asRoot(script, 'pi')
        expect(line.startsWith('sudo -n sh -c ')).toBe(true)
        const r = spawnSync(shell, ['-c', line], {
          cwd: dir,
          encoding: 'utf8',
          env: {
            ...process.env,
            HOME: '/home/someone',
            PATH: `${binDir}:${process.env.PATH ?? ''}`,
            SUDO_LOG: logFile,
          },
        })
        expect(r.stderr).toBe('')
        expect(r.stdout).toBe(expected)
        expect(readFileSync(logFile, 'utf8').split('\0').slice(0, -1)).toEqual(['-n', 'sh', '-c', script])
      })
    }
  })
})

describe('asRoot with a sudo password (become_password_ref)', () => {
  let binDir: string
  let logFile: string
  const PASSWORD = "pa ss'w$(id)rd"
  beforeAll(() => {
    binDir = join(dir, 'pwbin')
    mkdirSync(binDir)
    logFile = join(dir, 'sudo-pw-argv')
    // Not sudo: `-S -p '' -v` reads one line from stdin and, when it is the password, leaves a timestamp file;
    // `-n sh -c SCRIPT` runs only with that timestamp (as sudo does). Every argv is logged, NUL-separated.
    writeFileSync(
      join(binDir, 'sudo'),
      [
        '#!/bin/sh',
        `printf '%s\\0' "$@" >> "$SUDO_LOG"; printf '\\n' >> "$SUDO_LOG"`,
        'if [ "$1" = -S ]; then IFS= read -r got; [ "$got" = "$WANT" ] && touch "$SUDO_LOG.ts" && exit 0; echo "Sorry, try again." >&2; exit 1; fi',
        '[ "$1" = -n ] || exit 99',
        '[ -e "$SUDO_LOG.ts" ] || { echo "sudo: a password is required" >&2; exit 1; }',
        'shift; exec "$@"',
        '',
      ].join('\n'),
    )
    chmodSync(join(binDir, 'sudo'), 0o755)
  })
  const runWith = (want: string, stdin: string) => {
    rmSync(`${logFile}.ts`, { force: true })
    rmSync(logFile, { force: true })
    return spawnSync('/bin/sh', ['-c', asRoot('cat; echo done', 'owner', { password: true })], {
      input: stdin,
      encoding: 'utf8',
      env: { ...process.env, PATH: `${binDir}:${process.env.PATH ?? ''}`, SUDO_LOG: logFile, WANT: want },
    })
  }

  it('takes the first stdin line as the password, never in argv, and the script keeps the rest of stdin', () => {
    const r = runWith(PASSWORD, `${PASSWORD}\nline one\nline two\n`)
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
    expect(r.stdout).toBe('line one\nline two\ndone\n')
    expect(readFileSync(logFile, 'utf8')).not.toContain('pa ss')
  })

  it('a wrong password stops before the script, saying which secret sudo did not take', () => {
    const r = runWith(PASSWORD, 'wrong\nline one\n')
    expect(r.status).toBe(126)
    expect(r.stdout).toBe('')
    expect(r.stderr).toContain('sudo did not take the password from become_password_ref')
  })
})

describe('bounded: a command that may block, stopped on the host after a bound', () => {
  const run = (script: string) => spawnSync('sh', ['-c', script], { encoding: 'utf8' })

  it('a command past its bound is stopped: exit 124 and a line naming what and the setting', () => {
    const r = run(bounded('sleep 30', 1, 'restarting k3s', 'k3s_start_timeout'))
    expect([r.status, r.stderr]).toEqual([124, 'restarting k3s did not finish within 1s (k3s_start_timeout)\n'])
  })

  it('within its bound a command keeps its own exit code and output', () => {
    expect(run(bounded("printf 'done'", 5, 'x', 'y'))).toMatchObject({ status: 0, stdout: 'done', stderr: '' })
    expect(run(bounded("sh -c 'echo nope >&2; exit 3'", 5, 'x', 'y'))).toMatchObject({ status: 3, stderr: 'nope\n' })
    // In a `set -e` script a failure still stops the script.
    expect(run(`set -e; ${bounded('false', 5, 'x', 'y')}; echo after`)).toMatchObject({ status: 1, stdout: '' })
  })
})
