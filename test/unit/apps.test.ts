// roles/apps.ts and its lib/ parts (flux-readiness, external-secrets, placement): readiness of Kustomizations and
// HelmReleases (with the live count), External Secrets, placement
// against nodes/pods/workloads as kubectl shows them, and the role against a fake server with app endpoints on
// 127.0.0.1: a healthy run, an unhealthy app failing the run with its name and reason, and bad inventory values
// refused before any host is touched.
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { ProvisionError } from '../../lib/errors.ts'
import { hostVars, parseInventory } from '../../lib/inventory.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { requiredSecrets } from '../../lib/run-plan.ts'
import { checkEso } from '../../lib/external-secrets.ts'
import { describeNotReady, parseRevision, readiness } from '../../lib/flux-readiness.ts'
import { checkPlacement, parsePlacement } from '../../lib/placement.ts'
import { appChecksFor, apps, CLUSTER_KINDS } from '../../roles/apps.ts'
import { feasibleNodes } from '../../lib/scheduling.ts'
import type { KubeObject } from '../../lib/kube.ts'
import { answerBatch, FakeConnection, MemorySecrets } from './fakes.ts'
import { answerKubeFact, list, notReady, ready } from './fakecluster.ts'

beforeEach(() => resetSecretsForTest())

const COMMIT = '1f2e3d4c5b6a79881726354453627180918a7b6c'
const REV = `main@sha1:${COMMIT}`

function ks(name: string, status: Record<string, unknown>, extra: Partial<KubeObject> = {}): KubeObject {
  return {
    kind: 'Kustomization',
    metadata: { name, namespace: 'flux-system', ...extra.metadata },
    spec: { sourceRef: { kind: 'GitRepository', name: 'flux-system' }, ...extra.spec },
    status,
  }
}

function hr(ns: string, name: string, status: Record<string, unknown>, generation = 1): KubeObject {
  return { kind: 'HelmRelease', metadata: { name, namespace: ns, generation }, spec: {}, status }
}

describe('flux output', () => {
  it('reads the revision flux reconcile fetched or applied', () => {
    expect(
      parseRevision(
        '► annotating GitRepository flux-system in flux-system namespace\n✔ fetched revision main@sha1:1f2e3d4c5b6a79881726354453627180918a7b6c\n',
      ),
    ).toBe(REV)
    expect(parseRevision('✔ applied revision main@sha1:abc\n')).toBe('main@sha1:abc')
    expect(parseRevision('✗ timeout\n')).toBeUndefined()
  })
})

describe('readiness of Kustomizations and HelmReleases', () => {
  it('counts Ready ones and names the others with their message', () => {
    const st = readiness(
      [
        ks('flux-system', ready(`Applied revision: ${REV}`, { lastAppliedRevision: REV })),
        ks('pihole', ready('Applied', { lastAppliedRevision: REV })),
        ks(
          'immich',
          notReady("dependency 'flux-system/external-secrets-config' is not ready", {
            lastAppliedRevision: 'main@sha1:old',
          }),
        ),
        ks('jellyfin', ready('Applied', { lastAppliedRevision: 'main@sha1:old' })),
        ks('new', {}),
      ],
      [
        hr('immich', 'immich', notReady('install retries exhausted')),
        hr('monitoring', 'kube-prometheus-stack', ready('Helm install succeeded', { observedGeneration: 1 })),
      ],
      { revision: REV },
    )
    expect([st.ready, st.total]).toEqual([3, 7])
    expect(describeNotReady(st.notReady)).toBe(
      "Kustomization flux-system/immich: dependency 'flux-system/external-secrets-config' is not ready; Kustomization flux-system/jellyfin: still at main@sha1:old, not main@sha1:1f2e3d4c5b6a79881726354453627180918a7b6c; Kustomization flux-system/new: not reconciled yet; HelmRelease immich/immich: install retries exhausted",
    )
    expect(describeNotReady(st.notReady, 2)).toMatch(/; and 2 more$/)
  })

  it('waits for a requested reconcile to be handled and a HelmRelease to see its generation', () => {
    const asked = '2026-11-27T12:00:00.000Z'
    const pending = ks('pihole', ready('Applied', { lastAppliedRevision: REV, lastHandledReconcileAt: 'earlier' }), {
      metadata: { name: 'pihole', annotations: { 'reconcile.fluxcd.io/requestedAt': asked } },
    })
    const handled = ks('pihole', ready('Applied', { lastAppliedRevision: REV, lastHandledReconcileAt: asked }), {
      metadata: { name: 'pihole', annotations: { 'reconcile.fluxcd.io/requestedAt': asked } },
    })
    expect(readiness([pending], [], { revision: REV, requestedAt: asked }).notReady.map((i) => i.message)).toEqual([
      'reconcile requested, not handled yet',
    ])
    expect(readiness([handled], [], { revision: REV, requestedAt: asked }).notReady).toEqual([])
    expect(
      readiness([], [hr('immich', 'immich', ready('ok', { observedGeneration: 1 }), 2)]).notReady.map((i) => i.message),
    ).toEqual(['generation 2 not observed yet (at 1)'])
    const suspended = ks('old', ready('Applied', { lastAppliedRevision: 'main@sha1:old' }), { spec: { suspend: true } })
    expect(readiness([suspended], [], { revision: REV }).items[0]).toMatchObject({
      ready: true,
      suspended: true,
      message: 'suspended (last state Ready)',
    })
  })
})

describe('External Secrets', () => {
  const store = (status: Record<string, unknown>): KubeObject => ({
    kind: 'ClusterSecretStore',
    metadata: { name: 'onepassword' },
    status,
  })
  const es = (ns: string, name: string, status: Record<string, unknown>): KubeObject => ({
    kind: 'ExternalSecret',
    metadata: { name, namespace: ns },
    status,
  })
  it('wants the onepassword store Ready and every ExternalSecret synced', () => {
    const synced = {
      conditions: [{ type: 'Ready', status: 'True', reason: 'SecretSynced', message: 'Secret was synced' }],
    }
    expect(checkEso([store(ready('store validated'))], [es('pihole', 'pihole-secret', synced)])).toEqual({
      ok: true,
      message: 'ClusterSecretStore onepassword Ready; 1/1 ExternalSecrets synced',
    })
    expect(checkEso([], [])).toEqual({
      ok: false,
      message: 'ClusterSecretStore onepassword does not exist (0/0 ExternalSecrets synced)',
    })
    expect(
      checkEso(
        [store(notReady('unable to validate store: invalid service account token'))],
        [
          es('pihole', 'pihole-secret', synced),
          es('monitoring', 'grafana-admin', {
            conditions: [
              {
                type: 'Ready',
                status: 'False',
                reason: 'SecretSyncedError',
                message: 'could not get secret data from provider',
              },
            ],
          }),
        ],
      ),
    ).toEqual({
      ok: false,
      message:
        'ClusterSecretStore onepassword is not Ready: unable to validate store: invalid service account token; ExternalSecret monitoring/grafana-admin not synced: could not get secret data from provider (1/2 ExternalSecrets synced)',
    })
  })
})

// ---------------------------------------------------------------- placement

function node(
  name: string,
  labels: Record<string, string>,
  taints: { key: string; value?: string; effect: string }[] = [],
  unschedulable = false,
): KubeObject {
  return {
    kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } },
    spec: { taints, ...(unschedulable ? { unschedulable: true } : {}) },
  }
}
const NODES = [
  node('pi-k3s', { hardware: 'pi5', 'node-role.kubernetes.io/control-plane': 'true' }),
  node('pi3-worker-1', { hardware: 'pi3', 'workload/dns': 'unbound' }),
  node('pi3-worker-2', { hardware: 'pi3' }, [{ key: 'hardware', value: 'pi3', effect: 'PreferNoSchedule' }]),
]

function deploy(ns: string, name: string, podSpec: Record<string, unknown>): KubeObject {
  return {
    kind: 'Deployment',
    metadata: { name, namespace: ns },
    spec: {
      selector: { matchLabels: { app: name } },
      template: { metadata: { labels: { app: name } }, spec: podSpec },
    },
  }
}
function cron(ns: string, name: string, podSpec: Record<string, unknown>): KubeObject {
  return {
    kind: 'CronJob',
    metadata: { name, namespace: ns },
    spec: { jobTemplate: { spec: { template: { spec: podSpec } } } },
  }
}
function pod(
  ns: string,
  name: string,
  labels: Record<string, string>,
  nodeName?: string,
  message?: string,
): KubeObject {
  return {
    kind: 'Pod',
    metadata: { name, namespace: ns, labels },
    spec: nodeName ? { nodeName } : {},
    status: nodeName
      ? { phase: 'Running' }
      : { phase: 'Pending', conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message }] },
  }
}

describe('placement', () => {
  it('reads workload -> node rules', () => {
    expect(parsePlacement({ 'pihole/pihole': 'pi-k3s', unbound: 'pi3-worker-1', 'backup-jobs/*': 'pi-k3s' })).toEqual([
      { key: 'pihole/pihole', namespace: 'pihole', name: 'pihole', node: 'pi-k3s' },
      { key: 'unbound', name: 'unbound', node: 'pi3-worker-1' },
      { key: 'backup-jobs/*', namespace: 'backup-jobs', name: '*', node: 'pi-k3s' },
    ])
    expect(() => parsePlacement({ 'a/b/c': 'x' })).toThrow(
      'placement key "a/b/c": expected name, namespace/name or namespace/*',
    )
    expect(() => parsePlacement({ '*': 'x' })).toThrow('placement key "*"')
    expect(() => parsePlacement({ a: 3 })).toThrow('placement a: the node must be a node name, got 3')
    expect(() => parsePlacement(['a'])).toThrow('placement must be a map of workload -> node')
  })

  it('knows which nodes a pod spec may land on', () => {
    expect(feasibleNodes({ nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' } }, NODES)).toEqual(['pi-k3s'])
    expect(feasibleNodes({ nodeSelector: { 'workload/dns': 'unbound' } }, NODES)).toEqual(['pi3-worker-1'])
    expect(feasibleNodes({}, NODES)).toEqual(['pi-k3s', 'pi3-worker-1', 'pi3-worker-2'])
    const affinity = (op: string, values?: string[]) => ({
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: {
            nodeSelectorTerms: [{ matchExpressions: [{ key: 'hardware', operator: op, values }] }],
          },
        },
      },
    })
    expect(feasibleNodes(affinity('In', ['pi3']), NODES)).toEqual(['pi3-worker-1', 'pi3-worker-2'])
    expect(feasibleNodes(affinity('NotIn', ['pi3']), NODES)).toEqual(['pi-k3s'])
    expect(feasibleNodes(affinity('DoesNotExist'), NODES)).toEqual([])
    const tainted = [node('a', {}, [{ key: 'dedicated', value: 'dns', effect: 'NoSchedule' }]), node('b', {}, [], true)]
    expect(feasibleNodes({}, tainted)).toEqual([])
    expect(
      feasibleNodes(
        { tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'dns', effect: 'NoSchedule' }] },
        tainted,
      ),
    ).toEqual(['a'])
    expect(feasibleNodes({ tolerations: [{ operator: 'Exists' }] }, tainted)).toEqual(['a'])
  })

  it('checks pods of Deployments, and CronJobs by where they are pinned until they run', () => {
    const workloads = [
      deploy('pihole', 'pihole', { hostNetwork: true, nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' } }),
      deploy('pihole', 'unbound', { nodeSelector: { 'workload/dns': 'unbound' } }),
      deploy('homepage', 'homepage', {}),
      cron('backup-jobs', 'pvc-backup', { nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' } }),
      cron('backup-jobs', 'postgres-backup', { nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' } }),
    ]
    const pods = [
      pod('pihole', 'pihole-7d9-abcde', { app: 'pihole' }, 'pi-k3s'),
      pod('pihole', 'unbound-5c4-fghij', { app: 'unbound' }, 'pi3-worker-1'),
      pod('homepage', 'homepage-1a2-klmno', { app: 'homepage' }, 'pi-k3s'),
      pod('backup-jobs', 'postgres-backup-29373150-xyz12', { 'job-name': 'postgres-backup-29373150' }, 'pi-k3s'),
    ]
    const rules = parsePlacement({
      'pihole/pihole': 'pi-k3s',
      'pihole/unbound': 'pi3-worker-1',
      homepage: 'pi-k3s',
      'backup-jobs/*': 'pi-k3s',
    })
    expect(checkPlacement(rules, { nodes: NODES, pods, workloads })).toEqual([
      { key: 'pihole/pihole', node: 'pi-k3s', ok: true, detail: 'Deployment pihole/pihole: 1 pod on pi-k3s' },
      {
        key: 'pihole/unbound',
        node: 'pi3-worker-1',
        ok: true,
        detail: 'Deployment pihole/unbound: 1 pod on pi3-worker-1',
      },
      {
        key: 'homepage',
        node: 'pi-k3s',
        ok: true,
        detail: 'Deployment homepage/homepage: 1 pod on pi-k3s (not pinned: the scheduler may move it)',
      },
      {
        key: 'backup-jobs/*',
        node: 'pi-k3s',
        ok: true,
        detail:
          'CronJob backup-jobs/pvc-backup is pinned to pi-k3s (no run yet); CronJob backup-jobs/postgres-backup: 1 pod on pi-k3s',
      },
    ])
  })

  it('names what is wrong: another node, not scheduled, no pods, not pinned, nothing there', () => {
    const workloads = [
      deploy('pihole', 'unbound', { nodeSelector: { 'workload/dns': 'unbound' } }),
      deploy('pihole', 'pihole', {}),
      deploy('jellyfin', 'jellyfin', {}),
      cron('backup-jobs', 'pvc-backup', {}),
      cron('backup-jobs', 'k3s-datastore-backup', { nodeSelector: { hardware: 'pi3' } }),
    ]
    const pods = [
      pod(
        'pihole',
        'unbound-1',
        { app: 'unbound' },
        undefined,
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
      ),
      pod('pihole', 'pihole-1', { app: 'pihole' }, 'pi3-worker-2'),
    ]
    const rules = parsePlacement({
      'pihole/unbound': 'pi3-worker-1',
      'pihole/pihole': 'pi-k3s',
      'jellyfin/jellyfin': 'pi-k3s',
      'backup-jobs/*': 'pi-k3s',
      'nope/*': 'pi-k3s',
      immich: 'pi-k3s-2',
    })
    expect(
      checkPlacement(rules, { nodes: NODES, pods, workloads }).map(
        (r) => `${r.ok ? 'ok' : 'BAD'} ${r.key}: ${r.detail}`,
      ),
    ).toEqual([
      "BAD pihole/unbound: Deployment pihole/unbound: pod unbound-1 is not scheduled: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
      'BAD pihole/pihole: Deployment pihole/pihole: pod pihole-1 runs on pi3-worker-2',
      'BAD jellyfin/jellyfin: Deployment jellyfin/jellyfin has no pods',
      'BAD backup-jobs/*: CronJob backup-jobs/pvc-backup may run on pi-k3s, pi3-worker-1, pi3-worker-2: pin it to pi-k3s with a nodeSelector; CronJob backup-jobs/k3s-datastore-backup cannot run on pi-k3s: its nodeSelector/affinity allows pi3-worker-1, pi3-worker-2',
      'BAD nope/*: no Deployment, StatefulSet, DaemonSet or CronJob in namespace nope',
      'BAD immich: there is no node pi-k3s-2',
    ])
  })
})

// ---------------------------------------------------------------- the role against a fake server

let http: Server
let base = ''
let jellyfin = { status: 200, body: 'Healthy' }
beforeAll(async () => {
  http = createServer((req, res) => {
    if (req.url === '/jellyfin/health') res.writeHead(jellyfin.status).end(jellyfin.body)
    else if (req.url === '/immich/api/server/ping')
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"res":"pong"}')
    else res.writeHead(404).end()
  })
  await new Promise<void>((done) => http.listen(0, '127.0.0.1', done))
  base = `http://127.0.0.1:${(http.address() as AddressInfo).port}`
})
afterAll(() => new Promise<void>((done) => http.close(() => done())))

const INV = () => `all:
  vars:
    secrets_backend: file
    secrets_file: /nonexistent/secrets.yaml
    app_check_timeout: 2
    placement:
      pihole/pihole: pi-k3s
    app_checks:
      - { app: jellyfin, url: ${base}/jellyfin/health, expect: Healthy }
      - { app: immich, url: ${base}/immich/api/server/ping, expect_json: { res: pong } }
  children:
    server:
      hosts:
        pi-k3s: { address: 127.0.0.55 }
    agent:
      hosts:
        pi3-worker-1: { address: 127.0.0.53 }
`

/**
 * A converged cluster; `lagging` Kustomizations are not Ready for the first `lag` reads. Its GitRepository has
 * `source` (default REV's commit) and GitHub's branch is at `head` (default the same; 'down': the look-up fails).
 */
function fakeServer(opts: { lag?: number; source?: string | null; head?: string } = {}): {
  conn: FakeConnection
  annotated: string[]
  lookups: string[]
} {
  let reads = 0
  const annotated: string[] = []
  const lookups: string[] = []
  const kss = () => {
    reads++
    const late = reads <= (opts.lag ?? 0)
    return [
      ks('flux-system', ready('Applied', { lastAppliedRevision: REV })),
      ks(
        'pihole',
        late
          ? notReady('health check failed after 9s: Deployment/pihole/pihole not ready')
          : ready('Applied', { lastAppliedRevision: REV }),
      ),
      ks('jellyfin', ready('Applied', { lastAppliedRevision: REV })),
    ]
  }
  const hrs = () => [hr('immich', 'immich', ready('Helm install succeeded', { observedGeneration: 1 }))]
  const source = opts.source === undefined ? COMMIT : opts.source
  const gitRepository = source
    ? [
        {
          kind: 'GitRepository',
          metadata: { name: 'flux-system', namespace: 'flux-system', generation: 1 },
          spec: { url: 'ssh://git@github.com/mtgibbs/pi-cluster', ref: { branch: 'main' } },
          status: ready('stored artifact', { observedGeneration: 1, artifact: { revision: `main@sha1:${source}` } }),
        },
      ]
    : []
  const kube = (q: string) => {
    // The role's one read (every kind at once, as kubectl lists them) and its polls (one kind).
    if (q === `${CLUSTER_KINDS.join(',')} -A`)
      return list([
        ...gitRepository,
        ...kss(),
        ...hrs(),
        { kind: 'ClusterSecretStore', metadata: { name: 'onepassword' }, status: ready('store validated') },
        {
          kind: 'ExternalSecret',
          metadata: { name: 'pihole-secret', namespace: 'pihole' },
          status: ready('Secret was synced'),
        },
        ...NODES,
        pod('pihole', 'pihole-1', { app: 'pihole' }, 'pi-k3s'),
        deploy('pihole', 'pihole', { nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' } }),
      ])
    if (q === 'kustomizations.kustomize.toolkit.fluxcd.io,helmreleases.helm.toolkit.fluxcd.io -A')
      return list([...kss(), ...hrs()])
    if (q === 'kustomizations.kustomize.toolkit.fluxcd.io -A') return list(kss())
    if (q === 'helmreleases.helm.toolkit.fluxcd.io -A') return list(hrs())
    if (q === 'clustersecretstores.external-secrets.io,externalsecrets.external-secrets.io -A')
      return list([
        { kind: 'ClusterSecretStore', metadata: { name: 'onepassword' }, status: ready('store validated') },
        {
          kind: 'ExternalSecret',
          metadata: { name: 'pihole-secret', namespace: 'pihole' },
          status: ready('Secret was synced'),
        },
      ])
    if (q === 'nodes,pods,deployments.apps,statefulsets.apps,daemonsets.apps,cronjobs.batch -A')
      return list([
        ...NODES,
        pod('pihole', 'pihole-1', { app: 'pihole' }, 'pi-k3s'),
        deploy('pihole', 'pihole', { nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' } }),
      ])
    return list([])
  }
  const conn = new FakeConnection('pi-k3s', (script) => {
    const batch = answerBatch(script, (sub) => answerKubeFact(sub, kube) ?? { stdout: '' })
    if (batch) return batch
    const single = answerKubeFact(script, kube)
    if (single) return single
    if (script.startsWith('curl ')) {
      lookups.push(script)
      if (opts.head === 'down') return { code: 7, stderr: 'curl: (7) Failed to connect to github.com port 443\n' }
      const pkt = (t: string) => (t.length + 4).toString(16).padStart(4, '0') + t
      return {
        stdout: `${pkt('# service=git-upload-pack\n')}0000${pkt(`${opts.head ?? COMMIT} refs/heads/main\n`)}0000`,
      }
    }
    if (script.includes('reconcile source git flux-system'))
      return { stderr: `► annotating GitRepository flux-system in flux-system namespace\n✔ fetched revision ${REV}\n` }
    if (script.includes('reconcile kustomization flux-system')) return { stderr: `✔ applied revision ${REV}\n` }
    if (script.includes(' annotate --overwrite')) {
      for (const m of script.matchAll(/kustomizations\.kustomize\.toolkit\.fluxcd\.io\/(\S+) /g)) annotated.push(m[1])
      return { stdout: '' }
    }
    return undefined
  })
  return { conn, annotated, lookups }
}

function runApps(conn: FakeConnection, inventory = INV(), extraVars: Record<string, string> = {}) {
  const rep = new RecordingReporter(1)
  const run = runPlaybook(
    { name: 'apps', plays: [{ name: 'Check the apps', hosts: 'server', roles: [apps] }] },
    {
      inventory: parseInventory(inventory, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets({ 'op://pi-cluster/flux-github-pat/token': 'ghp_fake' }),
      connect: () => conn,
      extraVars,
    },
  )
  return { rep, run }
}

describe('the apps role', () => {
  it('nothing new from git and all Ready at that revision: no reconcile, no wait, one cluster read (the no-op rerun stays fast)', async () => {
    jellyfin = { status: 200, body: 'Healthy' }
    const { conn, annotated, lookups } = fakeServer({ lag: 0 })
    const { rep, run } = runApps(conn, INV(), { github_token_ref: 'op://pi-cluster/flux-github-pat/token' })
    const s = await run
    expect(s.exitCode, rep.lines.join('\n')).toBe(0)
    expect(annotated).toEqual([])
    expect(conn.scripts.some((x) => x.script.includes('flux --kubeconfig'))).toBe(false)
    expect(lookups).toEqual([
      "curl -sS --fail --connect-timeout 3 --max-time 8 --config - --url 'https://github.com/mtgibbs/pi-cluster.git/info/refs?service=git-upload-pack'",
    ])
    // The token went on stdin, as a header for curl; the look-up ran as the login user.
    const lookup = conn.scripts.find((x) => x.script.startsWith('curl '))
    expect(lookup?.stdin).toBe(
      `header = "Authorization: Basic ${Buffer.from('x-access-token:ghp_fake').toString('base64')}"\n`,
    )
    expect(rep.lines).toContain(
      `ok: [pi-k3s] apps | Reconcile the GitOps source (Flux has ${REV}, the head of main: nothing to fetch)`,
    )
    expect(rep.lines).toContainEqual(
      expect.stringMatching(
        /^ok: \[pi-k3s\] apps \| Reconcile the Kustomizations \(all 4 Ready at main@sha1:1f2e3d4c5b6a79881726354453627180918a7b6c: nothing new to apply\)$/,
      ),
    )
    const kubectls = conn.scripts.filter((x) => x.script.includes('k3s kubectl'))
    expect(kubectls).toHaveLength(1) // the role's one read, batched with its other facts
    const stats = rep.events.find((e) => e.kind === 'recap')
    expect(stats?.kind === 'recap' && stats.stats?.hosts['pi-k3s'].roles.apps).toEqual({
      roundTrips: 2,
      kubectl: 1,
      flux: 0,
    })
  })

  it('a push since Flux last fetched: the source is reconciled, saying why', async () => {
    jellyfin = { status: 200, body: 'Healthy' }
    const { conn, lookups } = fakeServer({ head: 'a'.repeat(40) })
    const { rep, run } = runApps(conn)
    expect((await run).exitCode, rep.lines.join('\n')).toBe(0)
    expect(lookups).toHaveLength(1)
    expect(conn.scripts.filter((x) => x.script.includes('reconcile source git flux-system'))).toHaveLength(1)
    expect(rep.lines).toContain(
      `ok: [pi-k3s] apps | Reconcile the GitOps source (fetched ${REV} (main is at aaaaaaaaaaaa, Flux has 1f2e3d4c5b6a))`,
    )
  })

  it('-e flux_reconcile=always reconciles without a look-up; a look-up that fails reconciles too, saying why', async () => {
    jellyfin = { status: 200, body: 'Healthy' }
    const always = fakeServer()
    const a = runApps(always.conn, INV(), { flux_reconcile: 'always' })
    expect((await a.run).exitCode, a.rep.lines.join('\n')).toBe(0)
    expect(always.lookups).toEqual([])
    expect(a.rep.lines).toContain(
      `ok: [pi-k3s] apps | Reconcile the GitOps source (fetched ${REV} (flux_reconcile is "always"))`,
    )
    const down = fakeServer({ head: 'down' })
    const d = runApps(down.conn)
    expect((await d.run).exitCode, d.rep.lines.join('\n')).toBe(0)
    expect(d.rep.lines).toContain(
      `ok: [pi-k3s] apps | Reconcile the GitOps source (fetched ${REV} (cannot look up the head of main: curl: (7) Failed to connect to github.com port 443))`,
    )
    // No GitRepository (Flux without its source): nothing to look up, reconcile as always (it fails there).
    const none = fakeServer({ source: null })
    const n = runApps(none.conn)
    await n.run
    expect(none.lookups).toEqual([])
    expect(n.rep.lines).toContain(
      `ok: [pi-k3s] apps | Reconcile the GitOps source (fetched ${REV} (no GitRepository flux-system read))`,
    )
  })

  it('converged: reconciles, waits (with a live count), checks ESO and placement, prints the app table', async () => {
    jellyfin = { status: 200, body: 'Healthy' }
    const { conn, annotated } = fakeServer({ lag: 3 }) // read 1: is anything not Ready?; read 2: the list to annotate; read 3: the first wait
    const { rep, run } = runApps(conn)
    const s = await run
    expect(s.exitCode, rep.lines.join('\n')).toBe(0)
    expect(annotated).toEqual(['pihole', 'jellyfin'])
    const lines = rep.lines.filter((l) => !l.startsWith('  '))
    expect(lines).toContain(
      '[pi-k3s] flux: 3/4 Kustomizations and HelmReleases Ready; waiting for Kustomization flux-system/pihole: health check failed after 9s: Deployment/pihole/pihole not ready',
    )
    expect(lines).toContainEqual(
      expect.stringMatching(
        /^ok: \[pi-k3s\] apps \| Wait until every Kustomization and HelmRelease is Ready \(4\/4 Ready at main@sha1:1f2e3d4c5b6a79881726354453627180918a7b6c after [\d.]+s\)$/,
      ),
    )
    expect(lines).toContain(
      'ok: [pi-k3s] apps | Check the ClusterSecretStore onepassword and the ExternalSecrets (ClusterSecretStore onepassword Ready; 1/1 ExternalSecrets synced)',
    )
    expect(lines).toContain('ok: [pi-k3s] apps | Check where the pinned workloads run (pihole/pihole on pi-k3s)')
    expect(lines).toContain(
      'ok: [pi-k3s] apps | Probe the apps from the controller (2/2 apps healthy: jellyfin, immich)',
    )
    const table = rep.lines.join('\n')
    expect(table).toMatch(/app health \(from the controller\):\n {2}APP {7}RESULT {2}CHECK/)
    expect(table).toMatch(
      /\n {2}jellyfin {2}ok {6}GET http:\/\/127\.0\.0\.1:\d+\/jellyfin\/health +HTTP 200 Healthy \(\d+ ms\)/,
    )
  }, 15_000)

  it('an unhealthy app fails the run (exit 2) and names itself with the reason', async () => {
    jellyfin = { status: 503, body: 'Unhealthy' }
    const { conn } = fakeServer()
    const { rep, run } = runApps(conn)
    const s = await run
    expect(s.exitCode).toBe(2)
    expect(rep.lines).toContain(
      'FAILED: [pi-k3s] apps | Probe the apps from the controller (1 of 2 apps failing: jellyfin (HTTP 503 (expected 2xx): Unhealthy))',
    )
    expect(rep.lines.join('\n')).toMatch(
      /\n {2}jellyfin {2}FAILING {2}GET http:\/\/127\.0\.0\.1:\d+\/jellyfin\/health +HTTP 503 \(expected 2xx\): Unhealthy/,
    )
  }, 15_000)

  it('a Node the inventory does not name (a Pi retired by hand) is a warning with the way to retire it; the run still passes', async () => {
    jellyfin = { status: 200, body: 'Healthy' }
    // INV() names pi-k3s and pi3-worker-1; the cluster also has pi3-worker-2 (NotReady: no status).
    const stray = runApps(fakeServer().conn)
    expect((await stray.run).exitCode, stray.rep.lines.join('\n')).toBe(0)
    expect(stray.rep.lines).toContain(
      'WARNING: [pi-k3s] Node pi3-worker-2 (NotReady) is in the cluster but not in /tmp/inv.yaml: retire it with `npx zx playbooks/retire.mts pi3-worker-2`, or add it to the inventory',
    )
    expect(stray.rep.lines).toContain(
      'ok: [pi-k3s] apps | Check every Node of the cluster is in the inventory (1 of 3 Nodes not in the inventory: pi3-worker-2)',
    )

    const all = runApps(
      fakeServer().conn,
      INV().replace(
        '        pi3-worker-1: { address: 127.0.0.53 }\n',
        '        pi3-worker-1: { address: 127.0.0.53 }\n        pi3-worker-2: { address: 127.0.0.51 }\n',
      ),
    )
    expect((await all.run).exitCode, all.rep.lines.join('\n')).toBe(0)
    expect(all.rep.lines.filter((l) => l.startsWith('WARNING'))).toEqual([])
    expect(all.rep.lines).toContain(
      'ok: [pi-k3s] apps | Check every Node of the cluster is in the inventory (3 Nodes, all in the inventory)',
    )
  }, 15_000)

  it('check mode reads nothing from the cluster and probes nothing', async () => {
    const { conn } = fakeServer()
    const rep = new RecordingReporter(0)
    const s = await runPlaybook(
      { name: 'apps', plays: [{ name: 'Check the apps', hosts: 'server', roles: [apps] }] },
      {
        inventory: parseInventory(INV(), '/tmp/inv.yaml'),
        reporter: rep,
        secrets: new MemorySecrets(),
        connect: () => conn,
        check: true,
      },
    )
    expect(s.exitCode).toBe(0)
    expect(s.counts['pi-k3s']).toMatchObject({ skipped: 7, changed: 0 })
    expect(
      conn.scripts.filter((x) => !x.script.includes('pending') && !x.script.includes('pi-provision/handlers')),
    ).toEqual([])
  })

  it('bad app_checks or placement are inventory errors before any host is touched; DNS servers resolve to inventory addresses', () => {
    const pb = { name: 'apps', plays: [{ name: 'Check the apps', hosts: 'server', roles: [apps] }] }
    const inv = parseInventory(INV(), '/tmp/inv.yaml')
    expect(requiredSecrets(pb, inv, undefined, {})).toEqual([]) // no Pi-hole checks, no github_token_ref
    const err = (extra: Record<string, unknown>): ProvisionError => {
      try {
        requiredSecrets(pb, inv, undefined, extra)
      } catch (e) {
        if (e instanceof ProvisionError) return e
      }
      throw new Error('no error')
    }
    expect(err({ app_checks: [{ app: 'jellyfin', url: 'http://x/', expct: 'Healthy' }] }).message).toBe(
      'app_checks[0]: unknown key expct',
    )
    expect(err({ placement: { 'a/b/c': 'pi-k3s' } }).kind).toBe('inventory')
    const vars = hostVars(
      inv.hosts.get('pi-k3s')!,
      {},
      {
        app_checks: [
          { app: 'pihole', dns: 'google.com' },
          { app: 'unbound', dns: 'example.org', server: 'pi3-worker-1', port: 5335 },
        ],
      },
    )
    expect(
      appChecksFor({ vars, inventory: inv }).map((c) => (c.kind === 'dns' ? `${c.server}:${c.port}` : c.kind)),
    ).toEqual(['127.0.0.55:53', '127.0.0.53:5335'])
  })
})

describe('secrets the apps role needs', () => {
  it("the Pi-hole API checks' passwords are resolved up front with the run's other secrets (the lab's and the owner's inventories)", () => {
    const pb = { name: 'apps', plays: [{ name: 'Check the apps', hosts: 'server', roles: [apps] }] }
    for (const f of ['inventory/hosts.yaml', 'inventory/lab.yaml']) {
      const inv = parseInventory(readFileSync(join(import.meta.dirname, '../..', f), 'utf8'), f)
      // and the GitHub token, for the look-up of the branch head
      expect(requiredSecrets(pb, inv, undefined, {}), f).toEqual([
        'op://pi-cluster/pihole/password',
        'op://pi-cluster/flux-github-pat/token',
      ])
    }
  })
})
