// Running controller-side commands: capture output, turn failures into one-line errors, and make
// sure the tools the lab needs are installed (with apt-get when they are not).
import { spawn } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { constants as osConstants } from 'node:os'
import { join } from 'node:path'

/** An error the CLI prints as one line. */
export class LabError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts)
    this.name = 'LabError'
  }
}

export interface RunResult {
  code: number
  stdout: string
  stderr: string
}

export interface RunOptions {
  input?: string
  /** Return the result instead of throwing when the exit code is not 0. */
  allowFail?: boolean
  env?: NodeJS.ProcessEnv
  /** Kill the command (SIGKILL) after this many ms: a command entering a host that is shutting down can hang. */
  timeoutMs?: number
}

export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    child.on('error', (e) => reject(new LabError(`cannot run ${cmd}: ${e.message}`, { cause: e })))
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs)
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer)
      const result = {
        code: code ?? 128 + (signal ? osConstants.signals[signal] : 0),
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
      }
      if (result.code !== 0 && !opts.allowFail) {
        const why = lastLine(result.stderr) || lastLine(result.stdout) || `exit ${result.code}`
        reject(new LabError(`${cmd} ${args.join(' ')}: ${why}`))
      } else resolve(result)
    })
    child.stdin.on('error', () => {}) // the command may exit without reading its input
    child.stdin.end(opts.input ?? '')
  })
}

function lastLine(text: string): string {
  return text.trim().split('\n').pop() ?? ''
}

/** Absolute path of a command, looking in the sbin directories too (root's tools live there). */
export function which(cmd: string): string | undefined {
  const dirs = new Set([
    ...(process.env.PATH ?? '').split(':'),
    '/usr/local/sbin',
    '/usr/sbin',
    '/sbin',
    '/usr/bin',
    '/bin',
  ])
  for (const dir of dirs) {
    if (!dir) continue
    try {
      accessSync(join(dir, cmd), constants.X_OK)
      return join(dir, cmd)
    } catch {}
  }
  return undefined
}

/** Debian package of each command the lab runs. */
const PACKAGE_OF: Readonly<Record<string, string>> = {
  'systemd-nspawn': 'systemd-container',
  debootstrap: 'debootstrap',
  iptables: 'iptables',
  ip: 'iproute2',
  nsenter: 'util-linux',
  mount: 'mount',
  'ssh-keygen': 'openssh-client',
}

export function requireRootOnLinux(): void {
  if (process.platform !== 'linux')
    throw new LabError(`the lab needs Linux (systemd-nspawn); this is ${process.platform}`)
  if (process.getuid?.() !== 0) throw new LabError('the lab needs root (mounts, bridges, containers): run it with sudo')
}

/** Installs the packages of missing commands with apt-get and says so on stderr. */
export async function ensureTools(cmds: readonly string[]): Promise<void> {
  requireRootOnLinux()
  const missing = cmds.filter((c) => !which(c))
  if (missing.length === 0) return
  const packages = [...new Set(missing.map((c) => PACKAGE_OF[c] ?? c))]
  const apt = which('apt-get')
  if (!apt) throw new LabError(`missing ${missing.join(', ')}: install the packages ${packages.join(' ')}`)
  process.stderr.write(`lab: installing ${packages.join(' ')} with apt-get (missing ${missing.join(', ')})\n`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  try {
    await run(apt, ['update', '-qq'], { env })
    await run(apt, ['install', '-y', '-qq', '--no-install-recommends', ...packages], { env })
  } catch (e) {
    throw new LabError(
      `apt-get could not install ${packages.join(' ')} (${(e as Error).message}); install them by hand`,
    )
  }
  const still = cmds.filter((c) => !which(c))
  if (still.length) throw new LabError(`still missing after apt-get: ${still.join(', ')}`)
}
