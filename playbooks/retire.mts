#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// Take an agent out of the cluster for good (a Pi retired, or replaced by another):
//   npx zx playbooks/retire.mts NODE [-i inventory] [--check] [other flags]
// On the server: cordon NODE and drain its pods (skipped when it is NotReady: a dead Pi cannot confirm an
// eviction). On NODE itself, when the inventory still has it: stop and uninstall k3s-agent. On the server,
// last: delete the Node. Then remove NODE from the inventory; a later site run warns about Nodes it does not know.
import type { Play } from '../lib/role.ts'
import '../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { parseCli, runCli, scriptArgs } = await import('../lib/cli.ts')
const { errorText } = await import('../lib/errors.ts')
const { quote } = await import('../lib/shell.ts')
const { loadInventory } = await import('../lib/inventory.ts')
const { nodeNameOf } = await import('../lib/host-identity.ts')
const { isDnsSubdomain } = await import('../lib/grammar.ts')
const { deleteNodeRole, drainNodeRole, uninstallAgentRole } = await import('../roles/k3s-retire.ts')
const { serverOf } = await import('../lib/k3s.ts')

const USAGE =
  'usage: npx zx playbooks/retire.mts NODE [-i inventory] [--check] [flags of site.mts]  (one node at a time)\n'

async function retire(argv: string[]): Promise<number> {
  const o = parseCli(argv, { positionals: true })
  if (o.help) {
    process.stdout.write(USAGE)
    return runCli({ name: 'retire', plays: [] }, ['--help'])
  }
  const [arg, ...more] = o.positionals
  if (!arg || more.length > 0) {
    process.stderr.write(USAGE)
    return 1
  }
  const rest = o.flags
  const inv = loadInventory(o.inventoryFile)
  // NODE may be the inventory name or the Node name (the host's hostname var, when it differs).
  const nodeOf = (h: string) => nodeNameOf(inv.hosts.get(h)!)
  const host = inv.hosts.has(arg) ? arg : [...inv.hosts.keys()].find((h) => nodeOf(h) === arg)
  // A Node the inventory no longer names can still be removed; its name must then be one Kubernetes could have
  // given a Node, so nothing else ("-l...", a selector, a path) ever reaches kubectl, and no host is contacted.
  if (!host && !isDnsSubdomain(arg)) {
    process.stderr.write(
      `ERROR: retire.mts NODE: ${JSON.stringify(arg)} is no host of ${inv.file} ` +
        `(hosts: ${[...inv.hosts.keys()].join(', ')}) and no Kubernetes node name ` +
        '(an RFC 1123 name: lowercase letters, digits, "-" and ".")\n',
    )
    return 1
  }
  const node = host ? nodeOf(host) : arg
  const server = serverOf(inv).name
  if (host === server || (host && inv.groups.get('server')?.includes(host)) || node === nodeOf(server)) {
    process.stderr.write(
      `ERROR: ${arg} is the k3s server of ${inv.file}: retiring it would end the cluster; ` +
        `to replace its Pi, use playbooks/rebuild.mts ${host ?? server}\n`,
    )
    return 1
  }
  const inInventory = host !== undefined
  const plays: Play[] = [{ name: `Drain ${node}`, hosts: server, roles: [drainNodeRole(node)], anyErrorsFatal: true }]
  if (host) plays.push({ name: `Uninstall k3s from ${host}`, hosts: host, roles: [uninstallAgentRole] })
  else
    process.stdout.write(
      `retire: ${node} is not in ${inv.file}: only its Node is removed from the cluster; ` +
        'the Pi itself is not touched\n',
    )
  plays.push({ name: `Remove ${node} from the cluster`, hosts: server, roles: [deleteNodeRole(node, inInventory)] })
  const rerun = ['npx zx playbooks/retire.mts', arg, ...rest].map((a, i) => (i === 0 ? a : quote(a))).join(' ')
  return runCli({ name: 'retire', plays, rerun }, rest)
}

const code = await retire(scriptArgs()).catch((e: unknown) => {
  process.stderr.write(`ERROR: ${errorText(e)}\n`)
  return 1
})
process.exit(code)
