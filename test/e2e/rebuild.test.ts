// Issue 6 on the lab: rebuild a node whose SD card died. An agent comes back with its labels and taints;
// the server comes back from a datastore backup taken the way the owner's nightly job takes it, and the
// agents, never wiped, are Ready again with the Nodes and Secrets made before the failure still there.

import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { DEFAULT_HOSTS, labAddress, labBootId, labDown, labWipe } from '../lab/lab.ts'
import { convergedLab, LAB_INVENTORY, onHost, runPlaybookCli, until, takeNightlyBackup } from './helpers.ts'

// k3s_backup_dir of the lab inventory: a directory on the controller stands in for the NAS share.
const NAS = (parse(readFileSync(LAB_INVENTORY, 'utf8')) as { all: { vars: { k3s_backup_dir: string } } }).all.vars
  .k3s_backup_dir
// Backups are named by the day they were taken, and a rebuild takes none older than backup_max_age (36h).
const p2 = (n: number) => String(n).padStart(2, '0')
const now = new Date()
const TODAY = `${now.getFullYear()}-${p2(now.getMonth() + 1)}-${p2(now.getDate())}`

interface NodeList {
  items: {
    metadata: { name: string; labels: Record<string, string> }
    spec: { taints?: { key: string; value?: string; effect: string }[] }
    status: { conditions: { type: string; status: string }[] }
  }[]
}
const nodes = async () => (JSON.parse(await onHost('pi-k3s', 'k3s kubectl get nodes -o json')) as NodeList).items
const ready = (n: NodeList['items'][number]) => n.status.conditions.find((c) => c.type === 'Ready')?.status === 'True'

beforeAll(async () => {
  rmSync(NAS, { recursive: true, force: true })
  await convergedLab()
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('rebuild after an SD-card failure', () => {
  it('agent: wipe pi3-worker-1, rebuild it: new key shown and recorded, Ready with its labels; then site changes nothing', async () => {
    await labWipe('pi3-worker-1')
    const run = await runPlaybookCli('rebuild', ['pi3-worker-1'])
    expect(run.code, run.out).toBe(0)
    // The lab knows three keys per host (ed25519, ecdsa, rsa): all go, and only that host's.
    expect(run.out).toContain(
      `rebuild: dropped 3 old known_hosts entries of pi3-worker-1 (${labAddress('pi3-worker-1')})`,
    )
    expect(run.out).toMatch(/WARNING: \[pi3-worker-1\] recorded its new host key SHA256:[A-Za-z0-9+/]{43} in /)
    expect(run.out).toContain('deleted the stale Node pi3-worker-1')
    expect(Object.keys(run.recap)).toEqual(['pi3-worker-1'])
    const n = (await nodes()).find((x) => x.metadata.name === 'pi3-worker-1')!
    expect(ready(n)).toBe(true)
    expect(n.metadata.labels).toMatchObject({ hardware: 'pi3', 'workload/dns': 'unbound' })
    const site = await runPlaybookCli('site', [])
    expect(site.code, site.out).toBe(0)
    for (const [h, c] of Object.entries(site.recap)) expect(c.changed, `${h}\n${site.out}`).toBe(0)
  })

  it('server: wipe pi-k3s after a nightly backup, rebuild it from the backup: agents Ready again unwiped, old objects still there', async () => {
    await onHost(
      'pi-k3s',
      'k3s kubectl create namespace before-failure && k3s kubectl create secret generic kept -n before-failure --from-literal=note=made-before-the-sd-card-died',
    )
    await takeNightlyBackup(NAS, TODAY)
    const agentBoots = { a1: await labBootId('pi3-worker-1'), a2: await labBootId('pi3-worker-2') }
    const caHash = (await onHost('pi-k3s', 'sha256sum /var/lib/rancher/k3s/server/tls/server-ca.crt')).split(' ')[0]
    await labWipe('pi-k3s')
    const run = await runPlaybookCli('rebuild', ['pi-k3s'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(`restored backup ${TODAY} (datastore, token, tls, cred), taken `)
    // Same CA as before the failure: the agents' trust in the server still holds.
    expect((await onHost('pi-k3s', 'sha256sum /var/lib/rancher/k3s/server/tls/server-ca.crt')).split(' ')[0]).toBe(
      caHash,
    )
    const all = await until('all three nodes Ready', 120_000, async () => {
      const ns = await nodes()
      return ns.length === 3 && ns.every(ready) ? ns : undefined
    })
    expect(all.map((n) => n.metadata.name).sort()).toEqual([...DEFAULT_HOSTS].sort())
    const kept = JSON.parse(await onHost('pi-k3s', 'k3s kubectl get secret kept -n before-failure -o json')) as {
      data: Record<string, string>
    }
    expect(Buffer.from(kept.data.note, 'base64').toString()).toBe('made-before-the-sd-card-died')
    expect(await labBootId('pi3-worker-1')).toBe(agentBoots.a1)
    expect(await labBootId('pi3-worker-2')).toBe(agentBoots.a2)
    const site = await runPlaybookCli('site', [])
    expect(site.code, site.out).toBe(0)
    for (const [h, c] of Object.entries(site.recap)) expect(c.changed, `${h}\n${site.out}`).toBe(0)
  })

  it('server without a backup (-e k3s_restore=none): a fresh server with the same token, Flux again, agents Ready unwiped, apps ok', async () => {
    const agentBoots = { a1: await labBootId('pi3-worker-1'), a2: await labBootId('pi3-worker-2') }
    const caHash = (await onHost('pi-k3s', 'sha256sum /var/lib/rancher/k3s/server/tls/server-ca.crt')).split(' ')[0]
    await labWipe('pi-k3s')
    const run = await runPlaybookCli('rebuild', ['pi-k3s', '-e', 'k3s_restore=none'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).not.toContain('restored backup')
    expect(run.out).toMatch(/changed: \[pi-k3s\] flux-bootstrap \| Bootstrap Flux/)
    // A new cluster CA: the agents joined with the cluster token, which the secrets store kept, so they rejoin.
    expect((await onHost('pi-k3s', 'sha256sum /var/lib/rancher/k3s/server/tls/server-ca.crt')).split(' ')[0]).not.toBe(
      caHash,
    )
    const all = await until('all three nodes Ready', 120_000, async () => {
      const ns = await nodes()
      return ns.length === 3 && ns.every(ready) ? ns : undefined
    })
    expect(all.find((n) => n.metadata.name === 'pi3-worker-1')?.metadata.labels['workload/dns']).toBe('unbound')
    expect(await labBootId('pi3-worker-1')).toBe(agentBoots.a1)
    expect(await labBootId('pi3-worker-2')).toBe(agentBoots.a2)
    const site = await runPlaybookCli('site', [])
    expect(site.code, site.out).toBe(0)
    for (const [h, c] of Object.entries(site.recap)) expect(c.changed, `${h}\n${site.out}`).toBe(0)
  })

  it('a backup taken with another token is refused before k3s starts, saying why', async () => {
    const later = `${TODAY}-second`
    const dir = join(NAS, later, 'k3s')
    await takeNightlyBackup(NAS, later)
    // Forge a token file with another secret into the newest backup.
    const tar = await onHost(
      'pi-k3s',
      'set -e; d=$(mktemp -d); tar -xzf - -C "$d" < /dev/null 2>/dev/null || true; cp -r /var/lib/rancher/k3s/server/tls /var/lib/rancher/k3s/server/cred "$d"/; echo "K10abc::server:not-the-cluster-token" > "$d/token"; tar -czf - -C "$d" token tls cred | base64 -w0; rm -rf "$d"',
    )
    writeFileSync(join(dir, 'server-token-tls-cred.tar.gz'), Buffer.from(tar, 'base64'))
    await labWipe('pi-k3s')
    const run = await runPlaybookCli('rebuild', ['pi-k3s'])
    expect(run.code).toBe(2)
    expect(run.out).toContain(
      `backup ${later} was taken with another cluster token than the one at op://pi-cluster/k3s-node-token/token`,
    )
    expect(await onHost('pi-k3s', 'systemctl is-active k3s || true')).not.toBe('active\n')
  })
})
