// Step primitives for systemd units: a unit's state, a unit enabled/started/masked as asked (planned by a pure
// function), and the one daemon-reload handler for the units a role changed.

import { defineFact, type Fact } from './facts.ts'
import type { Handler, Step, StepContext } from './role.ts'
import { handler } from './role.ts'
import { bounded, quote } from './shell.ts'
import { ProvisionError } from './errors.ts'
import { plannedStep, type CommandChange } from './planned-step.ts'

export interface UnitState {
  load: string // loaded | not-found | masked
  fileState: string // enabled | disabled | static | masked | '' ...
  active: string // active | inactive | failed | activating ...
}

export function unitFact(unit: string): Fact<UnitState> {
  return defineFact(`unit:${unit}`, `systemctl show -p LoadState -p UnitFileState -p ActiveState ${quote(unit)}`, (r) =>
    parseUnitState(r.stdout),
  )
}

export function parseUnitState(stdout: string): UnitState {
  const kv = new Map<string, string>()
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=')
    if (eq > 0) kv.set(line.slice(0, eq), line.slice(eq + 1).trim())
  }
  return {
    load: kv.get('LoadState') ?? 'not-found',
    fileState: kv.get('UnitFileState') ?? '',
    active: kv.get('ActiveState') ?? 'inactive',
  }
}

export interface UnitSpec {
  unit: string
  masked?: boolean
  enabled?: boolean
  active?: boolean
  /**
   * Bound on `systemctl start` (a unit that never reports ready would block the run): seconds, and the variable that
   * sets it.
   */
  startTimeout?: { seconds: number; setting: string }
  /**
   * Mask and disable without systemd's implicit daemon-reload (each costs 0.1 s on the lab, about a second on a
   * Pi 3); the role then notifies systemdReloadHandler() to reload once. Unmask and enable always reload: a
   * start right after them needs systemd to know.
   */
  deferReload?: boolean
}

export function planUnit(cur: UnitState, spec: UnitSpec): CommandChange | null {
  const cmds: string[] = []
  const what: string[] = []
  const u = quote(spec.unit)
  const noReload = spec.deferReload ? ' --no-reload' : ''
  const isMasked = cur.load === 'masked' || cur.fileState === 'masked'
  if (spec.masked === true && !isMasked) {
    cmds.push(`systemctl mask${noReload} ${u}`)
    what.push('mask')
  }
  if (spec.masked === false && isMasked) {
    cmds.push(`systemctl unmask ${u}`)
    what.push('unmask')
  }
  const exists = cur.load !== 'not-found'
  // A static unit has no [Install] section: it cannot be enabled, and is started by what needs it.
  const enabled = /^enabled/.test(cur.fileState) || (spec.enabled === true && cur.fileState === 'static')
  if (spec.enabled === true && !enabled) {
    if (!exists) throw new ProvisionError('step', `unit ${spec.unit} does not exist on the host`)
    cmds.push(`systemctl enable ${u}`)
    what.push('enable')
  }
  if (spec.enabled === false && enabled) {
    cmds.push(`systemctl disable${noReload} ${u}`)
    what.push('disable')
  }
  const running = cur.active === 'active' || cur.active === 'activating' || cur.active === 'reloading'
  if (spec.active === true && !running) {
    cmds.push(
      spec.startTimeout
        ? bounded(`systemctl start ${u}`, spec.startTimeout.seconds, `starting ${spec.unit}`, spec.startTimeout.setting)
        : `systemctl start ${u}`,
    )
    what.push('start')
  }
  if ((spec.active === false || spec.masked === true) && running) {
    cmds.push(`systemctl stop ${u}`)
    what.push('stop')
  }
  if (cmds.length === 0) return null
  return { summary: `${spec.unit}: ${what.join(', ')}`, commands: [{ script: cmds.join(' && ') }] }
}

export function systemdUnit(name: string, spec: (ctx: StepContext) => UnitSpec, extra: Partial<Step> = {}): Step {
  return plannedStep(name, spec, (s) => unitFact(s.unit), planUnit, extra)
}

/** One `systemctl daemon-reload` for the units a role masked or disabled with deferReload. A handler: notify it. */
export function systemdReloadHandler(name = 'Reload systemd units'): Handler {
  return handler({
    name,
    async plan() {
      return { summary: 'run systemctl daemon-reload', commands: [{ script: 'systemctl daemon-reload' }] }
    },
  })
}
