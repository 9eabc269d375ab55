// k3s-retire: take an agent out of the cluster for good (a Pi being retired or replaced by another), the way
// it is done by hand: cordon and drain it so its pods move while it still runs, stop and uninstall k3s-agent on
// it so it cannot register again, then delete its Node (k3s drops the node-password secret with it).
// A node that is already NotReady (the Pi is off or dead) is not drained: nothing on it can confirm an eviction,
// and kubectl drain would wait for pods that never go. Deleting its Node lets its pods start elsewhere.

import { ProvisionError } from '../lib/errors.ts'
import { runKey, type Role } from '../lib/role.ts'
import { bounded, quote } from '../lib/shell.ts'
import { agrees, counted } from '../lib/words.ts'
import { drainNode, podsToEvict, podsWithNowhereElse } from '../lib/scheduling.ts'
import { isReady, kubectl, kubeFact, kubeObjects } from '../lib/kube.ts'
import { k3sInstallFact, nodeName } from '../lib/k3s.ts'

const AGENT_UNINSTALL = '/usr/local/bin/k3s-agent-uninstall.sh'
/** Set by the uninstall role for a node, read when its Node is deleted: was the host itself cleaned up? */
const UNINSTALLED = runKey<boolean>('k3s-agent uninstalled')

const nodeFact = (node: string) => kubeFact('k3s-retire', 'node', node)
/** One read for the drain decision: every node and pod (a homelab's cluster is small). */
const nodesAndPodsFact = kubeFact('k3s-retire', 'nodes,pods -A')

function list(names: readonly string[]): string {
  return names.length <= 5 ? names.join(', ') : `${names.slice(0, 5).join(', ')} and ${names.length - 5} more`
}

/** Run on the k3s server: cordon the node and evict its pods. */
export function drainNodeRole(node: string): Role {
  return {
    name: 'k3s-retire',
    steps: [
      {
        name: `Cordon ${node} and drain its pods (DaemonSet pods stay)`,
        facts: () => [nodesAndPodsFact],
        async plan(ctx) {
          const read = kubeObjects(await ctx.facts.get(nodesAndPodsFact))
          const found = read.find((o) => o.kind === 'Node' && o.metadata.name === node)
          if (!found) return { status: 'ok', message: `no Node ${node} in the cluster: nothing to drain` }
          // A server's Node (the inventory may not say so, e.g. a server joined by hand): never drained away here.
          if (found.metadata.labels?.['node-role.kubernetes.io/control-plane'] === 'true')
            return { status: 'failed', message: `${node} is a k3s server (control-plane): retire removes agents only` }
          if (!isReady(found))
            return {
              status: 'skipped',
              message:
                `${node} is NotReady (the Pi is off or gone?): nothing can be evicted from it; ` +
                'its pods start elsewhere once its Node is deleted',
            }
          const evict = podsToEvict(
            read.filter((o) => o.kind === 'Pod'),
            node,
          )
          const cordoned = found.spec?.unschedulable === true
          if (cordoned && evict.length === 0)
            return { status: 'ok', message: 'cordoned, no pods left on it but DaemonSet pods' }
          const what = evict.length ? `evict ${counted(evict.length, 'pod')} (${list(evict)})` : 'nothing to evict'
          const stuck = podsWithNowhereElse(read, node)
          if (stuck.length)
            ctx.warn(
              `${counted(stuck.length, 'pod')} on ${node} ${agrees(stuck.length, 'fits', 'fit')} no other node ` +
                `and will stay Pending once evicted: ${list(stuck)} ` +
                "(their nodeSelector, affinity or the other nodes' taints): give them another node first",
            )
          return {
            summary: `cordon ${node} and ${what}`,
            async apply() {
              await drainNode(
                (script) => ctx.sh(script),
                node,
                ctx.vars.k3s_drain_timeout,
                'it stays cordoned, nothing was uninstalled',
              )
              return `cordoned ${node}; ${evict.length ? what.replace(/^evict/, 'evicted') : 'nothing to evict'}`
            },
          }
        },
      },
    ],
  }
}

/** Run on the retired host itself: stop k3s-agent and remove it, so it cannot register again. */
export const uninstallAgentRole: Role = {
  name: 'k3s-retire',
  steps: [
    {
      name: 'Stop and uninstall k3s-agent (k3s-agent-uninstall.sh)',
      facts: () => [k3sInstallFact],
      async plan(ctx) {
        const cur = await ctx.facts.get(k3sInstallFact)
        if (cur.serverUnit)
          return { status: 'failed', message: 'this host runs a k3s server: retire removes agents only' }
        const done = () => ctx.state.set(UNINSTALLED, true, nodeName(ctx))
        if (!cur.agentUnit && !cur.version) {
          done()
          return { status: 'ok', message: 'no k3s on this host' }
        }
        const missing = `k3s-agent is installed but ${AGENT_UNINSTALL} is missing: remove it by hand`
        const script = [
          `[ -x ${AGENT_UNINSTALL} ] || { echo ${quote(missing)} >&2; exit 3; }`,
          bounded(AGENT_UNINSTALL, ctx.vars.k3s_start_timeout, AGENT_UNINSTALL, 'k3s_start_timeout'),
        ].join('\n')
        return {
          summary: `run ${AGENT_UNINSTALL}`,
          commands: [{ script }],
          async apply() {
            ctx.facts.invalidate()
            const after = await ctx.facts.get(k3sInstallFact)
            if (after.agentUnit || after.version)
              throw new ProvisionError(
                'step',
                `${AGENT_UNINSTALL} ran but k3s is still there ` +
                  `(unit ${after.agentUnit ? 'present' : 'gone'}, binary ${after.version ?? 'gone'})`,
              )
            done()
            return `uninstalled k3s-agent ${cur.version ?? ''}`.trim()
          },
        }
      },
    },
  ],
}

/** Run on the k3s server, last: delete the Node object. */
export function deleteNodeRole(node: string, inInventory: boolean): Role {
  return {
    name: 'k3s-retire',
    steps: [
      {
        name: `Delete the Node ${node}`,
        facts: () => [nodeFact(node)],
        async plan(ctx) {
          const found = kubeObjects(await ctx.facts.get(nodeFact(node))).length > 0
          if (!found) return { status: 'ok', message: `no Node ${node} in the cluster` }
          return {
            summary: `delete the Node ${node}`,
            commands: [{ script: kubectl('delete node', node) }],
            async apply() {
              const done = `deleted the Node ${node} (and its node-password secret)`
              if (!inInventory)
                ctx.warn(
                  `${node} is not in the inventory, so its disk was not touched: ` +
                    'if that Pi comes back with k3s-agent on it, it joins again',
                )
              else if (!ctx.state.get(UNINSTALLED, node))
                ctx.warn(
                  `k3s-agent could not be uninstalled on ${node}: ` +
                    'if that Pi comes back, it joins again; run retire again then',
                )
              return done
            },
          }
        },
      },
    ],
  }
}
