// Every path, name and address the lab uses, in one place. Other code (tests, benchmarks, the lab's own
// modules) reads them from here; the environment overrides are read once, at import.
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../..')

/**
 * The user's lab: what `npm run lab` uses without overrides, and what inventory/lab.yaml is written for. The tests
 * run on a lab of their own (TEST_LAB_ENV in test-lab.ts), which differs from this one in every field but the cache.
 */
export const USER_LAB = {
  dir: '/var/lib/pi-lab',
  subnet: '10.199.55',
  bridge: 'pilab0',
  artifactPort: 8780,
  machinePrefix: '',
} as const

export const LAB_DIR = process.env.PI_LAB_DIR || USER_LAB.dir
export const LAB_CACHE = process.env.PI_LAB_CACHE || '/var/cache/pi-lab'

export const LAB_SUBNET = readSubnet(process.env.PI_LAB_SUBNET || USER_LAB.subnet)
export const LAB_BRIDGE = readBridge(process.env.PI_LAB_BRIDGE || USER_LAB.bridge)
export const LAB_BRIDGE_IP = `${LAB_SUBNET}.1`
export const LAB_ARTIFACT_PORT = readPort(process.env.PI_LAB_ARTIFACT_PORT || String(USER_LAB.artifactPort))
export const LAB_ARTIFACT_BASE = `http://${LAB_BRIDGE_IP}:${LAB_ARTIFACT_PORT}`
/**
 * Put before a host's name to make its systemd-nspawn machine name. Two labs up at once both have a pi-k3s, and
 * systemd-nspawn names the controller's end of a host's network link after the machine (vb-NAME): the same
 * machine name in two labs would clash there. The hostname inside stays the host's name.
 */
export const LAB_MACHINE_PREFIX = readMachinePrefix(process.env.PI_LAB_MACHINE_PREFIX ?? USER_LAB.machinePrefix)
/** Files the artifact server publishes (stand-ins for k3s, flux, ... written by other engineers). */
export const ARTIFACT_ROOT = join(REPO_DIR, 'test', 'standins')

export const LAB_SSH_DIR = join(LAB_DIR, 'ssh')
export const LAB_KEY = join(LAB_SSH_DIR, 'id_ed25519')
export const LAB_KNOWN_HOSTS = join(LAB_SSH_DIR, 'known_hosts')
export const LAB_SECRETS_FILE = join(LAB_DIR, 'secrets.yaml')
export const LAB_ADDRESSES_FILE = join(LAB_DIR, 'addresses.json')
export const LAB_LOCK_FILE = join(LAB_DIR, 'lock')
/** ip_forward as it was before the lab changed it; present only while the lab owns the setting. */
export const LAB_IP_FORWARD_FILE = join(LAB_DIR, 'ip_forward.saved')
/**
 * The controller's ip_forward as it was before the first of the labs up at once changed it (one machine-wide
 * setting, so one saved value for all labs: the last lab down restores it). In /run: gone with a reboot, as
 * the setting itself is.
 */
export const IP_FORWARD_SAVED = '/run/pi-lab/ip_forward.saved'
/** The test lab's inventory: inventory/lab.yaml with this lab's addresses, paths and URLs (see inventory.ts). */
export const LAB_INVENTORY_FILE = join(LAB_DIR, 'inventory', 'lab.yaml')
export const LAB_ARTIFACT_PIDFILE = join(LAB_DIR, 'artifacts.pid')
export const LAB_ARTIFACT_LOG = join(LAB_DIR, 'artifacts.log')
export const LAB_HOSTS_DIR = join(LAB_DIR, 'hosts')

export const DEFAULT_HOSTS: readonly string[] = ['pi-k3s', 'pi3-worker-1', 'pi3-worker-2']
/** The owner's real last octets, so addresses in logs look like the real cluster's. */
export const FIXED_OCTETS: Readonly<Record<string, number>> = { 'pi-k3s': 55, 'pi3-worker-1': 53, 'pi3-worker-2': 51 }
export const FIRST_FREE_OCTET = 100

/** The systemd-nspawn machine name of a lab host. */
export function machineName(name: string): string {
  return LAB_MACHINE_PREFIX + name
}

export interface HostPaths {
  dir: string
  /** The host's own writes: deleting it is a freshly flashed SD card. */
  upper: string
  work: string
  /** Where the overlay is mounted and systemd-nspawn boots from. */
  root: string
  pidfile: string
  log: string
  /** Id of the image the disk was flashed with; absent until the first boot files are written. */
  flashed: string
  /** The host side of its veth, when systemd-nspawn shortened the name (see host.ts). */
  veth: string
  /** The Debian suite its disk is flashed with (image.ts); absent: the default, bookworm. */
  suite: string
}

export function hostPaths(name: string): HostPaths {
  // The name becomes a path, a machine name and a hostname: allow only what all three accept.
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(name)) {
    throw new Error(`"${name}" is not a host name (lowercase letters, digits and inner dashes)`)
  }
  const dir = join(LAB_HOSTS_DIR, name)
  return {
    dir,
    upper: join(dir, 'upper'),
    work: join(dir, 'work'),
    root: join(dir, 'root'),
    pidfile: join(dir, 'supervisor.pid'),
    log: join(dir, 'console.log'),
    flashed: join(dir, 'flashed'),
    veth: join(dir, 'veth'),
    suite: join(dir, 'suite'),
  }
}

function readSubnet(value: string): string {
  const parts = value.split('.')
  if (parts.length !== 3 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new Error(`PI_LAB_SUBNET must be the first three octets of a /24, like 10.199.55 (got "${value}")`)
  }
  return value
}

function readBridge(value: string): string {
  // A Linux interface name: at most 15 characters; kept to what ip(8) accepts without quoting.
  if (!/^[a-z][a-z0-9_-]{0,14}$/.test(value)) {
    throw new Error(`PI_LAB_BRIDGE must be an interface name of at most 15 characters, like pilab0 (got "${value}")`)
  }
  return value
}

function readPort(value: string): number {
  const port = Number(value)
  if (!/^\d+$/.test(value) || port < 1 || port > 65535) {
    throw new Error(`PI_LAB_ARTIFACT_PORT must be a TCP port, like 8780 (got "${value}")`)
  }
  return port
}

function readMachinePrefix(value: string): string {
  if (!/^([a-z0-9][a-z0-9-]{0,7})?$/.test(value)) {
    throw new Error(`PI_LAB_MACHINE_PREFIX must be up to 8 lowercase letters, digits and dashes (got "${value}")`)
  }
  return value
}
