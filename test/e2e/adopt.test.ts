// Adopting a cluster the owner set up by hand: k3s installed on pi-k3s with the install script (its own token,
// made by k3s), some data in it, and a secrets store that has never heard of the cluster token. site.mts must keep
// the server's own token (a new one would keep k3s from starting: "bootstrap data already found and encrypted with
// different token"), put it in the store, join the agents with it, and leave the owner's data where it was.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse, parseDocument } from 'yaml'
import { DEFAULT_HOSTS, LAB_ARTIFACT_BASE, labDown, labExec, labUp } from '../lab/lab.ts'
import { LAB_INVENTORY, onHost, runPlaybookCli } from './helpers.ts'

const ITEM = `k3s-adopted-${process.pid}`
let inventory: string
let secretsFile: string

beforeAll(async () => {
  await labUp(DEFAULT_HOSTS, { fresh: true })
  const doc = parseDocument(readFileSync(LAB_INVENTORY, 'utf8'))
  // A reference the store has no value for: the tool has never run against this cluster.
  doc.setIn(['all', 'vars', 'k3s_token_ref'], `op://pi-cluster/${ITEM}/token`)
  secretsFile = String(doc.getIn(['all', 'vars', 'secrets_file']))
  inventory = join(mkdtempSync(join(tmpdir(), 'adopt-')), 'lab.yaml')
  writeFileSync(inventory, doc.toString())
  const version = String(doc.getIn(['all', 'vars', 'k3s_version']))

  // The owner's manual steps: the Pi prepared, then k3s from its install script, then something of theirs in it.
  const prep = await runPlaybookCli('pi-prep', ['-i', inventory, '--limit', 'pi-k3s'])
  if (prep.code !== 0) throw new Error(`pi-prep failed:\n${prep.out}`)
  const install = await labExec(
    'pi-k3s',
    `set -e
curl -sfL ${LAB_ARTIFACT_BASE}/k3s/install.sh | INSTALL_K3S_VERSION=${version} sh -s - server >/dev/null
for i in $(seq 120); do k3s kubectl get node pi-k3s >/dev/null 2>&1 && break; sleep 0.5; done
k3s kubectl create configmap owners-notes --from-literal=note=made-by-hand >/dev/null`,
    { timeoutMs: 180_000 },
  )
  if (install.code !== 0) throw new Error(`manual install failed: ${install.stderr}`)
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('site.mts on a cluster set up by hand', () => {
  it("keeps the server's own token, stores it, joins the agents with it, and the owner's data stays", async () => {
    const own = (await onHost('pi-k3s', 'cat /var/lib/rancher/k3s/server/token')).trim()
    const run = await runPlaybookCli('site', ['-i', inventory])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(
      `changed: [pi-k3s] k3s-server | Get the cluster token from the secrets store (create it on first run) (keep this server's own cluster token (/var/lib/rancher/k3s/server/token) at op://pi-cluster/${ITEM}/token)`,
    )
    // The token is never printed, even though the run read it.
    expect(run.out).not.toContain(own)
    const store = parse(readFileSync(secretsFile, 'utf8')) as Record<string, Record<string, { token?: string }>>
    expect(store['pi-cluster'][ITEM].token).toBe(own)
    expect((await onHost('pi-k3s', 'cat /var/lib/rancher/k3s/server/token')).trim()).toBe(own)
    expect((await onHost('pi-k3s', "k3s kubectl get configmap owners-notes -o jsonpath='{.data.note}'")).trim()).toBe(
      'made-by-hand',
    )
    const ready = await onHost(
      'pi-k3s',
      `k3s kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}'`,
    )
    expect(ready.trim().split(' ').sort()).toEqual(['pi-k3s=True', 'pi3-worker-1=True', 'pi3-worker-2=True'])

    const again = await runPlaybookCli('site', ['-i', inventory])
    expect(again.code, again.out).toBe(0)
    for (const [h, c] of Object.entries(again.recap)) expect(c.changed, `${h}\n${again.out}`).toBe(0)
  })
})
