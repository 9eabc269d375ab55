// What a run will do, known before any host is touched: the hosts of each play (--limit), the steps --tags and
// --skip-tags select, the secret references the selected roles need and their own secret checks, and mistakes in the
// playbook's own code.

import { ProvisionError } from './errors.ts'
import { hostVars, type Inventory, type VarLayer } from './inventory.ts'
import { selectHosts } from './patterns.ts'
import type { Play, Playbook, Role, Step } from './role.ts'
import type { SecretStore } from './secrets.ts'

/** Hosts a playbook run would touch, play by play (for --list-hosts; opens no connection). */
export function planHosts(pb: Playbook, inv: Inventory, limit?: string): { play: Play; hosts: string[] }[] {
  const selected = limit ? new Set(limitHosts(inv, limit)) : null
  return pb.plays.map((play) => ({
    play,
    hosts: playHosts(inv, play.hosts).filter((h) => !selected || selected.has(h)),
  }))
}

/** --limit's hosts; a mistake in the pattern says it is --limit's. */
function limitHosts(inv: Inventory, limit: string): string[] {
  try {
    return selectHosts(inv, limit)
  } catch (e) {
    if (e instanceof ProvisionError && !e.message.startsWith('--limit'))
      throw new ProvisionError(e.kind, `--limit ${limit}: ${e.message}`, { place: e.place, hint: e.hint, cause: e })
    throw e
  }
}

/**
 * A play's hosts. A play on a group the inventory does not have runs on no host (a one-Pi cluster has no "agent"
 * group); an unknown name in --limit stays an error, since there it is the owner's typo.
 */
function playHosts(inv: Inventory, pattern: string): string[] {
  if (/^[A-Za-z0-9_-]+$/.test(pattern) && !inv.groups.has(pattern) && !inv.hosts.has(pattern)) return []
  return selectHosts(inv, pattern)
}

/** Which steps of a role run under --tags / --skip-tags. The role's name is a tag of all its steps. */
export function stepSelected(step: Step, role: Role, tags: readonly string[], skipTags: readonly string[]): boolean {
  const own = [...(step.tags ?? []), role.name]
  if (skipTags.some((t) => own.includes(t))) return false
  if (tags.length === 0) return !own.includes('never')
  return own.includes('always') || tags.some((t) => own.includes(t))
}

/** Secret references every selected host's roles need, resolved before any host is touched. */
export function requiredSecrets(pb: Playbook, inv: Inventory, limit: string | undefined, extra: VarLayer): string[] {
  const refs = new Set<string>()
  for (const { play, hosts } of planHosts(pb, inv, limit))
    for (const name of hosts)
      for (const role of play.roles) {
        const vars = hostVars(inv.hosts.get(name)!, role.defaults, extra)
        if (vars.ssh_key_ref) refs.add(vars.ssh_key_ref)
        if (vars.become_password_ref) refs.add(vars.become_password_ref)
        if (vars.ssh_key_passphrase_ref) refs.add(vars.ssh_key_passphrase_ref)
        for (const r of role.secrets?.(vars) ?? []) if (r) refs.add(r)
      }
  return [...refs]
}

/** Every selected role's checkSecrets, once per role and host variables, before any host is touched. */
export async function checkRoleSecrets(
  pb: Playbook,
  inv: Inventory,
  limit: string | undefined,
  extra: VarLayer,
  secrets: SecretStore,
): Promise<void> {
  const done = new Set<string>()
  for (const { play, hosts } of planHosts(pb, inv, limit))
    for (const name of hosts)
      for (const role of play.roles) {
        if (!role.checkSecrets) continue
        const vars = hostVars(inv.hosts.get(name)!, role.defaults, extra)
        const key = `${role.name}\0${JSON.stringify(vars)}`
        if (done.has(key)) continue
        done.add(key)
        await role.checkSecrets(vars, secrets)
      }
}

/** Mistakes in a playbook's own code, caught before any host is touched. */
export function validatePlaybook(pb: Playbook): void {
  for (const play of pb.plays)
    for (const role of play.roles) {
      const names = (role.handlers ?? []).map((h) => h.name)
      for (const step of role.steps)
        for (const n of step.notify ?? [])
          if (!names.includes(n))
            throw new ProvisionError(
              'usage',
              `role ${role.name}, step "${step.name}" notifies "${n}", ` +
                `but the role has no such handler (handlers: ${names.join(', ') || 'none'})`,
            )
    }
}
