// Every path, name and address the lab uses, in one place. Other code (tests, benchmarks, the lab's own
// modules) reads them from here; the environment overrides are read once, at import.
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const LAB_DIR = process.env.PI_LAB_DIR || '/var/lib/pi-lab'
export const LAB_CACHE = process.env.PI_LAB_CACHE || '/var/cache/pi-lab'

export const LAB_SUBNET = readSubnet(process.env.PI_LAB_SUBNET || '10.199.55')
export const LAB_BRIDGE = 'pilab0'
export const LAB_BRIDGE_IP = `${LAB_SUBNET}.1`
export const LAB_ARTIFACT_PORT = Number(process.env.PI_LAB_ARTIFACT_PORT || 8780)
export const LAB_ARTIFACT_BASE = `http://${LAB_BRIDGE_IP}:${LAB_ARTIFACT_PORT}`
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
export const LAB_ARTIFACT_PIDFILE = join(LAB_DIR, 'artifacts.pid')
export const LAB_ARTIFACT_LOG = join(LAB_DIR, 'artifacts.log')
export const LAB_HOSTS_DIR = join(LAB_DIR, 'hosts')

export const DEFAULT_HOSTS: readonly string[] = ['pi-k3s', 'pi3-worker-1', 'pi3-worker-2']
/** The owner's real last octets, so addresses in logs look like the real cluster's. */
export const FIXED_OCTETS: Readonly<Record<string, number>> = { 'pi-k3s': 55, 'pi3-worker-1': 53, 'pi3-worker-2': 51 }
export const FIRST_FREE_OCTET = 100

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
  }
}

function readSubnet(value: string): string {
  const parts = value.split('.')
  if (parts.length !== 3 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new Error(`PI_LAB_SUBNET must be the first three octets of a /24, like 10.199.55 (got "${value}")`)
  }
  return value
}
