// A fake Raspberry Pi for unit tests of roles: answers the facts roles read (files, units, packages,
// arch, swaps) from in-memory state, records every other script, and applies none of them.
// "Facts in, commands out": the lab tests show the same roles against real hosts.

import type { RunOptions, RunResult } from '../../lib/connection.ts'
import { answerBatch, FakeConnection } from './fakes.ts'

export interface FakePiState {
  files: Map<string, { content: string; mode?: string; owner?: string }>
  units: Map<string, { load: string; fileState: string; active: string }>
  packages: Set<string>
  swaps: string[]
  arch: string
  cgroupControllers: string
  bootId: number
  reboots: number
  /** The running kernel's command line (/proc/cmdline): what the bootloader gave it at the last boot. */
  procCmdline: string
  /** Swap generators installed (file names in /usr/lib/systemd/system-generators). */
  generators: string[]
  /** Units listed as failed, with the generator that makes them (they are gone once its off switch is read). */
  failedUnits: { unit: string; generator?: 'rpi-swap-generator' | 'zram-generator'; fileState?: string }[]
  /** Whether a daemon-reload ran since the generators' configuration last changed. */
  reloaded: boolean
  /** Apply file writes, systemctl, apt and rm on the state (so a second run sees the first one's work). */
  apply: boolean
}

export function freshPi(): FakePiState {
  return {
    files: new Map([
      [
        '/boot/firmware/cmdline.txt',
        {
          content:
            'console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n',
          mode: '755',
        },
      ],
      ['/etc/hostname', { content: 'raspberrypi\n' }],
      ['/etc/hosts', { content: '127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n' }],
      ['/var/swap', { content: '' }],
    ]),
    units: new Map([['dphys-swapfile.service', { load: 'loaded', fileState: 'enabled', active: 'active' }]]),
    packages: new Set(['dphys-swapfile', 'curl', 'ca-certificates']),
    swaps: ['/var/swap file 102396 0 -2'],
    arch: 'aarch64\narm64\n64\n',
    cgroupControllers: 'cpuset cpu io memory pids\n',
    bootId: 1,
    reboots: 0,
    procCmdline: 'coherent_pool=1M 8250.nr_uarts=1 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 rootwait\n',
    generators: [],
    failedUnits: [],
    reloaded: true,
    apply: false,
  }
}

const RPI_DROPIN_DIRS = [
  '/usr/lib/rpi/swap.conf.d',
  '/usr/local/lib/rpi/swap.conf.d',
  '/run/rpi/swap.conf.d',
  '/etc/rpi/swap.conf.d',
]
const ZRAM_FILES = /^\/(run|etc|usr\/local\/lib|usr\/lib)\/systemd\/zram-generator\.conf(\.d\/[^/]+\.conf)?$/
const RPI_OFF = '/etc/rpi/swap.conf.d/99-pi-provision-no-swap.conf'
const ZRAM_OFF = '/etc/systemd/zram-generator.conf.d/99-pi-provision-no-swap.conf'

/** A Pi 5 on Raspberry Pi OS trixie (Debian 13): no dphys-swapfile; rpi-swap and/or zram-generator as asked. */
export function trixiePi(opts: { rpiSwap: boolean; zram: boolean }): FakePiState {
  const s = freshPi()
  s.packages.delete('dphys-swapfile')
  s.units.delete('dphys-swapfile.service')
  s.files.delete('/var/swap')
  s.swaps = []
  if (opts.zram) {
    s.generators.push('zram-generator')
    s.packages.add('systemd-zram-generator')
    s.files.set('/usr/lib/systemd/zram-generator.conf', { content: '[zram0]\n' })
    s.swaps.push('/dev/zram0 partition 2097148 0 100')
  }
  if (opts.rpiSwap) {
    s.generators.push('rpi-swap-generator')
    s.packages.add('rpi-swap')
    s.files.set('/etc/rpi/swap.conf', { content: '[Main]\n#Mechanism=auto\n' })
    s.swaps.push('/var/swap file 2097148 0 -2')
  }
  return s
}

/** Answers one read-only fact script; undefined when the script is not a known fact (a change). */
export function answerFact(s: FakePiState, script: string): Partial<RunResult> | undefined {
  const fileMatch = /^if \[ -e (\S+) \]; then stat/.exec(script)
  if (fileMatch) {
    const path = fileMatch[1].replace(/^'|'$/g, '')
    const f = s.files.get(path)
    if (!f) return { stdout: 'ABSENT\n' }
    return {
      stdout: `regular file|${f.mode ?? '644'}|${f.owner ?? 'root'}|${f.owner ?? 'root'}\n${Buffer.from(f.content).toString('base64')}`,
    }
  }
  if (script.startsWith('[ -f /boot/firmware/cmdline.txt ]')) {
    const p = ['/boot/firmware/cmdline.txt', '/boot/cmdline.txt'].find((x) => s.files.has(x))
    return p ? { stdout: p + '\n' } : { code: 1 }
  }
  const unit = /^systemctl show -p LoadState -p UnitFileState -p ActiveState (\S+)$/.exec(script)
  if (unit) {
    const u = s.units.get(unit[1].replace(/^'|'$/g, '')) ?? { load: 'not-found', fileState: '', active: 'inactive' }
    return { stdout: `LoadState=${u.load}\nUnitFileState=${u.fileState}\nActiveState=${u.active}\n` }
  }
  if (script.startsWith('dpkg-query -W')) {
    const names = script
      .split(' ')
      .slice(3, -2)
      .map((n) => n.replace(/^'|'$/g, ''))
    return {
      stdout: names
        .filter((n) => s.packages.has(n))
        .map((n) => `${n}\tii \n`)
        .join(''),
    }
  }
  if (script.startsWith('for d in /etc/systemd/system-generators')) return { stdout: swapGenerators(s) }
  if (script.startsWith('systemctl list-units --all --failed')) {
    const lines = s.failedUnits.map((u) => {
      const off = u.generator && offSwitchRead(s, u.generator)
      return `${u.unit} ${off ? 'not-found' : 'loaded'} ${off ? '' : (u.fileState ?? 'generated')}\n`
    })
    return { stdout: lines.join('') }
  }
  if (script === 'cat /proc/cmdline') return { stdout: s.procCmdline }
  const cat = /^cat (\S+)$/.exec(script)
  if (cat && s.files.has(cat[1])) return { stdout: s.files.get(cat[1])?.content ?? '' }
  if (script.startsWith('uname -m')) return { stdout: s.arch }
  if (script.includes('/proc/swaps')) {
    if (script.startsWith('[ "$(wc -l')) return { code: s.swaps.length === 0 ? 0 : 1 }
    return { stdout: s.swaps.join('\n') + (s.swaps.length ? '\n' : '') }
  }
  if (script.startsWith('if [ -f /sys/fs/cgroup/cgroup.controllers ]')) {
    // The memory cgroup check reads the controllers, /proc/cmdline and cmdline.txt in one go, cut by a marker.
    const cut = /echo (@@\S+@@); cat \/proc\/cmdline; echo @@\S+@@; cat (\S+)$/.exec(script)
    const v2 = `v2\n${s.cgroupControllers}`
    if (!cut) return { stdout: v2 }
    const file = s.files.get(cut[2])?.content ?? ''
    return { stdout: `${v2}${cut[1]}\n${s.procCmdline}${cut[1]}\n${file}` }
  }
  if (script === 'cat /proc/sys/kernel/random/boot_id') return { stdout: `boot-${s.bootId}\n` }
  if (script === '[ ! -e /var/swap ]') return { code: s.files.has('/var/swap') ? 1 : 0 }
  return undefined
}

function offSwitchRead(s: FakePiState, generator: string): boolean {
  return s.reloaded && s.files.has(generator === 'zram-generator' ? ZRAM_OFF : RPI_OFF)
}

/** What the swap-generators fact prints: installed generators, rpi-swap Mechanism= lines, zram device sections. */
function swapGenerators(s: FakePiState): string {
  let out = s.generators.map((g) => `generator ${g}\n`).join('')
  for (const [path, f] of s.files) {
    if (RPI_DROPIN_DIRS.some((d) => path.startsWith(d + '/')) && path.endsWith('.conf')) {
      const m = [...f.content.matchAll(/^\s*Mechanism\s*=\s*(\S+)/gm)].pop()
      if (m) out += `mechanism ${path} ${m[1]}\n`
    }
    if (ZRAM_FILES.test(path)) for (const m of f.content.matchAll(/^\s*\[(zram\d*)\]/gm)) out += `device ${m[1]}\n`
  }
  return out
}

/** Carries out the scripts pi-prep sends, as far as the facts above can see them. */
function applyChange(s: FakePiState, script: string, stdin: string | undefined): void {
  const write = /mv -f "\$tmp" (\S+)/.exec(script)
  if (write && stdin !== undefined) {
    const path = write[1].replace(/^'|'$/g, '')
    const mode = /chmod (\d+) "\$tmp"/.exec(script)?.[1].replace(/^0(?=\d{3})/, '')
    s.files.set(path, { content: stdin, mode })
    if (path.includes('swap.conf.d') || path.includes('zram-generator.conf.d')) s.reloaded = false
  }
  for (const m of script.matchAll(/systemctl mask(?: --no-reload)? (\S+)/g))
    s.units.set(m[1], { load: 'masked', fileState: 'masked', active: 'inactive' })
  for (const m of script.matchAll(/systemctl disable(?: --no-reload)? (\S+)/g)) {
    const u = s.units.get(m[1])
    if (u) s.units.set(m[1], { ...u, fileState: 'disabled' })
  }
  for (const m of script.matchAll(/systemctl stop (\S+)/g)) {
    const u = s.units.get(m[1])
    if (u) s.units.set(m[1], { ...u, active: 'inactive' })
  }
  if (script === 'systemctl daemon-reload') s.reloaded = true
  const reset = /^systemctl reset-failed (.+)$/.exec(script)
  if (reset) {
    const names = reset[1].split(' ').map((n) => n.replace(/^'|'$/g, ''))
    s.failedUnits = s.failedUnits.filter((u) => !names.includes(u.unit))
  }
  if (script.includes('rm -f /var/swap')) s.files.delete('/var/swap')
  const apt = /install -y -q --no-install-recommends ([^|;&]+?)(?: \|\||$)/.exec(script)
  if (apt) for (const p of apt[1].trim().split(/\s+/)) s.packages.add(p.replace(/^'|'$/g, ''))
}

export class FakePi extends FakeConnection {
  readonly state: FakePiState
  /** Scripts that were not fact reads: what the role changed. */
  readonly changes: string[] = []
  constructor(host: string, state: FakePiState) {
    super(host, (script: string, o: RunOptions) => {
      const batch = answerBatch(script, (sub) => answerFact(state, sub) ?? { code: 127 })
      if (batch) return batch
      const fact = answerFact(state, script)
      if (fact) return fact
      this.changes.push(script)
      if (script === 'swapoff -a') state.swaps = []
      if (state.apply) applyChange(state, script, o.stdin)
      if (script.includes('systemctl reboot')) {
        state.bootId++
        state.reboots++
        // A new boot: the kernel has cmdline.txt's line, generators ran with the configuration on disk.
        const c = state.files.get('/boot/firmware/cmdline.txt') ?? state.files.get('/boot/cmdline.txt')
        if (c) state.procCmdline = `coherent_pool=1M 8250.nr_uarts=1 ${c.content}`
        state.reloaded = true
        state.failedUnits = []
      }
      return { code: 0 }
    })
    this.state = state
  }
}

/** A Pi that pi-prep already converged. */
export function convergedPi(name: string): FakePiState {
  const s = freshPi()
  s.files.set('/boot/firmware/cmdline.txt', {
    content:
      'console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait cgroup_memory=1 cgroup_enable=memory cgroup_enable=cpuset\n',
    mode: '755',
  })
  s.files.set('/etc/hostname', { content: `${name}\n` })
  s.files.set('/etc/hosts', { content: `127.0.0.1\tlocalhost\n127.0.1.1\t${name}\n` })
  s.files.delete('/var/swap')
  s.units.set('dphys-swapfile.service', { load: 'loaded', fileState: 'disabled', active: 'inactive' })
  s.units.set('systemd-zram-setup@zram0.service', { load: 'masked', fileState: 'masked', active: 'inactive' })
  for (const p of ['nfs-common', 'curl', 'ca-certificates', 'iptables']) s.packages.add(p)
  s.files.set('/etc/modules-load.d/k3s.conf', { content: 'overlay\nbr_netfilter\n' })
  s.files.set('/etc/sysctl.d/90-k3s.conf', {
    content:
      'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n',
  })
  s.swaps = []
  s.procCmdline = `coherent_pool=1M 8250.nr_uarts=1 ${s.files.get('/boot/firmware/cmdline.txt')?.content}`
  return s
}
