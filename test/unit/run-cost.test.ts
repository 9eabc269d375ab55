// What a run costs on the hosts, as the runner records it (the recap's stats, -v and --json): round trips per
// host, the kubectl and flux processes its scripts start (by role, an agent's role asking the server too), and
// where the run's wall time went.

import { beforeEach, describe, expect, it } from 'vitest'
import { defineFact } from '../../lib/facts.ts'
import { parseInventory } from '../../lib/inventory.ts'
import { NODE_SEEN, nodeLabelsStep, parseNode } from '../../lib/k3s.ts'
import { clusterCalls, FLUX, KUBECTL, kubeFact, kubectl } from '../../lib/kube.ts'
import { MANAGED_LABELS, MANAGED_TAINTS } from '../../lib/node-metadata.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { formatStats } from '../../lib/report-lines.ts'
import type { RunStats } from '../../lib/run-events.ts'
import type { Playbook, StepContext } from '../../lib/role.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { wallByKind } from '../../lib/run-cost.ts'
import { FakeConnection, MemorySecrets } from './fakes.ts'

const INV = `all:
  vars:
    ssh_user: pi
  children:
    server:
      hosts:
        s1: { address: 127.0.0.11 }
    agent:
      hosts:
        a1: { address: 127.0.0.12 }
`

beforeEach(() => resetSecretsForTest())

describe('cluster calls in a script', () => {
  it('counts the kubectl and flux lines lib/kube.ts builds, not a test for the flux binary or its install', () => {
    expect(clusterCalls('true')).toEqual({ kubectl: 0, flux: 0 })
    expect(clusterCalls(kubeFact('r', 'nodes,pods -A').script)).toEqual({ kubectl: 1, flux: 0 })
    const two = `${kubectl('label --overwrite node', 'n', 'a=b')} && \\\n${kubectl('annotate --overwrite node', 'n', 'x=y')}`
    expect(clusterCalls(two)).toEqual({ kubectl: 2, flux: 0 })
    expect(clusterCalls(`${FLUX} reconcile source git flux-system -n flux-system`)).toEqual({ kubectl: 0, flux: 1 })
    expect(
      clusterCalls(
        'if [ -x /usr/local/bin/flux ]; then /usr/local/bin/flux --version | head -n 1; else echo none; fi\n' +
          'install -m 0755 "$work/flux" /usr/local/bin/flux.new\nmv -f /usr/local/bin/flux.new /usr/local/bin/flux',
      ),
    ).toEqual({ kubectl: 0, flux: 1 })
    expect(clusterCalls(`${KUBECTL} get nodes`)).toEqual({ kubectl: 1, flux: 0 })
  })
})

describe('where the wall time went', () => {
  it('each instant once, under the first kind in flight (connect, cluster, facts, commands), the rest the controller', () => {
    const w = wallByKind(
      [
        { start: 10, end: 30, kind: 'connect' },
        { start: 30, end: 50, kind: 'facts' },
        { start: 40, end: 100, kind: 'cluster' },
        { start: 90, end: 120, kind: 'commands' },
        { start: 150, end: 400, kind: 'facts' }, // past the end: cut
      ],
      0,
      200,
    )
    expect(w).toEqual({ connect: 20, cluster: 60, facts: 60, commands: 20, controller: 40 })
    expect(Object.values(w).reduce((a, b) => a + b, 0)).toBe(200)
    expect(wallByKind([], 5, 10)).toEqual({ connect: 0, cluster: 0, facts: 0, commands: 0, controller: 5 })
  })
})

describe('the recap counts what each host was asked, by role', () => {
  const nodeFact = kubeFact('k', 'nodes')
  const server: Playbook = {
    name: 'cost',
    plays: [
      {
        name: 'server',
        hosts: 'server',
        roles: [
          {
            name: 'cluster-reader',
            steps: [
              {
                name: 'read',
                facts: () => [nodeFact, defineFact('uname', 'uname -m', (r) => r.stdout)],
                plan: async () => null,
              },
              {
                name: 'reconcile',
                plan: async (ctx) => {
                  await ctx.sh(`${FLUX} reconcile source git flux-system -n flux-system`)
                  return null
                },
              },
            ],
          },
        ],
      },
      {
        name: 'agents',
        hosts: 'agent',
        roles: [
          {
            name: 'joiner',
            steps: [
              {
                name: 'ask the server',
                plan: async (ctx) => {
                  const s = await ctx.hostHandle('s1')
                  await s.sh(kubectl('get node -o json', ctx.host))
                  await ctx.sh('true')
                  return null
                },
              },
            ],
          },
        ],
      },
    ],
  }

  it('round trips, fact reads and kubectl/flux per host; an agent role asking the server is counted on the server', async () => {
    const rep = new RecordingReporter(1)
    const s = await runPlaybook(server, {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: (h) => new FakeConnection(h.name),
    })
    expect(s.exitCode).toBe(0)
    const recap = rep.events.find((e) => e.kind === 'recap')
    const stats = recap?.kind === 'recap' ? recap.stats : undefined
    expect(stats?.hosts.s1).toMatchObject({
      // the role's facts in one batch; the pending-handlers read is in it
      roundTrips: 3,
      factReads: 1,
      kubectl: 2,
      flux: 1,
      roles: {
        'cluster-reader': { roundTrips: 2, kubectl: 1, flux: 1 },
        joiner: { roundTrips: 1, kubectl: 1, flux: 0 },
      },
    })
    expect(stats?.hosts.a1).toMatchObject({ kubectl: 0, flux: 0, roles: { joiner: { kubectl: 0 } } })
    expect(stats?.marks.run).toBeLessThanOrEqual(stats?.marks.recap ?? 0)
    expect(stats?.origin).toBeGreaterThan(Date.parse('2020-01-01'))
    // -v shows it after the recap, in lines the recap parsers of the lab tests do not take for host lines
    const at = rep.lines.indexOf('cost on the hosts:')
    expect(at).toBeGreaterThan(rep.lines.findIndex((l) => l.startsWith('finished in')))
    expect(rep.lines[at + 1]).toMatch(
      /^ {2}s1: 3 round trips, 2 kubectl, 1 flux \(cluster calls by role: cluster-reader 2, joiner 1\); connected in 0 ms$/,
    )
    expect(rep.lines[at + 3]).toMatch(/^time: start-up [\d.]+s .*; run [\d.]+s \(connecting 0\.00, cluster calls/)
  })

  it('-v only: a plain run shows the recap alone', async () => {
    const rep = new RecordingReporter(0)
    await runPlaybook(server, {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: (h) => new FakeConnection(h.name),
    })
    expect(rep.lines.some((l) => l.startsWith('cost on the hosts'))).toBe(false)
  })
})

describe('the start-up line', () => {
  it('names each milestone it has, and "?" for one it does not', () => {
    const stats: RunStats = {
      origin: 0,
      marks: { playbook: 110, main: 190, inventory: 215, secrets: 230, run: 231, recap: 1431 },
      wall: { connect: 50, cluster: 600, facts: 300, commands: 100, controller: 150 },
      hosts: {},
    }
    expect(formatStats(stats)).toEqual([
      'cost on the hosts:',
      'time: start-up 0.23s (node and zx 0.11, modules 0.08, inventory 0.03, secrets 0.01); run 1.20s (connecting 0.05, cluster calls 0.60, facts 0.30, commands 0.10, controller 0.15)',
    ])
    expect(formatStats({ ...stats, marks: { run: 200, recap: 300 } })[1]).toBe(
      'time: start-up 0.20s (node and zx ?, modules ?, inventory ?, secrets ?); run 0.10s (connecting 0.05, cluster calls 0.60, facts 0.30, commands 0.10, controller 0.15)',
    )
  })
})

describe('the labels step starts from the Node the Ready wait just read', () => {
  it('one get node per role on a rerun: the wait reads it, the labels step does not read it again', async () => {
    const node = {
      metadata: {
        name: 's1',
        labels: { hardware: 'pi5' },
        annotations: { [MANAGED_LABELS]: '["hardware"]', [MANAGED_TAINTS]: '[]' },
      },
      spec: {},
      status: { conditions: [{ type: 'Ready', status: 'True' }] },
    }
    const conn = new FakeConnection('s1', (script) =>
      script.includes('get node -o json') ? { stdout: JSON.stringify(node) } : { stdout: '' },
    )
    const role = {
      name: 'server-like',
      steps: [
        {
          name: 'Wait for the node to be Ready',
          plan: async (ctx: StepContext) => {
            const r = await ctx.sh(kubectl('get node -o json', 's1'))
            ctx.state.set(NODE_SEEN, parseNode(r.code, r.stdout, r.stderr), ctx.host)
            return null
          },
        },
        nodeLabelsStep(),
      ],
    }
    const rep = new RecordingReporter(0)
    const s = await runPlaybook(
      { name: 'labels', plays: [{ name: 'server', hosts: 'server', roles: [role] }] },
      {
        inventory: parseInventory(INV, '/tmp/inv.yaml'),
        reporter: rep,
        secrets: new MemorySecrets(),
        connect: () => conn,
        extraVars: { node_labels: ['hardware=pi5'] },
      },
    )
    expect(s.exitCode, rep.lines.join('\n')).toBe(0)
    expect(rep.lines).toContain(
      "ok: [s1] server-like | Give the Node the inventory's labels and taints (through the API: no restart)",
    )
    expect(conn.scripts.filter((x) => x.script.includes('get node -o json'))).toHaveLength(1)
    // Without a Ready wait before it (a --check, or --tags), the step reads the Node itself.
    const alone = new FakeConnection('s1', (script) =>
      script.includes('get node -o json') ? { stdout: JSON.stringify(node) } : { stdout: '' },
    )
    await runPlaybook(
      {
        name: 'labels',
        plays: [{ name: 'server', hosts: 'server', roles: [{ name: 'l', steps: [nodeLabelsStep()] }] }],
      },
      {
        inventory: parseInventory(INV, '/tmp/inv.yaml'),
        reporter: new RecordingReporter(0),
        secrets: new MemorySecrets(),
        connect: () => alone,
        extraVars: { node_labels: ['hardware=pi5'] },
      },
    )
    expect(alone.scripts.filter((x) => x.script.includes('get node -o json'))).toHaveLength(1)
  })
})
