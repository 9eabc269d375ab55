// The os-update role (playbooks/update.mts) against a fake agent and a fake server: what is drained, installed,
// rebooted and uncordoned, in which order, what --check says, and what is left alone.
import { spawnSync } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseInventory } from '../../lib/inventory.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { aptUpdateScript, osUpdate, parsePendingUpgrades } from '../../roles/os-update.ts'
import { DRAINED_MARK } from '../../lib/scheduling.ts'
import { answerKubeFact } from './fakecluster.ts'
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
  simulationCode?: number
  /** What full-upgrade leaves: a reboot asked for by these packages (or none). */
  asksReboot?: string[]
  rebootRequired: string[] | null
  /** A kernel newer than the running one in /lib/modules (until a reboot boots it). */
  newerKernel?: string
  bootId: number
}

function fakeAgent(state: AgentState) {
  const fact = (sub: string) => {
    if (sub.startsWith('echo "$(date +%s) $(stat -c %Y /var/lib/pi-provision/apt-lists-updated'))
      return { stdout: `1000000 ${state.listsAge === Infinity ? '' : 1000000 - state.listsAge}\n` }
    if (sub.startsWith('LC_ALL=C apt-get -s')) return { stdout: state.simulation, code: state.simulationCode ?? 0 }
    if (sub.startsWith('[ -e /var/run/reboot-required ]'))
      return {
        stdout: [
          ...(state.rebootRequired ? ['R', ...state.rebootRequired.map((p) => `P ${p}`)] : []),
          ...(state.newerKernel ? [`K ${state.newerKernel} 6.6.51+rpt-rpi-v8`] : []),
        ]
          .map((l) => `${l}\n`)
          .join(''),
      }
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
      state.simulationCode = 0
      if (state.asksReboot) state.rebootRequired = state.asksReboot
    }
    if (script.includes('systemctl reboot')) {
      state.bootId++
      state.rebootRequired = null
      state.newerKernel = undefined
    }
    return { code: 0 }
  })
  return { conn, changes }
}

interface NodeState {
  /** The boot the kubelet last reported; the agent's boot_id is boot-<n>. */
  bootID?: string
  ready: boolean
  unschedulable: boolean
  annotations: Record<string, string>
}

function fakeServer(
  node: NodeState,
  opts: { podsWhileCordoned?: boolean; onGet?: () => void; pinnedPod?: boolean } = {},
) {
  const writes: string[] = []
  let drained = false
  /** The drain's read: this node, the server, and the pods on this node (none once drained). */
  const nodesAndPods = (): string => {
    const here = {
      kind: 'Node',
      metadata: { name: 'pi3-worker-1', labels: { 'kubernetes.io/hostname': 'pi3-worker-1' } },
      spec: node.unschedulable ? { unschedulable: true } : {},
      status: { conditions: [{ type: 'Ready', status: node.ready ? 'True' : 'False' }] },
    }
    const other = {
      kind: 'Node',
      metadata: { name: 'pi-k3s', labels: { 'kubernetes.io/hostname': 'pi-k3s' } },
      spec: {},
      status: { conditions: [{ type: 'Ready', status: 'True' }] },
    }
    const pods =
      drained || (node.unschedulable && !opts.podsWhileCordoned)
        ? []
        : [
            {
              kind: 'Pod',
              metadata: {
                name: 'homepage-1',
                namespace: 'homepage',
                ownerReferences: [{ kind: 'Deployment', name: 'homepage' }],
              },
              spec: { nodeName: 'pi3-worker-1' },
              status: { phase: 'Running' },
            },
            ...(opts.pinnedPod
              ? [
                  {
                    kind: 'Pod',
                    metadata: {
                      name: 'unbound-1',
                      namespace: 'pihole',
                      ownerReferences: [{ kind: 'Deployment', name: 'unbound' }],
                    },
                    spec: { nodeName: 'pi3-worker-1', nodeSelector: { 'kubernetes.io/hostname': 'pi3-worker-1' } },
                    status: { phase: 'Running' },
                  },
                ]
              : []),
          ]
    return JSON.stringify({ kind: 'List', items: [here, other, ...pods] })
  }
  const conn = new FakeConnection('pi-k3s', (script) => {
    const get = /k3s kubectl --kubeconfig \S+ get node -o json -- '?([\w-]+)'?/.exec(script)
    if (get) {
      opts.onGet?.()
      return {
        stdout: JSON.stringify({
          metadata: { name: get[1], annotations: node.annotations },
          spec: node.unschedulable ? { unschedulable: true } : {},
          status: {
            conditions: [{ type: 'Ready', status: node.ready ? 'True' : 'False' }],
            nodeInfo: node.bootID ? { bootID: node.bootID } : {},
          },
        }),
      }
    }
    const read = answerKubeFact(script, (q) =>
      q === 'nodes,pods -A' ? { stdout: nodesAndPods() } : { code: 1, stderr: `unexpected read ${q}` },
    )
    if (read) return read
    writes.push(script)
    if (script.includes(`annotate --overwrite node`))
      node.annotations = { ...node.annotations, [DRAINED_MARK]: 'update' }
    if (script.includes(' drain ')) {
      node.unschedulable = true
      drained = true
    }
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
  const s = await runPlaybook(
    {
      name: 'update',
      plays: [{ name: 'Update the agents, one at a time', hosts: 'agent', serial: 1, roles: [osUpdate] }],
    },
    {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: (h) => (h.name === 'pi-k3s' ? server : agent),
      check,
    },
  )
  return {
    s,
    all: rep.lines,
    lines: rep.lines
      .filter((l) => /^(ok|changed|skipping|FAILED): /.test(l))
      .map((l) => l.replace(/^(\w+): \[pi3-worker-1\] os-update \| /, '$1: ')),
  }
}

const readyNode = (): NodeState => ({ ready: true, unschedulable: false, annotations: {} })

describe('pending upgrades', () => {
  it('reads apt-get -s full-upgrade: upgrades with their old version, new packages without one; not the Conf lines', () => {
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
    const agent = fakeAgent({
      listsAge: 7200,
      simulation: APT_SIMULATION,
      asksReboot: ['libssl3'],
      rebootRequired: null,
      bootId: 1,
    })
    const node = readyNode()
    const server = fakeServer(node)
    const first = await update(agent.conn, server.conn)
    expect(first.s.exitCode, first.lines.join('\n')).toBe(0)
    expect(first.lines).toEqual([
      'changed: Refresh the package lists (when older than apt_cache_valid_time) (apt-get update (last run by this playbook 120 min ago))',
      'changed: Drain this node from the server before updating it (agents, update_drain) (drained pi3-worker-1 (evicted 1 pod))',
      'changed: Install the updates (apt-get full-upgrade) (upgraded 3 packages: libssl3 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1, openssl 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1, linux-image-6.6.74+rpt-rpi-v8 1:6.6.74-1+rpt1 (new))',
      'ok: Stage the bootloader EEPROM update (Pi 4/5: rpi-eeprom-update -a, flashed by the reboot) (no rpi-eeprom-update on this host)',
      'changed: Reboot when an update asks for it (/var/run/reboot-required, or a newer kernel) (reboot asked for by libssl3)',
      expect.stringMatching(/^changed: handler: Reboot \(rebooted in [\d.]+s\)$/),
      'ok: Wait until the server reports this node Ready (Ready)',
      'skipping: Check that the reboot flashed the bootloader update',
      'changed: Uncordon this node (only when this playbook drained it) (uncordoned pi3-worker-1)',
    ])
    expect(
      server.writes.map((w) =>
        w
          .replace(/^.*?k3s kubectl( --kubeconfig \S+)? /, '')
          .split(' ')
          .slice(0, 2)
          .join(' '),
      ),
    ).toEqual(['annotate --overwrite', 'drain --ignore-daemonsets', 'uncordon --'])
    expect(server.writes[1]).toMatch(/drain --ignore-daemonsets --delete-emptydir-data --timeout=300s -- pi3-worker-1;/)
    expect(node).toEqual(readyNode())
    // At -v the commands run on the server for this node are shown under the server's name.
    expect(first.all).toContainEqual(
      expect.stringMatching(/^ {2}\[pi-k3s\] \$ .*k3s kubectl .*drain .* -- pi3-worker-1;.* -> exit 0 \(\d+ ms\)$/),
    )
    const upgrade = agent.changes.find((c) => c.includes('full-upgrade'))!
    expect(upgrade).toContain('-o Dpkg::Options::=--force-confold -y -q full-upgrade')
    // Pi OS's kernel packages do not ask for their reboot: the role asks for them.
    expect(upgrade).toContain("printf '%s\\n' linux-image-6.6.74+rpt-rpi-v8 >> /var/run/reboot-required.pkgs")
    expect(upgrade.indexOf('dpkg --configure -a')).toBeLessThan(upgrade.indexOf('full-upgrade'))
    expect(agent.changes.filter((c) => c.includes('systemctl reboot'))).toHaveLength(1)

    agent.changes.length = 0
    server.writes.length = 0
    const again = await update(agent.conn, server.conn)
    expect(again.s.counts['pi3-worker-1']).toMatchObject({ changed: 0, failed: 0 })
    expect(again.lines).toContain('ok: Install the updates (apt-get full-upgrade) (up to date)')
    expect(again.lines).toContain(
      'ok: Refresh the package lists (when older than apt_cache_valid_time) (fetched 0 min ago (apt_cache_valid_time 3600s))',
    )
    expect([...agent.changes, ...server.writes]).toEqual([])
  })

  it('--check says what it would do and changes nothing on the Pi or the server', async () => {
    const agent = fakeAgent({ listsAge: Infinity, simulation: APT_SIMULATION, rebootRequired: null, bootId: 1 })
    const server = fakeServer(readyNode())
    const { s, lines } = await update(agent.conn, server.conn, true)
    expect(s.exitCode).toBe(0)
    expect(lines).toContain(
      'changed: Refresh the package lists (when older than apt_cache_valid_time) (would apt-get update (never run by this playbook on this host))',
    )
    expect(lines).toContain(
      'changed: Drain this node from the server before updating it (agents, update_drain) (would drain pi3-worker-1 (evict 1 pod))',
    )
    expect(lines).toContainEqual(
      expect.stringMatching(
        /^changed: Install the updates \(apt-get full-upgrade\) \(would upgrade 3 packages: libssl3/,
      ),
    )
    expect([...agent.changes, ...server.writes]).toEqual([])
  })

  it('a node cordoned by hand is left cordoned; one this playbook drained in a run that broke off is uncordoned', async () => {
    const upToDate = { listsAge: 60, simulation: '0 upgraded\n', rebootRequired: null, bootId: 1 }
    const byHand = fakeServer({ ready: true, unschedulable: true, annotations: {} })
    const a = await update(fakeAgent({ ...upToDate }).conn, byHand.conn)
    expect(a.lines).toContain(
      'ok: Uncordon this node (only when this playbook drained it) (cordoned, but not by this playbook: left so)',
    )
    expect(byHand.writes).toEqual([])

    const brokenOff = { ready: true, unschedulable: true, annotations: { [DRAINED_MARK]: 'update' } }
    const server = fakeServer(brokenOff)
    const b = await update(fakeAgent({ ...upToDate }).conn, server.conn)
    expect(b.lines).toContain(
      'changed: Uncordon this node (only when this playbook drained it) (uncordoned pi3-worker-1)',
    )
    expect(brokenOff).toEqual(readyNode())
  })

  it('update_drain: false updates without draining', async () => {
    const agent = fakeAgent({ listsAge: 60, simulation: APT_SIMULATION, rebootRequired: null, bootId: 1 })
    const server = fakeServer(readyNode())
    const rep = new RecordingReporter(1)
    const s = await runPlaybook(
      { name: 'update', plays: [{ name: 'p', hosts: 'agent', roles: [osUpdate] }] },
      {
        inventory: parseInventory(
          INV.replace('    secrets_backend: file\n', '    secrets_backend: file\n    update_drain: false\n'),
          '/tmp/inv.yaml',
        ),
        reporter: rep,
        secrets: new MemorySecrets(),
        connect: (h) => (h.name === 'pi-k3s' ? server.conn : agent.conn),
      },
    )
    expect(s.exitCode, rep.lines.join('\n')).toBe(0)
    expect(rep.lines).toContainEqual(expect.stringMatching(/^skipping: \[pi3-worker-1\] os-update \| Drain this node/))
    expect(server.writes).toEqual([])
    expect(agent.changes.some((c) => c.includes('full-upgrade'))).toBe(true)
  })
  it('a node cordoned by hand with work to do is drained but not marked, and stays cordoned after the update', async () => {
    const agent = fakeAgent({ listsAge: 60, simulation: APT_SIMULATION, rebootRequired: null, bootId: 1 })
    const node: NodeState = { ready: true, unschedulable: true, annotations: {} }
    // Cordoned, yet a pod still runs there (the fake lists pods only while schedulable: make it list one).
    const server = fakeServer(node, { podsWhileCordoned: true })
    const { s, lines } = await update(agent.conn, server.conn)
    expect(s.exitCode, lines.join('\n')).toBe(0)
    expect(lines).toContain(
      'changed: Drain this node from the server before updating it (agents, update_drain) (drained pi3-worker-1 (evicted 1 pod); cordoned by hand, it stays cordoned)',
    )
    expect(server.writes.some((w) => w.includes('annotate'))).toBe(false)
    expect(lines).toContain(
      'ok: Uncordon this node (only when this playbook drained it) (cordoned, but not by this playbook: left so)',
    )
    expect(node.unschedulable).toBe(true)
  })

  it('a drain that failed in an earlier run (marked, cordoned, pods left) is done again before anything is installed', async () => {
    const agent = fakeAgent({ listsAge: 60, simulation: APT_SIMULATION, rebootRequired: null, bootId: 1 })
    const node: NodeState = { ready: true, unschedulable: true, annotations: { [DRAINED_MARK]: 'update' } }
    const server = fakeServer(node, { podsWhileCordoned: true })
    const { lines } = await update(agent.conn, server.conn)
    expect(lines).toContain(
      'changed: Drain this node from the server before updating it (agents, update_drain) (drained pi3-worker-1 (evicted 1 pod))',
    )
    expect(server.writes.filter((w) => w.includes(' drain '))).toHaveLength(1)
    expect(lines).toContain(
      'changed: Uncordon this node (only when this playbook drained it) (uncordoned pi3-worker-1)',
    )
  })

  it('a newer kernel in /lib/modules than the one running is a reboot owed, even with nothing to install', async () => {
    const agent = fakeAgent({
      listsAge: 60,
      simulation: '0 upgraded\n',
      rebootRequired: null,
      newerKernel: '6.6.74+rpt-rpi-v8',
      bootId: 1,
    })
    const server = fakeServer(readyNode())
    const { s, lines } = await update(agent.conn, server.conn)
    expect(s.exitCode, lines.join('\n')).toBe(0)
    expect(lines).toContain(
      'changed: Drain this node from the server before updating it (agents, update_drain) (drained pi3-worker-1 (evicted 1 pod))',
    )
    expect(lines).toContain(
      'changed: Reboot when an update asks for it (/var/run/reboot-required, or a newer kernel) (reboot kernel 6.6.74+rpt-rpi-v8 installed, 6.6.51+rpt-rpi-v8 running)',
    )
    expect(agent.changes.filter((c) => c.includes('systemctl reboot'))).toHaveLength(1)
  })

  it('after a reboot the node counts as back only once the server has heard from this boot (not the Ready of the last one)', async () => {
    const state = { listsAge: 60, simulation: '0 upgraded\n', rebootRequired: ['libc6'], bootId: 1 }
    const agent = fakeAgent(state)
    // The server keeps showing the old boot, Ready, for three more reads after the reboot.
    let stale = 3
    const node: NodeState = { ready: true, unschedulable: false, annotations: {}, bootID: 'boot-1' }
    const server = fakeServer(node, {
      onGet: () => {
        if (state.bootId > 1 && stale-- <= 0) node.bootID = `boot-${state.bootId}`
      },
    })
    const { s, lines } = await update(agent.conn, server.conn)
    expect(s.exitCode, lines.join('\n')).toBe(0)
    expect(lines).toContainEqual(
      expect.stringMatching(/^ok: Wait until the server reports this node Ready \(Ready after [\d.]+s\)$/),
    )
    expect(node.bootID).toBe('boot-2')
  })

  it('a dpkg run that was cut off (apt refuses to simulate) is finished with dpkg --configure -a, then the updates', async () => {
    const agent = fakeAgent({
      listsAge: 60,
      simulation: "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem.\n",
      simulationCode: 100,
      rebootRequired: null,
      bootId: 1,
    })
    const server = fakeServer(readyNode())
    const { s, lines } = await update(agent.conn, server.conn)
    expect(s.exitCode, lines.join('\n')).toBe(0)
    expect(lines).toContain(
      'changed: Install the updates (apt-get full-upgrade) (finished an interrupted dpkg run, then the updates)',
    )
    expect(agent.changes.find((c) => c.includes('full-upgrade'))).toContain('dpkg --configure -a')
  })
  it('pods that fit no other node are named before the drain: they wait Pending until this node is back', async () => {
    const agent = fakeAgent({ listsAge: 60, simulation: APT_SIMULATION, rebootRequired: null, bootId: 1 })
    const server = fakeServer(readyNode(), { pinnedPod: true })
    const rep = new RecordingReporter(0)
    const s = await runPlaybook(
      { name: 'update', plays: [{ name: 'p', hosts: 'agent', roles: [osUpdate] }] },
      {
        inventory: parseInventory(INV, '/tmp/inv.yaml'),
        reporter: rep,
        secrets: new MemorySecrets(),
        connect: (h) => (h.name === 'pi-k3s' ? server.conn : agent.conn),
      },
    )
    expect(s.exitCode, rep.lines.join('\n')).toBe(0)
    expect(rep.lines).toContain(
      'WARNING: [pi3-worker-1] 1 pod fits no other node and will wait Pending until pi3-worker-1 is back: pihole/unbound-1',
    )
    expect(rep.lines).toContain(
      'changed: [pi3-worker-1] os-update | Drain this node from the server before updating it (agents, update_drain) (drained pi3-worker-1 (evicted 2 pods))',
    )
  })
})

describe('apt-get update while another apt holds the lists lock (apt-daily right after a boot)', () => {
  /** Runs the script under sh with apt-get and sleep replaced: apt-get fails `locked` times with apt's lock error. */
  function runWithLock(locked: number, other = '') {
    const dir = mkdtempSync(join(tmpdir(), 'apt-lock-'))
    writeFileSync(join(dir, 'count'), '0')
    writeFileSync(
      join(dir, 'apt-get'),
      `#!/bin/sh
n=$(cat ${dir}/count); echo $((n + 1)) > ${dir}/count
${other ? `echo '${other}' >&2; exit 100` : ''}
if [ "$n" -lt ${locked} ]; then echo 'E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)' >&2; exit 100; fi
echo 'Reading package lists...'
`,
    )
    writeFileSync(join(dir, 'sleep'), '#!/bin/sh\nexit 0\n')
    chmodSync(join(dir, 'apt-get'), 0o755)
    chmodSync(join(dir, 'sleep'), 0o755)
    const r = spawnSync('sh', ['-c', aptUpdateScript(15)], { encoding: 'utf8', env: { PATH: `${dir}:/usr/bin:/bin` } })
    return { code: r.status, stderr: r.stderr, attempts: Number(readFileSync(join(dir, 'count'), 'utf8')) }
  }

  it('waits and tries again until the lock is free', () => {
    expect(runWithLock(2)).toMatchObject({ code: 0, attempts: 3 })
  })

  it("gives up after the wait, with apt's own message; any other error fails at once", () => {
    const held = runWithLock(99)
    expect(held).toMatchObject({ code: 1, attempts: 3 })
    expect(held.stderr).toContain('Could not get lock /var/lib/apt/lists/lock')
    const broken = runWithLock(
      0,
      'E: The repository http://example.invalid bookworm Release does not have a Release file.',
    )
    expect(broken).toMatchObject({ code: 1, attempts: 1 })
    expect(broken.stderr).toContain('does not have a Release file')
  })
})
