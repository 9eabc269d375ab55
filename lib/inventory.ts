// Inventory: Ansible-shaped YAML (all / children / hosts / vars), validated with positions so
// every error reads "file:line:col: what was wrong, what was expected".

import { readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, isAbsolute, resolve } from 'node:path'
import { isMap, isScalar, LineCounter, parseDocument, type Node as YamlNode, type Pair, type YAMLMap } from 'yaml'
import { ProvisionError } from './errors.ts'
import { BUILTIN_DEFAULTS, checkVar, isVarName, suggestVar, VAR_SPECS, type VarName, type Vars } from './vars.ts'

export type VarLayer = Partial<Record<VarName, unknown>>

export interface InventoryHost {
  name: string
  /** Groups the host belongs to, directly or through a parent group, plus "all". */
  groups: string[]
  /** Inventory variables after precedence all < parent group < child group < host. */
  vars: VarLayer
  line: number
  col: number
}

export interface Inventory {
  file: string
  hosts: Map<string, InventoryHost>
  /** group -> host names (including hosts of child groups), in inventory order. */
  groups: Map<string, string[]>
}

const GROUP_KEYS = new Set(['hosts', 'children', 'vars'])
const PATH_VARS: VarName[] = ['ssh_key_file', 'known_hosts_file', 'secrets_file', 'kubeconfig_path', 'k3s_backup_dir']

interface GroupDef {
  name: string
  parent?: string
  depth: number
  vars: VarLayer
  hostNames: string[]
  children: string[]
}

export function loadInventory(file: string): Inventory {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new ProvisionError('inventory', `cannot read inventory: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, {
      place: { file },
      hint: 'pass the inventory with -i FILE (default inventory/hosts.yaml)',
    })
  }
  return parseInventory(text, file)
}

export function parseInventory(text: string, file: string): Inventory {
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false })
  const at = (node: YamlNode | Pair | null | undefined): { line: number; col: number } => {
    const range = node && 'range' in node ? node.range : node && 'key' in node && node.key && typeof node.key === 'object' && 'range' in node.key ? (node.key as YamlNode).range : undefined
    return range ? lines.linePos(range[0]) : { line: 1, col: 1 }
  }
  const fail = (message: string, node?: YamlNode | Pair | null, hint?: string): never => {
    const { line, col } = at(node)
    throw new ProvisionError('inventory', message, { place: { file, line, col }, hint })
  }

  if (doc.errors.length > 0) {
    const err = doc.errors[0]
    const pos = err.linePos?.[0] ?? lines.linePos(err.pos[0])
    const msg = err.code === 'DUPLICATE_KEY' ? 'duplicate key (a host or group is defined twice in the same map)' : err.message.split('\n')[0]
    throw new ProvisionError('inventory', msg, { place: { file, line: pos.line, col: pos.col } })
  }
  const root = doc.contents
  if (!isMap(root)) fail('expected a map with a top-level "all:" key', root)
  const rootMap = root as YAMLMap
  const allPair = rootMap.items.find((p) => keyOf(p) === 'all')
  for (const p of rootMap.items) if (keyOf(p) !== 'all') fail(`unknown top-level key "${keyOf(p)}": everything goes under "all:"`, p)
  if (!allPair) fail('expected a top-level "all:" key', root)

  const baseDir = dirname(resolve(file))
  const groups = new Map<string, GroupDef>()
  const hostDefs = new Map<string, { vars: VarLayer; node: Pair; group: string }>()
  const hostOrder: string[] = []

  const readVars = (node: unknown, where: string, isHost: boolean): VarLayer => {
    if (node === null || node === undefined || (isScalar(node) && node.value === null)) return {}
    if (!isMap(node)) return fail(`${where}: expected a map of variables`, node as YamlNode)
    const out: VarLayer = {}
    for (const pair of node.items) {
      const key = keyOf(pair)
      if (!isVarName(key)) {
        const guess = suggestVar(key)
        fail(`unknown variable "${key}" in ${where}`, pair, guess ? `did you mean "${guess}"?` : `known variables: see README "Inventory variables"`)
        continue
      }
      if ((VAR_SPECS[key] as { hostOnly?: boolean }).hostOnly && !isHost) fail(`"${key}" is per host; it cannot be set in ${where}`, pair)
      const raw = pair.value && typeof pair.value === 'object' && 'toJSON' in pair.value ? (pair.value as YamlNode).toJSON() : (pair.value as unknown)
      const checked = checkVar(key, raw)
      if (checked.error) fail(`${key}: ${checked.error}`, (pair.value as YamlNode) ?? pair)
      out[key] = PATH_VARS.includes(key) ? expandPath(String(checked.value), baseDir) : checked.value
    }
    return out
  }

  const readGroup = (name: string, node: unknown, parent: string | undefined, depth: number, pairNode: Pair): void => {
    if (groups.has(name)) fail(`group "${name}" is defined twice`, pairNode)
    const def: GroupDef = { name, parent, depth, vars: {}, hostNames: [], children: [] }
    groups.set(name, def)
    if (node === null || node === undefined || (isScalar(node) && node.value === null)) return
    if (!isMap(node)) return fail(`group "${name}": expected a map with hosts, children or vars`, node as YamlNode)
    for (const pair of node.items) {
      const key = keyOf(pair)
      if (!GROUP_KEYS.has(key)) {
        const hint = isVarName(key) ? `variables go under "vars:" of the group` : `a group has only hosts:, children: and vars:`
        fail(`unknown key "${key}" in group "${name}"`, pair, hint)
      }
      if (key === 'vars') def.vars = readVars(pair.value, `vars of group "${name}"`, false)
      if (key === 'hosts') {
        if (pair.value === null || (isScalar(pair.value) && pair.value.value === null)) continue
        if (!isMap(pair.value)) fail(`hosts of group "${name}": expected a map of host names`, pair.value as YamlNode)
        for (const hp of (pair.value as YAMLMap).items) {
          const host = keyOf(hp)
          if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(host)) fail(`bad host name "${host}": letters, digits, ".", "_" and "-" only`, hp)
          if (groups.has(host) && host !== name) fail(`"${host}" is both a group and a host`, hp)
          const vars = readVars(hp.value, `host "${host}"`, true)
          const prev = hostDefs.get(host)
          if (prev) {
            const hasVars = Object.keys(vars).length > 0
            if (hasVars && Object.keys(prev.vars).length > 0)
              fail(`host "${host}" is defined with variables in both "${prev.group}" and "${name}"`, hp, `define a host's variables once; list it with no body in other groups`)
            if (hasVars) hostDefs.set(host, { vars, node: hp, group: name })
          } else {
            hostDefs.set(host, { vars, node: hp, group: name })
            hostOrder.push(host)
          }
          if (!def.hostNames.includes(host)) def.hostNames.push(host)
        }
      }
      if (key === 'children') {
        if (pair.value === null || (isScalar(pair.value) && pair.value.value === null)) continue
        if (!isMap(pair.value)) fail(`children of group "${name}": expected a map of group names`, pair.value as YamlNode)
        for (const cp of (pair.value as YAMLMap).items) {
          const child = keyOf(cp)
          def.children.push(child)
          readGroup(child, cp.value, name, depth + 1, cp)
        }
      }
    }
  }
  readGroup('all', allPair!.value, undefined, 0, allPair!)

  for (const host of hostOrder)
    if (groups.has(host)) fail(`"${host}" is both a group and a host`, hostDefs.get(host)!.node)

  // Every host must be reached through a group other than "all": a host in no group gets no role.
  const allDef = groups.get('all')!
  for (const host of allDef.hostNames) {
    const inGroup = [...groups.values()].some((g) => g.name !== 'all' && g.hostNames.includes(host))
    if (!inGroup) fail(`host "${host}" is in no group`, hostDefs.get(host)!.node, `list it under a group in all.children (e.g. server or agent)`)
  }

  const members = new Map<string, string[]>()
  const collect = (g: GroupDef): string[] => {
    const cached = members.get(g.name)
    if (cached) return cached
    const out = [...g.hostNames]
    for (const c of g.children) for (const h of collect(groups.get(c)!)) if (!out.includes(h)) out.push(h)
    members.set(g.name, out)
    return out
  }
  for (const g of groups.values()) collect(g)
  members.set('all', hostOrder.slice())

  const hosts = new Map<string, InventoryHost>()
  for (const name of hostOrder) {
    const def = hostDefs.get(name)!
    const hostGroups = [...groups.values()].filter((g) => members.get(g.name)!.includes(name))
    // Ansible's order: shallower groups first, then by name; the host's own vars win over all.
    hostGroups.sort((a, b) => a.depth - b.depth || a.name.localeCompare(b.name))
    const vars: VarLayer = {}
    for (const g of hostGroups) Object.assign(vars, g.vars)
    Object.assign(vars, def.vars)
    if (vars.address === undefined) fail(`host "${name}" has no address`, def.node, `add "address: <ip or name>" under the host`)
    const { line, col } = at(def.node)
    hosts.set(name, { name, groups: hostGroups.map((g) => g.name), vars, line, col })
  }

  // The same address twice is a copy-paste error that would make two "hosts" one machine.
  const byAddress = new Map<string, string>()
  for (const h of hosts.values()) {
    const addr = `${String(h.vars.address)}:${String(h.vars.ssh_port ?? 22)}`
    const other = byAddress.get(addr)
    if (other) fail(`hosts "${other}" and "${h.name}" have the same address ${String(h.vars.address)}`, hostDefs.get(h.name)!.node)
    byAddress.set(addr, h.name)
  }

  const agents = members.get('agent') ?? []
  const servers = members.get('server') ?? []
  if (agents.length > 0 && servers.length === 0)
    fail(`group "agent" has hosts but no host is in group "server"`, allPair, `agents join a server: add one host under children.server.hosts`)

  return { file, hosts, groups: members }
}

/** Final variables of a host: built-in defaults < role defaults < inventory < extra vars (-e). */
export function hostVars(host: InventoryHost, roleDefaults: Partial<Vars> = {}, extra: VarLayer = {}): Vars {
  return { ...BUILTIN_DEFAULTS, ...roleDefaults, ...(host.vars as Partial<Vars>), ...(extra as Partial<Vars>) }
}

/** Parse `-e key=value` pairs, validated like inventory variables. */
export function parseExtraVars(pairs: readonly string[]): VarLayer {
  const out: VarLayer = {}
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    if (eq <= 0) throw new ProvisionError('usage', `-e ${pair}: expected key=value`)
    const key = pair.slice(0, eq)
    const raw = pair.slice(eq + 1)
    if (!isVarName(key)) {
      const guess = suggestVar(key)
      throw new ProvisionError('usage', `-e ${key}: unknown variable`, { hint: guess ? `did you mean "${guess}"?` : undefined })
    }
    let value: unknown = raw
    if (raw.startsWith('[') || raw.startsWith('{')) {
      try {
        value = JSON.parse(raw)
      } catch {
        throw new ProvisionError('usage', `-e ${key}: value starts like JSON but does not parse`)
      }
    }
    const checked = checkVar(key, value)
    if (checked.error) throw new ProvisionError('usage', `-e ${key}: ${checked.error}`)
    out[key] = PATH_VARS.includes(key) ? expandPath(String(checked.value), process.cwd()) : checked.value
  }
  return out
}

export function expandPath(p: string, baseDir: string): string {
  if (p === '~' || p.startsWith('~/')) return resolve(homedir(), p.slice(2))
  return isAbsolute(p) ? p : resolve(baseDir, p)
}

function keyOf(pair: Pair): string {
  const k = pair.key
  if (isScalar(k)) return String(k.value)
  return String(k)
}
