import { beforeEach, describe, expect, it } from 'vitest'
import { parseInventory } from '../../lib/inventory.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { parseArch, parseMemoryCgroup, piPrep } from '../../roles/pi-prep.ts'
import { MemorySecrets } from './fakes.ts'
import { convergedPi, FakePi, freshPi, type FakePiState } from './fakepi.ts'

const INV = `all:
  vars: { secrets_backend: file, secrets_file: /nonexistent }
  children:
    server:
      hosts:
        pi-k3s: { address: 127.0.0.55 }
`

async function runPrep(state: FakePiState, check = false) {
  const pi = new FakePi('pi-k3s', state)
  const rep = new RecordingReporter(0)
  const s = await runPlaybook(
    { name: 'prep', plays: [{ name: 'prep', hosts: 'all', roles: [piPrep] }] },
    {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: () => pi,
      check,
    },
  )
  return { pi, rep, s }
}

beforeEach(() => resetSecretsForTest())

describe('pi-prep planning (facts in, commands out)', () => {
  it('a converged Pi: every step ok, no command that changes anything, its facts read in a handful of round trips', async () => {
    const { pi, s } = await runPrep(convergedPi('pi-k3s'))
    expect(s.counts['pi-k3s'].changed).toBe(0)
    expect(s.counts['pi-k3s'].failed).toBe(0)
    expect(pi.changes).toEqual([])
    expect(pi.state.reboots).toBe(0)
    // Facts of the whole role in one batch, plus the few guards and checks that must read live state.
    expect(pi.scripts.length).toBeLessThanOrEqual(7)
  })

  it('a fresh Pi: adds the flags once (keeping the line), turns swap off, installs packages, and notifies the reboot', async () => {
    const state = freshPi()
    const { pi, rep, s } = await runPrep(state)
    const changed = rep.events
      .filter((e) => e.kind === 'step-end' && e.status === 'changed')
      .map((e) => (e.kind === 'step-end' ? e.step : ''))
    expect(changed).toEqual(
      expect.arrayContaining([
        'Set the hostname',
        'Map the hostname in /etc/hosts',
        'Add the cgroup flags to cmdline.txt',
        'Turn swap off now',
        'Stop and disable dphys-swapfile',
        'Remove the dphys-swapfile swap file',
        'Install the packages the cluster needs',
        'Reboot',
      ]),
    )
    const cmdlineWrite = pi.scripts.find((x) => x.script.includes('mv -f "$tmp" /boot/firmware/cmdline.txt'))
    expect(cmdlineWrite?.stdin).toBe(
      'console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait cgroup_memory=1 cgroup_enable=memory cgroup_enable=cpuset\n',
    )
    expect(cmdlineWrite?.script).toMatch(
      /cp -p \/boot\/firmware\/cmdline.txt \/boot\/firmware\/cmdline.txt\.\d{8}T\d{6}\.bak/,
    )
    expect(
      pi.changes.some(
        (c) =>
          c.includes('apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends iptables nfs-common') ||
          c.includes('nfs-common'),
      ),
    ).toBe(true)
    // Mask and disable skip systemd's implicit reload; one daemon-reload runs as a handler, after all of them.
    expect(pi.changes).toContain(
      'systemctl disable --no-reload dphys-swapfile.service && systemctl stop dphys-swapfile.service',
    )
    expect(pi.changes).toContain('systemctl mask --no-reload rpi-swap.service')
    expect(pi.changes.filter((c) => c === 'systemctl daemon-reload')).toHaveLength(1)
    expect(pi.changes.indexOf('systemctl daemon-reload')).toBeGreaterThan(
      pi.changes.indexOf('systemctl mask --no-reload rpi-swap.service'),
    )
    expect(s.counts['pi-k3s'].failed).toBe(0)
    expect(state.reboots).toBe(1)
  })

  it('--check on a fresh Pi reports the changes and runs nothing but fact reads', async () => {
    const { pi, rep, s } = await runPrep(freshPi(), true)
    expect(pi.changes).toEqual([])
    expect(s.counts['pi-k3s'].changed).toBeGreaterThanOrEqual(7)
    expect(rep.lines).toContain(
      'changed: [pi-k3s] pi-prep | Add the cgroup flags to cmdline.txt (would add cgroup_memory=1 cgroup_enable=memory cgroup_enable=cpuset to /boot/firmware/cmdline.txt)',
    )
    expect(rep.lines).toContain('changed: [pi-k3s] pi-prep | handler: Reboot (would reboot)')
  })

  it('flags already present in another order, with trailing spaces and newline: cmdline.txt left alone, no reboot', async () => {
    const state = convergedPi('pi-k3s')
    state.files.set('/boot/firmware/cmdline.txt', {
      content: 'cgroup_enable=cpuset console=tty1  cgroup_enable=memory root=PARTUUID=x rootwait cgroup_memory=1   \n',
      mode: '755',
    })
    const { rep, s } = await runPrep(state)
    expect(s.counts['pi-k3s'].changed).toBe(0)
    expect(rep.lines.some((l) => l.includes('Reboot'))).toBe(false)
  })

  it('an older Pi OS keeps cmdline.txt at /boot/cmdline.txt', async () => {
    const state = freshPi()
    const c = state.files.get('/boot/firmware/cmdline.txt')!
    state.files.delete('/boot/firmware/cmdline.txt')
    state.files.set('/boot/cmdline.txt', c)
    const { pi } = await runPrep(state)
    expect(pi.scripts.some((x) => x.script.includes('mv -f "$tmp" /boot/cmdline.txt'))).toBe(true)
  })

  it('no cmdline.txt at all: the step fails and says where it looked', async () => {
    const state = freshPi()
    state.files.delete('/boot/firmware/cmdline.txt')
    const { rep, s } = await runPrep(state)
    expect(s.exitCode).toBe(2)
    expect(rep.lines.join('\n')).toContain(
      'no cmdline.txt on the host (looked for /boot/firmware/cmdline.txt, /boot/cmdline.txt): is this Raspberry Pi OS?',
    )
  })

  it('fails with the k3s error text when the memory cgroup is missing after the reboot', async () => {
    const state = convergedPi('pi-k3s')
    state.cgroupControllers = 'cpuset cpu io pids\n'
    const { rep, s } = await runPrep(state)
    expect(s.exitCode).toBe(2)
    expect(rep.lines.join('\n')).toContain('failed to find memory cgroup (v2)')
  })
})

describe('memory cgroup check', () => {
  it('reads cgroup v2 controllers, and the enabled column of /proc/cgroups on cgroup v1 (older Pi OS)', () => {
    expect(parseMemoryCgroup('v2\ncpuset cpu io memory pids\n')).toEqual({
      ok: true,
      detail: 'cgroup v2, controllers: cpuset cpu io memory pids',
    })
    expect(parseMemoryCgroup('v2\ncpuset cpu io pids\n').ok).toBe(false)
    const v1 = 'v1\n#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t1\t1\nmemory\t0\t1\t0\n'
    expect(parseMemoryCgroup(v1)).toEqual({ ok: false, detail: 'cgroup v1, memory controller disabled' })
    expect(parseMemoryCgroup(v1.replace('memory\t0\t1\t0', 'memory\t4\t80\t1')).ok).toBe(true)
  })
})

describe('architecture fact', () => {
  it('picks the k3s binary by userland, and notices a 32-bit userland on a 64-bit kernel', () => {
    expect(parseArch('aarch64\narm64\n64\n')).toEqual({
      kernel: 'aarch64',
      userland: 'arm64',
      longBit: 64,
      k3sArch: 'arm64',
      mixed: false,
    })
    expect(parseArch('aarch64\narmhf\n32\n')).toEqual({
      kernel: 'aarch64',
      userland: 'armhf',
      longBit: 32,
      k3sArch: 'armhf',
      mixed: true,
    })
    expect(parseArch('armv7l\narmhf\n32\n').k3sArch).toBe('armhf')
    expect(parseArch('x86_64\namd64\n64\n').k3sArch).toBe('amd64')
    expect(() => parseArch('riscv64\nriscv64\n64\n')).toThrow(
      'unsupported architecture: kernel riscv64, userland riscv64',
    )
  })
})
