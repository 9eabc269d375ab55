// The owner's ssh config applied to the inventory's hosts, as `ssh NAME` reads it: HostName, User, Port and
// IdentityFile where neither the inventory nor -e sets a value, each checked with the inventory's grammar.

import { existsSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { expandPath } from './controller-paths.ts'
import { ProvisionError } from './errors.ts'
import { hostAddress } from './host-identity.ts'
import type { Inventory, SshConfigLayer, VarLayer } from './inventory.ts'
import { SshConfig, type Found } from './sshconfig.ts'
import { expandHostName, expandIdentityFile } from './sshconfig-tokens.ts'
import { checkVar } from './var-check.ts'
import { BUILTIN_DEFAULTS, type VarName } from './vars.ts'

/** ssh_config_file: read when it is not set, and only when it exists. */
export const DEFAULT_SSH_CONFIG = '~/.ssh/config'

/**
 * The owner's ssh config (ssh_config_file, relative to the inventory or, from -e, to the working directory; by
 * default ~/.ssh/config when it exists; "none": not read) applied to every host as `ssh NAME` reads it for the
 * host's inventory name: HostName, User, Port and IdentityFile give address, ssh_user, ssh_port and ssh_key_file
 * where neither the inventory nor -e sets them (a key from ssh_key_ref counts as set). Each value a host takes is
 * checked with the inventory's grammar: every problem at once, at the ssh config's file:line:col, before any host
 * is contacted. Returns the warnings (Match blocks ignored, keywords not followed), each once.
 */
export function applySshConfig(inv: Inventory, extra: VarLayer = {}): string[] {
  const problems: ProvisionError[] = []
  const warnings: string[] = []
  const notFollowed = new Map<string, { f: Found; hosts: string[] }>()
  const configs = new Map<string, SshConfig | null>()
  const invDir = dirname(resolve(inv.file))
  for (const h of inv.hosts.values()) {
    h.sshConfig = undefined
    const setting = extra.ssh_config_file ?? h.vars.ssh_config_file
    if (setting === 'none') continue
    const path =
      setting === undefined
        ? expandPath(DEFAULT_SSH_CONFIG, process.cwd())
        : expandPath(String(setting), extra.ssh_config_file !== undefined ? process.cwd() : invDir)
    // The default is read when it is there; a file the owner names must be there.
    if (setting === undefined && !existsSync(path)) continue
    let cfg = configs.get(path)
    if (cfg === undefined) {
      try {
        cfg = SshConfig.read(path)
        warnings.push(...cfg.warnings)
      } catch (e) {
        if (!(e instanceof ProvisionError)) throw e
        for (const p of e.problems)
          problems.push(
            new ProvisionError(p.kind, p.message, {
              place: p.place,
              hint: p.hint ?? 'fix the line, or set ssh_config_file: none to not read it',
            }),
          )
        cfg = null
      }
      configs.set(path, cfg)
    }
    if (!cfg) continue
    const found = cfg.lookup(h.name)
    const layer: SshConfigLayer = { vars: {}, from: {} }
    const own = (name: VarName) => extra[name] !== undefined || h.vars[name] !== undefined
    const bad = (f: Found, keyword: string, message: string) =>
      problems.push(
        new ProvisionError('inventory', `${keyword} ${JSON.stringify(f.value)} for host "${h.name}": ${message}`, {
          place: { file: f.file, line: f.line, col: f.col },
          hint: 'fix the line or give the host its own value in the inventory (or set ssh_config_file: none)',
        }),
      )
    const take = <K extends keyof SshConfigLayer['vars']>(name: K, f: Found, keyword: string, raw: unknown) => {
      const r = checkVar(name, raw)
      if (r.error !== undefined) return bad(f, keyword, r.error)
      layer.vars[name] = r.value as SshConfigLayer['vars'][K]
      layer.from[name] = `${f.file}:${f.line}`
    }
    if (found.hostName && !own('address')) {
      const x = expandHostName(found.hostName.value, h.name.toLowerCase())
      if ('error' in x) bad(found.hostName, 'HostName', x.error)
      else take('address', found.hostName, 'HostName', x.value)
    }
    if (found.user && !own('ssh_user')) take('ssh_user', found.user, 'User', found.user.value)
    if (found.port && !own('ssh_port')) {
      if (/^\d+$/.test(found.port.value)) take('ssh_port', found.port, 'Port', Number(found.port.value))
      else bad(found.port, 'Port', 'expected a port number 1-65535 (a service name is not read)')
    }
    if (found.identitiesOnly && !/^(yes|no|true|false)$/i.test(found.identitiesOnly.value))
      bad(found.identitiesOnly, 'IdentitiesOnly', 'expected yes or no')
    if (found.identityFiles.length > 0 && !own('ssh_key_file') && !own('ssh_key_ref')) {
      const tokens = {
        remoteHost: hostAddress(h, extra) ?? layer.vars.address ?? h.name.toLowerCase(),
        originalHost: h.name.toLowerCase(),
        remoteUser: String(extra.ssh_user ?? h.vars.ssh_user ?? layer.vars.ssh_user ?? BUILTIN_DEFAULTS.ssh_user),
        port: Number(extra.ssh_port ?? h.vars.ssh_port ?? layer.vars.ssh_port ?? BUILTIN_DEFAULTS.ssh_port),
      }
      // As ssh does: every IdentityFile in order, a missing file skipped; the first that exists is the key.
      for (const f of found.identityFiles) {
        const x = expandIdentityFile(f.value, tokens)
        if ('error' in x) {
          bad(f, 'IdentityFile', x.error)
          continue
        }
        const path = expandPath(x.path, process.cwd())
        const r = checkVar('ssh_key_file', path)
        if (r.error !== undefined) bad(f, 'IdentityFile', r.error)
        else if (layer.vars.ssh_key_file === undefined && existsSync(path)) {
          layer.vars.ssh_key_file = path
          layer.from.ssh_key_file = `${f.file}:${f.line}`
        }
      }
    }
    for (const f of found.ignored) {
      const id = `${f.file}:${f.line}`
      const entry = notFollowed.get(id) ?? { f, hosts: [] }
      entry.hosts.push(h.name)
      notFollowed.set(id, entry)
    }
    if (Object.keys(layer.vars).length > 0) h.sshConfig = layer
  }
  for (const [id, { f, hosts }] of notFollowed)
    warnings.push(`${id}: ${f.value} (for ${hosts.join(', ')}) is not followed: ${NOT_FOLLOWED_WHY[f.value] ?? ''}`)
  if (problems.length > 0) {
    const at = (e: ProvisionError) => [e.place.file ?? '', e.place.line ?? 0, e.place.col ?? 0] as const
    problems.sort((a, b) => {
      const [fa, la, ca] = at(a)
      const [fb, lb, cb] = at(b)
      return fa === fb ? la - lb || ca - cb : 0
    })
    throw ProvisionError.all(problems, `the ssh config: ${problems.length} problems`, 'inventory')
  }
  return warnings
}

const NOT_FOLLOWED_WHY: Readonly<Record<string, string>> = {
  ProxyJump: 'the run connects to the host directly',
  ProxyCommand: 'the run connects to the host directly',
  IdentityAgent: 'the run uses the ssh-agent at SSH_AUTH_SOCK (export SSH_AUTH_SOCK=<that socket>)',
  HostKeyAlias: 'host keys are looked up by address in known_hosts_file',
  CertificateFile: 'certificates are not offered, only keys',
  PKCS11Provider: 'keys come from files, the secrets store and the ssh-agent only',
  CanonicalizeHostname: 'Host patterns are matched against the inventory name as it is',
}
