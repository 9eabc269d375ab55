// The backup pieces that need no host: folder names and times, the backup directory's grammar, the identity
// tarball's reader, and the datastore check (real gzip, real tar, real SQLite files in a temp directory).

import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DatabaseSync } from 'node:sqlite'
import { gzipSync } from 'node:zlib'
import { afterAll, describe, expect, it } from 'vitest'
import { LocalBackupStore } from '../../lib/backup-store.ts'
import type { ProvisionError } from '../../lib/errors.ts'
import * as g from '../../lib/grammar.ts'
import { parseExtraVars } from '../../lib/extra-vars.ts'
import { hostVars, parseInventory } from '../../lib/inventory.ts'
import {
  findBackup,
  isToolSnapshotName,
  nameTime,
  OWNER_IDENTITY,
  snapshotName,
  sortBackups,
  takenAt,
} from '../../lib/k3s-backup.ts'
import { checkDatastore, checkIdentity, gunzipBackup, readTar, UnusableBackup } from '../../lib/backup-check.ts'
import { flagVars, parseCli } from '../../lib/cli.ts'
import type { StepContext } from '../../lib/role.ts'
import { BUILTIN_DEFAULTS, type Vars } from '../../lib/vars.ts'
import { backupProblems } from '../../roles/backup-health.ts'
import { MemorySecrets } from './fakes.ts'
import { parseRoom, roomProblem, toPrune } from '../../lib/k3s-snapshot.ts'

const scratch = mkdtempSync(join(tmpdir(), 'k3s-backup-test-'))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

/** A SQLite file with a kine table (as k3s's state.db has), or without one. */
function sqliteFile(withKine = true): Buffer {
  const p = join(scratch, `db-${Math.random().toString(36).slice(2)}.db`)
  const db = new DatabaseSync(p)
  if (withKine) {
    db.exec('CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value BLOB)')
    db.exec("INSERT INTO kine (name, value) VALUES ('/registry/namespaces/default', x'00')")
  } else db.exec('CREATE TABLE objects (k TEXT)')
  db.close()
  return readFileSync(p)
}

/** A tarball of token, tls and cred as `tar -czf - -C <server> token tls cred` makes it (real tar). */
function identityTarball(opts: { prefix?: string; token?: string; ca?: boolean } = {}): Buffer {
  const root = mkdtempSync(join(scratch, 'id-'))
  const base = opts.prefix ? join(root, opts.prefix) : root
  mkdirSync(join(base, 'tls'), { recursive: true })
  mkdirSync(join(base, 'cred'), { recursive: true })
  writeFileSync(join(base, 'token'), `${opts.token ?? 'K10abc::server:s3cret'}\n`)
  if (opts.ca ?? true) writeFileSync(join(base, 'tls', 'server-ca.crt'), 'CA')
  writeFileSync(join(base, 'cred', 'passwd'), 'x')
  const members = ['token', 'tls', 'cred'].map((m) => (opts.prefix ? `${opts.prefix}/${m}` : m))
  return execFileSync('tar', ['-czf', '-', '-C', root, ...members])
}

describe('snapshot folder names', () => {
  it('say when and why, in UTC, and are told apart from the owner folders', () => {
    const name = snapshotName(new Date(Date.UTC(2026, 10, 27, 2, 15, 9)), 'upgrade')
    expect(name).toBe('2026-11-27T021509Z-pi-provision-upgrade')
    expect(isToolSnapshotName(name)).toBe(true)
    for (const owner of ['2026-11-27', '2026-11-27-pi-provision', '20261127', 'pi-provision-backup'])
      expect(isToolSnapshotName(owner), owner).toBe(false)
    expect(() => snapshotName(new Date(), 'Up grade')).toThrow(/snapshot reason/)
  })

  it("take the time from a tool snapshot's name, and never later than the end of an owner folder's date", () => {
    expect(nameTime('2026-11-27T021509Z-pi-provision-backup')).toEqual({
      at: new Date(Date.UTC(2026, 10, 27, 2, 15, 9)),
      exact: true,
    })
    const endOfDay = new Date(2026, 10, 28).getTime()
    expect(nameTime('2026-11-27')?.at.getTime()).toBe(endOfDay)
    expect(nameTime('2026-02-30')).toBeUndefined()
    expect(nameTime('latest')).toBeUndefined()
    // A copy made a month later does not look fresh; an mtime inside the day is kept.
    const copiedLater = new Date(2026, 11, 27).getTime() / 1000
    expect(takenAt('2026-11-27', copiedLater).getTime()).toBe(endOfDay)
    const at0215 = new Date(2026, 10, 27, 2, 15).getTime() / 1000
    expect(takenAt('2026-11-27', at0215).getTime()).toBe(at0215 * 1000)
    expect(takenAt('no-date-here', at0215).getTime()).toBe(at0215 * 1000)
  })
})

describe('k3s_backup_dir grammar', () => {
  const good = [
    '/Volumes/k3s-backups',
    'backups',
    '~/nas/k3s',
    'backup@nas.lan:/volume1/k3s-backups',
    'pi@198.51.100.7:/srv/nas/k3s',
    'pi@[2001:db8::7]:/srv/nas',
    'a.b-c_d@nas:/',
  ]
  const bad = [
    'pi@nas:relative/path',
    'pi@nas:',
    'nas:/srv/k3s',
    '-oProxyCommand=x@nas:/srv',
    'pi@-oProxyCommand=x:/srv',
    'pi@nas:/srv/$(reboot)',
    'pi@nas:/srv/a b',
    'pi@nas:/srv/a;b',
    'pi@nas:/srv/../etc',
    'pi@nas:/srv/`x`',
    "pi@nas:/srv/'x'",
    'pi@[fe80::1%eth0]:/srv',
    'pi@2001:db8::7:/srv',
    '',
    'a\nb',
  ]
  it.each(good)('takes %j', (s) => {
    expect(g.isBackupDir(s)).toBe(true)
    expect(g.complaint(g.BackupDir, s)).toBeUndefined()
  })
  it.each(bad)('refuses %j', (s) => {
    expect(g.isBackupDir(s)).toBe(false)
    expect(g.complaint(g.BackupDir, s)).toMatch(/expected a local directory or user@host:\/absolute\/path/)
  })
  it('splits user, host and path', () => {
    expect(g.parseRemoteBackupDir('backup@nas.lan:/volume1/k3s/')).toEqual({
      user: 'backup',
      host: 'nas.lan',
      path: '/volume1/k3s',
    })
    expect(g.parseRemoteBackupDir('pi@[2001:db8::7]:/srv')?.host).toBe('2001:db8::7')
    expect(g.isRemoteBackupDir('/Volumes/a:b')).toBe(false)
  })
  it('k3s_restore takes latest-anyway; backup_max_age takes 36h, 2d, seconds', () => {
    expect(g.isRestoreName('latest-anyway')).toBe(true)
    expect(g.verdict(g.Age, '36h')).toEqual({ ok: true, value: 129600 })
    expect(g.verdict(g.Age, '2d')).toEqual({ ok: true, value: 172800 })
    expect(g.verdict(g.Age, '600')).toEqual({ ok: true, value: 600 })
    for (const s of ['0', '1w', '-5h', '36 h', 'h', '']) expect(g.verdict(g.Age, s).ok, s).toBe(false)
  })
})

describe('checking a backup on the controller', () => {
  it('a gzip of a k3s datastore passes integrity_check and has its kine table', async () => {
    const gz = gzipSync(sqliteFile(), { level: 9 })
    await expect(checkDatastore(gunzipBackup(gz, 'state.db.gz'), 'state.db.gz')).resolves.toEqual({ rows: 1 })
  })

  it('refuses, saying why: not gzip, truncated, not SQLite, damaged pages, no kine table', async () => {
    const db = sqliteFile()
    const gz = gzipSync(db)
    expect(() => gunzipBackup(db, 'state.db.gz')).toThrow(/state.db.gz is not gzip data/)
    expect(() => gunzipBackup(gz.subarray(0, gz.length - 20), 'state.db.gz')).toThrow(/does not decompress/)
    await expect(checkDatastore(Buffer.from('hello'), 'state.db')).rejects.toThrow(/not a SQLite database/)
    const damaged = Buffer.from(db)
    damaged.fill(0xa5, 4096) // every page after the first (sqlite_master) overwritten
    await expect(checkDatastore(damaged, 'state.db')).rejects.toBeInstanceOf(UnusableBackup)
    await expect(checkDatastore(damaged, 'state.db')).rejects.toThrow(/^state.db: integrity_check (says|failed to run)/)
    await expect(checkDatastore(sqliteFile(false), 'state.db')).rejects.toThrow(/no kine table: not a k3s datastore/)
  })

  it('reads the identity tarball as tar writes it: the token, tls/server-ca.crt, cred; with or without a server/ prefix', () => {
    const id = checkIdentity(identityTarball(), 'k3s-server-identity.tar.gz')
    expect(id).toEqual({ token: 'K10abc::server:s3cret', strip: 0, members: ['token', 'tls', 'cred'], hasCred: true })
    const prefixed = checkIdentity(identityTarball({ prefix: 'server' }), 'x.tar.gz')
    expect(prefixed.strip).toBe(1)
    expect(prefixed.members).toEqual(['server/token', 'server/tls', 'server/cred'])
    expect(() => checkIdentity(identityTarball({ ca: false }), 'x.tar.gz')).toThrow(
      /holds the token but no tls\/server-ca.crt/,
    )
    expect(() => checkIdentity(gzipSync(Buffer.alloc(1024)), 'x.tar.gz')).toThrow(/holds no server token/)
    const raw = gunzipBackup(identityTarball(), 'x')
    expect(() => readTar(raw.subarray(0, 700))).toThrow(/ends inside a file|truncated/)
  })
})

describe('snapshot preflight', () => {
  it('names what stops a snapshot: etcd, no datastore, no python3, not enough space', () => {
    expect(roomProblem(parseRoom('sqlite 1048576 4096 1073741824 yes'))).toBeUndefined()
    expect(roomProblem(parseRoom('etcd 0 0 1073741824 yes'))).toMatch(/embedded etcd/)
    expect(roomProblem(parseRoom('none 0 0 1073741824 yes'))).toMatch(/no datastore/)
    expect(roomProblem(parseRoom('sqlite 1048576 0 1073741824 no'))).toMatch(/python3 is not on the server/)
    expect(roomProblem(parseRoom('sqlite 104857600 0 209715200 yes'))).toMatch(
      /not enough free space .*: 200 MB free, 232 MB needed/,
    )
  })
})

describe('--keep N', () => {
  it("prunes only the tool's own snapshots, oldest first, keeping the newest N", () => {
    const names = [
      '2026-11-25',
      '2026-11-26',
      '2026-11-26T101500Z-pi-provision-backup',
      '2026-11-27T021500Z-pi-provision-upgrade',
      '2026-11-27T091500Z-pi-provision-backup',
      '2026-11-27-pi-provision-backup-by-hand',
      'lost+found',
    ]
    expect(toPrune(names, 1)).toEqual([
      '2026-11-27T021500Z-pi-provision-upgrade',
      '2026-11-26T101500Z-pi-provision-backup',
    ])
    expect(toPrune(names, 3)).toEqual([])
    expect(() => toPrune(names, 0)).toThrow(/at least the newest/)
  })

  it('is a flag of backup.mts only, a whole number >= 1; --strict is a flag of the playbooks with a backup check', () => {
    expect(parseCli(['--keep', '3']).keep).toBe(3)
    for (const bad of ['0', '-1', 'x', '1.5', '99999'])
      expect(() => parseCli([`--keep=${bad}`]), bad).toThrow(/--keep .*expected a whole number >= 1/)
    const extra: Record<string, unknown> = {}
    flagVars({ keep: 3, strict: false }, { backup_keep: { type: 'int', doc: '' } }, extra)
    expect(extra).toEqual({ backup_keep: 3 })
    expect(() => flagVars({ keep: 3, strict: false }, {}, {})).toThrow(
      '--keep: this playbook takes no --keep (it is a flag of playbooks/backup.mts)',
    )
    expect(() => flagVars({ strict: true }, {}, {})).toThrow(/--strict: this playbook takes no --strict/)
  })
})

describe('findBackup: the backup a rebuild restores', () => {
  const day = (d: number) => new Date(2026, 10, d, 2, 15).getTime() / 1000
  /** A backup directory as the owner's NAS has it, with the folders given ({name: files}). */
  function nas(folders: Record<string, Record<string, Buffer | string> | null>, mtimes: Record<string, number> = {}) {
    const root = mkdtempSync(join(scratch, 'nas-'))
    for (const [name, files] of Object.entries(folders)) {
      mkdirSync(join(root, name, ...(files ? ['k3s'] : [])), { recursive: true })
      for (const [f, data] of Object.entries(files ?? {})) {
        const p = join(root, name, 'k3s', f)
        writeFileSync(p, data)
        const t = mtimes[name] ?? day(Number(name.slice(8, 10)) || 1)
        utimesSync(p, t, t)
      }
    }
    return new LocalBackupStore(root)
  }
  const owner = () => ({ 'state.db.gz': gzipSync(sqliteFile(), { level: 9 }), [OWNER_IDENTITY]: identityTarball() })
  const plain = () => ({ 'state.db': sqliteFile(), 'server-token-tls-cred.tar.gz': identityTarball() })

  it("takes the owner's newest folder (state.db.gz), not an older plain .db beside it", async () => {
    const store = nas({ '2026-11-20': plain(), '2026-11-26': owner() })
    const c = await findBackup(store, 'latest')
    expect(c.chosen?.name).toBe('2026-11-26')
    expect(c.chosen?.db.name).toBe('state.db.gz')
    expect(c.chosen?.datastore.subarray(0, 15).toString()).toBe('SQLite format 3')
    expect(c.chosen?.identityInfo.token).toBe('K10abc::server:s3cret')
    expect(c.unusable).toEqual([])
  })

  it('still takes a plain .db with any tarball', async () => {
    const c = await findBackup(nas({ '2026-11-20': plain() }), 'latest')
    expect(c.chosen?.name).toBe('2026-11-20')
    expect(c.chosen?.db.name).toBe('state.db')
  })

  it('names every folder that looks like a backup and cannot be used, with why, and takes the newest usable one', async () => {
    const corrupt = owner()
    corrupt['state.db.gz'] = corrupt['state.db.gz'].subarray(0, 200)
    const store = nas({
      '2026-11-22': owner(),
      '2026-11-23': null, // the PVC job wrote its folder, the k3s job nothing
      '2026-11-24': { 'state.db.gz': gzipSync(sqliteFile()) },
      '2026-11-25': { 'state.db.gz': gzipSync(sqliteFile(false)), [OWNER_IDENTITY]: identityTarball() },
      '2026-11-26': corrupt,
      'lost+found': null,
    })
    const c = await findBackup(store, 'latest')
    expect(c.chosen?.name).toBe('2026-11-22')
    expect(c.seen).toBe(5)
    expect(c.unusable).toEqual([
      { name: '2026-11-23', why: 'it has no k3s/ folder (did the datastore job write nothing that night?)' },
      {
        name: '2026-11-24',
        why: 'k3s/ has no k3s-server-identity.tar.gz (token, tls, cred): a datastore alone cannot be restored',
      },
      { name: '2026-11-26', why: expect.stringMatching(/^state.db.gz does not decompress .*truncated or damaged$/) },
      { name: '2026-11-25', why: 'state.db.gz has no kine table: not a k3s datastore' },
    ])
  })

  it('none usable: no choice, every folder named; a missing directory says so', async () => {
    const c = await findBackup(nas({ '2026-11-26': { 'state.db.gz': Buffer.from('junk') } }), 'latest')
    expect(c.chosen).toBeUndefined()
    expect(c.unusable).toEqual([
      {
        name: '2026-11-26',
        why: 'k3s/ has no k3s-server-identity.tar.gz (token, tls, cred): a datastore alone cannot be restored',
      },
    ])
    expect((await findBackup(nas({}), 'latest')).chosen).toBeUndefined()
    await expect(findBackup(new LocalBackupStore(join(scratch, 'not-mounted')), 'latest')).rejects.toThrow(
      /k3s_backup_dir .*not-mounted does not exist \(is the NAS share mounted\?\)/,
    )
  })

  it('a named folder is taken as it is, or refused saying why', async () => {
    const store = nas({
      '2026-11-20': owner(),
      '2026-11-26': { 'state.db.gz': Buffer.from('x'), [OWNER_IDENTITY]: identityTarball() },
    })
    expect((await findBackup(store, '2026-11-20')).chosen?.name).toBe('2026-11-20')
    await expect(findBackup(store, '2026-11-26')).rejects.toThrow('backup 2026-11-26 in')
    await expect(findBackup(store, '2026-11-26')).rejects.toThrow(/cannot be used: state.db.gz is not gzip data/)
    await expect(findBackup(store, '2026-11-01')).rejects.toThrow(/no backup 2026-11-01 in/)
  })

  it("orders by when a backup was taken: a tool snapshot's time, an owner folder's date", () => {
    const f = (name: string, mtime: number) => ({
      name,
      hasK3s: true,
      toolMarker: name.includes('pi-provision'),
      files: [
        { name: 'state.db.gz', size: 10, mtime },
        { name: OWNER_IDENTITY, size: 10, mtime },
      ],
    })
    const { candidates } = sortBackups([
      f('2026-11-26', day(26)),
      f('2026-11-26T150000Z-pi-provision-upgrade', day(26)),
      f('2026-11-25', day(30)), // copied later: still counts as the 25th
    ])
    expect(candidates.map((c) => c.name)).toEqual([
      '2026-11-26T150000Z-pi-provision-upgrade',
      '2026-11-26',
      '2026-11-25',
    ])
  })
})

describe('backup-health: what site says of the newest backup', () => {
  const ctxFor = (dir: string, token = 'K10abc::server:s3cret', extra: Partial<Vars> = {}) =>
    ({
      host: 'pi-k3s',
      vars: { ...BUILTIN_DEFAULTS, k3s_backup_dir: dir, k3s_token_ref: 'op://v/k3s/token', ...extra },
      secrets: new MemorySecrets({ 'op://v/k3s/token': token }),
    }) as unknown as StepContext
  function night(dir: string, name: string, at: Date, b = { db: gzipSync(sqliteFile()), identity: identityTarball() }) {
    const k3s = join(dir, name, 'k3s')
    mkdirSync(k3s, { recursive: true })
    writeFileSync(join(k3s, 'state.db.gz'), b.db)
    writeFileSync(join(k3s, OWNER_IDENTITY), b.identity)
    for (const f of ['state.db.gz', OWNER_IDENTITY]) utimesSync(join(k3s, f), at, at)
  }
  const day = (d: Date) => d.toLocaleDateString('sv-SE')
  const ago = (h: number) => new Date(Date.now() - h * 3600_000)

  it('a fresh restorable nightly backup: no problem, and the ok line says what was checked', async () => {
    const dir = mkdtempSync(join(scratch, 'health-'))
    night(dir, day(ago(0)), ago(0))
    const r = await backupProblems(ctxFor(dir))
    expect(r.problems).toEqual([])
    expect(r.ok).toMatch(
      /^newest nightly backup \d{4}-\d{2}-\d{2} \(taken .*, \d+m ago\): state.db.gz integrity ok, kine 1 rows; token, tls, cred$/,
    )
  })

  it('stale, unrestorable, taken with another token, missing: each a sentence naming the backup', async () => {
    const stale = mkdtempSync(join(scratch, 'health-'))
    night(stale, day(ago(72)), ago(72))
    expect((await backupProblems(ctxFor(stale))).problems).toEqual([
      expect.stringMatching(
        /^the newest nightly backup in .* is \d{4}-\d{2}-\d{2} \(taken .*, 3\.0d ago\), older than backup_max_age \(36\.0h\): has the backup job stopped\?$/,
      ),
    ])
    expect((await backupProblems(ctxFor(stale, undefined, { backup_max_age: 4 * 86400 }))).problems).toEqual([])
    const corrupt = mkdtempSync(join(scratch, 'health-'))
    night(corrupt, day(ago(30)), ago(30))
    night(corrupt, day(ago(0)), ago(0), { db: Buffer.from('junk'), identity: identityTarball() })
    expect((await backupProblems(ctxFor(corrupt))).problems).toEqual([
      expect.stringMatching(
        /^the newest nightly backup \d{4}-\d{2}-\d{2} in .* is not restorable: state.db.gz is not gzip data$/,
      ),
    ])
    const fresh = mkdtempSync(join(scratch, 'health-'))
    night(fresh, day(ago(0)), ago(0))
    expect((await backupProblems(ctxFor(fresh, 'K10abc::server:other'))).problems).toEqual([
      expect.stringMatching(
        /was taken with another cluster token than the one at op:\/\/v\/k3s\/token: a restore would refuse it$/,
      ),
    ])
    expect((await backupProblems(ctxFor(join(scratch, 'unmounted')))).problems).toEqual([
      expect.stringMatching(/^k3s_backup_dir .*unmounted does not exist \(is the NAS share mounted\?\)$/),
    ])
    const none = mkdtempSync(join(scratch, 'health-'))
    expect((await backupProblems(ctxFor(none))).problems).toEqual([
      expect.stringMatching(/^no backup in .*: is the nightly backup job running\?$/),
    ])
  })

  it('a fresh tool snapshot does not hide a nightly job that stopped; without nightly folders it is judged itself', async () => {
    const dir = mkdtempSync(join(scratch, 'health-'))
    night(dir, day(ago(72)), ago(72))
    night(dir, snapshotName(ago(1), 'backup'), ago(1))
    expect((await backupProblems(ctxFor(dir))).problems).toEqual([expect.stringMatching(/older than backup_max_age/)])
    const only = mkdtempSync(join(scratch, 'health-'))
    night(only, snapshotName(ago(1), 'backup'), ago(1))
    const r = await backupProblems(ctxFor(only))
    expect(r.problems).toEqual([])
    expect(r.ok).toMatch(/^newest backup \d{4}-\d{2}-\d{2}T\d{6}Z-pi-provision-backup \(taken/)
    // A night whose folder has no k3s/ after the newest good one: the job failed since.
    const gap = mkdtempSync(join(scratch, 'health-'))
    night(gap, day(ago(30)), ago(30))
    mkdirSync(join(gap, day(ago(0))))
    expect((await backupProblems(ctxFor(gap))).problems).toEqual([
      expect.stringMatching(/is newer than .* but cannot be used: it has no k3s\/ folder/),
    ])
  })
})

describe('k3s_backup_dir in the inventory and -e', () => {
  const inv = (dir: string) =>
    `all:\n  vars:\n    k3s_backup_dir: ${JSON.stringify(dir)}\n  children:\n    server:\n      hosts:\n        pi-k3s: { address: 198.51.100.55 }\n`
  it('keeps user@host:/path as written, resolves a local path against the inventory, refuses a bad remote one at its place', () => {
    const remote = parseInventory(inv('backup@nas.lan:/volume1/k3s'), '/srv/inv/hosts.yaml')
    expect(hostVars(remote.hosts.get('pi-k3s')!).k3s_backup_dir).toBe('backup@nas.lan:/volume1/k3s')
    const local = parseInventory(inv('backups'), '/srv/inv/hosts.yaml')
    expect(hostVars(local.hosts.get('pi-k3s')!).k3s_backup_dir).toBe('/srv/inv/backups')
    let err: ProvisionError | undefined
    try {
      parseInventory(inv('backup@nas.lan:/volume1/$(reboot)'), '/srv/inv/hosts.yaml')
    } catch (e) {
      err = e as ProvisionError
    }
    expect(err?.message).toMatch(/^k3s_backup_dir: expected a local directory or user@host:\/absolute\/path/)
    expect(err?.place).toMatchObject({ file: '/srv/inv/hosts.yaml', line: 3 })
    expect(parseExtraVars(['k3s_backup_dir=pi@198.51.100.7:/srv/nas']).k3s_backup_dir).toBe('pi@198.51.100.7:/srv/nas')
    expect(() => parseExtraVars(['k3s_backup_dir=pi@nas:-oProxyCommand=x'])).toThrow(/-e k3s_backup_dir=/)
  })
})
