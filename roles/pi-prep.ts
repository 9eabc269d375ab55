// pi-prep: what the owner did by hand on every fresh Pi before k3s — hostname, cgroup flags in
// cmdline.txt (once, not appended twice), swap off for good, the packages, modules and sysctls k3s
// wants — then one reboot, only on hosts whose cmdline.txt changed, and a check that it all took.

import { nodeNameFrom } from '../lib/host-identity.ts'
import { defineFact } from '../lib/facts.ts'
import { flushHandlers, handler, type Role, type StepContext } from '../lib/role.ts'
import {
  aptPackages,
  command,
  file,
  fileFact,
  packagesFact,
  planFile,
  rebootHandler,
  systemdReloadHandler,
  systemdUnit,
  tokensInFile,
} from '../lib/steps.ts'
import { ProvisionError } from '../lib/errors.ts'
import { quote } from '../lib/shell.ts'
import { explainCmdline, MEMORY_CGROUP_PROBE, parseMemoryCgroup } from '../lib/memory-cgroup.ts'
import {
  FAILED_SWAP_UNITS_PROBE,
  parseFailedSwapUnits,
  RPI_SWAP_DROPIN,
  RPI_SWAP_OFF,
  swapGeneratorsFact,
  ZRAM_DROPIN,
  zramOffContent,
} from '../lib/swap-generators.ts'

// Bookworm keeps the boot partition at /boot/firmware; older Pi OS at /boot.
export const CMDLINE_CANDIDATES = ['/boot/firmware/cmdline.txt', '/boot/cmdline.txt']

export const cmdlinePathFact = defineFact(
  'cmdline-path',
  CMDLINE_CANDIDATES.map((p) => `[ -f ${p} ] && { echo ${p}; exit 0; }`).join('; ') + '; exit 1',
  (r) => (r.code === 0 ? r.stdout.trim() : null),
)

export interface ArchFacts {
  kernel: string
  userland: string
  longBit: number
  /** k3s release asset suffix: arm64, armhf or amd64. */
  k3sArch: string
  /** A 32-bit userland on a 64-bit kernel: uname -m lies about what binaries can run. */
  mixed: boolean
}

export const archFact = defineFact('arch', 'uname -m; dpkg --print-architecture; getconf LONG_BIT', (r) =>
  parseArch(r.stdout),
)

/** k3s must match the userland, not the kernel: a Pi with 32-bit Pi OS on a 64-bit kernel reports aarch64. */
export function parseArch(stdout: string): ArchFacts {
  const [kernel = '', userland = '', bits = ''] = stdout
    .trim()
    .split('\n')
    .map((s) => s.trim())
  const longBit = Number(bits)
  const byUserland: Record<string, string> = { arm64: 'arm64', armhf: 'armhf', armel: 'armhf', amd64: 'amd64' }
  const k3sArch = byUserland[userland]
  if (!k3sArch)
    throw new ProvisionError(
      'step',
      `unsupported architecture: kernel ${kernel}, userland ${userland || 'unknown'} ` +
        '(k3s ships arm64, armhf and amd64)',
    )
  const kernel64 = kernel === 'aarch64' || kernel === 'x86_64'
  return { kernel, userland, longBit, k3sArch, mixed: kernel64 && longBit === 32 }
}

// Masked as before on every host (a zram device set up by hand or by an older zram-generator). Pi OS trixie's rpi-swap
// is a generator, not a unit: masking a rpi-swap.service does nothing, its swap.conf is what turns it off (below).
const SWAP_UNITS = ['systemd-zram-setup@zram0.service']
const K3S_MODULES = ['overlay', 'br_netfilter']
/** How to tell a module's feature is there, loaded or built in. */
const MODULE_PRESENT: Record<string, string> = {
  overlay: 'grep -qw overlay /proc/filesystems',
  br_netfilter: '[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]',
}
const K3S_SYSCTLS: Record<string, string> = {
  'net.ipv4.ip_forward': '1',
  'net.bridge.bridge-nf-call-iptables': '1',
  'net.bridge.bridge-nf-call-ip6tables': '1',
}

// nfs-common: the NAS volumes (Jellyfin, backups); curl + ca-certificates: the k3s install script.
export const BASE_PACKAGES = ['nfs-common', 'curl', 'ca-certificates', 'iptables']

async function cmdlinePath(ctx: StepContext): Promise<string> {
  const p = await ctx.facts.get(cmdlinePathFact)
  if (!p)
    throw new ProvisionError(
      'step',
      `no cmdline.txt on the host (looked for ${CMDLINE_CANDIDATES.join(', ')}): is this Raspberry Pi OS?`,
      { place: { host: ctx.host } },
    )
  return p
}

const CUT = '@@pi-prep-cut@@'

const hostnameOf = (ctx: StepContext): string => nodeNameFrom(ctx.vars, ctx.host)

export const piPrep: Role = {
  name: 'pi-prep',
  steps: [
    {
      // k3s ships arm64, armhf and amd64: anything else fails here, before packages and a reboot.
      name: 'Check the CPU architecture is one k3s ships',
      facts: () => [archFact],
      async plan(ctx) {
        const a = await ctx.facts.get(archFact)
        return {
          status: 'ok',
          message: `${a.k3sArch}${a.mixed ? ` (32-bit userland on a 64-bit ${a.kernel} kernel)` : ''}`,
        }
      },
    },
    file('Set the hostname', (ctx) => ({ path: '/etc/hostname', content: `${hostnameOf(ctx)}\n`, mode: '0644' }), {
      notify: ['Apply the hostname'],
    }),
    {
      name: 'Map the hostname in /etc/hosts',
      facts: () => [fileFact('/etc/hosts')],
      async plan(ctx) {
        const cur = await ctx.facts.get(fileFact('/etc/hosts'))
        const want = `127.0.1.1\t${hostnameOf(ctx)}`
        const lines = (cur.content ?? '').replace(/\n$/, '').split('\n')
        const idx = lines.findIndex((l) => /^127\.0\.1\.1\s/.test(l))
        if (idx >= 0 && lines[idx].split(/\s+/)[1] === hostnameOf(ctx)) return { status: 'ok' }
        if (idx >= 0) lines[idx] = want
        else lines.push(want)
        return planFile(cur, { path: '/etc/hosts', content: lines.join('\n') + '\n', mode: '0644' }, '')
      },
    },
    tokensInFile('Add the cgroup flags to cmdline.txt', cmdlinePath, (ctx) => ctx.vars.cmdline_flags, {
      notify: ['Reboot'],
      facts: () => [cmdlinePathFact],
    }),
    command('Turn swap off now', () => ({
      script: 'swapoff -a',
      unless: `[ "$(wc -l < /proc/swaps)" -le 1 ]`,
      summary: 'swapoff -a',
    })),
    systemdUnit(
      'Stop and disable dphys-swapfile',
      () => ({ unit: 'dphys-swapfile.service', enabled: false, active: false, deferReload: true }),
      {
        notify: ['Reload systemd units'],
        when: async (ctx) => (await ctx.facts.get(packagesFact(['dphys-swapfile']))).get('dphys-swapfile') === true,
        facts: () => [packagesFact(['dphys-swapfile']), fileFact('/var/swap')],
      },
    ),
    command('Remove the dphys-swapfile swap file', () => ({
      script: 'dphys-swapfile uninstall >/dev/null 2>&1 || true; rm -f /var/swap',
      unless: '[ ! -e /var/swap ]',
      summary: 'remove /var/swap',
    })),
    {
      name: 'Turn off rpi-swap (swap.conf drop-in Mechanism=none)',
      facts: () => [swapGeneratorsFact, fileFact(RPI_SWAP_DROPIN)],
      notify: ['Reload systemd units'],
      async plan(ctx) {
        const g = await ctx.facts.get(swapGeneratorsFact)
        if (!g.rpiSwap) return { status: 'ok', message: 'no rpi-swap on this host' }
        // A drop-in that sorts after ours and sets another mechanism would win: say so rather than claim swap is off.
        const ours = RPI_SWAP_DROPIN.slice(RPI_SWAP_DROPIN.lastIndexOf('/') + 1)
        const later = g.rpiMechanisms.filter(([p, m]) => p.slice(p.lastIndexOf('/') + 1) > ours && m !== 'none')
        if (later.length)
          return {
            status: 'failed',
            message:
              later.map(([p, m]) => `${p} (Mechanism=${m})`).join(', ') + ` sorts after ${RPI_SWAP_DROPIN} and wins`,
          }
        return planFile(
          await ctx.facts.get(fileFact(RPI_SWAP_DROPIN)),
          { path: RPI_SWAP_DROPIN, content: RPI_SWAP_OFF },
          '',
        )
      },
    },
    {
      name: 'Turn off zram-generator (drop-in with no zram device)',
      facts: () => [swapGeneratorsFact, fileFact(ZRAM_DROPIN)],
      notify: ['Reload systemd units'],
      async plan(ctx) {
        const g = await ctx.facts.get(swapGeneratorsFact)
        if (!g.zram) return { status: 'ok', message: 'no zram-generator on this host' }
        const cur = await ctx.facts.get(fileFact(ZRAM_DROPIN))
        return planFile(cur, { path: ZRAM_DROPIN, content: zramOffContent(g.zramDevices) }, '')
      },
    },
    ...SWAP_UNITS.map((unit) =>
      systemdUnit(`Mask ${unit}`, () => ({ unit, masked: true, deferReload: true }), {
        notify: ['Reload systemd units'],
      }),
    ),
    aptPackages('Install the packages the cluster needs', (ctx) => ({
      present: [...BASE_PACKAGES, ...ctx.vars.extra_packages],
    })),
    file(
      'Load the kernel modules k3s needs at boot',
      () => ({ path: '/etc/modules-load.d/k3s.conf', content: K3S_MODULES.join('\n') + '\n' }),
      {
        notify: ['Load the kernel modules'],
      },
    ),
    file(
      'Set the sysctls k3s needs',
      () => ({
        path: '/etc/sysctl.d/90-k3s.conf',
        content:
          Object.entries(K3S_SYSCTLS)
            .map(([k, v]) => `${k} = ${v}`)
            .join('\n') + '\n',
      }),
      { notify: ['Apply the sysctls'] },
    ),
    flushHandlers('Reboot where cmdline.txt changed, then verify'),
    {
      // After the reload (or the reboot) a generator's swap unit is gone, but a failed one stays listed as failed.
      name: 'Clear failed swap units nothing starts any more',
      onlyForReal: 'it reads what the reload or the reboot left',
      async plan(ctx) {
        const { stale, live } = parseFailedSwapUnits((await ctx.must(FAILED_SWAP_UNITS_PROBE)).stdout)
        if (live.length)
          return {
            status: 'failed',
            message: `swap unit${live.length > 1 ? 's' : ''} ${live.join(', ')} failed and still configured`,
          }
        if (stale.length === 0) return { status: 'ok', message: 'no failed swap unit' }
        return {
          summary: `reset-failed ${stale.join(' ')}`,
          commands: [{ script: `systemctl reset-failed ${stale.map((u) => quote(u)).join(' ')}` }],
        }
      },
    },
    {
      name: 'Check swap is off',
      onlyForReal: 'it checks what the swap steps and the reboot did',
      async plan(ctx) {
        const r = await ctx.must('tail -n +2 /proc/swaps')
        if (r.stdout.trim()) return { status: 'failed', message: `swap is still on:\n${r.stdout.trim()}` }
        return { status: 'ok', message: 'no swap' }
      },
    },
    {
      name: 'Check the memory cgroup is available',
      onlyForReal: 'it checks what the reboot for cmdline.txt did',
      async plan(ctx) {
        const path = await cmdlinePath(ctx)
        const r = await ctx.must(
          `${MEMORY_CGROUP_PROBE}; echo ${CUT}; cat /proc/cmdline; echo ${CUT}; cat ${quote(path)}`,
        )
        const [probe = '', running = '', file = ''] = r.stdout.split(`${CUT}\n`)
        const verdict = parseMemoryCgroup(probe)
        const notes = explainCmdline(running, file, ctx.vars.cmdline_flags)
        if (verdict.ok)
          return { status: 'ok', message: verdict.detail + (notes.length ? ` (yet ${notes.join('; ')})` : '') }
        return {
          status: 'failed',
          message:
            `the memory cgroup is not enabled (${verdict.detail}): k3s will fail with ` +
            `"failed to find memory cgroup (v2)"; ` +
            (notes.length
              ? notes.join('; ')
              : `${path} has ${ctx.vars.cmdline_flags.join(' ')} and the kernel was started with them`),
        }
      },
    },
  ],
  handlers: [
    handler({
      name: 'Apply the hostname',
      async plan() {
        return { summary: 'apply the hostname', commands: [{ script: 'hostname -F /etc/hostname' }] }
      },
    }),
    handler({
      name: 'Load the kernel modules',
      async plan() {
        // Ask for what k3s needs, not for a module file: built into the kernel, a module may not exist at all.
        return {
          summary: 'modprobe ' + K3S_MODULES.join(' '),
          commands: K3S_MODULES.map((m) => ({ script: `${MODULE_PRESENT[m]} || modprobe ${m}` })),
        }
      },
    }),
    handler({
      name: 'Apply the sysctls',
      async plan() {
        return {
          summary: 'apply /etc/sysctl.d/90-k3s.conf',
          commands: [{ script: 'sysctl -q -p /etc/sysctl.d/90-k3s.conf' }],
        }
      },
    }),
    systemdReloadHandler('Reload systemd units'),
    rebootHandler('Reboot'),
  ],
}
