// k3s-agent: join a Pi to the server the way the owner did by hand (K3S_URL + token), but with the
// token in the service env file (0600, never argv), labels and taints in config.yaml (a kubectl taint
// is lost when a node rejoins), a stale Node removed first when the node's disk was wiped, and a wait
// until the server reports the node Ready with its labels.

import { flushHandlers, handler, type Role, type StepContext } from '../lib/role.ts'
import { file, fileFact, systemdUnit } from '../lib/steps.ts'
import { ProvisionError } from '../lib/errors.ts'
import { kubectl } from '../lib/kube.ts'
import {
  clusterToken,
  configNeedsRestart,
  extraConfig,
  K3S_CONFIG,
  k3sInstallFact,
  NODE_PASSWORD,
  nodeLabelsStep,
  NODE_SEEN,
  nodeName,
  nodeOnServer,
  renderK3sConfig,
  serverHandle,
  serverOf,
  checkClusterToken,
} from '../lib/k3s.ts'
import {
  agentInstallSpec,
  installerWillRestart,
  restartHandlerStep,
  runInstaller,
  versionChangeRefusal,
} from '../lib/k3s-install.ts'

/** How long a running agent may stay unknown to the server before it is restarted to rejoin. */
const REJOIN_AFTER_MS = 15_000
/** How long the server may take to report a started agent Ready with its labels and taints. */
const NODE_READY_MS = 180_000

/**
 * Poll the server until it reports this node Ready. With `absentAfterMs`, give up early
 * (ready: false) when the server still does not know the node by then: the agent must be restarted to rejoin.
 * Past the deadline: a timeout naming the node's state and the agent's last log lines.
 */
async function awaitNode(
  ctx: StepContext,
  deadline: number,
  absentAfterMs?: number,
): Promise<{ ready: boolean; took: string; deadline: number }> {
  const started = Date.now()
  for (;;) {
    const node = await nodeOnServer(ctx)
    const took = `${((Date.now() - started) / 1000).toFixed(1)}s`
    if (node.exists && node.ready) {
      ctx.state.set(NODE_SEEN, node, ctx.host) // the labels step next starts from it
      return { ready: true, took, deadline }
    }
    if (!node.exists && absentAfterMs !== undefined && Date.now() - started > absentAfterMs)
      return { ready: false, took, deadline }
    if (Date.now() > deadline) {
      const state = !node.exists ? 'not registered' : 'NotReady'
      const log = await ctx.sh('journalctl -u k3s-agent -n 5 --no-pager -o cat 2>/dev/null | tail -n 5')
      throw new ProvisionError(
        'timeout',
        `node ${nodeName(ctx)} is ${state} after ${NODE_READY_MS / 1000}s; last agent log lines:\n    ` +
          log.stdout.trim().split('\n').join('\n    '),
        { place: { host: ctx.host } },
      )
    }
    await new Promise((r) => setTimeout(r, 1000))
  }
}

function agentConfig(ctx: StepContext): string {
  return renderK3sConfig({
    'node-name': ctx.vars.hostname,
    'node-label': ctx.vars.node_labels,
    'node-taint': ctx.vars.node_taints,
    ...extraConfig(ctx.vars.k3s_extra_args),
  })
}

export const k3sAgent: Role = {
  name: 'k3s-agent',
  checkSecrets: checkClusterToken,
  steps: [
    versionChangeRefusal('agent'),
    {
      name: 'Get the cluster token from the secrets store',
      async plan(ctx) {
        await clusterToken(ctx, false)
        return { status: 'ok', message: `token at ${ctx.vars.k3s_token_ref}` }
      },
    },
    {
      // A wiped SD card means a new /etc/rancher/node/password: k3s refuses the node until its old Node object
      // (and with it the node-password secret) is gone. Only then, and only for this node, act on the server.
      name: 'Delete the stale Node of a reflashed host from the server',
      facts: () => [fileFact(NODE_PASSWORD), k3sInstallFact],
      async plan(ctx) {
        const pw = await ctx.facts.get(fileFact(NODE_PASSWORD))
        if (pw.exists) return { status: 'ok', message: 'node password present: not a fresh disk' }
        const node = await nodeOnServer(ctx)
        if (!node.exists) return { status: 'ok', message: 'no Node of this name on the server' }
        const name = nodeName(ctx)
        return {
          summary: `delete the stale Node ${name} (and its node-password secret) on the server`,
          async apply() {
            await (await serverHandle(ctx)).must(kubectl('delete node', name), {
              what: `delete the stale Node ${name} on the server`,
            })
            return `deleted the stale Node ${name} (and its node-password secret) on the server`
          },
        }
      },
    },
    file(
      'Write /etc/rancher/k3s/config.yaml (labels and taints)',
      (ctx) => ({
        path: K3S_CONFIG,
        content: agentConfig(ctx),
        mode: '0600',
        backup: true,
        notifyIf: configNeedsRestart,
      }),
      {
        notify: ['Restart k3s-agent'],
      },
    ),
    {
      name: 'Join the cluster (install k3s agent only when missing, another version, or another server/token)',
      facts: () => [k3sInstallFact],
      async plan(ctx) {
        const cur = await ctx.facts.get(k3sInstallFact)
        const { token } = await clusterToken(ctx, false)
        const server = serverOf(ctx.inventory)
        const want = ctx.vars.k3s_version
        const why: string[] = []
        if (cur.serverUnit)
          return {
            status: 'failed',
            message: 'this host runs a k3s server; it cannot also be an agent (uninstall with k3s-uninstall.sh first)',
          }
        if (!cur.agentUnit || !cur.version) why.push(`install k3s ${want} (agent)`)
        else if (cur.version !== want) why.push(`upgrade k3s ${cur.version} -> ${want}`)
        if (cur.agentUnit && cur.agentEnv.K3S_URL !== server.url)
          why.push(`server ${cur.agentEnv.K3S_URL ?? 'unset'} -> ${server.url}`)
        if (cur.agentUnit && cur.agentEnv.K3S_TOKEN !== token) why.push('new cluster token')
        if (why.length === 0) return { status: 'ok', message: `k3s ${want} agent of ${server.url}` }
        installerWillRestart(ctx)
        return {
          summary: why.join(', '),
          apply: async () => runInstaller(ctx, await agentInstallSpec(ctx)),
        }
      },
    },
    systemdUnit(
      'Keep k3s-agent enabled and running',
      (ctx) => ({
        unit: 'k3s-agent.service',
        enabled: true,
        active: true,
        startTimeout: { seconds: ctx.vars.k3s_start_timeout, setting: 'k3s_start_timeout' },
      }),
      { onlyForReal: 'k3s-agent is installed only for real' },
    ),
    flushHandlers('Restart k3s-agent if its config changed'),
    {
      // A server rebuilt without a backup has a new datastore (and CA): it does not know this node, and the
      // running agent will not register again by itself. Restarting it makes it bootstrap and join afresh.
      name: 'Wait until the server reports this node Ready (rejoin if it forgot the node)',
      onlyForReal: 'it waits for the agent the steps above install and start',
      async plan(ctx) {
        const seen = await awaitNode(ctx, Date.now() + NODE_READY_MS, REJOIN_AFTER_MS)
        if (seen.ready) return { status: 'ok', message: `Ready after ${seen.took}` }
        return {
          summary: 'rejoin the server, which did not know this node',
          commands: [{ script: 'systemctl restart --no-block k3s-agent' }],
          async apply() {
            const again = await awaitNode(ctx, seen.deadline)
            return `rejoined the server, which did not know this node; Ready after ${again.took}`
          },
        }
      },
    },
    nodeLabelsStep(),
  ],
  handlers: [handler(restartHandlerStep('k3s-agent'))],
}
