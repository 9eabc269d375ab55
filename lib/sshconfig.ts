// The owner's ~/.ssh/config, read as OpenSSH reads it for the keywords that say where and as whom to log in:
// HostName, User, Port, IdentityFile (and IdentitiesOnly), with Host patterns (*, ?, !negation), the first value
// of each keyword winning (IdentityFile: every one, in order), Include (with * and ? in the last part of the
// path) and ~, %-tokens and ${VAR} in IdentityFile. Match blocks are not evaluated: each is named in a warning
// and ignored. The file is the owner's, but it is input like any other: this module only reads and tokenizes it
// (syntax errors at file:line:col); what a host gets from it is checked with the inventory's grammars by
// lib/inventory-sshconfig.ts before any host is contacted; the tokens in lib/sshconfig-tokens.ts.
//
// Written here rather than taken from the npm package ssh-config (MIT, maintained): that parser keeps no line
// numbers (errors must name file:line), has no Include, evaluates Match (running `Match exec` commands through
// a shell by default), and its glob lets "?" match no character, where OpenSSH's matches exactly one.

import { lstatSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { homedir } from 'node:os'
import { basename, dirname, isAbsolute, join, resolve } from 'node:path'
import { errnoCode, ProvisionError } from './errors.ts'

/** One value as the file gives it, with where it is. */
export interface Found<T = string> {
  value: T
  file: string
  line: number
  col: number
}

/** What the config says for one host: the keywords this tool uses, first value of each (IdentityFile: all). */
export interface SshHostConfig {
  hostName?: Found
  user?: Found
  port?: Found
  identityFiles: Found[]
  identitiesOnly?: Found
  /** Keywords that change how ssh connects but that this tool does not follow (ProxyJump...), as they apply. */
  ignored: Found[]
}

interface Arg {
  text: string
  col: number
}

type Entry =
  | { kind: 'option'; keyword: string; name: string; args: Arg[]; file: string; line: number }
  | { kind: 'host'; patterns: string[]; file: string; line: number }
  | { kind: 'match-all'; file: string; line: number }
  | { kind: 'match'; file: string; line: number }
  | { kind: 'include'; files: ParsedFile[]; file: string; line: number }

interface ParsedFile {
  path: string
  entries: Entry[]
}

/** Keywords whose value this tool reads, lowercased, with the number of arguments each takes. */
const READ = new Set(['hostname', 'user', 'port', 'identityfile', 'identitiesonly'])
/** Keywords that would make ssh connect another way; named in a warning when they apply to a host of the run. */
const NOT_FOLLOWED: Readonly<Record<string, string>> = {
  proxyjump: 'ProxyJump',
  proxycommand: 'ProxyCommand',
  identityagent: 'IdentityAgent',
  hostkeyalias: 'HostKeyAlias',
  certificatefile: 'CertificateFile',
  pkcs11provider: 'PKCS11Provider',
  canonicalizehostname: 'CanonicalizeHostname',
}
/** OpenSSH's own limit on nested Include. */
const MAX_INCLUDE_DEPTH = 16

/** A parsed ssh config (the file and everything it includes) and the warnings reading it gave. */
export class SshConfig {
  readonly path: string
  /** "file:line: ..." for each Match block (ignored). */
  readonly warnings: readonly string[]
  readonly #root: ParsedFile

  private constructor(path: string, root: ParsedFile, warnings: string[]) {
    this.path = path
    this.#root = root
    this.warnings = warnings
  }

  /**
   * Read and parse `path` (absolute) and the files it includes. Syntax errors, all at once, as ProvisionErrors
   * (kind inventory) at file:line:col; a file that is writable by others is refused, as ssh refuses it.
   */
  static read(path: string): SshConfig {
    const problems: ProvisionError[] = []
    const warnings: string[] = []
    const root = parseFile(path, dirname(path), 0, problems, warnings, undefined)
    if (problems.length > 0) throw ProvisionError.all(problems, `${path}: ${problems.length} problems`, 'inventory')
    return new SshConfig(path, root!, warnings)
  }

  /** Parse config text (tests); `path` is where errors say it is, and where a relative Include is looked up. */
  static parse(text: string, path: string): SshConfig {
    const problems: ProvisionError[] = []
    const warnings: string[] = []
    const root = parseText(text, path, dirname(path), 0, problems, warnings)
    if (problems.length > 0) throw ProvisionError.all(problems, `${path}: ${problems.length} problems`, 'inventory')
    return new SshConfig(path, root, warnings)
  }

  /** What applies to `host` (the name as typed after `ssh`; matched lowercased, as ssh does). */
  lookup(host: string): SshHostConfig {
    const name = host.toLowerCase()
    const out: SshHostConfig = { identityFiles: [], ignored: [] }
    const seen = new Set<string>()
    const walk = (file: ParsedFile, startActive: boolean): void => {
      let active = startActive
      for (const e of file.entries) {
        if (e.kind === 'host') active = hostMatches(e.patterns, name)
        else if (e.kind === 'match') active = false
        else if (e.kind === 'match-all') active = true
        else if (!active) continue
        else if (e.kind === 'include') for (const f of e.files) walk(f, true)
        else if (e.kind === 'option') {
          const found: Found = { value: e.args[0]?.text ?? '', file: e.file, line: e.line, col: e.args[0]?.col ?? 1 }
          if (e.keyword === 'identityfile') out.identityFiles.push(found)
          else if (seen.has(e.keyword)) continue
          else {
            seen.add(e.keyword)
            if (e.keyword === 'hostname') out.hostName = found
            else if (e.keyword === 'user') out.user = found
            else if (e.keyword === 'port') out.port = found
            else if (e.keyword === 'identitiesonly') out.identitiesOnly = found
            else if (Object.hasOwn(NOT_FOLLOWED, e.keyword) && !/^(none|no)$/i.test(found.value))
              out.ignored.push({ ...found, value: NOT_FOLLOWED[e.keyword] })
          }
        }
      }
    }
    walk(this.#root, true)
    return out
  }
}

/**
 * Does a Host line's pattern list match `host`: no negated pattern matches and at least one plain one does.
 * `*` is any run of characters, `?` exactly one; the rest compares as it is.
 */
export function hostMatches(patterns: readonly string[], host: string): boolean {
  let hit = false
  for (const p of patterns) {
    if (p.startsWith('!')) {
      if (globMatches(p.slice(1), host)) return false
    } else if (globMatches(p, host)) hit = true
  }
  return hit
}

/** OpenSSH's match_pattern: `*` any run (also empty), `?` one character. */
export function globMatches(pattern: string, text: string): boolean {
  // Iterative wildcard match with backtracking on the last `*` (linear enough, no regex built from input).
  let p = 0
  let t = 0
  let star = -1
  let mark = 0
  while (t < text.length) {
    if (p < pattern.length && (pattern[p] === '?' || pattern[p] === text[t])) {
      p++
      t++
    } else if (p < pattern.length && pattern[p] === '*') {
      star = p++
      mark = t
    } else if (star >= 0) {
      p = star + 1
      t = ++mark
    } else return false
  }
  while (p < pattern.length && pattern[p] === '*') p++
  return p === pattern.length
}

// ---------------------------------------------------------------------------------------------
// Reading

function parseFile(
  path: string,
  includeBase: string,
  depth: number,
  problems: ProvisionError[],
  warnings: string[],
  from: { file: string; line: number } | undefined,
): ParsedFile | undefined {
  const at = from ? { file: from.file, line: from.line } : { file: path }
  let text: string
  try {
    const st = statSync(path)
    if (!st.isFile()) {
      problems.push(new ProvisionError('inventory', `ssh config ${path} is not a regular file`, { place: at }))
      return undefined
    }
    const uid = process.getuid?.()
    if ((st.mode & 0o022) !== 0 || (uid !== undefined && st.uid !== 0 && st.uid !== uid)) {
      const mode = (st.mode & 0o777).toString(8).padStart(4, '0')
      problems.push(
        new ProvisionError(
          'inventory',
          `ssh config ${path} has mode ${mode} or another owner: ` +
            'others could change where the run logs in; refusing it as ssh does',
          { place: at, hint: `chmod go-w ${path} (and own it), or set ssh_config_file: none` },
        ),
      )
      return undefined
    }
    text = readFileSync(path, 'utf8')
  } catch (e) {
    const code = errnoCode(e) ?? String(e)
    problems.push(new ProvisionError('inventory', `cannot read ssh config ${path}: ${code}`, { place: at }))
    return undefined
  }
  return parseText(text, path, includeBase, depth, problems, warnings)
}

function parseText(
  text: string,
  path: string,
  includeBase: string,
  depth: number,
  problems: ProvisionError[],
  warnings: string[],
): ParsedFile {
  const entries: Entry[] = []
  const lines = text.split(/\r?\n/)
  for (const [i, raw] of lines.entries()) {
    const line = i + 1
    const bad = (message: string, col = 1, hint?: string) =>
      problems.push(new ProvisionError('inventory', message, { place: { file: path, line, col }, hint }))
    const tok = tokenize(raw)
    if ('error' in tok) {
      bad(tok.error, tok.col)
      continue
    }
    if (!tok.keyword) continue
    const keyword = tok.keyword.text.toLowerCase()
    const name = tok.keyword.text
    const args = tok.args
    const need = (what: string) => {
      if (args.length === 0) {
        bad(`${name}: expected ${what}`, tok.keyword!.col + name.length)
        return false
      }
      return true
    }
    if (keyword === 'host') {
      if (need('one or more host patterns'))
        entries.push({ kind: 'host', patterns: args.map((a) => a.text), file: path, line })
      continue
    }
    if (keyword === 'match') {
      if (args.length === 1 && args[0].text.toLowerCase() === 'all') {
        entries.push({ kind: 'match-all', file: path, line })
        continue
      }
      warnings.push(
        `${path}:${line}: "Match" is not supported: the lines of this Match block are ignored for every host ` +
          '(put what the Pis need under a Host line)',
      )
      entries.push({ kind: 'match', file: path, line })
      continue
    }
    if (keyword === 'include') {
      if (!need('one or more files')) continue
      if (depth + 1 > MAX_INCLUDE_DEPTH) {
        bad(`Include nested deeper than ${MAX_INCLUDE_DEPTH} files`, args[0].col)
        continue
      }
      const files: ParsedFile[] = []
      for (const a of args) {
        const paths = includePaths(a.text, includeBase)
        if ('error' in paths) {
          bad(`Include ${JSON.stringify(a.text)}: ${paths.error}`, a.col)
          continue
        }
        for (const p of paths.files) {
          const parsed = parseFile(p, includeBase, depth + 1, problems, warnings, { file: path, line })
          if (parsed) files.push(parsed)
        }
      }
      entries.push({ kind: 'include', files, file: path, line })
      continue
    }
    if (READ.has(keyword)) {
      if (!need('a value')) continue
      if (args.length > 1) {
        bad(`${name}: expected one value, got ${args.length}`, args[1].col)
        continue
      }
    }
    entries.push({ kind: 'option', keyword, name, args, file: path, line })
  }
  return { path, entries }
}

/** The files an Include names: ~ expanded, relative to `base`, * and ? in the last part only; sorted, as glob(3). */
function includePaths(raw: string, base: string): { files: string[] } | { error: string } {
  let p = raw
  if (p === '~' || p.startsWith('~/')) p = homedir() + p.slice(1)
  else if (p.startsWith('~')) return { error: 'expected ~/ or a path: ~user is not supported here' }
  if (!isAbsolute(p)) p = resolve(base, p)
  const dir = dirname(p)
  const last = basename(p)
  if (/[*?[]/.test(dir)) return { error: 'expected wildcards (* and ?) in the last part of the path only' }
  if (/\[/.test(last)) return { error: 'expected only * and ? as wildcards ([...] is not supported here)' }
  if (!/[*?]/.test(last)) return { files: exists(p) ? [p] : [] } // a missing Include is skipped, as ssh does
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return { files: [] }
  }
  return {
    files: names
      .filter((n) => (!n.startsWith('.') || last.startsWith('.')) && globMatches(last, n))
      .sort()
      .map((n) => join(dir, n))
      .filter((f) => {
        try {
          return statSync(f).isFile()
        } catch {
          return false
        }
      }),
  }
}

function exists(p: string): boolean {
  try {
    lstatSync(p)
    return true
  } catch {
    return false
  }
}

/**
 * One line as OpenSSH splits it: a keyword, then arguments after whitespace or one "=", arguments in "..." or
 * '...' may hold spaces, a backslash escapes a quote, a backslash or a space; an unquoted argument starting with
 * "#" ends the line. Columns are 1-based.
 */
function tokenize(raw: string): { keyword?: Arg; args: Arg[] } | { error: string; col: number } {
  let i = 0
  const n = raw.length
  const space = (c: string | undefined) => c === ' ' || c === '\t'
  while (i < n && space(raw[i])) i++
  if (i >= n || raw[i] === '#') return { args: [] }
  const kStart = i
  while (i < n && !space(raw[i]) && raw[i] !== '=') i++
  const keyword: Arg = { text: raw.slice(kStart, i), col: kStart + 1 }
  while (i < n && space(raw[i])) i++
  if (raw[i] === '=') {
    i++
    while (i < n && space(raw[i])) i++
  }
  const args: Arg[] = []
  while (i < n) {
    while (i < n && space(raw[i])) i++
    if (i >= n) break
    if (raw[i] === '#') break
    const start = i
    let text = ''
    let quote: string | undefined
    while (i < n) {
      const c = raw[i]
      if (quote) {
        if (c === '\\' && (raw[i + 1] === quote || raw[i + 1] === '\\')) {
          text += raw[i + 1]
          i += 2
        } else if (c === quote) {
          quote = undefined
          i++
        } else {
          text += c
          i++
        }
      } else if (space(c)) break
      else if (c === '"' || c === "'") {
        quote = c
        i++
      } else if (c === '\\' && (space(raw[i + 1]) || raw[i + 1] === '"' || raw[i + 1] === "'" || raw[i + 1] === '\\')) {
        text += raw[i + 1]
        i += 2
      } else {
        text += c
        i++
      }
    }
    if (quote) return { error: `unterminated ${quote === '"' ? 'double' : 'single'} quote`, col: start + 1 }
    args.push({ text, col: start + 1 })
  }
  return { keyword, args }
}
