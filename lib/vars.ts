// The one typed place for every variable an inventory, a role default or `-e` may set.
// Validation of inventories and of `-e` uses this table; README's variable list is made from it.

export type VarType = 'string' | 'int' | 'bool' | 'list' | 'map' | 'secret-ref' | 'address' | 'path' | 'url'

export interface VarSpec {
  type: VarType
  doc: string
  /** Only meaningful per host (e.g. address), not in group vars. */
  hostOnly?: boolean
  choices?: readonly string[]
}

export const VAR_SPECS = {
  // connection
  address: { type: 'address', doc: 'IP address or DNS name the controller connects to', hostOnly: true },
  ssh_user: { type: 'string', doc: 'login user (passwordless sudo when not root)' },
  ssh_port: { type: 'int', doc: 'SSH port' },
  ssh_key_file: { type: 'path', doc: 'private key file for SSH (relative to the inventory file)' },
  ssh_key_ref: { type: 'secret-ref', doc: 'private key from the secrets store instead of a file (op://vault/item/field)' },
  known_hosts_file: { type: 'path', doc: 'known_hosts used for strict host-key checking' },
  connect_timeout: { type: 'int', doc: 'seconds to wait for an SSH connection' },
  // secrets
  secrets_backend: { type: 'string', doc: 'where secrets live', choices: ['onepassword', 'file'] },
  secrets_file: { type: 'path', doc: 'YAML secrets file (0600) for the file backend' },
  // hardware and OS
  hardware: { type: 'string', doc: 'board model, for people and for facts the lab cannot read', choices: ['pi5', 'pi4', 'pi3', 'pi-zero-2', 'generic'] },
  hostname: { type: 'string', doc: 'hostname to set (default: the inventory name)' },
  cmdline_flags: { type: 'list', doc: 'kernel flags that must be in cmdline.txt' },
  extra_packages: { type: 'list', doc: 'apt packages to install on every host of the group' },
  reboot_timeout: { type: 'int', doc: 'seconds to wait for a host to come back from a reboot' },
  apt_cache_valid_time: { type: 'int', doc: 'playbooks/update.mts: seconds the package lists are trusted before apt-get update runs again' },
  apt_upgrade_timeout: { type: 'int', doc: 'playbooks/update.mts: seconds apt-get full-upgrade may take on one host' },
  update_drain: { type: 'bool', doc: 'playbooks/update.mts: drain an agent before updating it and uncordon it after (the server is never drained)' },
  // k3s
  k3s_version: { type: 'string', doc: 'pinned k3s version, e.g. v1.34.3+k3s1' },
  k3s_install_url: { type: 'url', doc: 'URL of the k3s install script' },
  k3s_drain_timeout: { type: 'int', doc: 'seconds kubectl drain may take to evict the pods of a node being retired (playbooks/retire.mts)' },
  k3s_start_timeout: { type: 'int', doc: 'seconds the k3s install script, or a start or restart of k3s, may take (its units wait for ever for a k3s that never gets ready)' },
  k3s_token_ref: { type: 'secret-ref', doc: 'cluster token in the secrets store (generated and stored on first run)' },
  k3s_api_port: { type: 'int', doc: 'API server port' },
  k3s_disable: { type: 'list', doc: 'packaged components to disable (the owner disables traefik)' },
  k3s_tls_san: { type: 'list', doc: 'extra names/addresses in the API server certificate' },
  k3s_extra_args: { type: 'list', doc: 'extra k3s flags (--flag=value), written to config.yaml so every run and restart uses them' },
  k3s_kubeconfig_mode: { type: 'string', doc: 'mode of /etc/rancher/k3s/k3s.yaml on the server' },
  node_labels: { type: 'list', doc: 'node labels (key=value), kept in config.yaml so they survive a rejoin' },
  node_taints: { type: 'list', doc: 'node taints (key=value:Effect), kept in config.yaml' },
  k3s_backup_dir: { type: 'path', doc: 'where the k3s datastore backups are, as the controller sees it (e.g. the NAS share mounted): {date}/k3s/*.db and *.tar.gz' },
  k3s_restore: { type: 'string', doc: 'rebuild only: restore the server datastore from "latest" backup, a named {date} folder, or "none"' },
  kubeconfig_path: { type: 'path', doc: 'where the controller keeps the fetched kubeconfig (0600)' },
  kubeconfig_context: { type: 'string', doc: 'context name in the fetched kubeconfig' },
  // flux and apps (docs/gitops.md)
  flux_version: { type: 'string', doc: 'pinned flux CLI version, e.g. 2.7.3; flux bootstrap installs the same Flux version' },
  flux_url: { type: 'url', doc: 'download URL of the flux CLI release tarball (.tar.gz) or binary; {version} and {arch} (dpkg arch: arm64, arm, amd64) are filled in' },
  flux_sha256: { type: 'string', doc: 'expected sha256 of the flux download (checked when set)' },
  flux_timeout: { type: 'int', doc: 'seconds flux bootstrap, and the wait for the flux-system Kustomization, may take' },
  github_owner: { type: 'string', doc: 'GitOps repository owner' },
  github_repository: { type: 'string', doc: 'GitOps repository name' },
  github_branch: { type: 'string', doc: 'GitOps branch' },
  flux_path: { type: 'string', doc: 'path of the cluster in the GitOps repository' },
  github_token_ref: { type: 'secret-ref', doc: 'GitHub PAT for flux bootstrap' },
  eso_token_ref: { type: 'secret-ref', doc: '1Password service-account token for External Secrets' },
  apps_timeout: { type: 'int', doc: 'seconds to wait for every Kustomization and HelmRelease to be Ready' },
  app_checks: { type: 'list', doc: 'health checks run from the controller after GitOps converged: {app, url, expect?, expect_json?, expect_status?} or {app, dns, server?, port?, type?}, each with an optional timeout' },
  app_check_timeout: { type: 'int', doc: 'seconds one app health probe may take (default for app_checks entries without timeout)' },
  placement: { type: 'map', doc: 'workload ([namespace/]name or namespace/*) -> node it must run on, checked by the apps role' },
} as const satisfies Record<string, VarSpec>

export type VarName = keyof typeof VAR_SPECS

/** Values as they are after parsing and validation. */
export interface Vars {
  address?: string
  ssh_user: string
  ssh_port: number
  ssh_key_file?: string
  ssh_key_ref?: string
  known_hosts_file: string
  connect_timeout: number
  secrets_backend: 'onepassword' | 'file'
  secrets_file?: string
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
  eso_token_ref?: string
  apps_timeout: number
  /** Entries are validated by the apps role (lib/probes.ts parseAppChecks) before any host is touched. */
  app_checks: unknown[]
  app_check_timeout: number
  /** Values are validated by the apps role (parsePlacement) before any host is touched. */
  placement: Record<string, string>
}

/** Built-in defaults: the lowest precedence, below role defaults. */
export const BUILTIN_DEFAULTS: Vars = {
  ssh_user: 'pi',
  ssh_port: 22,
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
  flux_timeout: 300,
  apps_timeout: 600,
  app_checks: [],
  app_check_timeout: 5,
  placement: {},
}

export function isVarName(key: string): key is VarName {
  return Object.hasOwn(VAR_SPECS, key)
}

/** Closest known name, for "did you mean" in errors. */
export function suggestVar(key: string): string | undefined {
  let best: string | undefined
  let bestDist = 4
  for (const name of Object.keys(VAR_SPECS)) {
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

const SECRET_REF = /^op:\/\/[^/\s]+\/[^/\s]+\/[^/\s]+$/
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/
const HOSTNAME = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/

export function isAddress(s: string): boolean {
  if (IPV4.test(s)) return true
  if (/^\d+(\.\d+)*$/.test(s)) return false // looks numeric but is not a valid IPv4
  if (s.includes(':')) return /^[0-9A-Fa-f:]+$/.test(s) && s.split(':').length <= 8
  return HOSTNAME.test(s)
}

/** Check one value against its spec; returns an error text ("expected ...") or undefined. Converts `-e` strings. */
export function checkVar(name: VarName, value: unknown): { value?: unknown; error?: string } {
  const spec: VarSpec = VAR_SPECS[name]
  switch (spec.type) {
    case 'int': {
      const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) return { error: `expected a whole number, got ${show(value)}` }
      return { value: n }
    }
    case 'bool': {
      if (value === 'true' || value === 'false') return { value: value === 'true' }
      if (typeof value !== 'boolean') return { error: `expected true or false, got ${show(value)}` }
      return { value }
    }
    case 'list': {
      if (typeof value === 'string') return { value: value.split(',').map((s) => s.trim()).filter(Boolean) }
      if (!Array.isArray(value)) return { error: `expected a list, got ${show(value)}` }
      return { value }
    }
    case 'map': {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) return { error: `expected a map, got ${show(value)}` }
      return { value }
    }
    case 'secret-ref': {
      if (typeof value !== 'string' || !SECRET_REF.test(value))
        return { error: `expected a secret reference like op://vault/item/field, got ${show(value)}` }
      return { value }
    }
    case 'address': {
      if (typeof value !== 'string' || !isAddress(value)) return { error: `expected an IPv4/IPv6 address or host name, got ${show(value)}` }
      return { value }
    }
    case 'url': {
      if (typeof value !== 'string' || !/^https?:\/\/[^\s]+$/.test(value)) return { error: `expected an http(s) URL, got ${show(value)}` }
      return { value }
    }
    default: {
      const v = typeof value === 'number' ? String(value) : value
      if (typeof v !== 'string' || v === '') return { error: `expected a non-empty string, got ${show(value)}` }
      if (spec.choices && !spec.choices.includes(v)) return { error: `expected one of ${spec.choices.join(', ')}, got ${show(value)}` }
      return { value: v }
    }
  }
}

function show(v: unknown): string {
  if (v === null || v === undefined) return 'nothing'
  if (typeof v === 'string') return JSON.stringify(v)
  if (Array.isArray(v)) return 'a list'
  if (typeof v === 'object') return 'a map'
  return String(v)
}
