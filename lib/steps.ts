// Idempotent step primitives. Each one reads facts, plans a Change with a pure function (exported,
// so tests feed recorded facts in and check the commands that come out), and lets the context apply it.

import { defineFact, type Fact } from './facts.ts'
import { registerSecret } from './mask.ts'
import type { RunResult } from './connection.ts'
import { unifiedDiff } from './diff.ts'
import type { Change, Command, Handler, Plan, Step, StepContext, StepResult } from './role.ts'
import { handler } from './role.ts'
import { bounded, quote } from './shell.ts'
import { sleep } from './connection.ts'
import { ProvisionError } from './errors.ts'

// ---------------------------------------------------------------- facts

export interface FileState {
  exists: boolean
  kind?: 'file' | 'directory' | 'other'
  mode?: string // octal, e.g. "644"
  owner?: string
  group?: string
  content?: string
}

export function fileFact(path: string): Fact<FileState> {
  const p = quote(path)
  return defineFact(
    `file:${path}`,
    `if [ -e ${p} ]; then stat -c '%F|%a|%U|%G' ${p}; if [ -f ${p} ]; then base64 -w0 ${p}; fi; else echo ABSENT; fi`,
    (r) => parseFileState(r.stdout),
  )
}

/**
 * A credential file on the host (a kubeconfig, a token, a key): its bytes reach the caller and no reporter (the
 * command is marked secretOutput), and the whole of it is masked from then on. Exit code and stderr as cat gives them.
 */
export async function readCredential(on: Pick<StepContext, 'sh'>, path: string): Promise<RunResult> {
  const r = await on.sh(`cat ${quote(path)}`, { secretOutput: true })
  if (r.code === 0) registerSecret(r.stdout.trim())
  return r
}

export function parseFileState(stdout: string): FileState {
  const [head, b64 = ''] = stdout.split('\n')
  if (head.trim() === 'ABSENT' || head.trim() === '') return { exists: false }
  const [type, mode, owner, group] = head.split('|')
  const kind = type.startsWith('regular') ? 'file' : type === 'directory' ? 'directory' : 'other'
  return {
    exists: true,
    kind,
    mode,
    owner,
    group,
    content: kind === 'file' ? Buffer.from(b64.trim(), 'base64').toString('utf8') : undefined,
  }
}

export interface UnitState {
  load: string // loaded | not-found | masked
  fileState: string // enabled | disabled | static | masked | '' ...
  active: string // active | inactive | failed | activating ...
}

export function unitFact(unit: string): Fact<UnitState> {
  return defineFact(`unit:${unit}`, `systemctl show -p LoadState -p UnitFileState -p ActiveState ${quote(unit)}`, (r) =>
    parseUnitState(r.stdout),
  )
}

export function parseUnitState(stdout: string): UnitState {
  const kv = new Map<string, string>()
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=')
    if (eq > 0) kv.set(line.slice(0, eq), line.slice(eq + 1).trim())
  }
  return {
    load: kv.get('LoadState') ?? 'not-found',
    fileState: kv.get('UnitFileState') ?? '',
    active: kv.get('ActiveState') ?? 'inactive',
  }
}

export function packagesFact(names: readonly string[]): Fact<Map<string, boolean>> {
  const sorted = [...names].sort()
  return defineFact(
    `pkgs:${sorted.join(',')}`,
    `dpkg-query -W -f='\${Package}\\t\${db:Status-Abbrev}\\n' ${sorted.map(quote).join(' ')} 2>/dev/null; true`,
    (r) => parsePackages(r.stdout, sorted),
  )
}

export function parsePackages(stdout: string, names: readonly string[]): Map<string, boolean> {
  const installed = new Map<string, boolean>(names.map((n) => [n, false]))
  for (const line of stdout.split('\n')) {
    const [name, status] = line.split('\t')
    // Status-Abbrev: wanted state, then actual state; 'i' second means installed (also when held: 'hi').
    if (name && status) installed.set(name.split(':')[0], status[1] === 'i')
  }
  return installed
}

// ---------------------------------------------------------------- planners (pure)

/** A change made of commands on the host only: what the pure planners return (tests run them as they are). */
export type CommandChange = Change & { commands: Command[] }

export interface FileSpec {
  path: string
  content: string
  mode?: string
  owner?: string
  group?: string
  /** Keep a timestamped copy of the old file when the content changes. */
  backup?: boolean
  /** Content holds secrets: never show it in a diff. */
  secret?: boolean
  /**
   * Whether an edit from `before` to the new content needs the step's handlers (default: every edit does). A
   * k3s config.yaml whose only change is labels needs no restart: they reach a registered node through the API.
   */
  notifyIf?: (before: string | undefined, after: string) => boolean
}

/** Plan writing a file atomically: temp file in the same directory, owner/mode set, then rename over. */
export function planFile(cur: FileState, spec: FileSpec, stamp: string): CommandChange | null {
  const mode = normMode(spec.mode ?? '0644')
  const owner = spec.owner ?? 'root'
  const group = spec.group ?? owner
  if (cur.exists && cur.kind !== 'file')
    throw new ProvisionError('step', `${spec.path} exists but is not a regular file (${cur.kind})`)
  const sameContent = cur.exists && cur.content === spec.content
  const sameMeta = cur.exists && normMode(cur.mode ?? '') === mode && cur.owner === owner && cur.group === group
  if (sameContent && sameMeta) return null
  const p = quote(spec.path)
  if (sameContent) {
    const what: string[] = []
    if (normMode(cur.mode ?? '') !== mode) what.push(`mode ${cur.mode} -> ${mode}`)
    if (cur.owner !== owner || cur.group !== group) what.push(`owner ${cur.owner}:${cur.group} -> ${owner}:${group}`)
    return {
      summary: `${spec.path}: ${what.join(', ')}`,
      commands: [{ script: `chown ${quote(`${owner}:${group}`)} ${p} && chmod ${mode} ${p}` }],
    }
  }
  const backup = spec.backup && cur.exists ? `cp -p ${p} ${quote(`${spec.path}.${stamp}.bak`)}\n` : ''
  const script = [
    'set -e',
    `d=$(dirname ${p})`,
    `[ -d "$d" ] || mkdir -p -m 0755 "$d"`,
    `b=$(basename ${p})`,
    `tmp=$(mktemp "$d/.$b.XXXXXX")`,
    `trap 'rm -f "$tmp"' EXIT`,
    `cat > "$tmp"`,
    `chown ${quote(`${owner}:${group}`)} "$tmp"`,
    `chmod ${mode} "$tmp"`,
    `sync "$tmp" 2>/dev/null || true`,
    backup + `mv -f "$tmp" ${p}`,
    `trap - EXIT`,
  ].join('\n')
  const diff = spec.secret
    ? `--- ${spec.path}\n(content hidden: it holds secrets)\n`
    : unifiedDiff(cur.content ?? '', spec.content, spec.path)
  return {
    summary: cur.exists ? `update ${spec.path}` : `create ${spec.path}`,
    commands: [{ script, stdin: spec.content }],
    diff,
  }
}

/** Add kernel-cmdline style tokens to the first line of a one-line file, keeping every other byte. */
export function addTokens(content: string, tokens: readonly string[]): { content: string; added: string[] } {
  const nl = content.indexOf('\n')
  const first = nl < 0 ? content : content.slice(0, nl)
  const rest = nl < 0 ? '' : content.slice(nl)
  const present = new Set(first.split(/\s+/).filter(Boolean))
  const added = tokens.filter((t, i) => !present.has(t) && tokens.indexOf(t) === i)
  if (added.length === 0) return { content, added }
  const body = first.replace(/\s+$/, '')
  const trailing = first.slice(body.length)
  return { content: `${body}${body ? ' ' : ''}${added.join(' ')}${trailing}${rest}`, added }
}

export interface UnitSpec {
  unit: string
  masked?: boolean
  enabled?: boolean
  active?: boolean
  /**
   * Bound on `systemctl start` (a unit that never reports ready would block the run): seconds, and the variable that
   * sets it.
   */
  startTimeout?: { seconds: number; setting: string }
  /**
   * Mask and disable without systemd's implicit daemon-reload (each costs 0.1 s on the lab, about a second on a
   * Pi 3); the role then notifies systemdReloadHandler() to reload once. Unmask and enable always reload: a
   * start right after them needs systemd to know.
   */
  deferReload?: boolean
}

export function planUnit(cur: UnitState, spec: UnitSpec): CommandChange | null {
  const cmds: string[] = []
  const what: string[] = []
  const u = quote(spec.unit)
  const noReload = spec.deferReload ? ' --no-reload' : ''
  const isMasked = cur.load === 'masked' || cur.fileState === 'masked'
  if (spec.masked === true && !isMasked) {
    cmds.push(`systemctl mask${noReload} ${u}`)
    what.push('mask')
  }
  if (spec.masked === false && isMasked) {
    cmds.push(`systemctl unmask ${u}`)
    what.push('unmask')
  }
  const exists = cur.load !== 'not-found'
  // A static unit has no [Install] section: it cannot be enabled, and is started by what needs it.
  const enabled = /^enabled/.test(cur.fileState) || (spec.enabled === true && cur.fileState === 'static')
  if (spec.enabled === true && !enabled) {
    if (!exists) throw new ProvisionError('step', `unit ${spec.unit} does not exist on the host`)
    cmds.push(`systemctl enable ${u}`)
    what.push('enable')
  }
  if (spec.enabled === false && enabled) {
    cmds.push(`systemctl disable${noReload} ${u}`)
    what.push('disable')
  }
  const running = cur.active === 'active' || cur.active === 'activating' || cur.active === 'reloading'
  if (spec.active === true && !running) {
    cmds.push(
      spec.startTimeout
        ? bounded(`systemctl start ${u}`, spec.startTimeout.seconds, `starting ${spec.unit}`, spec.startTimeout.setting)
        : `systemctl start ${u}`,
    )
    what.push('start')
  }
  if ((spec.active === false || spec.masked === true) && running) {
    cmds.push(`systemctl stop ${u}`)
    what.push('stop')
  }
  if (cmds.length === 0) return null
  return { summary: `${spec.unit}: ${what.join(', ')}`, commands: [{ script: cmds.join(' && ') }] }
}

/** Seconds apt waits for another apt/dpkg run to let go of its lock. */
const APT_LOCK_WAIT = 300

export function planPackages(
  installed: Map<string, boolean>,
  present: readonly string[],
  absent: readonly string[] = [],
): CommandChange | null {
  const toInstall = present.filter((p) => !installed.get(p))
  const toRemove = absent.filter((p) => installed.get(p))
  if (toInstall.length === 0 && toRemove.length === 0) return null
  const cmds: Command[] = []
  const env = 'export DEBIAN_FRONTEND=noninteractive'
  if (toInstall.length > 0) {
    const pk = toInstall.map(quote).join(' ')
    // Try with the lists the host has; refresh them only if that fails (a fresh image has none).
    // Wait for the dpkg lock rather than fail: an apt run orphaned by a dropped connection may still hold it.
    const apt = `apt-get -o DPkg::Lock::Timeout=${APT_LOCK_WAIT}`
    const install = `${apt} install -y -q --no-install-recommends ${pk}`
    cmds.push({
      script: `${env}; ${install} || { ${apt} update -q && ${install}; }`,
    })
  }
  if (toRemove.length > 0)
    cmds.push({
      script: `${env}; apt-get -o DPkg::Lock::Timeout=${APT_LOCK_WAIT} purge -y -q ${toRemove.map(quote).join(' ')}`,
    })
  const what = [
    ...(toInstall.length ? [`install ${toInstall.join(' ')}`] : []),
    ...(toRemove.length ? [`remove ${toRemove.join(' ')}`] : []),
  ]
  return { summary: what.join('; '), commands: cmds }
}

// ---------------------------------------------------------------- steps

/** The common shape of a primitive: one fact about the thing, a pure plan from it, applied by the context. */
function plannedStep<S, F>(
  name: string,
  spec: (ctx: StepContext) => S,
  fact: (s: S) => Fact<F>,
  plan: (cur: F, s: S) => Plan,
  extra: Partial<Step>,
): Step {
  return {
    name,
    ...extra,
    facts: (ctx) => [fact(spec(ctx))],
    async plan(ctx) {
      const s = spec(ctx)
      return plan(await ctx.facts.get(fact(s)), s)
    },
  }
}

/** A file with exactly this content, owner and mode. Content may depend on vars (a function). */
export function file(name: string, spec: (ctx: StepContext) => FileSpec, extra: Partial<Step> = {}): Step {
  return plannedStep(
    name,
    spec,
    (s) => fileFact(s.path),
    (cur, s) => {
      const change = planFile(cur, s, timestamp())
      return change && s.notifyIf && !s.notifyIf(cur.content, s.content) ? { ...change, notify: [] } : change
    },
    extra,
  )
}

/** Tokens (like kernel flags) present in a one-line file such as cmdline.txt; other bytes kept; backup on change. */
export function tokensInFile(
  name: string,
  path: (ctx: StepContext) => string | Promise<string>,
  tokens: (ctx: StepContext) => readonly string[],
  extra: Partial<Step> = {},
): Step {
  return {
    name,
    ...extra,
    async plan(ctx) {
      const p = await path(ctx)
      const cur = await ctx.facts.get(fileFact(p))
      if (!cur.exists) return { status: 'failed', message: `${p} does not exist` }
      const { content, added } = addTokens(cur.content ?? '', tokens(ctx))
      if (added.length === 0) return { status: 'ok', message: `${p} has ${tokens(ctx).join(' ')}` }
      const change = planFile(
        cur,
        { path: p, content, mode: cur.mode, owner: cur.owner, group: cur.group, backup: true },
        timestamp(),
      )
      return change && { ...change, summary: `add ${added.join(' ')} to ${p}` }
    },
  }
}

/** A line in a file: the line matching `match` is replaced, or the line appended. */
export function lineInFile(name: string, spec: (ctx: StepContext) => LineSpec, extra: Partial<Step> = {}): Step {
  return plannedStep(name, spec, (s) => fileFact(s.path), planLine, extra)
}

export interface LineSpec {
  path: string
  line: string
  match?: RegExp
  mode?: string
}

export function planLine(cur: FileState, s: LineSpec): Plan {
  const text = cur.content ?? ''
  const lines = text === '' ? [] : text.replace(/\n$/, '').split('\n')
  if (lines.includes(s.line)) return { status: 'ok' }
  const idx = s.match ? lines.findIndex((l) => s.match!.test(l)) : -1
  if (idx >= 0) lines[idx] = s.line
  else lines.push(s.line)
  return planFile(
    cur,
    {
      path: s.path,
      content: lines.join('\n') + '\n',
      mode: s.mode ?? cur.mode ?? '0644',
      owner: cur.owner,
      group: cur.group,
    },
    timestamp(),
  )
}

export interface DirectorySpec {
  path: string
  mode?: string
  owner?: string
  group?: string
}

export function directory(name: string, spec: (ctx: StepContext) => DirectorySpec, extra: Partial<Step> = {}): Step {
  return plannedStep(name, spec, (s) => fileFact(s.path), planDirectory, extra)
}

export function planDirectory(cur: FileState, s: DirectorySpec): Plan {
  const mode = normMode(s.mode ?? '0755')
  const owner = s.owner ?? 'root'
  const group = s.group ?? owner
  const p = quote(s.path)
  if (cur.exists && cur.kind !== 'directory')
    return { status: 'failed', message: `${s.path} exists and is not a directory` }
  if (cur.exists && normMode(cur.mode ?? '') === mode && cur.owner === owner && cur.group === group)
    return { status: 'ok' }
  return {
    summary: cur.exists ? `${s.path}: set mode/owner` : `create ${s.path}`,
    commands: [{ script: `mkdir -p ${p} && chown ${quote(`${owner}:${group}`)} ${p} && chmod ${mode} ${p}` }],
  }
}

export function systemdUnit(name: string, spec: (ctx: StepContext) => UnitSpec, extra: Partial<Step> = {}): Step {
  return plannedStep(name, spec, (s) => unitFact(s.unit), planUnit, extra)
}

export function aptPackages(
  name: string,
  spec: (ctx: StepContext) => { present?: readonly string[]; absent?: readonly string[] },
  extra: Partial<Step> = {},
): Step {
  const names = (ctx: StepContext): string[] => {
    const s = spec(ctx)
    return [...(s.present ?? []), ...(s.absent ?? [])]
  }
  return {
    name,
    ...extra,
    facts: (ctx) => (names(ctx).length ? [packagesFact(names(ctx))] : []),
    async plan(ctx) {
      const s = spec(ctx)
      if (names(ctx).length === 0) return { status: 'ok', message: 'no packages listed' }
      const installed = await ctx.facts.get(packagesFact(names(ctx)))
      return planPackages(installed, s.present ?? [], s.absent ?? [])
    },
  }
}

export interface CommandSpec {
  script: string
  stdin?: string
  /** Skip when this path exists on the host. */
  creates?: string
  /** Skip when this script exits 0 on the host. */
  unless?: string
  summary?: string
}

/** A command guarded by `creates` / `unless`, so a rerun does not repeat it. */
export function command(
  name: string,
  spec: (ctx: StepContext) => CommandSpec | Promise<CommandSpec>,
  extra: Partial<Step> = {},
): Step {
  return {
    name,
    ...extra,
    async plan(ctx) {
      const s = await spec(ctx)
      if (s.creates) {
        const st = await ctx.facts.get(fileFact(s.creates))
        if (st.exists) return { status: 'ok', message: `${s.creates} exists` }
      }
      if (s.unless) {
        const r = await ctx.sh(s.unless)
        if (r.code === 0) return { status: 'ok' }
      }
      return { summary: s.summary ?? name, commands: [{ script: s.script, stdin: s.stdin }] }
    },
  }
}

/** One `systemctl daemon-reload` for the units a role masked or disabled with deferReload. A handler: notify it. */
export function systemdReloadHandler(name = 'Reload systemd units'): Handler {
  return handler({
    name,
    async plan() {
      return { summary: 'run systemctl daemon-reload', commands: [{ script: 'systemctl daemon-reload' }] }
    },
  })
}

/** Reboot and wait for the new boot (a new boot_id), bounded by reboot_timeout. A handler: notify it. */
export function rebootHandler(name = 'Reboot'): Handler {
  return handler({
    name,
    async plan() {
      return { summary: 'reboot', apply: rebootAndWait }
    },
  })
}

/** Reboot the host and wait for it to come back (a new boot_id); returns what to report. */
async function rebootAndWait(ctx: StepContext): Promise<string> {
  const before = (await ctx.must('cat /proc/sys/kernel/random/boot_id')).stdout.trim()
  // Detached, and a moment later, so this command's exit status reaches us before sshd is stopped.
  await ctx.sh(`nohup sh -c 'sleep 0.3; systemctl reboot' >/dev/null 2>&1 &`)
  await ctx.conn.reset()
  const limit = ctx.vars.reboot_timeout * 1000
  const started = Date.now()
  await sleep(300) // polling before the reboot starts only finds the old boot
  let lastError = ''
  while (Date.now() - started < limit) {
    try {
      // Log in only once sshd greets again (overlapping probes notice that within ~0.2 s); then a short attempt.
      await ctx.conn.sshAnswers?.(started + limit)
      const r = await ctx.conn.run('cat /proc/sys/kernel/random/boot_id', {
        connectWithinMs: Math.min(3000, Math.max(500, limit - (Date.now() - started))),
      })
      const now = r.stdout.trim()
      if (r.code === 0 && now && now !== before) {
        ctx.facts.invalidate()
        return `rebooted in ${((Date.now() - started) / 1000).toFixed(1)}s`
      }
    } catch (e) {
      lastError = (e as Error).message
      await ctx.conn.reset()
    }
    await sleep(250)
  }
  throw new ProvisionError(
    'timeout',
    `${ctx.host} did not come back from the reboot within ${ctx.vars.reboot_timeout}s` +
      (lastError ? ` (last error: ${lastError})` : ''),
    {
      place: { host: ctx.host },
      hint: 'check the host console; raise reboot_timeout for slow boots (Pi 3 with an SD card: 60-90 s)',
    },
  )
}

export interface WaitSpec {
  /** Script that exits 0 when the wait is over. */
  until: string
  timeoutSec: number
  intervalMs?: number
  what: string
}

/** Poll until a condition holds on the host, with a timeout that names what was awaited. */
export function waitFor(name: string, spec: (ctx: StepContext) => WaitSpec, extra: Partial<Step> = {}): Step {
  return {
    name,
    ...extra,
    onlyForReal: 'it waits for what the steps before it do',
    async plan(ctx) {
      const s = spec(ctx)
      const r = await pollUntil(ctx, s)
      return { status: 'ok', message: `${s.what} after ${r.toFixed(1)}s` }
    },
  }
}

/** Poll fn until it says done; report progress lines through onProgress; throw a timeout naming what is missing. */
export async function waitUntil<T>(
  ctx: StepContext,
  spec: { timeoutSec: number; intervalMs?: number; what: string },
  fn: () => Promise<{ done: boolean; value: T; waitingFor: string }>,
  onProgress?: (value: T, waitingFor: string) => void,
): Promise<{ value: T; seconds: number }> {
  const started = Date.now()
  for (;;) {
    const r = await fn()
    if (r.done) return { value: r.value, seconds: (Date.now() - started) / 1000 }
    onProgress?.(r.value, r.waitingFor)
    if (Date.now() - started > spec.timeoutSec * 1000)
      throw new ProvisionError(
        'timeout',
        `timed out after ${spec.timeoutSec}s waiting for ${spec.what}: ${r.waitingFor}`,
        { place: { host: ctx.host } },
      )
    await sleep(spec.intervalMs ?? 2000)
  }
}

/** Returns seconds waited; throws a timeout error naming the host and what it waited for. */
export async function pollUntil(ctx: StepContext, s: WaitSpec): Promise<number> {
  const started = Date.now()
  let last = ''
  for (;;) {
    const r = await ctx.sh(s.until)
    if (r.code === 0) return (Date.now() - started) / 1000
    last = (r.stderr || r.stdout).trim().split('\n').pop() ?? ''
    if (Date.now() - started > s.timeoutSec * 1000)
      throw new ProvisionError(
        'timeout',
        `timed out after ${s.timeoutSec}s waiting for ${s.what}${last ? ` (last output: ${last})` : ''}`,
        { place: { host: ctx.host } },
      )
    await sleep(s.intervalMs ?? 1000)
  }
}

export function waitForPort(
  name: string,
  spec: (ctx: StepContext) => { host: string; port: number; timeoutSec: number },
  extra: Partial<Step> = {},
): Step {
  return waitFor(
    name,
    (ctx) => {
      const s = spec(ctx)
      return {
        until: `timeout 2 bash -c ${quote(`exec 3<>/dev/tcp/${s.host}/${s.port}`)}`,
        timeoutSec: s.timeoutSec,
        what: `port ${s.port} on ${s.host}`,
      }
    },
    extra,
  )
}

export function normMode(mode: string): string {
  const m = /^(?:0o)?([0-7]{1,5})$/.exec(mode)
  if (!m) return mode
  return '0' + parseInt(m[1], 8).toString(8).padStart(3, '0')
}

function timestamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')
}

export type { StepResult }
