// The lab's API: Pi-like Debian hosts booted with systemd-nspawn on this machine, reached over real SSH.
// Used by the e2e tests and benchmarks; cli.ts is thin wiring over it. Commands that change the lab hold the
// lab lock (lock.ts), so a test and a terminal cannot start the same host twice.
import { spawn } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ensureLabKey, ensureSecrets, writeKnownHosts } from './credentials.ts'
import { SUITES, type Suite, ensureImage, imageDir, imageIdFor, isSuite, pruneImages } from './image.ts'
import {
  bootId,
  containerLeaders,
  execArgv,
  hostFlashed,
  hostHealthy,
  hostPublicKeys,
  knownHosts,
  hostSuite,
  leaderPid,
  rememberVeth,
  setHostSuite,
  startHost,
  stopHost,
  wipeDisk,
} from './host.ts'
import { unmountUnder } from './mounts.ts'
import {
  bridgeAddressed,
  bridgeState,
  hostAddress,
  hostLink,
  linkConnected,
  natRulePresent,
  networkDown,
  networkUp,
  setLinkConnected,
  waitForSsh,
} from './network.ts'
import {
  ARTIFACT_ROOT,
  DEFAULT_HOSTS,
  LAB_ARTIFACT_BASE,
  LAB_ARTIFACT_LOG,
  LAB_ARTIFACT_PIDFILE,
  LAB_ARTIFACT_PORT,
  LAB_BRIDGE_IP,
  LAB_DIR,
  LAB_HOSTS_DIR,
  REPO_DIR,
  hostPaths,
} from './paths.ts'
import { locked } from './lock.ts'
import { aliveWith, alive, processes, readPidfile, signal, sleep, terminate, waitGone } from './procs.ts'
import { LabError, ensureTools, requireRootOnLinux, run, which } from './run.ts'

export {
  DEFAULT_HOSTS,
  LAB_ARTIFACT_BASE,
  LAB_BRIDGE_IP,
  LAB_DIR,
  LAB_KEY,
  LAB_KNOWN_HOSTS,
  LAB_SECRETS_FILE,
} from './paths.ts'
export { LabError } from './run.ts'
export { DEFAULT_SUITE, SUITES, type Suite } from './image.ts'

export interface LabHost {
  name: string
  address: string
  state: 'running' | 'stopped'
  /** Off the network (see labCut); false when stopped. */
  cut: boolean
  /** /proc/sys/kernel/random/boot_id inside the host; changes on every boot. null when stopped. */
  bootId: string | null
  /** The Debian suite its disk is flashed with: bookworm (Debian 12) or trixie (13). */
  suite: Suite
}

export interface LabStatus {
  hosts: LabHost[]
  bridge: 'up' | 'down' | 'missing'
  nat: boolean
  artifactServer: { running: boolean; url: string }
}

export interface ExecResult {
  code: number
  stdout: string
  stderr: string
}

const SSH_WAIT_MS = 120_000
const HOST_TOOLS = ['ip', 'iptables', 'systemd-nspawn', 'nsenter', 'mount', 'ssh-keygen']
const ARTIFACT_SCRIPT = fileURLToPath(new URL('./artifacts.ts', import.meta.url))

function say(line: string): void {
  process.stderr.write(`lab: ${line}\n`)
}

/**
 * Boots the hosts (default: the three of the real cluster) and waits until each answers on SSH. suite: the Debian
 * release a new disk (or with fresh, every one) is flashed with; a host keeps its suite until flashed with another
 * (default bookworm). Asking for another suite than a flashed disk has, without fresh, is an error, not a wipe.
 */
export function labUp(
  names: readonly string[] = DEFAULT_HOSTS,
  opts: { fresh?: boolean; suite?: string } = {},
): Promise<LabHost[]> {
  const hosts = [...new Set(names)]
  hosts.forEach(hostPaths) // reject bad names before doing anything
  const suite = opts.suite
  if (suite !== undefined && !isSuite(suite))
    return Promise.reject(new LabError(`unknown suite "${suite}" (${SUITES.join(' or ')})`))
  return locked(async () => {
    if (suite !== undefined && !opts.fresh) {
      const other = hosts.filter((h) => hostFlashed(h) && hostSuite(h) !== suite)
      if (other.length)
        throw new LabError(
          `${other.map((h) => `${h} is flashed with ${hostSuite(h)}`).join(', ')}: --fresh to flash ${suite}`,
        )
    }
    await infraUp(hosts.map((h) => suite ?? hostSuite(h)))
    ensureSecrets()
    await eachHost(hosts, async (name) => {
      if (opts.fresh) {
        await stopHost(name)
        wipeDisk(name)
      }
      if (suite !== undefined) setHostSuite(name, suite)
      if (hostHealthy(name))
        await connect(name, true) // up means on the network: a cut host is healed
      else await startHost(name, say)
      await awaitSsh(name)
    })
    writeKnownHosts(hosts.map((name) => ({ address: hostAddress(name), keys: hostPublicKeys(name) })))
    pruneImages()
    return Promise.all(hosts.map(hostStatus))
  })
}

/** Stops every host and the artifact server, unmounts, removes bridge and NAT. Disks stay unless purge. */
export function labDown(opts: { purge?: boolean } = {}): Promise<void> {
  return locked(async () => {
    requireRootOnLinux()
    await Promise.all(knownHosts().map(stopHost))
    await endStrays()
    await stopArtifactServer()
    await unmountUnder(LAB_HOSTS_DIR)
    await networkDown()
    if (opts.purge) rmSync(LAB_HOSTS_DIR, { recursive: true, force: true })
  })
}

/** SD card failure: same name and address, a fresh disk with new SSH host keys. known_hosts is not updated. */
export function labWipe(name: string): Promise<LabHost> {
  hostPaths(name)
  return locked(async () => {
    await infraUp([hostSuite(name)])
    await stopHost(name)
    wipeDisk(name)
    await startHost(name, say)
    await awaitSsh(name)
    return hostStatus(name)
  })
}

/** Power off (the cord is pulled: no clean shutdown). */
export function labStop(name: string): Promise<void> {
  hostPaths(name)
  return locked(() => stopHost(name))
}

/** Power on; waits for SSH. */
export function labStart(name: string): Promise<LabHost> {
  hostPaths(name)
  return locked(async () => {
    await infraUp([hostSuite(name)])
    if (!hostHealthy(name)) await startHost(name, say)
    await awaitSsh(name)
    return hostStatus(name)
  })
}

/** The host drops off the network: its cable is out (it sees no carrier). Lasts until heal or its next boot. */
export async function labCut(name: string): Promise<void> {
  await connect(name, false)
}

/** The cable is back; waits until SSH answers again. */
export async function labHeal(name: string): Promise<void> {
  await connect(name, true)
  await awaitSsh(name)
}

/** Runs `sh -c command` as root in the host through its namespaces: works without its network. */
export async function labExec(
  name: string,
  command: string,
  opts: { input?: string; timeoutMs?: number } = {},
): Promise<ExecResult> {
  await ensureTools(['nsenter'])
  const [cmd, ...args] = execArgv(name, command)
  // Bounded by default: a command entering a host that is shutting down can hang; no lab command needs 2 minutes.
  return run(cmd, args, { input: opts.input, allowFail: true, timeoutMs: opts.timeoutMs ?? 120_000 })
}

export async function labStatus(): Promise<LabStatus> {
  requireRootOnLinux()
  const names = knownHosts().sort((a, b) => order(a) - order(b) || a.localeCompare(b))
  return {
    hosts: await Promise.all(names.map(hostStatus)),
    bridge: await bridgeState(),
    nat: which('iptables') ? await natRulePresent() : false,
    artifactServer: { running: await artifactServerAnswers(), url: LAB_ARTIFACT_BASE },
  }
}

export function labBootId(name: string): Promise<string> {
  return bootId(name)
}

export function labAddress(name: string): string {
  return hostAddress(name)
}

function order(name: string): number {
  const i = DEFAULT_HOSTS.indexOf(name)
  return i < 0 ? DEFAULT_HOSTS.length : i
}

async function hostStatus(name: string): Promise<LabHost> {
  const address = hostAddress(name)
  const suite = hostSuite(name)
  const leader = leaderPid(name)
  if (leader === undefined) return { name, address, state: 'stopped', cut: false, bootId: null, suite }
  const link = await hostLink(leader)
  return {
    name,
    address,
    state: 'running',
    cut: !link || !linkConnected(link),
    bootId: await bootId(name).catch(() => null),
    suite,
  }
}

/** Runs fn for every host in parallel; reports every failure, not just the first. */
async function eachHost(names: readonly string[], fn: (name: string) => Promise<void>): Promise<void> {
  const results = await Promise.allSettled(names.map(fn))
  const failed = results.flatMap((r, i) =>
    r.status === 'rejected' ? [`${names[i]}: ${(r.reason as Error).message}`] : [],
  )
  if (failed.length) throw new LabError(failed.join('; '))
}

async function awaitSsh(name: string): Promise<void> {
  const address = hostAddress(name)
  const started = Date.now()
  if (!(await waitForSsh(address, SSH_WAIT_MS))) {
    throw new LabError(
      `${name} (${address}) did not answer on SSH within ${SSH_WAIT_MS / 1000} s; console: ${hostPaths(name).log}`,
    )
  }
  // sshd answers before boot is over, but PAM refuses logins while /run/nologin exists ("System is booting up"):
  // "up" means a person could log in, so wait for that too.
  // A systemd-user-sessions that exited 219/CGROUP (this machine's cgroups, now and then) is started again by the
  // image's pi-lab-boot-retry.service, after every boot, not only this one.
  while (Date.now() - started < SSH_WAIT_MS) {
    const [cmd, ...args] = execArgv(name, 'test ! -e /run/nologin')
    const r = await run(cmd, args, { allowFail: true })
    if (r.code === 0) {
      const leader = leaderPid(name)
      const link = leader === undefined ? undefined : await hostLink(leader)
      if (link) rememberVeth(name, link.ifname)
      return
    }
    await sleep(100)
  }
  throw new LabError(
    `${name} (${address}) still refuses logins (/run/nologin) after ${SSH_WAIT_MS / 1000} s; console: ${hostPaths(name).log}`,
  )
}

async function connect(name: string, connected: boolean): Promise<void> {
  await ensureTools(['ip', 'nsenter'])
  const leader = leaderPid(name)
  if (leader === undefined) throw new LabError(`${name} is not running`)
  const link = await hostLink(leader)
  if (!link) throw new LabError(`${name}: cannot find its network link`)
  if (linkConnected(link) !== connected) await setLinkConnected(link, connected)
}

/** Everything hosts need besides themselves: tools, the suites' images, key, bridge/NAT, artifact server. */
async function infraUp(suites: readonly Suite[]): Promise<void> {
  const needed = [...new Set(suites)]
  const build = needed.some((s) => !existsSync(imageDir(imageIdFor(s))))
  await ensureTools(build ? [...HOST_TOOLS, 'debootstrap'] : HOST_TOOLS)
  if (!/\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8'))) {
    throw new LabError('this kernel has no overlay filesystem (modprobe overlay), which host disks need')
  }
  for (const s of needed) await ensureImage(say, s)
  await ensureLabKey()
  await networkUp()
  await ensureArtifactServer()
}

/** Lab processes no host disk accounts for (e.g. the state dir was deleted under a running lab). */
async function endStrays(): Promise<void> {
  const supervisorPrefix = `pi-lab-supervisor:${LAB_DIR}:`
  const supervisors = processes()
    .filter((p) => p.argv.some((a) => a.startsWith(supervisorPrefix)))
    .map((p) => p.pid)
  for (const pid of supervisors) signal(pid, 'SIGKILL')
  const leaders = [...containerLeaders()]
    .filter(([upper]) => upper.startsWith(LAB_HOSTS_DIR + '/'))
    .map(([, pid]) => pid)
  for (const pid of leaders) signal(pid, 'SIGKILL')
  await waitGone([...supervisors, ...leaders], 5000)
  const nspawns = processes().filter(
    (p) => p.argv[0]?.endsWith('systemd-nspawn') && p.argv.some((a) => a.startsWith(LAB_HOSTS_DIR + '/')),
  )
  await terminate(
    nspawns.map((p) => p.pid),
    3000,
  )
}

// --- artifact server: a detached Node process, found by its script name and the state dir in its argv ---

function artifactServerPids(): number[] {
  return processes()
    .filter((p) => p.argv.some((a) => a.endsWith('/artifacts.ts')) && p.argv.includes(LAB_DIR))
    .map((p) => p.pid)
}

async function artifactServerAnswers(): Promise<boolean> {
  if (!(await bridgeAddressed())) return false
  try {
    const res = await fetch(`${LAB_ARTIFACT_BASE}/_lab/ping`, { signal: AbortSignal.timeout(1000) })
    return res.ok && (await res.text()).startsWith('pi-lab')
  } catch {
    return false
  }
}

async function ensureArtifactServer(): Promise<void> {
  const pid = readPidfile(LAB_ARTIFACT_PIDFILE)
  if (pid !== undefined && aliveWith(pid, [LAB_DIR]) && (await artifactServerAnswers())) return
  await stopArtifactServer()
  // The server is TypeScript: it needs a Node that strips types (the project's pinned Node 24 does).
  const node = process.features.typescript ? process.execPath : join(REPO_DIR, 'node_modules', '.bin', 'node')
  mkdirSync(LAB_DIR, { recursive: true })
  const log = openSync(LAB_ARTIFACT_LOG, 'a')
  const child = spawn(
    node,
    [
      ARTIFACT_SCRIPT,
      '--host',
      LAB_BRIDGE_IP,
      '--port',
      String(LAB_ARTIFACT_PORT),
      '--root',
      ARTIFACT_ROOT,
      '--lab',
      LAB_DIR,
    ],
    { detached: true, stdio: ['ignore', log, log] },
  )
  closeSync(log)
  child.unref()
  if (child.pid === undefined) throw new LabError('could not start the artifact server')
  writeFileSync(LAB_ARTIFACT_PIDFILE, `${child.pid}\n`)
  for (let i = 0; i < 100; i++) {
    if (await artifactServerAnswers()) return
    if (!alive(child.pid)) break
    await sleep(100)
  }
  const last = readFileSync(LAB_ARTIFACT_LOG, 'utf8').trim().split('\n').pop()
  throw new LabError(`the artifact server did not start on ${LAB_ARTIFACT_BASE}: ${last}; log: ${LAB_ARTIFACT_LOG}`)
}

async function stopArtifactServer(): Promise<void> {
  await terminate(artifactServerPids(), 2000)
  rmSync(LAB_ARTIFACT_PIDFILE, { force: true })
}
