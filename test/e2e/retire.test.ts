// The cluster shrinks (the owner retired pi3-worker-1 for two Pi 5 workers): playbooks/retire.mts on the lab.
// A running agent is drained (its pods come up on the other nodes), k3s-agent is uninstalled on the Pi, its Node
// is deleted; a dead one is not drained (nothing could confirm an eviction) and the owner is told what is left.
// A site run warns about a Node the inventory does not name, and a retired Pi can be added again.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { labDown, labExec, labStart, labStop } from '../lab/lab.ts'
import { convergedLab, LAB_INVENTORY, onHost, runPlaybookCli, until } from './helpers.ts'

interface Obj {
  metadata: { name: string; namespace?: string; ownerReferences?: { kind: string }[] }
  spec: { nodeName?: string; unschedulable?: boolean }
  status: { phase?: string; conditions?: { type: string; status: string }[] }
}
const kubectl = async (args: string) =>
  (JSON.parse(await onHost('pi-k3s', `k3s kubectl ${args} -o json`)) as { items: Obj[] }).items
const nodeNames = async () => (await kubectl('get nodes')).map((n) => n.metadata.name).sort()
const isReady = (n: Obj) => n.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false
/** Pods of workloads other than DaemonSets, by node. */
async function podsOn(node: string): Promise<string[]> {
  return (await kubectl('get pods -A'))
    .filter((p) => p.spec.nodeName === node && !p.metadata.ownerReferences?.some((r) => r.kind === 'DaemonSet'))
    .map((p) => `${p.metadata.namespace}/${p.metadata.name}`)
}
const agentState = async (host: string) =>
  (
    await onHost(
      host,
      'for f in /usr/local/bin/k3s /etc/systemd/system/k3s-agent.service /etc/systemd/system/k3s-agent.service.env /usr/local/bin/k3s-agent-uninstall.sh; do [ -e $f ] && echo $f; done; systemctl is-active k3s-agent || true',
    )
  ).trim()

let dir = ''
/** The lab inventory without one agent: what the owner's inventory looks like once a Pi is retired. */
function inventoryWithout(host: string): string {
  const lines = readFileSync(LAB_INVENTORY, 'utf8').split('\n')
  const at = lines.indexOf(`        ${host}:`)
  if (at < 0) throw new Error(`no host ${host} in ${LAB_INVENTORY}`)
  let end = at + 1
  while (end < lines.length && /^ {9,}\S/.test(lines[end])) end++
  const file = join(dir, `without-${host}.yaml`)
  writeFileSync(file, [...lines.slice(0, at), ...lines.slice(end)].join('\n'))
  return file
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'retire-'))
  await convergedLab()
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('retiring a node', () => {
  it('the k3s server is refused before anything is touched', async () => {
    const run = await runPlaybookCli('retire', ['pi-k3s'])
    expect(run.code).toBe(1)
    expect(run.out).toContain(
      `ERROR: pi-k3s is the k3s server of ${LAB_INVENTORY}: retiring it would end the cluster; to replace its Pi, use playbooks/rebuild.mts pi-k3s`,
    )
    expect(run.out).not.toContain('PLAY')
  })

  it('a site run with an inventory that no longer names pi3-worker-2 warns about its Node and says how to retire it', async () => {
    const inv = inventoryWithout('pi3-worker-2')
    expect(readFileSync(inv, 'utf8')).not.toContain('pi3-worker-2')
    const run = await runPlaybookCli('site', ['-i', inv])
    expect(run.code, run.out).toBe(0)
    expect(Object.keys(run.recap).sort()).toEqual(['pi-k3s', 'pi3-worker-1'])
    expect(run.out).toContain(
      `WARNING: [pi-k3s] Node pi3-worker-2 (Ready) is in the cluster but not in ${inv}: retire it with \`npx zx playbooks/retire.mts pi3-worker-2\`, or add it to the inventory`,
    )
  })

  it('--check says what it would drain, uninstall and delete, and changes nothing', async () => {
    const before = {
      nodes: await nodeNames(),
      pods: await podsOn('pi3-worker-2'),
      agent: await agentState('pi3-worker-2'),
    }
    const run = await runPlaybookCli('retire', ['pi3-worker-2', '--check'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toMatch(
      /changed: \[pi-k3s\] k3s-retire \| Cordon pi3-worker-2 and drain its pods \(DaemonSet pods stay\) \(would cordon pi3-worker-2 and (evict \d+ pods? \(.*\)|nothing to evict)\)/,
    )
    expect(run.out).toContain(
      'changed: [pi3-worker-2] k3s-retire | Stop and uninstall k3s-agent (k3s-agent-uninstall.sh) (would run /usr/local/bin/k3s-agent-uninstall.sh)',
    )
    expect(run.out).toContain(
      'changed: [pi-k3s] k3s-retire | Delete the Node pi3-worker-2 (would delete the Node pi3-worker-2)',
    )
    const node = (await kubectl('get nodes')).find((n) => n.metadata.name === 'pi3-worker-2')!
    expect(node.spec.unschedulable ?? false, 'still schedulable').toBe(false)
    expect({
      nodes: await nodeNames(),
      pods: await podsOn('pi3-worker-2'),
      agent: await agentState('pi3-worker-2'),
    }).toEqual(before)
  })

  it('pi3-worker-2, running: its pods move to the other nodes, k3s is gone from the Pi, its Node is gone; a rerun and a site run without it change nothing', async () => {
    // Something to move: two replicas that want a Pi 3 and tolerate pi3-worker-2's PreferNoSchedule taint, so the
    // scheduler spreads them over both Pi 3s (the owner's GitOps apps avoid pi3-worker-2).
    const spread = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'spread', namespace: 'default' },
      spec: {
        replicas: 2,
        selector: { matchLabels: { app: 'spread' } },
        template: {
          metadata: { labels: { app: 'spread' } },
          spec: {
            nodeSelector: { hardware: 'pi3' },
            tolerations: [{ key: 'hardware', operator: 'Equal', value: 'pi3', effect: 'PreferNoSchedule' }],
            containers: [{ name: 'c', image: 'busybox' }],
          },
        },
      },
    }
    const applied = await labExec('pi-k3s', 'k3s kubectl apply -f -', { input: JSON.stringify(spread) })
    expect(applied.code, applied.stderr).toBe(0)
    const moving = await until('a spread pod on pi3-worker-2', 30_000, async () => {
      const on = await podsOn('pi3-worker-2')
      return on.some((p) => p.startsWith('default/spread-')) ? on : undefined
    })
    expect(moving.length, 'few enough pods for the step to name them all').toBeLessThanOrEqual(5)
    const run = await runPlaybookCli('retire', ['pi3-worker-2'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(
      `changed: [pi-k3s] k3s-retire | Cordon pi3-worker-2 and drain its pods (DaemonSet pods stay) (cordoned pi3-worker-2; evicted ${moving.length} pod${moving.length === 1 ? '' : 's'} (${moving.sort().join(', ')}))`,
    )
    expect(run.out).toContain(
      'changed: [pi3-worker-2] k3s-retire | Stop and uninstall k3s-agent (k3s-agent-uninstall.sh) (uninstalled k3s-agent v1.34.3+k3s1)',
    )
    expect(run.out).toContain(
      'changed: [pi-k3s] k3s-retire | Delete the Node pi3-worker-2 (deleted the Node pi3-worker-2 (and its node-password secret))',
    )
    expect(run.out).not.toContain('WARNING')

    expect(await nodeNames()).toEqual(['pi-k3s', 'pi3-worker-1'])
    expect(await agentState('pi3-worker-2')).toMatch(/^(inactive|unknown)$/)
    // The workloads that ran there run on the other nodes now (the stand-in scheduler binds at once).
    const where = await until('the moved workloads Running elsewhere', 30_000, async () => {
      const pods = (await kubectl('get pods -A')).filter(
        (p) => !p.metadata.ownerReferences?.some((r) => r.kind === 'DaemonSet'),
      )
      return pods.every(
        (p) => p.status.phase === 'Running' && ['pi-k3s', 'pi3-worker-1'].includes(p.spec.nodeName ?? ''),
      )
        ? pods
        : undefined
    })
    expect(where.filter((p) => p.metadata.name.startsWith('spread-')).map((p) => p.spec.nodeName)).toEqual([
      'pi3-worker-1',
      'pi3-worker-1',
    ])

    const again = await runPlaybookCli('retire', ['pi3-worker-2'])
    expect(again.code, again.out).toBe(0)
    for (const [h, c] of Object.entries(again.recap)) expect(c.changed, `${h}\n${again.out}`).toBe(0)

    const site = await runPlaybookCli('site', ['-i', inventoryWithout('pi3-worker-2')])
    expect(site.code, site.out).toBe(0)
    for (const [h, c] of Object.entries(site.recap)) expect(c.changed, `${h}\n${site.out}`).toBe(0)
    // No warning but site's backup check's (this lab's k3s_backup_dir has no nightly backups: backup.test.ts).
    expect(site.out.replace(/^WARNING: \[pi-k3s\] backup check: .*\n/gm, '')).not.toContain('WARNING')
    expect(site.out).toContain('ok: [pi-k3s] apps | Check every Node of the cluster is in the inventory')
  })

  it('a retired Pi added to the inventory again joins again', async () => {
    const run = await runPlaybookCli('site', [])
    expect(run.code, run.out).toBe(0)
    const n = (await kubectl('get nodes')).find((x) => x.metadata.name === 'pi3-worker-2')
    expect(n && isReady(n), 'pi3-worker-2 Ready').toBe(true)
  })

  it('pi3-worker-1, dead (powered off): no drain, its Node is deleted, exit 4 and a warning that k3s-agent is still on its card', async () => {
    await labStop('pi3-worker-1')
    await until('pi3-worker-1 NotReady', 60_000, async () => {
      const n = (await kubectl('get nodes')).find((x) => x.metadata.name === 'pi3-worker-1')
      return n && !isReady(n) ? true : undefined
    })
    const run = await runPlaybookCli('retire', ['pi3-worker-1'])
    expect(run.code, run.out).toBe(4)
    expect(run.out).toContain(
      'skipping: [pi-k3s] k3s-retire | Cordon pi3-worker-1 and drain its pods (DaemonSet pods stay) (pi3-worker-1 is NotReady (the Pi is off or gone?)',
    )
    expect(run.out).toMatch(/UNREACHABLE: \[pi3-worker-1\]/)
    expect(run.out).toContain(
      'changed: [pi-k3s] k3s-retire | Delete the Node pi3-worker-1 (deleted the Node pi3-worker-1 (and its node-password secret))',
    )
    expect(run.out).toContain(
      'WARNING: [pi-k3s] k3s-agent could not be uninstalled on pi3-worker-1: if that Pi comes back, it joins again; run retire again then',
    )
    // Not `--limit @retire.retry`, which would skip the server's plays: the whole playbook again.
    expect(run.out).toContain(
      `once the failed and unreachable hosts are fixed, run it again: npx zx playbooks/retire.mts pi3-worker-1 -i ${LAB_INVENTORY}`,
    )
    expect(run.out).not.toContain('--limit @')
    expect(await nodeNames()).toEqual(['pi-k3s', 'pi3-worker-2'])

    // Powered on again with k3s-agent still on its card: it joins by itself; retire, run again, finishes the job.
    await labStart('pi3-worker-1')
    await until('pi3-worker-1 back as a Node', 60_000, async () =>
      (await nodeNames()).includes('pi3-worker-1') ? true : undefined,
    )
    const again = await runPlaybookCli('retire', ['pi3-worker-1'])
    expect(again.code, again.out).toBe(0)
    expect(await nodeNames()).toEqual(['pi-k3s', 'pi3-worker-2'])
    expect((await labExec('pi3-worker-1', 'test -e /etc/systemd/system/k3s-agent.service')).code).not.toBe(0)
  })
})
