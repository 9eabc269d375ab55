// The names a variable goes by: its own, Ansible's (ansible_host...), one a run's roles declare; what to say about
// a name this tool does not take (k3s-ansible's, a misspelling: "did you mean"), and which names may hold secrets.

import { isVarName, VAR_SPECS, type VarName, type VarSpec } from './vars.ts'

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
