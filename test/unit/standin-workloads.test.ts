// The lab's pieces for issue 5, without the lab: the artifact server's routes (test/lab/apps.ts) and the k3s
// and flux STAND-INS as the lab serves them, run as plain processes on 127.0.0.1 in a temp dir. Checks what the
// flux-bootstrap and apps roles rely on: flux from a GitHub-shaped release tarball, the GitOps repository
// cloned from the lab's "GitHub", pods bound to nodes by nodeSelector (and Pending when none fits), the
// Pi-hole DNS stand-in that answers while its pod runs, server-side apply without a last-applied copy, and
// the roles' own parsers reading the stand-ins' JSON.
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort } from './fakes.ts'
import { cleanEnv, lendKubectl, run, stopProcess, type RunResult } from './standin-procs.ts'
import { probeDns, probeHttp } from '../../lib/probes.ts'
import { checkEso } from '../../lib/external-secrets.ts'
import { bootstrapDecision } from '../../lib/flux-bootstrap-plan.ts'
import { readiness } from '../../lib/flux-readiness.ts'
import { checkPlacement, parsePlacement } from '../../lib/placement.ts'
import { parseKubeJson, type KubeObject } from '../../lib/kube.ts'
import { createArtifactServer } from '../lab/artifacts.ts'
import { labAppsRoutes, labGitopsRepo, setLabAppHealth } from '../lab/apps.ts'

const STANDINS = resolve(import.meta.dirname, '../standins')

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('the lab stand-ins for flux-bootstrap and apps', { timeout: 60_000 }, () => {
  let work = ''
  let root = ''
  let labDir = ''
  let base = ''
  let artifacts: Server | undefined
  let server: ChildProcess | undefined
  let serverLog = ''
  let k3s = ''
  let home = ''
  let flux = ''
  let kubeconfig = ''
  let dnsPort = 0
  const kubectl = (args: readonly string[], input = ''): Promise<RunResult> =>
    run('python3', [k3s, 'kubectl', '--kubeconfig', kubeconfig, ...args], { K3S_STANDIN_ROOT: root, HOME: home }, input)
  const get = async (args: string): Promise<KubeObject[]> =>
    parseKubeJson(await kubectl(['get', ...args.split(' '), '-o', 'json']), args)
  const fx = (args: readonly string[], env: Record<string, string> = {}) =>
    run(flux, [...args, '--kubeconfig', kubeconfig], env)
  const dns = () =>
    probeDns({
      kind: 'dns',
      app: 'pihole',
      server: '127.0.0.1',
      port: dnsPort,
      name: 'google.com',
      type: 'A',
      timeoutMs: 700,
    })
  const repoJson = () => join(root, 'var/lib/flux-standin/repo.json')
  const dnsControl = () => join(root, 'var/lib/flux-standin/dns.json')

  async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
    const end = Date.now() + ms
    for (;;) {
      const v = await fn()
      if (v !== undefined) return v
      if (Date.now() > end)
        throw new Error(`timed out waiting for ${what}\n${serverLog.split('\n').slice(-15).join('\n')}`)
      await sleep(200)
    }
  }

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'standin-workloads-'))
    root = join(work, 'server')
    labDir = join(work, 'lab')
    const aport = await freePort()
    base = `http://127.0.0.1:${aport}`
    artifacts = createArtifactServer({ root: STANDINS, base, routes: labAppsRoutes({ labDir, root: STANDINS, base }) })
    await new Promise<void>((done) => artifacts?.listen(aport, '127.0.0.1', done))

    // The k3s binary as the lab's install script fetches it (with the artifact base filled in).
    const bin = await fetch(`${base}/k3s/k3s-standin.py`)
    k3s = join(work, 'k3s')
    writeFileSync(k3s, await bin.text())
    chmodSync(k3s, 0o755)
    // and its modules (the ones k3s/modules.txt names), next to it, where the k3s stand-in also looks for them
    const modules = (await (await fetch(`${base}/k3s/modules.txt`)).text())
      .split('\n')
      .filter((l) => /^\w+\.py$/.test(l))
    expect(modules).toContain('kubeapi.py')
    for (const m of modules) writeFileSync(join(work, m), await (await fetch(`${base}/k3s/${m}`)).text())

    mkdirSync(join(root, 'etc/rancher/k3s'), { recursive: true })
    lendKubectl(root) // `k3s kubectl` runs the real client, as on a lab host
    home = join(work, 'home') // the real kubectl's discovery cache
    mkdirSync(home)
    writeFileSync(
      join(root, 'etc/rancher/k3s/config.yaml'),
      'token: workloads-test\nnode-name: pi-k3s\nnode-label:\n  - hardware=pi5\n  - workload/dns=unbound\n',
    )
    const port = await freePort()
    dnsPort = await freePort()
    server = spawn('python3', [k3s, 'server'], {
      env: cleanEnv({ K3S_STANDIN_ROOT: root, K3S_STANDIN_PORT: String(port), K3S_STANDIN_DNS_PORT: String(dnsPort) }),
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    server.stderr?.on('data', (d: Buffer) => (serverLog += d.toString()))
    await until('the k3s stand-in', async () =>
      serverLog.includes('k3s is up and running')
        ? true
        : server?.exitCode !== null
          ? Promise.reject(new Error(serverLog))
          : undefined,
    )
    kubeconfig = join(root, 'etc/rancher/k3s/k3s.yaml')
  }, 30_000)

  afterAll(async () => {
    await stopProcess(server)
    await new Promise<void>((done) => (artifacts ? artifacts.close(() => done()) : done()))
    if (work) rmSync(work, { recursive: true, force: true })
  }, 30_000)

  it('serves flux as a GitHub-shaped release: tarball + checksums, the binary stamped with the version', async () => {
    const res = await fetch(`${base}/flux/releases/download/v2.7.3/flux_2.7.3_linux_arm64.tar.gz`)
    expect(res.status).toBe(200)
    const tarball = Buffer.from(await res.arrayBuffer())
    writeFileSync(join(work, 'flux.tar.gz'), tarball)
    const sums = await (await fetch(`${base}/flux/releases/download/v2.7.3/flux_2.7.3_checksums.txt`)).text()
    expect(sums).toContain(`${createHash('sha256').update(tarball).digest('hex')}  flux_2.7.3_linux_arm64.tar.gz\n`)
    mkdirSync(join(work, 'ctl'), { recursive: true })
    expect((await run('tar', ['-xzf', join(work, 'flux.tar.gz'), '-C', join(work, 'ctl'), 'flux'])).code).toBe(0)
    flux = join(work, 'ctl/flux')
    expect(await run(flux, ['--version'])).toMatchObject({ code: 0, stdout: 'flux version 2.7.3\n' })
    expect((await fetch(`${base}/flux/releases/download/v2.7.3/flux_2.7.4_linux_arm64.tar.gz`)).status).toBe(404)
  })

  it('app endpoints answer like the apps, and a test can make one unhealthy or slow', async () => {
    const ask = (path: string, expectBody?: string) =>
      probeHttp({ kind: 'http', app: 'x', url: `${base}${path}`, expectBody, timeoutMs: 500 })
    expect(await ask('/apps/jellyfin/health', 'Healthy')).toMatchObject({ ok: true })
    expect((await fetch(`${base}/apps/immich/api/server/ping`).then((r) => r.json())) as unknown).toEqual({
      res: 'pong',
    })
    expect((await fetch(`${base}/apps/jellyfin/nope`)).status).toBe(404)
    setLabAppHealth('jellyfin', { status: 503, body: 'Unhealthy' }, labDir)
    expect((await ask('/apps/jellyfin/health', 'Healthy')).detail).toBe('HTTP 503 (expected 2xx): Unhealthy')
    setLabAppHealth('jellyfin', { delayMs: 1500 }, labDir)
    expect((await ask('/apps/jellyfin/health', 'Healthy')).detail).toBe('no answer within 0.5s')
    setLabAppHealth('jellyfin', null, labDir)
    expect((await ask('/apps/jellyfin/health', 'Healthy')).ok).toBe(true)
    expect(() => setLabAppHealth('plex', null, labDir)).toThrow('no lab app plex')
  })

  it("bootstrap clones the owner's repository from the lab; the roles' parsers read the result as converged", async () => {
    const boot = await fx(
      [
        'bootstrap',
        'github',
        '--owner=mtgibbs',
        '--repository=pi-cluster',
        '--branch=main',
        '--path=clusters/pi-k3s',
        '--personal',
        '--read-write-key',
      ],
      { GITHUB_TOKEN: 'ghp_test' },
    )
    expect(boot.code, boot.stderr).toBe(0)
    expect(JSON.parse(readFileSync(repoJson(), 'utf8'))).toEqual(labGitopsRepo())
    expect(serverLog).toContain(
      'source-controller stand-in: cloned ssh://git@github.com/mtgibbs/pi-cluster from the lab into /var/lib/flux-standin/repo.json',
    )

    const state = {
      namespace: (await get('namespace flux-system'))[0],
      gitRepository: (await get('gitrepositories.source.toolkit.fluxcd.io flux-system -n flux-system'))[0],
      kustomization: (await get('kustomizations.kustomize.toolkit.fluxcd.io flux-system -n flux-system'))[0],
      controllers: await get('deployments.apps -n flux-system -l app.kubernetes.io/part-of=flux'),
    }
    expect(
      bootstrapDecision(state, {
        version: '2.7.3',
        owner: 'mtgibbs',
        repository: 'pi-cluster',
        branch: 'main',
        path: 'clusters/pi-k3s',
        host: 'github.com',
      }),
    ).toMatchObject({ skip: true })
    expect(
      bootstrapDecision(state, {
        version: '2.7.3',
        owner: 'mtgibbs',
        repository: 'pi-cluster',
        branch: 'main',
        path: 'clusters/other',
        host: 'github.com',
      }).reasons,
    ).toEqual(['Kustomization flux-system applies ./clusters/pi-k3s, not ./clusters/other'])

    const st = await until('every Kustomization and HelmRelease Ready', async () => {
      const r = readiness(
        await get('kustomizations.kustomize.toolkit.fluxcd.io -A'),
        await get('helmreleases.helm.toolkit.fluxcd.io -A'),
      )
      return r.notReady.length === 0 && r.total > 1 ? r : undefined
    })
    expect([st.ready, st.total]).toEqual([19, 19])
    expect(
      checkEso(
        await get('clustersecretstores.external-secrets.io'),
        await get('externalsecrets.external-secrets.io -A'),
      ),
    ).toEqual({
      ok: true,
      message: 'ClusterSecretStore onepassword Ready; 5/5 ExternalSecrets synced',
    })
  })

  it('binds pods where their nodeSelector allows; the placement check reads them (one-node cluster: Unbound on pi-k3s too)', async () => {
    const cluster = async () => ({
      nodes: await get('nodes'),
      pods: await get('pods -A'),
      workloads: [...(await get('deployments.apps -A')), ...(await get('cronjobs.batch -A'))],
    })
    const rules = parsePlacement({ 'pihole/pihole': 'pi-k3s', 'pihole/unbound': 'pi-k3s', 'backup-jobs/*': 'pi-k3s' })
    const results = await until('pods bound', async () => {
      const r = checkPlacement(rules, await cluster())
      return r.every((x) => x.ok) ? r : undefined
    })
    expect(results.map((r) => r.detail)).toEqual([
      'Deployment pihole/pihole: 1 pod on pi-k3s',
      'Deployment pihole/unbound: 1 pod on pi-k3s',
      'CronJob backup-jobs/k3s-datastore-backup is pinned to pi-k3s (no run yet); CronJob backup-jobs/postgres-backup is pinned to pi-k3s (no run yet); CronJob backup-jobs/pvc-backup is pinned to pi-k3s (no run yet)',
    ])
    const wide = await kubectl(['get', 'pods', '-n', 'pihole', '-o', 'wide'])
    expect(wide.stdout).toMatch(
      /^NAME +READY +STATUS +RESTARTS +AGE +IP +NODE\npihole-[0-9a-f]{10}-[0-9a-f]{5} +1\/1 +Running +0 +\S+ +127\.0\.0\.1 +pi-k3s\n/,
    )

    const pi3Only = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'needs-pi3', namespace: 'default' },
      spec: {
        selector: { matchLabels: { app: 'needs-pi3' } },
        template: {
          metadata: { labels: { app: 'needs-pi3' } },
          spec: { nodeSelector: { hardware: 'pi3' }, containers: [{ name: 'c', image: 'x' }] },
        },
      },
    }
    expect((await kubectl(['apply', '-f', '-'], JSON.stringify(pi3Only))).stdout).toBe(
      'deployment.apps/needs-pi3 created\n',
    )
    const pending = await until('a Pending pod', async () =>
      (await get('pods -n default')).find((p) => p.metadata.name.startsWith('needs-pi3-')),
    )
    expect(pending.status).toMatchObject({
      phase: 'Pending',
      conditions: [
        {
          type: 'PodScheduled',
          status: 'False',
          reason: 'Unschedulable',
          message: "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
        },
      ],
    })
    expect(checkPlacement(parsePlacement({ 'default/needs-pi3': 'pi-k3s' }), await cluster())[0].detail).toBe(
      `Deployment default/needs-pi3: pod ${pending.metadata.name} is not scheduled: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.`,
    )
    expect((await kubectl(['delete', 'deployment', 'needs-pi3'])).code).toBe(0)
    await until('its pod gone', async () => ((await get('pods -n default')).length === 0 ? true : undefined))
  })

  it("Pi-hole's DNS answers while its pod runs here; a test can make it fail; it stops when Pi-hole is gone", async () => {
    expect(await until('DNS', async () => ((await dns()).ok ? dns() : undefined))).toMatchObject({
      ok: true,
      detail: 'google.com -> 198.51.100.53',
    })
    writeFileSync(dnsControl(), '{"rcode": "SERVFAIL"}')
    expect((await dns()).detail).toBe('the server failed to answer (SERVFAIL)')
    writeFileSync(dnsControl(), '{"drop": true}')
    expect((await dns()).detail).toBe('no answer within 0.7s')
    rmSync(dnsControl())
    expect((await dns()).ok).toBe(true)

    // Pi-hole leaves the repository: Flux prunes it, its pod goes, nothing answers on port 53 any more.
    const repo = labGitopsRepo()
    repo.objects = repo.objects.filter(
      (o) => !(o.kind === 'Deployment' && (o.metadata as { name: string }).name === 'pihole'),
    )
    writeFileSync(repoJson(), JSON.stringify(repo))
    expect((await fx(['reconcile', 'kustomization', 'flux-system', '--with-source'])).code).toBe(0)
    await until('the pihole pod gone', async () =>
      (await get('pods -n pihole')).some((p) => p.metadata.name.startsWith('pihole-')) ? undefined : true,
    )
    const r = await until('DNS to stop', async () => {
      const x = await dns()
      return x.ok ? undefined : x
    })
    expect(['nothing answers DNS there (connection refused)', 'no answer within 0.7s']).toContain(r.detail)
    expect(serverLog).toContain('pihole stand-in: stopped answering DNS')
  })

  it('kubectl apply --server-side keeps no last-applied copy of a Secret', async () => {
    const secret = (v: string) =>
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: 'onepassword-service-account', namespace: 'default' },
        type: 'Opaque',
        data: { token: Buffer.from(v).toString('base64') },
      })
    const ssa = ['apply', '--server-side', '--field-manager=pi-provision', '--force-conflicts', '-f', '-']
    expect((await kubectl(ssa, secret('ops_first'))).stdout).toBe(
      'secret/onepassword-service-account serverside-applied\n',
    )
    expect((await kubectl(ssa, secret('ops_second'))).stdout).toBe(
      'secret/onepassword-service-account serverside-applied\n',
    )
    const [s] = await get('secret onepassword-service-account')
    expect(s.metadata.annotations ?? {}).toEqual({})
    expect(Buffer.from(s.data?.token ?? '', 'base64').toString()).toBe('ops_second')
    const jp = await kubectl([
      'get',
      'secret',
      'onepassword-service-account',
      '--ignore-not-found',
      '-o',
      'jsonpath={.metadata.name}{"="}{.data.token}',
    ])
    expect(jp.stdout).toBe(`onepassword-service-account=${Buffer.from('ops_second').toString('base64')}`)
    expect(
      (
        await kubectl([
          'get',
          'secret',
          'nope',
          '--ignore-not-found',
          '-o',
          'jsonpath={.metadata.name}{"="}{.data.token}',
        ])
      ).stdout,
    ).toBe('')
  })
  it('kubectl cordon / drain / uncordon as the retire playbook uses them: DaemonSet pods need --ignore-daemonsets and stay; the rest are evicted', async () => {
    const ds = {
      apiVersion: 'apps/v1',
      kind: 'DaemonSet',
      metadata: { name: 'node-agent', namespace: 'default' },
      spec: {
        selector: { matchLabels: { app: 'node-agent' } },
        template: { metadata: { labels: { app: 'node-agent' } }, spec: { containers: [{ name: 'c', image: 'x' }] } },
      },
    }
    expect((await kubectl(['apply', '-f', '-'], JSON.stringify(ds))).code).toBe(0)
    const podsOn = async (ns: string) =>
      (await get(`pods -n ${ns}`))
        .filter((p) => (p.spec as { nodeName?: string } | undefined)?.nodeName === 'pi-k3s')
        .map((p) => p.metadata.name)
    const daemon = await until('the DaemonSet pod', async () =>
      (await podsOn('default')).find((n) => n.startsWith('node-agent-')),
    )
    await until('homepage bound', async () => ((await podsOn('homepage')).length ? true : undefined))

    expect(await kubectl(['cordon', 'pi-k3s'])).toMatchObject({ code: 0, stdout: 'node/pi-k3s cordoned\n' })
    expect(await kubectl(['cordon', 'pi-k3s'])).toMatchObject({ code: 0, stdout: 'node/pi-k3s already cordoned\n' })
    expect((await kubectl(['get', 'nodes'])).stdout).toMatch(/^pi-k3s +Ready,SchedulingDisabled /m)

    const refused = await kubectl(['drain', 'pi-k3s', '--timeout=60s'])
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain(
      `cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): default/${daemon}`,
    )
    expect((await podsOn('homepage')).length, 'a refused drain evicts nothing').toBeGreaterThan(0)

    const drained = await kubectl(['drain', 'pi-k3s', '--ignore-daemonsets', '--delete-emptydir-data', '--timeout=60s'])
    expect(drained.code, drained.stderr).toBe(0)
    expect(drained.stdout).toMatch(/^node\/pi-k3s already cordoned\nevicting pod /)
    expect(drained.stdout).toMatch(/^evicting pod homepage\/homepage-/m)
    expect(drained.stdout).toMatch(/node\/pi-k3s drained\n$/)
    expect(drained.stderr).toBe(`Warning: ignoring DaemonSet-managed Pods: default/${daemon}\n`)
    // One node, cordoned: the evicted workloads come back Pending; the DaemonSet pod stays (it tolerates the cordon).
    const pending = await until('homepage Pending', async () =>
      (await get('pods -n homepage')).find(
        (p) => p.metadata.name.startsWith('homepage-') && (p.status as { phase?: string }).phase === 'Pending',
      ),
    )
    expect(JSON.stringify(pending.status)).toContain('node(s) were unschedulable')
    expect(await podsOn('default')).toEqual([daemon])

    expect(await kubectl(['uncordon', 'pi-k3s'])).toMatchObject({ code: 0, stdout: 'node/pi-k3s uncordoned\n' })
    await until('homepage bound again', async () =>
      (await podsOn('homepage')).some((n) => n.startsWith('homepage-')) ? true : undefined,
    )
    expect((await kubectl(['delete', 'daemonset', 'node-agent'])).code).toBe(0)
    await until('its pod gone', async () => ((await podsOn('default')).length === 0 ? true : undefined))
  })

  it("a PodDisruptionBudget with no room refuses the eviction with the apiserver's 429, and drain retries until its timeout; with room it drains", async () => {
    const homepage = await until('a homepage pod', async () =>
      (await get('pods -n homepage')).find((p) => (p.status as { phase?: string }).phase === 'Running'),
    )
    const { 'pod-template-hash': _, ...labels } = homepage.metadata.labels ?? {}
    const running = (await get('pods -n homepage')).length
    const pdb = (room: boolean) =>
      JSON.stringify({
        apiVersion: 'policy/v1',
        kind: 'PodDisruptionBudget',
        metadata: { name: 'homepage', namespace: 'homepage' },
        spec: { selector: { matchLabels: labels }, ...(room ? { maxUnavailable: 1 } : { minAvailable: running }) },
      })
    expect((await kubectl(['apply', '-f', '-'], pdb(false))).code).toBe(0)
    const [budget] = await get('pdb homepage -n homepage')
    expect(budget.status).toMatchObject({ expectedPods: running, currentHealthy: running, disruptionsAllowed: 0 })
    expect((await kubectl(['get', 'pdb', '-n', 'homepage'])).stdout).toMatch(
      new RegExp(`^NAME +MIN AVAILABLE +MAX UNAVAILABLE +ALLOWED DISRUPTIONS +AGE\nhomepage +${running} +N/A +0 `),
    )

    const refused = await kubectl(['drain', 'pi-k3s', '--ignore-daemonsets', '--delete-emptydir-data', '--timeout=7s'])
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain(
      `error when evicting pods/"${homepage.metadata.name}" -n "homepage" (will retry after 5s): ` +
        "Cannot evict pod as it would violate the pod's disruption budget.",
    )
    expect((await get('pods -n homepage')).map((p) => p.metadata.name)).toContain(homepage.metadata.name)

    expect((await kubectl(['apply', '-f', '-'], pdb(true))).code).toBe(0)
    const drained = await kubectl(['drain', 'pi-k3s', '--ignore-daemonsets', '--delete-emptydir-data', '--timeout=30s'])
    expect(drained.code, drained.stderr).toBe(0)
    expect(drained.stdout).toContain(`pod/${homepage.metadata.name} evicted\n`)
    expect((await kubectl(['uncordon', 'pi-k3s'])).code).toBe(0)
    expect((await kubectl(['delete', 'pdb', 'homepage', '-n', 'homepage'])).code).toBe(0)
  })
})
