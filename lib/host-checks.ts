// The hosts' final values checked across hosts, before any connection: node names that are RFC 1123 subdomains,
// one address and port per host, one node name per host, and -e not making a host another one outside --limit.

import { ProvisionError } from './errors.ts'
import { flagOf } from './extra-vars.ts'
import { isDnsSubdomain } from './grammar.ts'
import { hostAddress, nodeNameOf } from './host-identity.ts'
import type { Inventory, InventoryHost, VarLayer } from './inventory.ts'
import { BUILTIN_DEFAULTS, type VarName } from './vars.ts'

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
export function hostProblems(
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

function hostPort(host: InventoryHost, extra: VarLayer): number {
  return Number(extra.ssh_port ?? host.vars.ssh_port ?? host.sshConfig?.vars.ssh_port ?? BUILTIN_DEFAULTS.ssh_port)
}

const NO_ADDRESS_HINT =
  'add "address: <ip or name>" (or ansible_host) under the host, or a HostName for it in the ssh config'
