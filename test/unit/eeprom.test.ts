// The bootloader EEPROM fact: its script run for real (sh) in front of the lab's rpi-eeprom-update stand-in, and
// its parser on output shaped like the real tool's (raspberrypi/rpi-eeprom's printVersions).
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { beforeEach, describe, expect, it } from 'vitest'
import { eepromAction, eepromDate, eepromFact, hasEeprom, parseEeprom } from '../../lib/eeprom.ts'

const STANDIN = resolve(import.meta.dirname, '../standins/rpi-eeprom')
const OLD = 1705580070 // 2024-01-18
const NEW = 1741608000 // 2025-03-10

let dir: string
let bootfs: string
function setEeprom(current: number, latest: number, config = ''): void {
  writeFileSync(join(dir, 'current'), `${current}\n`)
  writeFileSync(join(dir, 'latest'), `${latest}\n`)
  writeFileSync(join(dir, 'config'), config)
}
function fact(): ReturnType<typeof parseEeprom> {
  // The fact's own script, with the stand-in first in PATH; /proc/device-tree is absent here, as in the lab.
  const r = execFileSync('sh', ['-c', eepromFact.script], {
    env: { PATH: `${STANDIN}:/usr/bin:/bin`, RPI_EEPROM_STANDIN_STATE: dir, BOOTFS: bootfs },
    encoding: 'utf8',
  })
  return eepromFact.parse({ code: 0, stdout: r, stderr: '' })
}
const standin = (...args: string[]) =>
  execFileSync(join(STANDIN, 'rpi-eeprom-update'), args, {
    env: { PATH: '/usr/bin:/bin', RPI_EEPROM_STANDIN_STATE: dir, BOOTFS: bootfs },
    encoding: 'utf8',
  })

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'eeprom-'))
  bootfs = join(dir, 'boot')
  mkdirSync(bootfs)
})

describe('the EEPROM fact against the stand-in', () => {
  it('reads an up-to-date bootloader: nothing to do', () => {
    setEeprom(NEW, NEW)
    const e = fact()
    expect(e).toMatchObject({ tool: true, current: NEW, latest: NEW, available: false, staged: false })
    expect(eepromAction(e, 'pi5')).toBe('none')
  })

  it('reads an available update: stage it; once staged, reboot for it; once flashed, nothing', () => {
    setEeprom(OLD, NEW)
    expect(eepromAction(fact(), 'pi5')).toBe('stage')
    standin('-a')
    const staged = fact()
    expect(staged).toMatchObject({ available: true, staged: true })
    expect(eepromAction(staged, 'pi5')).toBe('reboot')
    // The ROM flashed it; pieeprom.upd stays in the boot partition, as on a real Pi: not a staged update any more.
    setEeprom(NEW, NEW)
    const flashed = fact()
    expect(flashed.staged).toBe(true)
    expect(eepromAction(flashed, 'pi5')).toBe('none')
  })

  it('leaves a frozen bootloader alone', () => {
    setEeprom(OLD, NEW, '[all]\nFREEZE_VERSION=1\n')
    const e = fact()
    expect(e.frozen).toBe(true)
    expect(eepromAction(e, 'pi5')).toBe('none')
  })

  it('never stages on a board without an EEPROM, whatever the tool says', () => {
    setEeprom(OLD, NEW)
    expect(eepromAction(fact(), 'pi3')).toBe('none')
    expect(eepromAction(fact(), undefined)).toBe('none')
  })

  it('says when there is no rpi-eeprom-update at all', () => {
    const r = execFileSync('/bin/sh', ['-c', eepromFact.script], { env: { PATH: dir }, encoding: 'utf8' })
    const e = eepromFact.parse({ code: 0, stdout: r, stderr: '' })
    expect(e.tool).toBe(false)
    expect(hasEeprom(e, 'pi5')).toBe(false)
  })
})

describe('parseEeprom', () => {
  const real = (rc: number, model: string) =>
    [
      `@model ${model}`,
      `@rc ${rc}`,
      '*** UPDATE AVAILABLE ***',
      '',
      'BOOTLOADER: update available',
      `   CURRENT: Thu 18 Jan 12:14:30 UTC 2024 (${OLD})`,
      `    LATEST: Mon 10 Mar 12:00:00 UTC 2025 (${NEW})`,
      '   RELEASE: default (/usr/lib/firmware/raspberrypi/bootloader-2711/default)',
      '            Use raspi-config to change the release.',
      '',
      '  VL805_FW: Using bootloader EEPROM',
      '     VL805: up to date',
      '   CURRENT: 000138c0',
      '    LATEST: 000138c0',
    ].join('\n')

  it("takes the bootloader's versions, not the VL805 USB firmware's that follow them", () => {
    const e = parseEeprom(real(1, 'Raspberry Pi 4 Model B Rev 1.5'))
    expect(e).toMatchObject({ current: OLD, latest: NEW, available: true })
    expect(eepromDate(e.current)).toBe('2024-01-18')
  })

  it('decides by the device-tree model over the inventory when the kernel gives one', () => {
    expect(hasEeprom(parseEeprom(real(1, 'Raspberry Pi 5 Model B Rev 1.0')), 'pi3')).toBe(true)
    expect(hasEeprom(parseEeprom('@model Raspberry Pi 3 Model B Rev 1.2\n'), 'pi5')).toBe(false)
    expect(hasEeprom(parseEeprom('@model Raspberry Pi Compute Module 4 Rev 1.1\n@rc 0\n'), undefined)).toBe(true)
  })

  it('reports a failing tool with its words, and does nothing about it', () => {
    const e = parseEeprom('@model \n@rc 2\nrpi-eeprom-update: BCM2711 not detected\n')
    expect(e.error).toBe('rpi-eeprom-update failed (exit 2): rpi-eeprom-update: BCM2711 not detected')
    expect(eepromAction(e, 'pi4')).toBe('none')
  })
})
