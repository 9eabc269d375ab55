// Running the k3s install script the same way every time (the way k3s documents it), for the server and agent roles
// and the upgrade alike: secrets on stdin only, k3s's own error when it does not start, no restart on top of the one
// the installer made, and a release change refused outside playbooks/upgrade.mts.

import { ProvisionError } from './errors.ts'
import { runKey, type Step, type StepContext } from './role.ts'
import { bounded, quote } from './shell.ts'
import { clusterToken, k3sInstallFact, serverOf } from './k3s.ts'

/** On a host: the install script (re)started k3s in this run, so a queued restart is not needed. */
const RESTARTED_BY_INSTALLER = runKey<boolean>('k3s restarted by the installer')

export interface InstallSpec {
  kind: 'server' | 'agent'
  /** K3S_* variables with secrets: fed on stdin into a 0600 file the install script reads, never argv. */
  secretEnv?: Record<string, string>
}

/**
 * An install or upgrade is planned on this host: the install script will (re)start k3s itself, so the restart
 * handler a config change queued is not needed (what --check reports, and what a real run then does).
 */
export function installerWillRestart(ctx: Pick<StepContext, 'state' | 'host'>): void {
  ctx.state.set(RESTARTED_BY_INSTALLER, true, ctx.host)
}

/**
 * How an agent is installed, by the agent role and by an upgrade alike: joined to the inventory's server with the
 * cluster token (both in the service env file the install script writes, never argv); flags are in config.yaml.
 */
export async function agentInstallSpec(ctx: StepContext): Promise<InstallSpec> {
  const { token } = await clusterToken(ctx, false)
  return { kind: 'agent', secretEnv: { K3S_URL: serverOf(ctx.inventory).url, K3S_TOKEN: token } }
}

/** Install (or upgrade to) the pinned version with the install script, with the same flags every run. */
export async function runInstaller(ctx: StepContext, spec: InstallSpec): Promise<void> {
  const version = ctx.vars.k3s_version
  if (!version)
    throw new ProvisionError('step', 'k3s_version is not set: pin a version (e.g. v1.34.3+k3s1) in the inventory', {
      place: { host: ctx.host },
    })
  const envFile = Object.entries(spec.secretEnv ?? {})
    .map(([k, v]) => `${k}=${quote(v)}`)
    .join('\n')
  const script = [
    'set -e',
    'umask 077',
    'work=$(mktemp -d)',
    `trap 'rm -rf "$work"' EXIT`,
    // stdin carries the secret variables; they reach the installer's environment, not its argv.
    'cat > "$work/env"',
    `curl -sfL --retry 3 ${quote(ctx.vars.k3s_install_url)} -o "$work/install.sh"`,
    'set -a',
    '. "$work/env"',
    'set +a',
    bounded(
      `env INSTALL_K3S_VERSION=${quote(version)} INSTALL_K3S_EXEC=${quote(spec.kind)} sh "$work/install.sh"`,
      ctx.vars.k3s_start_timeout,
      'the k3s install script',
      'k3s_start_timeout',
    ),
  ].join('\n')
  const r = await startingK3s(ctx, spec.kind === 'server' ? 'k3s' : 'k3s-agent', () =>
    ctx.must(script, {
      stdin: envFile + '\n',
      what: `install k3s ${version} (${spec.kind}) with ${ctx.vars.k3s_install_url}`,
    }),
  )
  // The install script (re)starts the service itself, unless it found nothing changed: then a queued restart is still
  // owed.
  ctx.state.set(
    RESTARTED_BY_INSTALLER,
    !/No change detected so skipping service start/.test(r.stdout + r.stderr),
    ctx.host,
  )
}

/**
 * site.mts (and rebuild.mts) never move a running node to another k3s version: they would reinstall the server and
 * every agent at once, with no snapshot and no drain, and a bad release would take the whole cluster down together.
 * playbooks/upgrade.mts does that job (a snapshot, the server first, the agents one at a time). A fresh install (no
 * k3s, a reflashed Pi) takes the inventory's version as before.
 */
export function versionChangeRefusal(kind: 'server' | 'agent'): Step {
  return {
    name: 'Leave the k3s version of a running node to playbooks/upgrade.mts',
    facts: () => [k3sInstallFact],
    async plan(ctx) {
      const cur = await ctx.facts.get(k3sInstallFact)
      const want = ctx.vars.k3s_version
      const installed = kind === 'server' ? cur.serverUnit : cur.agentUnit
      if (!installed || !cur.version)
        return { status: 'ok', message: 'no k3s here yet: the pinned version is installed' }
      if (cur.version === want) return { status: 'ok', message: `k3s ${want}` }
      return {
        status: 'failed',
        message:
          `k3s ${cur.version} runs here and k3s_version is ${want ?? 'not set'}: site.mts does not change the ` +
          'version of a running cluster (it would reinstall every node at once, with no snapshot and no drain). ' +
          'Run playbooks/upgrade.mts (a snapshot, the server first, then the agents one at a time), then site.mts ' +
          `again; or set k3s_version back to ${cur.version}`,
      }
    },
  }
}

/** What k3s itself said when its service would not start, with the way forward for the failures owners meet. */
const K3S_FAILURES: { text: RegExp; hint: string }[] = [
  {
    text: /bootstrap data already found and encrypted with different token/,
    hint:
      'the datastore in /var/lib/rancher/k3s/server was made with another cluster token ' +
      'than the one at k3s_token_ref: put that token back in the secrets store, ' +
      'or restore a backup taken with this one (playbooks/rebuild.mts), or remove the old datastore',
  },
  {
    text: /Node password rejected|duplicate hostname/,
    hint:
      'the server still has the Node of an earlier install of this host: ' +
      'delete it (kubectl delete node NAME) or run playbooks/rebuild.mts for this host',
  },
]

/**
 * Run a command that starts a k3s unit; when it fails, the error carries k3s's own last error lines from the
 * journal (systemd's "Job for k3s.service failed" says nothing of why) and, when known, what to do about it.
 */
export async function startingK3s<T>(ctx: Pick<StepContext, 'sh'>, unit: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run()
  } catch (e) {
    if (!(e instanceof ProvisionError) || e.kind !== 'step') throw e
    // Only the unit's latest start (its invocation), so an old failure is never shown for a new one.
    const log = await ctx
      .sh(
        `id=$(systemctl show -p InvocationID --value ${unit}.service) && [ -n "$id" ] && ` +
          'journalctl _SYSTEMD_INVOCATION_ID="$id" --no-pager -o cat 2>/dev/null | ' +
          "grep -E 'level=(fatal|error)' | tail -n 3",
      )
      .catch(() => undefined)
    const lines = (log?.stdout ?? '')
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => l.replace(/^time="[^"]*" /, ''))
    if (lines.length === 0) throw e
    const known = K3S_FAILURES.find((f) => lines.some((l) => f.text.test(l)))
    throw new ProvisionError('step', `${e.message}\n    ${unit} says: ${lines.join('\n    ')}`, {
      place: e.place,
      hint: known?.hint ?? e.hint,
      cause: e,
    })
  }
}

/** Restart handler that does nothing when the installer already restarted the service in this run. */
export function restartHandlerStep(unit: string): Step {
  return {
    name: `Restart ${unit}`,
    async plan(ctx) {
      if (ctx.state.get(RESTARTED_BY_INSTALLER, ctx.host))
        return { status: 'ok', message: 'already restarted by the install script' }
      return {
        summary: `restart ${unit}`,
        apply: async () =>
          void (await startingK3s(ctx, unit, () =>
            ctx.must(
              bounded(
                `systemctl restart ${unit}`,
                ctx.vars.k3s_start_timeout,
                `restarting ${unit}`,
                'k3s_start_timeout',
              ),
              { what: `restart ${unit}` },
            ),
          )),
      }
    },
  }
}
