#!/usr/bin/env -S sh -c 'r="$(dirname -- "$0")/.."; NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${TMPDIR:-/tmp}/node-compile-cache}" exec "$r/node_modules/.bin/node" "$0" "$@"'
// A k3s datastore snapshot on demand, before a risky change:
//   ./playbooks/backup.mts [--keep N] [-i inventory] [--check] [other flags]
// On the server: a SQLite online backup of state.db (integrity_check, kine table), gzip -9, and token/tls/cred,
// as the owner's nightly job lays them out ({name}/k3s/state.db.gz, k3s-server-identity.tar.gz), kept in
// /var/lib/rancher/k3s/server/pi-provision-snapshots and copied to k3s_backup_dir. The folder is named
// {date}T{time}Z-pi-provision-backup; --keep N prunes the tool's own older snapshots, never the owner's.
import '../lib/compile-cache.ts' // first: the imports below then load from Node's compile cache
const { main } = await import('../lib/cli.ts')
const { k3sBackup } = await import('../roles/k3s-backup.ts')

await main({
  name: 'backup',
  plays: [{ name: 'Snapshot the k3s datastore', hosts: 'server', roles: [k3sBackup], anyErrorsFatal: true }],
})
