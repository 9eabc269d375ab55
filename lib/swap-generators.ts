// Swap off for good on Debian 13 / Pi OS trixie, where swap comes from generators (rpi-swap, zram-generator) rather
// than units: turned off the way their documentation says, by configuration (drop-ins), with what is set up now read
// in one fact, and swap units a generator left failed told apart from live ones.

import { defineFact } from './facts.ts'

const GENERATOR_DIRS = [
  '/etc/systemd/system-generators',
  '/run/systemd/system-generators',
  '/usr/local/lib/systemd/system-generators',
  '/usr/lib/systemd/system-generators',
  '/lib/systemd/system-generators',
]
/** Pi OS's rpi-swap (swap.conf(5)): drop-ins sorted by file name across these directories, the last one wins. */
export const RPI_SWAP_DROPIN_DIRS = [
  '/usr/lib/rpi/swap.conf.d',
  '/usr/local/lib/rpi/swap.conf.d',
  '/run/rpi/swap.conf.d',
  '/etc/rpi/swap.conf.d',
]
export const RPI_SWAP_DROPIN = '/etc/rpi/swap.conf.d/99-pi-provision-no-swap.conf'
export const RPI_SWAP_OFF = '# pi-provision: k3s wants no swap (swap.conf(5): Mechanism=none)\n[Main]\nMechanism=none\n'
/** zram-generator.conf(5): the main file (first found) and drop-ins in these directories. */
const ZRAM_CONFIGS = [
  '/run/systemd/zram-generator.conf',
  '/etc/systemd/zram-generator.conf',
  '/usr/local/lib/systemd/zram-generator.conf',
  '/usr/lib/systemd/zram-generator.conf',
]
const ZRAM_DROPIN_DIRS = ZRAM_CONFIGS.map((c) => `${c}.d`)
export const ZRAM_DROPIN = '/etc/systemd/zram-generator.conf.d/99-pi-provision-no-swap.conf'

export interface SwapGenerators {
  rpiSwap: boolean
  zram: boolean
  /** rpi-swap drop-ins that set Mechanism: [path, value], in the order rpi-swap reads them. */
  rpiMechanisms: [string, string][]
  /** zram devices some zram-generator config (or rpi-swap's, in /run) defines: zram0, ... */
  zramDevices: string[]
}

export const swapGeneratorsFact = defineFact(
  'swap-generators',
  [
    `for d in ${GENERATOR_DIRS.join(' ')}; do for g in rpi-swap-generator zram-generator; do`,
    `  [ -e "$d/$g" ] && echo "generator $g"; done; done`,
    `dpkg-query -W -f='\${Package} \${db:Status-Abbrev}\\n' rpi-swap systemd-zram-generator 2>/dev/null`,
    `for f in ${RPI_SWAP_DROPIN_DIRS.map((d) => `${d}/*.conf`).join(' ')}; do [ -f "$f" ] || continue`,
    `  m=$(sed -n 's/^[[:space:]]*Mechanism[[:space:]]*=[[:space:]]*//p' "$f" | tail -n 1)`,
    `  [ -n "$m" ] && printf 'mechanism %s %s\\n' "$f" "$m"; done`,
    `for f in ${ZRAM_CONFIGS.join(' ')} ${ZRAM_DROPIN_DIRS.map((d) => `${d}/*.conf`).join(' ')}; do`,
    `  [ -f "$f" ] && sed -n 's/^[[:space:]]*\\[\\(zram[0-9]*\\)\\].*/device \\1/p' "$f"; done`,
    'true',
  ].join('\n'),
  (r) => parseSwapGenerators(r.stdout),
)

export function parseSwapGenerators(stdout: string): SwapGenerators {
  const out: SwapGenerators = { rpiSwap: false, zram: false, rpiMechanisms: [], zramDevices: [] }
  const devices = new Set<string>()
  for (const line of stdout.split('\n')) {
    const [kind, a = '', b = ''] = line.trim().split(/\s+/)
    if (kind === 'generator' && a === 'rpi-swap-generator') out.rpiSwap = true
    if (kind === 'generator' && a === 'zram-generator') out.zram = true
    if (kind === 'rpi-swap' && a[1] === 'i') out.rpiSwap = true
    if (kind === 'systemd-zram-generator' && a[1] === 'i') out.zram = true
    if (kind === 'mechanism') out.rpiMechanisms.push([a, b])
    if (kind === 'device') devices.add(a)
  }
  // swap.conf(5): drop-ins are sorted by file name whatever their directory; a name in /etc hides the same name
  // elsewhere. The last Mechanism= read wins.
  const byName = new Map<string, [string, string]>()
  const rank = (p: string): number => RPI_SWAP_DROPIN_DIRS.findIndex((d) => p.startsWith(d + '/'))
  for (const m of out.rpiMechanisms) {
    const name = m[0].slice(m[0].lastIndexOf('/') + 1)
    const had = byName.get(name)
    if (!had || rank(m[0]) > rank(had[0])) byName.set(name, m)
  }
  out.rpiMechanisms = [...byName.entries()].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)).map(([, m]) => m)
  out.zramDevices = [...new Set(['zram0', ...[...devices].sort()])]
  return out
}

/** Every zram device the configuration defines, with a size of 0 and a RAM limit of 0 MB: none is created. */
export function zramOffContent(devices: readonly string[]): string {
  const head =
    '# pi-provision: k3s wants no swap. zram-generator.conf(5): a device whose final size is 0 is discarded,\n' +
    '# and none is created on a host with more RAM than host-memory-limit. This file sorts last in the drop-ins.\n'
  return head + devices.map((d) => `[${d}]\nzram-size = 0\nhost-memory-limit = 0\n`).join('')
}

/** The units a swap generator or package leaves behind, read live (after the reload or the reboot). */
export const FAILED_SWAP_UNITS_PROBE =
  "systemctl list-units --all --failed --plain --no-legend --full 2>/dev/null | awk '{print $1}' | " +
  "grep -E '\\.swap$|^systemd-zram-setup@|^dphys-swapfile\\.service$|^rpi-.*swap' | " +
  'while read -r u; do printf "%s %s %s\\n" "$u" "$(systemctl show -p LoadState --value "$u")" ' +
  '"$(systemctl show -p UnitFileState --value "$u")"; done; true'

/** Failed swap units: the ones nothing will start again (gone, masked, disabled) and the ones still configured. */
export function parseFailedSwapUnits(stdout: string): { stale: string[]; live: string[] } {
  const stale: string[] = []
  const live: string[] = []
  for (const line of stdout.split('\n')) {
    const [unit, load = '', fileState = ''] = line.trim().split(/\s+/)
    if (!unit) continue
    const gone = load === 'not-found' || load === 'masked' || fileState === 'masked' || fileState === 'disabled'
    ;(gone ? stale : live).push(unit)
  }
  return { stale, live }
}
