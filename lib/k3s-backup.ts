// The k3s datastore backups: the owner's nightly job on the NAS ({date}/k3s/state.db.gz, the gzip of a SQLite
// .backup of server/db/state.db, and k3s-server-identity.tar.gz with server/token, tls and cred; older ones have a
// plain .db), and the tool's own snapshots in the same layout. How they are named, found, and checked on the
// controller before anything on a server changes.
// Checking a backup's content: lib/backup-check.ts.

import type { BackupFile, BackupFolder, BackupStore } from './backup-store.ts'
import { ProvisionError } from './errors.ts'
import { checkDatastore, checkIdentity, gunzipBackup, UnusableBackup, type Identity } from './backup-check.ts'

export const SERVER_DIR = '/var/lib/rancher/k3s/server'
/** Where the tool keeps its own snapshots on the server (0700, root only; k3s's own db/snapshots is for etcd). */
export const SNAPSHOT_DIR = `${SERVER_DIR}/pi-provision-snapshots`
/** The files of the owner's nightly job, and of the tool's snapshots (the same layout). */
export const OWNER_DB = 'state.db.gz'
export const OWNER_IDENTITY = 'k3s-server-identity.tar.gz'

// ---------------------------------------------------------------- the tool's own snapshot folders

/** A tool snapshot's folder: {date}T{time}Z-pi-provision-{reason}, so it is never taken for the owner's nightly one. */
const TOOL_SNAPSHOT = /^(\d{4})-(\d{2})-(\d{2})T(\d{2})(\d{2})(\d{2})Z-pi-provision-([a-z0-9][a-z0-9-]{0,31})$/

/** Why a snapshot was taken (backup, upgrade, ...): lowercase letters, digits and "-", at most 32. */
export const isSnapshotReason = (s: string): boolean => /^[a-z0-9][a-z0-9-]{0,31}$/.test(s)

/** The folder name of a snapshot taken at `at` for `reason`: 2026-11-27T021500Z-pi-provision-upgrade (UTC). */
export function snapshotName(at: Date, reason: string): string {
  if (!isSnapshotReason(reason))
    throw new ProvisionError(
      'step',
      `snapshot reason ${JSON.stringify(reason)}: expected lowercase letters, digits and "-"`,
    )
  const iso = at.toISOString() // 2026-11-27T02:15:00.000Z
  return `${iso.slice(0, 10)}T${iso.slice(11, 19).replace(/:/g, '')}Z-pi-provision-${reason}`
}

/** Whether a folder name is one of the tool's own snapshots (the only ones --keep may prune). */
export function isToolSnapshotName(name: string): boolean {
  return TOOL_SNAPSHOT.test(name)
}

/**
 * When a folder's name says it was taken: a tool snapshot's exact time (UTC), an owner's {date} (YYYY-MM-DD...) as
 * the end of that day in the controller's time zone (the latest it can have been taken), or undefined.
 */
export function nameTime(name: string): { at: Date; exact: boolean } | undefined {
  const t = TOOL_SNAPSHOT.exec(name)
  if (t) return { at: new Date(Date.UTC(+t[1], +t[2] - 1, +t[3], +t[4], +t[5], +t[6])), exact: true }
  const d = /^(\d{4})-(\d{2})-(\d{2})(?![0-9])/.exec(name)
  if (!d) return undefined
  const day = new Date(+d[1], +d[2] - 1, +d[3])
  if (day.getFullYear() !== +d[1] || day.getMonth() !== +d[2] - 1 || day.getDate() !== +d[3]) return undefined
  return { at: new Date(+d[1], +d[2] - 1, +d[3] + 1), exact: false }
}

/**
 * When a backup was taken: the time in a tool snapshot's name; else its datastore file's mtime, but never later than
 * the end of the day its name says (a copy made later must not make an old backup look fresh).
 */
export function takenAt(name: string, dbMtimeSec: number): Date {
  const n = nameTime(name)
  if (n?.exact) return n.at
  const mtime = new Date(dbMtimeSec * 1000)
  return n && n.at < mtime ? n.at : mtime
}

// ---------------------------------------------------------------- finding the backup to restore

/** A folder that looks like a backup (a date in its name, or a k3s/ folder) but cannot be used, and why. */
export interface UnusableFolder {
  name: string
  why: string
}

/** A backup folder whose files are there (content not read yet). */
export interface BackupCandidate {
  name: string
  /** When it was taken (takenAt). */
  when: Date
  /** The datastore file in k3s/: state.db.gz (the owner's) or a plain .db. */
  db: BackupFile
  identity: BackupFile
  /** Whether the tool made it (backup.mts, an upgrade). */
  tool: boolean
}

/** A candidate read and checked on the controller: restorable. */
export interface CheckedBackup extends BackupCandidate {
  /** The datastore, decompressed, as it goes to server/db/state.db. */
  datastore: Buffer
  /** The identity tarball as it is (gzip). */
  tarball: Buffer
  identityInfo: Identity
  /** Rows of the kine table. */
  rows: number
}

const isDbFile = (f: string) => /\.db(\.gz)?$/.test(f)
const isTarball = (f: string) => /\.(tar\.gz|tgz)$/.test(f)

/** The one file of a kind: the preferred name, else the only one; several others is a problem. */
function pick(files: BackupFile[], preferred: string[], ok: (f: string) => boolean): BackupFile | string[] {
  for (const p of preferred) {
    const f = files.find((x) => x.name === p)
    if (f) return f
  }
  const all = files.filter((f) => ok(f.name))
  return all.length === 1 ? all[0] : all.map((f) => f.name)
}

/**
 * The folders of k3s_backup_dir sorted out by their files (nothing read yet): candidates, newest first, and the
 * folders that look like a backup (a date in the name, or a k3s/ folder) but cannot be one, each with why. Anything
 * else (lost+found, a NAS's own folders) is no backup and is not mentioned.
 */
export function sortBackups(folders: readonly BackupFolder[]): {
  candidates: BackupCandidate[]
  unusable: UnusableFolder[]
} {
  const candidates: BackupCandidate[] = []
  const unusable: UnusableFolder[] = []
  for (const f of folders) {
    if (!f.hasK3s && !nameTime(f.name)) continue
    const bad = (why: string) => void unusable.push({ name: f.name, why })
    if (!f.hasK3s) {
      bad('it has no k3s/ folder (did the datastore job write nothing that night?)')
      continue
    }
    const db = pick(f.files, [OWNER_DB, 'state.db'], isDbFile)
    const identity = pick(f.files, [OWNER_IDENTITY], isTarball)
    if (Array.isArray(db)) {
      bad(
        db.length === 0
          ? `k3s/ has no datastore (${OWNER_DB} or a .db)` +
              (f.files.length ? `, only ${f.files.map((x) => x.name).join(', ')}` : ', it is empty')
          : `k3s/ has several datastores (${db.join(', ')}) and none is state.db.gz or state.db`,
      )
      continue
    }
    if (Array.isArray(identity)) {
      bad(
        identity.length === 0
          ? `k3s/ has no ${OWNER_IDENTITY} (token, tls, cred): a datastore alone cannot be restored`
          : `k3s/ has several tarballs (${identity.join(', ')}) and none is ${OWNER_IDENTITY}`,
      )
      continue
    }
    if (db.size === 0) {
      bad(`k3s/${db.name} is empty`)
      continue
    }
    candidates.push({ name: f.name, when: takenAt(f.name, db.mtime), db, identity, tool: f.toolMarker })
  }
  candidates.sort((a, b) => b.when.getTime() - a.when.getTime() || (a.name < b.name ? 1 : -1))
  return { candidates, unusable }
}

/** Read a candidate's files and check them on the controller: gunzip, integrity_check, kine, token and tls. */
export async function checkBackup(store: BackupStore, c: BackupCandidate): Promise<CheckedBackup> {
  const dbData = await store.read(`${c.name}/k3s/${c.db.name}`)
  const datastore = c.db.name.endsWith('.gz') ? gunzipBackup(dbData, c.db.name) : dbData
  const { rows } = await checkDatastore(datastore, c.db.name)
  const tarball = await store.read(`${c.name}/k3s/${c.identity.name}`)
  const identityInfo = checkIdentity(tarball, c.identity.name)
  return { ...c, datastore, tarball, identityInfo, rows }
}

export interface BackupChoice {
  /** The backup to restore, checked; undefined when none is usable. */
  chosen?: CheckedBackup
  /** Every folder that looked like a backup and cannot be used (by its files, or by its content when read). */
  unusable: UnusableFolder[]
  /** How many folders looked like backups. */
  seen: number
}

/**
 * The backup to restore: `which` names a folder, or (latest, latest-anyway) the newest whose content passes the
 * checks, reading newer unusable ones first and naming each with why. Age limits are the caller's.
 */
export async function findBackup(store: BackupStore, which: string): Promise<BackupChoice> {
  const folders = await store.list()
  if (folders === null)
    throw new ProvisionError('step', `k3s_backup_dir ${store.where} does not exist (is the NAS share mounted?)`)
  const { candidates, unusable } = sortBackups(folders)
  const seen = candidates.length + unusable.length
  if (which !== 'latest' && which !== 'latest-anyway') {
    const named = folders.find((f) => f.name === which)
    const newest = candidates.slice(0, 5).map((c) => c.name)
    if (!named)
      throw new ProvisionError('step', `no backup ${which} in ${store.where}`, {
        hint: `backups there, newest first: ${newest.join(', ') || 'none'}`,
      })
    const c = candidates.find((x) => x.name === which)
    if (!c) {
      const why = unusable.find((u) => u.name === which)?.why ?? 'it holds no k3s/ backup'
      throw new ProvisionError('step', `backup ${which} in ${store.where} cannot be used: ${why}`)
    }
    try {
      return { chosen: await checkBackup(store, c), unusable, seen }
    } catch (e) {
      if (e instanceof UnusableBackup)
        throw new ProvisionError('step', `backup ${which} in ${store.where} cannot be used: ${e.message}`)
      throw e
    }
  }
  for (const c of candidates) {
    try {
      return { chosen: await checkBackup(store, c), unusable, seen }
    } catch (e) {
      if (!(e instanceof UnusableBackup)) throw e
      unusable.push({ name: c.name, why: e.message })
    }
  }
  return { unusable, seen }
}

/** "2026-11-27 02:15" in the controller's time zone. */
export function localTime(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0')
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`
}

/** An age for people: 45m, 5.2h, 3.1d. */
export function ageText(seconds: number): string {
  if (seconds < 3600) return `${Math.max(0, Math.round(seconds / 60))}m`
  if (seconds < 2 * 86400) return `${(seconds / 3600).toFixed(1)}h`
  return `${(seconds / 86400).toFixed(1)}d`
}

/** The secret part of a k3s token: a full token is K10<ca hash>::server:<secret>. */
export function tokenSecret(token: string): string {
  const at = token.indexOf('::server:')
  return at >= 0 ? token.slice(at + '::server:'.length) : token
}
