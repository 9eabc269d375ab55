// Paths on the controller (this machine): "~/" is the owner's home, a relative path is taken from a folder (the
// inventory's, or the working directory for -e). Which built-in variables are such paths.

import { homedir } from 'node:os'
import { isAbsolute, resolve } from 'node:path'
import { isRemoteBackupDir } from './grammar.ts'
import type { VarName } from './vars.ts'

/**
 * Controller-side paths, taken relative to the inventory (a role's own path variables are the hosts' and kept as
 * written).
 */
const PATH_VARS: ReadonlySet<string> = new Set([
  'ssh_key_file',
  'known_hosts_file',
  'secrets_file',
  'kubeconfig_path',
  'k3s_backup_dir',
] satisfies VarName[])
/** A controller path to expand; k3s_backup_dir may instead be user@host:/path on a NAS, kept as written. */
export const isControllerPath = (name: string, value: unknown): boolean =>
  PATH_VARS.has(name) && !(name === 'k3s_backup_dir' && isRemoteBackupDir(String(value)))

export function expandPath(p: string, baseDir: string): string {
  if (p === '~' || p.startsWith('~/')) return resolve(homedir(), p.slice(2))
  return isAbsolute(p) ? p : resolve(baseDir, p)
}
