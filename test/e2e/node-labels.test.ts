// The owner made a 1 GB Pi 3 batch-only: a new label and a NoSchedule taint in the inventory, the old taint gone.
// k3s applies config.yaml's labels and taints only when a node registers, so site.mts must change the live Node
// through the API: the new ones there, the dropped one gone, a label set by hand left alone, k3s-agent not
// restarted, config.yaml in step for a rejoin, and the rerun changes nothing.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { labAddress, labDown } from '../lab/lab.ts'
import { convergedLab, LAB_INVENTORY, onHost, runPlaybookCli } from './helpers.ts'

interface NodeObj {
  metadata: { labels: Record<string, string> }
  spec: { taints?: { key: string; value?: string; effect: string }[] }
}
const node = async (name: string) =>
  JSON.parse(await onHost('pi-k3s', `k3s kubectl get node ${name} -o json`)) as NodeObj
const agentPid = async () => (await onHost('pi3-worker-2', 'systemctl show -p MainPID --value k3s-agent')).trim()

let inventory = ''

beforeAll(async () => {
  await convergedLab()
  // The owner's edit: pi3-worker-2 is batch-only now.
  const text = readFileSync(LAB_INVENTORY, 'utf8')
  const before = `        pi3-worker-2:
          address: ${labAddress('pi3-worker-2')}
          hardware: pi3
          node_labels:
            - hardware=pi3
          node_taints:
            - hardware=pi3:PreferNoSchedule`
  const after = `        pi3-worker-2:
          address: ${labAddress('pi3-worker-2')}
          hardware: pi3
          node_labels:
            - hardware=pi3
            - role=batch
          node_taints:
            - dedicated=batch:NoSchedule`
  if (!text.includes(before))
    throw new Error(`${LAB_INVENTORY} no longer has pi3-worker-2 as this test expects:\n${before}`)
  inventory = join(mkdtempSync(join(tmpdir(), 'labels-')), 'lab.yaml')
  writeFileSync(inventory, text.replace(before, after))
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('changing the labels and taints of a Ready agent', () => {
  it('reaches the live Node through the API, leaves a hand-set label, restarts nothing', async () => {
    await onHost('pi-k3s', 'k3s kubectl label node pi3-worker-2 owner/note=by-hand')
    const pid = await agentPid()
    const run = await runPlaybookCli('site', ['-i', inventory])
    expect(run.code, run.out).toBe(0)
    const n = await node('pi3-worker-2')
    expect(n.metadata.labels.role).toBe('batch')
    expect(n.metadata.labels.hardware).toBe('pi3')
    expect(n.metadata.labels['owner/note']).toBe('by-hand')
    expect(n.spec.taints ?? []).toContainEqual({ key: 'dedicated', value: 'batch', effect: 'NoSchedule' })
    expect((n.spec.taints ?? []).some((t) => t.key === 'hardware')).toBe(false)
    expect(await agentPid()).toBe(pid)
    expect(run.out).not.toContain('Restart k3s-agent')
    expect(run.out).toContain(
      "changed: [pi3-worker-2] k3s-agent | Give the Node the inventory's labels and taints (through the API: no restart) (label role=batch, remove taint hardware:PreferNoSchedule, taint dedicated=batch:NoSchedule)",
    )
    // config.yaml says the same, for the day the node registers again.
    const config = await onHost('pi3-worker-2', 'cat /etc/rancher/k3s/config.yaml')
    expect(config).toContain('node-label:\n  - "hardware=pi3"\n  - "role=batch"\n')
    expect(config).toContain('node-taint:\n  - "dedicated=batch:NoSchedule"\n')
    // The other nodes are as they were.
    expect((await node('pi3-worker-1')).metadata.labels['workload/dns']).toBe('unbound')
  })

  it('the rerun changes nothing', async () => {
    const run = await runPlaybookCli('site', ['-i', inventory])
    expect(run.code, run.out).toBe(0)
    for (const h of Object.keys(run.recap)) expect(run.recap[h].changed, `${h}\n${run.out}`).toBe(0)
  })

  it('taking the label out of the inventory again removes it from the Node, the hand-set one stays', async () => {
    const run = await runPlaybookCli('site', ['-i', LAB_INVENTORY])
    expect(run.code, run.out).toBe(0)
    const n = await node('pi3-worker-2')
    expect(n.metadata.labels.role).toBeUndefined()
    expect(n.metadata.labels['owner/note']).toBe('by-hand')
    expect(n.spec.taints ?? []).toEqual([{ key: 'hardware', value: 'pi3', effect: 'PreferNoSchedule' }])
  })
})
