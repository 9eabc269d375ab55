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
  }
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
  if (script.startsWith('uname -m')) return { stdout: s.arch }
  if (script.includes('/proc/swaps')) {
    if (script.startsWith('[ "$(wc -l')) return { code: s.swaps.length === 0 ? 0 : 1 }
    return { stdout: s.swaps.join('\n') + (s.swaps.length ? '\n' : '') }
  }
  if (script.startsWith('if [ -f /sys/fs/cgroup/cgroup.controllers ]')) return { stdout: `v2\n${s.cgroupControllers}` }
  if (script === 'cat /proc/sys/kernel/random/boot_id') return { stdout: `boot-${s.bootId}\n` }
  if (script === '[ ! -e /var/swap ]') return { code: s.files.has('/var/swap') ? 1 : 0 }
  return undefined
}

export class FakePi extends FakeConnection {
  readonly state: FakePiState
  /** Scripts that were not fact reads: what the role changed. */
  readonly changes: string[] = []
  constructor(host: string, state: FakePiState) {
    super(host, (script: string, _o: RunOptions) => {
      const batch = answerBatch(script, (sub) => answerFact(state, sub) ?? { code: 127 })
      if (batch) return batch
      const fact = answerFact(state, script)
      if (fact) return fact
      this.changes.push(script)
      if (script === 'swapoff -a') state.swaps = []
      if (script.includes('systemctl reboot')) {
        state.bootId++
        state.reboots++
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
  s.units.set('rpi-swap.service', { load: 'masked', fileState: 'masked', active: 'inactive' })
  for (const p of ['nfs-common', 'curl', 'ca-certificates', 'iptables']) s.packages.add(p)
  s.files.set('/etc/modules-load.d/k3s.conf', { content: 'overlay\nbr_netfilter\n' })
  s.files.set('/etc/sysctl.d/90-k3s.conf', {
    content:
      'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n',
  })
  s.swaps = []
  return s
}
