// Host patterns for --limit and plays, with Ansible's meaning: "a,b" or "a:b" union, "&g" intersect,
// "!x" exclude, globs, "~regex", group names, "all", and "@file" (one pattern per line, e.g. a retry file).

import { readFileSync } from 'node:fs'
import { errnoCode, ProvisionError } from './errors.ts'
import type { Inventory } from './inventory.ts'

export function selectHosts(inv: Inventory, pattern: string, cwd = process.cwd()): string[] {
  const terms = splitPattern(pattern, cwd)
  if (terms.length === 0) throw new ProvisionError('usage', `empty host pattern "${pattern}"`)
  const order = [...inv.hosts.keys()]
  let picked = new Set<string>()
  const intersect: Set<string>[] = []
  const exclude = new Set<string>()
  let anyPositive = false
  for (const term of terms) {
    if (term.startsWith('!')) for (const h of matchTerm(inv, term.slice(1), pattern)) exclude.add(h)
    else if (term.startsWith('&')) intersect.push(new Set(matchTerm(inv, term.slice(1), pattern)))
    else {
      anyPositive = true
      for (const h of matchTerm(inv, term, pattern)) picked.add(h)
    }
  }
  if (!anyPositive) picked = new Set(order) // "!x" alone means everything but x
  for (const set of intersect) picked = new Set([...picked].filter((h) => set.has(h)))
  return order.filter((h) => picked.has(h) && !exclude.has(h))
}

function splitPattern(pattern: string, cwd: string): string[] {
  const out: string[] = []
  // Commas always separate; colons separate too unless the term looks like an IPv6 address or a regex.
  for (const part of pattern.split(',')) {
    const p = part.trim()
    if (!p) continue
    if (p.startsWith('@')) {
      out.push(...readPatternFile(p.slice(1), cwd))
      continue
    }
    if (p.startsWith('~') || /^[0-9a-f]*:[0-9a-f:]*$/i.test(p)) out.push(p)
    else
      out.push(
        ...p
          .split(':')
          .map((s) => s.trim())
          .filter(Boolean),
      )
  }
  return out
}

function readPatternFile(path: string, cwd: string): string[] {
  let text: string
  try {
    text = readFileSync(path.startsWith('/') ? path : `${cwd}/${path}`, 'utf8')
  } catch (e) {
    throw new ProvisionError('usage', `--limit @${path}: cannot read the file (${errnoCode(e) ?? String(e)})`)
  }
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
  if (lines.length === 0)
    throw new ProvisionError('usage', `--limit @${path}: the file lists no hosts`, {
      hint: 'a retry file is empty when the last run had no failed or unreachable host',
    })
  return lines
}

function matchTerm(inv: Inventory, term: string, whole: string): string[] {
  if (term === 'all' || term === '*') return [...inv.hosts.keys()]
  const group = inv.groups.get(term)
  if (group) return group
  if (inv.hosts.has(term)) return [term]
  let re: RegExp
  if (term.startsWith('~')) {
    try {
      // Anchored at the start and not at the end, as Ansible's re.match: ~pi3 is pi3*, ~worker is nothing.
      re = new RegExp(`^(?:${term.slice(1)})`)
    } catch {
      throw new ProvisionError('usage', `bad regular expression in host pattern: ${term}`)
    }
  } else if (/[*?[]/.test(term)) {
    try {
      re = globToRegExp(term)
    } catch {
      throw new ProvisionError('usage', `bad glob in host pattern: ${term}`, { hint: 'close every [ with ]' })
    }
  } else {
    throw new ProvisionError(
      'usage',
      `host pattern "${whole}": "${term}" is neither a host nor a group of the inventory`,
      {
        hint: `hosts: ${[...inv.hosts.keys()].join(', ')}; groups: ${[...inv.groups.keys()].join(', ')}`,
      },
    )
  }
  const names = [...inv.hosts.keys()].filter((h) => re.test(h))
  // A glob may match group names too; their hosts count.
  for (const [g, hs] of inv.groups) if (re.test(g)) for (const h of hs) if (!names.includes(h)) names.push(h)
  return names
}

/** A shell glob as fnmatch reads it: *, ?, [chars], [!chars] (negated), everything else literal. */
function globToRegExp(glob: string): RegExp {
  let src = ''
  let inClass = false
  for (let i = 0; i < glob.length; i++) {
    const ch = glob[i]
    if (inClass) {
      if (ch === ']') inClass = false
      src += ch === '\\' ? '\\\\' : ch
    } else if (ch === '*') src += '.*'
    else if (ch === '?') src += '.'
    else if (ch === '[') {
      inClass = true
      if (glob[i + 1] === '!') {
        src += '[^'
        i++
      } else src += '['
    } else src += ch.replace(/[.+^${}()|\\\]]/g, '\\$&')
  }
  return new RegExp(`^${src}$`)
}
