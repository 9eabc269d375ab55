// Step primitives for files on the host: what a file is (kind, owner, mode, content), a file with exactly this
// content, a line in a file, tokens in a one-line file, a directory; each planned by a pure function.

import { defineFact, type Fact } from './facts.ts'
import { registerSecret } from './mask.ts'
import type { RunResult } from './connection.ts'
import { unifiedDiff } from './diff.ts'
import type { Plan, Step, StepContext } from './role.ts'
import { quote } from './shell.ts'
import { ProvisionError } from './errors.ts'
import { plannedStep, type CommandChange } from './planned-step.ts'

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

export function normMode(mode: string): string {
  const m = /^(?:0o)?([0-7]{1,5})$/.exec(mode)
  if (!m) return mode
  return '0' + parseInt(m[1], 8).toString(8).padStart(3, '0')
}

function timestamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')
}
