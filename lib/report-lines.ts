// The lines an event is shown as, as Ansible shows them (ok:/changed:/FAILED:, PLAY, the recap, -v commands and
// -vv output), masked and then painted by the run's palette.

import { mask } from './mask.ts'
import { PLAIN, type Paint, type Palette } from './palette.ts'
import type { StepStatus } from './role.ts'
import type { HostCounts, ReporterOptions, RunEvent, RunStats } from './run-events.ts'

const STATUS_WORD: Record<StepStatus, string> = { ok: 'ok', changed: 'changed', failed: 'FAILED', skipped: 'skipping' }

export function formatStepLine(e: Extract<RunEvent, { kind: 'step-end' }>): string {
  const label = `${STATUS_WORD[e.status]}: [${e.host}] ${e.role} | ${e.handler ? 'handler: ' : ''}${e.step}`
  return e.message ? `${label} (${e.message})` : label
}

/** The recap's cost lines (-v): per host its round trips and cluster calls, then where the time went. */
export function formatStats(s: RunStats): string[] {
  const calls = (c: { roundTrips: number; kubectl: number; flux: number }) =>
    `${c.roundTrips} round trip${c.roundTrips === 1 ? '' : 's'}, ${c.kubectl} kubectl, ${c.flux} flux`
  const lines = ['cost on the hosts:']
  for (const [host, c] of Object.entries(s.hosts)) {
    const roles = Object.entries(c.roles)
      .filter(([, r]) => r.kubectl || r.flux)
      .map(([role, r]) => `${role} ${r.kubectl + r.flux}`)
    lines.push(
      `  ${host}: ${calls(c)}` +
        `${roles.length ? ` (cluster calls by role: ${roles.join(', ')})` : ''}; connected in ${c.connectMs} ms`,
    )
  }
  const m = s.marks
  const sec = (ms: number | undefined) => (ms === undefined ? '?' : (ms / 1000).toFixed(2))
  const span = (a: string, b: string) => (m[a] !== undefined && m[b] !== undefined ? sec(m[b] - m[a]) : '?')
  const w = s.wall
  lines.push(
    `time: start-up ${sec(m.run)}s (node and zx ${sec(m.playbook)}, modules ${span('playbook', 'main')}, ` +
      `inventory ${span('main', 'inventory')}, secrets ${span('inventory', 'secrets')}); ` +
      `run ${span('run', 'recap')}s (connecting ${sec(w.connect)}, cluster calls ${sec(w.cluster)}, ` +
      `facts ${sec(w.facts)}, commands ${sec(w.commands)}, controller ${sec(w.controller)})`,
  )
  return lines
}

/**
 * The recap. Coloured as Ansible's: a host's name by its worst outcome (red failed or unreachable, yellow changed,
 * green otherwise), each count that is not 0 in its status's colour; the padding is the plain text's.
 */
export function formatRecap(e: Extract<RunEvent, { kind: 'recap' }>, p: Palette = PLAIN): string[] {
  const names = Object.keys(e.hosts)
  const width = Math.max(26, ...names.map((n) => n.length + 1))
  const lines = ['', `PLAY RECAP ${'*'.repeat(60)}`]
  const paint: Record<keyof HostCounts, Paint> = {
    ok: p.ok,
    changed: p.changed,
    unreachable: p.failed,
    failed: p.failed,
    skipped: p.skipped,
  }
  for (const n of names) {
    const c = e.hosts[n]
    const cell = (k: keyof HostCounts) => {
      const text = `${k}=${c[k]}`
      const pad = ' '.repeat(
        Math.max(0, (k === 'unreachable' ? 17 : k === 'changed' ? 12 : k === 'failed' ? 11 : 7) - text.length),
      )
      return (c[k] ? paint[k](text) : text) + pad
    }
    const host = c.failed || c.unreachable ? p.failed : c.changed ? p.changed : p.ok
    lines.push(
      (
        `${host(n)}${' '.repeat(width - n.length)}: ${cell('ok')} ${cell('changed')} ` +
        `${cell('unreachable')} ${cell('failed')} ${cell('skipped')}`
      ).trimEnd(),
    )
  }
  lines.push('', `finished in ${e.seconds.toFixed(2)}s, exit ${e.exitCode}`)
  if (e.retryFile) lines.push(`retry the failed and unreachable hosts with: --limit @${e.retryFile}`)
  if (e.rerun)
    lines.push(
      e.exitCode === 130
        ? `to finish the job, run it again: ${e.rerun}`
        : `once the failed and unreachable hosts are fixed, run it again: ${e.rerun}`,
    )
  return lines
}

/** An event's lines, masked, then painted (so no escape splits a secret; the recap holds only names and counts). */
export function render(e: RunEvent, opts: ReporterOptions): string[] {
  const p = opts.palette ?? PLAIN
  const lines = renderPlain(e, opts).map(mask)
  if (!p.on || e.kind === 'recap') return lines
  switch (e.kind) {
    case 'step-end': {
      const status = { ok: p.ok, changed: p.changed, failed: p.failed, skipped: p.skipped }[e.status]
      return lines.map((l, i) => (i === 0 ? status(l) : paintDiffLine(l, p)))
    }
    case 'unreachable':
    case 'error':
      return lines.map((l) => p.failed(l))
    case 'warning':
      return lines.map((l) => p.warning(l))
    case 'play-start':
      return lines.map((l) => (l.startsWith('skipping:') ? p.skipped(l) : l))
    default:
      return lines
  }
}

function paintDiffLine(l: string, p: Palette): string {
  if (l.startsWith('+++') || l.startsWith('---')) return l
  if (l.startsWith('+')) return p.diffAdd(l)
  if (l.startsWith('-')) return p.diffDel(l)
  if (l.startsWith('@@')) return p.diffHunk(l)
  return l
}

/** An event's lines before masking: plain, but for the recap, which formatRecap paints with the run's palette. */
function renderPlain(e: RunEvent, opts: ReporterOptions): string[] {
  switch (e.kind) {
    case 'run-start':
      return [
        `${e.check ? 'CHECK MODE: nothing will be changed. ' : ''}` +
          `${e.playbook} on ${e.hosts.length} host(s) from ${e.inventory}`,
      ]
    case 'play-start':
      return [
        '',
        `PLAY [${e.play}] ${'*'.repeat(Math.max(3, 60 - e.play.length))}`,
        ...(e.hosts.length === 0 ? ['skipping: no hosts matched'] : []),
      ]
    case 'step-start':
      return []
    case 'step-end': {
      if (e.status === 'ok' && opts.verbosity < 1 && !e.message?.startsWith('rebooted'))
        return [formatStepLine({ ...e, message: undefined })]
      const out = [formatStepLine(e)]
      if (opts.showDiff && e.diff) out.push(...e.diff.replace(/\n$/, '').split('\n'))
      return out
    }
    case 'unreachable':
      return [`UNREACHABLE: [${e.host}] ${e.message}`]
    case 'command': {
      if (opts.verbosity < 1) return []
      const out = [
        `  [${e.host}] $ ${e.script.split('\n')[0]}${e.script.includes('\n') ? ' …' : ''}` +
          `  -> exit ${e.code} (${e.ms} ms)`,
      ]
      if (opts.verbosity >= 2) {
        if (e.stdout.trim())
          out.push(
            ...e.stdout
              .replace(/\n$/, '')
              .split('\n')
              .map((l) => `    | ${l}`),
          )
        if (e.stderr.trim())
          out.push(
            ...e.stderr
              .replace(/\n$/, '')
              .split('\n')
              .map((l) => `    ! ${l}`),
          )
      }
      return out
    }
    case 'facts':
      return opts.verbosity < 1
        ? []
        : [
            `  [${e.host}] read ${e.keys.length} fact${e.keys.length === 1 ? '' : 's'} in one round trip: ` +
              `${e.keys.join(', ')}  -> exit ${e.code} (${e.ms} ms)`,
          ]
    case 'warning':
      return [`WARNING: ${e.host ? `[${e.host}] ` : ''}${e.message}`]
    case 'info': {
      // Progress and tables from a step: the first line names the host, the rest (e.g. table rows) stay as written.
      const [first, ...rest] = e.message.split('\n')
      return [`[${e.host}] ${first}`, ...rest]
    }
    case 'error':
      return [`ERROR: ${e.message}`]
    case 'interrupted':
      return [`interrupted: ${e.message}`]
    case 'recap': // painted by formatRecap itself (names and counts only: masking after it splits no secret)
      return [...formatRecap(e, opts.palette ?? PLAIN), ...(opts.verbosity >= 1 && e.stats ? formatStats(e.stats) : [])]
  }
}
