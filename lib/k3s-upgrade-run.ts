// What the k3s-upgrade roles share while they run (playbooks/upgrade.mts): the roles' variables, the plan and the
// server's release handed from step to step, the target release, the cluster's hosts and their Nodes, and what the
// owner is told when a node fails: where every node stands, the snapshot that is the way back, how to go on.

import * as v from 'valibot'
import { errorText, ProvisionError } from './errors.ts'
import { defineGrammar } from './grammar.ts'
import { nodeNameFrom } from './host-identity.ts'
import { k3sInstallFact, nodeName, nodeOnServer, serverHandle, serverOf } from './k3s.ts'
import { startingK3s } from './k3s-install.ts'
import { type K3sRelease, type Move, type NodeFound, parseK3sVersion, type UpgradePlan } from './k3s-upgrade.ts'
import { LAST_SNAPSHOT } from './k3s-snapshot.ts'
import { field, isReady, kubeGet, type KubeObject } from './kube.ts'
import { defineVars, type HostHandle, roleVars, runKey, type StepContext } from './role.ts'
import { DRAINED_MARK } from './scheduling.ts'
import { bounded } from './shell.ts'

// ---------------------------------------------------------------- the roles' variables

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

export const upgradeVars = (ctx: StepContext) => roleVars(ctx, UPGRADE_VARS)

/** The plan the preflight made (for the snapshot's `when` and the steps after it). */
export const UPGRADE_PLAN = runKey<UpgradePlan>('k3s upgrade plan')
/** The release the server runs once this run's server step is done (set when that step plans: --check too). */
export const SERVER_AT = runKey<string>('k3s release of the server after its step')

export function targetOf(ctx: StepContext): K3sRelease {
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
export async function serverNodeName(ctx: StepContext): Promise<{ handle: HostHandle; node: string }> {
  const handle = await serverHandle(ctx)
  return { handle, node: nodeNameFrom(handle.vars, handle.name) }
}

/** Every host of the inventory's cluster, the server first: the host, its Node name, its role. */
export async function clusterHosts(
  ctx: StepContext,
): Promise<{ host: string; node: string; role: 'server' | 'agent' }[]> {
  const server = serverOf(ctx.inventory).name
  const agents = (ctx.inventory.groups.get('agent') ?? []).filter((h) => h !== server)
  const out: { host: string; node: string; role: 'server' | 'agent' }[] = []
  for (const host of [server, ...agents]) {
    const vars = host === ctx.host ? ctx.vars : (await ctx.hostHandle(host)).vars
    out.push({ host, node: nodeNameFrom(vars, host), role: host === server ? 'server' : 'agent' })
  }
  return out
}

export const versionOf = (o: KubeObject | undefined) => field(o, 'status', 'nodeInfo', 'kubeletVersion')

// ---------------------------------------------------------------- where the cluster stands, when a node fails

/** Each node of the inventory with the release it runs, Ready or not, cordoned or not: what a stopped run left. */
export async function standings(ctx: StepContext, target: string, stoppedAt: string): Promise<string> {
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
export async function reportingWhereItStopped<T>(ctx: StepContext, run: () => Promise<T>): Promise<T> {
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

/** What the preflight reads of every node: the Node (version, Ready, cordoned) and `k3s --version` on the host. */
export async function readCluster(ctx: StepContext): Promise<{ found: NodeFound[]; strangers: NodeFound[] }> {
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

/** The snapshot this run took on the server, named for the owner: the way back. */
export async function snapshotNote(ctx: StepContext): Promise<string> {
  const server = serverOf(ctx.inventory).name
  const taken = ctx.state.get(LAST_SNAPSHOT, server)
  if (!taken) return ''
  return `the datastore as it was before: snapshot ${taken.name} (${taken.copiedTo ?? taken.onServer})`
}

/** Restart a k3s unit (the target is installed, an older release still runs), bounded, with k3s's own error. */
export function restartUnit(ctx: StepContext, unit: string): Promise<unknown> {
  return startingK3s(ctx, unit, () =>
    ctx.must(
      bounded(`systemctl restart ${unit}`, ctx.vars.k3s_start_timeout, `restarting ${unit}`, 'k3s_start_timeout'),
      {
        what: `restart ${unit}`,
      },
    ),
  )
}

/** A move as a step says it (`done`: as done, for the step's result). */
export function moveWords(move: Move, from: string, to: string, kind: 'server' | 'agent', done = false): string {
  const verb = (w: string) => (done ? `${w.replace(/e$/, '')}ed` : w)
  if (move === 'restart') return `${verb('restart')} k3s (${to} is installed, ${from} ran)`
  if (move === 'reinstall') return `${verb('install')} k3s ${to} again (${kind}; another release was installed)`
  return `${verb(move)} k3s ${from} -> ${to} (${kind}, same flags)`
}
