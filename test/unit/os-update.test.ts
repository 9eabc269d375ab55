// The os-update role (playbooks/update.mts) against a fake agent and a fake server: what is drained, installed,
// rebooted and uncordoned, in which order, what --check says, and what is left alone.
import { describe, expect, it } from 'vitest'
import { parseInventory } from '../../lib/inventory.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { DRAINED_MARK, osUpdate, parsePendingUpgrades } from '../../roles/os-update.ts'
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
`

const APT_SIMULATION = `NOTE: This is only a simulation!
Reading package lists...
Building dependency tree...
Calculating upgrade...
The following packages will be upgraded:
  libssl3 openssl
2 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.
Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [arm64])
Inst openssl [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [arm64])
Inst linux-image-6.6.74+rpt-rpi-v8 (1:6.6.74-1+rpt1 Raspberry Pi Foundation:stable [arm64])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [arm64])
`

interface AgentState {
  listsAge: number
  simulation: string
  /** What full-upgrade leaves: a reboot asked for by these packages (or none). */
  asksReboot?: string[]
  rebootRequired: string[] | null
  bootId: number
}

function fakeAgent(state: AgentState) {
  const fact = (sub: string) => {
    if (sub.startsWith('echo "$(date +%s) $(find /var/lib/apt/lists')) return { stdout: `1000000 ${state.listsAge === Infinity ? '' : 1000000 - state.listsAge}\n` }
    if (sub.startsWith('LC_ALL=C apt-get -s')) return { stdout: state.simulation }
    if (sub.startsWith('if [ -e /var/run/reboot-required ]')) return { stdout: state.rebootRequired ? ['yes', ...state.rebootRequired].join('\n') + '\n' : '' }
    return undefined
  }
  const changes: string[] = []
  const conn = new FakeConnection('pi3-worker-1', (script) => {
    const batch = answerBatch(script, (sub) => fact(sub) ?? { code: 127 })
    if (batch) return batch
    const one = fact(script)
    if (one) return one
    if (script === 'cat /proc/sys/kernel/random/boot_id') return { stdout: `boot-${state.bootId}\n` }
    changes.push(script)
    if (script.includes(' update -q')) state.listsAge = 0
    if (script.includes('full-upgrade')) {
      state.simulation = 'Reading package lists...\n0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n'
      if (state.asksReboot) state.rebootRequired = state.asksReboot
    }
    if (script.includes('systemctl reboot')) {
      state.bootId++
      state.rebootRequired = null
    }
    return { code: 0 }
  })
  return { conn, changes }
}

interface NodeState {
  ready: boolean
  unschedulable: boolean
  annotations: Record<string, string>
}

function fakeServer(node: NodeState) {
  const writes: string[] = []
  const conn = new FakeConnection('pi-k3s', (script) => {
    const get = /k3s kubectl get node '?([\w-]+)'? -o json/.exec(script)
    if (get)
      return {
        stdout: JSON.stringify({
          metadata: { name: get[1], annotations: node.annotations },
          spec: node.unschedulable ? { unschedulable: true } : {},
          status: { conditions: [{ type: 'Ready', status: node.ready ? 'True' : 'False' }] },
        }),
      }
    writes.push(script)
    if (script.includes(`annotate --overwrite node`)) node.annotations = { ...node.annotations, [DRAINED_MARK]: 'update' }
    if (script.includes(' drain ')) node.unschedulable = true
    if (script.includes(' uncordon ')) node.unschedulable = false
    if (script.includes(`${DRAINED_MARK}-`)) {
      const { [DRAINED_MARK]: _gone, ...rest } = node.annotations
      node.annotations = rest
    }
    return { code: 0 }
  })
  return { conn, writes }
}

async function update(agent: FakeConnection, server: FakeConnection, check = false) {
  const rep = new RecordingReporter(1)
  const s = await runPlaybook({ name: 'update', plays: [{ name: 'Update the agents, one at a time', hosts: 'agent', serial: 1, roles: [osUpdate] }] }, {
    inventory: parseInventory(INV, '/tmp/inv.yaml'),
    reporter: rep,
    secrets: new MemorySecrets(),
    connect: (h) => (h.name === 'pi-k3s' ? server : agent),
    check,
  })
  return { s, lines: rep.lines.filter((l) => /^(ok|changed|skipping|FAILED): /.test(l)).map((l) => l.replace(/^(\w+): \[pi3-worker-1\] os-update \| /, '$1: ')) }
}

const readyNode = (): NodeState => ({ ready: true, unschedulable: false, annotations: {} })

describe('pending upgrades', () => {
  it("reads apt-get -s full-upgrade: upgrades with their old version, new packages without one; not the Conf lines", () => {
    expect(parsePendingUpgrades(APT_SIMULATION)).toEqual([
      { name: 'libssl3', from: '3.0.15-1~deb12u1', to: '3.0.16-1~deb12u1' },
      { name: 'openssl', from: '3.0.15-1~deb12u1', to: '3.0.16-1~deb12u1' },
      { name: 'linux-image-6.6.74+rpt-rpi-v8', from: undefined, to: '1:6.6.74-1+rpt1' },
    ])
    expect(parsePendingUpgrades('0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n')).toEqual([])
  })
})

describe('the os-update role on an agent', () => {
  it('updates pending: lists refreshed, drained (marked first), upgraded, rebooted as asked, Ready, uncordoned; a rerun changes nothing', async () => {
    const agent = fakeAgent({ listsAge: 7200, simulation: APT_SIMULATION, asksReboot: ['libssl3'], rebootRequired: null, bootId: 1 })
    const node = readyNode()
    const server = fakeServer(node)
    const first = await update(agent.conn, server.conn)
    expect(first.s.exitCode, first.lines.join('\n')).toBe(0)
    expect(first.lines).toEqual([
      'changed: Refresh the package lists (when older than apt_cache_valid_time) (apt-get update (lists 120 min old))',
      'changed: Drain this node from the server before updating it (agents, update_drain) (drained pi3-worker-1)',
      'changed: Install the updates (apt-get full-upgrade) (upgraded 3 packages: libssl3 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1, openssl 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1, linux-image-6.6.74+rpt-rpi-v8 1:6.6.74-1+rpt1 (new))',
      'changed: Reboot when an update asks for it (/var/run/reboot-required) (reboot asked for by libssl3)',
      expect.stringMatching(/^changed: handler: Reboot \(rebooted in [\d.]+s\)$/),
      'ok: Wait until the server reports this node Ready (Ready)',
      'changed: Uncordon this node (only when this playbook drained it) (uncordoned pi3-worker-1)',
    ])
    expect(server.writes.map((w) => w.replace(/^.*?k3s kubectl( --kubeconfig \S+)? /, '').split(' ').slice(0, 2).join(' '))).toEqual(['annotate --overwrite', 'drain pi3-worker-1', 'uncordon pi3-worker-1'])
    expect(server.writes[1]).toMatch(/drain pi3-worker-1 --ignore-daemonsets --delete-emptydir-data --timeout=300s/)
    expect(node).toEqual(readyNode())
    const upgrade = agent.changes.find((c) => c.includes('full-upgrade'))!
    expect(upgrade).toContain('-o Dpkg::Options::=--force-confold -y -q full-upgrade')
    expect(upgrade).toContain('touch /var/run/reboot-required') // a changed kernel asks for a reboot
    expect(agent.changes.filter((c) => c.includes('systemctl reboot'))).toHaveLength(1)

    agent.changes.length = 0
    server.writes.length = 0
    const again = await update(agent.conn, server.conn)
    expect(again.s.counts['pi3-worker-1']).toMatchObject({ changed: 0, failed: 0 })
    expect(again.lines).toContain('ok: Install the updates (apt-get full-upgrade) (up to date)')
    expect(again.lines).toContain('ok: Refresh the package lists (when older than apt_cache_valid_time) (fetched 0 min ago (apt_cache_valid_time 3600s))')
    expect([...agent.changes, ...server.writes]).toEqual([])
  })

  it('--check says what it would do and changes nothing on the Pi or the server', async () => {
    const agent = fakeAgent({ listsAge: Infinity, simulation: APT_SIMULATION, rebootRequired: null, bootId: 1 })
    const server = fakeServer(readyNode())
    const { s, lines } = await update(agent.conn, server.conn, true)
    expect(s.exitCode).toBe(0)
    expect(lines).toContain('changed: Refresh the package lists (when older than apt_cache_valid_time) (would apt-get update (no lists yet))')
    expect(lines).toContain('changed: Drain this node from the server before updating it (agents, update_drain) (would drain pi3-worker-1)')
    expect(lines).toContainEqual(expect.stringMatching(/^changed: Install the updates \(apt-get full-upgrade\) \(would upgrade 3 packages: libssl3/))
    expect([...agent.changes, ...server.writes]).toEqual([])
  })

  it('a node cordoned by hand is left cordoned; one this playbook drained in a run that broke off is uncordoned', async () => {
    const upToDate = { listsAge: 60, simulation: '0 upgraded\n', rebootRequired: null, bootId: 1 }
    const byHand = fakeServer({ ready: true, unschedulable: true, annotations: {} })
    const a = await update(fakeAgent({ ...upToDate }).conn, byHand.conn)
    expect(a.lines).toContain('ok: Uncordon this node (only when this playbook drained it) (cordoned, but not by this playbook: left so)')
    expect(byHand.writes).toEqual([])

    const brokenOff = { ready: true, unschedulable: true, annotations: { [DRAINED_MARK]: 'update' } }
    const server = fakeServer(brokenOff)
    const b = await update(fakeAgent({ ...upToDate }).conn, server.conn)
    expect(b.lines).toContain('changed: Uncordon this node (only when this playbook drained it) (uncordoned pi3-worker-1)')
    expect(brokenOff).toEqual(readyNode())
  })

  it('update_drain: false updates without draining', async () => {
    const agent = fakeAgent({ listsAge: 60, simulation: APT_SIMULATION, rebootRequired: null, bootId: 1 })
    const server = fakeServer(readyNode())
    const rep = new RecordingReporter(1)
    const s = await runPlaybook({ name: 'update', plays: [{ name: 'p', hosts: 'agent', roles: [osUpdate] }] }, {
      inventory: parseInventory(INV.replace('    secrets_backend: file\n', '    secrets_backend: file\n    update_drain: false\n'), '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: (h) => (h.name === 'pi-k3s' ? server.conn : agent.conn),
    })
    expect(s.exitCode, rep.lines.join('\n')).toBe(0)
    expect(rep.lines).toContainEqual(expect.stringMatching(/^skipping: \[pi3-worker-1\] os-update \| Drain this node/))
    expect(server.writes).toEqual([])
    expect(agent.changes.some((c) => c.includes('full-upgrade'))).toBe(true)
  })
})
