// `npm test` runs the lab tests on a lab of their own (test/lab/test-lab.ts), never on the user's (npm run lab,
// inventory/lab.yaml): the vitest lab project's environment names another lab in every dimension a lab has on this
// machine, and the inventory the lab tests use (LAB_INVENTORY) reaches that lab only. The lab itself is shown
// beside another by test/e2e/lab.test.ts, and README's commands around `npm test` by .ci/readme-flow.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { hostVars, loadInventory } from '../../lib/inventory.ts'
import { DEFAULT_HOSTS, USER_LAB } from '../lab/paths.ts'
import { TEST_LAB_ENV } from '../lab/test-lab.ts'
import config from '../../vitest.config.ts'
import { teardown as scratchTeardown } from '../scratch-setup.ts'

const REPO = resolve(import.meta.dirname, '../..')

interface ProjectTest {
  name?: string
  env?: Record<string, string>
  globalSetup?: string[]
}
const projects = (config.test?.projects ?? []) as { test: ProjectTest }[]
const labProject = projects.find((p) => p.test.name === 'lab')?.test
const unitProject = projects.find((p) => p.test.name === 'unit')?.test

/** What test/lab/paths.ts and inventory.ts make of an environment, in a process of its own (as a worker sees it). */
function labSeenWith(env: Record<string, string>): {
  dir: string
  subnet: string
  bridge: string
  base: string
  cache: string
  machines: string[]
  inventory: string
} {
  const script = `
    const p = await import(${JSON.stringify(join(REPO, 'test/lab/paths.ts'))})
    const i = await import(${JSON.stringify(join(REPO, 'test/lab/inventory.ts'))})
    const fs = await import('node:fs')
    console.log(JSON.stringify({
      dir: p.LAB_DIR, subnet: p.LAB_SUBNET, bridge: p.LAB_BRIDGE, base: p.LAB_ARTIFACT_BASE, cache: p.LAB_CACHE,
      machines: p.DEFAULT_HOSTS.map(p.machineName),
      inventory: i.labInventoryText(fs.readFileSync(i.USER_LAB_INVENTORY, 'utf8')),
    }))`
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PI_LAB_')))
  const r = spawnSync(join(REPO, 'node_modules/.bin/node'), ['--input-type=module', '-e', script], {
    env: { ...clean, ...env },
    encoding: 'utf8',
  })
  if (r.status !== 0) throw new Error(r.stderr)
  return JSON.parse(r.stdout)
}

describe('the lab tests run on a lab of their own', () => {
  it("the lab project sets the test lab's environment and brings that lab down at the end; the unit project none", () => {
    const scratch = process.env.PI_TEST_SCRATCH
    expect(labProject?.env).toEqual({ ...TEST_LAB_ENV, TMPDIR: scratch })
    expect(labProject?.globalSetup).toEqual(['test/lab/test-lab-setup.ts', 'test/scratch-setup.ts'])
    expect(unitProject?.env).toEqual({ TMPDIR: scratch })
  })

  it('every temporary file of a run goes under one scratch directory, and the scratch goes at the end', () => {
    const scratch = process.env.PI_TEST_SCRATCH ?? ''
    expect(scratch).toMatch(/\/pi-provision-tests-[^/]+$/)
    expect(tmpdir()).toBe(scratch)
    expect(existsSync(scratch)).toBe(true)
    for (const project of [unitProject, labProject]) expect(project?.globalSetup).toContain('test/scratch-setup.ts')
    // The teardown removes it, credentials planted in it included.
    const copy = mkdtempSync(join(dirname(scratch), 'pi-provision-tests-probe-'))
    writeFileSync(join(copy, 'token'), 'K10planted::server:x')
    const saved = process.env.PI_TEST_SCRATCH
    try {
      process.env.PI_TEST_SCRATCH = copy
      scratchTeardown()
    } finally {
      process.env.PI_TEST_SCRATCH = saved
    }
    expect(existsSync(copy)).toBe(false)
  })

  const user = labSeenWith({})
  const test = labSeenWith(TEST_LAB_ENV)

  it("without the environment it is the user's lab, the one inventory/lab.yaml is written for", () => {
    expect(user).toMatchObject({
      dir: USER_LAB.dir,
      subnet: USER_LAB.subnet,
      bridge: USER_LAB.bridge,
      base: `http://${USER_LAB.subnet}.1:${USER_LAB.artifactPort}`,
      machines: DEFAULT_HOSTS,
    })
    expect(user.inventory).toBe(readFileSync(join(REPO, 'inventory/lab.yaml'), 'utf8'))
  })

  it("differs from the user's lab in state dir, subnet, bridge, artifact server and machine names; shares the image cache", () => {
    expect(test.dir).not.toBe(user.dir)
    // Neither state dir is inside the other (a disk, a NAS folder or a pidfile of one lab is never the other's).
    expect(test.dir.startsWith(`${user.dir}/`) || user.dir.startsWith(`${test.dir}/`)).toBe(false)
    expect(test.subnet).not.toBe(user.subnet)
    expect(test.bridge).not.toBe(user.bridge)
    expect(test.base).not.toBe(user.base)
    expect(new URL(test.base).port).not.toBe(new URL(user.base).port)
    expect(test.cache).toBe(user.cache)
    for (const [i, host] of DEFAULT_HOSTS.entries()) {
      expect(test.machines[i]).not.toBe(user.machines[i])
      // systemd-nspawn names a host's link vb-MACHINE and, past 15 characters, keeps the first 11 and adds a hash:
      // the labs' links differ within those 11, so they cannot clash whatever the hash is.
      expect(`vb-${test.machines[i]}`.slice(0, 11), host).not.toBe(`vb-${user.machines[i]}`.slice(0, 11))
    }
  })

  it("the test lab's inventory is lab.yaml line for line, with the test lab's addresses, files and URLs only", () => {
    const lines = test.inventory.split('\n')
    const userLines = user.inventory.split('\n')
    expect(lines.length).toBe(userLines.length)
    // Only lines naming the lab differ, each in the lab's values only.
    const changed = lines.filter((l, i) => l !== userLines[i])
    expect(changed.length).toBeGreaterThan(10)
    for (const banned of [`${USER_LAB.dir}/`, `${USER_LAB.subnet}.`, `:${USER_LAB.artifactPort}`])
      expect(test.inventory).not.toContain(banned)

    // Read by the product's own inventory loader.
    const file = join(mkdtempSync(join(tmpdir(), 'test-lab-')), 'lab.yaml')
    writeFileSync(file, test.inventory)
    const inv = loadInventory(file)
    expect([...inv.hosts.keys()]).toEqual(DEFAULT_HOSTS)
    for (const host of inv.hosts.values()) {
      const v = hostVars(host) as unknown as Record<string, unknown>
      expect(v.address, host.name).toMatch(new RegExp(`^${test.subnet.replaceAll('.', '\\.')}\\.\\d+$`))
      for (const key of ['ssh_key_file', 'known_hosts_file', 'secrets_file', 'kubeconfig_path', 'k3s_backup_dir'])
        expect(String(v[key]), key).toMatch(new RegExp(`^${test.dir}/`))
      for (const key of ['k3s_install_url', 'flux_url'])
        expect(String(v[key]), key).toMatch(new RegExp(`^${test.base}/`))
      for (const check of v.app_checks as Record<string, unknown>[]) {
        for (const key of ['url', 'pihole_api'])
          if (check[key] !== undefined) expect(String(check[key]), key).toMatch(new RegExp(`^${test.base}/`))
      }
    }
  })
})
