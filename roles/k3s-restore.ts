// Restoring a rebuilt server from the owner's nightly backup on the NAS ({date}/k3s/: a SQLite `.backup` of
// server/db/state.db and a tarball of server/token, tls and cred). The datastore is only usable with the token
// it was made with, and only if it is in place before k3s first starts: so this runs before the install.

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { ProvisionError } from '../lib/errors.ts'
import { registerSecret } from '../lib/mask.ts'
import type { Step } from '../lib/role.ts'
import { fileFact } from '../lib/steps.ts'
import { clusterToken } from './k3s-common.ts'

export const SERVER_DIR = '/var/lib/rancher/k3s/server'

export interface K3sBackup {
  name: string
  db: string
  tarball: string
}

/** The backup to restore: the newest {date} folder with a k3s/ datastore and tarball, or the one named. */
export function findBackup(root: string, which: string): K3sBackup | null {
  if (!existsSync(root)) throw new ProvisionError('step', `k3s_backup_dir ${root} does not exist (is the NAS share mounted?)`)
  const dated = readdirSync(root)
    .filter((d) => statSync(join(root, d)).isDirectory())
    .sort()
    .reverse()
  for (const name of which === 'latest' ? dated : [which]) {
    const dir = join(root, name, 'k3s')
    if (!existsSync(dir)) {
      if (which !== 'latest') throw new ProvisionError('step', `no backup ${name} in ${root} (found: ${dated.join(', ') || 'none'})`)
      continue
    }
    const files = readdirSync(dir)
    const db = files.find((f) => f.endsWith('.db'))
    const tarball = files.find((f) => /\.(tar\.gz|tgz)$/.test(f))
    if (db && tarball) return { name, db: join(dir, db), tarball: join(dir, tarball) }
    if (which !== 'latest') throw new ProvisionError('step', `backup ${dir} lacks a .db datastore or a .tar.gz of token/tls/cred`)
  }
  return null
}

export const restoreDatastore: Step = {
  name: 'Restore the datastore from the latest NAS backup (rebuild only, before k3s first starts)',
  when: (ctx) => Boolean(ctx.vars.k3s_restore && ctx.vars.k3s_restore !== 'none'),
  facts: () => [fileFact(`${SERVER_DIR}/db/state.db`)],
  async plan(ctx) {
    const present = await ctx.facts.get(fileFact(`${SERVER_DIR}/db/state.db`))
    if (present.exists) return { status: 'ok', message: 'the server has a datastore: nothing to restore' }
    if (!ctx.vars.k3s_backup_dir) throw new ProvisionError('step', 'k3s_restore is set but k3s_backup_dir is not: say where the backups are')
    const backup = findBackup(ctx.vars.k3s_backup_dir, ctx.vars.k3s_restore!)
    if (!backup) return { status: 'ok', message: `no backup in ${ctx.vars.k3s_backup_dir}: the server starts with a fresh datastore` }
    return {
      summary: `restore backup ${backup.name} (datastore, token, tls, cred)`,
      async apply() {
        const { token } = await clusterToken(ctx, false)
        // Both files travel on stdin (base64), land in temp names, and are renamed into place only when complete.
        await ctx.must(
          [
            'set -e',
            `mkdir -p -m 0700 ${SERVER_DIR}/db`,
            `base64 -d > ${SERVER_DIR}/db/.state.db.restore`,
            `mv -f ${SERVER_DIR}/db/.state.db.restore ${SERVER_DIR}/db/state.db`,
          ].join('\n'),
          { stdin: readFileSync(backup.db).toString('base64'), what: `restore ${backup.db}` },
        )
        await ctx.must(`set -e; base64 -d | tar -xzf - -C ${SERVER_DIR}`, { stdin: readFileSync(backup.tarball).toString('base64'), what: `restore ${backup.tarball}` })
        // The datastore is sealed with the token: a mismatch would only show as a k3s crash loop later.
        const saved = (await ctx.must(`cat ${SERVER_DIR}/token`, { what: 'read the restored token', secretOutput: true })).stdout.trim()
        registerSecret(saved)
        if (tokenSecret(saved) !== tokenSecret(token))
          throw new ProvisionError('step', `backup ${backup.name} was taken with another cluster token than the one at ${ctx.vars.k3s_token_ref}: k3s would refuse it ("bootstrap data already found and encrypted with different token")`, {
            hint: 'restore the token that was in use when the backup was taken into the secrets store, or rebuild with -e k3s_restore=none',
          })
      },
    }
  },
}

/** The secret part of a k3s token: a full token is K10<ca hash>::server:<secret>. */
export function tokenSecret(token: string): string {
  const at = token.indexOf('::server:')
  return at >= 0 ? token.slice(at + '::server:'.length) : token
}
