// backup-health: what the owner's restore-test job checks, at the end of every site run. The newest backup under
// k3s_backup_dir (a mounted share or user@host:/path over SSH) must be recent (backup_max_age, default 36h) and
// restorable: read to the controller, gunzipped and checked in a scratch directory (PRAGMA integrity_check, the kine
// table, token and tls/server-ca.crt in the identity tarball, the token the cluster's). A problem is a warning;
// with --strict it fails the run. Backups that silently stopped being written are how owners lose clusters.
//
// The nightly job's folders are what is judged when there are any; the tool's own snapshots (backup.mts, upgrades)
// do not make a dead nightly job look alive. Without any nightly folder, the newest snapshot is judged instead.

import { backupStoreFor } from '../lib/backup-store.ts'
import {
  ageText,
  checkBackup,
  isToolSnapshotName,
  localTime,
  nameTime,
  sortBackups,
  tokenSecret,
} from '../lib/k3s-backup.ts'
import { UnusableBackup } from '../lib/backup-check.ts'
import { registerSecret } from '../lib/mask.ts'
import { defineVars, type Role, roleVars, type StepContext } from '../lib/role.ts'

const vars = defineVars({
  backup_strict: {
    type: 'bool',
    doc: 'site.mts --strict: a stale, missing or unrestorable newest backup fails the run instead of warning',
    default: false,
  },
})

/** What is wrong with the backups, each a sentence; the ok message when nothing is. */
export async function backupProblems(ctx: StepContext): Promise<{ problems: string[]; ok?: string }> {
  const store = backupStoreFor(ctx)!
  const problems: string[] = []
  try {
    const folders = await store.list()
    if (folders === null)
      return { problems: [`k3s_backup_dir ${store.where} does not exist (is the NAS share mounted?)`] }
    const { candidates, unusable } = sortBackups(folders)
    const nightly = (name: string) => !isToolSnapshotName(name)
    const judged = candidates.some((c) => nightly(c.name)) || unusable.some((u) => nightly(u.name))
    const counts = (name: string) => !judged || nightly(name)
    const newest = candidates.find((c) => counts(c.name))
    const kind = judged ? 'nightly backup' : 'backup'
    if (!newest) {
      const bad = unusable.filter((u) => counts(u.name))
      return {
        problems: bad.length
          ? bad.map((u) => `${u.name} in ${store.where} looks like a backup but cannot be used: ${u.why}`)
          : [`no backup in ${store.where}: is the nightly backup job running?`],
      }
    }
    // A newer folder that cannot be a backup at all (no k3s/, no datastore) means the last nights failed.
    const newestDate = newest.when.getTime()
    for (const u of unusable)
      if (counts(u.name) && (nameTime(u.name)?.at.getTime() ?? 0) > newestDate)
        problems.push(`${u.name} in ${store.where} is newer than ${newest.name} but cannot be used: ${u.why}`)
    const age = (Date.now() - newestDate) / 1000
    const taken = `taken ${localTime(newest.when)}, ${ageText(age)} ago`
    if (age > ctx.vars.backup_max_age)
      problems.push(
        `the newest ${kind} in ${store.where} is ${newest.name} (${taken}), ` +
          `older than backup_max_age (${ageText(ctx.vars.backup_max_age)}): has the backup job stopped?`,
      )
    let checked
    try {
      checked = await checkBackup(store, newest)
    } catch (e) {
      if (!(e instanceof UnusableBackup)) throw e
      problems.push(`the newest ${kind} ${newest.name} in ${store.where} is not restorable: ${e.message}`)
      return { problems }
    }
    registerSecret(checked.identityInfo.token)
    const ref = ctx.vars.k3s_token_ref
    const cluster = ref ? await ctx.secrets.lookup(ref) : undefined
    if (cluster && tokenSecret(cluster) !== tokenSecret(checked.identityInfo.token))
      problems.push(
        `the newest ${kind} ${newest.name} in ${store.where} was taken with another cluster token ` +
          `than the one at ${ref}: a restore would refuse it`,
      )
    const newer = candidates.find((c) => !counts(c.name) && c.when.getTime() > newestDate)
    return {
      problems,
      ok:
        `newest ${kind} ${newest.name} (${taken}): ${checked.db.name} integrity ok, kine ${checked.rows} rows; ` +
        `token, tls${checked.identityInfo.hasCred ? ', cred' : ''}` +
        `${newer ? `; the tool's snapshot ${newer.name} is newer` : ''}`,
    }
  } finally {
    await store.close()
  }
}

export const backupHealth: Role = {
  name: 'backup-health',
  vars,
  steps: [
    {
      name: 'Check the newest k3s backup is recent and restorable (gunzip, integrity_check, kine, token)',
      async plan(ctx) {
        if (!ctx.vars.k3s_backup_dir)
          return { status: 'skipped', message: 'k3s_backup_dir is not set: no backups to check' }
        const { problems, ok } = await backupProblems(ctx)
        if (problems.length === 0) return { status: 'ok', message: ok }
        if (roleVars(ctx, vars).backup_strict) return { status: 'failed', message: `--strict: ${problems.join('; ')}` }
        for (const p of problems) ctx.warn(`backup check: ${p}`)
        return {
          status: 'ok',
          message: ok ?? `${problems.length} problem${problems.length === 1 ? '' : 's'}: see the warnings`,
        }
      },
    },
  ],
}
