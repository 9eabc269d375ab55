// os-update: what the owner does by hand to keep a Pi patched without taking the cluster down, one node at a time
// (playbooks/update.mts runs the agents with serial 1, then the server):
//   kubectl drain NODE --ignore-daemonsets --delete-emptydir-data      (agents only; the server is not drained)
//   sudo apt update && sudo apt full-upgrade -y
//   sudo rpi-eeprom-update -a                                           (Pi 4/5, when a bootloader update is out)
//   [ -e /var/run/reboot-required ] && sudo reboot                     (a kernel or bootloader update asks for one)
//   wait for the node to be Ready; kubectl uncordon NODE
// The drain marks the Node with an annotation, and only a Node this role drained is uncordoned: a node the owner
// cordoned by hand stays cordoned, and a run that failed after the drain is finished by the next one.

import { dirname } from 'node:path'
import { ProvisionError } from '../lib/errors.ts'
import { defineFact } from '../lib/facts.ts'
import { eepromAction, eepromDate, eepromFact, hasEeprom } from '../lib/eeprom.ts'
import { flushHandlers, runKey, type Role, type StepContext } from '../lib/role.ts'
import { bounded, quote } from '../lib/shell.ts'
import { agrees, counted } from '../lib/words.ts'
import { rebootHandler, waitUntil } from '../lib/steps.ts'
import { nodeIfAnswering, nodeName, nodeOnServer, serverHandle, type NodeView } from '../lib/k3s.ts'
import { kubeGet } from '../lib/kube.ts'
import { DRAINED_MARK, markAndDrain, uncordonMarked, podsToEvict, podsWithNowhereElse } from '../lib/scheduling.ts'

const APT_LOCK_WAIT = 300
/** Written by packages that need a reboot (Debian's convention, on tmpfs: a reboot clears it); a kernel change too. */
const REBOOT_REQUIRED = '/var/run/reboot-required'
/** The bootloader update this run staged on a host (from -> to), checked after the reboot that flashes it. */
const EEPROM_STAGED = runKey<string>('bootloader update staged')

export interface PendingUpgrade {
  name: string
  from?: string
  to: string
}

/** `apt-get -s full-upgrade` lines "Inst NAME [OLD] (NEW ...)": what an upgrade would install or replace. */
export function parsePendingUpgrades(stdout: string): PendingUpgrade[] {
  const out: PendingUpgrade[] = []
  for (const m of stdout.matchAll(/^Inst (\S+) (?:\[([^\]]+)\] )?\((\S+)/gm))
    out.push({ name: m[1], from: m[2], to: m[3] })
  return out
}

export const pendingUpgradesFact = defineFact(
  'apt:pending-upgrades',
  'LC_ALL=C apt-get -s -q -o Debug::NoLocking=1 full-upgrade 2>&1',
  (r) => {
    // A dpkg run that was cut off (power, a timeout) blocks apt until `dpkg --configure -a` finishes it.
    if (r.code !== 0 && /dpkg was interrupted/.test(r.stdout))
      return { upgrades: [] as PendingUpgrade[], interrupted: true }
    if (r.code !== 0)
      return {
        upgrades: [] as PendingUpgrade[],
        interrupted: false,
        error: `apt-get -s full-upgrade failed (exit ${r.code}): ${r.stdout.trim().split('\n').slice(-3).join(' ')}`,
      }
    return { upgrades: parsePendingUpgrades(r.stdout), interrupted: false }
  },
)

/**
 * When this role last fetched the package lists: a stamp of its own, since apt gives a list file the mirror's
 * Last-Modified time, not the time it was fetched.
 */
const LISTS_STAMP = '/var/lib/pi-provision/apt-lists-updated'

/** Seconds since the package lists were last fetched by this role (Infinity: never). */
export const listsAgeFact = defineFact(
  'apt:lists-age',
  `echo "$(date +%s) $(stat -c %Y ${LISTS_STAMP} 2>/dev/null)"`,
  (r) => {
    const [now, stamp] = r.stdout.trim().split(/\s+/).map(Number)
    return stamp > 0 ? Math.max(0, now - stamp) : Infinity
  },
)

/**
 * Is a reboot owed: /var/run/reboot-required (with the packages that asked), or a newer kernel of the running
 * one's flavour in /lib/modules than the one running (installed by this role, by hand, or by a run cut off).
 */
export const rebootRequiredFact = defineFact(
  'reboot-required',
  [
    `[ -e ${REBOOT_REQUIRED} ] && { echo R; sed 's/^/P /' ${REBOOT_REQUIRED}.pkgs 2>/dev/null | sort -u; }`,
    'r=$(uname -r); s=$(printf %s "$r" | sed -E "s/^[0-9.]+(-[0-9]+)?//")',
    // The newest installed kernel whose name ends like the running one's (same flavour: -v8, -2712, ...).
    `same='substr($0, length($0) - length(s) + 1) == s'`,
    'n=$(ls -1 /lib/modules 2>/dev/null | awk -v s="$s" "$same" | sort -V | tail -n 1)',
    '[ -n "$n" ] && [ "$n" != "$r" ] && echo "K $n $r"',
    'true',
  ].join('\n'),
  (r) => {
    const lines = r.stdout.split('\n')
    const kernel = lines.find((l) => l.startsWith('K '))?.split(' ')
    return {
      required: lines.includes('R') || kernel !== undefined,
      packages: lines.filter((l) => l.startsWith('P ')).map((l) => l.slice(2)),
      kernel: kernel ? { installed: kernel[1], running: kernel[2] } : undefined,
    }
  },
)

/** Packages whose new version only counts after a reboot, where no package says so (Pi OS's firmware and kernel). */
const BOOT_PACKAGES = /^(linux-image-|raspberrypi-kernel|raspberrypi-bootloader|raspi-firmware)/

/**
 * apt-get update that waits for the lists lock instead of failing at once: right after a boot, apt-daily.service
 * often holds it, and DPkg::Lock::Timeout covers dpkg's lock, not the lists lock. Each attempt is bounded.
 */
export function aptUpdateScript(waitSeconds: number, pauseSeconds = 5): string {
  const attempts = Math.max(1, Math.ceil(waitSeconds / pauseSeconds))
  const attempt = bounded(
    `apt-get -o DPkg::Lock::Timeout=${waitSeconds} update -q`,
    600,
    'apt-get update',
    'fixed 600s',
  )
  return [
    'n=0',
    // "$( (" and not "$((": the bounded command is a subshell, not arithmetic.
    `while ! out=$( ${attempt} 2>&1); do`,
    '  case "$out" in *"Could not get lock"*)',
    `    n=$((n + 1)); [ $n -lt ${attempts} ] && { sleep ${pauseSeconds}; continue; } ;;`,
    '  esac',
    '  printf \'%s\\n\' "$out" >&2; exit 1',
    'done',
  ].join('\n')
}

async function pending(ctx: StepContext): Promise<{ upgrades: PendingUpgrade[]; interrupted: boolean }> {
  const p = await ctx.facts.get(pendingUpgradesFact)
  if (p.error) throw new ProvisionError('step', p.error)
  return p
}

function names(upgrades: readonly PendingUpgrade[]): string {
  const shown = upgrades.slice(0, 8).map((u) => (u.from ? `${u.name} ${u.from} -> ${u.to}` : `${u.name} ${u.to} (new)`))
  return upgrades.length > 8 ? `${shown.join(', ')} and ${upgrades.length - 8} more` : shown.join(', ')
}

/** What a drain of this node would do: the pods it would still evict, and those no other node can take. */
async function drainOutlook(ctx: StepContext, name: string): Promise<{ left: string[]; stuck: string[] }> {
  const objects = await kubeGet(await serverHandle(ctx), 'nodes,pods -A')
  return {
    left: podsToEvict(
      objects.filter((o) => o.kind === 'Pod'),
      name,
    ),
    stuck: podsWithNowhereElse(objects, name),
  }
}

export const osUpdate: Role = {
  name: 'os-update',
  steps: [
    {
      name: 'Refresh the package lists (when older than apt_cache_valid_time)',
      facts: () => [listsAgeFact],
      async plan(ctx) {
        const age = await ctx.facts.get(listsAgeFact)
        const limit = ctx.vars.apt_cache_valid_time
        if (age < limit)
          return { status: 'ok', message: `fetched ${Math.round(age / 60)} min ago (apt_cache_valid_time ${limit}s)` }
        return {
          summary: Number.isFinite(age)
            ? `apt-get update (last run by this playbook ${Math.round(age / 60)} min ago)`
            : 'apt-get update (never run by this playbook on this host)',
          commands: [
            { script: `${aptUpdateScript(APT_LOCK_WAIT)} && mkdir -p ${dirname(LISTS_STAMP)} && touch ${LISTS_STAMP}` },
          ],
        }
      },
    },
    {
      name: 'Drain this node from the server before updating it (agents, update_drain)',
      when: (ctx) => ctx.vars.update_drain && ctx.groups.includes('agent'),
      facts: () => [pendingUpgradesFact, rebootRequiredFact, eepromFact],
      async plan(ctx) {
        const { upgrades, interrupted } = await pending(ctx)
        const reboot = (await ctx.facts.get(rebootRequiredFact)).required
        const bootloader = eepromAction(await ctx.facts.get(eepromFact), ctx.vars.hardware) !== 'none'
        if (upgrades.length === 0 && !interrupted && !reboot && !bootloader)
          return { status: 'ok', message: 'nothing to install, no reboot owed: no drain' }
        const node = await nodeOnServer(ctx)
        const name = nodeName(ctx)
        if (!node.exists) return { status: 'skipped', message: `no Node ${name} in the cluster` }
        if (!node.ready)
          return {
            status: 'skipped',
            message: `${name} is NotReady: nothing can be evicted from it; updating it without a drain`,
          }
        const marked = Boolean(node.annotations[DRAINED_MARK])
        // Cordoned by the owner: drained all the same, but not marked, so it stays cordoned afterwards.
        const byHand = node.unschedulable && !marked
        const { left, stuck } = await drainOutlook(ctx, name)
        if (node.unschedulable && left.length === 0)
          return {
            status: 'ok',
            message: marked
              ? 'drained by an earlier run that did not finish'
              : 'cordoned by hand, no pods left to evict (it stays cordoned)',
          }
        const what = left.length ? `evict ${counted(left.length, 'pod')}` : 'cordon it'
        // Pinned to this node (Unbound on its DNS node, say): down until the node is back. Said, not refused.
        if (stuck.length)
          ctx.warn(
            `${counted(stuck.length, 'pod')} ${agrees(stuck.length, 'fits', 'fit')} no other node ` +
              `and will wait Pending until ${name} is back: ${stuck.join(', ')}`,
          )
        return {
          summary: `drain ${name} (${what})`,
          async apply() {
            return markAndDrain(await serverHandle(ctx), name, {
              by: 'update',
              byHand,
              marked,
              what,
              seconds: ctx.vars.k3s_drain_timeout,
              ifStopped: 'the node stays cordoned and nothing was installed; the next run drains it again',
            })
          },
        }
      },
    },
    {
      name: 'Install the updates (apt-get full-upgrade)',
      facts: () => [pendingUpgradesFact],
      async plan(ctx) {
        const { upgrades, interrupted } = await pending(ctx)
        if (upgrades.length === 0 && !interrupted) return { status: 'ok', message: 'up to date' }
        const what = interrupted
          ? 'an interrupted dpkg run, then the updates'
          : `${counted(upgrades.length, 'package')}: ${names(upgrades)}`
        const apt = [
          `apt-get -o DPkg::Lock::Timeout=${APT_LOCK_WAIT}`,
          '-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -y -q full-upgrade',
        ].join(' ')
        const boot = upgrades.map((u) => u.name).filter((n) => BOOT_PACKAGES.test(n))
        const script = [
          'set -e',
          'export DEBIAN_FRONTEND=noninteractive',
          // Finishes what a cut-off run left half configured (nothing to do otherwise).
          `dpkg --configure -a --force-confdef --force-confold`,
          bounded(apt, ctx.vars.apt_upgrade_timeout, 'apt-get full-upgrade', 'apt_upgrade_timeout'),
          // Pi OS's kernel and firmware packages do not ask for the reboot they need: ask for them.
          ...(boot.length
            ? [`printf '%s\\n' ${boot.map(quote).join(' ')} >> ${REBOOT_REQUIRED}.pkgs`, `touch ${REBOOT_REQUIRED}`]
            : []),
        ].join('\n')
        return {
          summary: `${interrupted ? 'finish' : 'upgrade'} ${what}`,
          commands: [{ script }],
          apply: async () => (interrupted ? `finished ${what}` : `upgraded ${what}`),
        }
      },
    },
    {
      name: 'Stage the bootloader EEPROM update (Pi 4/5: rpi-eeprom-update -a, flashed by the reboot)',
      facts: () => [eepromFact],
      notify: ['Reboot'],
      async plan(ctx) {
        const e = await ctx.facts.get(eepromFact)
        if (!hasEeprom(e, ctx.vars.hardware))
          return {
            status: 'ok',
            message: e.tool
              ? `no bootloader EEPROM (${e.model ?? ctx.vars.hardware ?? 'model unknown'})`
              : 'no rpi-eeprom-update on this host',
          }
        if (e.error) {
          ctx.warn(`bootloader EEPROM not checked: ${e.error}`)
          return { status: 'ok', message: 'not checked (see the warning)' }
        }
        const versions = `${eepromDate(e.current)} -> ${eepromDate(e.latest)}`
        if (e.frozen && e.available)
          return { status: 'ok', message: `bootloader ${eepromDate(e.current)}, frozen (FREEZE_VERSION=1): left so` }
        const action = eepromAction(e, ctx.vars.hardware)
        if (action === 'none') return { status: 'ok', message: `bootloader ${eepromDate(e.current)}, up to date` }
        // Remembered when applied, for the check after the reboot.
        const remember = async () => void ctx.state.set(EEPROM_STAGED, versions, ctx.host)
        if (action === 'reboot')
          return { summary: `reboot to flash the staged bootloader update (${versions})`, apply: remember }
        return {
          summary: `stage the bootloader update ${versions} (flashed by the reboot)`,
          commands: [{ script: 'rpi-eeprom-update -a </dev/null' }],
          apply: remember,
        }
      },
    },
    {
      name: `Reboot when an update asks for it (${REBOOT_REQUIRED}, or a newer kernel)`,
      facts: () => [rebootRequiredFact],
      notify: ['Reboot'],
      async plan(ctx) {
        const r = await ctx.facts.get(rebootRequiredFact)
        if (!r.required) return { status: 'ok', message: 'no reboot asked for' }
        const why = [
          ...(r.packages.length ? [`asked for by ${r.packages.join(', ')}`] : []),
          ...(r.kernel ? [`kernel ${r.kernel.installed} installed, ${r.kernel.running} running`] : []),
        ]
        // Nothing to run here: the change is the reboot this notifies, carried out by the handler.
        return { summary: `reboot ${why.join('; ') || 'asked for'}` }
      },
    },
    flushHandlers('Reboot now if it is owed'),
    {
      // After a reboot the server may still show the Ready of the last boot for a while: the kubelet of this boot
      // must have reported (status.nodeInfo.bootID is this host's boot_id) before the node counts as back.
      name: 'Wait until the server reports this node Ready',
      onlyForReal: 'it waits for the node the steps above updated and rebooted',
      async plan(ctx) {
        const boot = (await ctx.must('cat /proc/sys/kernel/random/boot_id', { what: 'read the boot id' })).stdout.trim()
        const back = (n: NodeView | undefined) =>
          n !== undefined && (!n.exists || (n.ready && (n.bootID === undefined || n.bootID === boot)))
        const first = await nodeIfAnswering(ctx)
        if (first && !first.exists) return { status: 'ok', message: 'not a node of the cluster' }
        if (back(first)) return { status: 'ok', message: 'Ready' }
        const { seconds } = await waitUntil(
          ctx,
          {
            timeoutSec: ctx.vars.k3s_start_timeout,
            intervalMs: 1000,
            what: `node ${nodeName(ctx)} Ready (k3s_start_timeout)`,
          },
          async () => {
            const n = await nodeIfAnswering(ctx)
            const waitingFor =
              n === undefined
                ? 'the API server does not answer yet'
                : !n.ready
                  ? 'NotReady'
                  : 'the server still shows the boot before the reboot'
            return { done: back(n), value: n, waitingFor }
          },
        )
        return { status: 'ok', message: `Ready after ${seconds.toFixed(1)}s` }
      },
    },
    {
      name: 'Check that the reboot flashed the bootloader update',
      when: (ctx) => ctx.state.get(EEPROM_STAGED, ctx.host) !== undefined,
      onlyForReal: 'the update is only flashed by the reboot',
      facts: () => [eepromFact],
      async plan(ctx) {
        const e = await ctx.facts.get(eepromFact)
        const staged = ctx.state.get(EEPROM_STAGED, ctx.host)
        if (!e.available) return { status: 'ok', message: `bootloader ${eepromDate(e.current)} (was ${staged})` }
        ctx.warn(
          `the reboot did not flash the bootloader update ${staged}: it still runs ${eepromDate(e.current)}. ` +
            'Look at `rpi-eeprom-update` and the boot partition on the host; the next run reboots for it again.',
        )
        return { status: 'ok', message: `still ${eepromDate(e.current)}` }
      },
    },
    {
      name: 'Uncordon this node (only when this playbook drained it)',
      when: (ctx) => ctx.groups.includes('agent'),
      async plan(ctx) {
        const node = await nodeOnServer(ctx)
        const name = nodeName(ctx)
        if (!node.exists || !node.annotations[DRAINED_MARK])
          return {
            status: 'ok',
            message: node.unschedulable ? 'cordoned, but not by this playbook: left so' : 'schedulable',
          }
        return {
          summary: `uncordon ${name}`,
          apply: async () => uncordonMarked(await serverHandle(ctx), name),
        }
      },
    },
  ],
  handlers: [rebootHandler('Reboot')],
}
