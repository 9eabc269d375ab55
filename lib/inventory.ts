// Inventory: Ansible-shaped YAML (all / children / hosts / vars), validated with positions so
// every error reads "file:line:col: what was wrong, what was expected", and every error of a file is
// reported at once. Ansible's conventions are taken as they are: top-level keys other than "all" are groups
// (children of "all", which may be left out), and ansible_host / ansible_user / ansible_port /
// ansible_ssh_private_key_file / ansible_become_password name this tool's variables.

import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { isMap, type Pair, type YAMLMap } from 'yaml'
import { errnoCode, ProvisionError } from './errors.ts'
import { hostProblems } from './host-checks.ts'
import { nodeNameOf } from './host-identity.ts'
import { readVarLayer, type Layer, type Placement } from './inventory-vars.ts'
import { isNull, keyOf, readInventoryYaml, type Place } from './inventory-yaml.ts'
import { knownVar, type DeclaredVars } from './var-names.ts'
import { BUILTIN_DEFAULTS, type VarName, type Vars } from './vars.ts'

/** Values of one place (a group's vars, a host, -e): built-in variables, and the ones the run's roles declare. */
export type VarLayer = Partial<Record<VarName, unknown>> & { [declared: string]: unknown }

/** What a run knows besides the built-in variables: the variables its roles declare (declaredVars in lib/vars.ts). */
export interface VarsOptions {
  declared?: DeclaredVars
}

/** How an inventory is loaded for a run. */
export interface InventoryOptions extends VarsOptions {
  /**
   * Addresses may come from an ssh config (applySshConfig, after -e): a host without one is then not refused
   * here but by checkHosts, once the ssh config had its say. Off by default: the inventory alone decides.
   */
  sshConfig?: boolean
}

/** The connection values an ssh config gives a host: below its inventory values, above the defaults. */
export interface SshConfigLayer {
  vars: Partial<Pick<Vars, 'address' | 'ssh_user' | 'ssh_port' | 'ssh_key_file'>>
  /** Where each value came from ("/home/me/.ssh/config:12"), for messages. */
  from: Partial<Record<'address' | 'ssh_user' | 'ssh_port' | 'ssh_key_file', string>>
}

export interface InventoryHost {
  name: string
  /** Groups the host belongs to, directly or through a parent group, plus "all". */
  groups: string[]
  /** Inventory variables after precedence all < parent group < child group < host. */
  vars: VarLayer
  line: number
  col: number
  /** What the ssh config gives this host (applySshConfig); below `vars` and -e, above the defaults. */
  sshConfig?: SshConfigLayer
}

export interface Inventory {
  file: string
  hosts: Map<string, InventoryHost>
  /** group -> host names (including hosts of child groups), in inventory order. */
  groups: Map<string, string[]>
}

const GROUP_KEYS = new Set(['hosts', 'children', 'vars'])
/** Deeper than this, a group tree is a mistake (or an alias loop). */
const MAX_GROUP_DEPTH = 32
/** An inventory key: letters, digits, ".", "_", "-", starting with a letter or digit. */
const HOST_KEY = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

interface GroupDef {
  name: string
  depth: number
  layer: Layer
  hostNames: string[]
  children: string[]
  at: Place
}

interface HostDef {
  layer: Layer
  at: Place
  group: string
}

export function loadInventory(file: string, opts: InventoryOptions = {}): Inventory {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new ProvisionError('inventory', `cannot read inventory: ${errnoCode(e) ?? String(e)}`, {
      place: { file },
      hint: 'pass the inventory with -i FILE (default inventory/hosts.yaml)',
    })
  }
  return parseInventory(text, file, opts)
}

export function parseInventory(text: string, file: string, opts: InventoryOptions = {}): Inventory {
  const declared = opts.declared ?? {}
  const y = readInventoryYaml(text, file)
  const { doc, problems, at, reportAt, report, finish, deref, pairsOf } = y

  const root = doc.contents
  if (!isMap(root) || root.items.length === 0) {
    report('expected a map with a top-level "all:" key', root)
    finish()
  }
  const rootMap = root as YAMLMap

  const baseDir = dirname(resolve(file))
  const groups = new Map<string, GroupDef>()
  const hostDefs = new Map<string, HostDef>()
  const hostOrder: string[] = []

  const placements: Placement[] = []
  const readVars = (raw: unknown, where: string, isHost: boolean): Layer =>
    readVarLayer(y, { declared, baseDir, placements }, raw, where, isHost)

  const newGroup = (name: string, depth: number, node: unknown): GroupDef => {
    const def: GroupDef = {
      name,
      depth,
      layer: { vars: {}, failed: new Set() },
      hostNames: [],
      children: [],
      at: at(node),
    }
    groups.set(name, def)
    return def
  }

  const readHosts = (def: GroupDef, raw: unknown): void => {
    const node = deref(raw)
    if (isNull(node)) return
    if (!isMap(node)) return report(`hosts of group "${def.name}": expected a map of host names`, node)
    for (const hp of pairsOf(node)) {
      const host = keyOf(hp)
      if (host === undefined) {
        report(`hosts of group "${def.name}": expected a host name here`, hp)
        continue
      }
      const layer = readVars(hp.value, `host "${host}"`, true)
      // A refused host still counts as a member of its group: no "agent without server" on top of its error.
      if (!HOST_KEY.test(host) || host.length > 253) {
        report(
          `bad host name "${host}": expected letters, digits, ".", "_" and "-", ` +
            'starting with a letter or digit (at most 253)',
          hp,
        )
        if (!def.hostNames.includes(host)) def.hostNames.push(host)
        continue
      }
      if (groups.has(host) && host !== def.name) {
        report(`"${host}" is both a group and a host`, hp)
        if (!def.hostNames.includes(host)) def.hostNames.push(host)
        continue
      }
      const prev = hostDefs.get(host)
      const hasVars = Object.keys(layer.vars).length > 0 || layer.failed.size > 0
      if (prev) {
        const prevHasVars = Object.keys(prev.layer.vars).length > 0 || prev.layer.failed.size > 0
        if (hasVars && prevHasVars)
          report(
            `host "${host}" is defined with variables in both "${prev.group}" and "${def.name}"`,
            hp,
            `define a host's variables once; list it with no body in other groups`,
          )
        else if (hasVars) hostDefs.set(host, { layer, at: at(hp), group: def.name })
      } else {
        hostDefs.set(host, { layer, at: at(hp), group: def.name })
        hostOrder.push(host)
      }
      if (!def.hostNames.includes(host)) def.hostNames.push(host)
    }
  }

  const readGroupBody = (def: GroupDef, raw: unknown): void => {
    const node = deref(raw)
    if (isNull(node)) return
    if (!isMap(node)) return report(`group "${def.name}": expected a map with hosts, children or vars`, node)
    for (const pair of pairsOf(node)) {
      const key = keyOf(pair)
      if (key === undefined || !GROUP_KEYS.has(key)) {
        const hint =
          key !== undefined && knownVar(key, declared)
            ? `variables go under "vars:" of the group`
            : `a group has only hosts:, children: and vars:`
        report(`unknown key "${key ?? ''}" in group "${def.name}"`, pair, hint)
        continue
      }
      if (key === 'vars') def.layer = readVars(pair.value, `vars of group "${def.name}"`, false)
      if (key === 'hosts') readHosts(def, pair.value)
      if (key === 'children') {
        const children = deref(pair.value)
        if (isNull(children)) continue
        if (!isMap(children)) {
          report(`children of group "${def.name}": expected a map of group names`, children)
          continue
        }
        for (const cp of children.items) readChild(def, cp)
      }
    }
  }

  const readChild = (parent: GroupDef, pair: Pair): void => {
    const name = keyOf(pair)
    if (name === undefined) return report(`children of group "${parent.name}": expected a group name here`, pair)
    if (groups.has(name)) return report(`group "${name}" is defined twice`, pair)
    if (parent.depth + 1 > MAX_GROUP_DEPTH)
      return report(`group "${name}" is nested deeper than ${MAX_GROUP_DEPTH} groups`, pair)
    const def = newGroup(name, parent.depth + 1, pair)
    parent.children.push(name)
    readGroupBody(def, pair.value)
  }

  // The top level: "all:" (optional), and any other key a group under "all", as in Ansible's YAML inventories.
  const allPair = rootMap.items.find((p) => keyOf(p) === 'all')
  const allDef = newGroup('all', 0, allPair ?? rootMap)
  for (const pair of rootMap.items) {
    const key = keyOf(pair)
    if (key === 'all') readGroupBody(allDef, pair.value)
    else if (key !== undefined && GROUP_KEYS.has(key))
      report(
        `"${key}" at the top level: the top level holds groups only ("all:" and others)`,
        pair,
        `put ${key}: under "all:" or under a group`,
      )
    else readChild(allDef, pair)
  }

  for (const host of hostOrder)
    if (groups.has(host)) reportAt(`"${host}" is both a group and a host`, hostDefs.get(host)!.at)

  // Every host must be reached through a group other than "all": a host in no group gets no role.
  for (const host of allDef.hostNames) {
    if (!hostDefs.has(host)) continue
    const inGroup = [...groups.values()].some((g) => g.name !== 'all' && g.hostNames.includes(host))
    if (!inGroup)
      reportAt(
        `host "${host}" is in no group`,
        hostDefs.get(host)!.at,
        `list it under a group in all.children (e.g. server or agent)`,
      )
  }

  const members = new Map<string, string[]>()
  const collect = (g: GroupDef): string[] => {
    const cached = members.get(g.name)
    if (cached) return cached
    const out = [...g.hostNames]
    for (const c of g.children) {
      const child = groups.get(c)
      if (child && child.depth > g.depth) for (const h of collect(child)) if (!out.includes(h)) out.push(h)
    }
    members.set(g.name, out)
    return out
  }
  for (const g of groups.values()) collect(g)
  members.set('all', hostOrder.slice())

  const hosts = new Map<string, InventoryHost>()
  /** Hosts whose address or node name were refused or missing: no duplicate checks on them. */
  const skipAddress = new Set<string>()
  const skipNode = new Set<string>()
  for (const name of hostOrder) {
    const def = hostDefs.get(name)!
    const hostGroups = [...groups.values()].filter((g) => members.get(g.name)!.includes(name))
    // Ansible's order: shallower groups first, then by name; the host's own vars win over all.
    hostGroups.sort((a, b) => a.depth - b.depth || a.name.localeCompare(b.name))
    const vars: VarLayer = {}
    const failed = new Set<string>()
    for (const layer of [...hostGroups.map((g) => g.layer), def.layer]) {
      for (const f of layer.failed) failed.add(f)
      Object.assign(vars, layer.vars)
    }
    if (vars.address === undefined) {
      skipAddress.add(name)
      // With an ssh config to come, checkHosts says it once the ssh config had its say.
      if (!failed.has('address') && !opts.sshConfig)
        reportAt(
          `host "${name}" has no address`,
          def.at,
          `add "address: <ip or name>" (or ansible_host) under the host`,
        )
    }
    if (failed.has('ssh_port')) skipAddress.add(name)
    if (failed.has('hostname')) skipNode.add(name)
    hosts.set(name, { name, groups: hostGroups.map((g) => g.name), vars, line: def.at.line, col: def.at.col })
  }

  const inv: Inventory = { file, hosts, groups: members }
  problems.push(...hostProblems(inv, {}, [...hosts.keys()], { skipAddress, skipNode }))

  // A workload pinned to a node no host of the inventory is would fail every run's apps check: said here.
  const nodeNames = new Set([...hosts.values()].map((h) => nodeNameOf(h)))
  for (const p of placements)
    if (!nodeNames.has(p.node))
      reportAt(
        `placement: "${p.workload}" -> "${p.node}": no host of the inventory is the node "${p.node}"`,
        p.at,
        `placement names the node a workload must run on: one of ${[...nodeNames].join(', ')}`,
      )

  const agents = members.get('agent') ?? []
  const servers = members.get('server') ?? []
  if (agents.length > 0 && servers.length === 0)
    reportAt(
      `group "agent" has hosts but no host is in group "server"`,
      allPair ? at(allPair) : (groups.get('agent')?.at ?? allDef.at),
      `agents join a server: add one host under children.server.hosts`,
    )

  finish()
  return inv
}

/** Final variables of a host: built-in defaults < role defaults < ssh config < inventory < extra vars (-e). */
export function hostVars(host: InventoryHost, roleDefaults: Partial<Vars> = {}, extra: VarLayer = {}): Vars {
  return {
    ...BUILTIN_DEFAULTS,
    ...roleDefaults,
    ...host.sshConfig?.vars,
    ...(host.vars as Partial<Vars>),
    ...(extra as Partial<Vars>),
  }
}
