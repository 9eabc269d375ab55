// flux-bootstrap: what the owner did by hand after k3s came up, in the same order.
//   kubectl create namespace external-secrets
//   kubectl -n external-secrets create secret generic onepassword-service-account --from-literal=token=ops_...
//   flux bootstrap github --owner=mtgibbs --repository=pi-cluster --branch=main --path=clusters/pi-k3s \
//     --personal --read-write-key
// Everything runs ON THE SERVER over SSH, with k3s's own admin kubeconfig (/etc/rancher/k3s/k3s.yaml): the
// same place `sudo k3s kubectl` works, so the controller needs no kubeconfig, no route to port 6443, and no
// flux binary of its own. Secrets reach the server on stdin only (never argv, logs or output).

import { createHash, randomBytes } from 'node:crypto'
import { ProvisionError } from '../lib/errors.ts'
import { defineFact, type Fact } from '../lib/facts.ts'
import {
  conditionOf,
  field,
  FLUX_BIN,
  isReady,
  KS,
  KUBECONFIG,
  KUBECTL,
  kubeFactNamed,
  kubeGet,
  kubeObjects,
  type KubeObject,
  type NamedRead,
} from '../lib/kube.ts'
import { registerSecret } from '../lib/mask.ts'
import type { Change, Role, StepContext } from '../lib/role.ts'
import { quote } from '../lib/shell.ts'
import { waitUntil } from '../lib/steps.ts'
import type { Vars } from '../lib/vars.ts'

// ---------------------------------------------------------------- what the inventory asks for

export interface BootstrapWant {
  version: string
  owner: string
  repository: string
  branch: string
  path: string
  host: string
}

/** "v2.7.3" and "2.7.3" are the same pin. */
export function normVersion(v: string): string {
  return v.trim().replace(/^v/, '')
}

export function bootstrapWant(v: Vars): BootstrapWant {
  return {
    version: normVersion(v.flux_version ?? ''),
    owner: v.github_owner ?? '',
    repository: v.github_repository ?? '',
    branch: v.github_branch ?? 'main',
    path: normPath(v.flux_path ?? ''),
    host: 'github.com',
  }
}

export function repoLabel(w: BootstrapWant): string {
  return `${w.host}/${w.owner}/${w.repository}@${w.branch}`
}

/** "./clusters/pi-k3s/", "clusters/pi-k3s" -> "clusters/pi-k3s". */
export function normPath(p: string): string {
  return p
    .trim()
    .replace(/^(\.\/)+/, '')
    .replace(/^\/+|\/+$/g, '')
}

/** ssh://git@github.com/o/r(.git), https://github.com/o/r(.git), git@github.com:o/r -> github.com/o/r (lower case). */
export function normRepoUrl(url: string): string {
  let u = url
    .trim()
    .replace(/\/+$/, '')
    .replace(/\.git$/, '')
  const scp = /^(?:ssh:\/\/)?[^@/]+@([^:/]+)[:/](.+)$/.exec(u)
  if (scp) u = `${scp[1]}/${scp[2]}`
  else u = u.replace(/^[a-z+]+:\/\//, '').replace(/^[^@/]+@/, '')
  return u.toLowerCase()
}

/** Variables flux-bootstrap cannot do without: an inventory error before any host is touched. */
export function checkFluxVars(v: Vars): void {
  const missing = (
    [
      'flux_version',
      'flux_url',
      'github_owner',
      'github_repository',
      'flux_path',
      'github_token_ref',
      'eso_token_ref',
    ] as const
  ).filter((k) => !v[k])
  if (missing.length)
    throw new ProvisionError('inventory', `role flux-bootstrap needs ${missing.join(', ')}`, {
      hint: "set them in the inventory (all.vars); docs/gitops.md lists them with the owner's values",
    })
  if (!/^v?\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$/.test(v.flux_version!.trim()))
    throw new ProvisionError('inventory', `flux_version ${JSON.stringify(v.flux_version)} is not a version like 2.7.3`)
  if (v.flux_sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(v.flux_sha256.trim()))
    throw new ProvisionError('inventory', `flux_sha256 must be 64 hex digits (the sha256 of the file flux_url names)`)
  if (!/^[A-Za-z0-9_.-]+$/.test(v.github_owner!) || !/^[A-Za-z0-9_.-]+$/.test(v.github_repository!))
    throw new ProvisionError('inventory', 'github_owner and github_repository must be plain GitHub names')
}

// ---------------------------------------------------------------- the flux CLI

export const ESO_NAMESPACE = 'external-secrets'
export const ESO_SECRET = 'onepassword-service-account'
export const ESO_KEY = 'token'

/** `flux --version` -> "2.7.3"; null when there is no flux. */
export function parseFluxVersion(stdout: string): string | null {
  const m = /^flux version v?(\S+)/m.exec(stdout)
  return m ? m[1] : null
}

export const fluxCliFact = defineFact(
  'flux-cli',
  `if [ -x ${FLUX_BIN} ]; then ${FLUX_BIN} --version 2>&1 | head -n 1; else echo none; fi`,
  (r) => parseFluxVersion(r.stdout),
)
export const archFact = defineFact('dpkg-arch', 'dpkg --print-architecture 2>/dev/null || uname -m', (r) =>
  r.stdout.trim(),
)

/** Flux's release names for an architecture as dpkg (or uname) reports it. */
export function fluxArch(arch: string): string {
  const map: Record<string, string> = {
    arm64: 'arm64',
    aarch64: 'arm64',
    armhf: 'arm',
    armel: 'arm',
    armv7l: 'arm',
    armv6l: 'arm',
    amd64: 'amd64',
    x86_64: 'amd64',
  }
  return map[arch] ?? arch
}

/** flux_url with {version} and {arch} filled in. */
export function fluxDownloadUrl(template: string, version: string, arch: string): string {
  return template.replaceAll('{version}', normVersion(version)).replaceAll('{arch}', fluxArch(arch))
}

/**
 * Download, check (sha256 when pinned; the binary's own --version always) and only then put in place, so a
 * wrong download never replaces a working flux. A release tarball (.tar.gz) holds the binary `flux`.
 */
export function fluxInstallScript(url: string, version: string, sha256?: string): string {
  const v = normVersion(version)
  const tarball = /\.(tar\.gz|tgz)(\?.*)?$/.test(new URL(url).pathname + new URL(url).search)
  const lines = [
    'set -e',
    'work=$(mktemp -d)',
    `trap 'rm -rf "$work"' EXIT`,
    `curl -sfSL --retry 3 -o "$work/download" ${quote(url)} ` +
      `|| { echo ${quote(`cannot download ${url}`)} >&2; exit 1; }`,
  ]
  if (sha256) {
    const want = sha256.trim().toLowerCase()
    lines.push(
      `got=$(sha256sum "$work/download" | cut -d' ' -f1)`,
      `if [ "$got" != ${quote(want)} ]; then ` +
        `echo ${quote(`sha256 of ${url} is`)} "$got," ${quote(`not ${want} (flux_sha256)`)} >&2; exit 1; fi`,
    )
  }
  if (tarball)
    lines.push(
      `tar -xzf "$work/download" -C "$work" flux || { echo ${quote(`no file "flux" in ${url}`)} >&2; exit 1; }`,
    )
  else lines.push('mv "$work/download" "$work/flux"')
  lines.push(
    'chmod 0755 "$work/flux"',
    `got=$("$work/flux" --version 2>&1 | head -n 1) || true`,
    `if [ "$got" != ${quote(`flux version ${v}`)} ]; then ` +
      `echo 'the downloaded flux says' "\\"$got\\"," ` +
      `${quote(`not "flux version ${v}" (flux_version)`)} >&2; exit 1; fi`,
    `install -m 0755 -o root -g root "$work/flux" ${FLUX_BIN}.new`,
    `mv -f ${FLUX_BIN}.new ${FLUX_BIN}`,
  )
  return lines.join('\n')
}

// ---------------------------------------------------------------- bootstrap: needed or not

export interface FluxState {
  namespace?: KubeObject
  gitRepository?: KubeObject
  kustomization?: KubeObject
  controllers: KubeObject[]
}

/** The controllers `flux bootstrap` installs (its default components), each a Deployment in flux-system. */
export const FLUX_CONTROLLERS = [
  'source-controller',
  'kustomize-controller',
  'helm-controller',
  'notification-controller',
] as const

/**
 * Everything the role decides on, by name, in one kubectl process: namespaces flux-system and external-secrets,
 * flux-system's GitRepository and Kustomization, the controllers' Deployments, and the ESO Secret, of which the
 * server answers only a salted digest (see secretState). Without Flux's CRDs (before bootstrap) the others still
 * answer. `salt` is one per run: a digest seen in one run says nothing in another.
 */
export function clusterFact(salt: string): Fact<NamedRead> {
  const fs = 'flux-system'
  return kubeFactNamed(
    'flux-bootstrap',
    [
      { apiVersion: 'v1', kind: 'Namespace', name: fs },
      { apiVersion: 'v1', kind: 'Namespace', name: ESO_NAMESPACE },
      { apiVersion: 'source.toolkit.fluxcd.io/v1', kind: 'GitRepository', name: fs, namespace: fs },
      { apiVersion: 'kustomize.toolkit.fluxcd.io/v1', kind: 'Kustomization', name: fs, namespace: fs },
      ...FLUX_CONTROLLERS.map((name) => ({ apiVersion: 'apps/v1', kind: 'Deployment', name, namespace: fs })),
      { apiVersion: 'v1', kind: 'Secret', name: ESO_SECRET, namespace: ESO_NAMESPACE },
    ],
    { key: ESO_KEY, salt },
  )
}

/** What bootstrap decides on, from the objects read (no Flux CRDs yet reads as nothing installed). */
export function fluxStateOf(objects: readonly KubeObject[]): FluxState {
  const named = (kind: string) =>
    objects.find((o) => o.kind === kind && o.metadata.name === 'flux-system' && o.metadata.namespace === 'flux-system')
  return {
    namespace: objects.find((n) => n.kind === 'Namespace' && n.metadata.name === 'flux-system'),
    gitRepository: named('GitRepository'),
    kustomization: named('Kustomization'),
    controllers: objects.filter(
      (o) =>
        o.kind === 'Deployment' &&
        o.metadata.namespace === 'flux-system' &&
        (FLUX_CONTROLLERS as readonly string[]).includes(o.metadata.name),
    ),
  }
}

export async function readFluxState(ctx: StepContext): Promise<FluxState> {
  return fluxStateOf(kubeObjects(await ctx.facts.get(fluxRead)))
}

/**
 * The Flux version installed in the cluster: the flux-system namespace's version label
 * (flux-v2.7.3 as `flux version` says).
 */
export function installedFluxVersion(s: FluxState): string | undefined {
  const label = s.namespace?.metadata.labels?.['app.kubernetes.io/version']
  return label ? normVersion(label) : undefined
}

function replicasReady(d: KubeObject): boolean {
  const want = Number(d.spec?.replicas ?? 1)
  const ready = Number(d.status?.readyReplicas ?? 0)
  return ready >= want
}

export interface BootstrapDecision {
  skip: boolean
  /** Why bootstrap has to run (empty when skipped). */
  reasons: string[]
  /** One line: what is there. */
  summary: string
}

/**
 * Skip flux bootstrap when flux-system is installed at the pinned version, synced from the right
 * repository, branch and path, and Ready.
 */
export function bootstrapDecision(s: FluxState, want: BootstrapWant): BootstrapDecision {
  const reasons: string[] = []
  if (!s.namespace) return { skip: false, reasons: ['Flux is not installed (no flux-system namespace)'], summary: '' }
  const have = installedFluxVersion(s)
  if (have !== want.version)
    reasons.push(
      have
        ? `Flux ${have} is installed, the pin is ${want.version}`
        : 'the flux-system namespace has no Flux version label',
    )
  if (s.controllers.length === 0) reasons.push('no Flux controllers in flux-system')
  else {
    const missing = FLUX_CONTROLLERS.filter((n) => !s.controllers.some((d) => d.metadata.name === n))
    if (missing.length) reasons.push(`controller${missing.length > 1 ? 's' : ''} missing: ${missing.join(', ')}`)
  }
  const notReady = s.controllers.filter((d) => !replicasReady(d)).map((d) => d.metadata.name)
  if (notReady.length) reasons.push(`controller${notReady.length > 1 ? 's' : ''} not ready: ${notReady.join(', ')}`)
  const gr = s.gitRepository
  const wantRepo = `${want.host}/${want.owner}/${want.repository}`.toLowerCase()
  if (!gr) reasons.push('no GitRepository flux-system')
  else {
    const url = field(gr, 'spec', 'url') ?? ''
    if (normRepoUrl(url) !== wantRepo)
      reasons.push(`GitRepository flux-system syncs ${url || 'nothing'}, not ${wantRepo}`)
    const branch = field(gr, 'spec', 'ref', 'branch')
    if (branch !== want.branch)
      reasons.push(`GitRepository flux-system follows branch ${branch ?? '(none)'}, not ${want.branch}`)
  }
  const ks = s.kustomization
  if (!ks) reasons.push('no Kustomization flux-system')
  else {
    const path = normPath(field(ks, 'spec', 'path') ?? '')
    if (path !== want.path) reasons.push(`Kustomization flux-system applies ./${path}, not ./${want.path}`)
    if (!isReady(ks))
      reasons.push(
        `Kustomization flux-system is not Ready${conditionOf(ks)?.message ? ` (${conditionOf(ks)?.message})` : ''}`,
      )
  }
  const summary =
    `Flux ${have ?? '?'} with ${s.controllers.length} controllers ready; ` +
    `flux-system Ready on ./${want.path} of ${repoLabel(want)}`
  return { skip: reasons.length === 0, reasons, summary }
}

/** The bootstrap command line: no secret in it. GITHUB_TOKEN comes from the env file read from stdin. */
export function bootstrapCommand(w: BootstrapWant, timeoutSec: number): string {
  return [
    FLUX_BIN,
    'bootstrap github',
    `--kubeconfig=${KUBECONFIG}`,
    `--owner=${quote(w.owner)}`,
    `--repository=${quote(w.repository)}`,
    `--branch=${quote(w.branch)}`,
    `--path=${quote(w.path)}`,
    '--personal',
    '--read-write-key',
    `--timeout=${timeoutSec}s`,
  ].join(' ')
}

/**
 * stdin carries `GITHUB_TOKEN='...'`: written to a 0600 file in /run (tmpfs: never on the SD card), sourced,
 * deleted at once; the token is then only in the flux process's environment, never in argv (ps) or a log.
 */
export function bootstrapScript(w: BootstrapWant, timeoutSec: number): string {
  return [
    'set -e',
    'umask 077',
    'envf=$(mktemp /run/pi-provision-flux.XXXXXX 2>/dev/null || mktemp)',
    `trap 'rm -f "$envf"' EXIT`,
    'cat > "$envf"',
    'set -a',
    '. "$envf"',
    'set +a',
    'rm -f "$envf"',
    '[ -n "$GITHUB_TOKEN" ] || { echo "no GITHUB_TOKEN on stdin" >&2; exit 1; }',
    bootstrapCommand(w, timeoutSec),
  ].join('\n')
}

// ---------------------------------------------------------------- the ESO bootstrap secret

/** The Secret as applied (server-side apply: no last-applied annotation holding the value a second time). */
export function esoSecretManifest(tokenBase64: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: ESO_SECRET,
      namespace: ESO_NAMESPACE,
      labels: { 'app.kubernetes.io/managed-by': 'pi-provision' },
    },
    type: 'Opaque',
    data: { [ESO_KEY]: tokenBase64 },
  })
}

/**
 * Whether the Secret holds the wanted value, read with the role's other facts (which have no stdin): the server
 * answers "absent" or a sha256 of a per-run random salt + "name=<base64 value>", never the value; the controller
 * compares it with the same digest of the value it wants.
 */
export type SecretState = { state: 'absent' } | { state: 'present'; digest: string } | { state: 'error'; error: string }

export function esoSecretDigest(salt: string, tokenBase64: string): string {
  return createHash('sha256').update(`${salt}${ESO_SECRET}=${tokenBase64}`).digest('hex')
}

/** The ESO Secret as the role's read found it: absent, or present with the digest the server answered. */
export function secretState(read: NamedRead): SecretState {
  if (read.error) return { state: 'error', error: `cannot read Secret ${ESO_NAMESPACE}/${ESO_SECRET}: ${read.error}` }
  return read.secretDigest ? { state: 'present', digest: read.secretDigest } : { state: 'absent' }
}

/** One salt per run: a digest seen in one run says nothing in another. */
const ESO_SALT = randomBytes(16).toString('hex')
const fluxRead = clusterFact(ESO_SALT)

/**
 * The cluster could not be read. Under --check of a fresh Pi that is expected (no k3s yet): the plan says what a
 * real run would do. For real, k3s is up by now, so carrying it out fails with the read's own error.
 */
function notInstalledYet(e: unknown, would: string): Change {
  return {
    summary: `${would} (the cluster cannot be read yet: ${e instanceof Error ? e.message.split('\n')[0] : String(e)})`,
    apply: () => Promise.reject(e),
  }
}

// ---------------------------------------------------------------- the role

export const fluxBootstrap: Role = {
  name: 'flux-bootstrap',
  defaults: { github_branch: 'main' },
  // Checked with the secrets, before any host is touched: missing variables are an inventory error (exit 1).
  secrets: (v) => {
    checkFluxVars(v)
    return [v.eso_token_ref, v.github_token_ref]
  },
  steps: [
    {
      name: `Create namespace ${ESO_NAMESPACE}`,
      // Every read this role makes, in one round trip: the cluster in one kubectl, side by side with flux's version.
      facts: () => [fluxRead, fluxCliFact, archFact],
      async plan(ctx) {
        let exists: boolean
        try {
          exists = kubeObjects(await ctx.facts.get(fluxRead), 'Namespace').some(
            (n) => n.metadata.name === ESO_NAMESPACE,
          )
        } catch (e) {
          return notInstalledYet(e, `create namespace ${ESO_NAMESPACE}`)
        }
        if (exists) return { status: 'ok', message: `namespace ${ESO_NAMESPACE} exists` }
        return {
          summary: `create namespace ${ESO_NAMESPACE}`,
          commands: [{ script: `${KUBECTL} create namespace ${ESO_NAMESPACE}` }],
        }
      },
    },
    {
      name: `Put the 1Password service-account token in Secret ${ESO_NAMESPACE}/${ESO_SECRET}`,
      async plan(ctx) {
        const ref = ctx.vars.eso_token_ref!
        const value = ctx.secrets.get(ref)
        const b64 = Buffer.from(value, 'utf8').toString('base64')
        registerSecret(b64) // the value as the API shows it is as secret as the value
        const have = secretState(await ctx.facts.get(fluxRead))
        if (have.state === 'error')
          return notInstalledYet(
            new ProvisionError('step', have.error),
            `create Secret ${ESO_NAMESPACE}/${ESO_SECRET} from ${ref}`,
          )
        if (have.state === 'present' && have.digest === esoSecretDigest(ESO_SALT, b64))
          return { status: 'ok', message: `key ${ESO_KEY} holds the value of ${ref}` }
        const summary =
          have.state === 'absent'
            ? `create Secret ${ESO_NAMESPACE}/${ESO_SECRET} from ${ref}`
            : `update Secret ${ESO_NAMESPACE}/${ESO_SECRET}: its ${ESO_KEY} differs from ${ref}`
        return {
          summary,
          commands: [
            {
              script: `${KUBECTL} apply --server-side --field-manager=pi-provision --force-conflicts -f - >/dev/null`,
              stdin: esoSecretManifest(b64),
            },
          ],
        }
      },
    },
    {
      name: 'Install the flux CLI at the pinned version',
      facts: () => [fluxCliFact, archFact],
      async plan(ctx) {
        const want = normVersion(ctx.vars.flux_version!)
        const cur = await ctx.facts.get(fluxCliFact)
        if (cur === want) return { status: 'ok', message: `flux ${want}` }
        const url = fluxDownloadUrl(ctx.vars.flux_url!, want, await ctx.facts.get(archFact))
        const what = cur ? `replace flux ${cur} with ${want}` : `install flux ${want}`
        return {
          summary: `${what} from ${url}${ctx.vars.flux_sha256 ? ' (sha256 checked)' : ''}`,
          commands: [{ script: fluxInstallScript(url, want, ctx.vars.flux_sha256) }],
        }
      },
    },
    {
      name: 'Bootstrap Flux from the GitOps repository (skipped when already in place)',
      async plan(ctx) {
        const want = bootstrapWant(ctx.vars)
        let decision: BootstrapDecision
        try {
          decision = bootstrapDecision(await readFluxState(ctx), want)
        } catch (e) {
          return notInstalledYet(e, `run flux bootstrap github ${repoLabel(want)} --path=${want.path}`)
        }
        if (decision.skip) return { status: 'skipped', message: `already bootstrapped: ${decision.summary}` }
        const what = `flux bootstrap github ${repoLabel(want)} --path=${want.path} (${decision.reasons.join('; ')})`
        const token = ctx.secrets.get(ctx.vars.github_token_ref!)
        return {
          summary: `run ${what}`,
          commands: [{ script: bootstrapScript(want, ctx.vars.flux_timeout), stdin: `GITHUB_TOKEN=${quote(token)}\n` }],
          apply: async () => `ran ${what}`,
        }
      },
    },
    {
      name: 'Wait for the flux-system Kustomization to be Ready',
      onlyForReal: 'it waits for the Flux the steps above bootstrap',
      async plan(ctx) {
        // Already Ready in the role's first read (nothing was changed since): nothing to wait for.
        const first = (await readFluxState(ctx).catch(() => undefined))?.kustomization
        if (first && isReady(first))
          return {
            status: 'ok',
            message:
              'already Ready' +
              (field(first, 'status', 'lastAppliedRevision')
                ? ` at ${field(first, 'status', 'lastAppliedRevision')}`
                : ''),
          }
        const { value, seconds } = await waitUntil(
          ctx,
          { timeoutSec: ctx.vars.flux_timeout, what: 'Kustomization flux-system/flux-system to be Ready' },
          async () => {
            const ks = (await kubeGet(ctx, `${KS} flux-system -n flux-system --ignore-not-found`))[0]
            const c = conditionOf(ks)
            return {
              done: isReady(ks),
              value: ks,
              waitingFor: ks
                ? `Ready=${c?.status ?? 'Unknown'}${c?.message ? `: ${c.message}` : ''}`
                : 'it does not exist',
            }
          },
        )
        return {
          status: 'ok',
          message: `${field(value, 'status', 'lastAppliedRevision') ?? 'Ready'} after ${seconds.toFixed(1)}s`,
        }
      },
    },
  ],
}
