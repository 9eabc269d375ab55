import { beforeEach, describe, expect, it } from 'vitest'
import { parseInventory } from '../../lib/inventory.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { parseArch, piPrep } from '../../roles/pi-prep.ts'
import { parseFailedSwapUnits, parseSwapGenerators, RPI_SWAP_DROPIN, ZRAM_DROPIN } from '../../lib/swap-generators.ts'
import { explainCmdline, parseMemoryCgroup } from '../../lib/memory-cgroup.ts'
import { MemorySecrets } from './fakes.ts'
import { convergedPi, FakePi, freshPi, trixiePi, type FakePiState } from './fakepi.ts'

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
    // Facts of the whole role in one batch, plus the few guards and checks that must read live state (the last:
    // failed swap units after the reload, the memory cgroup with /proc/cmdline and cmdline.txt in one read).
    expect(pi.scripts.length).toBeLessThanOrEqual(8)
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
    expect(pi.changes).toContain('systemctl mask --no-reload systemd-zram-setup@zram0.service')
    // rpi-swap is a generator on Pi OS trixie: there is no rpi-swap.service to mask, and none is masked.
    expect(pi.changes.some((c) => c.includes('rpi-swap'))).toBe(false)
    expect(pi.changes.filter((c) => c === 'systemctl daemon-reload')).toHaveLength(1)
    expect(pi.changes.indexOf('systemctl daemon-reload')).toBeGreaterThan(
      pi.changes.indexOf('systemctl mask --no-reload systemd-zram-setup@zram0.service'),
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

const stepsWith = (rep: RecordingReporter, status: string): string[] =>
  rep.events.flatMap((e) => (e.kind === 'step-end' && e.status === status ? [e.step] : []))

const messageOf = (rep: RecordingReporter, step: string): string | undefined =>
  rep.events.flatMap((e) => (e.kind === 'step-end' && e.step === step ? [e.message] : [])).pop()

const written = (pi: FakePi, path: string): string | undefined =>
  pi.scripts.find((x) => x.script.includes(`mv -f "$tmp" ${path}`))?.stdin

describe('pi-prep on Debian 13 / Pi OS trixie (swap generators)', () => {
  it('rpi-swap only: a swap.conf drop-in Mechanism=none, read by one daemon-reload; rerun changed=0', async () => {
    const state = { ...trixiePi({ rpiSwap: true, zram: false }), apply: true }
    const { pi, rep, s } = await runPrep(state)
    expect(s.counts['pi-k3s'].failed).toBe(0)
    expect(written(pi, RPI_SWAP_DROPIN)).toBe(
      '# pi-provision: k3s wants no swap (swap.conf(5): Mechanism=none)\n[Main]\nMechanism=none\n',
    )
    expect(written(pi, ZRAM_DROPIN)).toBeUndefined()
    expect(stepsWith(rep, 'changed')).toEqual(
      expect.arrayContaining(['Turn swap off now', 'Turn off rpi-swap (swap.conf drop-in Mechanism=none)']),
    )
    // No dphys-swapfile on trixie: nothing to stop or remove.
    expect(pi.changes.some((c) => c.includes('dphys-swapfile'))).toBe(false)
    expect(pi.changes.indexOf('systemctl daemon-reload')).toBeGreaterThan(
      pi.changes.findIndex((c) => c.includes(RPI_SWAP_DROPIN)),
    )
    expect(messageOf(rep, 'Turn off zram-generator (drop-in with no zram device)')).toBe(
      'no zram-generator on this host',
    )
    const again = await runPrep(state)
    expect(again.s.counts['pi-k3s'].changed).toBe(0)
    expect(again.pi.changes).toEqual([])
  })

  it('zram-generator only: a drop-in sorting last gives every device size 0; rerun changed=0', async () => {
    const state = { ...trixiePi({ rpiSwap: false, zram: true }), apply: true }
    state.files.set('/etc/systemd/zram-generator.conf.d/50-local.conf', { content: '[zram1]\nzram-size = ram / 4\n' })
    const { pi, s } = await runPrep(state)
    expect(s.counts['pi-k3s'].failed).toBe(0)
    const content = written(pi, ZRAM_DROPIN) ?? ''
    expect(content).toContain('[zram0]\nzram-size = 0\nhost-memory-limit = 0\n')
    expect(content).toContain('[zram1]\nzram-size = 0\nhost-memory-limit = 0\n')
    expect(written(pi, RPI_SWAP_DROPIN)).toBeUndefined()
    const again = await runPrep(state)
    expect(again.s.counts['pi-k3s'].changed).toBe(0)
  })

  it('both (Pi OS trixie: rpi-swap drives zram-generator): both drop-ins, one reload and reboot', async () => {
    const state = { ...trixiePi({ rpiSwap: true, zram: true }), apply: true }
    const { pi, s } = await runPrep(state)
    expect(s.counts['pi-k3s'].failed).toBe(0)
    expect(written(pi, RPI_SWAP_DROPIN)).toContain('Mechanism=none')
    expect(written(pi, ZRAM_DROPIN)).toContain('[zram0]')
    expect(pi.changes.filter((c) => c === 'systemctl daemon-reload')).toHaveLength(1)
    expect(state.reboots).toBe(1)
    const again = await runPrep(state)
    expect(again.s.counts['pi-k3s'].changed).toBe(0)
    expect(state.reboots).toBe(1)
  })

  it('neither: no drop-in is written, both steps say why', async () => {
    const state = { ...trixiePi({ rpiSwap: false, zram: false }), apply: true }
    const { pi, rep, s } = await runPrep(state)
    expect(s.counts['pi-k3s'].failed).toBe(0)
    expect(pi.changes.some((c) => c.includes('swap.conf.d') || c.includes('zram-generator.conf.d'))).toBe(false)
    expect(messageOf(rep, 'Turn off rpi-swap (swap.conf drop-in Mechanism=none)')).toBe('no rpi-swap on this host')
    expect(messageOf(rep, 'Turn off zram-generator (drop-in with no zram device)')).toBe(
      'no zram-generator on this host',
    )
    expect((await runPrep(state)).s.counts['pi-k3s'].changed).toBe(0)
  })

  it('a drop-in sorting after ours with another mechanism: failed, naming it (swap would come back)', async () => {
    const state = trixiePi({ rpiSwap: true, zram: false })
    state.files.set('/etc/rpi/swap.conf.d/zz-local.conf', { content: '[Main]\nMechanism=zram\n' })
    const { rep, s } = await runPrep(state)
    expect(s.exitCode).toBe(2)
    expect(rep.lines.join('\n')).toContain(
      `/etc/rpi/swap.conf.d/zz-local.conf (Mechanism=zram) sorts after ${RPI_SWAP_DROPIN} and wins`,
    )
  })

  it('no reboot owed: a swap unit its generator no longer makes is not left failed (reset-failed)', async () => {
    const state = { ...convergedPi('pi-k3s'), apply: true }
    state.generators.push('rpi-swap-generator')
    state.failedUnits.push({ unit: 'var-swap.swap', generator: 'rpi-swap-generator' })
    const { pi, rep, s } = await runPrep(state)
    expect(s.counts['pi-k3s'].failed).toBe(0)
    expect(state.reboots).toBe(0)
    expect(pi.changes.indexOf('systemctl reset-failed var-swap.swap')).toBeGreaterThan(
      pi.changes.indexOf('systemctl daemon-reload'),
    )
    expect(stepsWith(rep, 'changed')).toContain('Clear failed swap units nothing starts any more')
    expect(state.failedUnits).toEqual([])
    expect((await runPrep(state)).s.counts['pi-k3s'].changed).toBe(0)
  })

  it('a failed swap unit something still generates is reported, not hidden', async () => {
    const state = convergedPi('pi-k3s')
    state.failedUnits.push({ unit: 'mnt-extra.swap' })
    const { rep, s } = await runPrep(state)
    expect(s.exitCode).toBe(2)
    expect(rep.lines.join('\n')).toContain('swap unit mnt-extra.swap failed and still configured')
  })

  it('facts: generators by file or package; Mechanism= by file name across directories, /etc hiding /usr/lib', () => {
    const g = parseSwapGenerators(
      [
        'generator zram-generator',
        'rpi-swap ii ',
        'systemd-zram-generator ii ',
        'mechanism /usr/lib/rpi/swap.conf.d/80-vendor.conf zram',
        'mechanism /etc/rpi/swap.conf.d/10-a.conf swapfile',
        'mechanism /etc/rpi/swap.conf.d/80-vendor.conf none',
        'device zram1',
        'device zram0',
      ].join('\n'),
    )
    expect(g.rpiSwap).toBe(true)
    expect(g.zram).toBe(true)
    expect(g.rpiMechanisms).toEqual([
      ['/etc/rpi/swap.conf.d/10-a.conf', 'swapfile'],
      ['/etc/rpi/swap.conf.d/80-vendor.conf', 'none'],
    ])
    expect(g.zramDevices).toEqual(['zram0', 'zram1'])
    expect(parseSwapGenerators('rpi-swap rc \n').rpiSwap).toBe(false)
    expect(
      parseFailedSwapUnits(
        'dev-zram0.swap not-found \ndphys-swapfile.service loaded disabled\nx.swap loaded generated\n',
      ),
    ).toEqual({
      stale: ['dev-zram0.swap', 'dphys-swapfile.service'],
      live: ['x.swap'],
    })
  })
})

describe('the kernel command line after the reboot (kernel 6.12: the memory cgroup must be asked for)', () => {
  const FLAGS = ['cgroup_memory=1', 'cgroup_enable=memory', 'cgroup_enable=cpuset']
  const FILE = 'console=tty1 root=PARTUUID=x rootwait cgroup_memory=1 cgroup_enable=memory cgroup_enable=cpuset\n'

  it("the firmware's cgroup_disable=memory before our flags: ours win, nothing to say", () => {
    expect(explainCmdline(`cgroup_disable=memory coherent_pool=1M ${FILE}`, FILE, FLAGS)).toEqual([])
  })

  it('an argument after ours that turns it off, and where it came from', () => {
    expect(explainCmdline(`coherent_pool=1M ${FILE.trim()} cgroup_disable=memory`, FILE, FLAGS)).toEqual([
      '"cgroup_disable=memory" in /proc/cmdline turns the memory cgroup off (not in cmdline.txt: the firmware or ' +
        'bootloader added it), after the flags that turn it on, so it wins',
    ])
    const own = FILE.replace('rootwait', 'rootwait').trim() + ' cgroup_memory=0'
    expect(explainCmdline(own, own, FLAGS)).toEqual([
      '"cgroup_memory=0" in /proc/cmdline turns the memory cgroup off (cmdline.txt itself), after the flags that ' +
        'turn it on, so it wins',
    ])
  })

  it('the kernel was not started with our flags: not rebooted, or another cmdline.txt was read', () => {
    const notes = explainCmdline('cgroup_disable=memory console=tty1 root=PARTUUID=x rootwait', FILE, FLAGS)
    expect(notes[0]).toBe(
      'the running kernel was not started with cgroup_memory=1 cgroup_enable=memory cgroup_enable=cpuset ' +
        '(/proc/cmdline lacks them): not rebooted since cmdline.txt changed, ' +
        'or the bootloader read another cmdline.txt',
    )
    expect(notes[1]).toContain(
      '"cgroup_disable=memory" in /proc/cmdline turns the memory cgroup off (not in cmdline.txt',
    )
    expect(notes[1]).toContain('and nothing turns it on')
  })

  it('a failed check on a host names what overrode the flags', async () => {
    const state = convergedPi('pi-k3s')
    state.cgroupControllers = 'cpuset cpu io pids\n'
    state.procCmdline = `${state.procCmdline.trim()} cgroup_disable=memory\n`
    const { rep, s } = await runPrep(state)
    expect(s.exitCode).toBe(2)
    expect(rep.lines.join('\n')).toContain(
      '"cgroup_disable=memory" in /proc/cmdline turns the memory cgroup off (not in cmdline.txt: the firmware',
    )
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
