// The bootloader EEPROM of a Pi 4 or Pi 5 (the Pi 3 and older boot from the SD card and have none). Raspberry
// Pi OS's rpi-eeprom package ships the images and `rpi-eeprom-update`:
//   rpi-eeprom-update        prints CURRENT and LATEST; exit 0 up to date, 1 an update is available
//   rpi-eeprom-update -a     stages the update in the boot partition (pieeprom.upd); the ROM flashes it at the
//                            next boot
//   rpi-eeprom-update -b     prints the boot partition, where a staged update waits
// A staged update is therefore only done after a reboot; os-update stages it inside the drained window and lets
// the same reboot apply it.

import { defineFact } from './facts.ts'

export interface EepromState {
  /** No rpi-eeprom-update on the host (not Pi OS, or the package removed). */
  tool: boolean
  /** /proc/device-tree/model, when the kernel exposes it. */
  model?: string
  /** Bootloader build times (seconds since the epoch), as rpi-eeprom-update prints them. */
  current?: number
  latest?: number
  /** rpi-eeprom-update said an update is available (exit 1). */
  available: boolean
  /**
   * pieeprom.upd is in the boot partition. It may stay there after the ROM flashed it, so it counts as a staged
   * update only while the running bootloader is older than the latest one.
   */
  staged: boolean
  /** The bootloader config says FREEZE_VERSION=1: the owner keeps this version (rpi-eeprom-update -a refuses). */
  frozen: boolean
  /** rpi-eeprom-update failed: its last lines. */
  error?: string
}

// Run only where it can mean something: a model with an EEPROM, or a host whose model cannot be read (the
// inventory's `hardware` decides there). Output is sectioned so the parser never mistakes one part for another.
const SCRIPT = [
  'command -v rpi-eeprom-update >/dev/null 2>&1 || exit 0',
  'model=$(tr -d "\\000" < /proc/device-tree/model 2>/dev/null)',
  'printf "@model %s\\n" "$model"',
  'case "$model" in ""|*"Raspberry Pi 4"*|*"Raspberry Pi 400"*|*"Raspberry Pi 5"*|*"Raspberry Pi 500"*|\\',
  '  *"Compute Module 4"*|*"Compute Module 5"*) ;; *) exit 0 ;; esac',
  'out=$(rpi-eeprom-update </dev/null 2>&1); rc=$?',
  'echo "@rc $rc"',
  'rpi-eeprom-config 2>/dev/null | grep -q "^FREEZE_VERSION=1" && echo "@frozen"',
  'b=$(rpi-eeprom-update -b 2>/dev/null) && [ -n "$b" ] && [ -e "$b/pieeprom.upd" ] && echo "@staged"',
  'printf "%s\\n" "$out"',
].join('\n')

export function parseEeprom(stdout: string): EepromState {
  const lines = stdout.split('\n')
  // No model line: the script did not get that far (no tool), whatever else was printed.
  if (!lines.some((l) => l.startsWith('@model'))) return { tool: false, available: false, staged: false, frozen: false }
  const model =
    lines
      .find((l) => l.startsWith('@model '))
      ?.slice(7)
      .trim() || undefined
  const rcLine = lines.find((l) => l.startsWith('@rc '))
  const state: EepromState = {
    tool: true,
    model,
    available: false,
    staged: lines.includes('@staged'),
    frozen: lines.includes('@frozen'),
  }
  if (rcLine === undefined) return state // a model without an EEPROM: never asked
  const rc = Number(rcLine.slice(4))
  // The bootloader's own lines; a Pi 4's VL805 USB firmware prints a second CURRENT/LATEST pair after them.
  const stamp = (label: string) => {
    const m = stdout.match(new RegExp(`^\\s*${label}:.*\\((\\d+)\\)\\s*$`, 'm'))
    return m ? Number(m[1]) : undefined
  }
  state.current = stamp('CURRENT')
  state.latest = stamp('LATEST')
  if (rc === 1) state.available = true
  else if (rc !== 0) {
    const said = lines.filter((l) => l && !l.startsWith('@')).slice(-3)
    state.error = `rpi-eeprom-update failed (exit ${rc})${said.length ? `: ${said.join(' ')}` : ''}`
  }
  return state
}

export const eepromFact = defineFact('rpi-eeprom', SCRIPT, (r) => parseEeprom(r.stdout))

const EEPROM_MODEL = /Raspberry Pi (4|400|5|500)\b|Compute Module (4|5)\b/

/** Whether the board has a bootloader EEPROM: its device-tree model, else the inventory's `hardware`. */
export function hasEeprom(state: EepromState, hardware: string | undefined): boolean {
  if (!state.tool) return false
  if (state.model) return EEPROM_MODEL.test(state.model)
  return hardware === 'pi4' || hardware === 'pi5'
}

/** A build time as the owner reads it in the release notes: 2025-03-10. */
export function eepromDate(stamp: number | undefined): string {
  return stamp === undefined ? 'unknown' : new Date(stamp * 1000).toISOString().slice(0, 10)
}

/** What the role should do about the bootloader: nothing, stage the update, or reboot for a staged one. */
export type EepromAction = 'none' | 'stage' | 'reboot'

export function eepromAction(state: EepromState, hardware: string | undefined): EepromAction {
  if (!hasEeprom(state, hardware) || state.error || state.frozen) return 'none'
  if (!state.available) return 'none'
  return state.staged ? 'reboot' : 'stage'
}
