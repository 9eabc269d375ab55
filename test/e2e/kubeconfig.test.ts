// The kubeconfig site.mts fetches, used as the owner uses it: by the real kubectl on the workstation (this
// machine's), across the lab's bridge to :6443 on the server host, over TLS the stand-in serves with a CA made at
// install. The checks a real cluster makes must hold: the server's certificate names the address and every
// tls-san, and a kubeconfig that trusts another CA is refused.

import { execFile } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse, stringify } from 'yaml'
import { labDown } from '../lab/lab.ts'
import { controllerKubectl } from '../lab/kubectl.ts'
import { convergedLab, LAB_INVENTORY } from './helpers.ts'

const run = promisify(execFile)

interface Kubeconfig {
  clusters: { name: string; cluster: { server: string; 'certificate-authority-data': string } }[]
  contexts: { name: string }[]
  'current-context': string
}
interface InventoryVars {
  kubeconfig_path: string
  kubeconfig_context: string
}

let scratch: string
let vars: InventoryVars
let kubectlBin: string

/** kubectl as the owner types it, against a kubeconfig file; never throws, returns what it printed. */
async function kubectl(config: string, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const r = await run(kubectlBin, ['--kubeconfig', config, '--request-timeout=20s', ...args], {
      env: { PATH: '/usr/bin:/bin', HOME: scratch },
    })
    return { code: 0, out: r.stdout, err: r.stderr }
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string }
    return { code: typeof x.code === 'number' ? x.code : 1, out: x.stdout ?? '', err: x.stderr ?? '' }
  }
}

/** A copy of the fetched kubeconfig with `edit` applied, 0600 like the original. */
function variant(name: string, edit: (k: Kubeconfig) => void): string {
  const k = parse(readFileSync(vars.kubeconfig_path, 'utf8')) as Kubeconfig
  edit(k)
  const file = join(scratch, name)
  writeFileSync(file, stringify(k), { mode: 0o600 })
  return file
}

beforeAll(async () => {
  const bin = controllerKubectl()
  if (!bin) throw new Error('no real kubectl on this machine (the lab needs /usr/bin/kubectl)')
  kubectlBin = bin
  vars = (parse(readFileSync(LAB_INVENTORY, 'utf8')) as { all: { vars: InventoryVars } }).all.vars
  scratch = mkdtempSync(join(tmpdir(), 'kubeconfig-'))
  chmodSync(scratch, 0o700)
  await convergedLab()
}, 900_000)

afterAll(async () => {
  rmSync(scratch, { recursive: true, force: true })
  await labDown()
})

describe('the fetched kubeconfig on the workstation', () => {
  it('is 0600, names its context, and the real kubectl lists the Nodes through it', async () => {
    expect(statSync(vars.kubeconfig_path).mode & 0o777).toBe(0o600)
    const k = parse(readFileSync(vars.kubeconfig_path, 'utf8')) as Kubeconfig
    expect(k['current-context']).toBe(vars.kubeconfig_context)
    expect(k.clusters[0].cluster.server).toMatch(/^https:\/\/\d+\.\d+\.\d+\.\d+:6443$/)
    const r = await kubectl(vars.kubeconfig_path, 'get', 'nodes', '-o', 'json')
    expect(r.code, r.err).toBe(0)
    const nodes = (JSON.parse(r.out) as { items: { metadata: { name: string } }[] }).items.map((n) => n.metadata.name)
    expect(nodes.sort()).toEqual(['pi-k3s', 'pi3-worker-1', 'pi3-worker-2'])
  })

  it('verifies when the server is reached by its tls-san name, and not by a name the certificate lacks', async () => {
    // The workstation's resolver is not the lab's: --tls-server-name is what a DNS name in `server:` would check.
    const bySan = await kubectl(vars.kubeconfig_path, '--tls-server-name', 'pi-k3s', 'get', 'nodes', '-o', 'name')
    expect(bySan.code, bySan.err).toBe(0)
    expect(bySan.out).toContain('node/pi-k3s')
    const byOther = await kubectl(vars.kubeconfig_path, '--tls-server-name', 'nas.example', 'get', 'nodes')
    expect(byOther.code).not.toBe(0)
    expect(byOther.err).toMatch(/x509: certificate is valid for .*pi-k3s.*, not nas\.example/)
  })

  it('is refused when it trusts another CA, as a real cluster refuses it', async () => {
    const key = join(scratch, 'other-ca.key')
    const crt = join(scratch, 'other-ca.crt')
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      crt,
      '-days',
      '1',
      '-subj',
      '/CN=another-ca',
    ])
    const wrongCa = variant('wrong-ca.yaml', (k) => {
      k.clusters[0].cluster['certificate-authority-data'] = readFileSync(crt).toString('base64')
    })
    const r = await kubectl(wrongCa, 'get', 'nodes')
    expect(r.code).not.toBe(0)
    expect(r.err).toMatch(/x509: certificate signed by unknown authority/)
  })
})
