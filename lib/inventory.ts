// Inventory: Ansible-shaped YAML (all / children / hosts / vars), validated with positions so
// every error reads "file:line:col: what was wrong, what was expected", and every error of a file is
// reported at once. Ansible's conventions are taken as they are: top-level keys other than "all" are groups
// (children of "all", which may be left out), and ansible_host / ansible_user / ansible_port /
// ansible_ssh_private_key_file / ansible_become_password name this tool's variables.

import { existsSync, readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, isAbsolute, resolve } from 'node:path'
import { isAlias, isMap, isNode, isScalar, isSeq, LineCounter, parseDocument, type Pair, type YAMLMap } from 'yaml'
import { parseAppChecks } from './appchecks.ts'
import { ProvisionError } from './errors.ts'
import { expandHostName, expandIdentityFile, SshConfig, type Found } from './sshconfig.ts'
import { isDnsSubdomain, isRemoteBackupDir } from './grammar.ts'
import {
  BUILTIN_DEFAULTS,
  checkSpecAll,
  checkVar,
  isSecretName,
  knownVar,
  specOf,
  suggestVar,
  synonymNote,
  unknownVarHint,
  type DeclaredVars,
  type VarName,
  type VarProblem,
  type Vars,
} from './vars.ts'

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
/**
 * Controller-side paths, taken relative to the inventory (a role's own path variables are the hosts' and kept as
 * written).
 */
const PATH_VARS: ReadonlySet<string> = new Set([
  'ssh_key_file',
  'known_hosts_file',
  'secrets_file',
  'kubeconfig_path',
  'k3s_backup_dir',
] satisfies VarName[])
/** A controller path to expand; k3s_backup_dir may instead be user@host:/path on a NAS, kept as written. */
const isControllerPath = (name: string, value: unknown): boolean =>
  PATH_VARS.has(name) && !(name === 'k3s_backup_dir' && isRemoteBackupDir(String(value)))
/** ssh_config_file: read when it is not set, and only when it exists. */
export const DEFAULT_SSH_CONFIG = '~/.ssh/config'
/** Deeper than this, a group tree is a mistake (or an alias loop). */
const MAX_GROUP_DEPTH = 32
/** An inventory key: letters, digits, ".", "_", "-", starting with a letter or digit. */
const HOST_KEY = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

type Place = { line: number; col: number }

interface Layer {
  vars: VarLayer
  /** Variables that were set here but refused: later checks do not pile more errors on them. */
  failed: Set<string>
}

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
    throw new ProvisionError('inventory', `cannot read inventory: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, {
      place: { file },
      hint: 'pass the inventory with -i FILE (default inventory/hosts.yaml)',
    })
  }
  return parseInventory(text, file, opts)
}

export function parseInventory(text: string, file: string, opts: InventoryOptions = {}): Inventory {
  const declared = opts.declared ?? {}
  const lines = new LineCounter()
  // merge: YAML 1.1's `<<: *anchor` (Ansible inventories use it for hosts alike), expanded by pairsOf below.
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false, merge: true })
  const problems: ProvisionError[] = []
  const at = (node: unknown): Place => {
    const range = isNode(node) ? node.range : isPairLike(node) && isNode(node.key) ? node.key.range : undefined
    return range ? lines.linePos(range[0]) : { line: 1, col: 1 }
  }
  const reportAt = (message: string, place: Place, hint?: string): void => {
    problems.push(new ProvisionError('inventory', message, { place: { file, line: place.line, col: place.col }, hint }))
  }
  const report = (message: string, node?: unknown, hint?: string): void => reportAt(message, at(node), hint)
  const finish = (): void => {
    if (problems.length === 0) return
    const sorted = problems
      .map((p, i) => ({ p, i }))
      .sort(
        (a, b) =>
          (a.p.place.line ?? 0) - (b.p.place.line ?? 0) || (a.p.place.col ?? 0) - (b.p.place.col ?? 0) || a.i - b.i,
      )
      .map((x) => x.p)
    throw ProvisionError.all(sorted, `${file}: ${sorted.length} problems`, 'inventory')
  }

  // YAML syntax: nothing below can be trusted, so these are reported alone.
  if (doc.errors.length > 0) {
    for (const err of doc.errors) {
      const pos = err.linePos?.[0] ?? lines.linePos(err.pos[0])
      const msg =
        err.code === 'DUPLICATE_KEY'
          ? 'duplicate key (a host or group is defined twice in the same map)'
          : err.message.split('\n')[0]
      reportAt(msg, pos)
    }
    finish()
  }

  /** The node an alias stands for (positions then point at the anchor's node). */
  const resolved = (node: unknown): unknown => (isAlias(node) ? node.resolve(doc) : node)
  const deref = (node: unknown): unknown => {
    const target = resolved(node)
    if (isAlias(node) && target === undefined)
      report(`unresolved alias *${node.source}: no anchor &${node.source} before it`, node)
    return target
  }
  /**
   * A map's pairs with its merge keys expanded (`<<: *anchor` or `<<: [*a, *b]`): the map's own keys win, then
   * the merged maps' in order, as YAML 1.1 says. Merged pairs keep their own positions (the anchor's lines).
   */
  const pairsOf = (map: YAMLMap, depth = 0): Pair[] => {
    const own = map.items.filter((p) => !isMergeKey(p))
    const seen = new Set(own.map(keyOf))
    const merged: Pair[] = []
    for (const p of map.items.filter(isMergeKey)) {
      const target = deref(p.value)
      for (const source of isSeq(target) ? target.items : [p.value]) {
        const m = deref(source)
        if (!isMap(m) || depth > 16) {
          report('"<<" merges a map: an alias of one (<<: *name) or a list of them', p)
          continue
        }
        for (const q of pairsOf(m, depth + 1)) {
          const k = keyOf(q)
          if (seen.has(k)) continue
          seen.add(k)
          merged.push(q)
        }
      }
    }
    return [...own, ...merged]
  }
  /** A YAML value as plain data; aliases resolved (bounded), problems reported at the node. */
  const jsOf = (node: unknown, where: string): { ok: true; value: unknown } | { ok: false } => {
    if (!isNode(node)) return { ok: true, value: node ?? null }
    try {
      return { ok: true, value: node.toJS(doc, { maxAliasCount: 1000 }) }
    } catch (e) {
      report(`${where}: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`, node)
      return { ok: false }
    }
  }

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

  const readVars = (raw: unknown, where: string, isHost: boolean): Layer => {
    const layer: Layer = { vars: {}, failed: new Set() }
    const node = deref(raw)
    if (isNull(node)) return layer
    if (!isMap(node)) {
      report(`${where}: expected a map of variables`, node)
      return layer
    }
    const setBy = new Map<string, string>()
    for (const pair of pairsOf(node)) {
      const key = keyOf(pair)
      if (key === undefined) {
        report(`${where}: expected a variable name here`, pair)
        continue
      }
      const name = knownVar(key, declared)
      const spec = name === undefined ? undefined : specOf(name, declared)
      if (name === undefined || spec === undefined) {
        report(
          `unknown variable "${key}" in ${where}`,
          pair,
          unknownVarHint(key, declared) ?? `known variables: see README "Inventory variables"`,
        )
        // A misspelt name is most likely the variable it is close to: no "has no address" on top of "adress".
        const meant = knownVar(suggestVar(key, declared) ?? '', declared)
        if (meant) layer.failed.add(meant)
        continue
      }
      const label = key === name ? `"${key}"` : `"${key}" (${name})`
      const other = setBy.get(name)
      if (other !== undefined) {
        report(
          `"${key}" and "${other}" both set ${name} in ${where}`,
          pair,
          `keep one of them (${key === name ? other : key} is Ansible's name for ${name})`,
        )
        layer.failed.add(name)
        continue
      }
      setBy.set(name, key)
      if (spec.hostOnly && !isHost) {
        report(`${label} is per host; it cannot be set in ${where}`, pair)
        layer.failed.add(name)
        continue
      }
      const js = jsOf(pair.value, key)
      if (!js.ok) {
        layer.failed.add(name)
        continue
      }
      const checked = checkSpecAll(spec, js.value)
      if (checked.problems.length > 0) {
        layer.failed.add(name)
        const hint =
          synonymNote(key) ??
          (typeof js.value === 'string' && js.value.includes('{{')
            ? 'templates ("{{ ... }}") are not expanded here: write the value itself'
            : undefined)
        for (const p of checked.problems) report(`${key}: ${p.message}`, problemNode(pair, p), hint)
        continue
      }
      layer.vars[name] = isControllerPath(name, checked.value)
        ? expandPath(String(checked.value), baseDir)
        : checked.value
      const value = resolved(pair.value)
      // Each app check as the apps role will read it, so a bad entry is named at its line, before any host.
      if (name === 'app_checks' && isSeq(value))
        value.items.forEach((item, i) => {
          try {
            parseAppChecks([isNode(item) ? item.toJS(doc, { maxAliasCount: 1000 }) : item], {
              timeoutSec: 5,
              defaultServer: 'server',
            })
          } catch (e) {
            if (e instanceof ProvisionError)
              report(e.message.replace(/^app_checks\[0\]/, `app_checks[${i}]`), item, e.hint)
          }
        })
      // Where each placement names a node, to check once every host's node name is known.
      if (name === 'placement' && isMap(value))
        for (const entry of value.items) {
          const workload = keyOf(entry)
          const target = resolved(entry.value)
          if (workload !== undefined && isScalar(target) && typeof target.value === 'string')
            placements.push({ workload, node: target.value, at: at(target) })
        }
    }
    return layer
  }
  const placements: { workload: string; node: string; at: { line: number; col: number } }[] = []

  /** The node a variable's problem is in: the list item, the map key or value, else the value. */
  const problemNode = (pair: Pair, p: VarProblem): unknown => {
    const value = resolved(pair.value) ?? pair
    if (p.index !== undefined && isSeq(value)) return value.items[p.index] ?? value
    if (p.key !== undefined && isMap(value)) {
      const entry = value.items.find((e) => keyOf(e) === p.key)
      if (entry) return p.inKey ? entry : (entry.value ?? entry)
    }
    return value
  }

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

/** A host's Kubernetes node name: its hostname var (from -e first), else its inventory name. */
export function nodeNameOf(host: InventoryHost, extra: VarLayer = {}): string {
  return nodeNameFrom({ hostname: extra.hostname ?? host.vars.hostname }, host.name)
}

/** The node-name rule itself, for a host's final variables (a step's ctx.vars): hostname, else the inventory name. */
export function nodeNameFrom(vars: { hostname?: unknown }, hostName: string): string {
  return typeof vars.hostname === 'string' ? vars.hostname : hostName
}

/**
 * The final values of the hosts (after -e) checked across hosts, before any connection: node names that are
 * RFC 1123 subdomains, no two hosts with one address and port, no two with one node name. Every problem at once;
 * one caused by -e names the flag. `only`: the hosts the run takes (--limit), default all.
 */
export function checkHosts(inv: Inventory, extra: VarLayer, only?: Iterable<string>): void {
  const names = only ? [...only].filter((n) => inv.hosts.has(n)) : [...inv.hosts.keys()]
  const problems = [...hostProblems(inv, extra, names, {}), ...clashesOutsideLimit(inv, extra, names)]
  if (problems.length === 0) return
  const kind = problems.every((p) => p.kind === 'usage') ? 'usage' : 'inventory'
  throw ProvisionError.all(
    problems,
    `${problems.length} problems with the hosts${Object.keys(extra).length ? ' (with -e)' : ''}`,
    kind,
  )
}

/**
 * A host the run takes that -e would give the node name or the address of a host it does not take (--limit):
 * the run would log into that other machine as this host, or change that other Node.
 */
function clashesOutsideLimit(inv: Inventory, extra: VarLayer, names: readonly string[]): ProvisionError[] {
  const others = [...inv.hosts.values()].filter((h) => !names.includes(h.name))
  const problems: ProvisionError[] = []
  const addrOf = (h: InventoryHost, e: VarLayer) => `${String(hostAddress(h, e))}:${String(hostPort(h, e))}`
  for (const n of names) {
    const h = inv.hosts.get(n)!
    if (extra.hostname !== undefined) {
      const node = nodeNameOf(h, extra)
      const other = others.find((o) => nodeNameOf(o) === node)
      if (other)
        problems.push(
          new ProvisionError(
            'usage',
            `${flagOf(extra, 'hostname')}: host "${n}" would be the node "${node}", ` +
              `which is host "${other.name}" of the inventory`,
            {
              hint: "a node name is one host's: give this host a name no other host has",
            },
          ),
        )
    }
    if (extra.address !== undefined || extra.ssh_port !== undefined) {
      const other = others.find((o) => addrOf(o, {}) === addrOf(h, extra))
      if (other) {
        const flags = (['address', 'ssh_port'] as const)
          .filter((k) => extra[k] !== undefined)
          .map((k) => flagOf(extra, k))
        const reachedAt = addrOf(h, extra).replace(/:(\d+)$/, ' port $1')
        problems.push(
          new ProvisionError(
            'usage',
            `${flags.join(' ')}: host "${n}" would be reached at ${reachedAt}, ` +
              `which is host "${other.name}" of the inventory`,
            {
              hint: 'the run would log into that machine as this host: give the address this host really has',
            },
          ),
        )
      }
    }
  }
  return problems
}

/** The checks across hosts, shared by parseInventory (no -e) and checkHosts. */
function hostProblems(
  inv: Inventory,
  extra: VarLayer,
  names: readonly string[],
  skip: { skipAddress?: ReadonlySet<string>; skipNode?: ReadonlySet<string> },
): ProvisionError[] {
  const problems: ProvisionError[] = []
  const atHost = (h: InventoryHost, message: string, hint?: string): void => {
    problems.push(
      new ProvisionError('inventory', message, { place: { file: inv.file, line: h.line, col: h.col }, hint }),
    )
  }
  /** A problem -e caused: named by the flags as written; `hint` gets the flags' names ("-e ansible_host"). */
  const byFlag = (vars: VarName[], message: string, hint: (flagNames: string) => string): void => {
    const flags = vars.filter((n) => extra[n] !== undefined).map((n) => flagOf(extra, n))
    const flagNames = flags.map((f) => f.slice(0, f.indexOf('=') < 0 ? undefined : f.indexOf('='))).join(' and ')
    problems.push(new ProvisionError('usage', `${flags.join(' ')}: ${message}`, { hint: hint(flagNames) }))
  }
  const list = (hs: string[]): string => {
    const q = hs.map((h) => `"${h}"`)
    return q.length <= 2 ? q.join(' and ') : `${q.slice(0, -1).join(', ')} and ${q[q.length - 1]}`
  }
  const hosts = names.map((n) => inv.hosts.get(n)!).filter(Boolean)

  // Node names: RFC 1123 subdomains.
  for (const h of hosts) {
    if (skip.skipNode?.has(h.name)) continue
    const node = nodeNameOf(h, extra)
    if (isDnsSubdomain(node)) continue
    const grammar =
      'an RFC 1123 subdomain (lowercase letters, digits, "-" and ".", ' +
      'each dot-separated part 1-63 characters starting and ending with a letter or digit, at most 253 in all)'
    if (extra.hostname !== undefined) {
      const message = `the node name must be ${grammar}`
      if (!problems.some((p) => p.message.endsWith(message)))
        byFlag(['hostname'], message, () => 'a node name is lowercase: letters, digits, "-" and "."')
    } else if (h.vars.hostname !== undefined)
      atHost(h, `host "${h.name}": hostname ${JSON.stringify(node)} is its Kubernetes node name and must be ${grammar}`)
    else {
      const better = suggestNodeName(h.name)
      atHost(
        h,
        `host "${h.name}": its name is its Kubernetes node name and must be ${grammar}`,
        better
          ? `rename the host (e.g. "${better}"), or keep the name and set hostname: ${better}`
          : 'rename the host, or set hostname: under it',
      )
    }
  }

  // One node name, one host: two hosts with one name would be one Node, each overwriting the other.
  const nodeExtra = extra.hostname !== undefined
  const byNode = new Map<string, InventoryHost[]>()
  for (const h of hosts) {
    if (skip.skipNode?.has(h.name)) continue
    const node = nodeNameOf(h, extra)
    byNode.set(node, [...(byNode.get(node) ?? []), h])
  }
  for (const [node, hs] of byNode) {
    if (hs.length < 2) continue
    if (nodeExtra)
      byFlag(
        ['hostname'],
        `hosts ${list(hs.map((h) => h.name))} would all be the node "${node}"`,
        (f) => `${f} sets the node name of every host the run takes: use it with --limit to one host`,
      )
    else
      for (const h of hs.slice(1))
        atHost(
          h,
          `hosts "${hs[0].name}" and "${h.name}" have the same node name "${node}"`,
          'each host is one Kubernetes Node: set another hostname on one of them ' +
            '(a node name is the hostname var, else the inventory name)',
        )
  }

  // The same address twice is a copy-paste error that would make two "hosts" one machine.
  const addrExtra: VarName[] = (['address', 'ssh_port'] as const).filter((n) => extra[n] !== undefined)
  const byAddress = new Map<string, InventoryHost[]>()
  for (const h of hosts) {
    if (skip.skipAddress?.has(h.name)) continue
    const address = hostAddress(h, extra)
    if (address === undefined) {
      atHost(h, `host "${h.name}" has no address`, NO_ADDRESS_HINT)
      continue
    }
    const key = `${address}:${String(hostPort(h, extra))}`
    byAddress.set(key, [...(byAddress.get(key) ?? []), h])
  }
  for (const hs of byAddress.values()) {
    if (hs.length < 2) continue
    const address = String(hostAddress(hs[0], extra))
    const port = String(hostPort(hs[0], extra))
    if (addrExtra.length > 0)
      byFlag(
        addrExtra,
        `hosts ${list(hs.map((h) => h.name))} would all be reached at ${address} port ${port}`,
        (f) => `${f} applies to every host the run takes: use it with --limit to one host`,
      )
    else
      for (const h of hs.slice(1)) atHost(h, `hosts "${hs[0].name}" and "${h.name}" have the same address ${address}`)
  }
  return problems
}

/** A node name close to an inventory name that is not one: lowercase, other characters as "-". */
function suggestNodeName(name: string): string | undefined {
  const s = name
    .toLowerCase()
    .replace(/[^a-z0-9.-]+/g, '-')
    .split('.')
    .map((l) =>
      l
        .replace(/^-+|-+$/g, '')
        .slice(0, 63)
        .replace(/-+$/, ''),
    )
    .filter(Boolean)
    .join('.')
  return isDnsSubdomain(s) ? s : undefined
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

/** The address a host is reached at: -e, else the inventory, else its ssh config's HostName. */
export function hostAddress(host: InventoryHost, extra: VarLayer = {}): string | undefined {
  const a = extra.address ?? host.vars.address ?? host.sshConfig?.vars.address
  return a === undefined ? undefined : String(a)
}

function hostPort(host: InventoryHost, extra: VarLayer): number {
  return Number(extra.ssh_port ?? host.vars.ssh_port ?? host.sshConfig?.vars.ssh_port ?? BUILTIN_DEFAULTS.ssh_port)
}

const NO_ADDRESS_HINT =
  'add "address: <ip or name>" (or ansible_host) under the host, or a HostName for it in the ssh config'

/**
 * The owner's ssh config (ssh_config_file, relative to the inventory or, from -e, to the working directory; by
 * default ~/.ssh/config when it exists; "none": not read) applied to every host as `ssh NAME` reads it for the
 * host's inventory name: HostName, User, Port and IdentityFile give address, ssh_user, ssh_port and ssh_key_file
 * where neither the inventory nor -e sets them (a key from ssh_key_ref counts as set). Each value a host takes is
 * checked with the inventory's grammar: every problem at once, at the ssh config's file:line:col, before any host
 * is contacted. Returns the warnings (Match blocks ignored, keywords not followed), each once.
 */
export function applySshConfig(inv: Inventory, extra: VarLayer = {}): string[] {
  const problems: ProvisionError[] = []
  const warnings: string[] = []
  const notFollowed = new Map<string, { f: Found; hosts: string[] }>()
  const configs = new Map<string, SshConfig | null>()
  const invDir = dirname(resolve(inv.file))
  for (const h of inv.hosts.values()) {
    h.sshConfig = undefined
    const setting = extra.ssh_config_file ?? h.vars.ssh_config_file
    if (setting === 'none') continue
    const path =
      setting === undefined
        ? expandPath(DEFAULT_SSH_CONFIG, process.cwd())
        : expandPath(String(setting), extra.ssh_config_file !== undefined ? process.cwd() : invDir)
    // The default is read when it is there; a file the owner names must be there.
    if (setting === undefined && !existsSync(path)) continue
    let cfg = configs.get(path)
    if (cfg === undefined) {
      try {
        cfg = SshConfig.read(path)
        warnings.push(...cfg.warnings)
      } catch (e) {
        if (!(e instanceof ProvisionError)) throw e
        for (const p of e.problems)
          problems.push(
            new ProvisionError(p.kind, p.message, {
              place: p.place,
              hint: p.hint ?? 'fix the line, or set ssh_config_file: none to not read it',
            }),
          )
        cfg = null
      }
      configs.set(path, cfg)
    }
    if (!cfg) continue
    const found = cfg.lookup(h.name)
    const layer: SshConfigLayer = { vars: {}, from: {} }
    const own = (name: VarName) => extra[name] !== undefined || h.vars[name] !== undefined
    const bad = (f: Found, keyword: string, message: string) =>
      problems.push(
        new ProvisionError('inventory', `${keyword} ${JSON.stringify(f.value)} for host "${h.name}": ${message}`, {
          place: { file: f.file, line: f.line, col: f.col },
          hint: 'fix the line or give the host its own value in the inventory (or set ssh_config_file: none)',
        }),
      )
    const take = <K extends keyof SshConfigLayer['vars']>(name: K, f: Found, keyword: string, raw: unknown) => {
      const r = checkVar(name, raw)
      if (r.error !== undefined) return bad(f, keyword, r.error)
      layer.vars[name] = r.value as SshConfigLayer['vars'][K]
      layer.from[name] = `${f.file}:${f.line}`
    }
    if (found.hostName && !own('address')) {
      const x = expandHostName(found.hostName.value, h.name.toLowerCase())
      if ('error' in x) bad(found.hostName, 'HostName', x.error)
      else take('address', found.hostName, 'HostName', x.value)
    }
    if (found.user && !own('ssh_user')) take('ssh_user', found.user, 'User', found.user.value)
    if (found.port && !own('ssh_port')) {
      if (/^\d+$/.test(found.port.value)) take('ssh_port', found.port, 'Port', Number(found.port.value))
      else bad(found.port, 'Port', 'expected a port number 1-65535 (a service name is not read)')
    }
    if (found.identitiesOnly && !/^(yes|no|true|false)$/i.test(found.identitiesOnly.value))
      bad(found.identitiesOnly, 'IdentitiesOnly', 'expected yes or no')
    if (found.identityFiles.length > 0 && !own('ssh_key_file') && !own('ssh_key_ref')) {
      const tokens = {
        remoteHost: hostAddress(h, extra) ?? layer.vars.address ?? h.name.toLowerCase(),
        originalHost: h.name.toLowerCase(),
        remoteUser: String(extra.ssh_user ?? h.vars.ssh_user ?? layer.vars.ssh_user ?? BUILTIN_DEFAULTS.ssh_user),
        port: Number(extra.ssh_port ?? h.vars.ssh_port ?? layer.vars.ssh_port ?? BUILTIN_DEFAULTS.ssh_port),
      }
      // As ssh does: every IdentityFile in order, a missing file skipped; the first that exists is the key.
      for (const f of found.identityFiles) {
        const x = expandIdentityFile(f.value, tokens)
        if ('error' in x) {
          bad(f, 'IdentityFile', x.error)
          continue
        }
        const path = expandPath(x.path, process.cwd())
        const r = checkVar('ssh_key_file', path)
        if (r.error !== undefined) bad(f, 'IdentityFile', r.error)
        else if (layer.vars.ssh_key_file === undefined && existsSync(path)) {
          layer.vars.ssh_key_file = path
          layer.from.ssh_key_file = `${f.file}:${f.line}`
        }
      }
    }
    for (const f of found.ignored) {
      const id = `${f.file}:${f.line}`
      const entry = notFollowed.get(id) ?? { f, hosts: [] }
      entry.hosts.push(h.name)
      notFollowed.set(id, entry)
    }
    if (Object.keys(layer.vars).length > 0) h.sshConfig = layer
  }
  for (const [id, { f, hosts }] of notFollowed)
    warnings.push(`${id}: ${f.value} (for ${hosts.join(', ')}) is not followed: ${NOT_FOLLOWED_WHY[f.value] ?? ''}`)
  if (problems.length > 0) {
    const at = (e: ProvisionError) => [e.place.file ?? '', e.place.line ?? 0, e.place.col ?? 0] as const
    problems.sort((a, b) => {
      const [fa, la, ca] = at(a)
      const [fb, lb, cb] = at(b)
      return fa === fb ? la - lb || ca - cb : 0
    })
    throw ProvisionError.all(problems, `the ssh config: ${problems.length} problems`, 'inventory')
  }
  return warnings
}

const NOT_FOLLOWED_WHY: Readonly<Record<string, string>> = {
  ProxyJump: 'the run connects to the host directly',
  ProxyCommand: 'the run connects to the host directly',
  IdentityAgent: 'the run uses the ssh-agent at SSH_AUTH_SOCK (export SSH_AUTH_SOCK=<that socket>)',
  HostKeyAlias: 'host keys are looked up by address in known_hosts_file',
  CertificateFile: 'certificates are not offered, only keys',
  PKCS11Provider: 'keys come from files, the secrets store and the ssh-agent only',
  CanonicalizeHostname: 'Host patterns are matched against the inventory name as it is',
}

/** The -e flags as written, for the layers parseExtraVars made (messages name the flag). */
const extraFlags = new WeakMap<VarLayer, Map<string, string>>()

/** `-e key=value` as the user wrote it; a value that may be a secret is not shown. */
function flagText(key: string, raw: string, declared: DeclaredVars = {}): string {
  if (isSecretName(key, declared) && !raw.startsWith('op:')) return `-e ${key}=********`
  const shown = raw.length > 200 ? `${raw.slice(0, 200)}…` : raw
  return `-e ${key}=${/[\x00-\x1f\x7f]/.test(shown) ? JSON.stringify(shown) : shown}`
}

function flagOf(extra: VarLayer, name: VarName): string {
  const written = extraFlags.get(extra)?.get(name)
  if (written) return written
  const value = extra[name]
  return flagText(
    name,
    typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean'
      ? String(value)
      : (JSON.stringify(value) ?? ''),
  )
}

/**
 * Parse `-e key=value` pairs, validated like inventory variables (Ansible's names accepted too). Every bad flag is
 * reported at once, each naming the flag. The variables the run's roles declare are taken too (`opts.declared`).
 */
export function parseExtraVars(pairs: readonly string[], opts: VarsOptions = {}): VarLayer {
  const declared = opts.declared ?? {}
  const out: VarLayer = {}
  const flags = new Map<string, string>()
  const setBy = new Map<string, string>()
  const problems: ProvisionError[] = []
  const usage = (flag: string, message: string, hint?: string): void => {
    problems.push(new ProvisionError('usage', `${flag}: ${message}`, { hint }))
  }
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    if (eq <= 0) {
      usage(`-e ${pair}`, 'expected key=value')
      continue
    }
    const key = pair.slice(0, eq)
    const raw = pair.slice(eq + 1)
    const flag = flagText(key, raw, declared)
    const name = knownVar(key, declared)
    const spec = name === undefined ? undefined : specOf(name, declared)
    if (name === undefined || spec === undefined) {
      usage(flag, 'unknown variable', unknownVarHint(key, declared))
      continue
    }
    const other = setBy.get(name)
    if (other !== undefined && other !== key) {
      usage(flag, `${key} and ${other} both set ${name}`, 'give one of them')
      continue
    }
    setBy.set(name, key)
    let value: unknown = raw
    if (raw.startsWith('[') || raw.startsWith('{')) {
      try {
        value = JSON.parse(raw)
      } catch {
        usage(flag, 'value starts like JSON but does not parse')
        continue
      }
    }
    const checked = checkSpecAll(spec, value)
    if (checked.problems.length > 0) {
      for (const p of checked.problems) usage(flag, p.message, synonymNote(key))
      continue
    }
    out[name] = isControllerPath(name, checked.value) ? expandPath(String(checked.value), process.cwd()) : checked.value
    flags.set(name, flag)
  }
  if (problems.length > 0) throw ProvisionError.all(problems, `-e: ${problems.length} problems`, 'usage')
  extraFlags.set(out, flags)
  return out
}

export function expandPath(p: string, baseDir: string): string {
  if (p === '~' || p.startsWith('~/')) return resolve(homedir(), p.slice(2))
  return isAbsolute(p) ? p : resolve(baseDir, p)
}

/** A map key as text; undefined for a missing, null or non-scalar key. */
/** `<<` parsed as YAML 1.1's merge key (the yaml library gives it a symbol for a value). */
function isMergeKey(pair: Pair): boolean {
  return isScalar(pair.key) && typeof pair.key.value === 'symbol'
}

function keyOf(pair: Pair): string | undefined {
  const k = pair.key
  if (isScalar(k)) return k.value === null || k.value === undefined ? undefined : String(k.value)
  if (k === null || k === undefined || isNode(k)) return undefined
  return String(k)
}

function isNull(node: unknown): boolean {
  return node === null || node === undefined || (isScalar(node) && node.value === null)
}

function isPairLike(x: unknown): x is Pair {
  return typeof x === 'object' && x !== null && 'key' in x && 'value' in x
}
