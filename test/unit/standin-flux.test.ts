// The flux STAND-IN (test/standins/flux/): installed by its stand-in install script from a local artifact
// server, driving a k3s stand-in server run as a plain process on 127.0.0.1 (K3S_STANDIN_ROOT in a temp dir).
// The GitOps repository is the stand-in's repo.json on the "server host"; the tests steer readiness with it.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort } from './fakes.ts'
import { cleanEnv, lendKubectl, run, stopProcess, type RunResult } from './standin-procs.ts'

const STANDINS = resolve(import.meta.dirname, '../standins')
const K3S = join(STANDINS, 'k3s/k3s-standin.py')

/** Rows of a `flux get` table: cells are padded and end with a tab, as tablewriter prints them. */
const cells = (stdout: string): string[][] =>
  stdout
    .split('\n')
    .filter(Boolean)
    .map((l) =>
      l
        .replace(/\t$/, '')
        .split('\t')
        .map((c) => c.trim()),
    )

interface FluxObject {
  metadata: { name: string; namespace?: string; labels?: Record<string, string> }
  spec: Record<string, unknown>
  data?: Record<string, string>
  status?: { conditions?: { type: string; status: string; message: string }[] }
}

describe('flux stand-in (test fixture imitating the flux CLI)', { timeout: 60_000 }, () => {
  let work = ''
  let root = ''
  let artifacts: Server | undefined
  let server: ChildProcess | undefined
  let serverLog = ''
  let flux = ''
  let kubeconfig = ''
  let repoJson = ''
  const fx = (args: readonly string[], env: Record<string, string> = {}, input = ''): Promise<RunResult> =>
    run(flux, [...args, '--kubeconfig', kubeconfig], env, input)
  /** `k3s kubectl` on the server host: the real client, with the server's k3s.yaml. */
  const kubectlEnv = () => ({ K3S_STANDIN_ROOT: root, HOME: join(work, 'home') })
  const kubectl = async (args: readonly string[]): Promise<RunResult> =>
    run('python3', [K3S, 'kubectl', ...args], kubectlEnv())
  const getJson = async (args: readonly string[]): Promise<FluxObject> => {
    const r = await kubectl([...args, '-o', 'json'])
    if (r.code !== 0) throw new Error(r.stderr)
    return JSON.parse(r.stdout) as FluxObject
  }
  const writeRepo = async (objects: readonly Record<string, unknown>[]): Promise<void> =>
    writeFile(repoJson, JSON.stringify({ path: 'clusters/pi-k3s', branch: 'main', objects }, null, 2))
  const bootstrapArgs = [
    'bootstrap',
    'github',
    '--owner=mtgibbs',
    '--repository=pi-cluster',
    '--branch=main',
    '--path=clusters/pi-k3s',
    '--personal',
    '--read-write-key',
  ]
  const apps = (ready: boolean): Record<string, unknown>[] => [
    { kind: 'Kustomization', name: 'infrastructure' },
    ready
      ? { kind: 'Kustomization', name: 'apps' }
      : {
          kind: 'Kustomization',
          name: 'apps',
          ready: false,
          message: "dependency 'flux-system/infrastructure' is not ready",
        },
    {
      kind: 'HelmRelease',
      namespace: 'immich',
      name: 'immich',
      chart: 'immich',
      version: '0.9.3',
      ready,
      message: ready ? undefined : 'install retries exhausted',
    },
    {
      apiVersion: 'external-secrets.io/v1',
      kind: 'ClusterSecretStore',
      metadata: { name: 'onepassword' },
      spec: { provider: { onepasswordSDK: { vault: 'pi-cluster' } } },
      ready: true,
    },
  ]

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'standin-flux-'))
    root = join(work, 'server')
    const aport = await freePort()
    const base = `http://127.0.0.1:${aport}`
    artifacts = createServer((req, res) => {
      const parts = new URL(req.url ?? '/', base).pathname.split('/').filter(Boolean)
      if (parts.some((p) => p === '..' || p === '.')) {
        res.writeHead(404).end()
        return
      }
      readFile(join(STANDINS, ...parts))
        .then((b) => res.writeHead(200).end(b.toString('utf8').replaceAll('@@ARTIFACT_BASE@@', base)))
        .catch(() => res.writeHead(404).end())
    })
    await new Promise<void>((done) => artifacts?.listen(aport, '127.0.0.1', done))

    // install flux the way fluxcd.io/install.sh is used: curl ... | FLUX_VERSION=... sh
    const installer = await run('curl', ['-sfL', `${base}/flux/install.sh`])
    expect(installer.code).toBe(0)
    const installed = await run(
      'sh',
      ['-s'],
      { FLUX_STANDIN_ROOT: join(work, 'ctl'), FLUX_VERSION: '2.7.3' },
      installer.stdout,
    )
    expect(installed.stderr).toBe('')
    expect(installed.stdout).toContain('[INFO]  Installing flux to /usr/local/bin/flux')
    flux = join(work, 'ctl/usr/local/bin/flux')

    await mkdir(join(root, 'etc/rancher/k3s'), { recursive: true })
    lendKubectl(root) // `k3s kubectl` runs the real client, as on a lab host
    await mkdir(join(work, 'home')) // the real kubectl's discovery cache
    await writeFile(join(root, 'etc/rancher/k3s/config.yaml'), 'token: flux-test\nnode-name: pi-k3s\n')
    repoJson = join(root, 'var/lib/flux-standin/repo.json')
    await mkdir(join(root, 'var/lib/flux-standin'), { recursive: true })
    const port = await freePort()
    server = spawn('python3', [K3S, 'server'], {
      env: cleanEnv({ K3S_STANDIN_ROOT: root, K3S_STANDIN_PORT: String(port) }),
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    server.stderr?.on('data', (d: Buffer) => (serverLog += d.toString()))
    const end = Date.now() + 15_000
    while (!serverLog.includes('k3s is up and running')) {
      if (Date.now() > end || server.exitCode !== null) throw new Error(`k3s stand-in did not start:\n${serverLog}`)
      await new Promise((r) => setTimeout(r, 100))
    }
    kubeconfig = join(root, 'etc/rancher/k3s/k3s.yaml')
  }, 30_000)

  afterAll(async () => {
    await stopProcess(server)
    await new Promise<void>((done) => (artifacts ? artifacts.close(() => done()) : done()))
    if (work) await rm(work, { recursive: true, force: true })
  }, 30_000)

  it('reports its stamped version and checks prerequisites; a full check fails before bootstrap', async () => {
    expect(await run(flux, ['--version'])).toMatchObject({ code: 0, stdout: 'flux version 2.7.3\n' })
    const pre = await fx(['check', '--pre'])
    expect(pre).toMatchObject({
      code: 0,
      stderr: '► checking prerequisites\n✔ Kubernetes 1.34.3+k3s1 >=1.32.0-0\n✔ prerequisites checks passed\n',
    })
    const full = await fx(['check'])
    expect(full.code).toBe(1)
    expect(full.stderr).toContain(
      "✗ no controllers found in the 'flux-system' namespace with the label selector 'app.kubernetes.io/part-of=flux'",
    )
  })

  it('bootstrap github without GITHUB_TOKEN asks for it and fails on empty stdin', async () => {
    const r = await fx(bootstrapArgs)
    expect(r.code).toBe(1)
    expect(r.stdout).toBe('Please enter your GitHub personal access token (PAT): ')
    expect(r.stderr).toBe('✗ could not read token: could not read from stdin: EOF\n')
    expect((await kubectl(['get', 'namespace', 'flux-system'])).code).toBe(1)
  })

  it('bootstrap github records flux-system, the GitRepository and Kustomization, the controllers, and the repo objects', async () => {
    await writeRepo(apps(false))
    const r = await fx(bootstrapArgs, { GITHUB_TOKEN: 'ghp_standin' })
    expect(r.stderr).toContain('✔ committed component manifests to "main"')
    expect(r.stderr).toContain(
      '✔ configured deploy key "flux-system-main-flux-system-./clusters/pi-k3s" for "https://github.com/mtgibbs/pi-cluster"',
    )
    expect(r.stderr).toContain('✔ Kustomization reconciled successfully')
    expect(r.stderr).toMatch(/✔ all components are healthy\n$/)
    expect(r.code).toBe(0)

    const gr = await getJson(['get', 'gitrepository', 'flux-system', '-n', 'flux-system'])
    expect(gr.spec).toMatchObject({
      url: 'ssh://git@github.com/mtgibbs/pi-cluster',
      ref: { branch: 'main' },
      secretRef: { name: 'flux-system' },
    })
    const ks = await getJson(['get', 'kustomizations.kustomize.toolkit.fluxcd.io', 'flux-system', '-n', 'flux-system'])
    expect(ks.spec).toMatchObject({
      path: './clusters/pi-k3s',
      prune: true,
      sourceRef: { kind: 'GitRepository', name: 'flux-system' },
    })
    const record = await getJson(['get', 'configmap', 'flux-standin-bootstrap', '-n', 'flux-system'])
    expect(record.data).toMatchObject({
      'read-write-key': 'true',
      personal: 'true',
      version: 'v2.7.3',
      components: 'source-controller,kustomize-controller,helm-controller,notification-controller',
    })
    const dep = await getJson(['get', 'deployment', 'kustomize-controller', '-n', 'flux-system'])
    expect(dep.metadata.labels?.['app.kubernetes.io/version']).toBe('v1.7.2')
    // The API serves ClusterSecretStores once their CRD exists, which the external-secrets chart installs (this
    // repository has no release of it): put in by hand, as the chart would.
    const crd = {
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: { name: 'clustersecretstores.external-secrets.io' },
      spec: {
        group: 'external-secrets.io',
        names: { kind: 'ClusterSecretStore', plural: 'clustersecretstores', singular: 'clustersecretstore' },
        scope: 'Cluster',
        versions: [{ name: 'v1', served: true, storage: true }],
      },
    }
    expect((await kubectl(['get', 'clustersecretstores'])).stderr).toContain(
      `the server doesn't have a resource type "clustersecretstores"`,
    )
    expect((await run('python3', [K3S, 'kubectl', 'apply', '-f', '-'], kubectlEnv(), JSON.stringify(crd))).code).toBe(0)
    const css = await kubectl(['get', 'clustersecretstores'])
    expect(css.stdout).toMatch(/^NAME\s+AGE\s+READY\s+STATUS\nonepassword\s+\S+\s+True\s+/)

    const check = await fx(['check'])
    expect(check.code).toBe(0)
    expect(check.stderr).toContain('✔ distribution: flux-v2.7.3\n✔ bootstrapped: true\n')
    expect(check.stderr).toContain(
      '✔ kustomize-controller: deployment ready\n► ghcr.io/fluxcd/kustomize-controller:v1.7.2\n',
    )
  })

  it('a second bootstrap with the same arguments changes nothing and says so', async () => {
    const r = await fx(bootstrapArgs, { GITHUB_TOKEN: 'ghp_standin' })
    expect(r.code).toBe(0)
    expect(r.stderr).toContain('✔ component manifests are up to date\n')
    expect(r.stderr).toContain('✔ source secret up to date\n')
    expect(r.stderr).toContain('✔ sync manifests are up to date\n')
    expect(r.stderr).not.toContain('committed')
    expect(r.stderr).not.toContain('public key')
  })

  it('flux get kustomizations/helmreleases -A print the real columns and honour --status-selector', async () => {
    const ks = await fx(['get', 'kustomizations', '-A'])
    expect(ks.code).toBe(0)
    expect(ks.stdout).toMatch(/^NAMESPACE {2}\tNAME {10}\tREVISION {42}\tSUSPENDED\tREADY\tMESSAGE *\t\n/)
    const lines = cells(ks.stdout)
    expect(lines[0]).toEqual(['NAMESPACE', 'NAME', 'REVISION', 'SUSPENDED', 'READY', 'MESSAGE'])
    const byName = new Map(lines.slice(1).map((l) => [l[1], l]))
    expect(byName.get('flux-system')?.slice(3, 5)).toEqual(['False', 'True'])
    expect(byName.get('flux-system')?.[2]).toMatch(/^main@sha1:[0-9a-f]{40}$/)
    expect(byName.get('apps')?.slice(4, 6)).toEqual(['False', "dependency 'flux-system/infrastructure' is not ready"])
    expect(byName.get('infrastructure')?.[4]).toBe('True')

    const failing = await fx(['get', 'kustomizations', '-A', '--status-selector', 'ready=false'])
    expect(
      cells(failing.stdout)
        .slice(1)
        .map((l) => l[1]),
    ).toEqual(['apps'])
    const hr = await fx(['get', 'helmreleases', '-A'])
    expect(cells(hr.stdout)).toEqual([
      ['NAMESPACE', 'NAME', 'REVISION', 'SUSPENDED', 'READY', 'MESSAGE'],
      ['immich', 'immich', '0.9.3', 'False', 'False', 'install retries exhausted'],
    ])
    const none = await fx(['get', 'helmreleases'])
    expect(none).toMatchObject({
      code: 0,
      stdout: '',
      stderr: '✗ no HelmRelease objects found in "flux-system" namespace\n',
    })
  })

  it('reconciling a Kustomization without its source re-applies the old revision; --with-source picks up the change', async () => {
    const before = (await getJson(['get', 'gitrepository', 'flux-system', '-n', 'flux-system'])) as FluxObject & {
      status: { artifact: { revision: string } }
    }
    await writeRepo(apps(true))
    const stale = await fx(['reconcile', 'kustomization', 'apps'])
    expect(stale.code).toBe(1)
    expect(stale.stderr).toBe(
      "► annotating Kustomization apps in flux-system namespace\n✔ Kustomization annotated\n◎ waiting for Kustomization reconciliation\n✗ dependency 'flux-system/infrastructure' is not ready\n",
    )
    const fresh = await fx(['reconcile', 'kustomization', 'apps', '--with-source'])
    expect(fresh.code).toBe(0)
    const rev = /✔ fetched revision (main@sha1:[0-9a-f]{40})\n/.exec(fresh.stderr)?.[1]
    expect(rev).toBeDefined()
    expect(rev).not.toBe(before.status.artifact.revision)
    expect(fresh.stderr).toMatch(new RegExp(`✔ applied revision ${rev}\\n$`))
    expect((await fx(['reconcile', 'source', 'git', 'flux-system'])).code).toBe(0)
    const hr = await fx(['reconcile', 'helmrelease', 'immich', '-n', 'immich'])
    expect(hr).toMatchObject({ code: 0 })
    expect(hr.stderr).toMatch(/✔ applied revision 0\.9\.3\n$/)
    expect((await fx(['get', 'kustomizations', '-A', '--status-selector', 'ready=false'])).stderr).toBe(
      '✗ no Kustomization objects found in any namespace\n',
    )
  })

  it('a repo without the bootstrap path fails the flux-system Kustomization the way Flux does', async () => {
    await writeFile(repoJson, JSON.stringify({ path: 'clusters/other', objects: [] }))
    const r = await fx(['reconcile', 'kustomization', 'flux-system', '--with-source'])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(
      /✗ kustomization path not found: stat \/tmp\/kustomization-\d+\/clusters\/pi-k3s: no such file or directory\n$/,
    )
    const notFound = await fx(['reconcile', 'kustomization', 'nope'])
    expect(notFound).toMatchObject({ code: 1 })
    expect(notFound.stderr).toContain('✗ Kustomization.kustomize.toolkit.fluxcd.io "nope" not found')
  })
})
