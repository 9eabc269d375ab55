// k3s-upgrade-agent: each agent moved to the inventory's k3s_version, one at a time (k3s_upgrade_serial), after the
// server on an upgrade and before it on a downgrade (playbooks/upgrade.mts), as the owner would by hand:
//   check the move (never newer than the server); kubectl drain; the install script with K3S_URL and the token
//   (or a restart when the release is installed already); wait until the server reports it Ready at the target;
//   kubectl uncordon (only when an upgrade or update drained it)
// A failure says where every node stands and how to go on (lib/k3s-upgrade-run.ts).

import { checkClusterToken, k3sInstallFact, nodeIfAnswering, nodeName, nodeOnServer, serverHandle } from '../lib/k3s.ts'
import { agentInstallSpec, runInstaller } from '../lib/k3s-install.ts'
import { agentSkewRefusal, type Move, moveOf, parseK3sVersion, versionRefusal } from '../lib/k3s-upgrade.ts'
import { kubeGet } from '../lib/kube.ts'
import { type Role, runKey, type StepContext } from '../lib/role.ts'
import { DRAINED_MARK, markAndDrain, uncordonMarked, podsToEvict, podsWithNowhereElse } from '../lib/scheduling.ts'
import { waitUntil } from '../lib/steps.ts'
import {
  moveWords,
  reportingWhereItStopped,
  restartUnit,
  SERVER_AT,
  serverNodeName,
  targetOf,
  UPGRADE_VARS,
  upgradeVars,
} from '../lib/k3s-upgrade-run.ts'

/** This agent's move in this run, as its first step found it. */
const AGENT_MOVE = runKey<{ from: string; move: Move }>('k3s upgrade move of this agent')

function agentMove(ctx: StepContext): { from: string; move: Move } | undefined {
  return ctx.state.get(AGENT_MOVE, ctx.host)
}
const moves = (ctx: StepContext) => (agentMove(ctx)?.move ?? 'none') !== 'none'

export const upgradeAgent: Role = {
  name: 'k3s-upgrade-agent',
  vars: UPGRADE_VARS,
  checkSecrets: checkClusterToken,
  steps: [
    {
      name: "Check this agent's move: versions, and never newer than the server",
      facts: () => [k3sInstallFact],
      async plan(ctx) {
        ctx.state.delete(AGENT_MOVE, ctx.host)
        const target = targetOf(ctx)
        const cur = await ctx.facts.get(k3sInstallFact)
        const name = nodeName(ctx)
        if (!cur.agentUnit)
          return {
            status: 'failed',
            message: 'no k3s agent here (no k3s-agent.service): join it with playbooks/site.mts first',
          }
        const node = await nodeOnServer(ctx)
        if (!node.exists)
          return { status: 'failed', message: `no Node ${name} in the cluster: join it with playbooks/site.mts first` }
        const from = parseK3sVersion(node.kubeletVersion ?? cur.version ?? '')
        if (!from) return { status: 'failed', message: `${name} reports no k3s version` }
        const move = moveOf(from, cur.version, target)
        if (move === 'none') return { status: 'ok', message: `${name} runs ${target.text}` }
        if (move !== 'reinstall') {
          const why = versionRefusal(name, from, target, upgradeVars(ctx).k3s_allow_downgrade)
          if (why) return { status: 'failed', message: why }
        }
        const server = await serverNodeName(ctx)
        const serverAt = ctx.state.get(SERVER_AT) ?? (await nodeOnServer(ctx, server.node)).kubeletVersion
        const serverRelease = parseK3sVersion(serverAt ?? '')
        if (!serverRelease)
          return { status: 'failed', message: `the server ${server.node} reports no k3s version: is it Ready?` }
        const skew = agentSkewRefusal(name, target, server.node, serverRelease)
        if (skew) return { status: 'failed', message: skew }
        ctx.state.set(AGENT_MOVE, { from: from.text, move }, ctx.host)
        return { status: 'ok', message: `${from.text} -> ${target.text}` }
      },
    },
    {
      name: 'Drain this agent from the server (when it moves)',
      when: moves,
      async plan(ctx) {
        const name = nodeName(ctx)
        const node = await nodeOnServer(ctx)
        if (!node.ready) return { status: 'skipped', message: `${name} is NotReady: nothing can be evicted from it` }
        const marked = node.annotations[DRAINED_MARK] !== undefined
        // Cordoned by the owner: drained all the same, but not marked, so it stays cordoned afterwards.
        const byHand = node.unschedulable && !marked
        const server = await serverHandle(ctx)
        const objects = await kubeGet(server, 'nodes,pods -A')
        const left = podsToEvict(
          objects.filter((o) => o.kind === 'Pod'),
          name,
        )
        const stuck = podsWithNowhereElse(objects, name)
        if (node.unschedulable && left.length === 0)
          return {
            status: 'ok',
            message: marked ? 'drained by an earlier run that stopped' : 'cordoned by hand, no pods left to evict',
          }
        const what = left.length ? `evict ${left.length} pod${left.length === 1 ? '' : 's'}` : 'cordon it'
        // Pinned to this node (Unbound on its DNS node, say): down until the node is back. Said, not refused.
        if (stuck.length)
          ctx.warn(
            `${stuck.length} pod${stuck.length === 1 ? '' : 's'} ${stuck.length === 1 ? 'fits' : 'fit'} no other ` +
              `node and will wait Pending until ${name} is back: ${stuck.join(', ')}`,
          )
        return {
          summary: `drain ${name} (${what})`,
          async apply() {
            return markAndDrain(server, name, {
              by: 'k3s-upgrade',
              byHand,
              marked,
              what,
              seconds: ctx.vars.k3s_drain_timeout,
              ifStopped: 'the node stays cordoned and k3s was not touched on it; the next run drains it again',
              around: (drain) => reportingWhereItStopped(ctx, drain),
            })
          },
        }
      },
    },
    {
      name: 'Install k3s_version on this agent (the same flags: K3S_URL and the token, config.yaml)',
      when: moves,
      async plan(ctx) {
        const { from, move } = agentMove(ctx)!
        const to = targetOf(ctx).text
        return {
          summary: moveWords(move, from, to, 'agent'),
          apply: () =>
            reportingWhereItStopped(ctx, async () =>
              move === 'restart' ? restartUnit(ctx, 'k3s-agent') : runInstaller(ctx, await agentInstallSpec(ctx)),
            ).then(() => moveWords(move, from, to, 'agent', true)),
        }
      },
    },
    {
      // The Node may still show the Ready of the old k3s for a few seconds: only the new release's kubelet
      // reports the new kubeletVersion, and the boot must be this one.
      name: 'Wait until the server reports this agent Ready at k3s_version',
      onlyForReal: 'it waits for the k3s the step above installs',
      when: moves,
      async plan(ctx) {
        const target = targetOf(ctx).text
        const name = nodeName(ctx)
        const boot = (await ctx.must('cat /proc/sys/kernel/random/boot_id', { what: 'read the boot id' })).stdout.trim()
        const { seconds } = await reportingWhereItStopped(ctx, () =>
          waitUntil(
            ctx,
            {
              timeoutSec: ctx.vars.k3s_start_timeout,
              intervalMs: 500,
              what: `node ${name} Ready at ${target} (k3s_start_timeout)`,
            },
            async () => {
              const n = await nodeIfAnswering(ctx)
              const done =
                n?.ready === true && n.kubeletVersion === target && (n.bootID === undefined || n.bootID === boot)
              const waitingFor =
                n === undefined
                  ? 'the API server does not answer'
                  : !n.exists
                    ? `${name} is not registered`
                    : !n.ready
                      ? `${name} is NotReady`
                      : n.kubeletVersion !== target
                        ? `${name} still reports ${n.kubeletVersion ?? 'no version'}`
                        : 'the server still shows another boot'
              return { done, value: null, waitingFor }
            },
          ),
        )
        return { status: 'ok', message: `Ready at ${target} after ${seconds.toFixed(1)}s` }
      },
    },
    {
      name: 'Uncordon this agent (only when an upgrade or update drained it)',
      async plan(ctx) {
        const name = nodeName(ctx)
        const target = targetOf(ctx).text
        const node = await nodeOnServer(ctx)
        if (!node.exists || node.annotations[DRAINED_MARK] === undefined)
          return { status: 'ok', message: node.unschedulable ? 'cordoned by hand: left so' : 'schedulable' }
        if (!node.ready || node.kubeletVersion !== target)
          return {
            status: 'failed',
            message:
              `${name} is ${node.ready ? `Ready at ${node.kubeletVersion}` : 'NotReady'}, ` +
              `not Ready at ${target}: left cordoned`,
          }
        return {
          summary: `uncordon ${name}`,
          apply: async () => uncordonMarked(await serverHandle(ctx), name),
        }
      },
    },
  ],
}
