// Issue 15 on the lab: a cluster of mixed OS releases, as the owner's is now. The server and one agent on Debian 12
// (bookworm: dphys-swapfile), two Pi 5 agents on Debian 13 (trixie, the lab's other image): pi5-worker-1 as Pi OS
// trixie has it (the rpi-swap generator, a stand-in, and Debian's real systemd-zram-generator run through its
// container wrapper), pi5-worker-2 as plain Debian 13 (the zram generator only). From freshly flashed disks to Ready
// with one site run on the owner's inventory (pi3-worker-2 replaced by the Pi 5s), swap off after the reboot on every
// host, read from the host side and not through the tool, and a rerun with changed=0. See test/standins/README.md for
// what "swap on" can and cannot look like in a container.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseDocument } from 'yaml'
import { RPI_SWAP_FILES } from '../lab/image.ts'
import { labAddress, labBootId, labDown, labExec, labStart, labStatus, labStop, labUp } from '../lab/lab.ts'
import { LAB_INVENTORY, onHost, runPlaybookCli } from './helpers.ts'

const BOOKWORM = ['pi-k3s', 'pi3-worker-1']
const TRIXIE = ['pi5-worker-1', 'pi5-worker-2']
const ALL = [...BOOKWORM, ...TRIXIE]
const AGENTS = ['pi3-worker-1', ...TRIXIE]
const RPI_SWAP_DROPIN = '/etc/rpi/swap.conf.d/99-pi-provision-no-swap.conf'
const ZRAM_DROPIN = '/etc/systemd/zram-generator.conf.d/99-pi-provision-no-swap.conf'
/** Units that are swap or make it: swap units, zram setup, dphys-swapfile, rpi-swap's (the stand-in's too). */
const SWAP_UNIT = /\.swap$|^systemd-zram-setup@|^dphys-swapfile\.service$|^rpi-.*swap/

let dir = ''
let inventory = ''

const unitProp = async (host: string, unit: string, prop: string) =>
  (await onHost(host, `systemctl show -p ${prop} --value ${unit}`)).trim()

/** Failed units that are swap or make it, as the host's systemd lists them. */
async function failedSwapUnits(host: string): Promise<string[]> {
  const out = await onHost(host, 'systemctl list-units --failed --all --plain --no-legend --full')
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((u) => u && SWAP_UNIT.test(u))
}

/** Swap units systemd knows of on the host (loaded or not), e.g. a generator's var-swap.swap or dev-zram0.swap. */
async function swapUnits(host: string): Promise<string[]> {
  const out = await onHost(host, 'systemctl list-units --all --type=swap --plain --no-legend --full')
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean)
}

/** What a generator would make now from the host's configuration: its output directory's files, run into a temp dir. */
async function generated(host: string, generator: string): Promise<string[]> {
  const out = await onHost(host, `d=$(mktemp -d) && ${generator} "$d" "$d" "$d" 2>&1 >/dev/null; find "$d" -type f`)
  return out.split('\n').filter((l) => l.startsWith('/'))
}

beforeAll(async () => {
  await labDown()
  await labUp(BOOKWORM, { fresh: true, suite: 'bookworm' })
  await labUp(TRIXIE, { fresh: true, suite: 'trixie' })
  // pi5-worker-2 is plain Debian 13: no Raspberry Pi rpi-swap, only Debian's zram generator. Power-cycled so the
  // boot runs the generators as installed now.
  const strip = await labExec('pi5-worker-2', `rm ${RPI_SWAP_FILES.join(' ')}`)
  if (strip.code !== 0) throw new Error(`pi5-worker-2: ${strip.stderr}`)
  await labStop('pi5-worker-2')
  await labStart('pi5-worker-2')
  // The owner's inventory (the test lab's) with pi3-worker-2 replaced by the two Pi 5s, at their lab addresses.
  const doc = parseDocument(readFileSync(LAB_INVENTORY, 'utf8'))
  doc.deleteIn(['all', 'children', 'agent', 'hosts', 'pi3-worker-2'])
  for (const h of TRIXIE)
    doc.setIn(['all', 'children', 'agent', 'hosts', h], {
      address: labAddress(h),
      hardware: 'pi5',
      node_labels: ['hardware=pi5'],
    })
  dir = mkdtempSync(join(tmpdir(), 'trixie-'))
  inventory = join(dir, 'lab.yaml')
  writeFileSync(inventory, doc.toString())
}, 900_000)

afterAll(async () => {
  if (dir) rmSync(dir, { recursive: true, force: true })
  await labDown()
})

describe('a lab of Debian 12 and Debian 13 hosts', () => {
  it('each host runs the release it was flashed with', async () => {
    const status = await labStatus()
    for (const h of ALL)
      expect(
        status.hosts.find((s) => s.name === h),
        h,
      ).toMatchObject({
        state: 'running',
        suite: BOOKWORM.includes(h) ? 'bookworm' : 'trixie',
      })
    for (const h of BOOKWORM)
      expect(await onHost(h, '. /etc/os-release; echo "$VERSION_ID $VERSION_CODENAME"')).toBe('12 bookworm\n')
    for (const h of TRIXIE)
      expect(await onHost(h, '. /etc/os-release; echo "$VERSION_ID $VERSION_CODENAME"')).toBe('13 trixie\n')
  })

  it('a flashed host is not re-flashed with another suite without --fresh', async () => {
    const boot = await labBootId('pi5-worker-1')
    await expect(labUp(['pi5-worker-1'], { suite: 'bookworm' })).rejects.toThrow(
      'pi5-worker-1 is flashed with trixie: --fresh to flash bookworm',
    )
    await expect(labUp(['pi5-worker-1'], { suite: 'sid' })).rejects.toThrow('unknown suite "sid"')
    expect(await labBootId('pi5-worker-1')).toBe(boot)
    expect(await onHost('pi5-worker-1', '. /etc/os-release; echo $VERSION_ID')).toBe('13\n')
  })

  it('before provisioning, every host has its swap mechanism on', async () => {
    // Debian 12: dphys-swapfile enabled and started at boot (its swapon is refused in a container).
    for (const h of BOOKWORM) expect(await unitProp(h, 'dphys-swapfile.service', 'UnitFileState')).toBe('enabled')
    for (const h of TRIXIE) expect(await unitProp(h, 'dphys-swapfile.service', 'LoadState')).toBe('not-found')
    // Pi OS trixie: the rpi-swap stand-in made its swap unit from Pi OS's default swap.conf...
    expect(await onHost('pi5-worker-1', 'cat /run/systemd/generator/var-swap.swap')).toContain(
      'rpi-swap-generator stand-in (Mechanism=auto)',
    )
    expect(await onHost('pi5-worker-1', 'journalctl -b --no-pager -u var-swap.swap')).toContain('unsupported')
    expect(await unitProp('pi5-worker-2', 'var-swap.swap', 'LoadState')).toBe('not-found')
    // ... and on both, Debian's real zram generator its zram0 swap, whose setup fails for want of a device.
    for (const h of TRIXIE) {
      expect(await onHost(h, "dpkg-query -W -f='${Status}' systemd-zram-generator")).toBe('install ok installed')
      expect(await onHost(h, 'cat /run/systemd/generator/dev-zram0.swap')).toContain(
        'Automatically generated by /usr/lib/systemd/system-generators/zram-generator',
      )
      expect(await swapUnits(h)).toContain('dev-zram0.swap')
      expect(await unitProp(h, 'systemd-zram-setup@zram0.service', 'ActiveState')).toBe('failed')
    }
  })

  it('site takes the four fresh hosts to a Ready cluster; swap is off after the reboot on every host', async () => {
    const boots = Object.fromEntries(await Promise.all(ALL.map(async (h) => [h, await labBootId(h)])))
    const run = await runPlaybookCli('site', ['-i', inventory])
    expect(run.code, run.out).toBe(0)
    for (const h of ALL) expect(run.recap[h]?.failed, h).toBe(0)
    // Each host by its own mechanism: dphys-swapfile on Debian 12, the generators' configuration on Debian 13.
    for (const h of BOOKWORM) expect(run.out).toContain(`changed: [${h}] pi-prep | Stop and disable dphys-swapfile`)
    expect(run.out).toContain('changed: [pi5-worker-1] pi-prep | Turn off rpi-swap (swap.conf drop-in Mechanism=none)')
    expect(run.out).toContain('ok: [pi5-worker-2] pi-prep | Turn off rpi-swap (swap.conf drop-in Mechanism=none)')
    for (const h of TRIXIE)
      expect(run.out).toContain(`changed: [${h}] pi-prep | Turn off zram-generator (drop-in with no zram device)`)

    for (const h of ALL) {
      expect(await labBootId(h), `${h} rebooted for cmdline.txt`).not.toBe(boots[h])
      expect(await onHost(h, 'tail -n +2 /proc/swaps'), `${h}: /proc/swaps`).toBe('')
      expect(await failedSwapUnits(h), `${h}: failed swap units`).toEqual([])
      expect(await onHost(h, '[ -e /var/swap ] && echo swap file || echo none'), h).toBe('none\n')
    }
    for (const h of BOOKWORM) {
      expect(await unitProp(h, 'dphys-swapfile.service', 'UnitFileState')).toBe('disabled')
      expect(await unitProp(h, 'dphys-swapfile.service', 'ActiveState')).toBe('inactive')
    }
    // The generators' configuration says off: rpi-swap's last Mechanism= is none, zram-generator's drop-in leaves no
    // device; they ran at this boot and made no swap unit, and run again now they make none either.
    expect(await onHost('pi5-worker-1', `cat ${RPI_SWAP_DROPIN}`)).toMatch(/^\[Main\]\nMechanism=none\n/m)
    expect(await generated('pi5-worker-1', '/usr/lib/systemd/system-generators/rpi-swap-generator')).toEqual([])
    for (const h of TRIXIE) {
      expect(await onHost(h, `cat ${ZRAM_DROPIN}`)).toMatch(/^\[zram0\]\nzram-size *= *0\n/m)
      expect(await swapUnits(h), `${h}: swap units after the reboot`).toEqual([])
      expect(await onHost(h, 'ls /run/systemd/generator | grep -c -e swap -e zram || true')).toBe('0\n')
      expect(await generated(h, '/etc/systemd/system-generators/zram-generator')).toEqual([])
      expect(
        await onHost(h, 'ZRAM_GENERATOR_ROOT=/ /usr/lib/systemd/system-generators/zram-generator $(mktemp -d) 2>&1'),
      ).toContain('No devices configured')
    }

    const nodes = JSON.parse(await onHost('pi-k3s', 'k3s kubectl get nodes -o json')) as {
      items: { metadata: { name: string }; status: { conditions: { type: string; status: string }[] } }[]
    }
    const ready = nodes.items
      .filter((n) => n.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True'))
      .map((n) => n.metadata.name)
      .sort()
    expect(ready).toEqual([...ALL].sort())
    for (const h of AGENTS) expect(await onHost(h, 'systemctl is-active k3s-agent')).toBe('active\n')
  })

  it('a rerun reports changed=0 on every host and reboots none', async () => {
    const boots = await Promise.all(ALL.map(labBootId))
    const run = await runPlaybookCli('site', ['-i', inventory])
    expect(run.code, run.out).toBe(0)
    for (const h of ALL) {
      expect(run.recap[h]?.changed, `${h}\n${run.out}`).toBe(0)
      expect(run.recap[h]?.failed, h).toBe(0)
    }
    expect(await Promise.all(ALL.map(labBootId))).toEqual(boots)
  })
})
