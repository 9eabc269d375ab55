// apps: after Flux is bootstrapped, make GitOps converge now and prove the apps work, the way the owner checks:
//   flux reconcile source git flux-system; flux reconcile kustomization flux-system (then the others)
//   flux get kustomizations -A; flux get helmreleases -A      -> every one Ready (a live count while waiting)
//   kubectl get clustersecretstores; kubectl get externalsecrets -A  -> 1Password store Ready, secrets synced
//   kubectl get nodes                                          -> a Node the inventory does not name is a warning
//   where the pinned workloads run (Pi-hole on pi-k3s, Unbound on pi3-worker-1, backups on pi-k3s)
//   dig @<server> google.com; curl Jellyfin /health, Immich /api/server/ping, ...  -> a table, from the controller
// Cluster reads run on the server (k3s kubectl, flux: see flux-bootstrap.ts); the probes run on the controller,
// where the owner stands, through lib/probes.ts.

import { nodeNameOf } from '../lib/host-identity.ts'
import { hostVars, type Inventory } from '../lib/inventory.ts'
import { parseAppChecks, type AppCheck } from '../lib/appchecks.ts'
import { checkSecretRefs, formatAppTable, runChecks, verdicts } from '../lib/probes.ts'
import { runKey, type Role, type StepContext } from '../lib/role.ts'
import {
  headLookupConfig,
  headLookupScript,
  parseHead,
  refsUrl,
  sourceDecision,
  type Head,
} from '../lib/flux-source.ts'
import { quote } from '../lib/shell.ts'
import { waitUntil } from '../lib/steps.ts'
import type { Vars } from '../lib/vars.ts'
import { checkEso, SECRET_STORE } from '../lib/external-secrets.ts'
import { describeNotReady, parseRevision, readiness, REQUESTED_AT } from '../lib/flux-readiness.ts'
import { checkPlacement, parsePlacement, WORKLOAD_KINDS } from '../lib/placement.ts'
import {
  FLUX,
  field,
  GITREPO,
  HR,
  isReady,
  KS,
  kubectl,
  kubeFactKinds,
  kubeGet,
  kubeObjects,
  type KubeObject,
} from '../lib/kube.ts'

/** The revision the source reconcile fetched. */
const FLUX_REVISION = runKey<string>('flux source revision')
/** Every Kustomization and HelmRelease already Ready at that revision ("n/m Ready at rev"): nothing to wait for. */
const ALL_READY = runKey<string>('flux all ready')
/** When the Kustomizations were asked to reconcile (their requestedAt annotation). */
const REQUESTED_AT_STAMP = runKey<string>('flux reconcile requested at')

// ---------------------------------------------------------------- the checks from the inventory

/**
 * app_checks with DNS servers resolved: an inventory host name means its address;
 * default the host the role runs on.
 */
export function appChecksFor(ctx: Pick<StepContext, 'vars' | 'inventory'>): AppCheck[] {
  return parseAppChecks(ctx.vars.app_checks, {
    timeoutSec: ctx.vars.app_check_timeout,
    defaultServer: ctx.vars.address,
    resolveServer: (name) => {
      const host = ctx.inventory.hosts.get(name)
      return host ? (hostVars(host).address ?? name) : name
    },
  })
}

/** Checks app_checks and placement; returns the secrets the checks need (Pi-hole's password). */
function validateAppVars(v: Vars): string[] {
  const checks = parseAppChecks(v.app_checks, { timeoutSec: v.app_check_timeout, defaultServer: v.address ?? 'server' })
  parsePlacement(v.placement)
  return checkSecretRefs(checks)
}

// ---------------------------------------------------------- what the role reads, in one kubectl, before the reconcile

/**
 * Everything the role's steps judge, in one kubectl process: the GitOps source (is a reconcile needed?), every
 * Kustomization and HelmRelease (all Ready at that revision?), the ClusterSecretStore and ExternalSecrets, and
 * placement's nodes, pods and the workloads that own them. Read once per run; dropped when a reconcile changes them.
 */
export const CLUSTER_KINDS = [
  GITREPO,
  KS,
  HR,
  'clustersecretstores.external-secrets.io',
  'externalsecrets.external-secrets.io',
  'nodes',
  'pods',
  'deployments.apps',
  'statefulsets.apps',
  'daemonsets.apps',
  'cronjobs.batch',
] as const
export const clusterFact = kubeFactKinds('apps', CLUSTER_KINDS, '-A')

/** The branch head where Flux fetches it from, looked up on the server (curl; the GitHub token on stdin). */
async function lookUpHead(ctx: StepContext, source: KubeObject | undefined): Promise<Head | undefined> {
  const url = source && refsUrl(field(source, 'spec', 'url') ?? '', ctx.vars.github_url)
  const branch = source && field(source, 'spec', 'ref', 'branch')
  if (!url || !branch) return undefined
  const token = ctx.vars.github_token_ref ? ctx.secrets.get(ctx.vars.github_token_ref) : undefined
  const r = await ctx.sh(headLookupScript(url), { stdin: headLookupConfig(token), sudo: false })
  if (r.code !== 0) return { error: (r.stderr.trim() || `curl exit ${r.code}`).split('\n').slice(-1)[0] }
  const commit = parseHead(r.stdout, branch)
  return commit ? { commit } : { error: `no branch ${branch} at ${url.replace(/\?.*$/, '')}` }
}

// ---------------------------------------------------------------- the role

/** Nodes no server or agent of the inventory names: a Pi retired without playbooks/retire.mts, or joined by hand. */
export function strayNodes(nodes: readonly KubeObject[], inv: Inventory): KubeObject[] {
  const known = new Set<string>()
  for (const group of ['server', 'agent'])
    for (const name of inv.groups.get(group) ?? []) {
      const host = inv.hosts.get(name)
      if (host) known.add(nodeNameOf(host))
    }
  return nodes.filter((n) => !known.has(n.metadata.name))
}

export const apps: Role = {
  name: 'apps',
  // Validates app_checks and placement before any host is touched (an inventory error, exit 1), and names the
  // passwords the Pi-hole checks need, resolved with the run's other secrets.
  secrets: (v) => [...validateAppVars(v), v.github_token_ref],
  steps: [
    {
      name: 'Reconcile the GitOps source',
      // The role's cluster reads, in one kubectl. When the source brings nothing new they are as current as reads
      // made after it; when it does, they are dropped and read again after the wait.
      facts: () => [clusterFact],
      onlyForReal: 'would reconcile GitRepository flux-system: it reads the cluster a real run converged',
      async plan(ctx) {
        // Flux has the head of its branch already (and is Ready): nothing to fetch, no flux process, no wait.
        const source = kubeObjects(await ctx.facts.get(clusterFact), 'GitRepository').find(
          (g) => g.metadata.name === 'flux-system' && g.metadata.namespace === 'flux-system',
        )
        const mode = ctx.vars.flux_reconcile
        const head = mode === 'auto' && source ? await lookUpHead(ctx, source) : undefined
        const decision = sourceDecision(source, head, mode)
        if (!decision.reconcile) {
          ctx.state.set(FLUX_REVISION, decision.revision, ctx.host)
          return { status: 'ok', message: decision.message }
        }
        const r = await ctx.must(
          `${FLUX} reconcile source git flux-system -n flux-system --timeout=${ctx.vars.flux_timeout}s`,
          { what: 'flux reconcile source git flux-system' },
        )
        const rev = parseRevision(r.stderr + r.stdout)
        if (rev) ctx.state.set(FLUX_REVISION, rev, ctx.host)
        return { status: 'ok', message: `fetched ${rev ?? 'the latest revision'} (${decision.why})` }
      },
    },
    {
      name: 'Reconcile the Kustomizations',
      onlyForReal: 'would reconcile the Kustomizations: it reads the cluster a real run converged',
      async plan(ctx) {
        // Nothing new from git and everything Ready at that revision: a forced reconcile would only re-apply the
        // same manifests (Flux does that on its own interval), so a no-op rerun does not wait for it.
        const revision = ctx.state.get(FLUX_REVISION, ctx.host)
        if (revision) {
          const read = await ctx.facts.get(clusterFact)
          const st = readiness(kubeObjects(read, 'Kustomization'), kubeObjects(read, 'HelmRelease'), { revision })
          if (st.total > 0 && st.notReady.length === 0) {
            ctx.state.set(ALL_READY, `${st.ready}/${st.total} Ready at ${revision}`, ctx.host)
            return { status: 'ok', message: `all ${st.total} Ready at ${revision}: nothing new to apply` }
          }
        }
        // From here on the cluster changes: the later checks read it again.
        ctx.facts.invalidate()
        // The root first: it applies the other Kustomizations at the new revision.
        const r = await ctx.must(
          `${FLUX} reconcile kustomization flux-system -n flux-system --timeout=${ctx.vars.flux_timeout}s`,
          { what: 'flux reconcile kustomization flux-system' },
        )
        const applied = parseRevision(r.stderr + r.stdout)
        const others = (await kubeGet(ctx, `${KS} -A`)).filter(
          (k) => !(k.metadata.name === 'flux-system' && k.metadata.namespace === 'flux-system'),
        )
        // What `flux reconcile kustomization X` does, for all of them at once:
        // the wait step then watches them converge.
        const stamp = new Date().toISOString()
        if (others.length) {
          const script = others
            .map(
              (k) =>
                `${kubectl(
                  `annotate --overwrite -n ${quote(k.metadata.namespace ?? 'flux-system')}`,
                  `${KS}/${k.metadata.name}`,
                  `${REQUESTED_AT}=${stamp}`,
                )} >/dev/null`,
            )
            .join(' && \\\n')
          await ctx.must(script, { what: 'request reconciliation of the Kustomizations' })
          ctx.state.set(REQUESTED_AT_STAMP, stamp, ctx.host)
        }
        return {
          status: 'ok',
          message: `flux-system applied ${applied ?? 'the latest revision'}; ${others.length} more asked to reconcile`,
        }
      },
    },
    {
      name: 'Wait until every Kustomization and HelmRelease is Ready',
      onlyForReal: 'would wait for the Kustomizations and HelmReleases: it reads the cluster a real run converged',
      async plan(ctx) {
        const already = ctx.state.get(ALL_READY, ctx.host)
        if (already) return { status: 'ok', message: `${already} (read just before: nothing to wait for)` }
        const revision = ctx.state.get(FLUX_REVISION, ctx.host)
        const requestedAt = ctx.state.get(REQUESTED_AT_STAMP, ctx.host)
        let lastCount = ''
        let lastLog = 0
        const { value, seconds } = await waitUntil(
          ctx,
          {
            timeoutSec: ctx.vars.apps_timeout,
            what: 'every Kustomization and HelmRelease to be Ready',
            intervalMs: 2000,
          },
          async () => {
            const both = await kubeGet(ctx, `${KS},${HR} -A`)
            const st = readiness(
              both.filter((o) => o.kind === 'Kustomization'),
              both.filter((o) => o.kind === 'HelmRelease'),
              { revision, requestedAt },
            )
            return {
              done: st.notReady.length === 0,
              value: st,
              waitingFor: `${st.notReady.length} of ${st.total} not Ready: ${describeNotReady(st.notReady)}`,
            }
          },
          (st) => {
            // The live count: a line when it changes, or every 30 s while it does not.
            const count = `${st.ready}/${st.total}`
            if (count === lastCount && Date.now() - lastLog < 30_000) return
            lastCount = count
            lastLog = Date.now()
            ctx.log(
              `flux: ${count} Kustomizations and HelmReleases Ready; waiting for ${describeNotReady(st.notReady, 4)}`,
            )
          },
        )
        const at = revision ? ` at ${revision}` : ''
        return {
          status: 'ok',
          message: `${value.ready}/${value.total} Ready${at} after ${seconds.toFixed(1)}s`,
        }
      },
    },
    {
      name: `Check the ClusterSecretStore ${SECRET_STORE} and the ExternalSecrets`,
      onlyForReal: 'would check External Secrets: it reads the cluster a real run converged',
      async plan(ctx) {
        const read = await ctx.facts.get(clusterFact)
        const report = checkEso(kubeObjects(read, 'ClusterSecretStore'), kubeObjects(read, 'ExternalSecret'))
        return { status: report.ok ? 'ok' : 'failed', message: report.message }
      },
    },
    {
      // The owner's `kubectl get nodes` by eye: a Node the inventory does not know is a warning, not a failure
      // (the cluster works), with the way to end it.
      name: 'Check every Node of the cluster is in the inventory',
      onlyForReal: 'would compare the Nodes with the inventory: it reads the cluster a real run converged',
      async plan(ctx) {
        const nodes = kubeObjects(await ctx.facts.get(clusterFact), 'Node')
        const strays = strayNodes(nodes, ctx.inventory)
        for (const n of strays)
          ctx.warn(
            `Node ${n.metadata.name} (${isReady(n) ? 'Ready' : 'NotReady'}) ` +
              `is in the cluster but not in ${ctx.inventory.file}: ` +
              `retire it with \`npx zx playbooks/retire.mts ${n.metadata.name}\`, or add it to the inventory`,
          )
        if (strays.length)
          return {
            status: 'ok',
            message:
              `${strays.length} of ${nodes.length} Nodes not in the inventory: ` +
              strays.map((n) => n.metadata.name).join(', '),
          }
        return { status: 'ok', message: `${nodes.length} Nodes, all in the inventory` }
      },
    },
    {
      name: 'Check where the pinned workloads run',
      onlyForReal: 'would check placement: it reads the cluster a real run converged',
      async plan(ctx) {
        const rules = parsePlacement(ctx.vars.placement)
        if (rules.length === 0) return { status: 'ok', message: 'no placement in the inventory' }
        const read = await ctx.facts.get(clusterFact)
        const workloads = kubeObjects(read).filter((o) => (WORKLOAD_KINDS as readonly string[]).includes(o.kind ?? ''))
        const r = { nodes: kubeObjects(read, 'Node'), pods: kubeObjects(read, 'Pod') }
        const results = checkPlacement(rules, { nodes: r.nodes, pods: r.pods, workloads })
        const bad = results.filter((x) => !x.ok)
        if (bad.length)
          return { status: 'failed', message: bad.map((x) => `${x.key} -> ${x.node}: ${x.detail}`).join('; ') }
        return { status: 'ok', message: results.map((x) => `${x.key} on ${x.node}`).join(', ') }
      },
    },
    {
      name: 'Probe the apps from the controller',
      onlyForReal: 'would probe the apps: it reads the cluster a real run converged',
      async plan(ctx) {
        const checks = appChecksFor(ctx)
        if (checks.length === 0) return { status: 'ok', message: 'no app_checks in the inventory' }
        const results = await runChecks(checks, { secret: (ref) => ctx.secrets.get(ref) })
        ctx.log(['app health (from the controller):', ...formatAppTable(results).map((l) => `  ${l}`)].join('\n'))
        const vs = verdicts(results)
        const failing = vs.filter((v) => !v.ok)
        if (failing.length)
          return {
            status: 'failed',
            message:
              `${failing.length} of ${vs.length} apps failing: ` +
              failing.map((v) => `${v.app} (${v.reasons.join('; ')})`).join(', '),
          }
        return { status: 'ok', message: `${vs.length}/${vs.length} apps healthy: ${vs.map((v) => v.app).join(', ')}` }
      },
    },
  ],
}
