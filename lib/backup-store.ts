// Where the k3s datastore backups live (k3s_backup_dir): a directory the controller sees (the NAS share mounted),
// or user@host:/path on a NAS reached over the tool's own SSH (strict known_hosts, the inventory's key and agent,
// never sudo). One small interface for both: list the backup folders, read a file, write a folder (temp name, then
// rename), remove a folder, free space.

import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statfsSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { type RunResult, SshConnection } from './connection.ts'
import { ProvisionError } from './errors.ts'
import { isRemoteBackupDir, parseRemoteBackupDir } from './grammar.ts'
import type { StepContext } from './role.ts'
import { quote } from './shell.ts'

/** A file under a backup folder's k3s/ directory. */
export interface BackupFile {
  name: string
  size: number
  /** Modification time, epoch seconds. */
  mtime: number
}

/** A folder directly under k3s_backup_dir, as listed (nothing read yet). */
export interface BackupFolder {
  name: string
  /** Whether it has a k3s/ directory. */
  hasK3s: boolean
  /** The regular files in k3s/. */
  files: BackupFile[]
  /** Whether it carries the marker the tool writes into its own snapshots. */
  toolMarker: boolean
}

export interface NewFile {
  /** Path inside the new folder, e.g. "k3s/state.db.gz". */
  path: string
  data: Buffer
}

export interface BackupStore {
  /** k3s_backup_dir as the owner wrote it, for messages. */
  readonly where: string
  readonly remote: boolean
  /** The folders, or null when the directory does not exist. */
  list(): Promise<BackupFolder[] | null>
  /** A file's bytes; `path` is relative to k3s_backup_dir ("2026-11-27/k3s/state.db.gz"). */
  read(path: string): Promise<Buffer>
  /** Bytes free for new files (of the directory, or of its nearest existing parent). */
  freeBytes(): Promise<number>
  /**
   * A new folder with these files, never half there: written under a hidden temp name, checked (sha256 of each
   * file as written), then renamed to `name`. Fails when `name` exists.
   */
  writeFolder(name: string, files: readonly NewFile[]): Promise<void>
  /** Remove a folder (the tool's own snapshots only: the caller checks). */
  remove(name: string): Promise<void>
  close(): Promise<void>
}

/** The marker file the tool writes at the top of each of its own snapshot folders. */
export const SNAPSHOT_MARKER = 'pi-provision-snapshot.json'

/** A folder name the listing takes: what a shell and a message can carry plainly. */
const FOLDER_NAME = /^[A-Za-z0-9_][A-Za-z0-9._+:@-]{0,254}$/

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** The store k3s_backup_dir names, for a step on the server host (its SSH settings reach the NAS). */
export function backupStoreFor(ctx: Pick<StepContext, 'vars' | 'secrets'>): BackupStore | null {
  const dir = ctx.vars.k3s_backup_dir
  if (!dir) return null
  if (!isRemoteBackupDir(dir)) return new LocalBackupStore(dir)
  const r = parseRemoteBackupDir(dir)!
  const v = ctx.vars
  const conn = new SshConnection({
    host: `${r.user}@${r.host}`,
    address: r.host,
    port: 22,
    user: r.user,
    keyFile: v.ssh_key_file,
    keyText: v.ssh_key_ref ? ctx.secrets.get(v.ssh_key_ref) : undefined,
    keyPassphrase: v.ssh_key_passphrase_ref ? ctx.secrets.get(v.ssh_key_passphrase_ref) : undefined,
    keyRef: v.ssh_key_ref,
    agentSocket: v.ssh_agent ? process.env.SSH_AUTH_SOCK || undefined : undefined,
    knownHostsFile: v.known_hosts_file,
    // The NAS is held to the inventory hosts' rules: a key not in known_hosts is refused, a changed one too.
    trustNewHostKeys: false,
    recordNewHostKeys: false,
    connectTimeoutSec: v.connect_timeout,
  })
  return new RemoteBackupStore(dir, r.path, conn)
}

// ---------------------------------------------------------------- a directory the controller sees

export class LocalBackupStore implements BackupStore {
  readonly where: string
  readonly remote = false
  private readonly root: string

  constructor(root: string) {
    this.root = root
    this.where = root
  }

  async list(): Promise<BackupFolder[] | null> {
    if (!existsSync(this.root)) return null
    const out: BackupFolder[] = []
    for (const name of readdirSync(this.root).sort()) {
      if (!FOLDER_NAME.test(name)) continue
      const dir = join(this.root, name)
      if (!isDir(dir)) continue
      const k3s = join(dir, 'k3s')
      const hasK3s = isDir(k3s)
      const files: BackupFile[] = []
      if (hasK3s)
        for (const f of readdirSync(k3s).sort()) {
          const st = statSync(join(k3s, f), { throwIfNoEntry: false })
          if (st?.isFile()) files.push({ name: f, size: st.size, mtime: Math.floor(st.mtimeMs / 1000) })
        }
      out.push({ name, hasK3s, files, toolMarker: existsSync(join(dir, SNAPSHOT_MARKER)) })
    }
    return out
  }

  async read(path: string): Promise<Buffer> {
    return readFileSync(join(this.root, path))
  }

  async freeBytes(): Promise<number> {
    let d = this.root
    while (!existsSync(d) && dirname(d) !== d) d = dirname(d)
    const s = statfsSync(d)
    return s.bavail * s.bsize
  }

  async writeFolder(name: string, files: readonly NewFile[]): Promise<void> {
    const final = join(this.root, name)
    if (existsSync(final)) throw new ProvisionError('step', `${final} already exists`)
    mkdirSync(this.root, { recursive: true })
    const tmp = join(this.root, `.${name}.partial`)
    rmSync(tmp, { recursive: true, force: true })
    mkdirSync(tmp, { mode: 0o700 })
    try {
      for (const f of files) {
        const p = join(tmp, f.path)
        mkdirSync(dirname(p), { recursive: true, mode: 0o700 })
        await writeSynced(p, f.data)
        if (sha256(readFileSync(p)) !== sha256(f.data))
          throw new ProvisionError('step', `${p} does not read back as written`)
      }
      renameSync(tmp, final)
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true })
      throw e
    }
  }

  async remove(name: string): Promise<void> {
    // Renamed away first, so a folder is either whole or gone, never half deleted under its name.
    const doomed = join(this.root, `.${name}.removing`)
    renameSync(join(this.root, name), doomed)
    rmSync(doomed, { recursive: true, force: true })
  }

  async close(): Promise<void> {}
}

function isDir(p: string): boolean {
  return statSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false
}

async function writeSynced(path: string, data: Buffer): Promise<void> {
  const { open } = await import('node:fs/promises')
  const fh = await open(path, 'wx', 0o600)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

// ---------------------------------------------------------------- user@host:/path over SSH

/** What the listing script prints, one record a line, tab-separated. */
export function listScript(root: string): string {
  const r = quote(root)
  return [
    `root=${r}`,
    '[ -d "$root" ] || { echo NODIR; exit 0; }',
    'for d in "$root"/*; do',
    '  [ -d "$d" ] || continue',
    '  n=${d##*/}',
    '  case $n in *[!A-Za-z0-9._+:@-]*|[.-]*) continue;; esac',
    '  printf \'D\\t%s\\n\' "$n"',
    `  [ -f "$d/${SNAPSHOT_MARKER}" ] && printf 'M\\t%s\\n' "$n"`,
    '  [ -d "$d/k3s" ] || continue',
    '  printf \'K\\t%s\\n\' "$n"',
    '  for f in "$d"/k3s/*; do',
    '    [ -f "$f" ] || continue',
    '    b=${f##*/}',
    '    case $b in *[!A-Za-z0-9._+:@-]*) continue;; esac',
    '    printf \'F\\t%s\\t%s\\t%s\\n\' "$n" "$b" "$(stat -c \'%s %Y\' "$f")"',
    '  done',
    'done',
    'true',
  ].join('\n')
}

/** The folders listScript printed, or null for NODIR. */
export function parseListing(stdout: string): BackupFolder[] | null {
  if (stdout.trim() === 'NODIR') return null
  const byName = new Map<string, BackupFolder>()
  const folder = (n: string) => {
    let f = byName.get(n)
    if (!f) {
      f = { name: n, hasK3s: false, files: [], toolMarker: false }
      byName.set(n, f)
    }
    return f
  }
  for (const line of stdout.split('\n')) {
    const [kind, name, file, stat] = line.split('\t')
    if (!name || !FOLDER_NAME.test(name)) continue
    if (kind === 'D') folder(name)
    else if (kind === 'M') folder(name).toolMarker = true
    else if (kind === 'K') folder(name).hasK3s = true
    else if (kind === 'F' && file && stat) {
      const [size, mtime] = stat.trim().split(' ').map(Number)
      if (Number.isFinite(size) && Number.isFinite(mtime)) folder(name).files.push({ name: file, size, mtime })
    }
  }
  return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

export class RemoteBackupStore implements BackupStore {
  readonly where: string
  readonly remote = true
  private readonly root: string
  private readonly conn: SshConnection

  constructor(where: string, root: string, conn: SshConnection) {
    this.where = where
    this.root = root
    this.conn = conn
  }

  /** A script as the NAS user (never sudo); a failure to connect is this step's failure, naming the NAS. */
  private async run(script: string, stdin?: string): Promise<RunResult> {
    try {
      return await this.conn.run(script, { sudo: false, stdin })
    } catch (e) {
      const pe = e instanceof ProvisionError ? e : undefined
      const hint =
        pe?.kind === 'hostkey'
          ? 'the NAS is checked against known_hosts_file like every host: add its key there ' +
            '(check the fingerprint on the NAS first, ' +
            `e.g. ssh-keyscan ${this.conn.host.split('@')[1]} and ssh-keygen -lf)`
          : pe?.hint
      throw new ProvisionError('step', `k3s_backup_dir ${this.where}: ${(e as Error).message}`, { hint, cause: e })
    }
  }

  private async must(script: string, what: string, stdin?: string): Promise<RunResult> {
    const r = await this.run(script, stdin)
    if (r.code !== 0) {
      const output = r.stderr.trim().split('\n').slice(-3).join(' ') || r.stdout.trim()
      throw new ProvisionError('step', `k3s_backup_dir ${this.where}: ${what} failed (exit ${r.code}): ${output}`)
    }
    return r
  }

  async list(): Promise<BackupFolder[] | null> {
    return parseListing((await this.must(listScript(this.root), 'listing the backups')).stdout)
  }

  async read(path: string): Promise<Buffer> {
    const r = await this.must(`base64 < ${quote(join(this.root, path))}`, `reading ${path}`)
    return Buffer.from(r.stdout.replace(/\s+/g, ''), 'base64')
  }

  async freeBytes(): Promise<number> {
    const r = await this.must(
      [
        `d=${quote(this.root)}`,
        'while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done',
        'df -Pk -- "$d" | awk \'NR==2 {print $4}\'',
      ].join('\n'),
      'reading the free space',
    )
    const kb = Number(r.stdout.trim())
    if (!Number.isFinite(kb)) throw new ProvisionError('step', `k3s_backup_dir ${this.where}: df said ${r.stdout}`)
    return kb * 1024
  }

  async writeFolder(name: string, files: readonly NewFile[]): Promise<void> {
    const final = quote(join(this.root, name))
    const tmp = quote(join(this.root, `.${name}.partial`))
    await this.must(
      [
        'set -eu',
        'umask 077',
        `[ ! -e ${final} ] || { echo ${quote(`${name} already exists`)} >&2; exit 1; }`,
        `mkdir -p -- ${quote(this.root)}`,
        `rm -rf -- ${tmp}`,
        `mkdir -- ${tmp}`,
      ].join('\n'),
      `making ${name}`,
    )
    try {
      for (const f of files) {
        const p = quote(join(this.root, `.${name}.partial`, f.path))
        await this.must(
          `set -eu; umask 077; d=$(dirname -- ${p}); mkdir -p -- "$d"; base64 -d > ${p}`,
          `writing ${name}/${f.path}`,
          f.data.toString('base64'),
        )
      }
      // What landed is what was sent, file by file, before the folder gets its real name.
      const sums = await this.must(
        `cd -- ${tmp} && sha256sum -- ${files.map((f) => quote(f.path)).join(' ')}`,
        `checking ${name}`,
      )
      for (const f of files) {
        const want = sha256(f.data)
        if (!sums.stdout.split('\n').some((l) => l.startsWith(`${want} `)))
          throw new ProvisionError('step', `k3s_backup_dir ${this.where}: ${name}/${f.path} does not read back as sent`)
      }
      await this.must(`mv -- ${tmp} ${final}`, `naming ${name}`)
    } catch (e) {
      await this.run(`rm -rf -- ${tmp}`).catch(() => undefined)
      throw e
    }
  }

  async remove(name: string): Promise<void> {
    const doomed = quote(join(this.root, `.${name}.removing`))
    await this.must(`mv -- ${quote(join(this.root, name))} ${doomed} && rm -rf -- ${doomed}`, `removing ${name}`)
  }

  async close(): Promise<void> {
    await this.conn.close()
  }
}
