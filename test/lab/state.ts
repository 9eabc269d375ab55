// A lab's state, read without changing anything in it (no exec into a host, no SSH, no lock): which hosts run and
// since when, the k3s server's token and datastore on each disk, the lab's credentials, its NAS folder, bridge,
// NAT rule and artifact server. `npm run lab -- state` prints it as JSON; .ci/readme-flow compares the user's lab
// before and after `npm test` with it.
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'
import { containerLeaders, knownHosts } from './host.ts'
import { natRulePresent, bridgeState } from './network.ts'
import {
  LAB_ARTIFACT_BASE,
  LAB_ARTIFACT_PIDFILE,
  LAB_BRIDGE,
  LAB_DIR,
  LAB_KEY,
  LAB_KNOWN_HOSTS,
  LAB_SECRETS_FILE,
  hostPaths,
} from './paths.ts'
import { aliveWith, readPidfile, startTime } from './procs.ts'
import { which } from './run.ts'

export interface LabState {
  dir: string
  hosts: {
    name: string
    /** `pid@start time` of the container's init: the same while the host runs this boot; null when stopped. */
    running: string | null
    /** sha256 of the k3s server's token on its disk (null: none), and whether a datastore is there. */
    k3sToken: string | null
    datastore: boolean
  }[]
  /** sha256 of each of the lab's credential files (null: absent). */
  files: Record<string, string | null>
  /** Every file of the NAS folder (the k3s backups) with its size and sha256. */
  nas: string[]
  bridge: string
  nat: boolean
  artifactServer: string | null
}

const K3S_SERVER = 'var/lib/rancher/k3s/server'

function sha256(file: string): string | null {
  try {
    return createHash('sha256').update(readFileSync(file)).digest('hex')
  } catch {
    return null
  }
}

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return []
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => join(dir, f))
    .filter((f) => statSync(f).isFile())
    .sort()
}

export async function labState(): Promise<LabState> {
  const leaders = containerLeaders()
  const hosts = knownHosts()
    .sort()
    .map((name) => {
      const upper = hostPaths(name).upper
      const leader = leaders.get(upper)
      return {
        name,
        running: leader === undefined ? null : `${leader}@${startTime(leader)}`,
        k3sToken: sha256(join(upper, K3S_SERVER, 'token')),
        datastore: existsSync(join(upper, K3S_SERVER, 'db', 'state.db')),
      }
    })
  const files = Object.fromEntries(
    [LAB_KEY, LAB_KNOWN_HOSTS, LAB_SECRETS_FILE, join(LAB_DIR, 'kubeconfig.yaml')].map((f) => [
      relative(LAB_DIR, f),
      sha256(f),
    ]),
  )
  const nasDir = join(LAB_DIR, 'nas')
  const nas = filesUnder(nasDir).map((f) => `${relative(nasDir, f)} ${statSync(f).size} ${sha256(f)}`)
  const pid = readPidfile(LAB_ARTIFACT_PIDFILE)
  return {
    dir: LAB_DIR,
    hosts,
    files,
    nas,
    bridge: `${LAB_BRIDGE} ${await bridgeState()}`,
    nat: which('iptables') ? await natRulePresent() : false,
    artifactServer: pid !== undefined && aliveWith(pid, [LAB_DIR]) ? `${LAB_ARTIFACT_BASE} pid ${pid}` : null,
  }
}
