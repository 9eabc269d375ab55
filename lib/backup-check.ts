// A k3s backup's content checked on the controller before anything on a server changes: the datastore (gunzip,
// SQLite integrity_check, kine's table) and the server identity tarball (token, tls, cred). A backup that fails is
// UnusableBackup, with why.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'

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
