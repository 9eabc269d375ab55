// playbooks/upgrade.mts's roles against fake hosts (no network): what the check reads and prints, that --check
// carries nothing out, that a refusal stops the run before any other step, and the agents' own guard when the
// server is not in the run (--limit). The real runs, with the snapshot, are on the lab (test/e2e/upgrade.test.ts).
import { describe, expect, it } from 'vitest'
import { parseInventory } from '../../lib/inventory.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import type { Play } from '../../lib/role.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { upgradeAgent } from '../../roles/k3s-upgrade-agent.ts'
import {
  downgradeServerLast,
  upgradePreflight,
  upgradeReport,
  upgradeServerFirst,
  upgradeSnapshot,
} from '../../roles/k3s-upgrade.ts'
import { answerKubeFact, kinded, list, type KubeAnswer } from './fakecluster.ts'
import { answerBatch, FakeConnection, MemorySecrets } from './fakes.ts'

const OLD = 'v1.34.3+k3s1'
const NEW = 'v1.35.0+k3s1'
const TOKEN_REF = 'op://pi-cluster/k3s-node-token/token'

const INV = `all:
  vars:
    secrets_backend: file
    secrets_file: /nonexistent/secrets.yaml
    k3s_version: ${NEW}
    k3s_token_ref: ${TOKEN_REF}
  children:
    server:
      hosts:
        pi-k3s: { address: 127.0.0.55 }
    agent:
      hosts:
        pi3-worker-1: { address: 127.0.0.53 }
        pi3-worker-2: { address: 127.0.0.51 }
`
const HOSTS = ['pi-k3s', 'pi3-worker-1', 'pi3-worker-2']

interface FakeNode {
  version: string
  ready: boolean
  unschedulable?: boolean
}

/** A cluster of fake hosts: each answers `k3s --version`; the server also the cluster reads and the room fact. */
function fakeCluster(nodes: Record<string, FakeNode>) {
  const nodeJson = (name: string) => ({
    kind: 'Node',
    metadata: { name, annotations: {} },
    spec: nodes[name].unschedulable ? { unschedulable: true } : {},
    status: {
      conditions: [{ type: 'Ready', status: nodes[name].ready ? 'True' : 'Unknown' }],
      nodeInfo: { kubeletVersion: nodes[name].version, bootID: 'b' },
    },
  })
  const kube = (q: string): KubeAnswer => {
    if (q === 'nodes') return list(Object.keys(nodes).map(nodeJson))
    if (q === 'nodes,pods -A') return list(kinded('Node', Object.keys(nodes).map(nodeJson)))
    const one = /^node -o json (\S+)$/.exec(q) ?? /^node (\S+)$/.exec(q)
    if (one && nodes[one[1]]) return { stdout: JSON.stringify(nodeJson(one[1])) }
    return { code: 1, stderr: `Error from server (NotFound): nodes "${one?.[1]}" not found` }
  }
  const fact = (host: string, sub: string) => {
    if (sub.includes('/usr/local/bin/k3s --version'))
      return { stdout: `k3s version ${nodes[host].version} (abc)\n${host === 'pi-k3s' ? 'server' : 'agent'}-unit\n` }
    if (sub.includes('df -Pk')) return { stdout: 'sqlite 4194304 20480 8589934592 yes\n' }
    const k = answerKubeFact(sub, kube)
    if (k) return k
    return { stdout: '' }
  }
  const conns = Object.fromEntries(
    HOSTS.map((h) => [
      h,
      new FakeConnection(h, (script) => {
        const batch = answerBatch(script, (sub) => fact(h, sub))
        if (batch) return batch
        const direct = /get node -o json -- '?([\w-]+)'?/.exec(script)
        if (direct && !script.includes('mktemp')) {
          const a = kube(`node -o json ${direct[1]}`)
          return { code: a.code ?? 0, stdout: a.stdout ?? '', stderr: a.stderr ?? '' }
        }
        return fact(h, script)
      }),
    ]),
  )
  return conns
}

async function run(conns: Record<string, FakeConnection>, plays: Play[], opts: { check?: boolean; limit?: string }) {
  const rep = new RecordingReporter(0)
  const s = await runPlaybook(
    { name: 'upgrade', plays },
    {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets({ [TOKEN_REF]: 'K10abc::server:secret' }),
      connect: (h) => conns[h.name],
      check: opts.check,
      limit: opts.limit,
    },
  )
  return { s, lines: rep.lines }
}

const PLAYS: Play[] = [
  { name: 'check', hosts: 'server', roles: [upgradePreflight], anyErrorsFatal: true },
  { name: 'snapshot', hosts: 'server', roles: [upgradeSnapshot], anyErrorsFatal: true },
  { name: 'server first', hosts: 'server', roles: [upgradeServerFirst], anyErrorsFatal: true },
  { name: 'agents', hosts: 'agent', serial: 1, roles: [upgradeAgent], anyErrorsFatal: true },
  { name: 'server last', hosts: 'server', roles: [downgradeServerLast], anyErrorsFatal: true },
  { name: 'report', hosts: 'server', roles: [upgradeReport] },
]

/** What a run did on the hosts: any install, drain, cordon or restart. */
const changedAnything = (conns: Record<string, FakeConnection>) =>
  Object.values(conns).flatMap((c) =>
    c.scripts
      .map((x) => x.script)
      .filter((x) => /install\.sh| drain | uncordon |annotate --overwrite|systemctl restart|python3 -/.test(x)),
  )

describe('the upgrade roles on fake hosts', () => {
  it('--check: the plan in order, what each step would do, and nothing carried out', async () => {
    const conns = fakeCluster({
      'pi-k3s': { version: OLD, ready: true },
      'pi3-worker-1': { version: OLD, ready: true },
      'pi3-worker-2': { version: OLD, ready: true },
    })
    const { s, lines } = await run(conns, PLAYS, { check: true })
    expect(s.exitCode, lines.join('\n')).toBe(0)
    expect(lines).toContain(`[pi-k3s] upgrade to ${NEW}, the server first, then the agents one by one:`)
    expect(lines).toContain(`  3. pi3-worker-2 (agent)  ${OLD} -> ${NEW}`)
    expect(lines).toContain(
      'changed: [pi-k3s] k3s-upgrade-server | Install k3s_version on the server (first: an upgrade, before any agent) ' +
        `(would upgrade k3s ${OLD} -> ${NEW} (server, same flags))`,
    )
    // The agents are planned against the server as this run leaves it (its upgrade is only planned under --check).
    expect(lines).toContain(
      'changed: [pi3-worker-1] k3s-upgrade-agent | Drain this agent from the server (when it moves) ' +
        '(would drain pi3-worker-1 (cordon it))',
    )
    expect(lines).toContain(
      'changed: [pi3-worker-2] k3s-upgrade-agent | Install k3s_version on this agent (the same flags: K3S_URL and ' +
        `the token, config.yaml) (would upgrade k3s ${OLD} -> ${NEW} (agent, same flags))`,
    )
    expect(lines.some((l) => /k3s-snapshot \| Take a datastore snapshot.*\(would snapshot/.test(l))).toBe(true)
    expect(changedAnything(conns)).toEqual([])
  })

  it('a refusal in the check stops the run: no snapshot, no step on any other host', async () => {
    const conns = fakeCluster({
      'pi-k3s': { version: OLD, ready: true },
      'pi3-worker-1': { version: OLD, ready: false },
      'pi3-worker-2': { version: OLD, ready: true },
    })
    const { s, lines } = await run(conns, PLAYS, {})
    expect(s.exitCode).toBe(2)
    expect(lines.join('\n')).toContain(
      `FAILED: [pi-k3s] k3s-upgrade-preflight | Check the cluster can move to k3s_version: every node Ready, ` +
        `versions, skew, room for a snapshot (the move to ${NEW} is refused, nothing was changed:\n` +
        '    - pi3-worker-1 is NotReady: every node must be Ready before an upgrade',
    )
    expect(lines.filter((l) => /k3s-snapshot|k3s-upgrade-server|k3s-upgrade-agent/.test(l))).toEqual([])
    expect(changedAnything(conns)).toEqual([])
  })

  it('every node at the target: the check says so, and nothing changes', async () => {
    const conns = fakeCluster({
      'pi-k3s': { version: NEW, ready: true },
      'pi3-worker-1': { version: NEW, ready: true },
      'pi3-worker-2': { version: NEW, ready: true },
    })
    const { s, lines } = await run(conns, PLAYS, {})
    expect(s.exitCode, lines.join('\n')).toBe(0)
    expect(lines).toContain(`[pi-k3s] every node runs ${NEW}: nothing to do`)
    for (const h of HOSTS) expect(s.counts[h].changed, h).toBe(0)
    expect(changedAnything(conns)).toEqual([])
  })

  it('--limit agent while the server is behind: each agent refuses to be newer than the server', async () => {
    const conns = fakeCluster({
      'pi-k3s': { version: OLD, ready: true },
      'pi3-worker-1': { version: OLD, ready: true },
      'pi3-worker-2': { version: OLD, ready: true },
    })
    const { s, lines } = await run(conns, PLAYS, { limit: 'agent' })
    expect(s.exitCode).toBe(2)
    expect(lines).toContain(
      "FAILED: [pi3-worker-1] k3s-upgrade-agent | Check this agent's move: versions, and never newer than the server " +
        `(pi3-worker-1 would run ${NEW} while the server pi-k3s runs ${OLD}: an agent is never newer than the ` +
        'server (upgrade the server first: run playbooks/upgrade.mts without --limit, or with the server in it))',
    )
    // The first agent's refusal stops the play: the second is not touched.
    expect(s.counts['pi3-worker-2']).toMatchObject({ ok: 0, changed: 0, failed: 0 })
    expect(changedAnything(conns)).toEqual([])
  })

  it('a downgrade without k3s_allow_downgrade is refused in the agents too (--limit agent)', async () => {
    const conns = fakeCluster({
      'pi-k3s': { version: 'v1.35.1+k3s1', ready: true },
      'pi3-worker-1': { version: 'v1.35.1+k3s1', ready: true },
      'pi3-worker-2': { version: 'v1.35.1+k3s1', ready: true },
    })
    const { s, lines } = await run(conns, PLAYS, { limit: 'agent' })
    expect(s.exitCode).toBe(2)
    expect(lines.join('\n')).toContain(
      `(pi3-worker-1: v1.35.1+k3s1 -> ${NEW} is a downgrade, which k3s does not support in place`,
    )
    expect(changedAnything(conns)).toEqual([])
  })
})
