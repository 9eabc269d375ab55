// A k3s version upgrade, planned before anything is touched: which node moves from which version to which, in
// which order, and every reason not to start. The rules are the k3s docs' (and the system-upgrade-controller's):
// one minor version at a time, the server first and an agent never newer than the server, no downgrade in place
// unless the owner asks for one, every node Ready, room on the server for the datastore snapshot taken first.
// Pure: the upgrade role (roles/k3s-upgrade.ts) feeds it what it read off the cluster; the unit tests feed it data.

import { isK3sVersion } from './grammar.ts'

export interface K3sRelease {
  major: number
  minor: number
  patch: number
  /** -rcN; undefined for a release. */
  rc?: number
  /** The +k3sN build. */
  build: number
  text: string
}

/** v1.35.0+k3s1 (or v1.35.0-rc1+k3s1) as numbers; null for anything else. */
export function parseK3sVersion(s: string): K3sRelease | null {
  if (!isK3sVersion(s)) return null
  const m = /^v(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?\+k3s(\d+)$/.exec(s)!
  return {
    major: Number(m[1]),
    minor: Number(m[2]),
    patch: Number(m[3]),
    rc: m[4] === undefined ? undefined : Number(m[4]),
    build: Number(m[5]),
    text: s,
  }
}

/** Order of two releases: major, minor, patch, then a release candidate before its release, then the k3s build. */
export function compareK3s(a: K3sRelease, b: K3sRelease): number {
  return (
    a.major - b.major ||
    a.minor - b.minor ||
    a.patch - b.patch ||
    (a.rc ?? Number.POSITIVE_INFINITY) - (b.rc ?? Number.POSITIVE_INFINITY) ||
    a.build - b.build
  )
}

export type NodeRole = 'server' | 'agent'

/** A node as the preflight found it. */
export interface NodeFound {
  /** The inventory's name of the host. */
  host: string
  /** Its Kubernetes node name. */
  node: string
  role: NodeRole
  /** The cluster has a Node of this name. */
  exists: boolean
  ready: boolean
  unschedulable: boolean
  /** What runs: the Node's status.nodeInfo.kubeletVersion. */
  running?: string
  /** What is installed: `k3s --version` on the host (null: no k3s there; undefined: not read). */
  installed?: string | null
  /** Left cordoned, with the drain mark, by a run that stopped at it: the node that run was working on. */
  drainedByRun?: boolean
  /** Why the host could not be read (unreachable, a failed command). */
  unreadable?: string
}

/** Room on the server for the snapshot taken before it is touched. */
export interface SnapshotRoom {
  /** Where the snapshot is written (its file system's free space counts). */
  dir: string
  freeBytes: number
  /** The datastore's size (state.db with its WAL). */
  datastoreBytes: number
  /** What a snapshot of it needs there. */
  neededBytes: number
}

export interface UpgradeInput {
  /** The inventory's k3s_version (or -e). */
  target: string
  /** Every host of the inventory's server and agent groups, the server first. */
  nodes: readonly NodeFound[]
  /** -e k3s_allow_downgrade=true */
  allowDowngrade: boolean
  /** Hosts this run will not touch (`--limit`): they keep the version they run. Default: none. */
  outsideRun?: readonly string[]
  disk?: SnapshotRoom
  /** Why no snapshot can be taken on the server at all (no SQLite datastore, no python3), when so. */
  snapshotProblem?: string
  /** Nodes in the cluster that no host of the inventory is. */
  strangers?: readonly { node: string; running?: string; ready: boolean }[]
}

/**
 * What happens to a node: a newer release installed, an older one (downgrade), only a restart (the target is
 * installed but an older or newer one still runs), the target installed again (it runs, another binary is there).
 */
export type Move = 'upgrade' | 'downgrade' | 'restart' | 'reinstall' | 'none'

export interface PlannedNode {
  host: string
  node: string
  role: NodeRole
  from: string
  to: string
  move: Move
}

export interface UpgradePlan {
  target: string
  /** Every node in the order the run takes them; nodes at the target are in it with move "none". */
  order: PlannedNode[]
  /** Why the upgrade must not start; empty when it may. */
  refusals: string[]
  warnings: string[]
  /** The server moves, so its datastore is snapshotted first. */
  serverMoves: boolean
}

export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`
}

/** The move of one node from what runs (and what is installed) to the target. */
export function moveOf(from: K3sRelease, installed: string | null | undefined, target: K3sRelease): Move {
  const c = compareK3s(target, from)
  if (c > 0) return installed === target.text ? 'restart' : 'upgrade'
  if (c < 0) return installed === target.text ? 'restart' : 'downgrade'
  return installed !== undefined && installed !== null && installed !== target.text ? 'reinstall' : 'none'
}

/** Why moving `node` from `from` to `to` is refused by the version rules (minor skipped, downgrade), or null. */
export function versionRefusal(node: string, from: K3sRelease, to: K3sRelease, allowDowngrade: boolean): string | null {
  const step = `${node}: ${from.text} -> ${to.text}`
  if (from.major !== to.major)
    return (
      `${step} changes the major version: k3s moves one minor version at a time, ` +
      'and this tool knows no major upgrade'
    )
  const gap = Math.abs(to.minor - from.minor)
  if (gap > 1) {
    const up = to.minor > from.minor
    const skipped = Array.from({ length: gap - 1 }, (_, i) => `${from.major}.${from.minor + (up ? i + 1 : -(i + 1))}`)
    const next = `${from.major}.${from.minor + (up ? 1 : -1)}`
    return (
      `${step} skips ${skipped.join(', ')}: k3s moves one minor version at a time ` +
      `(go to a v${next} release first, then to ${to.text}); there is no --allow-skip`
    )
  }
  if (compareK3s(to, from) < 0 && !allowDowngrade)
    return (
      `${step} is a downgrade, which k3s does not support in place: the way back is the snapshot taken before ` +
      'the upgrade (README, "Upgrading k3s": restoring it); to install the older release in place anyway, ' +
      'agents first, run with -e k3s_allow_downgrade=true'
    )
  return null
}

/** Why an agent may not go to `to` while the server runs `server` (never newer than the server), or null. */
export function agentSkewRefusal(agent: string, to: K3sRelease, serverNode: string, server: K3sRelease): string | null {
  if (compareK3s(to, server) <= 0) return null
  return (
    `${agent} would run ${to.text} while the server ${serverNode} runs ${server.text}: an agent is never newer ` +
    'than the server (upgrade the server first: run playbooks/upgrade.mts without --limit, or with the server in it)'
  )
}

/** The plan, or the reasons not to start (all of them at once). Touches nothing. */
export function planUpgrade(input: UpgradeInput): UpgradePlan {
  const refusals: string[] = []
  const warnings: string[] = []
  const target = parseK3sVersion(input.target)
  const empty = { target: input.target, order: [], warnings, serverMoves: false }
  if (!target)
    return {
      ...empty,
      refusals: [
        `k3s_version "${input.target}" is not a k3s release: ` +
          'expected v<major>.<minor>.<patch>+k3s<n>, like v1.35.0+k3s1',
      ],
    }
  const outside = new Set(input.outsideRun ?? [])
  const planned: PlannedNode[] = []
  for (const n of input.nodes) {
    const who = `${n.node}${n.node === n.host ? '' : ` (host ${n.host})`}`
    if (n.unreadable) {
      refusals.push(`${who} could not be read: ${n.unreadable}`)
      continue
    }
    if (!n.exists) {
      refusals.push(
        `${who} has no Node in the cluster: every node of the inventory must be in it and Ready ` +
          '(join it with playbooks/site.mts, or take it out of the inventory)',
      )
      continue
    }
    const from = n.running === undefined ? null : parseK3sVersion(n.running)
    if (!from) {
      refusals.push(`${who} reports no k3s version the tool can read (kubeletVersion ${n.running ?? 'missing'})`)
      continue
    }
    const move = outside.has(n.host) ? 'none' : moveOf(from, n.installed, target)
    if (!n.ready) {
      if (n.drainedByRun && move !== 'none')
        warnings.push(`${who} is NotReady, cordoned by the run that stopped at it: it is installed again first`)
      else
        refusals.push(
          `${who} is NotReady: every node must be Ready before an upgrade ` +
            `(bring it back, or retire it with playbooks/retire.mts ${n.node})`,
        )
    }
    if (move !== 'none' && move !== 'reinstall') {
      const why = versionRefusal(who, from, target, input.allowDowngrade)
      if (why) refusals.push(why)
    }
    if (n.installed === null)
      refusals.push(`${who} has a Node but no k3s installed: reinstall it with playbooks/site.mts first`)
    planned.push({
      host: n.host,
      node: n.node,
      role: n.role,
      from: from.text,
      to: move === 'none' ? from.text : target.text,
      move,
    })
  }
  const server = planned.find((p) => p.role === 'server')
  if (!server && !input.nodes.some((n) => n.role === 'server'))
    refusals.push('the inventory has no host in group "server": nothing to upgrade first')
  // The server first, unless it goes down: then it goes last, so that no agent is ever newer than it.
  const serverDown = server?.move === 'downgrade' || (server?.move === 'restart' && isDown(server))
  const agents = planned.filter((p) => p.role !== 'server')
  const order = server ? (serverDown ? [...agents, server] : [server, ...agents]) : agents
  // Walk the order: an agent that moves must not end up newer than the server is at that moment.
  if (server) {
    let serverNow = parseK3sVersion(server.from)!
    for (const p of order) {
      if (p === server) serverNow = parseK3sVersion(server.to)!
      else if (p.move !== 'none') {
        const why = agentSkewRefusal(p.node, parseK3sVersion(p.to)!, server.node, serverNow)
        if (why) refusals.push(why)
      }
    }
  }
  const serverMoves = server !== undefined && server.move !== 'none'
  if (serverMoves && input.snapshotProblem)
    refusals.push(`${server!.node}: the snapshot taken before the upgrade is impossible: ${input.snapshotProblem}`)
  else if (serverMoves && input.disk) {
    const need = input.disk.neededBytes
    if (input.disk.freeBytes < need)
      refusals.push(
        `${server!.node} has ${mib(input.disk.freeBytes)} free in ${input.disk.dir}, and the snapshot of its ` +
          `${mib(input.disk.datastoreBytes)} datastore taken before the upgrade needs ${mib(need)}: ` +
          'free some space there first',
      )
  }
  for (const s of input.strangers ?? [])
    warnings.push(
      `Node ${s.node} (${s.running ?? 'no version'}${s.ready ? '' : ', NotReady'}) is in the cluster but no host ` +
        `of the inventory: it is not upgraded (retire it with playbooks/retire.mts ${s.node})`,
    )
  return { target: target.text, order, refusals, warnings, serverMoves }
}

function isDown(p: PlannedNode): boolean {
  const from = parseK3sVersion(p.from)
  const to = parseK3sVersion(p.to)
  return from !== null && to !== null && compareK3s(to, from) < 0
}

/** The plan as the owner reads it: node, from, to, in order. */
export function describePlan(plan: UpgradePlan): string {
  const moving = plan.order.filter((p) => p.move !== 'none')
  if (moving.length === 0) return `every node runs ${plan.target}: nothing to do`
  const down = plan.order.some((p) => p.move === 'downgrade')
  const head = down
    ? `downgrade to ${plan.target}, the agents one by one, then the server:`
    : `upgrade to ${plan.target}, the server first, then the agents one by one:`
  const width = Math.max(...plan.order.map((p) => `${p.node} (${p.role})`.length))
  const lines = plan.order.map((p, i) => {
    const name = `${p.node} (${p.role})`.padEnd(width)
    const what =
      p.move === 'none'
        ? `${p.from}  (at the target: left alone)`
        : p.move === 'restart'
          ? `${p.from} -> ${p.to}  (installed, not running yet: a restart)`
          : p.move === 'reinstall'
            ? `${p.from}  (another release is installed: the target installed again)`
            : `${p.from} -> ${p.to}`
    return `  ${i + 1}. ${name}  ${what}`
  })
  return [head, ...lines].join('\n')
}
