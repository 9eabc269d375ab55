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

import * as v from 'valibot'
import { errorText, ProvisionError } from '../lib/errors.ts'
import { defineGrammar } from '../lib/grammar.ts'
import { nodeNameFrom } from '../lib/inventory.ts'
import {
  agentInstallSpec,
  checkClusterToken,
  k3sInstallFact,
  nodeName,
  nodeOnServer,
  runInstaller,
  serverHandle,
  serverOf,
  startingK3s,
  type NodeView,
} from '../lib/k3s.ts'
import {
  agentSkewRefusal,
  compareK3s,
  describePlan,
  type K3sRelease,
  type Move,
  moveOf,
  type NodeFound,
  parseK3sVersion,
  planUpgrade,
  type UpgradePlan,
  versionRefusal,
} from '../lib/k3s-upgrade.ts'
import { SERVER_DIR } from '../lib/k3s-backup.ts'
import { LAST_SNAPSHOT, roomNeeded, roomProblem, snapshotRoomFact, snapshotSteps } from '../lib/k3s-snapshot.ts'
import { field, isReady, kubeGet, kubectl, type KubeObject } from '../lib/kube.ts'
import { defineVars, type HostHandle, type Role, roleVars, runKey, type Step, type StepContext } from '../lib/role.ts'
import { DRAINED_MARK, markAndDrain, podsToEvict, podsWithNowhereElse } from '../lib/scheduling.ts'
import { bounded } from '../lib/shell.ts'
import { waitUntil } from '../lib/steps.ts'

// ---------------------------------------------------------------- the role's variables

const Serial = defineGrammar(
  'number of agents',
  v.pipe(
    v.number('expected a whole number of agents, 1 or more'),
    v.integer('expected a whole number of agents, 1 or more'),
    v.minValue(1, 'expected a whole number of agents, 1 or more'),
    v.maxValue(1000, 'expected a whole number of agents, at most 1000'),
  ),
)

export const UPGRADE_VARS = defineVars({
  k3s_allow_downgrade: {
    type: 'bool',
    doc:
      'upgrade.mts: install an older k3s release in place, the agents first (k3s does not support it: ' +
      'the snapshot taken before the upgrade is the way back)',
    default: false,
  },
  k3s_upgrade_serial: {
    type: 'int',
    doc: 'upgrade.mts: how many agents are drained and upgraded at a time (set it under all.vars or the agent group)',
    grammar: Serial,
    default: 1,
  },
})

const upgradeVars = (ctx: StepContext) => roleVars(ctx, UPGRADE_VARS)

/** The plan the preflight made (for the snapshot's `when` and the steps after it). */
export const UPGRADE_PLAN = runKey<UpgradePlan>('k3s upgrade plan')
/** The release the server runs once this run's server step is done (set when that step plans: --check too). */
const SERVER_AT = runKey<string>('k3s release of the server after its step')
/** This agent's move in this run, as its first step found it. */
const AGENT_MOVE = runKey<{ from: string; move: Move }>('k3s upgrade move of this agent')

/** The snapshot is owed when the server will be touched (the preflight planned it), and only then. */
export function serverMovesInThisRun(ctx: StepContext): boolean {
  return ctx.state.get(UPGRADE_PLAN)?.serverMoves === true
}

function targetOf(ctx: StepContext): K3sRelease {
  const want = ctx.vars.k3s_version
  const t = want === undefined ? null : parseK3sVersion(want)
  if (!t)
    throw new ProvisionError(
      'step',
      want === undefined
        ? 'k3s_version is not set: the inventory pins the release the cluster moves to (e.g. v1.35.0+k3s1)'
        : `k3s_version "${want}" is not a k3s release (e.g. v1.35.0+k3s1)`,
      { place: { host: ctx.host } },
    )
  return t
}

/** The k3s server's Node name (its hostname var, else its inventory name). */
async function serverNodeName(ctx: StepContext): Promise<{ handle: HostHandle; node: string }> {
  const handle = await serverHandle(ctx)
  return { handle, node: nodeNameFrom(handle.vars, handle.name) }
}

/** Every host of the inventory's cluster, the server first: the host, its Node name, its role. */
async function clusterHosts(ctx: StepContext): Promise<{ host: string; node: string; role: 'server' | 'agent' }[]> {
  const server = serverOf(ctx.inventory).name
  const agents = (ctx.inventory.groups.get('agent') ?? []).filter((h) => h !== server)
  const out: { host: string; node: string; role: 'server' | 'agent' }[] = []
  for (const host of [server, ...agents]) {
    const vars = host === ctx.host ? ctx.vars : (await ctx.hostHandle(host)).vars
    out.push({ host, node: nodeNameFrom(vars, host), role: host === server ? 'server' : 'agent' })
  }
  return out
}

const versionOf = (o: KubeObject | undefined) => field(o, 'status', 'nodeInfo', 'kubeletVersion')

// ---------------------------------------------------------------- where the cluster stands, when a node fails

/** Each node of the inventory with the release it runs, Ready or not, cordoned or not: what a stopped run left. */
async function standings(ctx: StepContext, target: string, stoppedAt: string): Promise<string> {
  try {
    const { handle } = await serverNodeName(ctx)
    const nodes = new Map((await kubeGet(handle, 'nodes', 'Node')).map((o) => [o.metadata.name, o]))
    const rows = (await clusterHosts(ctx)).map(({ node }) => {
      const o = nodes.get(node)
      const version = versionOf(o) ?? (o ? 'unknown' : 'no Node')
      const state = !o
        ? ''
        : `${isReady(o) ? 'Ready' : 'NotReady'}${o.spec?.unschedulable === true ? ', cordoned' : ''}`
      const where =
        node === stoppedAt ? 'the run stopped here' : version === target ? 'at the target' : 'not touched by this run'
      return [node, version, state, `(${where})`]
    })
    const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i].length)))
    const lines = rows.map((r) => r.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c)).join('  '))
    return `where the cluster stands now:\n      ${lines.join('\n      ')}`
  } catch (e) {
    return `(could not read where the cluster stands: ${errorText(e)})`
  }
}

/**
 * Run a step's work; when it fails, the error also says where every node stands and how to go on. The nodes
 * after this one are not touched: the play stops at the first failure (any_errors_fatal).
 */
async function reportingWhereItStopped<T>(ctx: StepContext, run: () => Promise<T>): Promise<T> {
  try {
    return await run()
  } catch (e) {
    if (!(e instanceof ProvisionError) || (e.kind !== 'step' && e.kind !== 'timeout')) throw e
    const target = ctx.vars.k3s_version ?? ''
    const node = nodeName(ctx)
    const node_ = await nodeOnServer(ctx).catch(() => undefined)
    const cordoned = node_?.unschedulable ? `; ${node} stays cordoned until it runs ${target} and is Ready` : ''
    const snapshot = await snapshotNote(ctx)
    const text = `${e.message}\n    ${await standings(ctx, target, node)}${snapshot ? `\n    ${snapshot}` : ''}`
    throw new ProvisionError('step', text, {
      place: e.place,
      hint:
        `${e.hint ? `${e.hint}; then ` : ''}fix what stopped ${node} (above), then run playbooks/upgrade.mts ` +
        `again: it skips the nodes at ${target} and goes on with ${node}${cordoned}`,
      cause: e,
    })
  }
}

// ---------------------------------------------------------------- preflight (on the server)

/** What the preflight reads of every node: the Node (version, Ready, cordoned) and `k3s --version` on the host. */
async function readCluster(ctx: StepContext): Promise<{ found: NodeFound[]; strangers: NodeFound[] }> {
  const objects = await kubeGet(ctx, 'nodes', 'Node')
  const byName = new Map(objects.map((o) => [o.metadata.name, o]))
  const hosts = await clusterHosts(ctx)
  const found = await Promise.all(
    hosts.map(async ({ host, node, role }): Promise<NodeFound> => {
      const o = byName.get(node)
      const base: NodeFound = {
        host,
        node,
        role,
        exists: o !== undefined,
        ready: isReady(o),
        unschedulable: o?.spec?.unschedulable === true,
        running: versionOf(o),
        drainedByRun: o?.spec?.unschedulable === true && o.metadata.annotations?.[DRAINED_MARK] !== undefined,
      }
      try {
        const on = host === ctx.host ? ctx : await ctx.hostHandle(host)
        const r = await on.sh(k3sInstallFact.script)
        return { ...base, installed: k3sInstallFact.parse(r).version }
      } catch (e) {
        return { ...base, unreadable: errorText(e).split('\n')[0] }
      }
    }),
  )
  const named = new Set(hosts.map((h) => h.node))
  const strangers = objects
    .filter((o) => !named.has(o.metadata.name))
    .map((o) => ({
      host: o.metadata.name,
      node: o.metadata.name,
      role: 'agent' as const,
      exists: true,
      ready: isReady(o),
      unschedulable: o.spec?.unschedulable === true,
      running: versionOf(o),
    }))
  return { found, strangers }
}

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

/** The snapshot this run took on the server, named for the owner: the way back. */
async function snapshotNote(ctx: StepContext): Promise<string> {
  const server = serverOf(ctx.inventory).name
  const taken = ctx.state.get(LAST_SNAPSHOT, server)
  if (!taken) return ''
  return `the datastore as it was before: snapshot ${taken.name} (${taken.copiedTo ?? taken.onServer})`
}

// ---------------------------------------------------------------- the server

/** Restart a k3s unit (the target is installed, an older release still runs), bounded, with k3s's own error. */
function restartUnit(ctx: StepContext, unit: string): Promise<unknown> {
  return startingK3s(ctx, unit, () =>
    ctx.must(
      bounded(`systemctl restart ${unit}`, ctx.vars.k3s_start_timeout, `restarting ${unit}`, 'k3s_start_timeout'),
      {
        what: `restart ${unit}`,
      },
    ),
  )
}

function moveWords(move: Move, from: string, to: string, kind: 'server' | 'agent', done = false): string {
  const verb = (w: string) => (done ? `${w.replace(/e$/, '')}ed` : w)
  if (move === 'restart') return `${verb('restart')} k3s (${to} is installed, ${from} ran)`
  if (move === 'reinstall') return `${verb('install')} k3s ${to} again (${kind}; another release was installed)`
  return `${verb(move)} k3s ${from} -> ${to} (${kind}, same flags)`
}

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

// ---------------------------------------------------------------- the agents, one at a time

function agentMove(ctx: StepContext): { from: string; move: Move } | undefined {
  return ctx.state.get(AGENT_MOVE, ctx.host)
}
const moves = (ctx: StepContext) => (agentMove(ctx)?.move ?? 'none') !== 'none'

/** The Node, or undefined while the API does not answer. */
async function nodeIfAnswering(ctx: StepContext): Promise<NodeView | undefined> {
  try {
    return await nodeOnServer(ctx)
  } catch (e) {
    if (e instanceof ProvisionError && e.kind === 'step') return undefined
    throw e
  }
}

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
          async apply() {
            await (await serverHandle(ctx)).must(
              `${kubectl('uncordon', name)} && ${kubectl('annotate node', name, `${DRAINED_MARK}-`)}`,
              { what: `uncordon ${name}` },
            )
            return `uncordoned ${name}`
          },
        }
      },
    },
  ],
}

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
