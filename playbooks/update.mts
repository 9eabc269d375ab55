#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// Keep the Pis patched without taking the cluster down: Debian/Pi OS updates one node at a time.
//   npx zx playbooks/update.mts [-i inventory] [--check] [--limit HOST] [other flags]
// Agents first, one by one (drained, updated, rebooted if an update asks for it, Ready again, uncordoned); a
// failure stops the run before the next node is touched. The server last (not drained: it holds the control
// plane and the local-path volumes; its workloads pause while it reboots).
import '../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { main } = await import('../lib/cli.ts')
const { osUpdate } = await import('../roles/os-update.ts')

await main({
  name: 'update',
  plays: [
    { name: 'Update the agents, one at a time', hosts: 'agent', serial: 1, anyErrorsFatal: true, roles: [osUpdate] },
    { name: 'Update the server', hosts: 'server', anyErrorsFatal: true, roles: [osUpdate] },
  ],
})
