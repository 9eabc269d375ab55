// Flux bootstrap, needed or not: what the inventory asks for (repository, branch, path, version), what the cluster
// has (flux-system's namespace, GitRepository, Kustomization, controllers), the decision between them, and the
// `flux bootstrap github` command that carries it out.

import { ProvisionError } from './errors.ts'
import { ESO_KEY, ESO_NAMESPACE, ESO_SECRET } from './external-secrets.ts'
import type { Fact } from './facts.ts'
import {
  conditionOf,
  field,
  FLUX_BIN,
  isReady,
  KUBECONFIG,
  kubeFactNamed,
  type KubeObject,
  type NamedRead,
} from './kube.ts'
import { quote } from './shell.ts'
import type { Vars } from './vars.ts'

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
