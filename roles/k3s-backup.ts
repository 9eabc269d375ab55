// k3s-backup: what the owner runs before a risky change (playbooks/backup.mts): a datastore snapshot of the k3s
// server in the layout of their nightly job ({date}/k3s/state.db.gz, k3s-server-identity.tar.gz), kept on the
// server and copied to k3s_backup_dir, then (with --keep N) the tool's own older snapshots pruned, never the owner's.

import * as v from 'valibot'
import { defineGrammar } from '../lib/grammar.ts'
import { pruneStep, snapshotSteps } from '../lib/k3s-snapshot.ts'
import { defineVars, type Role, roleVars } from '../lib/role.ts'

const KEEP_TEXT = 'expected a whole number of snapshots, at least 1'
const Keep = defineGrammar(
  'snapshot count',
  v.pipe(v.number(KEEP_TEXT), v.integer(KEEP_TEXT), v.minValue(1, KEEP_TEXT), v.maxValue(9999, KEEP_TEXT)),
)

const vars = defineVars({
  backup_keep: {
    type: 'int',
    doc:
      "backup.mts --keep N: keep the N newest of the tool's own snapshots (server and k3s_backup_dir), " +
      'prune the older ones; unset: prune nothing',
    grammar: Keep,
  },
})

export const k3sBackup: Role = {
  name: 'k3s-backup',
  vars,
  steps: [...snapshotSteps({ reason: 'backup' }), pruneStep((ctx) => roleVars(ctx, vars).backup_keep)],
}
