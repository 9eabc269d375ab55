// The real kubectl client on the lab hosts. Real k3s runs its embedded kubectl for `k3s kubectl`; the k3s
// STAND-IN (test/standins/k3s/, not k3s) has none, and the hosts cannot download one, so the lab lends them the
// controller's: its binary is bind-mounted read-only into every host at HOST_KUBECTL (nothing is copied into the
// image, so the image does not change with the controller's kubectl), and a file on each host (KUBECTL_SWITCH)
// tells the stand-in to exec it. The stand-in has no kubectl of its own: without that file `k3s kubectl` fails
// and says why.
//
// PI_LAB_KUBECTL names the client (default: the kubectl in PATH). Google Cloud SDK's /usr/bin/kubectl is a
// dispatcher that runs its kubectl.1.NN siblings, which a host would not have: the sibling of the dispatcher's own
// version is lent instead.
import { execFileSync } from 'node:child_process'
import { existsSync, realpathSync } from 'node:fs'
import { dirname, join } from 'node:path'

/** Where the client appears inside every host (a lab path, not a Pi's: nothing on a Pi has it). */
export const HOST_KUBECTL = '/usr/lib/pi-lab/kubectl'
/** The stand-in's switch: this file on a host names the executable `k3s kubectl` runs. */
export const KUBECTL_SWITCH = '/etc/k3s-standin/kubectl'

let resolved: string | null | undefined

/** The controller's real kubectl binary (a static Go binary a host can run), or null when there is none. */
export function controllerKubectl(): string | null {
  if (resolved !== undefined) return resolved
  resolved = null
  const named = process.env.PI_LAB_KUBECTL || findInPath('kubectl')
  if (!named || !existsSync(named)) return resolved
  const bin = realpathSync(named)
  try {
    const v = JSON.parse(
      execFileSync(bin, ['version', '--client', '-o', 'json'], { encoding: 'utf8', timeout: 20_000 }),
    ) as {
      clientVersion?: { gitVersion?: string; major?: string; minor?: string }
    }
    const cv = v.clientVersion ?? {}
    if (cv.gitVersion?.includes('dispatcher')) {
      const sibling = join(dirname(bin), `kubectl.${cv.major}.${(cv.minor ?? '').replace(/\D+$/, '')}`)
      resolved = existsSync(sibling) ? sibling : null
    } else {
      resolved = bin
    }
  } catch {
    resolved = null
  }
  return resolved
}

function findInPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(join(dir, cmd))) return join(dir, cmd)
  }
  return undefined
}
