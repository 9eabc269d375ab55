// One lab host: an overlay "SD card" over the shared image, booted by systemd-nspawn inside a supervisor
// loop that turns exit 133 (`systemctl reboot` in the host) into a real reboot. Processes are found
// through /proc (see procs.ts), so hosts left behind by a killed run are found and ended too.
import { randomBytes } from 'node:crypto'
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { DEFAULT_SUITE, type Suite, imageDir, imageIdFor, isSuite } from './image.ts'
import { isMounted, mountOverlay, unmountUnder } from './mounts.ts'
import { hostAddress } from './network.ts'
import { LAB_BRIDGE, LAB_BRIDGE_IP, LAB_DIR, LAB_HOSTS_DIR, LAB_KEY, hostPaths, machineName } from './paths.ts'
import { aliveWith, processes, readPidfile, signal, sleep, terminate, waitGone } from './procs.ts'
import { LabError, run } from './run.ts'
import { controllerKubectl, HOST_KUBECTL, KUBECTL_SWITCH } from './kubectl.ts'

export const HOST_KEY_TYPES = ['ed25519', 'ecdsa', 'rsa'] as const

// $0 is the marker that identifies this host's supervisor in /proc; $1 the root, $2 the machine name (the lab's
// prefix and the host's name, see paths.ts), $3 a read-only bind (SRC:DEST, may be empty): the controller's kubectl
// (see kubectl.ts); $4 the hostname.
const SUPERVISOR = `while :; do
  systemd-nspawn --keep-unit --register=no --link-journal=no --resolv-conf=off --console=read-only \\
    -D "$1" -M "$2" --hostname="$4" --network-bridge=${LAB_BRIDGE} \${3:+"--bind-ro=$3"} -b
  rc=$?
  echo "pi-lab: systemd-nspawn exited with $rc"
  [ "$rc" -eq 133 ] || break
  echo "pi-lab: reboot"
done`

function supervisorMarker(name: string): string {
  return `pi-lab-supervisor:${LAB_DIR}:${name}`
}

/** Hosts that have a disk in the state dir. */
export function knownHosts(): string[] {
  if (!existsSync(LAB_HOSTS_DIR)) return []
  return readdirSync(LAB_HOSTS_DIR).filter((n) => /^[a-z0-9][a-z0-9-]*$/.test(n))
}

/**
 * Container inits (pid 1 of their namespace) by the upperdir of their root overlay. That is what ties a
 * running container to a host disk, even when its systemd-nspawn was killed and it was left an orphan.
 */
export function containerLeaders(): Map<string, number> {
  const leaders = new Map<string, number>()
  for (const p of processes()) {
    if (p.nsPid !== 1 || p.pid === 1) continue
    try {
      const root = readFileSync(`/proc/${p.pid}/mountinfo`, 'utf8')
        .split('\n')
        .find((l) => l.split(' ')[4] === '/')
      const upper = /[ ,]upperdir=([^,\s]+)/.exec(root ?? '')?.[1]
      if (upper) leaders.set(upper, p.pid)
    } catch {}
  }
  return leaders
}

export function leaderPid(name: string): number | undefined {
  return containerLeaders().get(hostPaths(name).upper)
}

function supervisorPids(name: string): number[] {
  const marker = supervisorMarker(name)
  return processes()
    .filter((p) => p.argv.includes(marker))
    .map((p) => p.pid)
}

function nspawnPids(root: string): number[] {
  return processes()
    .filter((p) => p.argv[0]?.endsWith('systemd-nspawn') && p.argv.includes(root))
    .map((p) => p.pid)
}

/** Running and supervised: a reboot will come back. A container without its supervisor is a leftover. */
export function hostHealthy(name: string): boolean {
  const pid = readPidfile(hostPaths(name).pidfile)
  return pid !== undefined && aliveWith(pid, [supervisorMarker(name)]) && leaderPid(name) !== undefined
}

/** Power off: the supervisor first (so nothing restarts), then the container's init (its whole pid namespace). */
export async function stopHost(name: string): Promise<void> {
  const paths = hostPaths(name)
  const supervisors = supervisorPids(name)
  for (const pid of supervisors) signal(pid, 'SIGKILL')
  const leader = leaderPid(name)
  if (leader !== undefined) signal(leader, 'SIGKILL')
  await waitGone([...supervisors, ...(leader === undefined ? [] : [leader])], 5000)
  // systemd-nspawn exits by itself once its container is gone; a stuck one is ended.
  await terminate(nspawnPids(paths.root), 3000)
  await unmountUnder(paths.root)
  rmSync(paths.pidfile, { force: true })
  await removeStaleVeth(name)
}

/**
 * The name systemd-nspawn gave the host side of this host's veth, as seen while it ran (rememberVeth): "vb-" and
 * the machine name, or, beyond 15 characters (a test lab's pi3-worker-1 is t-pi3-worker-1), its first 11 and a
 * hash nspawn computes, the same on every boot.
 */
function vethName(name: string): string | undefined {
  const plain = `vb-${machineName(name)}`
  if (plain.length <= 15) return plain
  try {
    return readFileSync(hostPaths(name).veth, 'utf8').trim() || undefined
  } catch {
    return undefined
  }
}

/** Records the host-side veth's name (see vethName); called once the host is up. */
export function rememberVeth(name: string, ifname: string): void {
  if (ifname !== `vb-${machineName(name)}`) writeFileSync(hostPaths(name).veth, `${ifname}\n`)
}

/**
 * The host side of the container's veth ("vb-NAME") can outlive a killed container for a moment, or for good
 * when a run was killed: the next systemd-nspawn then fails with "Failed to add new veth interfaces ... File
 * exists". Wait for it to go, then remove it. (A long name nspawn hashed is known only once the host ran.)
 */
async function removeStaleVeth(name: string): Promise<void> {
  const link = vethName(name)
  if (link === undefined) return
  const exists = async () => (await run('ip', ['link', 'show', link], { allowFail: true })).code === 0
  for (let i = 0; i < 20 && (await exists()); i++) await sleep(100)
  if (await exists()) await run('ip', ['link', 'delete', link], { allowFail: true })
}

/**
 * The Debian suite the host's SD card is flashed with (hosts/NAME/suite; default bookworm). It outlives a wipe: a
 * failed card is replaced by one flashed the same way. labUp's suite (`up --suite`) sets it.
 */
export function hostSuite(name: string): Suite {
  let suite: string
  try {
    suite = readFileSync(hostPaths(name).suite, 'utf8').trim()
  } catch {
    return DEFAULT_SUITE
  }
  if (!isSuite(suite)) throw new LabError(`${name}: unknown suite "${suite}" in ${hostPaths(name).suite}`)
  return suite
}

export function setHostSuite(name: string, suite: Suite): void {
  const paths = hostPaths(name)
  mkdirSync(paths.dir, { recursive: true })
  writeFileSync(paths.suite, `${suite}\n`)
}

/** A disk that has been flashed (it keeps its suite's image until wiped). */
export function hostFlashed(name: string): boolean {
  const paths = hostPaths(name)
  return existsSync(paths.flashed) && existsSync(paths.upper)
}

/** A freshly flashed SD card: the host's own layer is gone, the next start writes new first-boot files. */
export function wipeDisk(name: string): void {
  const paths = hostPaths(name)
  for (const dir of [paths.upper, paths.work]) rmSync(dir, { recursive: true, force: true })
  rmSync(paths.flashed, { force: true })
}

/** Mounts the disk (flashing it first if new or made from another image) and boots it under its supervisor. */
export async function startHost(name: string, say: (line: string) => void): Promise<void> {
  const paths = hostPaths(name)
  await stopHost(name) // leftovers of a killed run: processes, mount, pidfile
  const flashedWith = existsSync(paths.flashed) ? readFileSync(paths.flashed, 'utf8').trim() : undefined
  const suite = hostSuite(name)
  const imageId = imageIdFor(suite)
  let lower = imageDir(imageId)
  if (flashedWith !== imageId || !existsSync(paths.upper)) {
    if (flashedWith && existsSync(paths.upper) && existsSync(imageDir(flashedWith))) {
      // Like a real card: it keeps the image it was flashed with until it is flashed again.
      lower = imageDir(flashedWith)
      say(
        `${name}: disk made from image ${flashedWith}, the ${suite} recipe now makes ${imageId}: ` +
          'use --fresh to re-flash',
      )
    } else {
      if (flashedWith) say(`${name}: its image is gone (the recipe changed), flashing a new disk`)
      wipeDisk(name)
    }
  }
  for (const dir of [paths.upper, paths.work, paths.root]) mkdirSync(dir, { recursive: true })
  if (!isMounted(paths.root)) await mountOverlay(lower, paths.upper, paths.work, paths.root)
  if (!existsSync(paths.flashed)) {
    await writeFirstBootFiles(name, paths.root)
    writeFileSync(paths.flashed, imageId + '\n')
  }
  writeResolvConf(paths.root)
  writeKubectlSwitch(paths.root)
  const kubectl = controllerKubectl()

  const log = openSync(paths.log, 'w')
  const child = spawn(
    'bash',
    [
      '-c',
      SUPERVISOR,
      supervisorMarker(name),
      paths.root,
      machineName(name),
      kubectl ? `${kubectl}:${HOST_KUBECTL}` : '',
      name,
    ],
    {
      detached: true, // own session: survives the command that started it, like a Pi's power supply
      stdio: ['ignore', log, log],
    },
  )
  closeSync(log)
  if (child.pid === undefined) throw new LabError(`${name}: could not start its supervisor`)
  writeFileSync(paths.pidfile, `${child.pid}\n`)
  child.unref()
}

/** What Raspberry Pi Imager's customisation does on a real card: name, address, keys, login. */
async function writeFirstBootFiles(name: string, root: string): Promise<void> {
  const address = hostAddress(name)
  writeFile(join(root, 'etc/hostname'), `${name}\n`)
  writeFile(
    join(root, 'etc/hosts'),
    `127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${name}\n`,
  )
  writeFile(join(root, 'etc/machine-id'), randomBytes(16).toString('hex') + '\n', 0o444)
  writeFile(
    join(root, 'etc/systemd/network/10-pi-lab-host0.network'),
    `[Match]\nName=host0\n\n[Network]\nAddress=${address}/24\nGateway=${LAB_BRIDGE_IP}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n`,
  )
  await newHostKeys(name, root)
  const pi = readFileSync(join(root, 'etc/passwd'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith('pi:'))
    ?.split(':')
  if (!pi) throw new LabError(`${name}: the image has no user pi`)
  const keysFile = join(root, 'home/pi/.ssh/authorized_keys')
  writeFile(keysFile, readFileSync(`${LAB_KEY}.pub`, 'utf8'), 0o600)
  chownSync(keysFile, Number(pi[2]), Number(pi[3]))
}

/** The mode is set even when the file exists (writeFileSync's mode only applies to new files). */
function writeFile(file: string, content: string, mode = 0o644): void {
  writeFileSync(file, content)
  chmodSync(file, mode)
}

async function newHostKeys(name: string, root: string): Promise<void> {
  for (const f of readdirSync(join(root, 'etc/ssh'))) {
    if (f.startsWith('ssh_host_')) rmSync(join(root, 'etc/ssh', f))
  }
  await Promise.all(
    HOST_KEY_TYPES.map((t) =>
      run('ssh-keygen', ['-q', '-t', t, '-N', '', '-C', `root@${name}`, '-f', join(root, `etc/ssh/ssh_host_${t}_key`)]),
    ),
  )
}

/** The controller's resolvers, as DHCP would hand them out; loopback ones are unreachable from a host. */
function writeResolvConf(root: string): void {
  const lines = readFileSync('/etc/resolv.conf', 'utf8')
    .split('\n')
    .filter((l) => /^(nameserver|search|options)\s/.test(l) && !/^nameserver\s+(127\.|::1)/.test(l))
  const file = join(root, 'etc/resolv.conf')
  rmSync(file, { force: true }) // a symlink (e.g. to systemd-resolved's) is replaced, not followed
  writeFile(file, `# written by pi-lab from the controller's /etc/resolv.conf\n${lines.join('\n')}\n`)
}

/**
 * The k3s stand-in's switch (kubectl.ts), written at every start: `k3s kubectl` runs the real client lent at
 * HOST_KUBECTL. Without a client on the controller there is none to name, and `k3s kubectl` on the host says so.
 */
function writeKubectlSwitch(root: string): void {
  const file = join(root, KUBECTL_SWITCH)
  if (controllerKubectl() === null) {
    rmSync(file, { force: true })
    return
  }
  mkdirSync(join(root, 'etc/k3s-standin'), { recursive: true })
  writeFile(file, `${HOST_KUBECTL}\n`)
}

/** Host public keys as `type base64` (the first two fields of the .pub files). */
export function hostPublicKeys(name: string): string[] {
  const dir = join(hostPaths(name).upper, 'etc/ssh')
  return HOST_KEY_TYPES.flatMap((t) => {
    try {
      return [
        readFileSync(join(dir, `ssh_host_${t}_key.pub`), 'utf8')
          .split(' ')
          .slice(0, 2)
          .join(' '),
      ]
    } catch {
      return []
    }
  })
}

const EXEC_ENV = [
  'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  'HOME=/root',
  'LANG=C.UTF-8',
  'USER=root',
  'LOGNAME=root',
]

/** argv that runs `sh -c command` as root inside the host through its namespaces, not through the network. */
export function execArgv(name: string, command: string): string[] {
  const leader = leaderPid(name)
  if (leader === undefined) throw new LabError(`${name} is not running (start it with: npm run lab -- start ${name})`)
  return [
    'nsenter',
    '-t',
    String(leader),
    '-m',
    '-u',
    '-i',
    '-n',
    '-p',
    '-C',
    '-r',
    '-w',
    '--',
    '/usr/bin/env',
    '-i',
    ...EXEC_ENV,
    '/bin/sh',
    '-c',
    command,
  ]
}

export async function bootId(name: string): Promise<string> {
  const [cmd, ...args] = execArgv(name, 'cat /proc/sys/kernel/random/boot_id')
  // Bounded: entering a host that is shutting down can hang (seen once in lab.test.ts's reboot test, which polls
  // this until the new boot answers: a hung probe held it until the test's 600 s limit).
  return (await run(cmd, args, { timeoutMs: 10_000 })).stdout.trim()
}
