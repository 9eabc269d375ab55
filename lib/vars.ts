// The one typed place for every variable an inventory, a role default or `-e` may set.
// Validation of inventories and of `-e` uses this table; README's variable list is made from it.
// Each variable has its grammar (lib/grammar.ts): of the value, of each item of a list, of a map's keys and values.

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

/** IPv4, IPv6 or a DNS host name (lib/grammar.ts). */
export const isAddress = g.isAddress
