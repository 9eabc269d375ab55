#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// Move the cluster to the inventory's k3s_version, the way the k3s docs do it:
//   npx zx playbooks/upgrade.mts [-i inventory] [--check] [-e k3s_version=v1.35.0+k3s1] [other flags]
// First a check that changes nothing (every node Ready, no minor version skipped, no agent newer than the server,
// no downgrade unless -e k3s_allow_downgrade=true, room on the server for a snapshot) and the plan: node, from,
// to, in order. Then a snapshot of the datastore, the server (the install script with the pinned version and the
// same flags; the API and its Node Ready at the new version), then the agents k3s_upgrade_serial at a time
// (default 1): drained, installed, Ready at the new version, uncordoned. The first node that fails stops the run;
// the error says where every node stands; the next run goes on from there and skips what is done.
import type { Play, Playbook } from '../lib/role.ts'
import '../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { parseCli, playbookVars, runCli, scriptArgs } = await import('../lib/cli.ts')
const { parseExtraVars } = await import('../lib/extra-vars.ts')
const { hostVars, loadInventory } = await import('../lib/inventory.ts')
const { roleVars } = await import('../lib/role.ts')
const { quote } = await import('../lib/shell.ts')
const { UPGRADE_VARS } = await import('../lib/k3s-upgrade-run.ts')
const { downgradeServerLast, upgradePreflight, upgradeReport, upgradeServerFirst, upgradeSnapshot } = await import(
  '../roles/k3s-upgrade.ts'
)
const { upgradeAgent } = await import('../roles/k3s-upgrade-agent.ts')

function plays(serial: number): Play[] {
  return [
    { name: 'Check the cluster and plan the move', hosts: 'server', roles: [upgradePreflight], anyErrorsFatal: true },
    { name: 'Snapshot the datastore first', hosts: 'server', roles: [upgradeSnapshot], anyErrorsFatal: true },
    { name: 'Move the server (an upgrade: first)', hosts: 'server', roles: [upgradeServerFirst], anyErrorsFatal: true },
    {
      name: 'Move the agents, one batch at a time',
      hosts: 'agent',
      serial,
      roles: [upgradeAgent],
      anyErrorsFatal: true,
    },
    {
      name: 'Move the server (a downgrade: last)',
      hosts: 'server',
      roles: [downgradeServerLast],
      anyErrorsFatal: true,
    },
    { name: 'Report what the cluster runs', hosts: 'server', roles: [upgradeReport] },
  ]
}

/**
 * k3s_upgrade_serial as the agents' variables set it (the inventory, -e): the size of the play's batches. A problem
 * with the inventory or -e is left to runCli, which reports it with its place.
 */
function agentSerial(argv: string[]): number {
  try {
    const o = parseCli(argv)
    const declared = playbookVars({ name: 'upgrade', plays: plays(1) })
    const inv = loadInventory(o.inventoryFile, { declared })
    const extra = parseExtraVars(o.extra, { declared })
    const first = inv.groups.get('agent')?.[0]
    if (!first) return 1
    return roleVars({ vars: hostVars(inv.hosts.get(first)!, {}, extra) }, UPGRADE_VARS).k3s_upgrade_serial
  } catch {
    return 1
  }
}

const argv = scriptArgs()
const pb: Playbook = {
  name: 'upgrade',
  plays: plays(agentSerial(argv)),
  // Run whole again: its check reads the cluster, and the nodes at the target are skipped.
  rerun: ['npx zx playbooks/upgrade.mts', ...argv.map(quote)].join(' '),
}
process.exit(await runCli(pb, argv))
