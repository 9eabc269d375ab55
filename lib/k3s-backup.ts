// The k3s datastore backups a rebuilt server is restored from: the owner's nightly backup on the NAS ({date}/k3s/:
// a SQLite `.backup` of server/db/state.db and a tarball of server/token, tls and cred).

import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { ProvisionError } from './errors.ts'

export const SERVER_DIR = '/var/lib/rancher/k3s/server'

export interface K3sBackup {
  name: string
  db: string
  tarball: string
}

/** The backup to restore: the newest {date} folder with a k3s/ datastore and tarball, or the one named. */
export function findBackup(root: string, which: string): K3sBackup | null {
  if (!existsSync(root))
    throw new ProvisionError('step', `k3s_backup_dir ${root} does not exist (is the NAS share mounted?)`)
  const dated = readdirSync(root)
    .filter((d) => statSync(join(root, d)).isDirectory())
    .sort()
    .reverse()
  for (const name of which === 'latest' ? dated : [which]) {
    const dir = join(root, name, 'k3s')
    if (!existsSync(dir)) {
      if (which !== 'latest')
        throw new ProvisionError('step', `no backup ${name} in ${root} (found: ${dated.join(', ') || 'none'})`)
      continue
    }
    const files = readdirSync(dir)
    const db = files.find((f) => f.endsWith('.db'))
    const tarball = files.find((f) => /\.(tar\.gz|tgz)$/.test(f))
    if (db && tarball) return { name, db: join(dir, db), tarball: join(dir, tarball) }
    if (which !== 'latest')
      throw new ProvisionError('step', `backup ${dir} lacks a .db datastore or a .tar.gz of token/tls/cred`)
  }
  return null
}

/** The secret part of a k3s token: a full token is K10<ca hash>::server:<secret>. */
export function tokenSecret(token: string): string {
  const at = token.indexOf('::server:')
  return at >= 0 ? token.slice(at + '::server:'.length) : token
}
