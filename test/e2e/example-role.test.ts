// The worked example of docs/writing-a-role.md on the lab: playbooks/examples/nas.mts started as an executable (its
// shebang finds the project's zx and Node 24; PATH here has no node_modules/.bin and /usr/bin/node may be older),
// with the NAS variables in a copy of the lab inventory. The lab's hosts are systemd-nspawn containers on the
// controller's kernel: no NFS share is mounted there, and none is pretended; systemd there cannot even start an
// automount (no /dev/autofs), so the role's last step says so and is skipped (its plan on a Pi is unit-tested in
// test/unit/role-vars.test.ts). What is checked is what is real: the package, the mount point, the fstab line byte for
// byte, the units systemd generates from it after the reload, a rerun that changes nothing, --check that changes
// nothing, a bad value refused before any host is contacted.

import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { unitOfPath } from '../../roles/examples/nas-mount.ts'
import { DEFAULT_HOSTS, LAB_BRIDGE_IP, labDown, labUp } from '../lab/lab.ts'
import { LAB_INVENTORY, onHost, parseRecap, REPO } from './helpers.ts'

const PLAYBOOK = join(REPO, 'playbooks/examples/nas.mts')
/** No node_modules/.bin on PATH (npx vitest put one there): the playbook must find zx and Node by itself. */
const PLAIN_PATH = (process.env.PATH ?? '')
  .split(':')
  .filter((p) => !p.includes('node_modules'))
  .join(':')
// The lab's own controller address: nothing serves NFS there, and nothing here mounts it.
const NAS_EXPORT = `${LAB_BRIDGE_IP}:/volume1/data`
const LINE = `${NAS_EXPORT} /mnt/nas nfs _netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30 0 0\n`
const NO_AUTOFS =
  'Start the automount, so the share is there without a reboot (systemd cannot automount on this host (no /dev/autofs, as in a container))'

interface Run {
  code: number
  out: string
  recap: Record<string, Record<string, number>>
}

function nas(args: string[]): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(PLAYBOOK, args, {
      cwd: REPO,
      env: { ...process.env, PATH: PLAIN_PATH, CI: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    child.on('error', fail)
    child.on('close', (code) => done({ code: code ?? 255, out, recap: parseRecap(out) }))
  })
}

const dir = mkdtempSync(join(tmpdir(), 'nas-example-'))

/** The lab inventory with these lines added under all.vars; and where the first of them is (line, column of its value). */
function inventoryWith(name: string, lines: string): { file: string; line: number } {
  const text = readFileSync(LAB_INVENTORY, 'utf8')
  const at = text.indexOf('\n  vars:\n') + '\n  vars:\n'.length
  const file = join(dir, name)
  writeFileSync(file, text.slice(0, at) + lines + text.slice(at))
  return { file, line: text.slice(0, at).split('\n').length }
}

/** What the role could touch on a host, read through the lab (not the tool's SSH). */
function state(host: string): Promise<string> {
  return onHost(
    host,
    [
      'sha256sum /etc/fstab',
      '[ -e /mnt/nas ] && echo /mnt/nas exists || echo no /mnt/nas',
      "dpkg-query -W -f='${Status}\\n' nfs-common 2>/dev/null || echo nfs-common not installed",
      'ls /run/systemd/generator',
      'systemctl show -p LoadState -p ActiveState mnt-nas.mount mnt-nas.automount',
      'ls /var/lib/pi-provision/handlers 2>/dev/null; true',
    ].join('; '),
  )
}

/** SSH logins the host accepted so far (sshd's journal): a run that contacts no host leaves it as it is. */
async function logins(host: string): Promise<number> {
  return Number(
    (await onHost(host, "journalctl -q --no-pager -o cat _COMM=sshd | grep -c '^Accepted publickey' || true")).trim(),
  )
}

const good = () => inventoryWith('nas.yaml', `    nas_export: ${NAS_EXPORT}\n`).file

beforeAll(async () => {
  await labUp(DEFAULT_HOSTS, { fresh: true })
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('playbooks/examples/nas.mts (roles/examples/nas-mount.ts) on a fresh lab', () => {
  const fstabBefore: Record<string, string> = {}

  it('a bad nas_export is refused at file:line:col, and no host is contacted', async () => {
    const before = await Promise.all(DEFAULT_HOSTS.map(logins))
    const { file, line } = inventoryWith(
      'bad.yaml',
      '    nas_export: nas.lan/volume1/data\n    nas_mount_point: /mnt/nas/\n',
    )
    const run = await nas(['-i', file])
    expect(run.code, run.out).toBe(1)
    expect(run.out).toContain(
      `${file}:${line}:17: nas_export: expected host:/path (an address or host name, ":", an absolute path without spaces), like nas.lan:/volume1/data, got "nas.lan/volume1/data"`,
    )
    expect(run.out).toContain(`${file}:${line + 1}:22: nas_mount_point: expected an absolute path like /mnt/nas`)
    expect(run.out).not.toContain('PLAY RECAP')
    expect(await Promise.all(DEFAULT_HOSTS.map(logins))).toEqual(before)
  })

  it('--check says what it would do and leaves every host as it was', async () => {
    const before = Object.fromEntries(await Promise.all(DEFAULT_HOSTS.map(async (h) => [h, await state(h)])))
    for (const h of DEFAULT_HOSTS) fstabBefore[h] = await onHost(h, 'cat /etc/fstab')
    const run = await nas(['-i', good(), '--check', '--diff'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain('CHECK MODE: nothing will be changed.')
    for (const h of DEFAULT_HOSTS) {
      for (const said of [
        `changed: [${h}] nas-mount | Install the NFS client (would install nfs-common)`,
        `changed: [${h}] nas-mount | Create the mount point (would create /mnt/nas)`,
        `changed: [${h}] nas-mount | Add the NAS to /etc/fstab (would update /etc/fstab)`,
        `changed: [${h}] nas-mount | handler: Reload systemd units (would run systemctl daemon-reload)`,
        `skipping: [${h}] nas-mount | Check systemd made the mount from /etc/fstab (check mode: systemd makes the units from the fstab line only at the daemon-reload)`,
        `skipping: [${h}] nas-mount | ${NO_AUTOFS}`,
      ])
        expect(run.out, said).toContain(said)
      expect(await state(h), h).toBe(before[h])
    }
    expect(run.out).toContain(`+${LINE}`)
  })

  it('the run: nfs-common, the mount point, the fstab line byte for byte, and the units systemd made from it', async () => {
    const before = await Promise.all(DEFAULT_HOSTS.map(logins))
    // -v: an ok step's message (what the check found) is shown from -v on.
    const run = await nas(['-i', good(), '-v'])
    expect(run.code, run.out).toBe(0)
    expect(Object.keys(run.recap).sort()).toEqual([...DEFAULT_HOSTS].sort())
    // The positive control of the login count the first test relies on.
    const after = await Promise.all(DEFAULT_HOSTS.map(logins))
    DEFAULT_HOSTS.forEach((h, i) => expect(after[i], h).toBeGreaterThan(before[i]))
    for (const h of DEFAULT_HOSTS) {
      expect(run.out).toContain(`changed: [${h}] nas-mount | handler: Reload systemd units`)
      expect(run.out).toContain(
        `ok: [${h}] nas-mount | Check systemd made the mount from /etc/fstab (mnt-nas.mount from /etc/fstab; mnt-nas.automount started at boot by remote-fs.target)`,
      )
      expect(run.out).toContain(`skipping: [${h}] nas-mount | ${NO_AUTOFS}`)
      expect(await onHost(h, '[ -e /dev/autofs ] || echo no autofs here')).toBe('no autofs here\n')
      expect(await onHost(h, "dpkg-query -W -f='${Status}' nfs-common")).toBe('install ok installed')
      expect(await onHost(h, 'stat -c %F /mnt/nas')).toBe('directory\n')
      expect(await onHost(h, 'cat /etc/fstab')).toBe(fstabBefore[h] + LINE)
      expect(await onHost(h, 'systemctl show -p FragmentPath -p SourcePath mnt-nas.mount mnt-nas.automount')).toBe(
        'FragmentPath=/run/systemd/generator/mnt-nas.mount\nSourcePath=/etc/fstab\n\nFragmentPath=/run/systemd/generator/mnt-nas.automount\nSourcePath=/etc/fstab\n',
      )
      const unit = await onHost(h, 'systemctl cat mnt-nas.mount')
      expect(unit).toContain('# Automatically generated by systemd-fstab-generator')
      for (const l of [
        `What=${NAS_EXPORT}`,
        'Where=/mnt/nas',
        'Type=nfs',
        'Options=_netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30',
      ])
        expect(unit, l).toContain(`\n${l}\n`)
      // At boot: the generator links the automount into remote-fs.target (wants: nofail), so it is there after a reboot.
      expect(await onHost(h, 'readlink /run/systemd/generator/remote-fs.target.wants/mnt-nas.automount')).toBe(
        '../mnt-nas.automount\n',
      )
    }
  })

  it('the role names units as systemd-escape does', async () => {
    for (const path of ['/mnt/nas', '/srv/my-nas', '/mnt/.hidden/a+b@c_d', '/media/n\u00e4s'])
      expect(unitOfPath(path, 'automount'), path).toBe(
        (await onHost('pi-k3s', `systemd-escape --path --suffix=automount '${path}'`)).trim(),
      )
  })

  it('a second run changes nothing and reloads nothing', async () => {
    const run = await nas(['-i', good()])
    expect(run.code, run.out).toBe(0)
    for (const h of DEFAULT_HOSTS) expect(run.recap[h]?.changed, `${h}\n${run.out}`).toBe(0)
    expect(run.out).not.toContain('Reload systemd units')
  })
})
