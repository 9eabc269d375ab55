// nas-mount: the worked example of docs/writing-a-role.md. What the owner does by hand on every node to have the
// NAS's NFS export at /mnt/nas: install nfs-common, make the mount point, add the /etc/fstab line (with
// _netdev,nofail,x-systemd.automount, so a NAS that is down never holds up a Pi's boot), daemon-reload so systemd
// makes its units from the new line, check it did, and start the automount so the share is there without a reboot.

import * as v from 'valibot'
import { defineFact, type Fact } from '../../lib/facts.ts'
import { defineGrammar, isAddress } from '../../lib/grammar.ts'
import { defineVars, flushHandlers, roleVars, type Role, type StepContext } from '../../lib/role.ts'
import { quote } from '../../lib/shell.ts'
import { aptPackages, lineInFile, planUnit, systemdReloadHandler, unitFact } from '../../lib/steps.ts'

// ---------------------------------------------------------------- the role's variables and their grammars

/** host:/path, the host an address or a name ([...] around an IPv6 address, as mount.nfs wants it). */
export function isNfsExport(s: string): boolean {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]/]+):(\/.*)$/.exec(s)
  if (!m || s.length > 1024) return false
  const host = m[1].startsWith('[') ? m[1].slice(1, -1) : m[1]
  // The path is one fstab field: no white space, no control characters, no "\" (fstab's escapes).
  return isAddress(host) && host.includes(':') === m[1].startsWith('[') && !/[\s\\\x00-\x1f\x7f]/.test(m[2])
}

/** Directories a mount must never hide. */
const SYSTEM_DIRS = [
  '/bin',
  '/boot',
  '/dev',
  '/etc',
  '/lib',
  '/proc',
  '/root',
  '/run',
  '/sbin',
  '/sys',
  '/tmp',
  '/usr',
  '/var',
]

/** An absolute, normalised path below "/" (no "//", "." or ".." parts, no trailing "/"), and not a system directory. */
export function isMountPoint(s: string): boolean {
  const parts = s.split('/').slice(1)
  return (
    s.length <= 1024 &&
    /^(\/[A-Za-z0-9._@+-]+)+$/.test(s) &&
    !parts.includes('.') &&
    !parts.includes('..') &&
    !SYSTEM_DIRS.includes(s)
  )
}

/** One mount option: name or name=value, no "," (one option per list item) and no white space. */
export const isMountOption = (s: string): boolean => s.length <= 256 && /^[A-Za-z0-9_][A-Za-z0-9_.=:+@/-]*$/.test(s)

// Grammars of this role's own, made like lib/grammar.ts's: a noun for messages and a valibot schema.
const NfsExport = defineGrammar(
  'NFS export',
  v.pipe(
    v.string('expected a string: host:/path'),
    v.check(
      isNfsExport,
      'expected host:/path (an address or host name, ":", an absolute path without spaces), like nas.lan:/volume1/data',
    ),
  ),
)
const MountPoint = defineGrammar(
  'mount point',
  v.pipe(
    v.string('expected a string: an absolute path'),
    v.check(
      isMountPoint,
      `expected an absolute path like /mnt/nas (letters, digits, "._@+-" between "/"; not ${SYSTEM_DIRS.join(', ')})`,
    ),
  ),
)
const MountOption = defineGrammar(
  'mount option',
  v.pipe(
    v.string('expected a string: one mount option'),
    v.check(
      isMountOption,
      'expected one mount option like soft or timeo=50 (no "," or spaces: one option per list item)',
    ),
  ),
)

export const NAS_VARS = defineVars({
  nas_export: {
    type: 'string',
    doc: 'the NFS export to mount on every node, host:/path',
    grammar: NfsExport,
    required: true,
  },
  nas_mount_point: { type: 'path', doc: 'where every node mounts it', grammar: MountPoint, default: '/mnt/nas' },
  nas_mount_options: {
    type: 'list',
    doc: 'NFS mount options, after _netdev,nofail,x-systemd.automount (which are always there)',
    grammar: MountOption,
    default: ['x-systemd.mount-timeout=30'],
  },
})

const nas = (ctx: StepContext) => roleVars(ctx, NAS_VARS)

// ---------------------------------------------------------------- what the steps compute (pure, unit-tested)

/** Never blocks a boot: mounted by systemd on first access, after the network, and a failure is no failed boot. */
export const BASE_OPTIONS = ['_netdev', 'nofail', 'x-systemd.automount']

/** The /etc/fstab line, byte for byte. */
export function fstabLine(exp: string, mountPoint: string, options: readonly string[]): string {
  const opts = [...BASE_OPTIONS, ...options.filter((o) => !BASE_OPTIONS.includes(o))]
  return `${exp} ${mountPoint} nfs ${[...new Set(opts)].join(',')} 0 0`
}

/**
 * The line of /etc/fstab this role owns: the one for this mount point, or for this export (rewritten, not added
 * twice).
 */
export function fstabMatch(exp: string, mountPoint: string): RegExp {
  const re = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  return new RegExp(`^(?:[^#\\s]\\S*\\s+${re(mountPoint)}\\s|${re(exp)}\\s)`)
}

/** The unit name systemd gives a path (systemd-escape --path --suffix=...): "/" -> "-", other bytes as \xNN. */
export function unitOfPath(path: string, suffix: 'mount' | 'automount'): string {
  const body = path.replace(/^\/+|\/+$/g, '')
  const escaped = [...Buffer.from(body, 'utf8')]
    .map((b, i) => {
      const c = String.fromCharCode(b)
      if (c === '/') return '-'
      return /[A-Za-z0-9:_]/.test(c) || (c === '.' && i > 0) ? c : `\\x${b.toString(16).padStart(2, '0')}`
    })
    .join('')
  return `${escaped || '-'}.${suffix}`
}

/**
 * What is at the mount point. Read from /proc/self/mountinfo first: a stat of a mounted share whose NAS is down can
 * hang.
 */
export type MountPointState = 'mount' | 'directory' | 'other' | 'absent'

export function mountPointFact(path: string): Fact<MountPointState> {
  const p = quote(path)
  return defineFact<MountPointState>(
    `mount-point:${path}`,
    `if awk -v ${quote(`p=${path}`)} '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; ` +
      'then echo mount; ' +
      `elif [ -d ${p} ]; then echo directory; elif [ -e ${p} ] || [ -L ${p} ]; then echo other; else echo absent; fi`,
    (r) => {
      const state = r.stdout.trim()
      return state === 'mount' || state === 'directory' || state === 'other' ? state : 'absent'
    },
  )
}

/** Whether systemd can automount here: its own test (a container, such as the lab's hosts, has no /dev/autofs). */
export const autofsFact = defineFact(
  'autofs',
  '[ -e /dev/autofs ] && echo yes || echo no',
  (r) => r.stdout.trim() === 'yes',
)

/** `systemctl show` of the generated units: where each was loaded from, and what starts the automount at boot. */
export function parseUnitShow(stdout: string): Record<string, string>[] {
  return stdout
    .trim()
    .split(/\n\s*\n/)
    .map((block) =>
      Object.fromEntries(
        block
          .split('\n')
          .filter((l) => l.includes('='))
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      ),
    )
}

// ---------------------------------------------------------------- the role

export const nasMount: Role = {
  name: 'nas-mount',
  vars: NAS_VARS,
  steps: [
    aptPackages('Install the NFS client', () => ({ present: ['nfs-common'] })),
    {
      name: 'Create the mount point',
      facts: (ctx) => [mountPointFact(nas(ctx).nas_mount_point)],
      async plan(ctx) {
        const path = nas(ctx).nas_mount_point
        const there = await ctx.facts.get(mountPointFact(path))
        if (there === 'mount' || there === 'directory') return null
        if (there === 'other') return { status: 'failed', message: `${path} exists and is not a directory` }
        return { summary: `create ${path}`, commands: [{ script: `mkdir -p ${quote(path)}` }] }
      },
    },
    lineInFile(
      'Add the NAS to /etc/fstab',
      (ctx) => {
        const { nas_export, nas_mount_point, nas_mount_options } = nas(ctx)
        return {
          path: '/etc/fstab',
          line: fstabLine(nas_export, nas_mount_point, nas_mount_options),
          match: fstabMatch(nas_export, nas_mount_point),
        }
      },
      { notify: ['Reload systemd units'] },
    ),
    flushHandlers('Tell systemd about the new line now'),
    {
      name: 'Check systemd made the mount from /etc/fstab',
      onlyForReal: 'systemd makes the units from the fstab line only at the daemon-reload',
      async plan(ctx) {
        const path = nas(ctx).nas_mount_point
        const units = [unitOfPath(path, 'mount'), unitOfPath(path, 'automount')]
        const r = await ctx.must(
          `systemctl show -p Id,LoadState,SourcePath,FragmentPath,WantedBy,RequiredBy ${units.map(quote).join(' ')}`,
        )
        const [mount, automount] = parseUnitShow(r.stdout)
        const fromFstab = (u: Record<string, string> | undefined) =>
          u?.LoadState === 'loaded' && u.SourcePath === '/etc/fstab'
        if (!fromFstab(mount) || !fromFstab(automount))
          return {
            status: 'failed',
            message: `systemd has no ${units.join(' and ')} from /etc/fstab (systemctl show says:\n${r.stdout.trim()})`,
          }
        const atBoot = `${automount.WantedBy} ${automount.RequiredBy}`.trim()
        if (!/\bremote-fs\.target\b/.test(atBoot))
          return {
            status: 'failed',
            message: `${units[1]} is not started at boot by remote-fs.target (wanted by: ${atBoot || 'nothing'})`,
          }
        return { status: 'ok', message: `${units[0]} from /etc/fstab; ${units[1]} started at boot by remote-fs.target` }
      },
    },
    {
      name: 'Start the automount, so the share is there without a reboot',
      facts: (ctx) => [autofsFact, unitFact(unitOfPath(nas(ctx).nas_mount_point, 'automount'))],
      async plan(ctx) {
        if (!(await ctx.facts.get(autofsFact)))
          return {
            status: 'skipped',
            message: 'systemd cannot automount on this host (no /dev/autofs, as in a container)',
          }
        const unit = unitOfPath(nas(ctx).nas_mount_point, 'automount')
        return planUnit(await ctx.facts.get(unitFact(unit)), { unit, active: true })
      },
    },
  ],
  handlers: [systemdReloadHandler('Reload systemd units')],
}
