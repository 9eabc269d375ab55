#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/../.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// The worked example of docs/writing-a-role.md: the owner's NAS export mounted on every node
// (roles/examples/nas-mount.ts).
//   ./playbooks/examples/nas.mts -e nas_export=nas.lan:/volume1/data [-i inventory] [--check] [other flags]
import '../../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { main } = await import('../../lib/cli.ts')
const { nasMount } = await import('../../roles/examples/nas-mount.ts')

await main({ name: 'nas', plays: [{ name: 'Mount the NAS on every node', hosts: 'all', roles: [nasMount] }] })
