// playbooks/retire.mts's roles against a fake server and a fake agent: what is drained, uninstalled and deleted,
// what --check says, and what the owner is told when the Pi itself could not be cleaned up.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseInventory } from '../../lib/inventory.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import type { Play } from '../../lib/role.ts'
import { runPlaybook } from '../../lib/runner.ts'
import type { KubeObject } from '../../lib/kube.ts'
import { deleteNodeRole, drainNodeRole, uninstallAgentRole } from '../../roles/k3s-retire.ts'
import { podsToEvict } from '../../lib/scheduling.ts'
import { answerKubeFact, kinded, list, type KubeAnswer } from './fakecluster.ts'
import { answerBatch, FakeConnection, MemorySecrets } from './fakes.ts'

const INV = `all:
  vars:
    secrets_backend: file
    secrets_file: /nonexistent/secrets.yaml
  children:
    server:
      hosts:
        pi-k3s: { address: 127.0.0.55 }
    agent:
      hosts:
        pi3-worker-1: { address: 127.0.0.53 }
        pi3-worker-2: { address: 127.0.0.51 }
`

const READY = { conditions: [{ type: 'Ready', status: 'True' }] }
const GONE = { conditions: [{ type: 'Ready', status: 'Unknown', reason: 'NodeStatusUnknown' }] }

function node(name: string, status: Record<string, unknown>, unschedulable = false): Record<string, unknown> {
  return { metadata: { name }, spec: unschedulable ? { unschedulable: true } : {}, status }
}

function pod(
  ns: string,
  name: string,
  on: string,
  owner: string,
  extra: Partial<KubeObject> = {},
): Record<string, unknown> {
  return {
    metadata: {
      name,
      namespace: ns,
      ownerReferences: [{ kind: owner, name: 'x', controller: true }],
      ...extra.metadata,
    },
    spec: { nodeName: on },
    status: { phase: 'Running', ...extra.status },
  }
}

const PODS = [
  pod('homepage', 'homepage-1', 'pi3-worker-2', 'Deployment'),
  pod('immich', 'immich-db-0', 'pi3-worker-2', 'StatefulSet'),
  pod('kube-system', 'svclb-1', 'pi3-worker-2', 'DaemonSet'),
  pod('backup-jobs', 'pvc-backup-1', 'pi3-worker-2', 'Job', { status: { phase: 'Succeeded' } }),
  pod('pihole', 'pihole-1', 'pi-k3s', 'Deployment'),
]

/** The server: answers the role's cluster reads from `cluster`, records drain/delete, fails a drain on demand. */
function fakeServer(cluster: {
  nodes: Record<string, unknown>[]
  pods?: Record<string, unknown>[]
  drain?: KubeAnswer
}) {
  const kube = (q: string): KubeAnswer => {
    if (q === 'nodes,pods -A') return list([...kinded('Node', cluster.nodes), ...kinded('Pod', cluster.pods ?? [])])
    const one = /^node '?([\w-]+)'?$/.exec(q)
    if (one) {
      const n = cluster.nodes.find((x) => (x.metadata as { name: string }).name === one[1])
      return n
        ? { stdout: JSON.stringify({ kind: 'Node', ...n }) }
        : { code: 1, stderr: `Error from server (NotFound): nodes "${one[1]}" not found` }
    }
    return list([])
  }
  return new FakeConnection('pi-k3s', (script) => {
    const batch = answerBatch(script, (sub) => answerKubeFact(sub, kube) ?? { stdout: '' })
    if (batch) return batch
    const single = answerKubeFact(script, kube)
    if (single) return single
    if (script.includes(' drain '))
      return cluster.drain ?? { stdout: 'node/pi3-worker-2 cordoned\nnode/pi3-worker-2 drained\n' }
    if (script.includes(' delete node ')) {
      cluster.nodes = cluster.nodes.filter(
        (n) =>
          !script.includes(`'${(n.metadata as { name: string }).name}'`) &&
          !script.includes(` ${(n.metadata as { name: string }).name}`),
      )
      return { stdout: 'node "pi3-worker-2" deleted\n' }
    }
    return undefined
  })
}

/** The agent: k3s installed until its uninstall script runs (or for ever, when `stuck`). */
function fakeAgent(opts: { installed: boolean; stuck?: boolean }) {
  let installed = opts.installed
  return new FakeConnection('pi3-worker-2', (script) => {
    const batch = answerBatch(script, (sub) =>
      sub.includes('/usr/local/bin/k3s --version')
        ? { stdout: installed ? 'k3s version v1.34.3+k3s1 (abc)\nagent-unit\n' : 'none\n' }
        : { stdout: '' },
    )
    if (batch) return batch
    if (script.includes('/usr/local/bin/k3s --version'))
      return { stdout: installed ? 'k3s version v1.34.3+k3s1 (abc)\nagent-unit\n' : 'none\n' }
    if (script.includes('k3s-agent-uninstall.sh')) {
      if (!opts.stuck) installed = false
      return { stdout: '' }
    }
    return undefined
  })
}

function retirePlays(name: string, inInventory = true): Play[] {
  const plays: Play[] = [{ name: `Drain ${name}`, hosts: 'pi-k3s', roles: [drainNodeRole(name)], anyErrorsFatal: true }]
  if (inInventory) plays.push({ name: `Uninstall k3s from ${name}`, hosts: name, roles: [uninstallAgentRole] })
  plays.push({ name: `Remove ${name} from the cluster`, hosts: 'pi-k3s', roles: [deleteNodeRole(name, inInventory)] })
  return plays
}

async function retire(
  server: FakeConnection,
  agent: FakeConnection,
  opts: { check?: boolean; name?: string; inInventory?: boolean } = {},
) {
  const rep = new RecordingReporter(1)
  const s = await runPlaybook(
    { name: 'retire', plays: retirePlays(opts.name ?? 'pi3-worker-2', opts.inInventory) },
    {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: (h) => (h.name === 'pi-k3s' ? server : agent),
      check: opts.check,
    },
  )
  return { s, lines: rep.lines }
}

const ran = (c: FakeConnection, part: string) => c.scripts.filter((x) => x.script.includes(part))

describe('which pods a drain evicts', () => {
  it("the node's own pods, not DaemonSet pods, static pods or finished ones", () => {
    const mirror = pod('kube-system', 'static-1', 'pi3-worker-2', 'Node', {
      metadata: { name: 'static-1', annotations: { 'kubernetes.io/config.mirror': 'x' } },
    })
    expect(podsToEvict(kinded('Pod', [...PODS, mirror]) as unknown as KubeObject[], 'pi3-worker-2')).toEqual([
      'homepage/homepage-1',
      'immich/immich-db-0',
    ])
  })
})

describe('the retire roles', () => {
  it('a Ready agent: cordoned and drained, k3s-agent uninstalled on it, then its Node deleted; a second run changes nothing', async () => {
    const cluster = { nodes: [node('pi-k3s', READY), node('pi3-worker-2', READY)], pods: PODS }
    const server = fakeServer(cluster)
    const agent = fakeAgent({ installed: true })
    const first = await retire(server, agent)
    expect(first.s.exitCode, first.lines.join('\n')).toBe(0)
    expect(first.lines).toContain(
      'changed: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (cordoned pi3-worker-2; evicted 2 pods (homepage/homepage-1, immich/immich-db-0))',
    )
    expect(first.lines).toContain(
      'changed: [pi3-worker-2] k3s-retire | Stop and uninstall k3s-agent (k3s-agent-uninstall.sh) (uninstalled k3s-agent v1.34.3+k3s1)',
    )
    expect(first.lines).toContain(
      'changed: [pi-k3s] k3s-retire | Delete the Node pi3-worker-2 (deleted the Node pi3-worker-2 (and its node-password secret))',
    )
    expect(first.lines.filter((l) => l.startsWith('WARNING'))).toEqual([])
    const [drain] = ran(server, ' drain ')
    expect(drain.script).toMatch(
      /timeout -k 10 330 k3s kubectl --kubeconfig \S+ drain --ignore-daemonsets --delete-emptydir-data --timeout=300s -- pi3-worker-2;/,
    )
    // The order that keeps a node from coming back: drain (server), uninstall (agent), delete (server).
    expect(server.scripts.findIndex((x) => x.script.includes(' delete node '))).toBeGreaterThan(
      server.scripts.indexOf(drain),
    )
    expect(ran(agent, 'k3s-agent-uninstall.sh')).toHaveLength(1)

    // The cluster now: the node gone. Nothing left to do.
    const again = await retire(server, agent)
    expect(again.s.exitCode).toBe(0)
    expect(again.s.counts['pi-k3s']).toMatchObject({ changed: 0, failed: 0 })
    expect(again.s.counts['pi3-worker-2']).toMatchObject({ changed: 0, failed: 0 })
    expect(again.lines).toContain(
      'ok: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (no Node pi3-worker-2 in the cluster: nothing to drain)',
    )
  })

  it('--check says what would be evicted and uninstalled, and runs no drain, uninstall or delete', async () => {
    const server = fakeServer({ nodes: [node('pi-k3s', READY), node('pi3-worker-2', READY)], pods: PODS })
    const agent = fakeAgent({ installed: true })
    const { s, lines } = await retire(server, agent, { check: true })
    expect(s.exitCode).toBe(0)
    expect(lines).toContain(
      'changed: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (would cordon pi3-worker-2 and evict 2 pods (homepage/homepage-1, immich/immich-db-0))',
    )
    expect(lines).toContain(
      'changed: [pi3-worker-2] k3s-retire | Stop and uninstall k3s-agent (k3s-agent-uninstall.sh) (would run /usr/local/bin/k3s-agent-uninstall.sh)',
    )
    expect(lines).toContain(
      'changed: [pi-k3s] k3s-retire | Delete the Node pi3-worker-2 (would delete the Node pi3-worker-2)',
    )
    expect([...ran(server, ' drain '), ...ran(server, ' delete node '), ...ran(agent, 'uninstall.sh')]).toEqual([])
  })

  it('a cordoned node with only DaemonSet pods left is not drained again', async () => {
    const server = fakeServer({
      nodes: [node('pi3-worker-2', READY, true)],
      pods: [pod('kube-system', 'svclb-1', 'pi3-worker-2', 'DaemonSet')],
    })
    const { lines } = await retire(server, fakeAgent({ installed: false }))
    expect(lines).toContain(
      'ok: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (cordoned, no pods left on it but DaemonSet pods)',
    )
    expect(ran(server, ' drain ')).toEqual([])
  })

  it('a dead Pi (NotReady, unreachable): no drain that would wait for ever; its Node is deleted and the owner is told it could not be cleaned up', async () => {
    const server = fakeServer({ nodes: [node('pi-k3s', READY), node('pi3-worker-2', GONE)], pods: PODS })
    const agent = fakeAgent({ installed: true })
    agent.unreachable = true
    const { s, lines } = await retire(server, agent)
    expect(s.exitCode).toBe(4)
    expect(ran(server, ' drain ')).toEqual([])
    expect(lines).toContain(
      'skipping: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (pi3-worker-2 is NotReady (the Pi is off or gone?): nothing can be evicted from it; its pods start elsewhere once its Node is deleted)',
    )
    expect(lines).toContain(
      'changed: [pi-k3s] k3s-retire | Delete the Node pi3-worker-2 (deleted the Node pi3-worker-2 (and its node-password secret))',
    )
    expect(lines).toContain(
      'WARNING: [pi-k3s] k3s-agent could not be uninstalled on pi3-worker-2: if that Pi comes back, it joins again; run retire again then',
    )
  })

  it('a node no longer in the inventory: only its Node goes, with a warning that the Pi was not touched', async () => {
    const server = fakeServer({ nodes: [node('pi-k3s', READY), node('pi4-old', GONE)] })
    const agent = fakeAgent({ installed: true })
    const { s, lines } = await retire(server, agent, { name: 'pi4-old', inInventory: false })
    expect(s.exitCode).toBe(0)
    expect(agent.scripts).toEqual([])
    expect(lines).toContain(
      'WARNING: [pi-k3s] pi4-old is not in the inventory, so its disk was not touched: if that Pi comes back with k3s-agent on it, it joins again',
    )
  })

  it('pods that fit no other node are named before the drain (they would stay Pending for good)', async () => {
    const pinned = pod('pihole', 'unbound-1', 'pi3-worker-2', 'Deployment')
    ;(pinned.spec as Record<string, unknown>).nodeSelector = { 'workload/dns': 'unbound' }
    const server = fakeServer({ nodes: [node('pi-k3s', READY), node('pi3-worker-2', READY)], pods: [...PODS, pinned] })
    const { s, lines } = await retire(server, fakeAgent({ installed: true }))
    expect(s.exitCode).toBe(0)
    expect(lines).toContain(
      "WARNING: [pi-k3s] 1 pod on pi3-worker-2 fits no other node and will stay Pending once evicted: pihole/unbound-1 (their nodeSelector, affinity or the other nodes' taints): give them another node first",
    )
  })

  it('a Node labelled control-plane is refused, whatever the inventory says of it', async () => {
    const server = fakeServer({
      nodes: [
        node('pi-k3s', READY),
        {
          ...node('pi3-worker-2', READY),
          metadata: { name: 'pi3-worker-2', labels: { 'node-role.kubernetes.io/control-plane': 'true' } },
        },
      ],
    })
    const agent = fakeAgent({ installed: true })
    const { s, lines } = await retire(server, agent)
    expect(s.exitCode).toBe(2)
    expect(lines).toContain(
      'FAILED: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (pi3-worker-2 is a k3s server (control-plane): retire removes agents only)',
    )
    expect([...agent.scripts, ...ran(server, ' drain '), ...ran(server, ' delete node ')]).toEqual([])
  })

  it('a drain kubectl cannot finish fails the run before anything is uninstalled or deleted, with what kubectl said', async () => {
    const server = fakeServer({
      nodes: [node('pi-k3s', READY), node('pi3-worker-2', READY)],
      pods: PODS,
      drain: {
        code: 1,
        stderr:
          'evicting pod immich/immich-db-0\nerror when evicting pods/"immich-db-0" -n "immich" (will retry after 5s): Cannot evict pod as it would violate the pod\'s disruption budget.\nerror: timed out waiting for the condition',
      },
    })
    const agent = fakeAgent({ installed: true })
    const { s, lines } = await retire(server, agent)
    expect(s.exitCode).toBe(2)
    const out = lines.join('\n')
    expect(out).toContain(
      'FAILED: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (kubectl drain pi3-worker-2 failed (exit 1); it stays cordoned, nothing was uninstalled:',
    )
    expect(out).toContain("Cannot evict pod as it would violate the pod's disruption budget.")
    expect(out).toContain('hint: a PodDisruptionBudget that allows no eviction')
    expect(agent.scripts).toEqual([])
    expect(ran(server, ' delete node ')).toEqual([])
  })

  it('an uninstall script that leaves k3s behind fails the host, and the Node is still deleted with a warning', async () => {
    const server = fakeServer({ nodes: [node('pi-k3s', READY), node('pi3-worker-2', READY, true)] })
    const { s, lines } = await retire(server, fakeAgent({ installed: true, stuck: true }))
    expect(s.exitCode).toBe(2)
    expect(lines).toContain(
      'FAILED: [pi3-worker-2] k3s-retire | Stop and uninstall k3s-agent (k3s-agent-uninstall.sh) (/usr/local/bin/k3s-agent-uninstall.sh ran but k3s is still there (unit present, binary v1.34.3+k3s1))',
    )
    expect(lines).toContain(
      'WARNING: [pi-k3s] k3s-agent could not be uninstalled on pi3-worker-2: if that Pi comes back, it joins again; run retire again then',
    )
  })
})

describe('retire.mts on the command line (no connection: --list-tasks and refusals)', () => {
  const repo = resolve(import.meta.dirname, '../..')
  const inv = join(mkdtempSync(join(tmpdir(), 'retire-cli-')), 'inv.yaml')
  writeFileSync(
    inv,
    INV.replace(
      '        pi-k3s: { address: 127.0.0.55 }',
      '        pi-k3s: { address: 127.0.0.55, hostname: k3s-main }',
    ).replace(
      '        pi3-worker-2: { address: 127.0.0.51 }',
      '        pi3-worker-2: { address: 127.0.0.51, hostname: worker-b }',
    ),
  )
  const retireCli = (...args: string[]) => {
    const r = spawnSync(join(repo, 'node_modules/.bin/zx'), ['playbooks/retire.mts', ...args, '-i', inv], {
      cwd: repo,
      encoding: 'utf8',
      env: { ...process.env, CI: '1' },
    })
    return { code: r.status, out: r.stdout + r.stderr }
  }

  it('an agent whose Node name (hostname var) differs from its inventory name is found by either', () => {
    for (const name of ['pi3-worker-2', 'worker-b']) {
      const r = retireCli(name, '--list-tasks')
      expect(r.code, r.out).toBe(0)
      expect(r.out).toContain('play #1 (pi-k3s): Drain worker-b  HOSTS: pi-k3s')
      expect(r.out).toContain('play #2 (pi3-worker-2): Uninstall k3s from pi3-worker-2  HOSTS: pi3-worker-2')
      expect(r.out).toContain('    k3s-retire | Delete the Node worker-b')
    }
  })

  it('the server is refused by its inventory name and by its Node name; a name nobody knows only touches the cluster', () => {
    for (const name of ['pi-k3s', 'k3s-main']) {
      const r = retireCli(name)
      expect(r.code).toBe(1)
      expect(r.out).toContain(
        `ERROR: ${name} is the k3s server of ${inv}: retiring it would end the cluster; to replace its Pi, use playbooks/rebuild.mts pi-k3s`,
      )
    }
    const gone = retireCli('pi4-old', '--list-tasks')
    expect(gone.code, gone.out).toBe(0)
    expect(gone.out).toContain(
      `retire: pi4-old is not in ${inv}: only its Node is removed from the cluster; the Pi itself is not touched`,
    )
    expect(gone.out).not.toContain('Uninstall k3s')
  })
})
