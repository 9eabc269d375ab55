#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// Rebuild one node after its SD card died and was reflashed:
//   npx zx playbooks/rebuild.mts HOST [-i inventory] [other site flags]
// The host's old key is dropped from known_hosts and its new key recorded (and shown) on first contact;
// every other host stays strict. An agent is prepared and rejoined (its stale Node deleted first).
// A server is restored from the newest usable backup in k3s_backup_dir (checked on the controller first; same
// token; before k3s first starts); with none usable the rebuild stops, and -e k3s_restore=none installs it fresh
// with the same token. Then every agent must be Ready, Flux is bootstrapped again where needed, and the apps
// checks must pass.
import type { Play } from '../lib/role.ts'
import '../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { parseCli, runCli, scriptArgs } = await import('../lib/cli.ts')
const { errorText } = await import('../lib/errors.ts')
const { quote } = await import('../lib/shell.ts')
const { expandPath } = await import('../lib/controller-paths.ts')
const { parseExtraVars } = await import('../lib/extra-vars.ts')
const { hostVars, loadInventory } = await import('../lib/inventory.ts')
const { removeKnownHost } = await import('../lib/knownhosts-write.ts')
const { apps } = await import('../roles/apps.ts')
const { fluxBootstrap } = await import('../roles/flux-bootstrap.ts')
const { k3sAgent } = await import('../roles/k3s-agent.ts')
const { k3sServer } = await import('../roles/k3s-server.ts')
const { piPrep } = await import('../roles/pi-prep.ts')

async function rebuild(argv: string[]): Promise<number> {
  const o = parseCli(argv, { positionals: true })
  const [host, ...more] = o.positionals
  if (!host || more.length > 0) {
    process.stderr.write(
      'usage: npx zx playbooks/rebuild.mts HOST [-i inventory] [flags of site.mts]  (one host at a time)\n',
    )
    return 1
  }
  const rest = o.flags
  const inv = loadInventory(o.inventoryFile)
  const h = inv.hosts.get(host)
  if (!h) {
    process.stderr.write(`ERROR: no host "${host}" in ${inv.file} (hosts: ${[...inv.hosts.keys()].join(', ')})\n`)
    return 1
  }
  const plays: Play[] = [{ name: `Prepare ${host} again`, hosts: host, roles: [piPrep] }]
  if (inv.groups.get('server')?.includes(host)) {
    plays.push({
      name: `Rebuild the k3s server ${host}`,
      hosts: host,
      roles: [{ ...k3sServer, defaults: { ...k3sServer.defaults, k3s_restore: 'latest' } }],
      anyErrorsFatal: true,
    })
    plays.push({ name: 'Check every agent is back', hosts: 'agent', roles: [k3sAgent] })
    // A restored datastore still holds Flux (bootstrap is skipped); a fresh one gets it again.
    // The flux CLI was on the old card.
    plays.push({ name: `Flux on ${host} again`, hosts: host, roles: [fluxBootstrap], anyErrorsFatal: true })
    plays.push({ name: 'Check the apps', hosts: host, roles: [apps] })
  } else {
    plays.push({ name: `Rejoin ${host}`, hosts: host, roles: [k3sAgent] })
  }
  const rerun = ['npx zx playbooks/rebuild.mts', host, ...rest].map((a, i) => (i === 0 ? a : quote(a))).join(' ')
  return runCli({ name: 'rebuild', plays, rerun }, rest, {
    trustHosts: [host],
    async before(_inv, o) {
      if (o.check) return
      // The address this run connects to, -e included (checked like the inventory's by runCli before this hook).
      const v = hostVars(h, {}, parseExtraVars(o.extra))
      const removed = await removeKnownHost(expandPath(v.known_hosts_file, process.cwd()), v.address!, v.ssh_port)
      process.stdout.write(
        `rebuild: dropped ${removed} old known_hosts entr${removed === 1 ? 'y' : 'ies'} of ${host} (${v.address}); ` +
          'its new key is recorded on first contact\n',
      )
    },
  })
}

const code = await rebuild(scriptArgs()).catch((e: unknown) => {
  process.stderr.write(`ERROR: ${errorText(e)}\n`)
  return 1
})
process.exit(code)
