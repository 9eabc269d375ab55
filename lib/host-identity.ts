// Who a host is to the cluster and the network: its Kubernetes node name and the address it is reached at. Apart
// from inventory.ts so the checks across hosts (host-checks.ts), which inventory.ts runs, need not import it back.
import type { InventoryHost, VarLayer } from './inventory.ts'

/** A host's Kubernetes node name: its hostname var (from -e first), else its inventory name. */
export function nodeNameOf(host: InventoryHost, extra: VarLayer = {}): string {
  return nodeNameFrom({ hostname: extra.hostname ?? host.vars.hostname }, host.name)
}

/** The node-name rule itself, for a host's final variables (a step's ctx.vars): hostname, else the inventory name. */
export function nodeNameFrom(vars: { hostname?: unknown }, hostName: string): string {
  return typeof vars.hostname === 'string' ? vars.hostname : hostName
}

/** The address a host is reached at: -e, else the inventory, else its ssh config's HostName. */
export function hostAddress(host: InventoryHost, extra: VarLayer = {}): string | undefined {
  const a = extra.address ?? host.vars.address ?? host.sshConfig?.vars.address
  return a === undefined ? undefined : String(a)
}
