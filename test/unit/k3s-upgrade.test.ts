// The upgrade planner (lib/k3s-upgrade.ts): versions in, plan or refusals out. No host is contacted: every input is
// data, as the preflight of playbooks/upgrade.mts reads it off the cluster.

import { describe, expect, it } from 'vitest'
import {
  agentSkewRefusal,
  compareK3s,
  describePlan,
  moveOf,
  parseK3sVersion,
  planUpgrade,
  type NodeFound,
  type UpgradeInput,
} from '../../lib/k3s-upgrade.ts'

const V = (s: string) => {
  const v = parseK3sVersion(s)
  if (!v) throw new Error(`not a version: ${s}`)
  return v
}

function node(host: string, running: string, more: Partial<NodeFound> = {}): NodeFound {
  return {
    host,
    node: host,
    role: host === 'pi-k3s' ? 'server' : 'agent',
    exists: true,
    ready: true,
    unschedulable: false,
    running,
    installed: running,
    ...more,
  }
}

const OLD = 'v1.34.3+k3s1'
const NEW = 'v1.35.0+k3s1'
const cluster = (v = OLD) => [node('pi-k3s', v), node('pi3-worker-1', v), node('pi3-worker-2', v)]
const room = { dir: '/var/lib/rancher/k3s/server', freeBytes: 10e9, datastoreBytes: 5e6, neededBytes: 50e6 }

function plan(over: Partial<UpgradeInput> = {}) {
  return planUpgrade({ target: NEW, nodes: cluster(), allowDowngrade: false, disk: room, ...over })
}

describe('k3s versions', () => {
  it('parses releases and release candidates, and nothing else', () => {
    expect(V('v1.35.0+k3s1')).toMatchObject({ major: 1, minor: 35, patch: 0, rc: undefined, build: 1 })
    expect(V('v1.35.0-rc2+k3s1')).toMatchObject({ minor: 35, rc: 2 })
    for (const bad of ['1.35.0+k3s1', 'v1.35.0', 'v1.35+k3s1', 'v1.35.0+k3s', 'latest', 'v1.35.0+k3s1; id', ''])
      expect(parseK3sVersion(bad), bad).toBeNull()
  })

  it('orders by minor, patch, then a release candidate before its release, then the k3s build', () => {
    const sorted = ['v1.35.0+k3s1', 'v1.34.3+k3s2', 'v1.35.0-rc1+k3s1', 'v1.34.3+k3s1', 'v1.34.10+k3s1']
      .map(V)
      .sort(compareK3s)
      .map((v) => v.text)
    expect(sorted).toEqual(['v1.34.3+k3s1', 'v1.34.3+k3s2', 'v1.34.10+k3s1', 'v1.35.0-rc1+k3s1', 'v1.35.0+k3s1'])
  })

  it('a node moves up, down, only restarts (installed, not running), is reinstalled, or stays', () => {
    expect(moveOf(V(OLD), OLD, V(NEW))).toBe('upgrade')
    expect(moveOf(V(NEW), NEW, V(OLD))).toBe('downgrade')
    expect(moveOf(V(OLD), NEW, V(NEW))).toBe('restart')
    expect(moveOf(V(NEW), OLD, V(NEW))).toBe('reinstall')
    expect(moveOf(V(NEW), NEW, V(NEW))).toBe('none')
    expect(moveOf(V(NEW), undefined, V(NEW))).toBe('none')
  })
})

describe('planUpgrade: the plan', () => {
  it('the server first, then the agents in inventory order, each from its version to the target', () => {
    const p = plan()
    expect(p.refusals).toEqual([])
    expect(p.serverMoves).toBe(true)
    expect(p.order.map((n) => [n.node, n.role, n.from, n.to, n.move])).toEqual([
      ['pi-k3s', 'server', OLD, NEW, 'upgrade'],
      ['pi3-worker-1', 'agent', OLD, NEW, 'upgrade'],
      ['pi3-worker-2', 'agent', OLD, NEW, 'upgrade'],
    ])
    expect(describePlan(p)).toBe(
      [
        `upgrade to ${NEW}, the server first, then the agents one by one:`,
        `  1. pi-k3s (server)       ${OLD} -> ${NEW}`,
        `  2. pi3-worker-1 (agent)  ${OLD} -> ${NEW}`,
        `  3. pi3-worker-2 (agent)  ${OLD} -> ${NEW}`,
      ].join('\n'),
    )
  })

  it('a rerun after a stop: nodes at the target are left alone, the rest go on', () => {
    const p = plan({ nodes: [node('pi-k3s', NEW), node('pi3-worker-1', NEW), node('pi3-worker-2', OLD)] })
    expect(p.refusals).toEqual([])
    expect(p.serverMoves).toBe(false)
    expect(p.order.map((n) => n.move)).toEqual(['none', 'none', 'upgrade'])
    expect(describePlan(p)).toContain(`1. pi-k3s (server)       ${NEW}  (at the target: left alone)`)
  })

  it('everything at the target: nothing to do, and no snapshot', () => {
    const p = plan({ nodes: cluster(NEW) })
    expect(p.refusals).toEqual([])
    expect(p.serverMoves).toBe(false)
    expect(describePlan(p)).toBe(`every node runs ${NEW}: nothing to do`)
  })

  it('an allowed downgrade takes the agents first and the server last', () => {
    const p = plan({ target: OLD, nodes: cluster(NEW), allowDowngrade: true })
    expect(p.refusals).toEqual([])
    expect(p.order.map((n) => `${n.node}:${n.move}`)).toEqual([
      'pi3-worker-1:downgrade',
      'pi3-worker-2:downgrade',
      'pi-k3s:downgrade',
    ])
    expect(describePlan(p).split('\n')[0]).toBe(`downgrade to ${OLD}, the agents one by one, then the server:`)
  })

  it('an agent cordoned and NotReady by the run that stopped at it does not block the rerun', () => {
    const p = plan({
      nodes: [
        node('pi-k3s', NEW),
        node('pi3-worker-1', OLD, { ready: false, unschedulable: true, drainedByRun: true }),
        node('pi3-worker-2', OLD),
      ],
    })
    expect(p.refusals).toEqual([])
    expect(p.warnings).toEqual([
      'pi3-worker-1 is NotReady, cordoned by the run that stopped at it: it is installed again first',
    ])
  })

  it('a Node no host of the inventory is: a warning, not a refusal', () => {
    const p = plan({ strangers: [{ node: 'pi4-old', running: OLD, ready: false }] })
    expect(p.refusals).toEqual([])
    expect(p.warnings[0]).toContain(
      'Node pi4-old (v1.34.3+k3s1, NotReady) is in the cluster but no host of the inventory',
    )
  })
})

describe('planUpgrade: every refusal, with its reason', () => {
  it('a target that is no k3s release string', () => {
    for (const target of ['1.35.0', 'v1.35.0', 'latest', 'v1.35.0+k3s1 --flag']) {
      const p = plan({ target })
      expect(p.refusals, target).toEqual([
        `k3s_version "${target}" is not a k3s release: expected v<major>.<minor>.<patch>+k3s<n>, like v1.35.0+k3s1`,
      ])
      expect(p.order).toEqual([])
    }
  })

  it('a skipped minor (1.34 -> 1.36), named for every node, with the release to go to first; no --allow-skip', () => {
    const p = plan({ target: 'v1.36.1+k3s1' })
    expect(p.refusals).toHaveLength(3)
    expect(p.refusals[0]).toBe(
      'pi-k3s: v1.34.3+k3s1 -> v1.36.1+k3s1 skips 1.35: k3s moves one minor version at a time (go to a ' +
        'v1.35 release first, then to v1.36.1+k3s1); there is no --allow-skip',
    )
    expect(plan({ target: 'v1.37.0+k3s1' }).refusals[0]).toContain('skips 1.35, 1.36:')
    // Allowing a downgrade allows no skip, in either direction.
    const down = plan({ target: 'v1.32.0+k3s1', allowDowngrade: true })
    expect(down.refusals[0]).toContain('pi-k3s: v1.34.3+k3s1 -> v1.32.0+k3s1 skips 1.33:')
    expect(plan({ target: 'v2.0.0+k3s1' }).refusals[0]).toContain('changes the major version')
  })

  it('one agent behind by a minor already: it alone is refused for the skip', () => {
    const p = plan({ nodes: [node('pi-k3s', OLD), node('pi3-worker-1', 'v1.33.6+k3s1'), node('pi3-worker-2', OLD)] })
    expect(p.refusals).toEqual([
      'pi3-worker-1: v1.33.6+k3s1 -> v1.35.0+k3s1 skips 1.34: k3s moves one minor version at a time ' +
        '(go to a v1.34 release first, then to v1.35.0+k3s1); there is no --allow-skip',
    ])
  })

  it('a downgrade, unless asked for explicitly; the snapshot named as the way back', () => {
    const p = plan({ target: OLD, nodes: cluster(NEW) })
    expect(p.refusals).toHaveLength(3)
    expect(p.refusals[0]).toBe(
      'pi-k3s: v1.35.0+k3s1 -> v1.34.3+k3s1 is a downgrade, which k3s does not support in place: the ' +
        'way back is the snapshot taken before the upgrade (README, "Upgrading k3s": restoring it); to ' +
        'install the older release in place anyway, agents first, run with -e k3s_allow_downgrade=true',
    )
    // A patch or build back is a downgrade too.
    expect(plan({ target: 'v1.35.0+k3s1', nodes: cluster('v1.35.0+k3s2') }).refusals).toHaveLength(3)
  })

  it('an agent never newer than the server: an agent-only run (--limit) while the server is behind', () => {
    const p = plan({ outsideRun: ['pi-k3s'] })
    expect(p.refusals).toEqual([
      'pi3-worker-1 would run v1.35.0+k3s1 while the server pi-k3s runs v1.34.3+k3s1: an agent is ' +
        'never newer than the server (upgrade the server first: run playbooks/upgrade.mts without ' +
        '--limit, or with the server in it)',
      'pi3-worker-2 would run v1.35.0+k3s1 while the server pi-k3s runs v1.34.3+k3s1: an agent is ' +
        'never newer than the server (upgrade the server first: run playbooks/upgrade.mts without ' +
        '--limit, or with the server in it)',
    ])
    // The same rule for one agent's step on its own (what the agent play checks before it installs).
    expect(agentSkewRefusal('pi3-worker-1', V(NEW), 'pi-k3s', V(OLD))).toContain(
      'an agent is never newer than the server',
    )
    expect(agentSkewRefusal('pi3-worker-1', V(NEW), 'pi-k3s', V(NEW))).toBeNull()
    expect(agentSkewRefusal('pi3-worker-1', V(OLD), 'pi-k3s', V(NEW))).toBeNull()
  })

  it('a node that is not Ready, or has no Node, or could not be read', () => {
    const p = plan({
      nodes: [
        node('pi-k3s', OLD),
        node('pi3-worker-1', OLD, { ready: false }),
        { ...node('pi3-worker-2', OLD), exists: false, running: undefined },
        { ...node('pi3-worker-3', OLD), unreadable: 'no answer within 2s (4 attempts over 11.5s)' },
      ],
    })
    expect(p.refusals).toEqual([
      'pi3-worker-1 is NotReady: every node must be Ready before an upgrade (bring it back, or retire ' +
        'it with playbooks/retire.mts pi3-worker-1)',
      'pi3-worker-2 has no Node in the cluster: every node of the inventory must be in it and Ready ' +
        '(join it with playbooks/site.mts, or take it out of the inventory)',
      'pi3-worker-3 could not be read: no answer within 2s (4 attempts over 11.5s)',
    ])
    // NotReady blocks even a node that is at the target already.
    expect(plan({ nodes: [node('pi-k3s', OLD), node('pi3-worker-1', NEW, { ready: false })] }).refusals).toHaveLength(1)
  })

  it('too little disk on the server for the snapshot', () => {
    const p = plan({ disk: { ...room, freeBytes: 20 * 1024 * 1024, datastoreBytes: 8 * 1024 * 1024 } })
    expect(p.refusals).toEqual([
      'pi-k3s has 20.0 MiB free in /var/lib/rancher/k3s/server, and the snapshot of its 8.0 MiB ' +
        'datastore taken before the upgrade needs 47.7 MiB: free some space there first',
    ])
    // No snapshot when the server does not move (a rerun that finishes the agents): no room needed.
    const rerun = plan({
      nodes: [node('pi-k3s', NEW), node('pi3-worker-1', OLD)],
      disk: { ...room, freeBytes: 0 },
    })
    expect(rerun.refusals).toEqual([])
  })

  it('a server whose datastore cannot be snapshotted (embedded etcd, no python3)', () => {
    const p = plan({ snapshotProblem: 'this server keeps its datastore in embedded etcd' })
    expect(p.refusals).toEqual([
      'pi-k3s: the snapshot taken before the upgrade is impossible: this server keeps its datastore in embedded etcd',
    ])
  })

  it('every refusal at once', () => {
    const p = plan({
      target: 'v1.36.0+k3s1',
      nodes: [node('pi-k3s', OLD), node('pi3-worker-1', OLD, { ready: false })],
      disk: { ...room, freeBytes: 0 },
    })
    expect(p.refusals.map((r) => r.split(':')[0])).toEqual([
      'pi-k3s',
      'pi3-worker-1 is NotReady',
      'pi3-worker-1',
      'pi-k3s has 0.0 MiB free in /var/lib/rancher/k3s/server, and the snapshot of its 4.8 MiB ' +
        'datastore taken before the upgrade needs 47.7 MiB',
    ])
  })
})
