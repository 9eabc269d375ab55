// Issues 14 and 15 on the lab: backups. backup.mts writes the owner's layout and --keep prunes only the tool's own
// snapshots; site warns about (and with --strict fails on) a stale or corrupted newest backup; a wiped server is
// rebuilt from a backup laid out exactly like the owner's nightly CronJob output, from a local directory and from
// user@host:/path on another lab host acting as the NAS; a corrupted backup, no backup and a stale backup each stop
// the rebuild before anything of k3s is on the server; backup.mts's own snapshot is restorable. The lab ends as
// the inventory wants it (a converged cluster), for the test files after this one.

import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { labDown, labExec, labWipe } from '../lab/lab.ts'
import { convergedLab, LAB_INVENTORY, onHost, runPlaybookCli, until } from './helpers.ts'

interface LabInventory {
  all: {
    vars: { k3s_backup_dir: string; ssh_user: string }
    children: Record<string, { hosts: Record<string, { address: string }> }>
  }
}
const INV = parse(readFileSync(LAB_INVENTORY, 'utf8')) as LabInventory
const NAS = INV.all.vars.k3s_backup_dir
const SERVER = Object.keys(INV.all.children.server.hosts)[0]
// An agent stands in for the NAS reached over SSH: its key is in the lab's known_hosts like every inventory host's.
const [NAS_HOST, { address: NAS_ADDRESS }] = Object.entries(INV.all.children.agent.hosts).at(-1)!
const NAS_USER = INV.all.vars.ssh_user
const NAS_PATH = `/home/${NAS_USER}/k3s-backups`
const REMOTE = `${NAS_USER}@${NAS_ADDRESS}:${NAS_PATH}`
const SNAPSHOTS = '/var/lib/rancher/k3s/server/pi-provision-snapshots'
const TOOL_NAME = /^\d{4}-\d{2}-\d{2}T\d{6}Z-pi-provision-backup$/

const scratch = mkdtempSync(join(tmpdir(), 'backup-lab-'))
const dayName = (d: Date) => d.toLocaleDateString('sv-SE') // YYYY-MM-DD, the controller's day
const daysAgo = (n: number) => new Date(Date.now() - n * 86_400_000)

/** A fresh directory for k3s_backup_dir (-e), so each case sees only the backups it made. */
function freshDir(name: string): string {
  const d = join(scratch, name)
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  return d
}

/**
 * The owner's 02:15 CronJob, as it writes a night's folder: a sqlite3 .backup of state.db, gzip -9, and
 * tar czf of token, tls and cred, as {date}/k3s/state.db.gz and {date}/k3s/k3s-server-identity.tar.gz.
 */
async function ownerBackup(): Promise<{ db: Buffer; identity: Buffer }> {
  const out = await onHost(
    SERVER,
    [
      'set -e',
      't=$(mktemp -d)',
      'sqlite3 -cmd ".timeout 10000" /var/lib/rancher/k3s/server/db/state.db ".backup $t/state.db"',
      'sqlite3 "$t/state.db" "PRAGMA integrity_check" | grep -qx ok',
      'gzip -9 "$t/state.db"',
      'tar -czf "$t/k3s-server-identity.tar.gz" -C /var/lib/rancher/k3s/server token tls cred',
      'base64 -w0 "$t/state.db.gz"; echo; base64 -w0 "$t/k3s-server-identity.tar.gz"; echo',
      'rm -rf "$t"',
    ].join('\n'),
  )
  const [db, identity] = out.trim().split('\n')
  return { db: Buffer.from(db, 'base64'), identity: Buffer.from(identity, 'base64') }
}

/** A night's folder in a local directory; `at` sets the files' time (the night it was taken). */
function writeNight(dir: string, name: string, b: { db: Buffer; identity: Buffer }, at = new Date()): string {
  const k3s = join(dir, name, 'k3s')
  mkdirSync(k3s, { recursive: true })
  for (const [f, data] of [
    ['state.db.gz', b.db],
    ['k3s-server-identity.tar.gz', b.identity],
  ] as const) {
    writeFileSync(join(k3s, f), data)
    utimesSync(join(k3s, f), at, at)
  }
  return k3s
}

/** What sqlite3 on the controller says of a gzip'd datastore: integrity_check, and whether it has a kine table. */
function sqliteSays(gz: Buffer): { integrity: string; kine: string } {
  const f = join(mkdtempSync(join(scratch, 'db-')), 'state.db')
  writeFileSync(f, gunzipSync(gz))
  const q = (sql: string) => execFileSync('sqlite3', [f, sql], { encoding: 'utf8' }).trim()
  return { integrity: q('PRAGMA integrity_check'), kine: q("SELECT name FROM sqlite_master WHERE name = 'kine'") }
}

const kubectl = (args: string) => onHost(SERVER, `k3s kubectl ${args}`)
const allReady = () =>
  until('every node Ready', 180_000, async () => {
    const items = (
      JSON.parse(await kubectl('get nodes -o json')) as {
        items: { status: { conditions: { type: string; status: string }[] } }[]
      }
    ).items
    const n = Object.values(INV.all.children).reduce((s, g) => s + Object.keys(g.hosts).length, 0)
    return items.length === n &&
      items.every((i) => i.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True'))
      ? true
      : undefined
  })
/** What a refused rebuild must leave: nothing of k3s on the server (no datastore, token, config, binary or unit). */
const k3sTraces = () =>
  onHost(
    SERVER,
    'for p in /var/lib/rancher/k3s/server/db/state.db /var/lib/rancher/k3s/server/token /etc/rancher/k3s/config.yaml /usr/local/bin/k3s /etc/systemd/system/k3s.service; do [ -e "$p" ] && echo "$p"; done; true',
  )
const recapChanged = (run: { recap: Record<string, Record<string, number>> }) =>
  Object.values(run.recap).reduce((s, c) => s + (c.changed ?? 0), 0)

beforeAll(async () => {
  rmSync(NAS, { recursive: true, force: true })
  await convergedLab()
  await onHost(NAS_HOST, `rm -rf ${NAS_PATH}`)
}, 900_000)

afterAll(async () => {
  rmSync(scratch, { recursive: true, force: true })
  await labDown()
})

describe('backup.mts', () => {
  it("writes the owner's layout, kept on the server and in k3s_backup_dir, restorable by the owner's own tools", async () => {
    await kubectl('create namespace before-backup')
    const run = await runPlaybookCli('backup', [])
    expect(run.code, run.out).toBe(0)
    const names = readdirSync(NAS)
    expect(names).toHaveLength(1)
    const [name] = names
    expect(name).toMatch(TOOL_NAME)
    expect(run.out).toContain(`changed: [${SERVER}] k3s-backup | Take a datastore snapshot (backup)`)
    expect(run.out).toMatch(
      new RegExp(
        `took snapshot ${name} \\(state\\.db\\.gz [\\d.]+ MB, integrity ok, kine; token, tls, cred\\) in ${SNAPSHOTS}/${name} and ${NAS}/${name}`,
      ),
    )
    expect(readdirSync(join(NAS, name)).sort()).toEqual(['k3s', 'pi-provision-snapshot.json'])
    expect(readdirSync(join(NAS, name, 'k3s')).sort()).toEqual(['k3s-server-identity.tar.gz', 'state.db.gz'])
    const gz = readFileSync(join(NAS, name, 'k3s', 'state.db.gz'))
    // gzip -9 (the XFL byte of a maximum-compression gzip is 2), and what the sqlite3 shell makes of it.
    expect(gz[8]).toBe(2)
    expect(sqliteSays(gz)).toEqual({ integrity: 'ok', kine: 'kine' })
    const f = join(scratch, 'restored.db')
    writeFileSync(f, gunzipSync(gz))
    expect(
      execFileSync('sqlite3', [f, "SELECT count(*) FROM objects WHERE name = 'before-backup'"], {
        encoding: 'utf8',
      }).trim(),
    ).toBe('1')
    const tarList = execFileSync('tar', ['-tzf', join(NAS, name, 'k3s', 'k3s-server-identity.tar.gz')], {
      encoding: 'utf8',
    })
    expect(tarList.split('\n')).toEqual(expect.arrayContaining(['token', 'tls/', 'tls/server-ca.crt', 'cred/']))
    const token = execFileSync('tar', ['-xzOf', join(NAS, name, 'k3s', 'k3s-server-identity.tar.gz'), 'token'], {
      encoding: 'utf8',
    })
    expect(token).toBe(await onHost(SERVER, 'cat /var/lib/rancher/k3s/server/token'))
    // Its files are the owner's only on the controller; on the server the snapshot dir is root's only.
    expect(statSync(join(NAS, name, 'k3s', 'state.db.gz')).mode & 0o077).toBe(0)
    expect(await onHost(SERVER, `stat -c '%a %U' ${SNAPSHOTS}; ls ${SNAPSHOTS}`)).toBe(`700 root\n${name}\n`)
    // The server keeps the same bytes.
    const onServer = await onHost(SERVER, `sha256sum < ${SNAPSHOTS}/${name}/k3s/state.db.gz`)
    expect(onServer.split(' ')[0]).toBe(createHash('sha256').update(gz).digest('hex'))
    // The token never reached the output.
    expect(run.out).not.toContain(token.trim().split('::server:')[1])
  })

  it("--check takes no snapshot; --keep N prunes only the tool's own snapshots, never the owner's", async () => {
    const b = await ownerBackup()
    writeNight(NAS, dayName(daysAgo(1)), b, daysAgo(1))
    // A folder named like a tool snapshot but without the tool's marker (made by hand): never pruned.
    const lookAlike = '2026-01-02T030405Z-pi-provision-backup'
    writeNight(NAS, lookAlike, b)
    mkdirSync(join(NAS, 'photos'))
    const check = await runPlaybookCli('backup', ['--check', '--keep', '1'])
    expect(check.code, check.out).toBe(0)
    expect(check.out).toMatch(
      new RegExp(
        `changed: \\[${SERVER}\\] k3s-backup \\| Take a datastore snapshot \\(backup\\).*\\(would snapshot the datastore into`,
      ),
    )
    expect(readdirSync(NAS).filter((n) => TOOL_NAME.test(n))).toHaveLength(2) // the first one and the look-alike
    for (let i = 0; i < 2; i++) {
      const again = await runPlaybookCli('backup', [])
      expect(again.code, again.out).toBe(0)
    }
    const tool = () =>
      readdirSync(NAS)
        .filter((n) => TOOL_NAME.test(n) && n !== lookAlike)
        .sort()
    expect(tool()).toHaveLength(3)
    const before = tool()
    const keep = await runPlaybookCli('backup', ['--keep', '2'])
    expect(keep.code, keep.out).toBe(0)
    const after = tool()
    expect(after).toHaveLength(2)
    // The newest two: the one this run took and the one before it.
    expect(after[0]).toBe(before[2])
    expect(after[1] > before[2]).toBe(true)
    expect(keep.out).toContain(
      `remove 2 on the server (${before[1]}, ${before[0]}) and 2 in ${NAS} (${before[1]}, ${before[0]}), keeping the newest 2`,
    )
    expect(readdirSync(NAS).sort()).toEqual([...after, dayName(daysAgo(1)), lookAlike, 'photos'].sort())
    expect((await onHost(SERVER, `ls ${SNAPSHOTS}`)).trim().split('\n')).toEqual(after)
    // --check names what --keep 1 would remove, and removes nothing.
    const dry = await runPlaybookCli('backup', ['--keep', '1', '--check'])
    expect(dry.code, dry.out).toBe(0)
    expect(dry.out).toContain(
      `would remove 1 on the server (${after[0]}) and 1 in ${NAS} (${after[0]}), keeping the newest 1`,
    )
    expect(tool()).toEqual(after)
    // Nothing half-written or half-removed is left behind.
    expect(readdirSync(NAS).filter((n) => n.startsWith('.'))).toEqual([])
    expect(await onHost(SERVER, `ls -A ${SNAPSHOTS}`)).toBe(`${after.join('\n')}\n`)
  })
})

describe('backup freshness in site', () => {
  const site = (dir: string, more: string[] = []) => runPlaybookCli('site', ['-e', `k3s_backup_dir=${dir}`, ...more])
  const checkOnly = (dir: string, more: string[] = []) =>
    runPlaybookCli('site', ['-t', 'backup-health', '-e', `k3s_backup_dir=${dir}`, ...more])

  it('a fresh, restorable nightly backup: ok, and the whole site run changes nothing', async () => {
    const dir = freshDir('fresh')
    writeNight(dir, dayName(new Date()), await ownerBackup())
    const run = await site(dir, ['-v']) // ok lines carry their message from -v
    expect(run.code, run.out).toBe(0)
    expect(recapChanged(run)).toBe(0)
    expect(run.out).toMatch(
      new RegExp(
        `ok: \\[${SERVER}\\] backup-health \\| Check the newest k3s backup .*newest nightly backup ${dayName(new Date())} \\(taken .*, \\d+m ago\\): state\\.db\\.gz integrity ok, kine \\d+ rows; token, tls, cred`,
      ),
    )
    expect(run.out).not.toContain('backup check:')
  })

  it('a stale newest backup: site warns, --strict fails', async () => {
    const dir = freshDir('stale')
    const old = dayName(daysAgo(3))
    writeNight(dir, old, await ownerBackup(), daysAgo(3))
    const run = await site(dir)
    expect(run.code, run.out).toBe(0)
    expect(run.out).toMatch(
      new RegExp(
        `WARNING: \\[${SERVER}\\] backup check: the newest nightly backup in ${dir} is ${old} \\(taken .*, [\\d.]+d ago\\), older than backup_max_age \\(36\\.0h\\): has the backup job stopped\\?`,
      ),
    )
    const strict = await checkOnly(dir, ['--strict'])
    expect(strict.code, strict.out).toBe(2)
    expect(strict.out).toMatch(
      new RegExp(`FAILED: \\[${SERVER}\\] backup-health \\| .*--strict: the newest nightly backup in ${dir} is ${old}`),
    )
    // A larger backup_max_age takes it.
    const lenient = await checkOnly(dir, ['--strict', '-e', 'backup_max_age=5d'])
    expect(lenient.code, lenient.out).toBe(0)
  })

  it('a corrupted newest backup: site warns naming it and why, --strict fails', async () => {
    const dir = freshDir('corrupt')
    const b = await ownerBackup()
    writeNight(dir, dayName(daysAgo(1)), b, daysAgo(1))
    writeNight(dir, dayName(new Date()), { db: b.db.subarray(0, Math.floor(b.db.length / 2)), identity: b.identity })
    const run = await checkOnly(dir)
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(
      `WARNING: [${SERVER}] backup check: the newest nightly backup ${dayName(new Date())} in ${dir} is not restorable: state.db.gz does not decompress`,
    )
    const strict = await checkOnly(dir, ['--strict'])
    expect(strict.code, strict.out).toBe(2)
    expect(strict.out).toContain('is not restorable: state.db.gz does not decompress')
  })

  it('backups on a NAS over SSH (user@host:/path) are checked the same way', async () => {
    const b = await ownerBackup()
    const night = `${NAS_PATH}/${dayName(new Date())}/k3s`
    await labExec(NAS_HOST, `set -e; install -d -o ${NAS_USER} ${NAS_PATH} ${NAS_PATH}/${dayName(new Date())} ${night}`)
    for (const [f, data] of [
      ['state.db.gz', b.db],
      ['k3s-server-identity.tar.gz', b.identity],
    ] as const) {
      const r = await labExec(NAS_HOST, `base64 -d > ${night}/${f} && chown ${NAS_USER} ${night}/${f}`, {
        input: data.toString('base64'),
      })
      expect(r.code, r.stderr).toBe(0)
    }
    const run = await checkOnly(REMOTE, ['--strict', '-v'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(`newest nightly backup ${dayName(new Date())} (taken`)
    // Missing: a warning naming the directory, not an unreachable host.
    const missing = await checkOnly(`${REMOTE}/not-there`)
    expect(missing.code, missing.out).toBe(0)
    expect(missing.out).toContain(`backup check: k3s_backup_dir ${REMOTE}/not-there does not exist`)
  })
})

describe('rebuilding the server from the backups', () => {
  it("from a local directory laid out exactly like the owner's CronJob output", async () => {
    await kubectl('create namespace before-failure-local')
    const caHash = await onHost(SERVER, 'sha256sum < /var/lib/rancher/k3s/server/tls/server-ca.crt')
    const dir = freshDir('rebuild-local')
    const older = join(writeNight(dir, dayName(daysAgo(2)), await ownerBackup(), daysAgo(2)), '..')
    writeNight(dir, dayName(new Date()), await ownerBackup())
    await labWipe(SERVER)
    const run = await runPlaybookCli('rebuild', [SERVER, '-e', `k3s_backup_dir=${dir}`])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toMatch(
      new RegExp(
        `changed: \\[${SERVER}\\] k3s-server \\| Restore the datastore .*\\(restored backup ${dayName(new Date())} \\(datastore, token, tls, cred\\), taken \\d{4}-\\d{2}-\\d{2} \\d{2}:\\d{2}, \\d+m ago\\)`,
      ),
    )
    expect(existsSync(older)).toBe(true)
    expect(await onHost(SERVER, 'sha256sum < /var/lib/rancher/k3s/server/tls/server-ca.crt')).toBe(caHash)
    await allReady()
    expect(await kubectl('get namespace before-failure-local -o name')).toBe('namespace/before-failure-local\n')
  })

  it('from user@host:/path on another lab host acting as the NAS (strict host key, the inventory key)', async () => {
    await kubectl('create namespace before-failure-remote')
    const b = await ownerBackup()
    const name = `${dayName(new Date())}-remote`
    const night = `${NAS_PATH}/${name}/k3s`
    await labExec(NAS_HOST, `set -e; install -d -o ${NAS_USER} ${NAS_PATH}/${name} ${night}`)
    for (const [f, data] of [
      ['state.db.gz', b.db],
      ['k3s-server-identity.tar.gz', b.identity],
    ] as const)
      await labExec(NAS_HOST, `base64 -d > ${night}/${f} && chown ${NAS_USER} ${night}/${f}`, {
        input: data.toString('base64'),
      })
    await labWipe(SERVER)
    const run = await runPlaybookCli('rebuild', [SERVER, '-e', `k3s_backup_dir=${REMOTE}`])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(`(restored backup ${name} (datastore, token, tls, cred), taken `)
    await allReady()
    expect(await kubectl('get namespace before-failure-remote -o name')).toBe('namespace/before-failure-remote\n')
  })

  it('refused before anything of k3s is on the server: a corrupted state.db.gz, no backup, a stale one; then latest-anyway', async () => {
    const good = await ownerBackup()
    await labWipe(SERVER)

    // The only backup's state.db.gz is damaged: named with why, and the rebuild stops.
    const corrupt = freshDir('refuse-corrupt')
    const damaged = Buffer.from(good.db)
    damaged.fill(0, 40, Math.min(damaged.length, 4000))
    writeNight(corrupt, dayName(new Date()), { db: damaged, identity: good.identity })
    const c = await runPlaybookCli('rebuild', [SERVER, '-e', `k3s_backup_dir=${corrupt}`])
    expect(c.code, c.out).toBe(2)
    expect(c.out).toMatch(
      new RegExp(
        `WARNING: \\[${SERVER}\\] backup ${dayName(new Date())} in ${corrupt} cannot be used: state\\.db\\.gz (does not decompress|is not a SQLite database|: integrity_check)`,
      ),
    )
    expect(c.out).toContain(
      `no usable backup in ${corrupt} (1 folder looked like backups, none usable: see the warnings above); nothing was changed on ${SERVER}`,
    )
    expect(c.out).toContain('-e k3s_restore=none to start the server with an EMPTY datastore')
    expect(await k3sTraces()).toBe('')

    // No backup at all.
    const empty = freshDir('refuse-empty')
    const e = await runPlaybookCli('rebuild', [SERVER, '-e', `k3s_backup_dir=${empty}`])
    expect(e.code, e.out).toBe(2)
    expect(e.out).toContain(
      `no usable backup in ${empty} (0 folders looked like backups); nothing was changed on ${SERVER}`,
    )
    expect(await k3sTraces()).toBe('')

    // Only a backup three days old: asks for latest-anyway, which then restores it.
    const stale = freshDir('refuse-stale')
    const old = dayName(daysAgo(3))
    writeNight(stale, old, good, daysAgo(3))
    const s = await runPlaybookCli('rebuild', [SERVER, '-e', `k3s_backup_dir=${stale}`])
    expect(s.code, s.out).toBe(2)
    expect(s.out).toMatch(
      new RegExp(
        `the newest usable backup in ${stale} is ${old} \\(taken .*, [\\d.]+d ago\\), older than backup_max_age \\(36\\.0h\\)`,
      ),
    )
    expect(s.out).toContain('-e k3s_restore=latest-anyway')
    expect(await k3sTraces()).toBe('')
    const anyway = await runPlaybookCli('rebuild', [
      SERVER,
      '-e',
      `k3s_backup_dir=${stale}`,
      '-e',
      'k3s_restore=latest-anyway',
    ])
    expect(anyway.code, anyway.out).toBe(0)
    expect(anyway.out).toContain(`(restored backup ${old} (datastore, token, tls, cred), taken `)
    await allReady()
  })

  it("backup.mts's own snapshot restores a wiped server; then site changes nothing", async () => {
    await kubectl('create namespace before-snapshot')
    const snap = await runPlaybookCli('backup', [])
    expect(snap.code, snap.out).toBe(0)
    const newest = readdirSync(NAS)
      .filter((n) => TOOL_NAME.test(n))
      .sort()
      .at(-1)!
    await labWipe(SERVER)
    const run = await runPlaybookCli('rebuild', [SERVER])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(`(restored backup ${newest} (datastore, token, tls, cred), taken `)
    await allReady()
    expect(await kubectl('get namespace before-snapshot -o name')).toBe('namespace/before-snapshot\n')
    const site = await runPlaybookCli('site', [])
    expect(site.code, site.out).toBe(0)
    expect(recapChanged(site), site.out).toBe(0)
  })
})
