// k3s-upgrade: moving the cluster to the inventory's k3s_version the way the k3s docs (and the
// system-upgrade-controller) do it, over SSH, as the owner would by hand:
//   check first, changing nothing: every node Ready, the versions and the skew rules, room for a snapshot
//   snapshot the datastore on the server (lib/k3s-snapshot.ts; see playbooks/upgrade.mts)
//   the server: curl -sfL get.k3s.io | INSTALL_K3S_VERSION=<target> sh -s - server   (same flags: config.yaml)
//               wait for the API and its Node Ready at <target>
//   each agent, one at a time: kubectl drain; the install script with K3S_URL and the token; Ready at <target>;
//               kubectl uncordon
// The first node that fails stops the run: the nodes after it are not touched, and the error says where every
// node stands and how to go on. A rerun skips what is at the target already. A downgrade (only with
// k3s_allow_downgrade) goes the other way round, so that no agent is ever newer than the server: the agents
// first, the server last.
// The agents' role is roles/k3s-upgrade-agent.ts; what the roles share, lib/k3s-upgrade-run.ts.

import { checkClusterToken, k3sInstallFact, nodeName, nodeOnServer } from '../lib/k3s.ts'
import { runInstaller } from '../lib/k3s-install.ts'
import { compareK3s, describePlan, moveOf, parseK3sVersion, planUpgrade, versionRefusal } from '../lib/k3s-upgrade.ts'
import { SERVER_DIR } from '../lib/k3s-backup.ts'
import { roomNeeded, roomProblem, snapshotRoomFact, snapshotSteps } from '../lib/k3s-snapshot.ts'
import { isReady, kubeGet, kubectl, type KubeObject } from '../lib/kube.ts'
import { type Role, runKey, type Step, type StepContext } from '../lib/role.ts'
import { waitUntil } from '../lib/steps.ts'
import {
  clusterHosts,
  moveWords,
  readCluster,
  reportingWhereItStopped,
  restartUnit,
  SERVER_AT,
  snapshotNote,
  standings,
  targetOf,
  UPGRADE_PLAN,
  UPGRADE_VARS,
  upgradeVars,
  versionOf,
} from '../lib/k3s-upgrade-run.ts'

/** The snapshot is owed when the server will be touched (the preflight planned it), and only then. */
export function serverMovesInThisRun(ctx: StepContext): boolean {
  return ctx.state.get(UPGRADE_PLAN)?.serverMoves === true
}

// ---------------------------------------------------------------- preflight (on the server)

const preflight: Step = {
  name: 'Check the cluster can move to k3s_version: every node Ready, versions, skew, room for a snapshot',
  facts: () => [snapshotRoomFact],
  async plan(ctx) {
    const { found, strangers } = await readCluster(ctx)
    const room = await ctx.facts.get(snapshotRoomFact)
    const problem = roomProblem(room)
    const plan = planUpgrade({
      target: ctx.vars.k3s_version ?? '(k3s_version not set)',
      nodes: found,
      allowDowngrade: upgradeVars(ctx).k3s_allow_downgrade,
      strangers,
      // Space is the planner's to judge (with the figures); anything else that rules a snapshot out is said as is.
      snapshotProblem: room.kind !== 'sqlite' || !room.python ? problem : undefined,
      disk: { dir: SERVER_DIR, freeBytes: room.freeBytes, datastoreBytes: room.dbBytes, neededBytes: roomNeeded(room) },
    })
    ctx.state.set(UPGRADE_PLAN, plan)
    for (const w of plan.warnings) ctx.warn(w)
    if (plan.refusals.length)
      return {
        status: 'failed',
        message: `the move to ${plan.target} is refused, nothing was changed:\n    - ${plan.refusals.join('\n    - ')}`,
      }
    ctx.log(describePlan(plan))
    const moving = plan.order.filter((p) => p.move !== 'none').length
    return { status: 'ok', message: moving ? `${moving} of ${plan.order.length} nodes to move` : 'nothing to do' }
  },
}

export const upgradePreflight: Role = {
  name: 'k3s-upgrade-preflight',
  vars: UPGRADE_VARS,
  steps: [preflight],
}

// ---------------------------------------------------------------- the snapshot (on the server)

/** The datastore snapshot (lib/k3s-snapshot.ts), taken only when the server will be touched. */
export const upgradeSnapshot: Role = {
  name: 'k3s-snapshot',
  steps: snapshotSteps({ reason: 'upgrade', when: serverMovesInThisRun }),
}

// ---------------------------------------------------------------- the server

/**
 * The server's install, in one of two places: first (an upgrade, before any agent) or last (a downgrade, after
 * every agent), so that no agent is ever newer than the server.
 */
function serverRole(phase: 'first' | 'last'): Role {
  const moved = runKey<boolean>(`k3s server moved (${phase})`)
  return {
    name: 'k3s-upgrade-server',
    vars: UPGRADE_VARS,
    checkSecrets: checkClusterToken,
    steps: [
      {
        name:
          phase === 'first'
            ? 'Install k3s_version on the server (first: an upgrade, before any agent)'
            : 'Install k3s_version on the server (last: a downgrade, after every agent)',
        facts: () => [k3sInstallFact],
        async plan(ctx) {
          const target = targetOf(ctx)
          const cur = await ctx.facts.get(k3sInstallFact)
          const name = nodeName(ctx)
          if (!cur.serverUnit)
            return {
              status: 'failed',
              message: 'no k3s server here (no k3s.service): install the cluster with playbooks/site.mts first',
            }
          const node = await nodeOnServer(ctx)
          const from = parseK3sVersion(node.kubeletVersion ?? cur.version ?? '')
          if (!from)
            return { status: 'failed', message: `${name} reports no k3s version (is its Node there, and Ready?)` }
          const move = moveOf(from, cur.version, target)
          const down = compareK3s(target, from) < 0
          if (move === 'none') {
            ctx.state.set(SERVER_AT, target.text)
            return { status: 'ok', message: `k3s ${target.text}` }
          }
          if (phase === 'first' && down)
            return { status: 'ok', message: `a downgrade to ${target.text}: the server goes last, after the agents` }
          if (phase === 'last' && !down) return { status: 'ok', message: 'moved first, before the agents' }
          const why =
            move === 'reinstall' ? null : versionRefusal(name, from, target, upgradeVars(ctx).k3s_allow_downgrade)
          if (why) return { status: 'failed', message: why }
          ctx.state.set(SERVER_AT, target.text)
          ctx.state.set(moved, true, ctx.host)
          return {
            summary: moveWords(move, from.text, target.text, 'server'),
            apply: async () => {
              await reportingWhereItStopped(ctx, () =>
                move === 'restart' ? restartUnit(ctx, 'k3s') : runInstaller(ctx, { kind: 'server' }),
              )
              const note = await snapshotNote(ctx)
              return `${moveWords(move, from.text, target.text, 'server', true)}${note ? `; ${note}` : ''}`
            },
          }
        },
      },
      {
        name: "Wait for the API and the server's Node Ready at k3s_version",
        onlyForReal: 'it waits for the k3s the step above installs',
        when: (ctx) => ctx.state.get(moved, ctx.host) === true,
        async plan(ctx) {
          const target = targetOf(ctx).text
          const name = nodeName(ctx)
          const { seconds } = await reportingWhereItStopped(ctx, () =>
            waitUntil(
              ctx,
              {
                timeoutSec: ctx.vars.k3s_start_timeout,
                intervalMs: 1000,
                what: `the API and node ${name} Ready at ${target} (k3s_start_timeout)`,
              },
              async () => {
                const r = await ctx.sh(kubectl('get node -o json', name))
                if (r.code !== 0)
                  return {
                    done: false,
                    value: null,
                    waitingFor: `the API does not answer yet: ${(r.stderr || r.stdout).trim().split('\n').pop() ?? ''}`,
                  }
                const n = JSON.parse(r.stdout) as KubeObject
                const ready = isReady(n)
                const at = versionOf(n)
                return {
                  done: ready && at === target,
                  value: null,
                  waitingFor: !ready ? `${name} is NotReady` : `${name} still reports ${at ?? 'no version'}`,
                }
              },
            ),
          )
          return { status: 'ok', message: `Ready at ${target} after ${seconds.toFixed(1)}s` }
        },
      },
    ],
  }
}

export const upgradeServerFirst: Role = serverRole('first')
export const downgradeServerLast: Role = serverRole('last')

// ---------------------------------------------------------------- the end: what the cluster runs now

export const upgradeReport: Role = {
  name: 'k3s-upgrade-report',
  steps: [
    {
      name: 'Report the release every node runs',
      onlyForReal: 'it reports what the run did',
      async plan(ctx) {
        const target = targetOf(ctx).text
        const nodes = new Map((await kubeGet(ctx, 'nodes', 'Node')).map((o) => [o.metadata.name, o]))
        const hosts = await clusterHosts(ctx)
        const off = hosts.filter(({ node }) => {
          const o = nodes.get(node)
          return !o || versionOf(o) !== target || !isReady(o) || o.spec?.unschedulable === true
        })
        if (off.length === 0) {
          ctx.log(`every node runs ${target}, Ready and schedulable: ${hosts.map((h) => h.node).join(', ')}`)
          return { status: 'ok', message: `every node at ${target}` }
        }
        // A run with --limit leaves nodes behind on purpose: said, with how to finish.
        ctx.log(
          `not every node runs ${target} yet (${off.map((h) => h.node).join(', ')}): run playbooks/upgrade.mts ` +
            `again without --limit to finish\n  ${await standings(ctx, target, '')}`,
        )
        return { status: 'ok', message: `${off.length} node${off.length === 1 ? '' : 's'} not at ${target} yet` }
      },
    },
  ],
}
