// What the k3s roles share (the server, agent, retire and update roles): the cluster token, config.yaml, the installed
// version, and the Node as the server sees it. Running the install script: lib/k3s-install.ts.

import { randomBytes } from 'node:crypto'
import { ProvisionError } from './errors.ts'
import type { SecretStore } from './secrets.ts'
import type { Vars } from './vars.ts'
import { defineFact } from './facts.ts'
import type { Inventory } from './inventory.ts'
import { nodeNameFrom } from './host-identity.ts'
import { hostVars } from './inventory.ts'
import { runKey, type HostHandle, type Step, type StepContext } from './role.ts'
import { counted } from './words.ts'
import { kubectl, NO_K3S } from './kube.ts'
import { parseTaint, planNodeMetadata, sameTaint, type Taint } from './node-metadata.ts'
import { parse as parseYaml } from 'yaml'

export const K3S_CONFIG = '/etc/rancher/k3s/config.yaml'
export const NODE_PASSWORD = '/etc/rancher/node/password'

export interface K3sInstallState {
  version: string | null
  /** Which unit the host has: k3s.service (server), k3s-agent.service (agent). */
  serverUnit: boolean
  agentUnit: boolean
  /** K3S_* variables in the agent's service env file (written by the install script). */
  agentEnv: Record<string, string>
}

export const k3sInstallFact = defineFact(
  'k3s-install',
  [
    'if [ -x /usr/local/bin/k3s ]; then /usr/local/bin/k3s --version 2>/dev/null | head -n 1; else echo none; fi',
    '[ -f /etc/systemd/system/k3s.service ] && echo server-unit',
    '[ -f /etc/systemd/system/k3s-agent.service ] && echo agent-unit',
    'if [ -f /etc/systemd/system/k3s-agent.service.env ]; then ' +
      'echo ENV; cat /etc/systemd/system/k3s-agent.service.env; fi',
    'true',
  ].join('\n'),
  (r) => parseK3sInstall(r.stdout),
)

export function parseK3sInstall(stdout: string): K3sInstallState {
  const lines = stdout.split('\n')
  const m = /^k3s version (\S+)/.exec(lines[0] ?? '')
  const envStart = lines.indexOf('ENV')
  const agentEnv: Record<string, string> = {}
  if (envStart >= 0)
    for (const l of lines.slice(envStart + 1)) {
      const kv = /^([A-Z0-9_]+)=(.*)$/.exec(l.trim())
      if (kv) agentEnv[kv[1]] = kv[2].replace(/^(["'])(.*)\1$/, '$2')
    }
  const head = envStart >= 0 ? lines.slice(0, envStart) : lines
  return {
    version: m ? m[1] : null,
    serverUnit: head.includes('server-unit'),
    agentUnit: head.includes('agent-unit'),
    agentEnv,
  }
}

/** config.yaml for a node: only what the inventory says, in a stable order, so a rerun writes the same bytes. */
export function renderK3sConfig(entries: Record<string, string | readonly string[] | undefined>): string {
  const out = ['# Managed by pi-provision from the inventory: edit the inventory, not this file.']
  for (const [key, value] of Object.entries(entries)) {
    if (value === undefined) continue
    if (typeof value === 'string') out.push(`${key}: ${JSON.stringify(value)}`)
    else if (value.length > 0) out.push(`${key}:`, ...value.map((v) => `  - ${JSON.stringify(v)}`))
  }
  return out.join('\n') + '\n'
}

/**
 * k3s_extra_args ("--flag=value" or "flag=value", repeatable) as config.yaml entries: a repeated flag becomes a list.
 */
export function extraConfig(args: readonly string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {}
  for (const a of args) {
    const m = /^(?:--)?([a-z0-9][a-z0-9-]*)(?:=(.*))?$/.exec(a.trim())
    if (!m) throw new ProvisionError('step', `k3s_extra_args: "${a}" is not --flag or --flag=value`)
    const value = m[2] ?? 'true'
    const prev = out[m[1]]
    out[m[1]] = prev === undefined ? value : [...(Array.isArray(prev) ? prev : [prev]), value]
  }
  return out
}

export function nodeName(ctx: Pick<StepContext, 'vars' | 'host'>): string {
  return nodeNameFrom(ctx.vars, ctx.host)
}

/**
 * The server this cluster's agents join: the first host of group "server". Read from the inventory, so --limit needs
 * nothing else.
 */
export function serverOf(
  inv: Inventory,
  extra: Record<string, unknown> = {},
): { name: string; url: string; address: string } {
  const name = inv.groups.get('server')?.[0]
  if (!name)
    throw new ProvisionError('inventory', 'no host in group "server": agents have nothing to join', {
      place: { file: inv.file },
    })
  const v = hostVars(inv.hosts.get(name)!, {}, extra)
  const address = v.address!
  const host = address.includes(':') ? `[${address}]` : address
  return { name, address, url: `https://${host}:${v.k3s_api_port}` }
}

/** The cluster token of this run, once read from the secrets store or made for it. */
export const CLUSTER_TOKEN = runKey<string>('cluster token')

/**
 * A k3s token as k3s makes and accepts them (K10<hex>::server:<hex>, or a plain secret): nothing a shell or YAML reads
 * specially.
 */
export function isClusterToken(s: string): boolean {
  return s.length >= 1 && s.length <= 512 && /^[A-Za-z0-9._~:+=/@%^,-]+$/.test(s) && !s.startsWith('-')
}

function notATokenError(ref: string, place: { host?: string }, kind: 'step' | 'secrets' = 'step'): ProvisionError {
  return new ProvisionError(
    kind,
    `the cluster token at ${ref} is not a k3s token: ` +
      'expected 1-512 printable characters without spaces, quotes, "\\", "$" or "`", not starting with "-"',
    {
      place,
      hint:
        'put the token k3s gave the cluster (server/token on the server, K10...::server:...) ' +
        'or the secret part of it at that reference',
    },
  )
}

/**
 * The cluster token, checked before any host is touched (the k3s roles' checkSecrets): it goes into config.yaml
 * and the agents' env files, so a value in the store that is no k3s token stops the run at once. None there yet is
 * fine: the server role makes one.
 */
export async function checkClusterToken(vars: Vars, secrets: SecretStore): Promise<void> {
  const ref = vars.k3s_token_ref
  if (!ref) return
  const found = await secrets.lookup(ref)
  if (found !== undefined && !isClusterToken(found)) throw notATokenError(ref, {}, 'secrets')
}

/** The token of the cluster, from the secrets store; the server role creates it on first run. */
export async function clusterToken(ctx: StepContext, create: boolean): Promise<{ token: string; created: boolean }> {
  const ref = ctx.vars.k3s_token_ref
  if (!ref)
    throw new ProvisionError(
      'step',
      'k3s_token_ref is not set: ' +
        'the cluster token needs a place in the secrets store (e.g. op://pi-cluster/k3s-node-token/token)',
      { place: { host: ctx.host } },
    )
  const cached = ctx.state.get(CLUSTER_TOKEN)
  if (cached) return { token: cached, created: false }
  const found = await ctx.secrets.lookup(ref)
  if (found) {
    // The token goes into config.yaml and the agents' env files: a value that is no k3s token (a line break, a
    // quote, a leading "-") is refused here, before any host sees it.
    if (!isClusterToken(found)) throw notATokenError(ref, { host: ctx.host })
    ctx.state.set(CLUSTER_TOKEN, found)
    return { token: found, created: false }
  }
  if (!create)
    throw new ProvisionError(
      'step',
      `no cluster token at ${ref}: run the k3s-server role first (it creates the token)`,
      { place: { host: ctx.host } },
    )
  // Made here and kept for this run; the step that asked for it (create) stores it when the run is for real.
  const token = randomBytes(24).toString('hex')
  ctx.state.set(CLUSTER_TOKEN, token)
  return { token, created: true }
}

export interface NodeView {
  exists: boolean
  ready: boolean
  /** Cordoned (kubectl cordon / drain). */
  unschedulable: boolean
  /** The boot the kubelet last reported (status.nodeInfo.bootID): tells a fresh Ready from one left over. */
  bootID?: string
  /** The k3s release that runs there (status.nodeInfo.kubeletVersion, e.g. v1.34.3+k3s1). */
  kubeletVersion?: string
  labels: Record<string, string>
  annotations: Record<string, string>
  taints: Taint[]
}

const NO_NODE: NodeView = { exists: false, ready: false, unschedulable: false, labels: {}, annotations: {}, taints: [] }

/** Parse `kubectl get node NAME -o json` (exit 1 + NotFound means no such node). */
export function parseNode(code: number, stdout: string, stderr: string): NodeView {
  if (code !== 0) {
    // The API's NotFound, or no k3s on the host at all (a --check of a fresh Pi): no such Node either way.
    if (code === NO_K3S || /\(NotFound\)/.test(stderr)) return { ...NO_NODE }
    throw new ProvisionError('step', `kubectl get node failed: ${stderr.trim() || stdout.trim()}`)
  }
  const j = JSON.parse(stdout) as {
    metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> }
    spec?: { taints?: Taint[]; unschedulable?: boolean }
    status?: {
      conditions?: { type: string; status: string }[]
      nodeInfo?: { bootID?: string; kubeletVersion?: string }
    }
  }
  const ready = (j.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True')
  return {
    exists: true,
    ready,
    unschedulable: j.spec?.unschedulable === true,
    bootID: j.status?.nodeInfo?.bootID,
    kubeletVersion: j.status?.nodeInfo?.kubeletVersion,
    labels: j.metadata?.labels ?? {},
    annotations: j.metadata?.annotations ?? {},
    taints: j.spec?.taints ?? [],
  }
}

/** The k3s server's own connection (its kubectl), from a step on any host; its commands show under its name at -v. */
export function serverHandle(ctx: Pick<StepContext, 'hostHandle' | 'inventory'>): Promise<HostHandle> {
  return ctx.hostHandle(serverOf(ctx.inventory).name)
}

/** A Node as the server sees it, read over the server's own connection (read-only); this host's by default. */
export async function nodeOnServer(ctx: StepContext, name = nodeName(ctx)): Promise<NodeView> {
  const r = await (await serverHandle(ctx)).sh(kubectl('get node -o json', name))
  return parseNode(r.code, r.stdout, r.stderr)
}

/** The Node, or undefined while the API does not answer (the server itself rebooting or restarting). */
export async function nodeIfAnswering(ctx: StepContext): Promise<NodeView | undefined> {
  try {
    return await nodeOnServer(ctx)
  } catch (e) {
    if (e instanceof ProvisionError && e.kind === 'step') return undefined
    throw e
  }
}

/**
 * Whether an edit of config.yaml needs k3s restarted: not when only node-label / node-taint changed. k3s reads those
 * only when a node registers; a registered node gets them through the API (nodeLabelsStep), and config.yaml keeps
 * them for a rejoin.
 */
export function configNeedsRestart(before: string | undefined, after: string): boolean {
  const settings = (text: string | undefined): string => {
    let v: unknown
    try {
      v = parseYaml(text ?? '')
    } catch {
      return `unreadable:${text}`
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return JSON.stringify(v ?? null)
    const { 'node-label': _l, 'node-taint': _t, ...rest } = v as Record<string, unknown>
    return JSON.stringify(rest)
  }
  return settings(before) !== settings(after)
}

/**
 * The Node as the Ready wait just before the labels step read it (nothing changed on the server in between): the
 * labels step starts from it instead of starting kubectl again (one cluster read per role on a no-op run).
 */
export const NODE_SEEN = runKey<NodeView>('the Node as the Ready wait read it')

/**
 * The inventory's labels and taints on this host's live Node, through the API on the server (no restart): added or
 * changed, and the ones the tool set before and the inventory dropped removed; labels and taints set by hand stay.
 */
export function nodeLabelsStep(): Step {
  return {
    name: "Give the Node the inventory's labels and taints (through the API: no restart)",
    async plan(ctx) {
      const name = nodeName(ctx)
      const { node_labels: labels, node_taints: taints } = ctx.vars
      const label = async (): Promise<void> => {
        const now = await nodeOnServer(ctx)
        if (!now.exists) throw new ProvisionError('step', `no Node ${name} in the cluster to label`)
        const todo = planNodeMetadata(now, name, labels, taints)
        if (todo) await (await serverHandle(ctx)).must(todo.script, { what: `label and taint the Node ${name}` })
        const missing = missingOnNode(await nodeOnServer(ctx), labels, taints)
        if (missing.length)
          throw new ProvisionError(
            'step',
            `the Node ${name} still lacks ${missing.join(', ')} after kubectl label/taint`,
          )
      }
      const node = ctx.state.get(NODE_SEEN, ctx.host) ?? (await nodeOnServer(ctx))
      ctx.state.delete(NODE_SEEN, ctx.host)
      // Not registered yet (a --check of a fresh Pi): k3s gives it config.yaml's labels then; this records them.
      if (!node.exists)
        return {
          summary: `record on the Node ${name}, once registered, which labels and taints the inventory sets`,
          apply: label,
        }
      const todo = planNodeMetadata(node, name, labels, taints)
      if (!todo)
        return {
          status: 'ok',
          message: `${counted(labels.length, 'label')}, ${counted(taints.length, 'taint')} as in the inventory`,
        }
      return { summary: todo.summary, apply: label }
    },
  }
}

/** Labels ("k=v") and taints ("k=v:Effect") the inventory wants that the node does not have. */
export function missingOnNode(node: NodeView, labels: readonly string[], taints: readonly string[]): string[] {
  const missing: string[] = []
  for (const l of labels) {
    const [k, v = ''] = l.split('=')
    if (node.labels[k] !== v) missing.push(`label ${l}`)
  }
  for (const t of taints) {
    let want: Taint
    try {
      want = parseTaint(t)
    } catch {
      missing.push(`taint ${t} (malformed: expected key=value:Effect)`)
      continue
    }
    if (!node.taints.some((x) => sameTaint(x, want))) missing.push(`taint ${t}`)
  }
  return missing
}
