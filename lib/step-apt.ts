// Step primitive for Debian packages: which are installed, and apt-get install of the missing ones (planned by a
// pure function, waiting for another apt run's lock).

import { defineFact, type Fact } from './facts.ts'
import type { Command, Step, StepContext } from './role.ts'
import { quote } from './shell.ts'
import type { CommandChange } from './planned-step.ts'

export function packagesFact(names: readonly string[]): Fact<Map<string, boolean>> {
  const sorted = [...names].sort()
  return defineFact(
    `pkgs:${sorted.join(',')}`,
    `dpkg-query -W -f='\${Package}\\t\${db:Status-Abbrev}\\n' ${sorted.map(quote).join(' ')} 2>/dev/null; true`,
    (r) => parsePackages(r.stdout, sorted),
  )
}

export function parsePackages(stdout: string, names: readonly string[]): Map<string, boolean> {
  const installed = new Map<string, boolean>(names.map((n) => [n, false]))
  for (const line of stdout.split('\n')) {
    const [name, status] = line.split('\t')
    // Status-Abbrev: wanted state, then actual state; 'i' second means installed (also when held: 'hi').
    if (name && status) installed.set(name.split(':')[0], status[1] === 'i')
  }
  return installed
}

/** Seconds apt waits for another apt/dpkg run to let go of its lock. */
const APT_LOCK_WAIT = 300

export function planPackages(
  installed: Map<string, boolean>,
  present: readonly string[],
  absent: readonly string[] = [],
): CommandChange | null {
  const toInstall = present.filter((p) => !installed.get(p))
  const toRemove = absent.filter((p) => installed.get(p))
  if (toInstall.length === 0 && toRemove.length === 0) return null
  const cmds: Command[] = []
  const env = 'export DEBIAN_FRONTEND=noninteractive'
  if (toInstall.length > 0) {
    const pk = toInstall.map(quote).join(' ')
    // Try with the lists the host has; refresh them only if that fails (a fresh image has none).
    // Wait for the dpkg lock rather than fail: an apt run orphaned by a dropped connection may still hold it.
    const apt = `apt-get -o DPkg::Lock::Timeout=${APT_LOCK_WAIT}`
    const install = `${apt} install -y -q --no-install-recommends ${pk}`
    cmds.push({
      script: `${env}; ${install} || { ${apt} update -q && ${install}; }`,
    })
  }
  if (toRemove.length > 0)
    cmds.push({
      script: `${env}; apt-get -o DPkg::Lock::Timeout=${APT_LOCK_WAIT} purge -y -q ${toRemove.map(quote).join(' ')}`,
    })
  const what = [
    ...(toInstall.length ? [`install ${toInstall.join(' ')}`] : []),
    ...(toRemove.length ? [`remove ${toRemove.join(' ')}`] : []),
  ]
  return { summary: what.join('; '), commands: cmds }
}

export function aptPackages(
  name: string,
  spec: (ctx: StepContext) => { present?: readonly string[]; absent?: readonly string[] },
  extra: Partial<Step> = {},
): Step {
  const names = (ctx: StepContext): string[] => {
    const s = spec(ctx)
    return [...(s.present ?? []), ...(s.absent ?? [])]
  }
  return {
    name,
    ...extra,
    facts: (ctx) => (names(ctx).length ? [packagesFact(names(ctx))] : []),
    async plan(ctx) {
      const s = spec(ctx)
      if (names(ctx).length === 0) return { status: 'ok', message: 'no packages listed' }
      const installed = await ctx.facts.get(packagesFact(names(ctx)))
      return planPackages(installed, s.present ?? [], s.absent ?? [])
    },
  }
}
