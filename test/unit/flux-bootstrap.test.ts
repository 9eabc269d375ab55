// roles/flux-bootstrap.ts and its lib/ parts (flux-cli, flux-bootstrap-plan, external-secrets): the parsers of
// kubectl/flux output, the bootstrap skip decision, the remote scripts (run for real under sh with fake k3s/flux
// commands), and the role against a fake server: first run, no-op rerun, check mode, and missing variables refused
// before any host is touched. Secrets only ever on stdin.
import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeEach, describe, expect, it } from 'vitest'
import { ProvisionError } from '../../lib/errors.ts'
import { parseInventory } from '../../lib/inventory.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import type { RunOptions } from '../../lib/connection.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { requiredSecrets } from '../../lib/run-plan.ts'
import { esoSecretDigest, esoSecretManifest, secretState } from '../../lib/external-secrets.ts'
import {
  bootstrapCommand,
  bootstrapDecision,
  bootstrapScript,
  clusterFact,
  normPath,
  normRepoUrl,
  type BootstrapWant,
  type FluxState,
} from '../../lib/flux-bootstrap-plan.ts'
import {
  archFact,
  fluxArch,
  fluxCliFact,
  fluxDownloadUrl,
  fluxInstallScript,
  parseFluxVersion,
} from '../../lib/flux-cli.ts'
import { fluxBootstrap } from '../../roles/flux-bootstrap.ts'
import { clusterCalls, kubeFact, kubeObjects, parseKubeJson, type KubeObject } from '../../lib/kube.ts'
import { answerBatch, FakeConnection, MemorySecrets } from './fakes.ts'
import { answerKubeFact, answerNamedFact, NONE, notReady, one, ready } from './fakecluster.ts'

const ESO_TOKEN = 'ops_eyJzaWduSW5BZGRyZXNzIjoibXkuMXBhc3N3b3JkLmNvbSJ9x'
const PAT = 'ghp_0123456789abcdefghijABCDEFGHIJ012345'
const WANT: BootstrapWant = {
  version: '2.7.3',
  owner: 'mtgibbs',
  repository: 'pi-cluster',
  branch: 'main',
  path: 'clusters/pi-k3s',
  host: 'github.com',
}

beforeEach(() => resetSecretsForTest())

describe('kubectl output', () => {
  it('reads a List, one object, nothing, NotFound and a kind not installed yet; other failures throw', () => {
    const ns = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'flux-system' } }
    expect(
      parseKubeJson(
        { code: 0, stdout: JSON.stringify({ kind: 'List', items: [ns, { nonsense: true }] }), stderr: '' },
        'ns',
      ),
    ).toEqual([ns])
    expect(parseKubeJson({ code: 0, stdout: JSON.stringify(ns), stderr: '' }, 'ns')).toEqual([ns])
    expect(parseKubeJson({ code: 0, stdout: '\n', stderr: '' }, 'ns')).toEqual([])
    expect(
      parseKubeJson(
        { code: 1, stdout: '', stderr: 'Error from server (NotFound): namespaces "flux-system" not found\n' },
        'ns',
      ),
    ).toEqual([])
    expect(
      parseKubeJson(
        { code: 1, stdout: '', stderr: 'error: the server doesn\'t have a resource type "kustomizations"\n' },
        'ks',
      ),
    ).toEqual([])
    expect(() =>
      parseKubeJson(
        {
          code: 1,
          stdout: '',
          stderr: 'The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?',
        },
        'ns',
      ),
    ).toThrow(
      'kubectl get ns failed (exit 1): The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?',
    )
    expect(() => parseKubeJson({ code: 0, stdout: 'NAME STATUS', stderr: '' }, 'ns')).toThrow(
      'kubectl get ns: the answer is not JSON: NAME STATUS',
    )
  })
})

describe('flux output and names', () => {
  it('reads `flux --version`', () => {
    expect(parseFluxVersion('flux version 2.7.3\n')).toBe('2.7.3')
    expect(parseFluxVersion('flux version v2.6.0\n')).toBe('2.6.0')
    expect(parseFluxVersion('none\n')).toBeNull()
    expect(parseFluxVersion('sh: 1: flux: not found\n')).toBeNull()
  })

  it('fills the release URL for the host architecture', () => {
    const url = 'https://github.com/fluxcd/flux2/releases/download/v{version}/flux_{version}_linux_{arch}.tar.gz'
    expect(fluxDownloadUrl(url, 'v2.7.3', 'arm64')).toBe(
      'https://github.com/fluxcd/flux2/releases/download/v2.7.3/flux_2.7.3_linux_arm64.tar.gz',
    )
    expect(fluxDownloadUrl(url, '2.7.3', 'armhf')).toBe(
      'https://github.com/fluxcd/flux2/releases/download/v2.7.3/flux_2.7.3_linux_arm.tar.gz',
    )
    expect(fluxArch('x86_64')).toBe('amd64')
    expect(fluxArch('riscv64')).toBe('riscv64')
  })

  it('compares repositories and paths the way Flux writes them', () => {
    expect(normRepoUrl('ssh://git@github.com/mtgibbs/pi-cluster')).toBe('github.com/mtgibbs/pi-cluster')
    expect(normRepoUrl('https://github.com/MTGibbs/pi-cluster.git')).toBe('github.com/mtgibbs/pi-cluster')
    expect(normRepoUrl('git@github.com:mtgibbs/pi-cluster.git')).toBe('github.com/mtgibbs/pi-cluster')
    expect(normPath('./clusters/pi-k3s/')).toBe('clusters/pi-k3s')
    expect(normPath('clusters/pi-k3s')).toBe('clusters/pi-k3s')
  })
})

// What `flux bootstrap github --owner=mtgibbs --repository=pi-cluster --path=clusters/pi-k3s` leaves in the cluster.
function bootstrapped(
  over: {
    version?: string
    url?: string
    branch?: string
    path?: string
    ks?: Record<string, unknown>
    controllerReady?: number
  } = {},
): FluxState {
  const labels = (v: string) => ({
    'app.kubernetes.io/instance': 'flux-system',
    'app.kubernetes.io/part-of': 'flux',
    'app.kubernetes.io/version': v,
  })
  const controller = (name: string, tag: string): KubeObject => ({
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name, namespace: 'flux-system', labels: labels(tag) },
    spec: { replicas: 1 },
    status: { replicas: 1, readyReplicas: over.controllerReady ?? 1 },
  })
  return {
    namespace: {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name: 'flux-system', labels: labels(`v${over.version ?? '2.7.3'}`) },
    },
    gitRepository: {
      kind: 'GitRepository',
      metadata: { name: 'flux-system', namespace: 'flux-system' },
      spec: { url: over.url ?? 'ssh://git@github.com/mtgibbs/pi-cluster', ref: { branch: over.branch ?? 'main' } },
      status: ready('stored artifact'),
    },
    kustomization: {
      kind: 'Kustomization',
      metadata: { name: 'flux-system', namespace: 'flux-system' },
      spec: { path: over.path ?? './clusters/pi-k3s' },
      status: over.ks ?? ready(),
    },
    controllers: [
      controller('helm-controller', 'v1.4.3'),
      controller('kustomize-controller', 'v1.7.2'),
      controller('notification-controller', 'v1.7.4'),
      controller('source-controller', 'v1.7.3'),
    ],
  }
}

describe('the bootstrap skip decision', () => {
  it('skips when Flux is installed at the pin, synced from the right repository, branch and path, and Ready', () => {
    const d = bootstrapDecision(bootstrapped(), WANT)
    expect(d).toEqual({
      skip: true,
      reasons: [],
      summary:
        'Flux 2.7.3 with 4 controllers ready; flux-system Ready on ./clusters/pi-k3s of github.com/mtgibbs/pi-cluster@main',
    })
  })

  it('bootstraps a cluster without Flux', () => {
    expect(bootstrapDecision({ controllers: [] }, WANT)).toMatchObject({
      skip: false,
      reasons: ['Flux is not installed (no flux-system namespace)'],
    })
  })

  it('bootstraps again, saying why, when anything differs or is not Ready', () => {
    const why = (s: FluxState) => bootstrapDecision(s, WANT).reasons
    expect(why(bootstrapped({ version: '2.6.0' }))).toEqual(['Flux 2.6.0 is installed, the pin is 2.7.3'])
    expect(why(bootstrapped({ url: 'ssh://git@github.com/someone/else' }))).toEqual([
      'GitRepository flux-system syncs ssh://git@github.com/someone/else, not github.com/mtgibbs/pi-cluster',
    ])
    expect(why(bootstrapped({ branch: 'dev' }))).toEqual(['GitRepository flux-system follows branch dev, not main'])
    expect(why(bootstrapped({ path: './clusters/other' }))).toEqual([
      'Kustomization flux-system applies ./clusters/other, not ./clusters/pi-k3s',
    ])
    expect(why(bootstrapped({ ks: notReady('kustomization path not found') }))).toEqual([
      'Kustomization flux-system is not Ready (kustomization path not found)',
    ])
    expect(why(bootstrapped({ controllerReady: 0 }))).toEqual([
      'controllers not ready: helm-controller, kustomize-controller, notification-controller, source-controller',
    ])
    expect(why({ ...bootstrapped(), controllers: [], gitRepository: undefined, kustomization: undefined })).toEqual([
      'no Flux controllers in flux-system',
      'no GitRepository flux-system',
      'no Kustomization flux-system',
    ])
  })
})

describe('the scripts, run for real under sh', () => {
  const dir = mkdtempSync(join(tmpdir(), 'flux-bootstrap-test-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))
  const tool = (name: string, body: string): void => {
    writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`)
    chmodSync(join(dir, name), 0o755)
  }
  const sh = (script: string, input: string, env: Record<string, string> = {}) =>
    spawnSync('sh', ['-c', script], {
      input,
      encoding: 'utf8',
      env: { PATH: `${dir}:${process.env.PATH ?? ''}`, ...env },
    })

  it('the one cluster read: the objects it names, the Secret as a salted digest (never the value), and without Flux CRDs the rest', () => {
    // A fake k3s kubectl answering `get -f -` as the real one does with that jsonpath: one JSON line per object
    // found, the Secret as "@@secret name=<base64>"; with Flux's kinds unknown it reads nothing and says why.
    tool(
      'k3s',
      [
        'list=$(cat)',
        'if [ -n "$FAKE_FAIL" ]; then echo "The connection to the server 127.0.0.1:6443 was refused" >&2; exit 1; fi',
        'case $list in *GitRepository*) if [ -n "$FAKE_NO_CRD" ]; then',
        '  echo \'error: unable to recognize "STDIN": no matches for kind "GitRepository" in version "source.toolkit.fluxcd.io/v1"\' >&2; exit 1',
        'fi; [ -n "$FAKE_NO_CRD" ] || printf \'{"kind":"GitRepository","metadata":{"name":"flux-system","namespace":"flux-system"}}\\n\' ;; esac',
        'printf \'{"kind":"Namespace","metadata":{"name":"external-secrets"}}\\n\'',
        '[ -n "$FAKE_VALUE" ] && printf "@@secret onepassword-service-account=%s\\n" "$FAKE_VALUE"',
        'exit 0',
      ].join('\n'),
    )
    const b64 = Buffer.from(ESO_TOKEN).toString('base64')
    const fact = clusterFact('5a17')
    const read = (env: Record<string, string>) => {
      const r = sh(fact.script, '', env)
      expect(r.stdout).not.toContain(b64)
      return fact.parse({ code: r.status ?? 255, stdout: r.stdout, stderr: r.stderr })
    }
    const found = read({ FAKE_VALUE: b64 })
    expect(found.objects.map((o) => `${o.kind}/${o.metadata.name}`)).toEqual([
      'GitRepository/flux-system',
      'Namespace/external-secrets',
    ])
    expect(secretState(found)).toEqual({ state: 'present', digest: esoSecretDigest('5a17', b64) })
    expect(esoSecretDigest('5a17', b64)).not.toBe(esoSecretDigest('5a18', b64)) // another run, another digest
    const other = secretState(read({ FAKE_VALUE: 'b3RoZXI=' }))
    expect(other.state === 'present' && other.digest !== esoSecretDigest('5a17', b64)).toBe(true)
    expect(secretState(read({}))).toEqual({ state: 'absent' })
    // No Flux yet: the kinds every cluster has are read again on their own.
    const before = read({ FAKE_NO_CRD: '1', FAKE_VALUE: b64 })
    expect(before.objects.map((o) => o.kind)).toEqual(['Namespace'])
    expect(secretState(before)).toEqual({ state: 'present', digest: esoSecretDigest('5a17', b64) })
    expect(secretState(read({ FAKE_FAIL: '1' }))).toEqual({
      state: 'error',
      error:
        'cannot read Secret external-secrets/onepassword-service-account: kubectl get -f - (Namespace flux-system, Namespace external-secrets, GitRepository flux-system/flux-system, Kustomization flux-system/flux-system, Deployment flux-system/source-controller, Deployment flux-system/kustomize-controller, Deployment flux-system/helm-controller, Deployment flux-system/notification-controller, Secret external-secrets/onepassword-service-account) failed (exit 1): The connection to the server 127.0.0.1:6443 was refused',
    })
    expect(fact.script).not.toContain(b64)
    expect(clusterCalls(fact.script)).toEqual({ kubectl: 1, flux: 0 })
    expect(JSON.parse(esoSecretManifest(b64))).toEqual({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: {
        name: 'onepassword-service-account',
        namespace: 'external-secrets',
        labels: { 'app.kubernetes.io/managed-by': 'pi-provision' },
      },
      type: 'Opaque',
      data: { token: b64 },
    })
  })

  it('a cluster read as a fact: the objects of every kind asked, or the error kept for the step that needs them', () => {
    tool(
      'k3s',
      [
        'if [ -n "$FAKE_FAIL" ]; then echo "W1127 a warning" >&2; echo "The connection to the server 127.0.0.1:6443 was refused" >&2; exit 1; fi',
        'if [ -n "$FAKE_NO_CRD" ]; then echo \'error: the server doesn\'"\'"\'t have a resource type "kustomizations"\' >&2; exit 1; fi',
        'echo "W1127 deprecation warning" >&2',
        'printf \'{"kind":"List","items":[{"kind":"Namespace","metadata":{"name":"a"}},{"kind":"Deployment","metadata":{"name":"b"}}]}\\n\'',
      ].join('\n'),
    )
    const fact = kubeFact('test', 'namespaces,deployments.apps -A')
    expect(fact.script).toContain(
      'k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml get namespaces,deployments.apps -A -o json',
    )
    const read = (env: Record<string, string>) => {
      const r = sh(fact.script, '', env)
      return fact.parse({ code: r.status ?? 255, stdout: r.stdout, stderr: '' })
    }
    const ok = read({})
    expect(kubeObjects(ok).map((o) => o.metadata.name)).toEqual(['a', 'b'])
    expect(kubeObjects(ok, 'Deployment').map((o) => o.metadata.name)).toEqual(['b'])
    expect(kubeObjects(read({ FAKE_NO_CRD: '1' }))).toEqual([]) // a kind not installed yet reads as none
    const failed = read({ FAKE_FAIL: '1' })
    expect(() => kubeObjects(failed)).toThrow(
      'kubectl get namespaces,deployments.apps -A failed (exit 1): W1127 a warning The connection to the server 127.0.0.1:6443 was refused',
    )
    expect(kubeFact('other', 'namespaces').key).not.toBe(kubeFact('test', 'namespaces').key)
  })

  it('bootstrap: GITHUB_TOKEN reaches flux through its environment; argv has none; the env file is gone', () => {
    const fake = join(dir, 'flux')
    tool(
      'flux',
      `printf 'argv: %s\\n' "$*"; printf 'token: %s\\n' "$GITHUB_TOKEN"; ls /run/pi-provision-flux.* 2>/dev/null | wc -l`,
    )
    const script = bootstrapScript(WANT, 300).replace('/usr/local/bin/flux', fake)
    expect(bootstrapScript(WANT, 300)).not.toContain(PAT)
    const r = sh(script, `GITHUB_TOKEN='${PAT}'\n`)
    expect(r.stderr).toBe('')
    expect(r.stdout).toBe(
      `argv: bootstrap github --kubeconfig=/etc/rancher/k3s/k3s.yaml --owner=mtgibbs --repository=pi-cluster --branch=main --path=clusters/pi-k3s --personal --read-write-key --timeout=300s\ntoken: ${PAT}\n0\n`,
    )
    const none = sh(script, '')
    expect(none.status).toBe(1)
    expect(none.stderr).toBe('no GITHUB_TOKEN on stdin\n')
    expect(bootstrapCommand({ ...WANT, path: 'clusters/my cluster' }, 60)).toContain("--path='clusters/my cluster'")
  })

  it("the flux install script checks the sha256 when pinned and the binary's own version before putting it in place", () => {
    const tarball = fluxInstallScript(
      'https://github.com/fluxcd/flux2/releases/download/v2.7.3/flux_2.7.3_linux_arm64.tar.gz',
      '2.7.3',
      'AB'.repeat(32),
    )
    expect(tarball).toContain('tar -xzf "$work/download" -C "$work" flux')
    expect(tarball).toContain(`if [ "$got" != ${'ab'.repeat(32)} ]; then`)
    expect(tarball).toContain('if [ "$got" != \'flux version 2.7.3\' ]; then')
    expect(tarball.indexOf('sha256sum')).toBeLessThan(tarball.indexOf('install -m 0755'))
    expect(tarball.indexOf('flux version 2.7.3')).toBeLessThan(tarball.indexOf('install -m 0755'))
    const binary = fluxInstallScript('http://10.199.55.1:8780/flux/flux', 'v2.7.3')
    expect(binary).not.toContain('tar -xzf')
    expect(binary).not.toContain('sha256sum')
    expect(binary).toContain('mv "$work/download" "$work/flux"')
    // dash can parse both (syntax check only: nothing is downloaded)
    for (const s of [tarball, binary]) expect(spawnSync('sh', ['-n', '-c', s]).status).toBe(0)
  })
})

// ---------------------------------------------------------------- the role against a fake server

const INV = `all:
  vars:
    secrets_backend: file
    secrets_file: /nonexistent/secrets.yaml
    flux_version: 2.7.3
    flux_url: https://github.com/fluxcd/flux2/releases/download/v{version}/flux_{version}_linux_{arch}.tar.gz
    github_owner: mtgibbs
    github_repository: pi-cluster
    flux_path: clusters/pi-k3s
    github_token_ref: op://pi-cluster/flux-github-pat/token
    eso_token_ref: op://pi-cluster/onepassword-service-account/token
  children:
    server:
      hosts:
        pi-k3s: { address: 127.0.0.55 }
`

interface ServerState {
  k3s: boolean
  esoNamespace: boolean
  secretB64?: string
  flux: string | null
  bootstrapped: boolean
  bootstraps: number
}

function fakeServer(state: ServerState): FakeConnection {
  // What the cluster holds of what the role reads (its one read names the objects; the Secret is in secretB64).
  const cluster = () => {
    const s = bootstrapped()
    return [
      ...(state.esoNamespace ? [{ kind: 'Namespace', metadata: { name: 'external-secrets' } }] : []),
      ...(state.bootstrapped ? [s.namespace, s.gitRepository, s.kustomization, ...s.controllers] : []),
    ]
  }
  const kube = (q: string) => {
    if (!state.k3s) return { code: 127, stderr: 'sh: 1: k3s: not found' }
    const s = bootstrapped()
    if (q.startsWith('kustomizations')) return state.bootstrapped ? one(s.kustomization) : NONE
    return NONE
  }
  const factAnswer = (script: string): { stdout: string; code?: number } => {
    if (script === fluxCliFact.script) return { stdout: state.flux ? `flux version ${state.flux}\n` : 'none\n' }
    if (script === archFact.script) return { stdout: 'arm64\n' }
    const named = answerNamedFact(script, state.k3s ? cluster() : undefined, state.secretB64)
    if (named) return named
    return answerKubeFact(script, kube) ?? { stdout: '' }
  }
  return new FakeConnection('pi-k3s', (script: string, opts: RunOptions) => {
    const batch = answerBatch(script, factAnswer)
    if (batch) return batch
    const read = answerKubeFact(script, kube) // a poll: the same script as a cluster-read fact, run on its own
    if (read) return read
    const single = factAnswer(script)
    if (single.stdout !== '') return single
    if (script.includes('create namespace external-secrets')) state.esoNamespace = true
    else if (script.includes('apply --server-side')) {
      const manifest = JSON.parse(opts.stdin ?? '{}') as { data: { token: string } }
      state.secretB64 = manifest.data.token
    } else if (script.includes('curl -sfSL')) state.flux = '2.7.3'
    else if (script.includes('bootstrap github')) {
      if (opts.stdin !== `GITHUB_TOKEN=${PAT}\n`) return { code: 1, stderr: 'no token' }
      state.bootstrapped = true
      state.bootstraps++
    }
    return undefined
  })
}

function runRole(state: ServerState, opts: { check?: boolean; inventory?: string } = {}) {
  const rep = new RecordingReporter(2)
  const conn = fakeServer(state)
  const secrets = new MemorySecrets({
    'op://pi-cluster/onepassword-service-account/token': ESO_TOKEN,
    'op://pi-cluster/flux-github-pat/token': PAT,
  })
  const run = runPlaybook(
    { name: 'flux', plays: [{ name: 'Bootstrap Flux', hosts: 'server', roles: [fluxBootstrap] }] },
    {
      inventory: parseInventory(opts.inventory ?? INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets,
      check: opts.check,
      connect: () => conn,
    },
  )
  return { rep, conn, run }
}

const stepLines = (rep: RecordingReporter) => rep.lines.filter((l) => /^(ok|changed|skipping|FAILED): /.test(l))

describe('the flux-bootstrap role', () => {
  it('first run: namespace, Secret, flux CLI, bootstrap, wait; secrets only on stdin', async () => {
    const state: ServerState = { k3s: true, esoNamespace: false, flux: null, bootstrapped: false, bootstraps: 0 }
    const { rep, conn, run } = runRole(state)
    const s = await run
    expect(s.exitCode, rep.lines.join('\n')).toBe(0)
    expect(stepLines(rep)).toEqual(
      [
        'changed: [pi-k3s] flux-bootstrap | Create namespace external-secrets (create namespace external-secrets)',
        'changed: [pi-k3s] flux-bootstrap | Put the 1Password service-account token in Secret external-secrets/onepassword-service-account (create Secret external-secrets/onepassword-service-account from op://pi-cluster/onepassword-service-account/token)',
        'changed: [pi-k3s] flux-bootstrap | Install the flux CLI at the pinned version (install flux 2.7.3 from https://github.com/fluxcd/flux2/releases/download/v2.7.3/flux_2.7.3_linux_arm64.tar.gz)',
        'changed: [pi-k3s] flux-bootstrap | Bootstrap Flux from the GitOps repository (skipped when already in place) (ran flux bootstrap github github.com/mtgibbs/pi-cluster@main --path=clusters/pi-k3s (Flux is not installed (no flux-system namespace)))',
        'ok: [pi-k3s] flux-bootstrap | Wait for the flux-system Kustomization to be Ready (main@sha1:abc after 0.0s)',
      ].map((l) => l.replace('main@sha1:abc after 0.0s', 'already Ready')),
    )
    expect(state).toMatchObject({
      esoNamespace: true,
      secretB64: Buffer.from(ESO_TOKEN).toString('base64'),
      flux: '2.7.3',
      bootstrapped: true,
      bootstraps: 1,
    })
    const b64 = Buffer.from(ESO_TOKEN).toString('base64')
    for (const { script } of conn.scripts)
      for (const secret of [ESO_TOKEN, PAT, b64]) expect(script).not.toContain(secret)
    for (const line of rep.lines) for (const secret of [ESO_TOKEN, PAT, b64]) expect(line).not.toContain(secret)
    expect(conn.scripts.filter((x) => x.stdin?.includes(PAT)).map((x) => x.script.split('\n').pop())).toEqual([
      '/usr/local/bin/flux bootstrap github --kubeconfig=/etc/rancher/k3s/k3s.yaml --owner=mtgibbs --repository=pi-cluster --branch=main --path=clusters/pi-k3s --personal --read-write-key --timeout=300s',
    ])
  })

  it('a rerun changes nothing and does not run flux bootstrap', async () => {
    const state: ServerState = {
      k3s: true,
      esoNamespace: true,
      secretB64: Buffer.from(ESO_TOKEN).toString('base64'),
      flux: '2.7.3',
      bootstrapped: true,
      bootstraps: 1,
    }
    const { rep, conn, run } = runRole(state)
    const s = await run
    expect(s.exitCode).toBe(0)
    expect(s.counts['pi-k3s']).toMatchObject({ changed: 0, skipped: 1, failed: 0 })
    expect(state.bootstraps).toBe(1)
    expect(conn.scripts.some((x) => x.script.includes('bootstrap github') || x.script.includes('curl'))).toBe(false)
    expect(rep.lines).toContain(
      'skipping: [pi-k3s] flux-bootstrap | Bootstrap Flux from the GitOps repository (skipped when already in place) (already bootstrapped: Flux 2.7.3 with 4 controllers ready; flux-system Ready on ./clusters/pi-k3s of github.com/mtgibbs/pi-cluster@main)',
    )
  })

  it('a Secret whose value differs is updated; flux at another version is replaced', async () => {
    const state: ServerState = {
      k3s: true,
      esoNamespace: true,
      secretB64: 'b2xk',
      flux: '2.6.0',
      bootstrapped: true,
      bootstraps: 1,
    }
    const { rep, run } = runRole(state)
    expect((await run).exitCode).toBe(0)
    expect(stepLines(rep)).toContain(
      'changed: [pi-k3s] flux-bootstrap | Put the 1Password service-account token in Secret external-secrets/onepassword-service-account (update Secret external-secrets/onepassword-service-account: its token differs from op://pi-cluster/onepassword-service-account/token)',
    )
    expect(stepLines(rep)).toContain(
      'changed: [pi-k3s] flux-bootstrap | Install the flux CLI at the pinned version (replace flux 2.6.0 with 2.7.3 from https://github.com/fluxcd/flux2/releases/download/v2.7.3/flux_2.7.3_linux_arm64.tar.gz)',
    )
    expect(state.secretB64).toBe(Buffer.from(ESO_TOKEN).toString('base64'))
  })

  it('check mode on a host without k3s yet: says what it would do, changes nothing', async () => {
    const state: ServerState = { k3s: false, esoNamespace: false, flux: null, bootstrapped: false, bootstraps: 0 }
    const { rep, conn, run } = runRole(state, { check: true })
    expect((await run).exitCode).toBe(0)
    expect(stepLines(rep).map((l) => l.replace(/ \(the cluster cannot be read yet: .*\)\)$/, ')'))).toEqual([
      'changed: [pi-k3s] flux-bootstrap | Create namespace external-secrets (would create namespace external-secrets)',
      'changed: [pi-k3s] flux-bootstrap | Put the 1Password service-account token in Secret external-secrets/onepassword-service-account (would create Secret external-secrets/onepassword-service-account from op://pi-cluster/onepassword-service-account/token)',
      'changed: [pi-k3s] flux-bootstrap | Install the flux CLI at the pinned version (would install flux 2.7.3 from https://github.com/fluxcd/flux2/releases/download/v2.7.3/flux_2.7.3_linux_arm64.tar.gz)',
      'changed: [pi-k3s] flux-bootstrap | Bootstrap Flux from the GitOps repository (skipped when already in place) (would run flux bootstrap github github.com/mtgibbs/pi-cluster@main --path=clusters/pi-k3s (Flux is not installed (no flux-system namespace)))',
      'skipping: [pi-k3s] flux-bootstrap | Wait for the flux-system Kustomization to be Ready (check mode: it waits for the Flux the steps above bootstrap)',
    ])
    expect(conn.scripts.some((x) => /create namespace|apply --server-side|curl|bootstrap github/.test(x.script))).toBe(
      false,
    )
    expect(state).toMatchObject({ esoNamespace: false, flux: null, bootstrapped: false })
  })

  it('missing variables or a bad pin are inventory errors before any host is touched', () => {
    const pb = { name: 'flux', plays: [{ name: 'Bootstrap Flux', hosts: 'server', roles: [fluxBootstrap] }] }
    const without = (key: string) =>
      parseInventory(
        INV.split('\n')
          .filter((l) => !l.trim().startsWith(`${key}:`))
          .join('\n'),
        '/tmp/inv.yaml',
      )
    const err = (fn: () => unknown): ProvisionError => {
      try {
        fn()
      } catch (e) {
        if (e instanceof ProvisionError) return e
      }
      throw new Error('no ProvisionError')
    }
    expect(requiredSecrets(pb, parseInventory(INV, '/tmp/inv.yaml'), undefined, {}).sort()).toEqual([
      'op://pi-cluster/flux-github-pat/token',
      'op://pi-cluster/onepassword-service-account/token',
    ])
    const e = err(() => requiredSecrets(pb, without('github_token_ref'), undefined, {}))
    expect([e.kind, e.message]).toEqual(['inventory', 'role flux-bootstrap needs github_token_ref'])
    expect(err(() => requiredSecrets(pb, without('flux_version'), undefined, {})).message).toBe(
      'role flux-bootstrap needs flux_version',
    )
    expect(
      err(() => requiredSecrets(pb, parseInventory(INV, '/tmp/inv.yaml'), undefined, { flux_version: 'latest' }))
        .message,
    ).toBe('flux_version "latest" is not a version like 2.7.3')
    expect(
      err(() => requiredSecrets(pb, parseInventory(INV, '/tmp/inv.yaml'), undefined, { flux_sha256: 'abc' })).message,
    ).toBe('flux_sha256 must be 64 hex digits (the sha256 of the file flux_url names)')
  })

  it("the lab and the owner's inventories give the role all it needs", () => {
    const pb = { name: 'flux', plays: [{ name: 'Bootstrap Flux', hosts: 'server', roles: [fluxBootstrap] }] }
    for (const f of ['inventory/hosts.yaml', 'inventory/lab.yaml']) {
      const inv = parseInventory(readFileSync(join(import.meta.dirname, '../..', f), 'utf8'), f)
      expect(requiredSecrets(pb, inv, undefined, {}), f).toContain('op://pi-cluster/flux-github-pat/token')
    }
    expect(execFileSync('sh', ['-n', '-c', clusterFact('ab').script]).toString()).toBe('')
  })
})
