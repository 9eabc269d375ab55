// The one typed place for every variable an inventory, a role default or `-e` may set.
// Validation of inventories and of `-e` uses this table; README's variable list is made from it.
// Each variable has its grammar (lib/grammar.ts): of the value, of each item of a list, of a map's keys and values.

import { ProvisionError } from './errors.ts'
import * as g from './grammar.ts'
import type { Grammar } from './grammar.ts'
import * as v from 'valibot'

export type VarType = 'string' | 'int' | 'bool' | 'list' | 'map' | 'secret-ref' | 'address' | 'path' | 'url'

export interface VarSpec {
  type: VarType
  doc: string
  /** Only meaningful per host (e.g. address), not in group vars. */
  hostOnly?: boolean
  choices?: readonly string[]
  /** Grammar of the value; of each item for a list. */
  grammar?: Grammar<unknown>
  /** Grammars of a map's keys and values. */
  keys?: Grammar
  values?: Grammar
  /** Values are secrets, or may be one written by mistake: never shown in messages. */
  secret?: boolean
}

/** A 1Password account as the desktop app names it (sign-in address, name or ID): printable, not starting with "-". */
const OpAccount = g.defineGrammar(
  '1Password account',
  v.pipe(
    v.string('expected a string: a 1Password account name or ID'),
    v.check(
      (s: string) => s.length >= 1 && s.length <= 255 && !/[\x00-\x1f\x7f]/.test(s) && !/^[-\s]/.test(s),
      'expected a 1Password account as the desktop app shows it (e.g. my.1password.com) or its ID: ' +
        '1-255 printable characters, not starting with "-"',
    ),
  ),
)

export const VAR_SPECS = {
  // connection
  address: {
    type: 'address',
    doc: 'IP address or DNS name the controller connects to',
    hostOnly: true,
    grammar: g.Address,
  },
  ssh_user: { type: 'string', doc: 'login user (passwordless sudo when not root)', grammar: g.UserName },
  ssh_port: { type: 'int', doc: 'SSH port', grammar: g.Port },
  ssh_key_file: { type: 'path', doc: 'private key file for SSH (relative to the inventory file)', grammar: g.FilePath },
  ssh_key_ref: {
    type: 'secret-ref',
    doc: 'private key from the secrets store instead of a file (op://vault/item/field)',
    grammar: g.SecretRef,
    secret: true,
  },
  ssh_key_passphrase_ref: {
    type: 'secret-ref',
    doc: 'passphrase of an encrypted ssh_key_file or ssh_key_ref, from the secrets store',
    grammar: g.SecretRef,
    secret: true,
  },
  ssh_agent: {
    type: 'bool',
    doc: 'also offer the keys of the ssh-agent at SSH_AUTH_SOCK (the 1Password SSH agent too) when it is set',
  },
  become_password_ref: {
    type: 'secret-ref',
    doc: 'sudo password from the secrets store, for hosts without a NOPASSWD rule',
    grammar: g.SecretRef,
    secret: true,
  },
  known_hosts_file: { type: 'path', doc: 'known_hosts used for strict host-key checking', grammar: g.FilePath },
  ssh_config_file: {
    type: 'path',
    doc:
      "OpenSSH client config giving HostName, User, Port and IdentityFile below the inventory's own values " +
      '(default ~/.ssh/config when it exists; none: not read)',
    grammar: g.FilePath,
  },
  connect_timeout: { type: 'int', doc: 'seconds to wait for an SSH connection', grammar: g.Duration },
  // secrets
  secrets_backend: { type: 'string', doc: 'where secrets live', choices: ['onepassword', 'file'] },
  secrets_file: { type: 'path', doc: 'YAML secrets file (0600) for the file backend', grammar: g.FilePath },
  op_account: {
    type: 'string',
    doc:
      '1Password account whose desktop app unlocks the secrets ' +
      '(name at the top left of the app, e.g. my.1password.com, or its ID); unset or none: OP_SERVICE_ACCOUNT_TOKEN',
    grammar: OpAccount,
  },
  // hardware and OS
  hardware: {
    type: 'string',
    doc: 'board model, for people and for facts the lab cannot read',
    choices: ['pi5', 'pi4', 'pi3', 'pi-zero-2', 'generic'],
  },
  hostname: {
    type: 'string',
    doc: 'hostname to set and Kubernetes node name, an RFC 1123 subdomain (default: the inventory name)',
    grammar: g.NodeName,
  },
  cmdline_flags: { type: 'list', doc: 'kernel flags that must be in cmdline.txt', grammar: g.CmdlineFlag },
  extra_packages: { type: 'list', doc: 'apt packages to install on every host of the group', grammar: g.DebPackage },
  reboot_timeout: { type: 'int', doc: 'seconds to wait for a host to come back from a reboot', grammar: g.Duration },
  apt_cache_valid_time: {
    type: 'int',
    doc: 'playbooks/update.mts: seconds the package lists are trusted before apt-get update runs again',
    grammar: g.DurationOrZero,
  },
  apt_upgrade_timeout: {
    type: 'int',
    doc: 'playbooks/update.mts: seconds apt-get full-upgrade may take on one host',
    grammar: g.Duration,
  },
  update_drain: {
    type: 'bool',
    doc: 'playbooks/update.mts: drain an agent before updating it and uncordon it after (the server is never drained)',
  },
  // k3s
  k3s_version: { type: 'string', doc: 'pinned k3s version, e.g. v1.34.3+k3s1', grammar: g.K3sVersion },
  k3s_install_url: { type: 'url', doc: 'URL of the k3s install script', grammar: g.HttpUrl },
  k3s_drain_timeout: {
    type: 'int',
    doc: 'seconds kubectl drain may take to evict the pods of a node being retired (playbooks/retire.mts)',
    grammar: g.Duration,
  },
  k3s_start_timeout: {
    type: 'int',
    doc:
      'seconds the k3s install script, or a start or restart of k3s, may take ' +
      '(its units wait for ever for a k3s that never gets ready)',
    grammar: g.Duration,
  },
  k3s_token_ref: {
    type: 'secret-ref',
    doc: 'cluster token in the secrets store (generated and stored on first run)',
    grammar: g.SecretRef,
    secret: true,
  },
  k3s_api_port: { type: 'int', doc: 'API server port', grammar: g.Port },
  k3s_disable: {
    type: 'list',
    doc: 'packaged components to disable (the owner disables traefik)',
    grammar: g.K3sComponent,
  },
  k3s_tls_san: { type: 'list', doc: 'extra names/addresses in the API server certificate', grammar: g.Address },
  k3s_extra_args: {
    type: 'list',
    doc:
      'extra k3s flags (--flag=value), written to config.yaml so every run and restart uses them; ' +
      'not the ones the roles write from other variables',
    grammar: g.K3sFlag,
  },
  k3s_kubeconfig_mode: { type: 'string', doc: 'mode of /etc/rancher/k3s/k3s.yaml on the server', grammar: g.FileMode },
  node_labels: {
    type: 'list',
    doc: 'node labels (key=value), kept in config.yaml so they survive a rejoin',
    grammar: g.NodeLabel,
  },
  node_taints: { type: 'list', doc: 'node taints (key=value:Effect), kept in config.yaml', grammar: g.Taint },
  k3s_backup_dir: {
    type: 'path',
    doc:
      'where the k3s datastore backups are: a directory the controller sees (the NAS share mounted) ' +
      'or user@host:/path on the NAS over SSH; ' +
      '{date}/k3s/state.db.gz and k3s-server-identity.tar.gz (or a plain .db and a .tar.gz)',
    grammar: g.BackupDir,
  },
  k3s_restore: {
    type: 'string',
    doc:
      'rebuild only: restore the server datastore from the "latest" usable backup (no older than backup_max_age), ' +
      '"latest-anyway" (however old), a named {date} folder, or "none" (an empty datastore)',
    grammar: g.RestoreName,
  },
  backup_max_age: {
    type: 'string',
    doc:
      'how old the newest backup in k3s_backup_dir may be (36h, 2d, seconds): ' +
      'site warns past it (fails with --strict), a rebuild asks for k3s_restore=latest-anyway',
    grammar: g.Age,
  },
  kubeconfig_path: {
    type: 'path',
    doc: 'where the controller keeps the fetched kubeconfig (0600)',
    grammar: g.FilePath,
  },
  kubeconfig_context: { type: 'string', doc: 'context name in the fetched kubeconfig', grammar: g.ContextName },
  // flux and apps (docs/gitops.md)
  flux_version: {
    type: 'string',
    doc: 'pinned flux CLI version, e.g. 2.7.3; flux bootstrap installs the same Flux version',
    grammar: g.FluxVersion,
  },
  flux_url: {
    type: 'url',
    doc:
      'download URL of the flux CLI release tarball (.tar.gz) or binary; ' +
      '{version} and {arch} (dpkg arch: arm64, arm, amd64) are filled in',
    grammar: g.FluxUrl,
  },
  flux_sha256: { type: 'string', doc: 'expected sha256 of the flux download (checked when set)', grammar: g.Sha256 },
  flux_timeout: {
    type: 'int',
    doc: 'seconds flux bootstrap, and the wait for the flux-system Kustomization, may take',
    grammar: g.Duration,
  },
  github_owner: { type: 'string', doc: 'GitOps repository owner', grammar: g.GitHubOwner },
  github_repository: { type: 'string', doc: 'GitOps repository name', grammar: g.GitHubRepo },
  github_branch: { type: 'string', doc: 'GitOps branch', grammar: g.GitBranch },
  flux_path: { type: 'string', doc: 'path of the cluster in the GitOps repository', grammar: g.RepoPath },
  github_token_ref: { type: 'secret-ref', doc: 'GitHub PAT for flux bootstrap', grammar: g.SecretRef, secret: true },
  github_url: {
    type: 'url',
    doc:
      'where GitHub serves repositories over https: the apps role reads the branch head there ' +
      '(GitHub Enterprise: its address)',
    grammar: g.HttpUrl,
  },
  flux_reconcile: {
    type: 'string',
    doc:
      'when the apps role asks Flux to fetch the GitOps source: ' +
      '"auto" (only when the branch head is not what Flux has) or "always"',
    choices: ['auto', 'always'],
  },
  eso_token_ref: {
    type: 'secret-ref',
    doc: '1Password service-account token for External Secrets',
    grammar: g.SecretRef,
    secret: true,
  },
  apps_timeout: {
    type: 'int',
    doc: 'seconds to wait for every Kustomization and HelmRelease to be Ready',
    grammar: g.Duration,
  },
  app_checks: {
    type: 'list',
    doc:
      'health checks run from the controller after GitOps converged: ' +
      '{app, url, expect?, expect_json?, expect_status?} or {app, dns, server?, port?, type?}, ' +
      'each with an optional timeout',
  },
  app_check_timeout: {
    type: 'int',
    doc: 'seconds one app health probe may take (default for app_checks entries without timeout)',
    grammar: g.Duration,
  },
  placement: {
    type: 'map',
    doc: 'workload ([namespace/]name or namespace/*) -> node it must run on, checked by the apps role',
    keys: g.Workload,
    values: g.NodeName,
  },
} as const satisfies Record<string, VarSpec>

export type VarName = keyof typeof VAR_SPECS

/** Values as they are after parsing and validation. */
export interface Vars {
  address?: string
  ssh_user: string
  ssh_port: number
  ssh_key_file?: string
  ssh_key_ref?: string
  /** sudo password from the secrets store (op://...), for hosts without a NOPASSWD sudo rule. */
  become_password_ref?: string
  ssh_key_passphrase_ref?: string
  ssh_agent: boolean
  known_hosts_file: string
  /** OpenSSH client config read below the inventory (lib/inventory.ts applySshConfig); "none": not read. */
  ssh_config_file?: string
  connect_timeout: number
  secrets_backend: 'onepassword' | 'file'
  secrets_file?: string
  /** 1Password desktop-app sign-in for this account (lib/secrets.ts); unset or "none": the service-account token. */
  op_account?: string
  hardware?: string
  hostname?: string
  cmdline_flags: string[]
  extra_packages: string[]
  reboot_timeout: number
  k3s_version?: string
  k3s_install_url: string
  k3s_token_ref?: string
  k3s_drain_timeout: number
  apt_cache_valid_time: number
  apt_upgrade_timeout: number
  update_drain: boolean
  k3s_start_timeout: number
  k3s_api_port: number
  k3s_disable: string[]
  k3s_tls_san: string[]
  k3s_extra_args: string[]
  k3s_kubeconfig_mode: string
  node_labels: string[]
  node_taints: string[]
  k3s_backup_dir?: string
  k3s_restore?: string
  /** Seconds (the inventory may say 36h, 2d, ...). */
  backup_max_age: number
  kubeconfig_path?: string
  kubeconfig_context?: string
  flux_version?: string
  flux_url?: string
  flux_sha256?: string
  flux_timeout: number
  github_owner?: string
  github_repository?: string
  github_branch?: string
  flux_path?: string
  github_token_ref?: string
  github_url: string
  flux_reconcile: 'auto' | 'always'
  eso_token_ref?: string
  apps_timeout: number
  /** Entries are validated by the apps role (lib/probes.ts parseAppChecks) before any host is touched. */
  app_checks: unknown[]
  app_check_timeout: number
  /**
   * Keys (workloads) and values (node names) are checked by their grammars with the inventory; the apps role parses
   * them (parsePlacement).
   */
  placement: Record<string, string>
}

/** Built-in defaults: the lowest precedence, below role defaults. */
export const BUILTIN_DEFAULTS: Vars = {
  ssh_user: 'pi',
  ssh_port: 22,
  ssh_agent: true,
  known_hosts_file: '~/.ssh/known_hosts',
  connect_timeout: 10,
  secrets_backend: 'file',
  cmdline_flags: ['cgroup_memory=1', 'cgroup_enable=memory', 'cgroup_enable=cpuset'],
  extra_packages: [],
  reboot_timeout: 300,
  k3s_install_url: 'https://get.k3s.io',
  k3s_api_port: 6443,
  k3s_drain_timeout: 300,
  apt_cache_valid_time: 3600,
  apt_upgrade_timeout: 1800,
  update_drain: true,
  k3s_start_timeout: 600,
  k3s_disable: [],
  k3s_tls_san: [],
  k3s_extra_args: [],
  k3s_kubeconfig_mode: '0600',
  node_labels: [],
  node_taints: [],
  backup_max_age: 36 * 3600,
  flux_timeout: 300,
  github_url: 'https://github.com',
  flux_reconcile: 'auto',
  apps_timeout: 600,
  app_checks: [],
  app_check_timeout: 5,
  placement: {},
}

export function isVarName(key: string): key is VarName {
  return Object.hasOwn(VAR_SPECS, key)
}

/**
 * Ansible's names for this tool's variables, accepted in the inventory and with -e (most k3s inventories were written
 * for Ansible).
 */
export const VAR_SYNONYMS = {
  ansible_host: 'address',
  ansible_user: 'ssh_user',
  ansible_port: 'ssh_port',
  ansible_ssh_private_key_file: 'ssh_key_file',
  ansible_become_password: 'become_password_ref',
  ansible_become_pass: 'become_password_ref',
} as const satisfies Record<string, VarName>

export type VarSynonym = keyof typeof VAR_SYNONYMS

/** The variable a key names: its own name or an Ansible synonym; undefined for anything else. */
export function canonicalVar(key: string): VarName | undefined {
  if (isVarName(key)) return key
  return Object.hasOwn(VAR_SYNONYMS, key) ? VAR_SYNONYMS[key as VarSynonym] : undefined
}

/**
 * Variables a playbook's roles declare (`Role.vars`), by name: for that run they are known to the inventory and to
 * `-e` like the built-in ones (same checks, same messages). Made by declaredVars().
 */
export type DeclaredVars = Readonly<Record<string, VarSpec>>

/** The variable a key names for a run: a built-in name, an Ansible synonym's, or a name the run's roles declare. */
export function knownVar(key: string, declared: DeclaredVars = {}): string | undefined {
  return canonicalVar(key) ?? (Object.hasOwn(declared, key) ? key : undefined)
}

/** The spec of a variable known to a run (see knownVar). */
export function specOf(name: string, declared: DeclaredVars = {}): VarSpec | undefined {
  if (isVarName(name)) return VAR_SPECS[name]
  return Object.hasOwn(declared, name) ? declared[name] : undefined
}

/**
 * A role's declared variable: its spec, and for roles the value it has when nothing sets it, or that it must be set.
 */
export interface DeclaredVarSpec extends VarSpec {
  /** The value when neither the inventory nor -e sets one; checked by the spec like any other value. */
  default?: unknown
  /**
   * No default: the inventory or -e must set it for every host the role runs on (checked before any host is
   * contacted).
   */
  required?: boolean
}

/** A variable name a role may declare: what `-e name=...` and a YAML key can both carry plainly. */
const DECLARED_NAME = /^[a-z][a-z0-9_]{0,63}$/

/**
 * The variables the roles of a playbook declare, checked: a name that is a built-in variable (or Ansible's name for
 * one), one that two roles declare with different specs (`doc` aside), a default its own spec refuses, a required
 * variable with a default. Every problem at once, as usage errors naming the roles (exit 1, before any host).
 */
export function declaredVars(
  roles: Iterable<{ readonly name: string; readonly vars?: Readonly<Record<string, DeclaredVarSpec>> }>,
): DeclaredVars {
  const out: Record<string, DeclaredVarSpec> = {}
  const owner = new Map<string, string>()
  const problems: ProvisionError[] = []
  const seen = new Set<unknown>()
  const bad = (message: string, hint?: string): void =>
    void problems.push(new ProvisionError('usage', message, { hint }))
  for (const role of roles) {
    if (!role.vars || seen.has(role)) continue
    seen.add(role)
    for (const [name, spec] of Object.entries(role.vars)) {
      const what = `role ${role.name} declares variable "${name}"`
      if (isVarName(name)) {
        const example = `${role.name.replace(/\W+/g, '_')}_${name}`
        bad(
          `${what}, which is a built-in variable (${VAR_SPECS[name].doc})`,
          `read the built-in one as ctx.vars.${name}, or give the role's own another name (e.g. ${example})`,
        )
        continue
      }
      if (Object.hasOwn(VAR_SYNONYMS, name)) {
        bad(
          `${what}, which is Ansible's name for the built-in variable ${VAR_SYNONYMS[name as VarSynonym]}`,
          'give it another name',
        )
        continue
      }
      if (!DECLARED_NAME.test(name)) {
        bad(`${what}: expected a name of lowercase letters, digits and "_", starting with a letter (at most 64)`)
        continue
      }
      if (spec.required && spec.default !== undefined)
        bad(`${what} as required and with a default: a variable with a default is never missing`, 'drop one of them')
      if (spec.default !== undefined) {
        const checked = checkSpecAll(spec, spec.default)
        for (const p of checked.problems) {
          const item = p.index !== undefined ? ` (item ${p.index + 1})` : ''
          bad(`${what} with a default its own spec refuses: ${p.message}${item}`)
        }
      }
      const first = owner.get(name)
      if (first !== undefined) {
        const diff = specDifference(out[name], spec)
        if (diff)
          bad(
            `roles ${first} and ${role.name} both declare variable "${name}", with different specs (${diff})`,
            'one variable has one spec: declare it once (export the spec and use it in both roles), ' +
              'or give one of them another name',
          )
        continue
      }
      owner.set(name, role.name)
      out[name] = spec
    }
  }
  if (problems.length > 0)
    throw ProvisionError.all(problems, `the playbook's role variables: ${problems.length} problems`, 'usage')
  return out
}

/** What differs between two specs of one name (doc aside), or undefined when they are the same. */
function specDifference(a: DeclaredVarSpec, b: DeclaredVarSpec): string | undefined {
  if (a === b) return undefined
  const fields = ['type', 'hostOnly', 'secret', 'required', 'grammar', 'keys', 'values'] as const
  for (const f of fields) if (a[f] !== b[f]) return f === 'type' ? `type ${a.type} and ${b.type}` : `their ${f} differs`
  if (JSON.stringify(a.choices) !== JSON.stringify(b.choices)) return 'their choices differ'
  if (JSON.stringify(a.default) !== JSON.stringify(b.default)) return 'their defaults differ'
  return undefined
}

/** Extra words for a synonym's errors: ansible_become_password takes a reference, never the password. */
export function synonymNote(key: string): string | undefined {
  if (key === 'ansible_become_password' || key === 'ansible_become_pass')
    return (
      'only a secret reference (op://vault/item/field) to the sudo password is accepted here, ' +
      'never the password itself'
    )
  return undefined
}

/**
 * Variables of k3s-ansible and Ansible that this tool does not take, with what to use instead. Their values are
 * never shown (k3s-ansible's `token` is the cluster token itself).
 */
export const FOREIGN_VARS: Readonly<Record<string, string>> = {
  token:
    'k3s-ansible\'s "token" is k3s_token_ref here: ' +
    'a secret reference (op://vault/item/field) to the cluster token in the secrets store, not the token itself ' +
    '(the server role makes and stores one when it is missing)',
  api_port: 'k3s-ansible\'s "api_port" is k3s_api_port here',
  extra_server_args:
    'k3s-ansible\'s "extra_server_args" is k3s_extra_args here, in the vars of group "server": a list of --flag=value',
  extra_agent_args:
    'k3s-ansible\'s "extra_agent_args" is k3s_extra_args here, in the vars of group "agent": a list of --flag=value',
  extra_args: 'k3s-ansible\'s "extra_args" is k3s_extra_args here: a list of --flag=value',
  api_endpoint:
    'k3s-ansible\'s "api_endpoint" is the server host\'s address here: ' +
    'agents join the address of the first host of group "server"; remove it',
  cluster_context: 'k3s-ansible\'s "cluster_context" is kubeconfig_context here',
  user_kubectl:
    'k3s-ansible\'s "user_kubectl" has no switch here: the kubeconfig is fetched to this machine, at kubeconfig_path',
  kubeconfig: 'k3s-ansible\'s "kubeconfig" is kubeconfig_path here',
  k3s_server_location:
    'k3s-ansible\'s "k3s_server_location" has no counterpart: ' +
    'k3s keeps its default /var/lib/rancher/k3s (backups and restore rely on it)',
  server_config_yaml:
    'k3s-ansible\'s "server_config_yaml" has no counterpart: ' +
    'config.yaml is written from node_labels, node_taints, k3s_disable, k3s_tls_san and k3s_extra_args',
  agent_config_yaml:
    'k3s-ansible\'s "agent_config_yaml" has no counterpart: ' +
    'config.yaml is written from node_labels, node_taints and k3s_extra_args',
  extra_manifests:
    'k3s-ansible\'s "extra_manifests" has no counterpart: manifests reach the cluster through Flux (docs/gitops.md)',
  ansible_connection: 'Ansible\'s "ansible_connection" has no counterpart: the connection is always SSH',
  ansible_python_interpreter: 'Ansible\'s "ansible_python_interpreter" is not needed: nothing runs Python on the hosts',
  ansible_become: 'Ansible\'s "ansible_become" is not needed: steps run as root through sudo when ssh_user is not root',
  ansible_become_method:
    'Ansible\'s "ansible_become_method" is not needed: steps run as root through sudo when ssh_user is not root',
  ansible_become_user:
    'Ansible\'s "ansible_become_user" is not needed: steps run as root through sudo when ssh_user is not root',
}

/** What to say about an unknown variable: its counterpart here, else the closest known name. */
export function unknownVarHint(key: string, declared: DeclaredVars = {}): string | undefined {
  if (Object.hasOwn(FOREIGN_VARS, key)) return FOREIGN_VARS[key]
  const guess = suggestVar(key, declared)
  return guess ? `did you mean "${guess}"?` : undefined
}

/** Names whose values may be secrets: never shown in messages. */
export function isSecretName(key: string, declared: DeclaredVars = {}): boolean {
  const name = knownVar(key, declared)
  if (name) return specOf(name, declared)?.secret === true
  return key === 'token' || /pass|token|secret/i.test(key)
}

/** Closest known name (or Ansible synonym, or a name the run's roles declare), for "did you mean" in errors. */
export function suggestVar(key: string, declared: DeclaredVars = {}): string | undefined {
  let best: string | undefined
  let bestDist = 4
  if (key.length > 64) return undefined
  for (const name of [...Object.keys(VAR_SPECS), ...Object.keys(VAR_SYNONYMS), ...Object.keys(declared)]) {
    const d = editDistance(key, name)
    if (d < bestDist) {
      best = name
      bestDist = d
    }
  }
  return best
}

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) dp[0][j] = j
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      dp[i][j] = Math.min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
  return dp[a.length][b.length]
}

/** IPv4, IPv6 or a DNS host name (lib/grammar.ts). */
export const isAddress = g.isAddress

/** One thing wrong with a value; for a list or map, which item or entry. */
export interface VarProblem {
  /** "expected ..., got ..." for a whole value; `what "item": expected ...` for an item or entry. */
  message: string
  /** The list item the problem is in. */
  index?: number
  /** The map entry the problem is in. */
  key?: string
  /** The problem is the map key itself, not its value. */
  inKey?: boolean
}

/**
 * Check one value against its spec and grammar: the value as the roles get it (`-e` strings converted), and every
 * problem (every bad item of a list, every bad key and value of a map).
 */
export function checkVarAll(name: VarName, value: unknown): { value?: unknown; problems: VarProblem[] } {
  return checkSpecAll(VAR_SPECS[name], value)
}

/** checkVarAll for any spec: a built-in one or one a role declares. */
export function checkSpecAll(spec: VarSpec, value: unknown): { value?: unknown; problems: VarProblem[] } {
  const bad = (message: string) => ({ problems: [{ message }] })
  const got = (x: unknown): string => (spec.secret ? secretShown(x) : g.shown(x))
  const whole = (x: unknown, grammar: Grammar<unknown> | undefined) => {
    if (!grammar) return { value: x, problems: [] }
    const r = g.verdict(grammar, x)
    return r.ok ? { value: r.value, problems: [] } : bad(`${r.expected}, got ${got(value)}`)
  }
  switch (spec.type) {
    case 'int': {
      const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0)
        return bad(`expected a whole number, got ${g.shown(value)}`)
      return whole(n, spec.grammar)
    }
    case 'bool': {
      if (value === 'true' || value === 'false') return { value: value === 'true', problems: [] }
      if (typeof value !== 'boolean') return bad(`expected true or false, got ${g.shown(value)}`)
      return { value, problems: [] }
    }
    case 'list': {
      const items: unknown[] | undefined =
        typeof value === 'string'
          ? value
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean)
          : Array.isArray(value)
            ? value
            : undefined
      if (!items) return bad(`expected a list, got ${g.shown(value)}`)
      const grammar = spec.grammar
      if (!grammar) return { value: items, problems: [] }
      const out: unknown[] = []
      const problems: VarProblem[] = []
      for (const [index, item] of items.entries()) {
        const x = typeof item === 'number' ? String(item) : item
        if (typeof x !== 'string') {
          problems.push({ index, message: `${grammar.what}: expected a string, got ${g.shown(item)}` })
          continue
        }
        const r = g.verdict(grammar, x)
        if (r.ok) out.push(r.value)
        else problems.push({ index, message: `${grammar.what} ${JSON.stringify(x)}: ${r.expected}` })
      }
      return problems.length ? { problems } : { value: out, problems }
    }
    case 'map': {
      if (value === null || typeof value !== 'object' || Array.isArray(value))
        return bad(`expected a map, got ${g.shown(value)}`)
      const entries: [string, unknown][] = []
      const problems: VarProblem[] = []
      for (const [key, raw] of Object.entries(value)) {
        const keyBad = spec.keys && g.complaint(spec.keys, key)
        if (keyBad) problems.push({ key, inKey: true, message: keyBad })
        const x = typeof raw === 'number' ? String(raw) : raw
        const valueBad = spec.values && g.complaint(spec.values, x)
        if (valueBad) problems.push({ key, message: `${JSON.stringify(key)} -> ${valueBad}` })
        entries.push([key, x])
      }
      return problems.length ? { problems } : { value: Object.fromEntries(entries), problems }
    }
    case 'secret-ref':
    case 'address':
    case 'url': {
      const s = typeof value === 'number' ? String(value) : value
      return whole(s, spec.grammar)
    }
    default: {
      const s = typeof value === 'number' ? String(value) : value
      if (typeof s !== 'string' || s === '') return bad(`expected a non-empty string, got ${got(value)}`)
      if (spec.choices && !spec.choices.includes(s))
        return bad(`expected one of ${spec.choices.join(', ')}, got ${got(value)}`)
      return whole(s, spec.grammar)
    }
  }
}

/**
 * Check one value against its spec; returns an error text ("expected ...", the first problem) or the value. Converts
 * `-e` strings.
 */
export function checkVar(name: VarName, value: unknown): { value?: unknown; error?: string } {
  const r = checkVarAll(name, value)
  return r.problems.length ? { error: r.problems[0].message } : { value: r.value }
}

/**
 * A value that should have been a secret reference: shown only when it looks like one (op:...), never a pasted secret.
 */
export function secretShown(x: unknown): string {
  if (typeof x === 'string' && !x.startsWith('op:'))
    return 'a value that is not one (not shown: it may be the secret itself)'
  return g.shown(x)
}
