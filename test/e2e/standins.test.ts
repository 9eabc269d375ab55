// The k3s STAND-IN on the lab, installed the way the owner installs real k3s (install script from a URL,
// env vars), to show it keeps k3s's rules the tool depends on: an agent joins and is Ready; a reflashed agent
// is refused with k3s's node-password error until its Node is deleted. `k3s kubectl` there is the real client.

import { execFileSync } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LAB_ARTIFACT_BASE, labAddress, labDown, labExec, labUp, labWipe } from '../lab/lab.ts'
import { controllerKubectl } from '../lab/kubectl.ts'
import { onHost, until } from './helpers.ts'

const VERSION = 'v1.34.3+k3s1'
const NODE_PASSWORD_ERROR =
  "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag"

const nodeReady = async (name: string): Promise<string> => {
  const r = await labExec('pi-k3s', `k3s kubectl get node ${name} -o json`)
  if (r.code !== 0) return 'absent'
  const j = JSON.parse(r.stdout) as { status: { conditions: { type: string; status: string }[] } }
  return j.status.conditions.find((c) => c.type === 'Ready')?.status === 'True' ? 'Ready' : 'NotReady'
}

/** Install an agent as the k3s docs say, with the env (token included) fed through a file, not argv. */
async function installAgent(host: string, token: string, extraEnv = ''): Promise<void> {
  const env = `K3S_URL=https://${labAddress('pi-k3s')}:6443\nK3S_TOKEN=${token}\nINSTALL_K3S_VERSION=${VERSION}\n${extraEnv}`
  const r = await labExec(
    host,
    `umask 077; cat > /root/k3s.env; set -a; . /root/k3s.env; set +a; curl -sfL ${LAB_ARTIFACT_BASE}/k3s/install.sh | sh -`,
    { input: env },
  )
  expect(r.code, r.stderr).toBe(0)
}

beforeAll(async () => {
  await labUp(['pi-k3s', 'pi3-worker-1'], { fresh: true })
})

afterAll(async () => {
  await labDown()
})

describe('k3s stand-in on the lab', () => {
  let token = ''

  it('installs a server through the install-script URL: unit, version, node-token with the CA hash', async () => {
    const r = await labExec(
      'pi-k3s',
      `curl -sfL ${LAB_ARTIFACT_BASE}/k3s/install.sh | INSTALL_K3S_VERSION=${VERSION} INSTALL_K3S_EXEC='server --disable=traefik' sh -`,
    )
    expect(r.code, r.stderr).toBe(0)
    expect(await onHost('pi-k3s', 'k3s --version | head -n 1')).toMatch(
      /^k3s version v1\.34\.3\+k3s1 \([0-9a-f]{8}\)\n$/,
    )
    expect(await onHost('pi-k3s', 'systemctl is-active k3s')).toBe('active\n')
    token = (await onHost('pi-k3s', 'cat /var/lib/rancher/k3s/server/node-token')).trim()
    const caHash = (
      await onHost('pi-k3s', 'sha256sum /var/lib/rancher/k3s/server/tls/server-ca.crt | cut -d" " -f1')
    ).trim()
    expect(token).toMatch(new RegExp(`^K10${caHash}::server:\\S+$`))
    expect(
      await until('server node Ready', 60_000, async () =>
        (await nodeReady('pi-k3s')) === 'Ready' ? true : undefined,
      ),
    ).toBe(true)
  })

  it("`k3s kubectl version --client` on a lab host reports the real client: the controller's kubectl", async () => {
    const client = controllerKubectl()
    if (!client) throw new Error('no kubectl on the controller to lend the lab hosts')
    const own = execFileSync(client, ['version', '--client'], { encoding: 'utf8' })
    expect(own).toMatch(/^Client Version: v1\.\d+\.\d+/)
    for (const cmd of ['k3s kubectl version --client', 'kubectl version --client']) {
      const r = await labExec('pi-k3s', cmd)
      expect(r, cmd).toMatchObject({ code: 0, stdout: own })
    }
    // and the server it reaches is the stand-in's Kubernetes API over TLS, with k3s.yaml
    const v = JSON.parse(await onHost('pi-k3s', 'k3s kubectl version -o json')) as {
      serverVersion: { gitVersion: string }
    }
    expect(v.serverVersion.gitVersion).toBe(VERSION)
  })

  it('joins an agent over the lab network: it appears as a Ready node', async () => {
    await installAgent('pi3-worker-1', token)
    expect(await onHost('pi3-worker-1', 'stat -c %a /etc/systemd/system/k3s-agent.service.env')).toBe('600\n')
    expect(
      await until('agent Ready', 60_000, async () =>
        (await nodeReady('pi3-worker-1')) === 'Ready' ? true : undefined,
      ),
    ).toBe(true)
  })

  it('a reflashed agent is refused with the node-password error until its Node is deleted, then joins', async () => {
    await labWipe('pi3-worker-1')
    // Skip the start: the unit is Type=notify, so a refused agent would keep the install script waiting (as real k3s does).
    await installAgent('pi3-worker-1', token, 'INSTALL_K3S_SKIP_START=true\n')
    await onHost('pi3-worker-1', 'systemctl start --no-block k3s-agent')
    const refused = await until('the node-password refusal in the agent log', 60_000, async () => {
      const log = await onHost('pi3-worker-1', 'journalctl -u k3s-agent --no-pager -o cat')
      return log.includes(NODE_PASSWORD_ERROR) ? log : undefined
    })
    expect(refused).toContain(NODE_PASSWORD_ERROR)
    // Still refused a few retries later: nothing fixes itself.
    await new Promise((r) => setTimeout(r, 5000))
    expect(await onHost('pi3-worker-1', 'systemctl is-active k3s-agent || true')).not.toBe('active\n')
    expect(await onHost('pi-k3s', 'k3s kubectl delete node pi3-worker-1')).toBe('node "pi3-worker-1" deleted\n')
    expect(
      await until('agent Ready after the Node was deleted', 60_000, async () =>
        (await nodeReady('pi3-worker-1')) === 'Ready' ? true : undefined,
      ),
    ).toBe(true)
  })
})
