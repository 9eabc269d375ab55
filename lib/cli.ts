// The command line of every playbook: thin wiring from flags to the library (inventory, secrets,
// reporter, runner). Exit codes: 0 ok, 1 usage/inventory/secrets, 2 a host failed, 4 a host unreachable,
// 130 interrupted.

import { basename } from 'node:path'
import { parseArgs } from 'node:util'
import { errorText, isProvisionError, ProvisionError } from './errors.ts'
import { parseExtraVars } from './extra-vars.ts'
import { checkHosts } from './host-checks.ts'
import { hostAddress } from './host-identity.ts'
import { hostVars, loadInventory, type Inventory, type VarLayer } from './inventory.ts'
import { applySshConfig } from './inventory-sshconfig.ts'
import { mask } from './mask.ts'
import { createReporter } from './reporter.ts'
import type { Connection } from './connection.ts'
import type { InventoryHost } from './inventory.ts'
import type { Playbook } from './role.ts'
import { EXIT, runPlaybook, type RunSummary } from './runner.ts'
import { checkRoleSecrets, planHosts, requiredSecrets, stepSelected } from './run-plan.ts'
import { openSecretStore, type SecretStore } from './secrets.ts'
import { declaredVars } from './declared-vars.ts'
import type { DeclaredVars } from './var-names.ts'
import type { Vars } from './vars.ts'

export const USAGE = `usage: npx zx playbooks/<playbook>.mts [options]

  -i, --inventory FILE    inventory (default inventory/hosts.yaml)
  -l, --limit PATTERN     only these hosts: names, groups, globs, a,b, !x, &g, @retry-file
  -C, --check             change nothing; report what would change
  -D, --diff              show unified diffs of file edits
  -t, --tags LIST         only steps with these tags (a role's name is a tag of all its steps)
      --skip-tags LIST    skip steps with these tags
  -e, --extra-vars K=V    set a variable, above everything else (repeatable)
  -f, --forks N           hosts in parallel (default 10)
      --list-hosts        print the hosts each play would touch, then exit (no connection)
      --list-tasks        print the steps each play would run, then exit (no connection)
      --json FILE         write one JSON event per line to FILE (0600; commands from -v, their output from -vv)
      --trust-new-host-keys  record the key of a host not yet in known_hosts (a changed key is always refused;
                             under --check it is accepted for that run only)
      --retry-file FILE   where failed/unreachable hosts are listed (default <playbook>.retry)
      --keep N            backup.mts: keep the N newest of the tool's own snapshots, prune older ones (N >= 1)
      --strict            site.mts: a stale or unrestorable newest backup fails the run (a warning otherwise)
  -v, -vv                 show commands (-v) and their output (-vv); secrets are masked
  -h, --help              this text
`

export interface CliOptions {
  inventoryFile: string
  limit?: string
  check: boolean
  diff: boolean
  tags: string[]
  skipTags: string[]
  extra: string[]
  forks: number
  listHosts: boolean
  listTasks: boolean
  json?: string
  trustNewHostKeys: boolean
  retryFile?: string
  /** --keep N: the tool's own snapshots to keep (backup.mts). */
  keep?: number
  /** --strict: a backup check that would warn fails instead (site.mts). */
  strict: boolean
  verbosity: number
  help: boolean
  /** Words that are not flags (only playbooks that take them, like rebuild.mts HOST). */
  positionals: string[]
  /** argv without the positionals: the flags, to pass on to runCli. */
  flags: string[]
}

export function parseCli(argv: string[], opts: { positionals?: boolean } = {}): CliOptions {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: opts.positionals ?? false,
      strict: true,
      tokens: true,
      options: {
        inventory: { type: 'string', short: 'i' },
        limit: { type: 'string', short: 'l' },
        check: { type: 'boolean', short: 'C' },
        diff: { type: 'boolean', short: 'D' },
        tags: { type: 'string', short: 't', multiple: true },
        'skip-tags': { type: 'string', multiple: true },
        'extra-vars': { type: 'string', short: 'e', multiple: true },
        forks: { type: 'string', short: 'f' },
        'list-hosts': { type: 'boolean' },
        'list-tasks': { type: 'boolean' },
        json: { type: 'string' },
        'trust-new-host-keys': { type: 'boolean' },
        'retry-file': { type: 'string' },
        keep: { type: 'string' },
        strict: { type: 'boolean' },
        verbose: { type: 'boolean', short: 'v', multiple: true },
        help: { type: 'boolean', short: 'h' },
      },
    })
  } catch (e) {
    throw new ProvisionError('usage', (e as Error).message, { hint: 'see --help' })
  }
  const v = parsed.values
  const forks = v.forks === undefined ? 10 : Number(v.forks)
  if (!Number.isInteger(forks) || forks < 1)
    throw new ProvisionError('usage', `--forks ${v.forks}: expected a whole number >= 1`)
  const keep = v.keep === undefined ? undefined : /^\d{1,4}$/.test(v.keep) ? Number(v.keep) : Number.NaN
  if (keep !== undefined && !(keep >= 1))
    throw new ProvisionError('usage', `--keep ${v.keep}: expected a whole number >= 1 (the newest snapshots to keep)`)
  const list = (xs: string[] | undefined) =>
    (xs ?? [])
      .flatMap((x) => x.split(','))
      .map((s) => s.trim())
      .filter(Boolean)
  return {
    inventoryFile: v.inventory ?? 'inventory/hosts.yaml',
    limit: v.limit,
    check: v.check ?? false,
    diff: v.diff ?? false,
    tags: list(v.tags),
    skipTags: list(v['skip-tags']),
    extra: v['extra-vars'] ?? [],
    forks,
    listHosts: v['list-hosts'] ?? false,
    listTasks: v['list-tasks'] ?? false,
    json: v.json,
    trustNewHostKeys: v['trust-new-host-keys'] ?? false,
    retryFile: v['retry-file'],
    keep,
    strict: v.strict ?? false,
    verbosity: (v.verbose ?? []).length,
    help: v.help ?? false,
    positionals: parsed.positionals,
    // By position, not by value: a flag's value may equal a positional (-l pi3-worker-1 pi3-worker-1).
    flags: argv.filter((_, i) => !parsed.tokens.some((t) => t.kind === 'positional' && t.index === i)),
  }
}

/** Arguments after the playbook file, whether started by `npx zx file.mts` or `node file.mts`. */
export function scriptArgs(argv = process.argv): string[] {
  const i = argv.findIndex((a, k) => k >= 1 && /\.(mts|ts|mjs|js)$/.test(a) && !/[\\/]\.bin[\\/]zx$/.test(a))
  return argv.slice(i < 0 ? 2 : i + 1)
}

export function listHosts(pb: Playbook, inv: Inventory, limit?: string): string[] {
  const out: string[] = []
  for (const { play, hosts } of planHosts(pb, inv, limit)) {
    out.push(`play #${pb.plays.indexOf(play) + 1} (${play.hosts}): ${play.name}  HOSTS (${hosts.length}):`)
    for (const h of hosts) out.push(`    ${h}  ${String(hostAddress(inv.hosts.get(h)!))}`)
  }
  return out
}

export function listTasks(pb: Playbook, inv: Inventory, o: Pick<CliOptions, 'limit' | 'tags' | 'skipTags'>): string[] {
  const out: string[] = []
  for (const { play, hosts } of planHosts(pb, inv, o.limit)) {
    out.push(
      `play #${pb.plays.indexOf(play) + 1} (${play.hosts}): ${play.name}  HOSTS: ${hosts.join(', ') || '(none)'}`,
    )
    for (const role of play.roles) {
      for (const step of role.steps.filter((s) => stepSelected(s, role, o.tags, o.skipTags)))
        out.push(`    ${role.name} | ${step.name}${step.tags?.length ? `  TAGS: [${step.tags.join(', ')}]` : ''}`)
      for (const h of role.handlers ?? []) out.push(`    ${role.name} | handler: ${h.name}`)
    }
  }
  return out
}

export interface MainHooks {
  connect?: (host: InventoryHost, vars: Vars) => Connection
  secrets?: SecretStore
  write?: (line: string) => void
  /** Hosts whose new key may be recorded (a rebuild), on top of --trust-new-host-keys. */
  trustHosts?: string[]
  /** Runs after the inventory is loaded and before any host is touched (not for --list-*). */
  before?: (inv: Inventory, o: CliOptions) => Promise<void>
}

/** Run a playbook from the command line; resolves to the exit code (callers exit with it). */
export async function runCli(pb: Playbook, argv: string[], hooks: MainHooks = {}): Promise<number> {
  const print = hooks.write ?? ((l: string) => process.stdout.write(mask(l) + '\n'))
  const printErr = hooks.write ?? ((l: string) => process.stderr.write(mask(l) + '\n'))
  let summary: RunSummary | undefined
  const abort = new AbortController()
  try {
    // Milestones for the recap's start-up line (-v) and --json: the modules are loaded, the inventory is checked,
    // the secrets are resolved.
    performance.mark('pi-provision:main')
    const o = parseCli(argv)
    if (o.help) {
      print(USAGE)
      return EXIT.ok
    }
    // The variables the playbook's roles declare are known to the inventory and -e of this run, like VAR_SPECS.
    const declared = playbookVars(pb)
    const inv = loadInventory(o.inventoryFile, { declared, sshConfig: true })
    const extra = parseExtraVars(o.extra, { declared })
    flagVars(o, declared, extra)
    // The owner's ssh config (HostName, User, Port, IdentityFile) below the inventory and -e, checked like them.
    const sshWarnings = applySshConfig(inv, extra)
    // The hosts' final values (after -e) across hosts: node names, no address or node name twice.
    checkHosts(inv, extra, new Set(planHosts(pb, inv, o.limit).flatMap((p) => p.hosts)))
    performance.mark('pi-provision:inventory')
    if (o.listHosts) {
      for (const l of listHosts(pb, inv, o.limit)) print(l)
      return EXIT.ok
    }
    if (o.listTasks) {
      for (const l of listTasks(pb, inv, o)) print(l)
      return EXIT.ok
    }
    // Listing needs no role variable; a run needs every required one, for every host it takes.
    checkRequiredVars(pb, inv, o.limit, extra)
    const secrets = hooks.secrets ?? (await openStoreFor(inv, extra))
    // Every secret the run needs, resolved (once; the runner's own call is then answered from the cache) before
    // anything is touched: a before-hook changes local state (rebuild drops known_hosts entries).
    await secrets.resolveAll(requiredSecrets(pb, inv, o.limit, extra))
    await checkRoleSecrets(pb, inv, o.limit, extra, secrets)
    performance.mark('pi-provision:secrets')
    await hooks.before?.(inv, o)
    const reporter = await createReporter({
      verbosity: o.verbosity,
      showDiff: o.diff,
      jsonFile: o.json,
      write: hooks.write,
    })
    for (const message of sshWarnings) reporter.emit({ kind: 'warning', message })
    // The first Ctrl-C lets the steps in flight finish (a half-run apt or a cut-off file is worse than waiting);
    // the second quits at once.
    let sigints = 0
    const onSigint = () => {
      if (++sigints > 1) process.exit(EXIT.interrupted)
      reporter.emit({
        kind: 'interrupted',
        message: 'finishing the steps in flight, then the recap (Ctrl-C again to quit at once)',
      })
      abort.abort()
    }
    process.on('SIGINT', onSigint)
    try {
      summary = await runPlaybook(pb, {
        inventory: inv,
        limit: o.limit,
        check: o.check,
        diff: o.diff,
        tags: o.tags,
        skipTags: o.skipTags,
        forks: o.forks,
        extraVars: extra,
        trustNewHostKeys: o.trustNewHostKeys || (hooks.trustHosts ?? []),
        reporter,
        secrets,
        connect: hooks.connect,
        retryFile: o.retryFile ?? `${basename(pb.name)}.retry`,
        signal: abort.signal,
      })
    } finally {
      reporter.close()
      process.off('SIGINT', onSigint)
    }
    return summary.exitCode
  } catch (e) {
    printErr(`ERROR: ${errorText(e)}`)
    if (isProvisionError(e)) return e.kind === 'interrupted' ? EXIT.interrupted : EXIT.usage
    if (e instanceof Error && e.stack && process.env.PROVISION_DEBUG) printErr(e.stack)
    return EXIT.usage
  }
}

/**
 * Flags that set a role's variable for the run (above -e): --keep N is backup_keep (backup.mts), --strict is
 * backup_strict (site.mts's backup check). A playbook none of whose roles takes the variable refuses the flag.
 */
export function flagVars(o: Pick<CliOptions, 'keep' | 'strict'>, declared: DeclaredVars, extra: VarLayer): void {
  const set = (flag: string, name: string, value: unknown, who: string) => {
    if (!Object.hasOwn(declared, name))
      throw new ProvisionError('usage', `${flag}: this playbook takes no ${flag} (it is a flag of ${who})`)
    extra[name] = value
  }
  if (o.keep !== undefined) set('--keep', 'backup_keep', o.keep, 'playbooks/backup.mts')
  if (o.strict) set('--strict', 'backup_strict', true, 'playbooks/site.mts, for its backup check')
}

/** The variables a playbook's roles declare (Role.vars), checked against the built-in ones and each other. */
export function playbookVars(pb: Playbook): DeclaredVars {
  return declaredVars(pb.plays.flatMap((p) => p.roles))
}

/**
 * Every required role variable (Role.vars, `required: true`) set for every host its role runs on, after -e and
 * --limit: all the missing ones at once, before any host is contacted.
 */
export function checkRequiredVars(pb: Playbook, inv: Inventory, limit: string | undefined, extra: VarLayer): void {
  const missing = new Map<string, { role: string; name: string; doc: string; hosts: string[] }>()
  for (const { play, hosts } of planHosts(pb, inv, limit))
    for (const role of play.roles)
      for (const [name, spec] of Object.entries(role.vars ?? {})) {
        if (!spec.required) continue
        for (const h of hosts) {
          if (extra[name] !== undefined || inv.hosts.get(h)?.vars[name] !== undefined) continue
          const key = `${role.name}\0${name}`
          const entry = missing.get(key) ?? { role: role.name, name, doc: spec.doc, hosts: [] }
          if (!entry.hosts.includes(h)) entry.hosts.push(h)
          missing.set(key, entry)
        }
      }
  if (missing.size === 0) return
  const problems = [...missing.values()].map(
    (m) =>
      new ProvisionError(
        'inventory',
        `role ${m.role} needs variable ${m.name} (${m.doc}), and it is not set for ` +
          `${m.hosts.length === inv.hosts.size && m.hosts.length > 1 ? 'any host' : m.hosts.join(', ')}`,
        {
          place: { file: inv.file },
          hint:
            `set ${m.name} in the inventory (under all.vars for every host, or under a group or host) ` +
            `or with -e ${m.name}=...`,
        },
      ),
  )
  throw ProvisionError.all(problems, `${problems.length} role variables are not set`, 'inventory')
}

/** The secrets store the inventory asks for (same backend for every host). */
export async function openStoreFor(inv: Inventory, extra: Record<string, unknown>): Promise<SecretStore> {
  const backends = new Set<string>()
  let file: string | undefined
  let account: string | undefined
  for (const h of inv.hosts.values()) {
    const v = hostVars(h, {}, extra)
    backends.add(v.secrets_backend)
    file ??= v.secrets_file
    account ??= v.op_account
  }
  if (backends.size > 1)
    throw new ProvisionError(
      'inventory',
      `hosts use different secrets backends (${[...backends].join(', ')}); set secrets_backend once under all.vars`,
      { place: { file: inv.file } },
    )
  const backend = [...backends][0] as Vars['secrets_backend']
  if (backend === 'file' && !file)
    throw new ProvisionError('inventory', 'secrets_backend is "file" but no secrets_file is set', {
      place: { file: inv.file },
    })
  return openSecretStore({ backend, file, account })
}

/** Entry point for playbooks: run and exit with the code. */
export async function main(pb: Playbook): Promise<never> {
  const code = await runCli(pb, scriptArgs())
  process.exit(code)
}
