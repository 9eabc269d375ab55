// A datastore snapshot of the k3s server, in the layout of the owner's nightly job ({date}/k3s/state.db.gz and
// k3s-server-identity.tar.gz), taken on the server and copied to k3s_backup_dir: what backup.mts does on demand and
// what the upgrade takes before it touches the datastore.
//
// On the server the online backup is Python's sqlite3 backup API (Connection.backup: the same SQLite online-backup
// API the sqlite3 shell's .backup uses, so k3s keeps running and writing). Raspberry Pi OS Lite ships python3 with
// its sqlite3 module but not the sqlite3 shell, and a backup should not install packages on the server first.

import { randomUUID } from 'node:crypto'
import { backupStoreFor, SNAPSHOT_MARKER } from './backup-store.ts'
import { ProvisionError } from './errors.ts'
import { defineFact } from './facts.ts'
import { isToolSnapshotName, OWNER_DB, OWNER_IDENTITY, SERVER_DIR, SNAPSHOT_DIR, snapshotName } from './k3s-backup.ts'
import { checkDatastore, checkIdentity, gunzipBackup, UnusableBackup } from './backup-check.ts'
import { registerSecret } from './mask.ts'
import { runKey, type Step, type StepContext } from './role.ts'
import { quote } from './shell.ts'

export interface SnapshotOptions {
  /** Why the snapshot is taken, in its folder name: "backup" (default), "upgrade", ... */
  reason?: string
  /** Take it only when this says so (e.g. only when an upgrade will happen); otherwise both steps are skipped. */
  when?: Step['when']
}

/** A snapshot this run took, for the steps after it (the upgrade names it as the way back). */
export interface TakenSnapshot {
  name: string
  /** Its folder on the server. */
  onServer: string
  /** k3s_backup_dir/name, when k3s_backup_dir is set. */
  copiedTo?: string
  /** Size of state.db.gz. */
  bytes: number
}

export const LAST_SNAPSHOT = runKey<TakenSnapshot>('datastore snapshot taken in this run')

/** What the server has: the datastore's size (with its WAL), token/tls/cred's, the free space, python3. */
export interface SnapshotRoom {
  kind: 'sqlite' | 'etcd' | 'none'
  dbBytes: number
  identityBytes: number
  freeBytes: number
  python: boolean
}

export const snapshotRoomFact = defineFact<SnapshotRoom>(
  'k3s snapshot room',
  [
    `S=${SERVER_DIR}`,
    'k=none; [ -f "$S/db/state.db" ] && k=sqlite; [ -d "$S/db/etcd" ] && k=etcd',
    'db=0; [ $k = sqlite ] && db=$(( $(stat -c %s "$S/db/state.db") + ' +
      '$(stat -c %s "$S/db/state.db-wal" 2>/dev/null || echo 0) ))',
    'id=$(du -sk "$S/token" "$S/tls" "$S/cred" 2>/dev/null | awk \'{t += $1} END {print t * 1024}\')',
    'd=$S; while [ ! -d "$d" ]; do d=$(dirname "$d"); done',
    'free=$(df -Pk "$d" | awk \'NR==2 {print $4 * 1024}\')',
    'py=no; command -v python3 >/dev/null 2>&1 && py=yes',
    'echo "$k $db ${id:-0} ${free:-0} $py"',
  ].join('\n'),
  (r) => parseRoom(r.stdout),
)

export function parseRoom(stdout: string): SnapshotRoom {
  const [kind, db, id, free, py] = stdout.trim().split(/\s+/)
  return {
    kind: kind === 'sqlite' || kind === 'etcd' ? kind : 'none',
    dbBytes: Number(db) || 0,
    identityBytes: Number(id) || 0,
    freeBytes: Number(free) || 0,
    python: py === 'yes',
  }
}

/** Space a snapshot needs on the server: the copy of the datastore, its gzip beside it, the tarball, and a margin. */
export function roomNeeded(r: Pick<SnapshotRoom, 'dbBytes' | 'identityBytes'>): number {
  return 2 * r.dbBytes + r.identityBytes + 32 * 1024 * 1024
}

export const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 1 : 0)} MB`

/** Why the server cannot be snapshotted, or undefined when it can. */
export function roomProblem(r: SnapshotRoom): string | undefined {
  if (r.kind === 'etcd')
    return `this server keeps its datastore in embedded etcd (${SERVER_DIR}/db/etcd), not SQLite: use k3s etcd-snapshot`
  if (r.kind === 'none') return `no datastore at ${SERVER_DIR}/db/state.db: is the k3s server installed here?`
  if (!r.python)
    return (
      'python3 is not on the server: ' +
      'the snapshot uses its sqlite3 module (Raspberry Pi OS has it; apt install python3)'
    )
  const need = roomNeeded(r)
  if (r.freeBytes < need)
    return (
      `not enough free space in ${SERVER_DIR} for a snapshot: ${mb(r.freeBytes)} free, ${mb(need)} needed ` +
      `(twice the datastore of ${mb(r.dbBytes)}, the token/tls/cred and 32 MB); ` +
      'prune old snapshots (backup.mts --keep N) or free space'
    )
  return undefined
}

/** The script that takes the snapshot on the server into SNAPSHOT_DIR/name (temp name first, renamed when whole). */
export function snapshotScript(name: string, marker: string): string {
  const tmp = quote(`${SNAPSHOT_DIR}/.${name}.partial`)
  return [
    'set -eu',
    'umask 077',
    `S=${SERVER_DIR}`,
    `mkdir -p ${SNAPSHOT_DIR}`,
    `chown root:root ${SNAPSHOT_DIR}`,
    `chmod 0700 ${SNAPSHOT_DIR}`,
    `t=${tmp}`,
    `[ ! -e ${quote(`${SNAPSHOT_DIR}/${name}`)} ] || { echo ${quote(`${name} already exists`)} >&2; exit 1; }`,
    'rm -rf "$t"',
    'trap \'rm -rf "$t"\' EXIT',
    'mkdir -p "$t/k3s"',
    // The online backup: one step (pages=-1), so the copy is one consistent read while k3s keeps writing.
    `python3 - "$S/db/state.db" "$t/k3s/state.db" <<'PY'`,
    'import sqlite3, sys',
    'src = sqlite3.connect(sys.argv[1], timeout=60)',
    'dst = sqlite3.connect(sys.argv[2])',
    'src.backup(dst)',
    'src.close()',
    "ok = [r[0] for r in dst.execute('PRAGMA integrity_check')]",
    "kine = dst.execute(\"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kine'\").fetchone()[0]",
    'dst.close()',
    "if ok != ['ok']:",
    "    sys.exit('integrity_check of the snapshot says: ' + '; '.join(ok[:3]))",
    'if not kine:',
    "    sys.exit('the datastore has no kine table: not a k3s datastore')",
    'PY',
    `gzip -9 "$t/k3s/state.db"`,
    `tar -czf "$t/k3s/${OWNER_IDENTITY}" -C "$S" token tls cred`,
    `printf '%s\\n' ${quote(marker)} > "$t/${SNAPSHOT_MARKER}"`,
    'sync',
    `mv "$t" ${quote(`${SNAPSHOT_DIR}/${name}`)}`,
    'trap - EXIT',
  ].join('\n')
}

/** Check the server has what a snapshot needs (SQLite datastore, python3, space; the backup dir reachable). */
function roomStep(opts: SnapshotOptions): Step {
  return {
    name: 'Check the server can take a datastore snapshot (SQLite, python3, free space, k3s_backup_dir)',
    when: opts.when,
    facts: () => [snapshotRoomFact],
    async plan(ctx) {
      const room = await ctx.facts.get(snapshotRoomFact)
      const problem = roomProblem(room)
      if (problem) return { status: 'failed', message: problem }
      const store = backupStoreFor(ctx)
      let there = 'k3s_backup_dir is not set: the snapshot stays on the server only'
      if (store)
        try {
          // Reached now (the NAS answers, its key is known), so a --check or a preflight finds out before anything.
          there = `${mb(await store.freeBytes())} free in ${store.where}`
        } finally {
          await store.close()
        }
      return {
        status: 'ok',
        message: `datastore ${mb(room.dbBytes)}, ${mb(room.freeBytes)} free on the server; ${there}`,
      }
    },
  }
}

/** Read a file off the server as base64 (its output is a credential: no reporter sees it). */
async function fetchFile(ctx: StepContext, path: string): Promise<Buffer> {
  const r = await ctx.sh(`base64 -w0 < ${quote(path)}`, { secretOutput: true })
  if (r.code !== 0)
    throw new ProvisionError('step', `cannot read ${path} (exit ${r.code}): ${r.stderr.trim()}`, {
      place: { host: ctx.host },
    })
  return Buffer.from(r.stdout.trim(), 'base64')
}

/** A name for a snapshot taken now that no snapshot on the server has (two in one second: the next second's). */
export async function freeSnapshotName(ctx: Pick<StepContext, 'sh'>, reason: string): Promise<string> {
  const there = new Set((await ctx.sh(`ls -1 -- ${SNAPSHOT_DIR} 2>/dev/null; true`)).stdout.split('\n'))
  let at = Date.now()
  while (there.has(snapshotName(new Date(at), reason))) at += 1000
  return snapshotName(new Date(at), reason)
}

/** Take the snapshot on the server, check what came back on the controller, copy it to k3s_backup_dir. */
export async function takeSnapshot(ctx: StepContext, name: string, reason: string): Promise<TakenSnapshot> {
  const marker = JSON.stringify({
    tool: 'pi-provision',
    reason,
    taken: new Date().toISOString(),
    server: ctx.host,
    id: randomUUID(),
  })
  await ctx.must(snapshotScript(name, marker), { what: `snapshot the datastore into ${SNAPSHOT_DIR}/${name}` })
  const onServer = `${SNAPSHOT_DIR}/${name}`
  const gz = await fetchFile(ctx, `${onServer}/k3s/${OWNER_DB}`)
  const identity = await fetchFile(ctx, `${onServer}/k3s/${OWNER_IDENTITY}`)
  // What the backup dir gets is checked here the way a restore checks it: gunzip, integrity_check, kine, token/tls.
  try {
    await checkDatastore(gunzipBackup(gz, OWNER_DB), OWNER_DB)
    registerSecret(checkIdentity(identity, OWNER_IDENTITY).token)
  } catch (e) {
    if (e instanceof UnusableBackup)
      throw new ProvisionError('step', `the snapshot ${name} is not restorable: ${e.message}`, {
        place: { host: ctx.host },
      })
    throw e
  }
  const taken: TakenSnapshot = { name, onServer, bytes: gz.length }
  const store = backupStoreFor(ctx)
  if (!store) {
    ctx.warn(
      `k3s_backup_dir is not set: snapshot ${name} is only on the server (${onServer}); a dead SD card takes it along`,
    )
    return taken
  }
  try {
    const need = gz.length + identity.length + marker.length + 1024 * 1024
    const free = await store.freeBytes()
    if (free < need)
      throw new ProvisionError(
        'step',
        `not enough space in k3s_backup_dir ${store.where}: ${mb(free)} free, ${mb(need)} needed; ` +
          `snapshot ${name} is on the server (${onServer})`,
      )
    await store.writeFolder(name, [
      { path: `k3s/${OWNER_DB}`, data: gz },
      { path: `k3s/${OWNER_IDENTITY}`, data: identity },
      { path: SNAPSHOT_MARKER, data: Buffer.from(`${marker}\n`) },
    ])
  } catch (e) {
    if (e instanceof ProvisionError && !e.message.includes(onServer))
      throw new ProvisionError('step', `${e.message} (snapshot ${name} is on the server: ${onServer})`, {
        hint: e.hint,
        cause: e,
      })
    throw e
  } finally {
    await store.close()
  }
  taken.copiedTo = `${store.where.replace(/\/+$/, '')}/${name}`
  return taken
}

/**
 * The steps that take a datastore snapshot on the k3s server (run them on the server host): a check that it can
 * (SQLite datastore, python3, twice the datastore free, k3s_backup_dir reachable), then the snapshot itself. The
 * snapshot is named {date}T{time}Z-pi-provision-{reason}, kept in SNAPSHOT_DIR and copied to k3s_backup_dir; the
 * step after it finds it in ctx.state under LAST_SNAPSHOT.
 */
export function snapshotSteps(opts: SnapshotOptions = {}): Step[] {
  const reason = opts.reason ?? 'backup'
  // Refused here, when the playbook is built, not in the middle of a run.
  snapshotName(new Date(0), reason)
  return [
    roomStep(opts),
    {
      name: `Take a datastore snapshot (${reason}): SQLite online backup, integrity_check, token/tls/cred`,
      when: opts.when,
      async plan(ctx) {
        const name = snapshotName(new Date(), reason)
        const where = ctx.vars.k3s_backup_dir ? ` and copy it to ${ctx.vars.k3s_backup_dir}` : ''
        return {
          summary: `snapshot the datastore into ${SNAPSHOT_DIR}/${name}${where}`,
          async apply() {
            // Named when it is taken (the plan may have been made a moment earlier).
            const taken = await takeSnapshot(ctx, await freeSnapshotName(ctx, reason), reason)
            ctx.state.set(LAST_SNAPSHOT, taken, ctx.host)
            const also = taken.copiedTo ? ` and ${taken.copiedTo}` : ''
            return (
              `took snapshot ${taken.name} (${OWNER_DB} ${mb(taken.bytes)}, integrity ok, kine; token, tls, cred) ` +
              `in ${taken.onServer}${also}`
            )
          },
        }
      },
    },
  ]
}

// ---------------------------------------------------------------- pruning the tool's own snapshots

/** Which of these folder names to remove so the `keep` newest of the tool's own snapshots stay (newest first). */
export function toPrune(names: readonly string[], keep: number): string[] {
  if (!(keep >= 1)) throw new ProvisionError('step', `keep ${keep}: at least the newest snapshot is kept`)
  // The name starts with its UTC time, so by name is by age.
  return names.filter(isToolSnapshotName).sort().reverse().slice(keep)
}

/**
 * Prune the tool's own snapshots to the `keep` newest, on the server (SNAPSHOT_DIR) and in k3s_backup_dir. Only
 * folders named {date}T{time}Z-pi-provision-{reason} are touched, and in k3s_backup_dir only those that also carry
 * the tool's marker file: the owner's nightly folders, and anything else there, are never removed.
 */
export function pruneStep(keepOf: (ctx: StepContext) => number | undefined): Step {
  return {
    name: "Prune the tool's own snapshots to the newest --keep N (server and k3s_backup_dir; never the owner's)",
    when: (ctx) => keepOf(ctx) !== undefined,
    async plan(ctx) {
      const keep = keepOf(ctx)!
      const r = await ctx.sh(`ls -1 -- ${SNAPSHOT_DIR} 2>/dev/null; true`)
      const onServer = toPrune(r.stdout.split('\n'), keep)
      const store = backupStoreFor(ctx)
      let inStore: string[] = []
      try {
        const folders = (await store?.list()) ?? []
        inStore = toPrune(
          folders.filter((f) => f.toolMarker).map((f) => f.name),
          keep,
        )
      } finally {
        await store?.close()
      }
      if (onServer.length + inStore.length === 0)
        return { status: 'ok', message: `no more than ${keep} of the tool's snapshots anywhere: nothing to prune` }
      const parts = [
        onServer.length ? `${onServer.length} on the server (${onServer.join(', ')})` : '',
        inStore.length ? `${inStore.length} in ${store!.where} (${inStore.join(', ')})` : '',
      ].filter(Boolean)
      return {
        summary: `remove ${parts.join(' and ')}, keeping the newest ${keep}`,
        commands: onServer.length
          ? [
              {
                // Renamed away first: a folder is whole under its name or gone, never half deleted.
                script: onServer
                  .map((n) => {
                    const gone = quote(`${SNAPSHOT_DIR}/.${n}.removing`)
                    return `mv -- ${quote(`${SNAPSHOT_DIR}/${n}`)} ${gone} && rm -rf -- ${gone}`
                  })
                  .join('\n'),
              },
            ]
          : [],
        async apply() {
          if (inStore.length === 0) return
          const again = backupStoreFor(ctx)!
          try {
            for (const n of inStore) await again.remove(n)
          } finally {
            await again.close()
          }
        },
      }
    },
  }
}
