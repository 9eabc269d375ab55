// The k3s datastore backups: the owner's nightly job on the NAS ({date}/k3s/state.db.gz, the gzip of a SQLite
// .backup of server/db/state.db, and k3s-server-identity.tar.gz with server/token, tls and cred; older ones have a
// plain .db), and the tool's own snapshots in the same layout. How they are named, found, and checked on the
// controller before anything on a server changes.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import type { BackupFile, BackupFolder, BackupStore } from './backup-store.ts'
import { ProvisionError } from './errors.ts'

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

// ---------------------------------------------------------------- checking a backup's content on the controller

/** A backup that cannot be used, and why (named to the owner every time it is met). */
export class UnusableBackup extends Error {}

/** A .gz file's content; a truncated or non-gzip file is unusable. */
export function gunzipBackup(data: Buffer, file: string): Buffer {
  if (data.length < 2 || data[0] !== 0x1f || data[1] !== 0x8b) throw new UnusableBackup(`${file} is not gzip data`)
  try {
    return gunzipSync(data)
  } catch (e) {
    throw new UnusableBackup(`${file} does not decompress (${(e as Error).message}): truncated or damaged`)
  }
}

/**
 * A k3s SQLite datastore, checked as the owner's restore-test job does: written to a scratch directory on the
 * controller (0700, removed after), PRAGMA integrity_check = ok, and a kine table (k3s keeps everything there).
 */
export async function checkDatastore(db: Buffer, file: string): Promise<{ rows: number }> {
  if (db.subarray(0, 16).toString('latin1') !== 'SQLite format 3\0')
    throw new UnusableBackup(`${file} is not a SQLite database`)
  const { DatabaseSync } = await import('node:sqlite')
  const scratch = mkdtempSync(join(tmpdir(), 'pi-provision-check-'))
  try {
    const path = join(scratch, 'state.db')
    writeFileSync(path, db, { mode: 0o600 })
    let conn
    try {
      conn = new DatabaseSync(path)
    } catch (e) {
      throw new UnusableBackup(`${file} does not open as SQLite (${(e as Error).message})`)
    }
    try {
      let verdict: string[]
      try {
        verdict = conn
          .prepare('PRAGMA integrity_check')
          .all()
          .map((r) => String(Object.values(r)[0]))
      } catch (e) {
        throw new UnusableBackup(`${file}: integrity_check failed to run (${(e as Error).message})`)
      }
      if (verdict.length !== 1 || verdict[0] !== 'ok')
        throw new UnusableBackup(`${file}: integrity_check says ${verdict.slice(0, 3).join('; ')}`)
      const kine = conn.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'kine'").get()
      if (!kine || Number(kine.n) !== 1) throw new UnusableBackup(`${file} has no kine table: not a k3s datastore`)
      const rows = conn.prepare('SELECT count(*) AS n FROM kine').get()
      return { rows: Number(rows?.n ?? 0) }
    } finally {
      conn.close()
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true })
  }
}

export interface TarEntry {
  name: string
  type: 'file' | 'dir' | 'link' | 'other'
  data: Buffer
}

const cstr = (b: Buffer) => {
  const z = b.indexOf(0)
  return b.subarray(0, z < 0 ? b.length : z).toString('utf8')
}

function tarNumber(b: Buffer): number {
  // GNU base-256 for large values; otherwise octal text.
  if (b[0] & 0x80) {
    let n = 0
    for (let i = 1; i < b.length; i++) n = n * 256 + b[i]
    return n
  }
  const t = cstr(b).trim()
  return t === '' ? 0 : Number.parseInt(t, 8)
}

/** The entries of an (uncompressed) tar archive: ustar, GNU long names, pax paths. A damaged archive throws. */
export function readTar(buf: Buffer): TarEntry[] {
  const out: TarEntry[] = []
  let off = 0
  let longName: string | undefined
  while (off + 512 <= buf.length) {
    const h = buf.subarray(off, off + 512)
    if (h.every((b) => b === 0)) return out
    let sum = 0
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i]
    if (sum !== tarNumber(h.subarray(148, 156))) throw new Error(`bad header checksum at byte ${off}`)
    const size = tarNumber(h.subarray(124, 136))
    const flag = String.fromCharCode(h[156] || 48)
    const start = off + 512
    if (!Number.isFinite(size) || start + size > buf.length) throw new Error('the archive ends inside a file')
    const data = buf.subarray(start, start + size)
    off = start + Math.ceil(size / 512) * 512
    if (flag === 'L') {
      longName = cstr(data)
      continue
    }
    if (flag === 'x') {
      const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString('utf8'))
      if (m) longName = m[1]
      continue
    }
    if (flag === 'g' || flag === 'K') continue
    let name = cstr(h.subarray(0, 100))
    if (h.subarray(257, 263).toString('latin1') === 'ustar\0') {
      const prefix = cstr(h.subarray(345, 500))
      if (prefix) name = `${prefix}/${name}`
    }
    if (longName !== undefined) name = longName
    longName = undefined
    const type =
      flag === '0' || flag === '7' ? 'file' : flag === '5' ? 'dir' : flag === '1' || flag === '2' ? 'link' : 'other'
    out.push({ name, type, data })
  }
  throw new Error('the archive has no end marker: truncated')
}

/** What an identity tarball holds, as a restore needs it. */
export interface Identity {
  /** The server's token (a credential: the caller masks it). */
  token: string
  /** Leading path components before token/tls/cred ("server/token": 1), for tar --strip-components. */
  strip: number
  /** The members to extract (with their prefix): token, tls and, when there, cred. */
  members: string[]
  hasCred: boolean
}

/**
 * The identity tarball (server/token, tls, cred) checked: it must hold the token and tls/server-ca.crt (a server with
 * another CA is not trusted by the agents), with only plain files and directories under relative names.
 */
export function checkIdentity(tgz: Buffer, file: string): Identity {
  const raw = gunzipBackup(tgz, file)
  let entries: TarEntry[]
  try {
    entries = readTar(raw)
  } catch (e) {
    throw new UnusableBackup(`${file} is not a readable tar archive (${(e as Error).message})`)
  }
  const norm = entries.map((e) => ({ ...e, raw: e.name, name: e.name.replace(/^(\.\/)+/, '') }))
  const tokens = norm
    .filter((e) => e.type === 'file' && (e.name === 'token' || e.name.endsWith('/token')))
    .sort((a, b) => a.name.length - b.name.length)
  const token = tokens.find((t) => {
    const prefix = t.name.slice(0, -'token'.length)
    return norm.some((e) => e.type === 'file' && e.name === `${prefix}tls/server-ca.crt`)
  })
  if (!token) {
    const what = tokens.length === 0 ? 'no server token' : 'the token but no tls/server-ca.crt beside it'
    throw new UnusableBackup(`${file} holds ${what}: expected server/token, tls and cred`)
  }
  const prefix = token.name.slice(0, -'token'.length)
  // tar matches members by the names as stored ("./token" when the archive was made with -C dir .).
  const stored = token.raw.slice(0, -'token'.length)
  const members = ['token', 'tls', 'cred'].map((m) => `${stored}${m}`)
  const wanted = ['token', 'tls', 'cred'].map((m) => `${prefix}${m}`)
  const inside = norm.filter((e) => wanted.some((m) => e.name === m || e.name.startsWith(`${m}/`)))
  for (const e of inside) {
    if (e.name.startsWith('/') || e.name.split('/').includes('..'))
      throw new UnusableBackup(`${file} has a member outside its folder (${e.name})`)
    if (e.type !== 'file' && e.type !== 'dir')
      throw new UnusableBackup(`${file} has a link or special file (${e.name}): refused`)
  }
  const hasCred = inside.some((e) => e.name.startsWith(`${prefix}cred/`) || e.name === `${prefix}cred`)
  return {
    token: token.data.toString('utf8').trim(),
    strip: prefix === '' ? 0 : prefix.split('/').filter(Boolean).length,
    members: hasCred ? members : members.slice(0, 2),
    hasCred,
  }
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
