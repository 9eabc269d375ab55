#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// The whole cluster, in the order the owner used to do it by hand:
// prepare every Pi, install the server, then join the agents (concurrently, within --forks),
// then Flux on the server (ESO's 1Password secret first) and the apps it reconciles, checked from here;
// last, the newest k3s backup in k3s_backup_dir: recent, and restorable (--strict: a problem fails the run).
import '../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { main } = await import('../lib/cli.ts')
const { apps } = await import('../roles/apps.ts')
const { backupHealth } = await import('../roles/backup-health.ts')
const { fluxBootstrap } = await import('../roles/flux-bootstrap.ts')
const { k3sAgent } = await import('../roles/k3s-agent.ts')
const { k3sServer } = await import('../roles/k3s-server.ts')
const { piPrep } = await import('../roles/pi-prep.ts')

await main({
  name: 'site',
  plays: [
    { name: 'Prepare the Pis', hosts: 'all', roles: [piPrep] },
    { name: 'Install the k3s server', hosts: 'server', roles: [k3sServer], anyErrorsFatal: true },
    { name: 'Join the agents', hosts: 'agent', roles: [k3sAgent] },
    { name: 'Bootstrap Flux', hosts: 'server', roles: [fluxBootstrap], anyErrorsFatal: true },
    { name: 'Check the apps', hosts: 'server', roles: [apps] },
    { name: 'Check the backups', hosts: 'server', roles: [backupHealth] },
  ],
})
