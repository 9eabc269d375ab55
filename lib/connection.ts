// Connections to hosts. One persistent SSH connection per host (node-ssh over ssh2), strict
// host-key checking against known_hosts, sudo through POSIX quoting, secrets on stdin only.
// A LocalConnection runs the same scripts on the controller (tests, and controller-side work).

import { spawn } from 'node:child_process'
import { NodeSSH } from 'node-ssh'
import pLimit from 'p-limit'
import { ProvisionError } from './errors.ts'
import { expandPath } from './controller-paths.ts'
import { addKnownHost } from './knownhosts-write.ts'
import {
  checkHostKey,
  fingerprint,
  knownKeyTypes,
  loadKnownHosts,
  withSessionKey,
  type HostKeyVerdict,
  type KnownHosts,
} from './knownhosts.ts'
import { asRoot } from './shell.ts'
import { keyForSsh } from './sshkeys.ts'
import { openSocket, waitForSshBanner } from './ssh-banner.ts'
import { hostKeyError, orderHostKeyAlgorithms } from './ssh-hostkeys.ts'
import { PreferringAgent, publicKeyBlob, readKey, readPublicBeside } from './ssh-identity.ts'

export interface RunOptions {
  /** Run as root (sudo -n sh -c). Default true: provisioning is root's work. */
  sudo?: boolean
  /** Text for the command's stdin: the only way secrets reach a remote command. */
  stdin?: string
  /**
   * If a connection must be made first: one attempt within this many ms, instead of the bounded retries (polls
   * use it).
   */
  connectWithinMs?: number
}

export interface RunResult {
  code: number
  stdout: string
  stderr: string
}

export interface Connection {
  readonly host: string
  /** Run a POSIX sh script on the host. Never rejects on a non-zero exit; rejects when the host cannot be reached. */
  run(script: string, opts?: RunOptions): Promise<RunResult>
  /** Drop the connection (if any) so the next run() connects again, e.g. after a reboot. */
  reset(): Promise<void>
  close(): Promise<void>
  /**
   * Resolve true once the host's sshd greets again, false at the deadline (epoch ms); absent where there is no
   * sshd.
   */
  sshAnswers?(deadline: number): Promise<boolean>
}

export interface SshTarget {
  host: string
  address: string
  port: number
  user: string
  keyFile?: string
  /** Key text from the secrets store, when the inventory names ssh_key_ref. */
  keyText?: string
  /** sudo's password from the secrets store (become_password_ref), for a login user without a NOPASSWD rule. */
  sudoPassword?: string
  /** Passphrase of an encrypted key (ssh_key_passphrase_ref). */
  keyPassphrase?: string
  /** The secret reference keyText came from, for messages. */
  keyRef?: string
  /**
   * An ssh-agent's socket (SSH_AUTH_SOCK): its keys are offered after the key file's, as OpenSSH does. A key file
   * that is a public key (IdentityFile ~/.ssh/pi.pub, as the 1Password SSH agent's users write it), or an encrypted
   * key with its .pub beside it, names the agent's key to offer first.
   */
  agentSocket?: string
  knownHostsFile: string
  /** Accept and record the key of a host that is not in known_hosts yet (never a changed key). */
  trustNewHostKeys: boolean
  /**
   * Whether a key accepted under trustNewHostKeys is written to known_hosts. Default true. False
   * (check mode: nothing is written on the controller either): the key is accepted without
   * touching the file or its directory, and this SshConnection remembers it in memory, so its
   * reconnects must meet the same key (another one is refused as changed).
   */
  recordNewHostKeys?: boolean
  connectTimeoutSec: number
  /**
   * Told the fingerprint of a key accepted for a host seen for the first time (once per
   * SshConnection), and whether it was written to known_hosts (false: recordNewHostKeys is off).
   */
  onNewHostKey?: (fingerprint: string, recorded: boolean) => void
  /**
   * Told of each malformed known_hosts line, which is skipped (as OpenSSH does) while the rest of
   * the file still counts: "/path/known_hosts:7: skipped a malformed line (bad base64 in the key)".
   * At most once per file, line and reason in this process, however many hosts share the file
   * and however often they connect (resetKnownHostsWarnings starts over).
   */
  onKnownHostsWarning?: (message: string) => void
}

// Which malformed known_hosts lines were already reported in this process (path, line, reason).
const reportedKnownHostsWarnings = new Set<string>()

/** Forget which known_hosts warnings were reported, so they are reported again (for tests). */
export function resetKnownHostsWarnings(): void {
  reportedKnownHostsWarnings.clear()
}

function reportKnownHostsWarnings(known: KnownHosts, report: ((message: string) => void) | undefined): void {
  if (!report) return // unreported: a later target with a listener still hears of it
  for (const w of known.warnings) {
    const id = JSON.stringify([known.path, w.line, w.reason])
    if (reportedKnownHostsWarnings.has(id)) continue
    reportedKnownHostsWarnings.add(id)
    report(`${known.path}:${w.line}: skipped a malformed line (${w.reason})`)
  }
}

// sshd's default MaxSessions is 10: stay under it, leaving room for a person's own session.
const CHANNELS_PER_HOST = 8
// A Pi that is still booting answers on port 22 but refuses logins for a moment (/run/nologin): be patient.
const CONNECT_ATTEMPTS = 4

export class SshConnection implements Connection {
  readonly host: string
  private readonly target: SshTarget
  private ssh: NodeSSH | null = null
  private connecting: Promise<NodeSSH> | null = null
  private readonly channels = pLimit(CHANNELS_PER_HOST)
  /** A key accepted for first use but not recorded (recordNewHostKeys false): later connects must meet it again. */
  private unrecordedKey: Buffer | null = null

  constructor(target: SshTarget) {
    this.host = target.host
    this.target = target
  }

  sshAnswers(deadline: number): Promise<boolean> {
    return waitForSshBanner(this.target.address, this.target.port, deadline)
  }

  async run(script: string, opts: RunOptions = {}): Promise<RunResult> {
    const password = opts.sudo !== false && this.target.user !== 'root' ? this.target.sudoPassword : undefined
    const line = opts.sudo === false ? script : asRoot(script, this.target.user, { password: password !== undefined })
    // The sudo password goes first on stdin, one line (asRoot reads exactly that line); the command's own stdin
    // follows.
    const stdin = password !== undefined ? `${password}\n${opts.stdin ?? ''}` : opts.stdin
    return this.channels(async () => {
      const ssh =
        opts.connectWithinMs === undefined ? await this.connect() : await this.connectQuick(opts.connectWithinMs)
      const lost = (why: string, cause?: unknown) => {
        // The connection died under the command: forget it so the next run reconnects.
        if (this.ssh === ssh) this.ssh = null
        return new ProvisionError('unreachable', `connection lost while running a command: ${why}`, {
          place: { host: this.host },
          cause,
        })
      }
      let r
      try {
        r = await ssh.execCommand(line, { stdin, noTrim: true })
      } catch (e) {
        throw lost((e as Error).message, e)
      }
      // ssh2 closes every channel when the connection drops: the command then "ends" with neither exit code nor signal.
      if (r.code === null && r.signal === null) throw lost('the channel closed without an exit status')
      if (r.code === null)
        return {
          code: 255,
          stdout: r.stdout,
          stderr: `${r.stderr}${r.stderr && !r.stderr.endsWith('\n') ? '\n' : ''}killed by signal ${r.signal}\n`,
        }
      return { code: r.code, stdout: r.stdout, stderr: r.stderr }
    })
  }

  async reset(): Promise<void> {
    const ssh = this.ssh
    this.ssh = null
    this.connecting = null
    ssh?.dispose()
  }

  async close(): Promise<void> {
    await this.reset()
  }

  /** Connect once per host; concurrent callers share the attempt. Bounded retries with backoff. */
  connect(): Promise<NodeSSH> {
    if (this.ssh?.isConnected()) return Promise.resolve(this.ssh)
    if (!this.connecting) {
      this.connecting = this.connectWithRetries().finally(() => {
        this.connecting = null
      })
    }
    return this.connecting
  }

  /** One connection attempt bounded by `ms` (for polls with their own deadline, like waiting out a reboot). */
  private async connectQuick(ms: number): Promise<NodeSSH> {
    if (this.ssh?.isConnected()) return this.ssh
    return this.connectOnce(Math.max(500, Math.min(ms, this.target.connectTimeoutSec * 1000)))
  }

  private async connectWithRetries(): Promise<NodeSSH> {
    let last: unknown
    const started = Date.now()
    for (let attempt = 1; attempt <= CONNECT_ATTEMPTS; attempt++) {
      try {
        return await this.connectOnce()
      } catch (e) {
        last = e
        // A host-key problem or a refused login will not fix itself: do not retry those.
        if (e instanceof ProvisionError && (e.kind === 'hostkey' || /authentication|SSH key/i.test(e.message))) throw e
        if (attempt < CONNECT_ATTEMPTS) await sleep(250 * 2 ** attempt)
      }
    }
    // Say how long was spent: "no answer within 2s" alone reads wrong after four tries and their back-off.
    if (last instanceof ProvisionError && last.kind === 'unreachable')
      throw new ProvisionError(
        'unreachable',
        `${last.message} (${CONNECT_ATTEMPTS} attempts over ${((Date.now() - started) / 1000).toFixed(1)}s)`,
        { place: last.place, hint: last.hint, cause: last },
      )
    throw last
  }

  /**
   * The key to log in with, read (and converted or decrypted) once per connection: none when only the agent is
   * used; `prefer`: the public key of the agent's key to offer first (a .pub key file, or an encrypted key's .pub).
   */
  private async privateKey(): Promise<{ key?: string; prefer?: Buffer }> {
    const t = this.target
    let text: string | undefined
    try {
      if (t.keyText !== undefined)
        return {
          key: keyForSsh(t.keyText, { what: `ssh_key_ref ${t.keyRef ?? ''}`.trim(), host: t.host }, t.keyPassphrase),
        }
      if (t.keyFile) {
        text = await readKey(t.keyFile, t.host)
        const pub = publicKeyBlob(text)
        if (pub) {
          if (!t.agentSocket)
            throw new ProvisionError(
              'unreachable',
              `cannot use the SSH key (ssh_key_file ${t.keyFile}): it is a public key, ` +
                'whose private half must be in an ssh-agent, and SSH_AUTH_SOCK is not set',
              {
                place: { host: t.host },
                hint:
                  'start the agent that holds the key (the 1Password SSH agent: export SSH_AUTH_SOCK=<its socket>), ' +
                  'or name the private key',
              },
            )
          return { prefer: pub }
        }
        return { key: keyForSsh(text, { what: `ssh_key_file ${t.keyFile}`, host: t.host }, t.keyPassphrase) }
      }
    } catch (e) {
      // An encrypted key and an agent: the agent most likely holds it (ssh-add), as OpenSSH would find; its .pub
      // beside it says which of the agent's keys it is.
      if (t.agentSocket && t.keyPassphrase === undefined && e instanceof ProvisionError && /encrypted/.test(e.message))
        return { prefer: t.keyFile ? await readPublicBeside(t.keyFile) : undefined }
      throw e
    }
    // No key and no agent: the login fails, and says what to set (unreachable()).
    return {}
  }

  private async connectOnce(timeoutMs = this.target.connectTimeoutSec * 1000): Promise<NodeSSH> {
    const t = this.target
    const khPath = expandPath(t.knownHostsFile, process.cwd())
    const fromFile = await loadKnownHosts(khPath)
    reportKnownHostsWarnings(fromFile, t.onKnownHostsWarning)
    const pinned = this.unrecordedKey
    const known = pinned ? withSessionKey(fromFile, t.address, t.port, pinned) : fromFile
    let verdict: HostKeyVerdict | null = null
    let presented: Buffer | null = null
    const preferred = knownKeyTypes(known, t.address, t.port)
    const { key: privateKey, prefer } = await this.privateKey()
    const agent = t.agentSocket && prefer ? new PreferringAgent(t.agentSocket, prefer) : t.agentSocket
    const ssh = new NodeSSH()
    try {
      const sock = await openSocket(t.address, t.port, timeoutMs)
      await ssh.connect({
        sock,
        host: t.address,
        port: t.port,
        username: t.user,
        privateKey,
        passphrase: privateKey !== undefined ? t.keyPassphrase : undefined,
        agent,
        readyTimeout: timeoutMs,
        keepaliveInterval: 5000,
        keepaliveCountMax: 3,
        // Like OpenSSH: ask for a key type we already know for this host, so a host with several keys matches.
        algorithms: preferred.length > 0 ? { serverHostKey: orderHostKeyAlgorithms(preferred) } : undefined,
        hostVerifier: (key: Buffer) => {
          presented = key
          verdict = checkHostKey(known, t.address, t.port, key)
          if (verdict.status === 'match') return true
          // A host that already has a known key of another type gets no "first use": that would let a forged key in.
          return verdict.status === 'unknown' && !verdict.knownTypes?.length && t.trustNewHostKeys
        },
      })
    } catch (e) {
      ssh.dispose()
      const v = verdict as HostKeyVerdict | null
      if (v && v.status !== 'match' && !(v.status === 'unknown' && !v.knownTypes?.length && t.trustNewHostKeys))
        throw hostKeyError(t, khPath, v, presented!, pinned ? fingerprint(pinned) : undefined)
      throw unreachable(t, e, agent instanceof PreferringAgent && agent.held === false)
    }
    const v = verdict as HostKeyVerdict | null
    if (v?.status === 'unknown' && presented) {
      const key: Buffer = presented
      const record = t.recordNewHostKeys ?? true
      if (record) {
        try {
          await addKnownHost(khPath, t.address, t.port, key)
        } catch (e) {
          ssh.dispose()
          throw e
        }
      } else this.unrecordedKey = key
      t.onNewHostKey?.(fingerprint(key), record)
    }
    // After the handshake nobody else listens for errors (a keepalive timeout when a Pi loses power or Wi-Fi):
    // unhandled, one would end the whole run. Forget the connection; the next command reports or reconnects.
    ssh.connection?.on('error', () => {
      if (this.ssh === ssh) this.ssh = null
    })
    ssh.connection?.on('close', () => {
      if (this.ssh === ssh) this.ssh = null
    })
    this.ssh = ssh
    return ssh
  }
}
function unreachable(t: SshTarget, e: unknown, agentLacksKey = false): ProvisionError {
  const err = e as NodeJS.ErrnoException & { level?: string }
  let why = err.message ?? String(e)
  if (err.code === 'ECONNREFUSED') why = `connection refused on port ${t.port} (is sshd running?)`
  else if (err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH') why = 'no route to host'
  else if (/Timed out while waiting for handshake/i.test(why)) why = `no answer within ${t.connectTimeoutSec}s`
  else if (err.level === 'client-authentication') {
    const agent = t.agentSocket
      ? `, and the keys of the ssh-agent at ${t.agentSocket}`
      : '; no ssh-agent: SSH_AUTH_SOCK is not set'
    const lacks = agentLacksKey ? `; the agent does not hold the key of ${t.keyFile}` : ''
    why = `authentication failed for user ${t.user} (check ssh_user and ssh_key_file or ssh_key_ref${agent}${lacks})`
  }
  return new ProvisionError('unreachable', `cannot connect to ${t.address}:${t.port}: ${why}`, {
    place: { host: t.host },
    cause: e,
  })
}

/** Runs scripts with the controller's own sh: for controller-side steps and for tests. */
export class LocalConnection implements Connection {
  readonly host: string
  constructor(host = 'localhost') {
    this.host = host
  }
  run(script: string, opts: RunOptions = {}): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      // spawn, not zx's $: with an empty input $ leaves stdin open (a script reading it hangs), and a script that
      // exits before reading its stdin (a secret's way in) ends the run in an unhandled EPIPE.
      const child = spawn('sh', ['-c', script], { stdio: ['pipe', 'pipe', 'pipe'] })
      const out: Buffer[] = []
      const err: Buffer[] = []
      child.stdout.on('data', (d: Buffer) => out.push(d))
      child.stderr.on('data', (d: Buffer) => err.push(d))
      child.on('error', reject)
      // A script that exits without reading its stdin closes the pipe: that is not an error of the run.
      child.stdin.on('error', () => undefined)
      child.on('close', (code) =>
        resolve({ code: code ?? 255, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
      )
      child.stdin.end(opts.stdin ?? '')
    })
  }
  async reset(): Promise<void> {}
  async close(): Promise<void> {}
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}
