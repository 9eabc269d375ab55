// os-update: what the owner does by hand to keep a Pi patched without taking the cluster down, one node at a time
// (playbooks/update.mts runs the agents with serial 1, then the server):
//   kubectl drain NODE --ignore-daemonsets --delete-emptydir-data      (agents only; the server is not drained)
//   sudo apt update && sudo apt full-upgrade -y
//   [ -e /var/run/reboot-required ] && sudo reboot                     (a kernel update also asks for one)
//   wait for the node to be Ready; kubectl uncordon NODE
// The drain marks the Node with an annotation, and only a Node this role drained is uncordoned: a node the owner
// cordoned by hand stays cordoned, and a run that failed after the drain is finished by the next one.

import { ProvisionError } from '../lib/errors.ts'
import { defineFact } from '../lib/facts.ts'
import { flushHandlers, type Role, type StepContext } from '../lib/role.ts'
import { bounded, quote } from '../lib/shell.ts'
import { rebootHandler, waitUntil } from '../lib/steps.ts'
import { nodeName, nodeOnServer, serverOf, type NodeView } from './k3s-common.ts'
import { drainNode } from './k3s-retire.ts'

/** On a Node this role drained: it may uncordon it. */
export const DRAINED_MARK = 'pi-provision/drained-for'
const APT_LOCK_WAIT = 300
/** Written by packages that need a reboot (Debian's convention, on tmpfs: a reboot clears it); a kernel change too. */
const REBOOT_REQUIRED = '/var/run/reboot-required'

export interface PendingUpgrade {
  name: string
  from?: string
  to: string
}

/** `apt-get -s full-upgrade` lines "Inst NAME [OLD] (NEW ...)": what an upgrade would install or replace. */
export function parsePendingUpgrades(stdout: string): PendingUpgrade[] {
  const out: PendingUpgrade[] = []
  for (const m of stdout.matchAll(/^Inst (\S+) (?:\[([^\]]+)\] )?\((\S+)/gm)) out.push({ name: m[1], from: m[2], to: m[3] })
  return out
}

export const pendingUpgradesFact = defineFact('apt:pending-upgrades', 'LC_ALL=C apt-get -s -q -o Debug::NoLocking=1 full-upgrade 2>&1', (r) => {
  if (r.code !== 0) return { upgrades: [] as PendingUpgrade[], error: `apt-get -s full-upgrade failed (exit ${r.code}): ${r.stdout.trim().split('\n').slice(-3).join(' ')}` }
  return { upgrades: parsePendingUpgrades(r.stdout) }
})

/** Seconds since the package lists were last fetched (Infinity when there are none). */
export const listsAgeFact = defineFact(
  'apt:lists-age',
  `echo "$(date +%s) $(find /var/lib/apt/lists -maxdepth 1 -type f -name '*Release' -printf '%T@\\n' 2>/dev/null | sort -n | tail -n 1)"`,
  (r) => {
    const [now, newest] = r.stdout.trim().split(/\s+/).map(Number)
    return newest > 0 ? Math.max(0, now - newest) : Infinity
  },
)

export const rebootRequiredFact = defineFact('file:reboot-required', `if [ -e ${REBOOT_REQUIRED} ]; then echo yes; sort -u ${REBOOT_REQUIRED}.pkgs 2>/dev/null; fi; true`, (r) => {
  const [flag, ...pkgs] = r.stdout.trim().split('\n')
  return { required: flag === 'yes', packages: pkgs.filter(Boolean) }
})

async function pending(ctx: StepContext): Promise<PendingUpgrade[]> {
  const p = await ctx.facts.get(pendingUpgradesFact)
  if (p.error) throw new ProvisionError('step', p.error)
  return p.upgrades
}

function names(upgrades: readonly PendingUpgrade[]): string {
  const shown = upgrades.slice(0, 8).map((u) => (u.from ? `${u.name} ${u.from} -> ${u.to}` : `${u.name} ${u.to} (new)`))
  return upgrades.length > 8 ? `${shown.join(', ')} and ${upgrades.length - 8} more` : shown.join(', ')
}

/** kubectl on the server, for this host's Node. */
async function onServer(ctx: StepContext, script: string, what: string): Promise<void> {
  const server = await ctx.hostHandle(serverOf(ctx.inventory).name)
  const r = await server.conn.run(script)
  if (r.code !== 0) throw new ProvisionError('step', `${what} on the server failed (exit ${r.code}): ${(r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join(' ')}`)
}

/** The Node, or undefined while the API cannot answer (the server itself rebooting). */
async function nodeIfAnswering(ctx: StepContext): Promise<NodeView | undefined> {
  try {
    return await nodeOnServer(ctx)
  } catch (e) {
    if (e instanceof ProvisionError && e.kind === 'step') return undefined
    throw e
  }
}

export const osUpdate: Role = {
  name: 'os-update',
  steps: [
    {
      name: 'Refresh the package lists (when older than apt_cache_valid_time)',
      facts: () => [listsAgeFact],
      async run(ctx) {
        const age = await ctx.facts.get(listsAgeFact)
        const limit = ctx.vars.apt_cache_valid_time
        if (age < limit) return { status: 'ok', message: `fetched ${Math.round(age / 60)} min ago (apt_cache_valid_time ${limit}s)` }
        return ctx.apply({
          summary: Number.isFinite(age) ? `apt-get update (lists ${Math.round(age / 60)} min old)` : 'apt-get update (no lists yet)',
          commands: [{ script: bounded(`apt-get -o DPkg::Lock::Timeout=${APT_LOCK_WAIT} update -q`, 600, 'apt-get update', 'fixed 600s') }],
        })
      },
    },
    {
      name: 'Drain this node from the server before updating it (agents, update_drain)',
      when: (ctx) => ctx.vars.update_drain && ctx.groups.includes('agent'),
      facts: () => [pendingUpgradesFact, rebootRequiredFact],
      async run(ctx) {
        const upgrades = await pending(ctx)
        const reboot = (await ctx.facts.get(rebootRequiredFact)).required
        if (upgrades.length === 0 && !reboot) return { status: 'ok', message: 'nothing to install, no reboot owed: no drain' }
        const node = await nodeOnServer(ctx)
        const name = nodeName(ctx)
        if (!node.exists) return { status: 'skipped', message: `no Node ${name} in the cluster` }
        if (node.unschedulable && node.annotations[DRAINED_MARK]) return { status: 'ok', message: 'drained by an earlier run that did not finish' }
        if (!node.ready) return { status: 'skipped', message: `${name} is NotReady: nothing can be evicted from it; updating it without a drain` }
        if (ctx.check) return { status: 'changed', message: `would drain ${name}` }
        // Marked first: a run cut off mid-drain leaves a Node the next run knows it may uncordon.
        await onServer(ctx, `k3s kubectl annotate --overwrite node ${quote(name)} ${DRAINED_MARK}=update`, `mark the Node ${name}`)
        const server = await ctx.hostHandle(serverOf(ctx.inventory).name)
        await drainNode((script) => server.conn.run(script), name, ctx.vars.k3s_drain_timeout, 'the node stays cordoned and nothing was installed; the next run goes on from there')
        return { status: 'changed', message: `drained ${name}` }
      },
    },
    {
      name: 'Install the updates (apt-get full-upgrade)',
      facts: () => [pendingUpgradesFact],
      async run(ctx) {
        const upgrades = await pending(ctx)
        if (upgrades.length === 0) return { status: 'ok', message: 'up to date' }
        const what = `${upgrades.length} package${upgrades.length === 1 ? '' : 's'}: ${names(upgrades)}`
        if (ctx.check) return { status: 'changed', message: `would upgrade ${what}` }
        const apt = `apt-get -o DPkg::Lock::Timeout=${APT_LOCK_WAIT} -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -y -q full-upgrade`
        // A kernel that changed under the running one asks for a reboot even where no package says so (Pi OS).
        const script = [
          'set -e',
          'export DEBIAN_FRONTEND=noninteractive',
          'kernels() { ls -1 /lib/modules 2>/dev/null | tr "\\n" " "; }',
          'before=$(kernels)',
          bounded(apt, ctx.vars.apt_upgrade_timeout, 'apt-get full-upgrade', 'apt_upgrade_timeout'),
          `if [ "$before" != "$(kernels)" ]; then touch ${REBOOT_REQUIRED}; echo kernel >> ${REBOOT_REQUIRED}.pkgs; fi`,
        ].join('\n')
        await ctx.must(script, { what: 'apt-get full-upgrade' })
        ctx.facts.invalidate()
        return { status: 'changed', message: `upgraded ${what}` }
      },
    },
    {
      name: `Reboot when an update asks for it (${REBOOT_REQUIRED})`,
      facts: () => [rebootRequiredFact],
      notify: ['Reboot'],
      async run(ctx) {
        const r = await ctx.facts.get(rebootRequiredFact)
        if (!r.required) return { status: 'ok', message: 'no reboot asked for' }
        return { status: 'changed', message: `reboot asked for${r.packages.length ? ` by ${r.packages.join(', ')}` : ''}` }
      },
    },
    flushHandlers('Reboot now if it is owed'),
    {
      name: 'Wait until the server reports this node Ready',
      async run(ctx) {
        if (ctx.check) return { status: 'skipped', message: 'check mode' }
        const first = await nodeIfAnswering(ctx)
        if (first && !first.exists) return { status: 'ok', message: 'not a node of the cluster' }
        if (first?.ready) return { status: 'ok', message: 'Ready' }
        const { seconds } = await waitUntil(ctx, { timeoutSec: ctx.vars.k3s_start_timeout, intervalMs: 1000, what: `node ${nodeName(ctx)} Ready (k3s_start_timeout)` }, async () => {
          const n = await nodeIfAnswering(ctx)
          return { done: n?.ready === true || n?.exists === false, value: n, waitingFor: n === undefined ? 'the API server does not answer yet' : n.exists ? 'NotReady' : 'gone' }
        })
        return { status: 'ok', message: `Ready after ${seconds.toFixed(1)}s` }
      },
    },
    {
      name: 'Uncordon this node (only when this playbook drained it)',
      when: (ctx) => ctx.groups.includes('agent'),
      async run(ctx) {
        const node = await nodeOnServer(ctx)
        const name = nodeName(ctx)
        if (!node.exists || !node.annotations[DRAINED_MARK]) return { status: 'ok', message: node.unschedulable ? 'cordoned, but not by this playbook: left so' : 'schedulable' }
        if (ctx.check) return { status: 'changed', message: `would uncordon ${name}` }
        await onServer(ctx, `k3s kubectl uncordon ${quote(name)} && k3s kubectl annotate node ${quote(name)} ${DRAINED_MARK}-`, `uncordon ${name}`)
        return { status: 'changed', message: `uncordoned ${name}` }
      },
    },
  ],
  handlers: [rebootHandler('Reboot')],
}
