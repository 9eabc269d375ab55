#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// Only the preparation of the Pis (cgroups, swap, packages, modules, sysctls, reboot where needed).
import '../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { main } = await import('../lib/cli.ts')
const { piPrep } = await import('../roles/pi-prep.ts')

await main({ name: 'pi-prep', plays: [{ name: 'Prepare the Pis', hosts: 'all', roles: [piPrep] }] })
