// flux-bootstrap: what the owner did by hand after k3s came up, in the same order.
//   kubectl create namespace external-secrets
//   kubectl -n external-secrets create secret generic onepassword-service-account --from-literal=token=ops_...
//   flux bootstrap github --owner=mtgibbs --repository=pi-cluster --branch=main --path=clusters/pi-k3s \
//     --personal --read-write-key
// Everything runs ON THE SERVER over SSH, with k3s's own admin kubeconfig (/etc/rancher/k3s/k3s.yaml): the
// same place `sudo k3s kubectl` works, so the controller needs no kubeconfig, no route to port 6443, and no
// flux binary of its own. Secrets reach the server on stdin only (never argv, logs or output).

import { randomBytes } from 'node:crypto'
import { ProvisionError } from '../lib/errors.ts'
import { conditionOf, field, isReady, KS, KUBECTL, kubeGet, kubeObjects } from '../lib/kube.ts'
import { registerSecret } from '../lib/mask.ts'
import type { Change, Role, StepContext } from '../lib/role.ts'
import { quote } from '../lib/shell.ts'
import { waitUntil } from '../lib/steps.ts'
import {
  ESO_KEY,
  ESO_NAMESPACE,
  ESO_SECRET,
  esoSecretDigest,
  esoSecretManifest,
  secretState,
} from '../lib/external-secrets.ts'
import {
  bootstrapDecision,
  bootstrapScript,
  bootstrapWant,
  checkFluxVars,
  clusterFact,
  fluxStateOf,
  normVersion,
  repoLabel,
  type BootstrapDecision,
  type FluxState,
} from '../lib/flux-bootstrap-plan.ts'
import { archFact, fluxCliFact, fluxDownloadUrl, fluxInstallScript } from '../lib/flux-cli.ts'

export async function readFluxState(ctx: StepContext): Promise<FluxState> {
  return fluxStateOf(kubeObjects(await ctx.facts.get(fluxRead)))
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
