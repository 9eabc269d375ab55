// Role-declared variables (Role.vars): known to the inventory and -e of a playbook whose roles declare them,
// checked with the same positions, all-at-once reporting and did-you-mean as the built-in ones, before any host is
// contacted; collisions are playbook errors; steps read them typed (roleVars). And the worked example's own pieces
// (roles/examples/nas-mount.ts): its grammars, its fstab line, unit names, and what it plans on a fresh host.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, expectTypeOf, it } from 'vitest'
import { runCli } from '../../lib/cli.ts'
import { DebPackage, Port, SecretRef } from '../../lib/grammar.ts'
import { parseExtraVars } from '../../lib/extra-vars.ts'
import { parseInventory } from '../../lib/inventory.ts'
import { kubectl, kubeFact, kubeObjects } from '../../lib/kube.ts'
import { registerSecret, resetSecretsForTest } from '../../lib/mask.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { defineVars, roleVars, type Playbook, type Role, type Step } from '../../lib/role.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { declaredVars } from '../../lib/declared-vars.ts'
import type { Vars } from '../../lib/vars.ts'
import {
  fstabLine,
  fstabMatch,
  isMountOption,
  isMountPoint,
  isNfsExport,
  NAS_VARS,
  nasMount,
  parseUnitShow,
  unitOfPath,
} from '../../roles/examples/nas-mount.ts'
import { answerBatch, FakeConnection, MemorySecrets, thrown } from './fakes.ts'

const INV = (vars: string): string => `all:
  vars:
    secrets_backend: file
    secrets_file: /nonexistent/secrets.yaml
${vars}  children:
    server:
      hosts:
        s1: { address: 127.0.0.11 }
    agent:
      hosts:
        a1: { address: 127.0.0.12 }
`
const declared = declaredVars([nasMount])
const host = (text: string, name = 's1') => parseInventory(text, 'inv.yaml', { declared }).hosts.get(name)!

describe('declared variables in the inventory', () => {
  it('are accepted and converted like built-in ones (a list from a comma string), and reach the hosts with group < host', () => {
    const text = `all:
  vars:
    nas_export: nas.lan:/volume1/data
    nas_mount_options: soft, timeo=50
  children:
    server:
      hosts:
        s1:
          address: 127.0.0.11
          nas_mount_point: /srv/nas
`
    expect(host(text).vars).toMatchObject({
      nas_export: 'nas.lan:/volume1/data',
      nas_mount_options: ['soft', 'timeo=50'],
      nas_mount_point: '/srv/nas',
    })
  })

  it('a bad value is refused at file:line:col with what was expected, every problem of the file at once', () => {
    const text = INV(
      '    nas_export: nas.lan/volume1\n    nas_mount_point: /etc\n    nas_mount_options: [soft, "a,b"]\n    ssh_port: 0\n',
    )
    const e = thrown(() => parseInventory(text, 'inv.yaml', { declared }))
    expect(e.kind).toBe('inventory')
    expect(e.describe()).toBe(
      [
        'inv.yaml: 4 problems',
        'inv.yaml:5:17: nas_export: expected host:/path (an address or host name, ":", an absolute path without spaces), like nas.lan:/volume1/data, got "nas.lan/volume1"',
        'inv.yaml:6:22: nas_mount_point: expected an absolute path like /mnt/nas (letters, digits, "._@+-" between "/"; not /bin, /boot, /dev, /etc, /lib, /proc, /root, /run, /sbin, /sys, /tmp, /usr, /var), got "/etc"',
        'inv.yaml:7:31: nas_mount_options: mount option "a,b": expected one mount option like soft or timeo=50 (no "," or spaces: one option per list item)',
        'inv.yaml:8:15: ssh_port: expected a port number 1-65535, got 0',
      ].join('\n'),
    )
  })

  it('an unknown name is still refused, and did-you-mean knows the declared names', () => {
    const e = thrown(() => parseInventory(INV('    nas_exprot: nas.lan:/data\n'), 'inv.yaml', { declared }))
    expect(e.describe()).toBe(
      'inv.yaml:5:5: unknown variable "nas_exprot" in vars of group "all"\n  hint: did you mean "nas_export"?',
    )
    // Built-in names are still suggested with declared ones around.
    expect(thrown(() => parseInventory(INV('    ssh_prot: 22\n'), 'inv.yaml', { declared })).hint).toBe(
      'did you mean "ssh_port"?',
    )
  })

  it('without the declaration (a playbook without the role) the name is unknown', () => {
    const e = thrown(() => parseInventory(INV('    nas_export: nas.lan:/data\n'), 'inv.yaml'))
    expect(e.describe()).toBe(
      'inv.yaml:5:5: unknown variable "nas_export" in vars of group "all"\n  hint: known variables: see README "Inventory variables"',
    )
  })

  it('a host-side path variable is kept as written (only the built-in controller paths are taken relative to the inventory)', () => {
    expect(host(INV('    nas_mount_point: /mnt/media\n')).vars.nas_mount_point).toBe('/mnt/media')
  })
})

describe('declared variables with -e', () => {
  it('are accepted and converted', () => {
    expect(parseExtraVars(['nas_export=192.0.2.5:/export', 'nas_mount_options=soft,timeo=50'], { declared })).toEqual({
      nas_export: '192.0.2.5:/export',
      nas_mount_options: ['soft', 'timeo=50'],
    })
  })

  it('bad values and unknown names are refused together, each naming its flag; did-you-mean knows declared names', () => {
    const e = thrown(() =>
      parseExtraVars(['nas_export=nas.lan', 'nas_mount_pint=/mnt/x', 'nas_mount_options=a b'], { declared }),
    )
    expect(e.kind).toBe('usage')
    expect(e.describe()).toBe(
      [
        '-e: 3 problems',
        '-e nas_export=nas.lan: expected host:/path (an address or host name, ":", an absolute path without spaces), like nas.lan:/volume1/data, got "nas.lan"',
        '-e nas_mount_pint=/mnt/x: unknown variable\n  hint: did you mean "nas_mount_point"?',
        '-e nas_mount_options=a b: mount option "a b": expected one mount option like soft or timeo=50 (no "," or spaces: one option per list item)',
      ].join('\n'),
    )
    expect(thrown(() => parseExtraVars(['nas_export=nas.lan:/x'])).describe()).toBe(
      '-e nas_export=nas.lan:/x: unknown variable',
    )
  })
})

describe("declaredVars: the playbook's declarations checked", () => {
  const role = (name: string, vars: Role['vars']): Role => ({ name, vars, steps: [] })

  it("a name of a built-in variable or of Ansible's synonym for one is refused, naming the role and the built-in", () => {
    const e = thrown(() =>
      declaredVars([
        role('backup', { ssh_port: { type: 'int', doc: 'port of the backup server' } }),
        role('b2', { ansible_user: { type: 'string', doc: 'x' } }),
      ]),
    )
    expect(e.kind).toBe('usage')
    expect(e.problems.map((p) => p.describe())).toEqual([
      'role backup declares variable "ssh_port", which is a built-in variable (SSH port)\n  hint: read the built-in one as ctx.vars.ssh_port, or give the role\'s own another name (e.g. backup_ssh_port)',
      'role b2 declares variable "ansible_user", which is Ansible\'s name for the built-in variable ssh_user\n  hint: give it another name',
    ])
  })

  it('two roles declaring one name with different specs are refused, naming both; the same spec twice is one variable', () => {
    const shared = { type: 'string', doc: 'x', grammar: DebPackage } as const
    expect(
      declaredVars([
        role('a', { pkg: shared }),
        role('b', { pkg: shared }),
        role('c', { pkg: { ...shared, doc: 'said otherwise' } }),
      ]),
    ).toEqual({ pkg: shared })
    const e = thrown(() =>
      declaredVars([role('a', { pkg: shared }), role('b', { pkg: { type: 'list', doc: 'x', grammar: DebPackage } })]),
    )
    expect(e.describe()).toBe(
      'roles a and b both declare variable "pkg", with different specs (type string and list)\n  hint: one variable has one spec: declare it once (export the spec and use it in both roles), or give one of them another name',
    )
    expect(
      thrown(() =>
        declaredVars([
          role('a', { port: { type: 'int', doc: 'x', grammar: Port } }),
          role('b', { port: { type: 'int', doc: 'x' } }),
        ]),
      ).message,
    ).toBe('roles a and b both declare variable "port", with different specs (their grammar differs)')
  })

  it('a default its own spec refuses, a required variable with a default, and a name -e cannot carry are refused', () => {
    const e = thrown(() =>
      declaredVars([
        role('r', {
          backup_port: { type: 'int', doc: 'x', grammar: Port, default: 70000 },
          backup_dir: { type: 'path', doc: 'x', required: true, default: '/srv' },
          'Backup-Host': { type: 'string', doc: 'x' },
        }),
      ]),
    )
    expect(e.problems.map((p) => p.message)).toEqual([
      'role r declares variable "backup_port" with a default its own spec refuses: expected a port number 1-65535, got 70000',
      'role r declares variable "backup_dir" as required and with a default: a variable with a default is never missing',
      'role r declares variable "Backup-Host": expected a name of lowercase letters, digits and "_", starting with a letter (at most 64)',
    ])
  })
})

describe("roleVars: typed reading of a role's variables", () => {
  const SPECS = defineVars({
    backup_host: { type: 'string', doc: 'x', required: true },
    backup_port: { type: 'int', doc: 'x', grammar: Port, default: 873 },
    backup_paths: { type: 'list', doc: 'x', default: ['/etc'] },
    backup_mode: { type: 'string', doc: 'x', choices: ['push', 'pull'], default: 'push' },
    backup_verbose: { type: 'bool', doc: 'x' },
  })
  const vars = (set: Record<string, unknown>) => ({ host: 'h1', vars: { ...set } as unknown as Vars })

  it("the inventory's or -e's value, else the declared default; typed by the declaration", () => {
    const v = roleVars(vars({ backup_host: 'nas', backup_port: 2222 }), SPECS)
    expect(v).toEqual({
      backup_host: 'nas',
      backup_port: 2222,
      backup_paths: ['/etc'],
      backup_mode: 'push',
      backup_verbose: undefined,
    })
    expectTypeOf(v.backup_host).toEqualTypeOf<string>()
    expectTypeOf(v.backup_port).toEqualTypeOf<number>()
    expectTypeOf(v.backup_paths).toEqualTypeOf<readonly unknown[]>()
    expectTypeOf(v.backup_mode).toEqualTypeOf<'push' | 'pull'>()
    expectTypeOf(v.backup_verbose).toEqualTypeOf<boolean | undefined>()
    expectTypeOf(roleVars(vars({ nas_export: 'nas:/x' }), NAS_VARS)).toEqualTypeOf<{
      readonly nas_export: string
      readonly nas_mount_point: string
      readonly nas_mount_options: readonly string[]
    }>()
  })

  it('a default of the wrong type does not compile', () => {
    // @ts-expect-error: backup_port is an int
    defineVars({ backup_port: { type: 'int', doc: 'x', default: '873' } })
  })

  it('a required variable that is missing fails the step naming it (the command line refuses that earlier)', () => {
    expect(thrown(() => roleVars(vars({}), SPECS)).describe()).toBe(
      'h1: variable backup_host is not set (x)\n  hint: set it in the inventory or with -e backup_host=...',
    )
  })
})

describe('the command line with a role that declares variables', () => {
  const refuse = () => {
    throw new Error('no connection may be opened')
  }
  const inventoryFile = (vars: string): string => {
    const file = join(mkdtempSync(join(tmpdir(), 'role-vars-')), 'inv.yaml')
    writeFileSync(file, INV(vars))
    return file
  }
  const SPECS = defineVars({
    greeting: { type: 'string', doc: 'what to say', choices: ['hello', 'hi'], required: true },
    times: { type: 'int', doc: 'how often', default: 1 },
  })
  const seen: string[] = []
  const greeter: Role = {
    name: 'greeter',
    vars: SPECS,
    steps: [
      {
        name: 'Greet',
        async plan(ctx) {
          const { greeting, times } = roleVars(ctx, SPECS)
          seen.push(`${ctx.host}: ${greeting} x${times}`)
          return { status: 'ok' }
        },
      },
    ],
  }
  const pb = (...roles: Role[]): Playbook => ({ name: 'p', plays: [{ name: 'play', hosts: 'all', roles }] })
  const run = async (p: Playbook, args: string[], connect: () => FakeConnection = refuse) => {
    const lines: string[] = []
    const code = await runCli(p, args, { connect, secrets: new MemorySecrets(), write: (l) => lines.push(l) })
    return { code, out: lines.join('\n') }
  }

  it('values from the inventory, -e on top, reach the steps', async () => {
    seen.length = 0
    const file = inventoryFile('    greeting: hello\n')
    const r = await run(
      pb(greeter),
      ['-i', file, '-e', 'times=3', '-l', 's1', '--retry-file', join(tmpdir(), 'role-vars.retry')],
      () => new FakeConnection('s1'),
    )
    expect(r.code, r.out).toBe(0)
    expect(seen).toEqual(['s1: hello x3'])
  })

  it('a bad value in the inventory exits 1 at file:line:col before any connection', async () => {
    const file = inventoryFile('    greeting: howdy\n')
    const r = await run(pb(greeter), ['-i', file])
    expect(r.code).toBe(1)
    expect(r.out).toBe(`ERROR: ${file}:5:15: greeting: expected one of hello, hi, got "howdy"`)
  })

  it('a required variable set for no host, or not for every host the run takes, exits 1 before any connection; --list-hosts needs none', async () => {
    const none = await run(pb(greeter), ['-i', inventoryFile('')])
    expect(none.code).toBe(1)
    expect(none.out).toContain(
      'role greeter needs variable greeting (what to say), and it is not set for any host\n  hint: set greeting in the inventory',
    )
    const file = join(mkdtempSync(join(tmpdir(), 'role-vars-')), 'inv.yaml')
    writeFileSync(file, INV('').replace('a1: { address: 127.0.0.12 }', 'a1: { address: 127.0.0.12, greeting: hi }'))
    const some = await run(pb(greeter), ['-i', file])
    expect(some.out).toContain(
      `ERROR: ${file}: role greeter needs variable greeting (what to say), and it is not set for s1`,
    )
    expect((await run(pb(greeter), ['-i', file, '-l', 'a1', '--list-hosts'])).code).toBe(0)
    expect(
      (
        await run(
          pb(greeter),
          ['-i', file, '-e', 'greeting=hi', '--check', '--retry-file', join(tmpdir(), 'role-vars.retry')],
          () => new FakeConnection('h'),
        )
      ).code,
    ).toBe(0)
  })

  it('-e of a declared variable is checked; an unknown one gets did-you-mean with the declared names', async () => {
    const r = await run(pb(greeter), ['-i', inventoryFile(''), '-e', 'greeting=yo', '-e', 'time=2'])
    expect(r.code).toBe(1)
    expect(r.out).toBe(
      'ERROR: -e: 2 problems\n-e greeting=yo: expected one of hello, hi, got "yo"\n-e time=2: unknown variable\n  hint: did you mean "times"?',
    )
  })

  it("a declaration colliding with a built-in or with another role's exits 1 naming both, before the inventory is read", async () => {
    const other: Role = { name: 'other', vars: { times: { type: 'string', doc: 'when' } }, steps: [] }
    const builtin: Role = { name: 'shadow', vars: { hostname: { type: 'string', doc: 'x' } }, steps: [] }
    const r = await run(pb(greeter, other, builtin), ['-i', '/nonexistent/inv.yaml'])
    expect(r.code).toBe(1)
    expect(r.out).toContain(
      'roles greeter and other both declare variable "times", with different specs (type int and string)',
    )
    expect(r.out).toContain('role shadow declares variable "hostname", which is a built-in variable')
    expect(r.out).not.toContain('cannot read inventory')
  })
})

describe('the worked example: roles/examples/nas-mount.ts', () => {
  it('grammars: an NFS export, a mount point, one mount option', () => {
    for (const ok of ['nas.lan:/volume1/data', '192.0.2.5:/export', '[2001:db8::5]:/e', 'nas:/'])
      expect(isNfsExport(ok), ok).toBe(true)
    for (const bad of [
      'nas.lan',
      'nas.lan:data',
      ':/x',
      '2001:db8::5:/e',
      '[nas.lan]:/e',
      'nas.lan:/a b',
      'nas.lan:/a\\040b',
      '-o:/x',
      'nas lan:/x',
    ])
      expect(isNfsExport(bad), bad).toBe(false)
    for (const ok of ['/mnt/nas', '/srv/media-1', '/mnt/.hidden', '/home']) expect(isMountPoint(ok), ok).toBe(true)
    for (const bad of [
      '/',
      'mnt/nas',
      '/mnt/nas/',
      '/mnt//nas',
      '/mnt/../etc',
      '/mnt/a b',
      '/etc',
      '/usr',
      '/mnt/.',
      '/mnt/a\\b',
    ])
      expect(isMountPoint(bad), bad).toBe(false)
    for (const ok of ['soft', 'timeo=50', 'x-systemd.mount-timeout=30', 'nfsvers=4.1', '_netdev'])
      expect(isMountOption(ok), ok).toBe(true)
    for (const bad of ['a,b', 'a b', '-o', '', 'x#y']) expect(isMountOption(bad), bad).toBe(false)
  })

  it("the fstab line: the three boot-safe options first, the owner's after, none twice", () => {
    expect(fstabLine('nas.lan:/volume1/data', '/mnt/nas', ['x-systemd.mount-timeout=30'])).toBe(
      'nas.lan:/volume1/data /mnt/nas nfs _netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30 0 0',
    )
    expect(fstabLine('n:/d', '/mnt/nas', ['nofail', 'soft', 'soft'])).toBe(
      'n:/d /mnt/nas nfs _netdev,nofail,x-systemd.automount,soft 0 0',
    )
  })

  it('the fstab line it owns: same mount point or same export, never a comment or another mount', () => {
    const m = fstabMatch('nas.lan:/volume1/data', '/mnt/nas')
    expect(m.test('old:/x /mnt/nas nfs defaults 0 0')).toBe(true)
    expect(m.test('nas.lan:/volume1/data /media nfs defaults 0 0')).toBe(true)
    expect(m.test('# nas.lan:/volume1/data /mnt/nas nfs defaults 0 0')).toBe(false)
    expect(m.test('other:/x /mnt/nas2 nfs defaults 0 0')).toBe(false)
    expect(m.test('nas.lan:/volume1/database /mnt/db nfs defaults 0 0')).toBe(false)
  })

  it('unit names as systemd-escape --path makes them', () => {
    expect(unitOfPath('/mnt/nas', 'mount')).toBe('mnt-nas.mount')
    expect(unitOfPath('/srv/my-nas', 'automount')).toBe('srv-my\\x2dnas.automount')
    expect(unitOfPath('/mnt/.hidden/a+b', 'mount')).toBe('mnt-.hidden-a\\x2bb.mount')
    expect(unitOfPath('/.x', 'mount')).toBe('\\x2ex.mount')
  })

  it('systemctl show of two units, parsed', () => {
    expect(parseUnitShow('Id=a.mount\nSourcePath=/etc/fstab\n\nId=a.automount\nWantedBy=remote-fs.target\n')).toEqual([
      { Id: 'a.mount', SourcePath: '/etc/fstab' },
      { Id: 'a.automount', WantedBy: 'remote-fs.target' },
    ])
  })

  const checkRun = async (autofs: boolean) => {
    const fstab = 'proc /proc proc defaults 0 0\n'
    const answer = (script: string) => {
      if (script.includes('/proc/self/mountinfo')) return { stdout: 'absent\n' }
      if (script.includes("stat -c '%F|%a|%U|%G' /etc/fstab"))
        return { stdout: `regular file|644|root|root\n${Buffer.from(fstab).toString('base64')}` }
      if (script.startsWith('systemctl show -p LoadState'))
        return { stdout: 'LoadState=not-found\nUnitFileState=\nActiveState=inactive\n' }
      if (script.includes('/dev/autofs')) return { stdout: autofs ? 'yes\n' : 'no\n' }
      return { stdout: '' } // dpkg-query: nothing installed; the pending handlers: none
    }
    const conn = new FakeConnection('s1', (script) => answerBatch(script, answer) ?? answer(script))
    const rep = new RecordingReporter(0)
    const inventory = parseInventory(INV('    nas_export: nas.lan:/volume1/data\n'), '/tmp/inv.yaml', { declared })
    const s = await runPlaybook(
      { name: 'nas', plays: [{ name: 'NAS', hosts: 's1', roles: [nasMount] }] },
      { inventory, reporter: rep, secrets: new MemorySecrets(), connect: () => conn, check: true, diff: true },
    )
    expect(s.exitCode).toBe(0)
    const ends = rep.events.flatMap((e) =>
      e.kind === 'step-end' ? [`${e.status}: ${e.step}${e.message ? ` (${e.message})` : ''}`] : [],
    )
    expect(ends.slice(0, -1)).toEqual([
      'changed: Install the NFS client (would install nfs-common)',
      'changed: Create the mount point (would create /mnt/nas)',
      'changed: Add the NAS to /etc/fstab (would update /etc/fstab)',
      'changed: Reload systemd units (would run systemctl daemon-reload)',
      'skipped: Check systemd made the mount from /etc/fstab (check mode: systemd makes the units from the fstab line only at the daemon-reload)',
    ])
    const diff = rep.events.find((e) => e.kind === 'step-end' && e.step === 'Add the NAS to /etc/fstab')
    expect(diff?.kind === 'step-end' && diff.diff).toContain(
      '+nas.lan:/volume1/data /mnt/nas nfs _netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30 0 0',
    )
    // Only reads went to the host: facts (in batches) and nothing that changes it.
    for (const { script } of conn.scripts)
      expect(script).not.toMatch(/apt-get|mkdir|daemon-reload|systemctl start|mv -f/)
    return ends
  }

  it('--check on a fresh host: says what it would do, runs nothing but reads', async () => {
    expect((await checkRun(true)).at(-1)).toBe(
      'changed: Start the automount, so the share is there without a reboot (would mnt-nas.automount: start)',
    )
  })

  it('where systemd cannot automount (a container), the start is skipped and says why', async () => {
    expect((await checkRun(false)).at(-1)).toBe(
      'skipped: Start the automount, so the share is there without a reboot (systemd cannot automount on this host (no /dev/autofs, as in a container))',
    )
  })
})

// ---------------------------------------------------------------- docs/writing-a-role.md

// The page's examples that are not in roles/examples/nas-mount.ts live here, so tsc checks them and the tests
// below run them.

// "Reading a credential": a password the host made, kept in the secrets store, never in any output.
const RESTIC_VARS = defineVars({
  restic_password_ref: {
    type: 'secret-ref',
    doc: 'where the restic password is kept',
    grammar: SecretRef,
    secret: true,
    required: true,
  },
})

const keepResticPassword: Step = {
  name: 'Keep the restic password in the secrets store',
  async plan(ctx) {
    const ref = roleVars(ctx, RESTIC_VARS).restic_password_ref
    const r = await ctx.must('cat /etc/restic/password', { what: 'read the restic password', secretOutput: true })
    const password = r.stdout.trim()
    registerSecret(password) // masked in every line, event and error from here on
    if ((await ctx.secrets.lookup(ref)) === password) return null
    return { summary: `store the restic password at ${ref}`, apply: () => ctx.secrets.upsert(ref, password) }
  },
}

// "The cluster": on the server, the nodes labelled nas=mounted (one kubectl read, gathered with the role's facts).
const nodesFact = kubeFact('nas-label', 'nodes')

const labelNasNodes: Step = {
  name: 'Label the nodes that mount the NAS',
  facts: () => [nodesFact],
  async plan(ctx) {
    const nodes = kubeObjects(await ctx.facts.get(nodesFact), 'Node')
    const names = nodes.filter((n) => n.metadata.labels?.nas !== 'mounted').map((n) => n.metadata.name)
    if (names.length === 0) return null
    return {
      summary: `label ${names.join(', ')} nas=mounted`,
      commands: [{ script: kubectl('label --overwrite node', ...names, 'nas=mounted') }],
    }
  },
}

describe('docs/writing-a-role.md', () => {
  const REPO = join(import.meta.dirname, '../..')
  const read = (f: string) => readFileSync(join(REPO, f), 'utf8')

  it('every ts block of the page is the text of a file tsc checks (pieces between "// ..." lines, in order)', () => {
    const sources = ['roles/examples/nas-mount.ts', 'playbooks/examples/nas.mts', 'test/unit/role-vars.test.ts'].map(
      read,
    )
    const blocks = [...read('docs/writing-a-role.md').matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1])
    // An indented block (in a list) would not be checked: there is none.
    expect(read('docs/writing-a-role.md')).not.toMatch(/^ +```/m)
    expect(blocks.length).toBeGreaterThan(5)
    for (const block of blocks) {
      const pieces = block.split(/^\s*\/\/ \.\.\.\n/m).filter((p) => p.trim())
      const home = sources.find((src) => {
        let at = 0
        for (const piece of pieces) {
          at = src.indexOf(piece, at)
          if (at < 0) return false
          at += piece.length
        }
        return true
      })
      expect(home, `not verbatim in any checked file:\n${block}`).toBeDefined()
    }
  })

  it('the credential example stores what the host made, shows it nowhere, and changes nothing the second time', async () => {
    resetSecretsForTest()
    const role: Role = { name: 'restic', vars: RESTIC_VARS, steps: [keepResticPassword] }
    const conn = new FakeConnection('s1', (script) =>
      script === 'cat /etc/restic/password' ? { stdout: 'correct-horse-battery\n' } : undefined,
    )
    const secrets = new MemorySecrets()
    const inventory = parseInventory(INV('    restic_password_ref: op://lab/restic/password\n'), '/tmp/inv.yaml', {
      declared: declaredVars([role]),
    })
    const pb: Playbook = { name: 'restic', plays: [{ name: 'p', hosts: 's1', roles: [role] }] }
    const rep = new RecordingReporter(2)
    const first = await runPlaybook(pb, { inventory, reporter: rep, secrets, connect: () => conn })
    expect(first.counts.s1.changed).toBe(1)
    expect(secrets.values.get('op://lab/restic/password')).toBe('correct-horse-battery')
    expect([...rep.lines, JSON.stringify(rep.events)].join('\n')).not.toContain('correct-horse-battery')
    const again = await runPlaybook(pb, { inventory, reporter: new RecordingReporter(2), secrets, connect: () => conn })
    expect(again.counts.s1.changed).toBe(0)
  })

  it('the cluster example labels the nodes that lack the label, with names after --', async () => {
    const nodes = {
      items: [
        { kind: 'Node', metadata: { name: 'pi-k3s', labels: { nas: 'mounted' } } },
        { kind: 'Node', metadata: { name: 'pi3-worker-1', labels: {} } },
      ],
    }
    const answer = (script: string) =>
      script.includes('get nodes -o json') ? { stdout: JSON.stringify(nodes) } : { stdout: '' }
    const conn = new FakeConnection('s1', (script) => answerBatch(script, answer) ?? answer(script))
    const rep = new RecordingReporter(0)
    const pb: Playbook = {
      name: 'label',
      plays: [{ name: 'p', hosts: 's1', roles: [{ name: 'nas-label', steps: [labelNasNodes] }] }],
    }
    const s = await runPlaybook(pb, {
      inventory: parseInventory(INV(''), '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: () => conn,
    })
    expect(s.exitCode).toBe(0)
    expect(conn.scripts.map((x) => x.script)).toContain(
      'k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml label --overwrite node -- pi3-worker-1 nas=mounted',
    )
  })
})
