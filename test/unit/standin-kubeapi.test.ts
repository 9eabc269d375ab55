// The k3s STAND-IN's Kubernetes API (test/standins/k3s/kubeapi.py) against the REAL kubectl client: the stand-in
// server runs as a process on 127.0.0.1 in a temp dir, and every kubectl command line the product issues (taken
// from the product's own builders in lib/kube.ts and the roles, only the `k3s kubectl --kubeconfig ...` prefix
// swapped for the real client and the temp kubeconfig) runs against it, its output read by the product's own
// parsers. The stand-in is a test fixture, not k3s: this shows that what the lab answers is what real kubectl
// prints, not that the stand-in is a Kubernetes. Which lines those are is CONFORMANCE (kubectl-conformance.ts,
// checked against the product's sources in kubectl-conformance.test.ts); the last test here fails when one of its
// lines did not run against the stand-in.
import { spawn, type ChildProcess } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort } from './fakes.ts'
import { cleanEnv, run, stopProcess, type RunResult } from './standin-procs.ts'
import {
  HR,
  KS,
  KUBECTL,
  kubeFact,
  kubectl,
  kubeFactKinds,
  kubeFactNamed,
  kubeGet,
  isReady,
  kubeObjects,
  type KubeObject,
  type KubeRead,
} from '../../lib/kube.ts'
import { parseNode } from '../../lib/k3s.ts'
import { MANAGED_LABELS, MANAGED_TAINTS, planNodeMetadata } from '../../lib/node-metadata.ts'
import { versionOf } from '../../lib/k3s-upgrade-run.ts'
import { CONFORMANCE, issuedLines, linePattern } from './kubectl-conformance.ts'
import { rewriteKubeconfig } from '../../roles/k3s-server.ts'
import { DRAINED_MARK } from '../../lib/scheduling.ts'
import { drainNode, podsToEvict } from '../../lib/scheduling.ts'
import { clusterFact as fluxBootstrapRead } from '../../lib/flux-bootstrap-plan.ts'
import { esoSecretDigest, esoSecretManifest, secretState } from '../../lib/external-secrets.ts'
import { REQUESTED_AT } from '../../lib/flux-readiness.ts'
import { clusterFact as appsRead } from '../../roles/apps.ts'
import { quote } from '../../lib/shell.ts'

const K3S = resolve(import.meta.dirname, '../standins/k3s/k3s-standin.py')
/** The real kubectl client (the machine's; PI_LAB_KUBECTL names another). */
const REAL_KUBECTL = process.env.PI_LAB_KUBECTL ?? '/usr/bin/kubectl'
const NODE = 'pi-k3s'
const SALT = 'conformance-salt'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe.skipIf(!existsSync(REAL_KUBECTL))(
  `the k3s stand-in's Kubernetes API with the real kubectl (${REAL_KUBECTL})`,
  { timeout: 60_000 },
  () => {
    let work = ''
    let root = ''
    let home = ''
    let kubeconfig = ''
    let server: ChildProcess | undefined
    let serverLog = ''
    let port = 0
    /** The kubectl lines run against the stand-in with its own kubeconfig (operands left off): CONFORMANCE's check. */
    const issued: string[] = []

    /** Runs a product script on "the server": its `k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml` is the real kubectl here. */
    const sh = (script: string, input = '', config = kubeconfig): Promise<RunResult> =>
      new Promise((done, fail) => {
        if (config === kubeconfig) issued.push(...issuedLines(script, KUBECTL))
        const p = spawn(
          'sh',
          ['-c', script.replaceAll(KUBECTL, `${quote(REAL_KUBECTL)} --kubeconfig ${quote(config)}`)],
          {
            env: cleanEnv({ HOME: home }),
            stdio: ['pipe', 'pipe', 'pipe'],
          },
        )
        let stdout = ''
        let stderr = ''
        p.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
        p.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
        p.on('error', fail)
        p.on('close', (code) => done({ code: code ?? -1, stdout, stderr }))
        p.stdin.on('error', () => undefined)
        p.stdin.end(input)
      })
    const server_ = { sh: (script: string) => sh(script) }
    const fact = async <T>(f: { script: string; parse: (r: RunResult) => T }): Promise<T> => f.parse(await sh(f.script))
    const node = async (name = NODE) => {
      const r = await sh(kubectl('get node -o json', name))
      return parseNode(r.code, r.stdout, r.stderr)
    }
    /** Test setup (not a product line): objects put in with the real kubectl. */
    const setup = async (manifest: unknown): Promise<void> => {
      const r = await sh(`${KUBECTL} apply -f -`, JSON.stringify(manifest))
      expect(r.code, r.stderr).toBe(0)
    }
    const readOk = (read: KubeRead): KubeObject[] => {
      expect(read.error).toBeUndefined()
      return read.objects
    }

    beforeAll(async () => {
      work = mkdtempSync(join(tmpdir(), 'standin-kubeapi-'))
      root = join(work, 'server')
      home = join(work, 'home')
      mkdirSync(home)
      mkdirSync(join(root, 'etc/rancher/k3s'), { recursive: true })
      writeFileSync(
        join(root, 'etc/rancher/k3s/config.yaml'),
        `token: kubeapi-test\nnode-name: ${NODE}\ntls-san:\n  - pi-k3s.lab\n  - 10.9.8.7\nnode-label:\n  - hardware=pi5\n`,
      )
      port = await freePort()
      server = spawn('python3', [K3S, 'server'], {
        env: cleanEnv({
          K3S_STANDIN_ROOT: root,
          K3S_STANDIN_PORT: String(port),
          K3S_STANDIN_DNS_PORT: String(await freePort()),
        }),
        stdio: ['ignore', 'ignore', 'pipe'],
      })
      server.stderr?.on('data', (d: Buffer) => (serverLog += d.toString()))
      const end = Date.now() + 20_000
      while (!serverLog.includes('k3s is up and running')) {
        if (server.exitCode !== null || Date.now() > end)
          throw new Error(`the k3s stand-in did not start:\n${serverLog}`)
        await sleep(100)
      }
      kubeconfig = join(root, 'etc/rancher/k3s/k3s.yaml')
    }, 30_000)

    afterAll(async () => {
      await stopProcess(server)
      if (work) rmSync(work, { recursive: true, force: true })
    }, 30_000)

    it('k3s.yaml holds a real CA, an admin client certificate and key; the serving certificate names every tls-san', () => {
      const kc = readFileSync(kubeconfig, 'utf8')
      const data = (key: string) => Buffer.from(new RegExp(`${key}: (\\S+)`).exec(kc)?.[1] ?? '', 'base64').toString()
      const ca = new X509Certificate(data('certificate-authority-data'))
      expect(ca.ca).toBe(true)
      expect(ca.subject).toMatch(/^CN=k3s-server-ca@\d+$/)
      const admin = new X509Certificate(data('client-certificate-data'))
      expect(admin.subject).toBe('O=system:masters\nCN=system:admin')
      expect(admin.checkPrivateKey).toBeDefined()
      expect(data('client-key-data')).toContain('PRIVATE KEY')
      const serving = new X509Certificate(
        readFileSync(join(root, 'var/lib/rancher/k3s/server/tls/serving-kube-apiserver.crt')),
      )
      expect(serving.verify(ca.publicKey)).toBe(true)
      for (const san of [
        'DNS:pi-k3s.lab',
        'DNS:localhost',
        `DNS:${NODE}`,
        'IP Address:127.0.0.1',
        'IP Address:10.9.8.7',
        'DNS:kubernetes.default.svc',
      ])
        expect(serving.subjectAltName?.split(', ')).toContain(san)
    })

    it('kubectl version reaches the server over TLS with the client certificate', async () => {
      const r = await sh(`${KUBECTL} version -o json`)
      expect(r.code, r.stderr).toBe(0)
      expect(JSON.parse(r.stdout).serverVersion.gitVersion).toBe('v1.34.3+k3s1')
    })

    it('a kubeconfig trusting another CA fails with a certificate error; without the client certificate it is Unauthorized', async () => {
      const kc = readFileSync(kubeconfig, 'utf8')
      const clientCa = readFileSync(join(root, 'var/lib/rancher/k3s/server/tls/client-ca.crt'))
      const wrongCa = join(work, 'wrong-ca.yaml')
      writeFileSync(
        wrongCa,
        kc.replace(/certificate-authority-data: \S+/, `certificate-authority-data: ${clientCa.toString('base64')}`),
      )
      const bad = await sh(`${KUBECTL} get nodes -o json`, '', wrongCa)
      expect(bad.code).toBe(1)
      expect(bad.stderr).toContain('x509: certificate signed by unknown authority')

      const anonymous = join(work, 'anonymous.yaml')
      // a token instead of the client certificate (with no credential at all kubectl would ask for a password)
      writeFileSync(
        anonymous,
        kc
          .replace(/\n {4}client-certificate-data: \S+/, '')
          .replace(/\n {4}client-key-data: \S+/, '\n    token: not-a-credential'),
      )
      const denied = await sh(`${KUBECTL} get nodes -o json`, '', anonymous)
      expect(denied.code).toBe(1)
      expect(denied.stderr).toMatch(/^error: You must be logged in to the server \(/m)
    })

    it('the server reached by a tls-san name verifies; by a name it does not carry, it does not', async () => {
      const kc = readFileSync(kubeconfig, 'utf8')
      const named = (name: string) => {
        const p = join(work, `${name}.yaml`)
        writeFileSync(p, kc.replace(/(\n {4}server: \S+)/, `$1\n    tls-server-name: ${name}`))
        return p
      }
      const ok = await sh(`${KUBECTL} get node -o json -- ${NODE}`, '', named('pi-k3s.lab'))
      expect(ok.code, ok.stderr).toBe(0)
      const other = await sh(`${KUBECTL} get node -o json -- ${NODE}`, '', named('elsewhere.example'))
      expect(other.code).toBe(1)
      expect(other.stderr).toMatch(/x509: certificate is valid for .*pi-k3s\.lab.*, not elsewhere\.example/)
    })

    it("the kubeconfig the product fetches (its server rewritten to the node's address, a named context) works with the real kubectl", async () => {
      const serving = new X509Certificate(
        readFileSync(join(root, 'var/lib/rancher/k3s/server/tls/serving-kube-apiserver.crt')),
      )
      // the address the stand-in found for this machine (as a Pi's own address), else a name it carries
      const own =
        (serving.subjectAltName ?? '')
          .split(', ')
          .map((s) => s.replace(/^IP Address:/, ''))
          .find((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a) && !['127.0.0.1', '10.43.0.1', '10.9.8.7'].includes(a)) ??
        'localhost'
      const fetched = join(work, 'fetched.yaml')
      writeFileSync(
        fetched,
        rewriteKubeconfig(readFileSync(kubeconfig, 'utf8'), `https://${own}:${port}`, 'pi-k3s-lab'),
      )
      const r = await sh(`${KUBECTL} get node -o json -- ${NODE}`, '', fetched)
      expect(r.code, r.stderr).toBe(0)
      expect(parseNode(r.code, r.stdout, r.stderr).ready).toBe(true)
      expect((await sh(`${KUBECTL} config current-context`, '', fetched)).stdout).toBe('pi-k3s-lab\n')
    })

    it("`k3s kubectl` runs the real client the lab's switch names, with k3s.yaml; without one it says so and fails", async () => {
      const k3sKubectl = (args: readonly string[]) =>
        run('python3', [K3S, 'kubectl', ...args], { K3S_STANDIN_ROOT: root, HOME: home })
      const switchFile = join(root, 'etc/k3s-standin/kubectl')
      const none = await k3sKubectl(['version', '--client'])
      expect(none.code).toBe(1)
      expect(none.stdout).toBe('')
      expect(none.stderr).toContain('k3s kubectl: no kubectl client: the k3s stand-in')
      expect(none.stderr).toContain('/etc/k3s-standin/kubectl')
      mkdirSync(join(root, 'etc/k3s-standin'), { recursive: true })
      writeFileSync(switchFile, `${REAL_KUBECTL}\n`)
      try {
        const version = await k3sKubectl(['version', '--client', '-o', 'json'])
        const real = await run(REAL_KUBECTL, ['version', '--client', '-o', 'json'])
        expect(JSON.parse(version.stdout).clientVersion).toEqual(JSON.parse(real.stdout).clientVersion)
        const n = await k3sKubectl(['get', 'node', '-o', 'json', '--', NODE])
        expect(parseNode(n.code, n.stdout, n.stderr)).toMatchObject({ exists: true, ready: true })
      } finally {
        rmSync(switchFile)
      }
    })

    // ------------------------------------------------------------------------------------------------------------
    // The conformance list: CONFORMANCE in kubectl-conformance.ts, every kubectl command line the product issues
    // (checked against the sources). The tests below run each, built by the product's own builders (flux-bootstrap's
    // two hand-written `${KUBECTL} ...` lines are copied here), in the order a site / update / retire run issues
    // them, with what the product's parser makes of the answer; the last test fails when a line did not run.
    // ------------------------------------------------------------------------------------------------------------

    it('flux-bootstrap: the cluster read before Flux (none of its objects; the ESO Secret absent)', async () => {
      const before = await fact(fluxBootstrapRead(SALT))
      expect(readOk(before)).toEqual([])
      expect(secretState(before)).toEqual({ state: 'absent' })
    })

    it('flux-bootstrap: create namespace, then the ESO Secret by server-side apply (created, then changed), read back as a digest', async () => {
      const created = await sh(`${KUBECTL} create namespace external-secrets`)
      expect(created).toMatchObject({ code: 0, stdout: 'namespace/external-secrets created\n' })
      expect(readOk(await fact(fluxBootstrapRead(SALT))).map((n) => `${n.kind}/${n.metadata.name}`)).toEqual([
        'Namespace/external-secrets',
      ])
      const again = await sh(`${KUBECTL} create namespace external-secrets`)
      expect(again.code).toBe(1)
      expect(again.stderr).toBe('Error from server (AlreadyExists): namespaces "external-secrets" already exists\n')

      const ssa = `${KUBECTL} apply --server-side --field-manager=pi-provision --force-conflicts -f - >/dev/null`
      for (const value of ['ops_first', 'ops_second']) {
        const b64 = Buffer.from(value).toString('base64')
        const r = await sh(ssa, esoSecretManifest(b64))
        expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' })
        const read = await sh(fluxBootstrapRead(SALT).script)
        expect(read.stdout).not.toContain(b64)
        expect(secretState(fluxBootstrapRead(SALT).parse(read))).toEqual({
          state: 'present',
          digest: esoSecretDigest(SALT, b64),
        })
      }
      const shown = await sh(
        `${KUBECTL} apply --server-side --field-manager=pi-provision --force-conflicts -f -`,
        esoSecretManifest('eA=='),
      )
      expect(shown.stdout).toBe('secret/onepassword-service-account serverside-applied\n')
    })

    it('one kubectl for several kinds: a kind the cluster does not have makes each kind be asked alone', async () => {
      const kinds = kubeFactKinds('conformance', ['nodes', 'nosuchthings', 'namespaces'], '-A')
      const r = await sh(kinds.script)
      expect(r.stdout).toContain('doesn\'t have a resource type "nosuchthings"') // said, and not an error
      const objects = readOk(kinds.parse(r))
      expect(new Set(objects.map((o) => o.kind))).toEqual(new Set(['Node', 'Namespace']))
      const named = kubeFactNamed(
        'conformance',
        [
          { apiVersion: 'v1', kind: 'Namespace', name: 'kube-system' },
          { apiVersion: 'nothing.example.org/v1', kind: 'Nothing', name: 'x', namespace: 'default' },
          { apiVersion: 'v1', kind: 'Namespace', name: 'not-there' },
        ],
        { key: 'token', salt: SALT },
      )
      expect(readOk(await fact(named)).map((o) => o.metadata.name)).toEqual(['kube-system'])
    })

    it('k3s-server / k3s-common: get node -o json -- NAME, read by parseNode (and a missing Node is "no node")', async () => {
      const n = await node()
      expect(n).toMatchObject({ exists: true, ready: true, unschedulable: false })
      expect(n.labels).toMatchObject({
        hardware: 'pi5',
        'node-role.kubernetes.io/control-plane': 'true',
        'kubernetes.io/hostname': NODE,
      })
      const missing = await sh(kubectl('get node -o json', 'pi3-nothing'))
      expect(missing).toMatchObject({
        code: 1,
        stdout: '',
        stderr: 'Error from server (NotFound): nodes "pi3-nothing" not found\n',
      })
      expect((await node('pi3-nothing')).exists).toBe(false)
      const unknown = await fact(kubeFact('conformance', 'nosuchthings'))
      expect(unknown).toEqual({ objects: [] }) // kubectl: the server doesn't have a resource type "nosuchthings"
    })

    it('os-update / k3s-retire: nodes,pods -A; mark, drain (evictions), uncordon and unmark the Node', async () => {
      const labels = { app: 'web' }
      await setup({
        apiVersion: 'apps/v1',
        kind: 'Deployment',
        metadata: { name: 'web', namespace: 'default' },
        spec: {
          replicas: 2,
          selector: { matchLabels: labels },
          template: { metadata: { labels }, spec: { containers: [{ name: 'c', image: 'x' }] } },
        },
      })
      const dsLabels = { app: 'node-agent' }
      await setup({
        apiVersion: 'apps/v1',
        kind: 'DaemonSet',
        metadata: { name: 'node-agent', namespace: 'default' },
        spec: {
          selector: { matchLabels: dsLabels },
          template: {
            metadata: { labels: dsLabels },
            spec: { containers: [{ name: 'c', image: 'x' }], volumes: [{ name: 'scratch', emptyDir: {} }] },
          },
        },
      })
      let evictable: string[] = []
      for (let i = 0; i < 50 && evictable.length < 2; i++, await sleep(200))
        evictable = podsToEvict(await kubeGet(server_, 'nodes,pods -A', 'Pod'), NODE)
      expect(evictable).toHaveLength(2)
      const both = readOk(await fact(kubeFact('k3s-retire', 'nodes,pods -A')))
      expect(new Set(both.map((o) => o.kind))).toEqual(new Set(['Node', 'Pod']))
      expect(readOk(await fact(kubeFact('k3s-retire', 'node', NODE))).map((o) => o.metadata.name)).toEqual([NODE])

      const mark = await sh(kubectl('annotate --overwrite node', NODE, `${DRAINED_MARK}=update`))
      expect(mark).toMatchObject({ code: 0, stdout: `node/${NODE} annotated\n` })
      expect((await node()).annotations[DRAINED_MARK]).toBe('update')

      let drained: RunResult | undefined
      await drainNode(async (script) => (drained = await sh(script)), NODE, 30, 'left as it was')
      expect(drained?.stdout).toMatch(new RegExp(`^node/${NODE} cordoned\n`))
      for (const p of evictable) expect(drained?.stdout).toContain(`evicting pod ${p}\n`)
      expect(drained?.stdout).toMatch(new RegExp(`node/${NODE} drained\n$`))
      expect(drained?.stderr).toMatch(/^Warning: ignoring DaemonSet-managed Pods: default\/node-agent-\w+\n$/)
      expect((await node()).unschedulable).toBe(true)
      expect(podsToEvict(await kubeGet(server_, 'nodes,pods -A', 'Pod'), NODE)).toEqual([]) // back Pending: one node, cordoned

      const back = await sh(`${kubectl('uncordon', NODE)} && ${kubectl('annotate node', NODE, `${DRAINED_MARK}-`)}`)
      expect(back).toMatchObject({ code: 0, stdout: `node/${NODE} uncordoned\nnode/${NODE} annotated\n` })
      const after = await node()
      expect(after.unschedulable).toBe(false)
      expect(after.annotations[DRAINED_MARK]).toBeUndefined()
    })

    /** A CustomResourceDefinition as flux bootstrap or a chart installs it (what the API checks is its name). */
    const crd = (plural: string, group: string, kind: string, version: string, scope = 'Namespaced') => ({
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: { name: `${plural}.${group}` },
      spec: {
        group,
        names: { kind, plural, singular: kind.toLowerCase() },
        scope,
        versions: [{ name: version, served: true, storage: true }],
      },
    })
    const apps = {
      apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
      kind: 'Kustomization',
      metadata: { name: 'apps', namespace: 'flux-system' },
      spec: { interval: '10m', path: './apps', prune: true, sourceRef: { kind: 'GitRepository', name: 'flux-system' } },
    }

    it('the Flux and ESO groups are served only once their CRDs exist, as by a real API server; the apps read copes before', async () => {
      await sh(`${KUBECTL} create namespace flux-system`)
      const listed = async (group: string) => (await sh(`${KUBECTL} api-resources --api-group=${group} -o name`)).stdout
      expect(await listed('kustomize.toolkit.fluxcd.io')).toBe('')
      expect(await listed('external-secrets.io')).toBe('')
      const refused = await sh(`${KUBECTL} apply -f -`, JSON.stringify(apps))
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain(
        'no matches for kind "Kustomization" in version "kustomize.toolkit.fluxcd.io/v1"',
      )
      const early = await fact(appsRead) // the apps role's read on a cluster without Flux or ESO
      expect(kubeObjects(early, 'Kustomization')).toEqual([])
      expect(kubeObjects(early, 'Node').map((o) => o.metadata.name)).toEqual([NODE])

      await setup(crd('kustomizations', 'kustomize.toolkit.fluxcd.io', 'Kustomization', 'v1'))
      await setup(crd('helmreleases', 'helm.toolkit.fluxcd.io', 'HelmRelease', 'v2'))
      await setup(crd('clustersecretstores', 'external-secrets.io', 'ClusterSecretStore', 'v1', 'Cluster'))
      expect(await listed('kustomize.toolkit.fluxcd.io')).toBe('kustomizations.kustomize.toolkit.fluxcd.io\n')
      expect(await listed('external-secrets.io')).toBe('clustersecretstores.external-secrets.io\n')
    })

    it("apps: the Flux, ESO and placement reads (several types, -A) carry each item's kind", async () => {
      await setup(apps)
      await setup({
        apiVersion: 'helm.toolkit.fluxcd.io/v2',
        kind: 'HelmRelease',
        metadata: { name: 'immich', namespace: 'default' },
        spec: {
          interval: '10m',
          chart: { spec: { chart: 'immich', sourceRef: { kind: 'HelmRepository', name: 'immich' } } },
        },
      })
      await setup({
        apiVersion: 'external-secrets.io/v1',
        kind: 'ClusterSecretStore',
        metadata: { name: 'onepassword' },
        spec: { provider: { onepasswordSDK: { vault: 'pi-cluster' } } },
      })
      const all = await fact(appsRead)
      expect(
        kubeObjects(all)
          .filter((o) => o.kind === 'Kustomization' || o.kind === 'HelmRelease')
          .map((o) => `${o.kind} ${o.metadata.namespace}/${o.metadata.name}`)
          .sort(),
      ).toEqual(['HelmRelease default/immich', 'Kustomization flux-system/apps'])
      expect(kubeObjects(all, 'ClusterSecretStore').map((o) => o.metadata.name)).toEqual(['onepassword'])
      expect(new Set(kubeObjects(all).map((o) => o.kind))).toEqual(
        new Set(['Node', 'Pod', 'Deployment', 'DaemonSet', 'Kustomization', 'HelmRelease', 'ClusterSecretStore']),
      )
      expect(await kubeGet(server_, `${KS},${HR} -A`)).toHaveLength(2)
    })

    it('apps / flux-bootstrap: annotate a Kustomization to reconcile it; read it back by name with --ignore-not-found', async () => {
      const stamp = '2026-12-03T10:00:00.000Z'
      const r = await sh(
        `${kubectl(`annotate --overwrite -n ${quote('flux-system')}`, `${KS}/apps`, `${REQUESTED_AT}=${stamp}`)} >/dev/null`,
      )
      expect(r).toMatchObject({ code: 0, stderr: '' })
      const [ks] = await kubeGet(server_, `${KS} -A`)
      expect(ks.metadata.annotations?.[REQUESTED_AT]).toBe(stamp)
      expect(await kubeGet(server_, `${KS} flux-system -n flux-system --ignore-not-found`)).toEqual([])
      expect(
        (await kubeGet(server_, `${KS} apps -n flux-system --ignore-not-found`)).map((o) => o.metadata.name),
      ).toEqual(['apps'])
    })

    it("by hand (not the product): kubectl get nodes / pods -A -o wide print kubectl's columns from the server's Tables", async () => {
      const nodes = await sh(`${KUBECTL} get nodes`)
      expect(nodes.stdout).toMatch(
        new RegExp(
          `^NAME +STATUS +ROLES +AGE +VERSION\n${NODE} +Ready +control-plane,master +\\S+ +v1\\.34\\.3\\+k3s1\n$`,
        ),
      )
      const pods = await sh(`${KUBECTL} get pods -A -o wide`)
      expect(pods.stdout).toMatch(/^NAMESPACE +NAME +READY +STATUS +RESTARTS +AGE +IP +NODE\n/)
      expect(pods.stdout).toMatch(/^default +node-agent-\w+ +\S+ +Running +0 /m)
    })

    it('k3s node labels: label, taint (add, change, remove) and annotate lines from planNodeMetadata, read back by parseNode', async () => {
      /** Plans from the Node as parseNode reads it, runs the plan's script, and reads the Node again. */
      const converge = async (labels: string[], taints: string[]) => {
        const plan = planNodeMetadata(await node(), NODE, labels, taints)
        expect(plan).not.toBeNull()
        const r = await sh(plan?.script ?? '')
        expect(r, r.stderr).toMatchObject({ code: 0, stdout: '', stderr: '' })
        const after = await node()
        expect(planNodeMetadata(after, NODE, labels, taints)).toBeNull() // what it set reads back as asked
        return { plan, after }
      }

      const first = await converge(['tier=edge', 'zone=a'], ['dedicated=db:NoSchedule', 'spot:PreferNoSchedule'])
      expect(first.plan?.script).toContain(kubectl('label --overwrite node', NODE, 'tier=edge', 'zone=a'))
      expect(first.after.labels).toMatchObject({ hardware: 'pi5', tier: 'edge', zone: 'a' })
      expect(first.after.taints.toSorted((a, b) => a.key.localeCompare(b.key))).toEqual([
        { key: 'dedicated', value: 'db', effect: 'NoSchedule' },
        { key: 'spot', effect: 'PreferNoSchedule' },
      ]) // in the order kubectl puts them, which the product does not read
      expect(first.after.annotations).toMatchObject({
        [MANAGED_LABELS]: '["tier","zone"]',
        [MANAGED_TAINTS]: '["dedicated:NoSchedule","spot:PreferNoSchedule"]',
      })

      // a label changed and one dropped (k-), a taint's value changed (overwrite) and one removed (key:Effect-)
      const second = await converge(['tier=core'], ['dedicated=web:NoSchedule'])
      expect(second.plan?.script).toContain(kubectl('taint node', NODE, 'spot:PreferNoSchedule-'))
      expect(second.plan?.script).toContain(kubectl('label --overwrite node', NODE, 'tier=core', 'zone-'))
      expect(second.after.labels.tier).toBe('core')
      expect(second.after.labels).not.toHaveProperty('zone')
      expect(second.after.taints).toEqual([{ key: 'dedicated', value: 'web', effect: 'NoSchedule' }])

      // nothing asked any more: what the tool set goes, what k3s set (hardware=pi5, the hostname) stays
      const none = await converge([], [])
      expect(none.after.labels).not.toHaveProperty('tier')
      expect(none.after.labels).toMatchObject({ hardware: 'pi5', 'kubernetes.io/hostname': NODE })
      expect(none.after.taints).toEqual([])
      expect(none.after.annotations).toMatchObject({ [MANAGED_LABELS]: '[]', [MANAGED_TAINTS]: '[]' })
    })

    it('k3s-upgrade: kubeGet nodes (Node): each Node with its release, Ready and cordoned as the preflight reads them', async () => {
      const nodes = await kubeGet(server_, 'nodes', 'Node')
      expect(nodes.map((o) => o.metadata.name)).toEqual([NODE])
      expect(versionOf(nodes[0])).toBe('v1.34.3+k3s1')
      expect(isReady(nodes[0])).toBe(true)
      expect(nodes[0].spec?.unschedulable ?? false).toBe(false)
    })

    it('k3s-agent / k3s-retire: delete node -- NAME; the Node and its node-password Secret are gone', async () => {
      await setup({
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name: 'pi3-worker-9', labels: { 'kubernetes.io/hostname': 'pi3-worker-9' } },
      })
      expect(readOk(await fact(kubeFact('k3s-retire', 'node', 'pi3-worker-9')))).toHaveLength(1)
      const r = await sh(kubectl('delete node', 'pi3-worker-9'))
      expect(r).toMatchObject({ code: 0, stdout: 'node "pi3-worker-9" deleted\n', stderr: '' })
      expect(readOk(await fact(kubeFact('k3s-retire', 'node', 'pi3-worker-9')))).toEqual([])
      const again = await sh(kubectl('delete node', 'pi3-worker-9'))
      expect(again).toMatchObject({ code: 1, stderr: 'Error from server (NotFound): nodes "pi3-worker-9" not found\n' })
    })

    it('every line of the conformance list ran here against the stand-in with the real kubectl', () => {
      const notRun = CONFORMANCE.filter((e) => !issued.some((l) => linePattern(e.line).test(l))).map((e) => e.line)
      expect(notRun).toEqual([])
    })
  },
)
