// The Pi 4/5 bootloader EEPROM in update.mts, on the lab. The lab has no EEPROM: the rpi-eeprom-update stand-in
// (test/standins/rpi-eeprom/) is installed on the hosts as Pi OS ships the rpi-eeprom package, with a boot unit
// that plays the ROM flashing a staged update at power-on. pi3-worker-2 is made a Pi 4 in a copy of the lab's
// inventory (the lab cannot show a device-tree model, so `hardware` decides); pi3-worker-1 stays a Pi 3 that has
// the tool all the same (it must never be asked to flash); pi-k3s, a Pi 5, is up to date.

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseDocument } from 'yaml'
import { labBootId, labDown, labExec } from '../lab/lab.ts'
import { convergedLab, LAB_INVENTORY, onHost, runPlaybookCli } from './helpers.ts'

const STANDIN = resolve(import.meta.dirname, '../standins/rpi-eeprom')
const OLD = 1705580070 // 2024-01-18
const NEW = 1741608000 // 2025-03-10
const ALL = ['pi-k3s', 'pi3-worker-1', 'pi3-worker-2']
const STATE = '/var/lib/rpi-eeprom-standin'

let inventory: string

/** The stand-in installed as the rpi-eeprom package would be, with this bootloader state. */
function installScript(current: number, latest: number): string {
  const file = (name: string) => Buffer.from(readFileSync(join(STANDIN, name))).toString('base64')
  return `set -e
echo ${file('rpi-eeprom-update')} | base64 -d > /usr/bin/rpi-eeprom-update
echo ${file('rpi-eeprom-config')} | base64 -d > /usr/bin/rpi-eeprom-config
chmod 755 /usr/bin/rpi-eeprom-update /usr/bin/rpi-eeprom-config
echo ${file('rpi-eeprom-rom-standin.service')} | base64 -d > /etc/systemd/system/rpi-eeprom-rom-standin.service
systemctl enable rpi-eeprom-rom-standin.service 2>/dev/null
mkdir -p ${STATE} /boot/firmware
echo ${current} > ${STATE}/current
echo ${latest} > ${STATE}/latest
: > ${STATE}/calls
# Debian's own updates must not decide what this test sees (as in update.test.ts): hold every package.
apt-mark hold $(dpkg-query -W -f='\${Package}\\n') >/dev/null`
}

const calls = async (h: string) => (await onHost(h, `cat ${STATE}/calls`)).trim().split('\n').filter(Boolean)
const unschedulable = async (h: string) =>
  (await onHost('pi-k3s', `k3s kubectl get node ${h} -o jsonpath='{.spec.unschedulable}'`)).trim()

beforeAll(async () => {
  await convergedLab()
  const setups: Record<string, [number, number]> = {
    'pi-k3s': [NEW, NEW],
    'pi3-worker-1': [OLD, NEW],
    'pi3-worker-2': [OLD, NEW],
  }
  for (const [h, [current, latest]] of Object.entries(setups)) {
    const r = await labExec(h, installScript(current, latest), { timeoutMs: 120_000 })
    if (r.code !== 0) throw new Error(`${h}: could not install the rpi-eeprom stand-in: ${r.stderr}`)
  }
  const doc = parseDocument(readFileSync(LAB_INVENTORY, 'utf8'))
  doc.setIn(['all', 'children', 'agent', 'hosts', 'pi3-worker-2', 'hardware'], 'pi4')
  inventory = join(mkdtempSync(join(tmpdir(), 'eeprom-')), 'lab.yaml')
  writeFileSync(inventory, doc.toString())
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('update.mts and the bootloader EEPROM', () => {
  it('--check names the bootloader update and the drain it needs, and flashes nothing', async () => {
    const boots = await Promise.all(ALL.map(labBootId))
    const run = await runPlaybookCli('update', ['-i', inventory, '--check'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(
      'changed: [pi3-worker-2] os-update | Stage the bootloader EEPROM update (Pi 4/5: rpi-eeprom-update -a, flashed by the reboot) (would stage the bootloader update 2024-01-18 -> 2025-03-10 (flashed by the reboot))',
    )
    expect(run.out).toMatch(/changed: \[pi3-worker-2\] os-update \| Drain this node .*\(would drain pi3-worker-2/)
    expect(await calls('pi3-worker-2')).not.toContainEqual(expect.stringMatching(/ -a$/))
    expect(await onHost('pi3-worker-2', 'ls /boot/firmware')).not.toContain('pieeprom.upd')
    expect(await Promise.all(ALL.map(labBootId))).toEqual(boots)
  })

  it('stages the update in the drained window, the one reboot flashes it, the node comes back; a rerun does nothing', async () => {
    const boots = Object.fromEntries(await Promise.all(ALL.map(async (h) => [h, await labBootId(h)] as const)))
    // -v: the ok lines carry their messages (the bootloader versions).
    const run = await runPlaybookCli('update', ['-i', inventory, '-v'])
    expect(run.code, run.out).toBe(0)

    // The Pi 4 agent: drained, staged, rebooted once, flashed, checked, uncordoned, in that order.
    const at = (s: string) => {
      const i = run.out.indexOf(s)
      expect(i, `${s}\n${run.out}`).toBeGreaterThanOrEqual(0)
      return i
    }
    const order = [
      at('[pi3-worker-2] os-update | Drain this node'),
      at('(stage the bootloader update 2024-01-18 -> 2025-03-10 (flashed by the reboot))'),
      at('changed: [pi3-worker-2] os-update | handler: Reboot (rebooted in'),
      at(
        'ok: [pi3-worker-2] os-update | Check that the reboot flashed the bootloader update (bootloader 2025-03-10 (was 2024-01-18 -> 2025-03-10))',
      ),
      at('(uncordoned pi3-worker-2)'),
    ]
    expect([...order].sort((a, b) => a - b)).toEqual(order)
    expect(await labBootId('pi3-worker-2')).not.toBe(boots['pi3-worker-2'])
    const worker2 = await calls('pi3-worker-2')
    expect(worker2.filter((c) => / -a$/.test(c))).toHaveLength(1)
    expect(worker2).toContainEqual(expect.stringMatching(new RegExp(`flashed ${NEW}$`)))
    expect((await onHost('pi3-worker-2', `cat ${STATE}/current`)).trim()).toBe(String(NEW))
    expect(await unschedulable('pi3-worker-2')).toBe('')

    // The Pi 3 has the tool but no EEPROM: never asked to flash (its model is unknown to the host in the lab, so
    // the tool is asked what it sees, read-only), not rebooted.
    expect(run.out).toContain(
      'ok: [pi3-worker-1] os-update | Stage the bootloader EEPROM update (Pi 4/5: rpi-eeprom-update -a, flashed by the reboot) (no bootloader EEPROM (pi3))',
    )
    expect(await calls('pi3-worker-1')).not.toContainEqual(expect.stringMatching(/ -a$/))
    expect(await labBootId('pi3-worker-1')).toBe(boots['pi3-worker-1'])
    // The Pi 5 server: its version reported, nothing staged, not rebooted.
    expect(run.out).toContain(
      'ok: [pi-k3s] os-update | Stage the bootloader EEPROM update (Pi 4/5: rpi-eeprom-update -a, flashed by the reboot) (bootloader 2025-03-10, up to date)',
    )
    expect(await labBootId('pi-k3s')).toBe(boots['pi-k3s'])

    // pieeprom.upd stays in the boot partition after the flash, as on a real Pi: that is no reason to reboot again.
    expect(await onHost('pi3-worker-2', 'ls /boot/firmware')).toContain('pieeprom.upd')
    const flashedBoot = await labBootId('pi3-worker-2')
    const again = await runPlaybookCli('update', ['-i', inventory])
    expect(again.code, again.out).toBe(0)
    for (const [h, c] of Object.entries(again.recap)) expect(c.changed, `${h}\n${again.out}`).toBe(0)
    expect(await labBootId('pi3-worker-2')).toBe(flashedBoot)
  })
})
