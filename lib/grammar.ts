// Value grammars: one small rule per kind of value the inventory, `-e` and the command line may carry.
// Values later reach command lines and files on the hosts (quoted, but a value starting with "-" can still be
// read as an option of kubectl or apt, and a space in a cmdline.txt flag makes the file differ on every run),
// so each rule says exactly what it accepts and, when a value is refused, what was expected.
//
// Each rule is a predicate (isX) and a Grammar: a valibot schema whose issue messages read "expected ...",
// with a noun for the value ("node label") so a caller can say `node label "-lfoo": expected key=value, ...`.

import { isIPv4, isIPv6 } from 'node:net'
import * as v from 'valibot'

export interface Grammar<T = string> {
  /** What one value is, for messages: `node label "-lfoo": expected ...`. */
  readonly what: string
  /** Issue messages are "expected ..." texts. */
  readonly schema: v.GenericSchema<unknown, T>
}

export type Verdict<T> = { ok: true; value: T } | { ok: false; expected: string }

/** Run a grammar: the parsed value, or the first "expected ..." text. */
export function verdict<T>(g: Grammar<T>, input: unknown): Verdict<T> {
  const r = v.safeParse(g.schema, input, { abortPipeEarly: true })
  return r.success ? { ok: true, value: r.output } : { ok: false, expected: r.issues[0].message }
}

/** `node label "-lfoo": expected key=value, ...`, or undefined when the value is good. */
export function complaint(g: Grammar<unknown>, input: unknown): string | undefined {
  const r = verdict(g, input)
  return r.ok
    ? undefined
    : `${g.what} ${typeof input === 'string' ? JSON.stringify(input) : shown(input)}: ${r.expected}`
}

/** A value as messages show it: strings quoted, lists and maps by kind. */
export function shown(x: unknown): string {
  if (x === null || x === undefined) return 'nothing'
  if (typeof x === 'string') return JSON.stringify(x)
  if (Array.isArray(x)) return 'a list'
  if (typeof x === 'object') return 'a map'
  return String(x)
}

/**
 * A grammar of your own (a role's variable): a noun for messages and a valibot schema whose issue messages read
 * "expected ...". The rules below are made with it.
 */
export function defineGrammar<T>(what: string, schema: v.GenericSchema<unknown, T>): Grammar<T> {
  return { what, schema }
}

const grammar = defineGrammar

/** A string whose every check is one predicate with one message. */
const text = (what: string, ok: (s: string) => boolean, expected: string): Grammar =>
  grammar(what, v.pipe(v.string(`expected a string: ${expected.replace(/^expected /, '')}`), v.check(ok, expected)))

// ---------------------------------------------------------------- Kubernetes names (RFC 1123, labels, taints)

const DNS_LABEL = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/
const LABEL_NAME = /^[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$/

/** RFC 1123 label: lowercase letters, digits and "-", 1-63, starting and ending with a letter or digit. */
export const isDnsLabel = (s: string): boolean => s.length >= 1 && s.length <= 63 && DNS_LABEL.test(s)

/** RFC 1123 subdomain (a Kubernetes node name): RFC 1123 labels joined by ".", at most 253 in all. */
export const isDnsSubdomain = (s: string): boolean => s.length >= 1 && s.length <= 253 && s.split('.').every(isDnsLabel)

/** The name part of a Kubernetes label key, and a non-empty label value. */
export const isLabelName = (s: string): boolean => s.length >= 1 && s.length <= 63 && LABEL_NAME.test(s)

/** Kubernetes label key: [prefix/]name, prefix an RFC 1123 subdomain. */
export function isLabelKey(s: string): boolean {
  const parts = s.split('/')
  if (parts.length === 1) return isLabelName(s)
  return parts.length === 2 && isDnsSubdomain(parts[0]) && isLabelName(parts[1])
}

/** Kubernetes label value: empty, or a label name. */
export const isLabelValue = (s: string): boolean => s === '' || isLabelName(s)

/** "key=value" (value may be empty). */
export function isNodeLabel(s: string): boolean {
  const eq = s.indexOf('=')
  return eq > 0 && isLabelKey(s.slice(0, eq)) && isLabelValue(s.slice(eq + 1))
}

export const TAINT_EFFECTS = ['NoSchedule', 'PreferNoSchedule', 'NoExecute'] as const

/** "key[=value]:Effect". */
export function isTaint(s: string): boolean {
  const colon = s.lastIndexOf(':')
  if (colon <= 0 || !(TAINT_EFFECTS as readonly string[]).includes(s.slice(colon + 1))) return false
  const kv = s.slice(0, colon)
  const eq = kv.indexOf('=')
  return eq < 0 ? isLabelKey(kv) : eq > 0 && isLabelKey(kv.slice(0, eq)) && isLabelValue(kv.slice(eq + 1))
}

const SUBDOMAIN_TEXT =
  'lowercase letters, digits, "-" and ".", ' +
  'each dot-separated part 1-63 characters starting and ending with a letter or digit, at most 253 in all'
const LABEL_KEY_TEXT =
  'Kubernetes label grammar ([prefix/]name: name 1-63 letters, digits, "-", "_" or ".", ' +
  'starting and ending with a letter or digit; prefix a DNS subdomain)'
const LABEL_VALUE_TEXT = 'value empty or 1-63 of the same characters'

export const DnsLabel = text(
  'name',
  isDnsLabel,
  'expected an RFC 1123 label (1-63 lowercase letters, digits and "-", starting and ending with a letter or digit)',
)
export const DnsSubdomain = text('name', isDnsSubdomain, `expected an RFC 1123 DNS name (${SUBDOMAIN_TEXT})`)
export const NodeName = text(
  'node name',
  isDnsSubdomain,
  `expected a Kubernetes node name, an RFC 1123 subdomain (${SUBDOMAIN_TEXT})`,
)
export const LabelKey = text('label key', isLabelKey, `expected a key in ${LABEL_KEY_TEXT}`)
export const LabelValue = text(
  'label value',
  isLabelValue,
  'expected a label value: empty, or 1-63 letters, digits, "-", "_" or "." starting and ending with a letter or digit',
)
export const NodeLabel = text(
  'node label',
  isNodeLabel,
  `expected key=value, key in ${LABEL_KEY_TEXT}, ${LABEL_VALUE_TEXT}`,
)
export const Taint = text(
  'node taint',
  isTaint,
  `expected key[=value]:Effect with Effect one of ${TAINT_EFFECTS.join(', ')}, ` +
    `key in ${LABEL_KEY_TEXT}, ${LABEL_VALUE_TEXT}`,
)

/** A workload in `placement`: name, namespace/name or namespace/*. */
export function isWorkload(s: string): boolean {
  const parts = s.split('/')
  if (parts.length === 1) return isDnsSubdomain(s)
  return parts.length === 2 && isDnsLabel(parts[0]) && (parts[1] === '*' || isDnsSubdomain(parts[1]))
}

export const Workload = text(
  'workload',
  isWorkload,
  'expected name, namespace/name or namespace/* (namespace an RFC 1123 label, name an RFC 1123 subdomain)',
)

// ---------------------------------------------------------------- hosts and addresses

const HOST_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/

/** A DNS host name as SSH connects to it (letters of either case). */
export const isHostName = (s: string): boolean =>
  s.length >= 1 && s.length <= 253 && s.split('.').every((l) => HOST_NAME.test(l)) && !/^[\d.]+$/.test(s)

/** IPv4, IPv6 (no zone) or a DNS host name. */
export const isAddress = (s: string): boolean => isIPv4(s) || (isIPv6(s) && !s.includes('%')) || isHostName(s)

export const Address = text('address', isAddress, 'expected an IPv4/IPv6 address or host name')

/** POSIX login name: portable filename characters, not starting with "-", not only digits, at most 32. */
export const isUserName = (s: string): boolean =>
  s.length >= 1 &&
  s.length <= 32 &&
  /^[A-Za-z0-9._][A-Za-z0-9._-]*$/.test(s) &&
  !/^\d+$/.test(s) &&
  s !== '.' &&
  s !== '..'

export const UserName = text(
  'user',
  isUserName,
  'expected a login name (letters, digits, ".", "_" and "-", not starting with "-", not only digits, at most 32)',
)

// ---------------------------------------------------------------- numbers

/** Longest wait a timer can take: setTimeout holds at most 2^31-1 ms. */
export const MAX_SECONDS = Math.floor((2 ** 31 - 1) / 1000)

const whole = (what: string, min: number, max: number, expected: string): Grammar<number> =>
  grammar(what, v.pipe(v.number(expected), v.integer(expected), v.minValue(min, expected), v.maxValue(max, expected)))

export const isPort = (n: number): boolean => Number.isInteger(n) && n >= 1 && n <= 65535
export const Port = whole('port', 1, 65535, 'expected a port number 1-65535')
/** A timeout in whole seconds: at least 1, at most what a timer can wait. */
export const Duration = whole('duration', 1, MAX_SECONDS, `expected a number of seconds, 1 to ${MAX_SECONDS}`)
/** Seconds where 0 means "never" / "always" (apt_cache_valid_time). */
export const DurationOrZero = whole('duration', 0, MAX_SECONDS, `expected a number of seconds, 0 to ${MAX_SECONDS}`)

const AGE_UNITS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3600, d: 86400 }
/** An age like 36h, 2d, 90m, 45s, or whole seconds: its number of seconds, or undefined. */
export function ageSeconds(s: string): number | undefined {
  const m = /^(\d{1,9})([smhd]?)$/.exec(s)
  if (!m) return undefined
  const n = Number(m[1]) * AGE_UNITS[m[2] || 's']
  return n >= 1 && n <= 100 * 365 * 86400 ? n : undefined
}
const AGE_TEXT = 'expected an age like 36h, 2d, 90m or a number of seconds (at least 1 s, at most 100 years)'
/** How old something may be (backup_max_age): "36h", "2d", "90m", "45s" or seconds; the value is in seconds. */
export const Age: Grammar<number> = grammar(
  'age',
  v.pipe(
    v.string(AGE_TEXT),
    v.check((s) => ageSeconds(s) !== undefined, AGE_TEXT),
    v.transform((s) => ageSeconds(s)!),
  ),
)

// ---------------------------------------------------------------- versions, digests, modes

export const isK3sVersion = (s: string): boolean => /^v\d{1,4}\.\d{1,4}\.\d{1,4}(?:-rc\d{1,4})?\+k3s\d{1,4}$/.test(s)
export const isFluxVersion = (s: string): boolean => /^v?\d{1,4}\.\d{1,4}\.\d{1,4}(?:-rc\.\d{1,4})?$/.test(s)
export const isSha256 = (s: string): boolean => /^[0-9a-fA-F]{64}$/.test(s)
export const isFileMode = (s: string): boolean => /^0?[0-7]{3}$/.test(s)

export const K3sVersion = text(
  'k3s version',
  isK3sVersion,
  'expected a k3s version like v1.34.3+k3s1 (or v1.34.3-rc1+k3s1)',
)
export const FluxVersion = text('flux version', isFluxVersion, 'expected a flux version like 2.7.3')
export const Sha256 = text('sha256', isSha256, 'expected a sha256: 64 hex digits')
export const FileMode = text('file mode', isFileMode, 'expected an octal file mode like 0600')

// ---------------------------------------------------------------- Debian, the kernel command line, k3s

const DEB_NAME = /^[a-z0-9][a-z0-9+.-]+$/
const DEB_VERSION = /^(?:\d+:)?\d[A-Za-z0-9.+~-]*$/

/** Debian package name, optionally =version (apt's pinning). */
export function isDebPackage(s: string): boolean {
  if (s.length > 512) return false
  const eq = s.indexOf('=')
  return eq < 0 ? DEB_NAME.test(s) : DEB_NAME.test(s.slice(0, eq)) && DEB_VERSION.test(s.slice(eq + 1))
}

export const DebPackage = text(
  'package',
  isDebPackage,
  'expected a Debian package name (2 or more of a-z, 0-9, "+", "-", ".", starting with a letter or digit), ' +
    'optionally =version (a digit first, then letters, digits and ".+~-:")',
)

/** One kernel command-line flag: printable ASCII, no space, no quote, not starting with "-". */
export const isCmdlineFlag = (s: string): boolean => /^[\x21\x23-\x26\x28-\x7e]+$/.test(s) && !s.startsWith('-')

export const CmdlineFlag = text(
  'kernel flag',
  isCmdlineFlag,
  'expected one kernel flag like cgroup_enable=memory ' +
    '(printable, no spaces or quotes, not starting with "-"; one flag per list item)',
)

/** What k3s --disable knows. */
export const K3S_COMPONENTS = [
  'coredns',
  'servicelb',
  'traefik',
  'local-storage',
  'metrics-server',
  'runtimes',
] as const
export const isK3sComponent = (s: string): boolean => (K3S_COMPONENTS as readonly string[]).includes(s)
export const K3sComponent = text('k3s component', isK3sComponent, `expected one of ${K3S_COMPONENTS.join(', ')}`)

/** config.yaml keys the roles write themselves, and the inventory variable to use instead. */
export const K3S_OWNED_FLAGS: Readonly<Record<string, string>> = {
  token: 'k3s_token_ref',
  'token-file': 'k3s_token_ref',
  'agent-token': 'k3s_token_ref',
  'agent-token-file': 'k3s_token_ref',
  'node-name': 'hostname',
  'node-label': 'node_labels',
  'node-taint': 'node_taints',
  'tls-san': 'k3s_tls_san',
  disable: 'k3s_disable',
  'write-kubeconfig-mode': 'k3s_kubeconfig_mode',
  server: 'the inventory (agents join the first host of group "server")',
  'data-dir': 'nothing: the roles, backups and restore rely on the default /var/lib/rancher/k3s',
}

const K3S_FLAG = /^--([a-z0-9][a-z0-9-]*)(?:=([^\x00-\x1f\x7f]*))?$/

/** The flag name of "--flag" or "--flag=value", or undefined when it is not one. */
export function k3sFlagName(s: string): string | undefined {
  return s.length <= 4096 ? K3S_FLAG.exec(s)?.[1] : undefined
}

export const isK3sFlag = (s: string): boolean => {
  const name = k3sFlagName(s)
  return name !== undefined && !Object.hasOwn(K3S_OWNED_FLAGS, name)
}

export const K3sFlag = grammar(
  'k3s flag',
  v.pipe(
    v.string('expected a string: --flag or --flag=value'),
    v.check(
      (s: string) => k3sFlagName(s) !== undefined,
      (issue) =>
        typeof issue.input === 'string' && /^[a-z0-9][a-z0-9-]*(=|$)/.test(issue.input)
          ? `expected --flag or --flag=value: write it as "--${issue.input}"`
          : 'expected --flag or --flag=value (flag: lowercase letters, digits and "-"; value: no control characters)',
    ),
    v.check(
      (s: string) => isK3sFlag(s),
      (issue) => {
        const name = typeof issue.input === 'string' ? (k3sFlagName(issue.input) ?? '') : ''
        const instead = K3S_OWNED_FLAGS[name] ?? ''
        return /^[a-z0-9_]+$/.test(instead)
          ? 'expected a flag the roles do not write themselves: ' +
              `"${name}" comes from the inventory variable ${instead}; set that instead`
          : `expected a flag the roles do not write themselves: "${name}" is set from ${instead}`
      },
    ),
  ),
)

// ---------------------------------------------------------------- GitHub and git

const GITHUB_OWNER = /^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$/
export const isGitHubOwner = (s: string): boolean => GITHUB_OWNER.test(s)
export const isGitHubRepo = (s: string): boolean =>
  s.length <= 100 &&
  /^[A-Za-z0-9._][A-Za-z0-9._-]*$/.test(s) &&
  s !== '.' &&
  s !== '..' &&
  !s.toLowerCase().endsWith('.git')

/** A branch name by git's ref rules (check-ref-format), never starting with "-". */
export function isGitBranch(s: string): boolean {
  if (s.length === 0 || s.length > 255 || s === '@' || s.startsWith('-')) return false
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(s) || s.includes('..') || s.includes('@{') || s.includes('//')) return false
  if (s.startsWith('/') || s.endsWith('/') || s.endsWith('.')) return false
  return s.split('/').every((c) => !c.startsWith('.') && !c.endsWith('.lock'))
}

/** A directory in the GitOps repository: segments of letters, digits, ".", "_", "-"; no ".."; "./" allowed in front. */
export function isRepoPath(s: string): boolean {
  if (s.length > 1024) return false
  const body = s.replace(/^\.\//, '').replace(/^\//, '').replace(/\/$/, '')
  if (body === '' || body.startsWith('-')) return false
  return body.split('/').every((seg) => /^[A-Za-z0-9._-]+$/.test(seg) && seg !== '.' && seg !== '..')
}

export const GitHubOwner = text(
  'GitHub owner',
  isGitHubOwner,
  'expected a GitHub user or organisation (1-39 letters, digits and single "-", not at either end)',
)
export const GitHubRepo = text(
  'GitHub repository',
  isGitHubRepo,
  'expected a GitHub repository name ' +
    '(letters, digits, ".", "_", "-", not starting with "-", without ".git", at most 100)',
)
export const GitBranch = text(
  'branch',
  isGitBranch,
  'expected a git branch name (no spaces, "..", "~^:?*[\\", "@{" or "//"; not starting with "-" or "/"; ' +
    'no part starting with "." or ending with ".lock")',
)
export const RepoPath = text(
  'repository path',
  isRepoPath,
  'expected a directory of the repository like clusters/pi-k3s ' +
    '(letters, digits, ".", "_", "-" between "/"; no ".." or leading "-")',
)

// ---------------------------------------------------------------- URLs, paths, names

/** An http(s) URL with a host that `new URL()` parses; no whitespace or control characters. */
export function isHttpUrl(s: string): boolean {
  if (s.length > 4096 || /[\x00-\x20\x7f]/.test(s)) return false
  try {
    const u = new URL(s)
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== ''
  } catch {
    return false
  }
}

/** flux_url: {version} and {arch} are filled in before the URL is parsed; no other placeholder. */
export function isFluxUrl(s: string): boolean {
  const filled = s.replaceAll('{version}', '0.0.0').replaceAll('{arch}', 'arm64')
  return !/[{}]/.test(filled) && isHttpUrl(filled)
}

export const HttpUrl = text('URL', isHttpUrl, 'expected an http(s) URL')
export const FluxUrl = text('URL', isFluxUrl, 'expected an http(s) URL (placeholders: only {version} and {arch})')

/** A path: non-empty, no NUL or line break. */
export const isPath = (s: string): boolean => s.length >= 1 && s.length <= 4096 && !/[\0\n\r]/.test(s)
export const FilePath = text('path', isPath, 'expected a path (no NUL or line break)')

/**
 * k3s_backup_dir on a NAS over SSH: user@host:/absolute/path, as scp writes it. A value with a ":" before its first
 * "/" is taken as one (as scp does), so a typo there is refused rather than read as a local directory.
 */
export const isRemoteBackupDir = (s: string): boolean => /^[^/]*:/.test(s)

export interface RemoteBackupDir {
  user: string
  /** Address or host name (an IPv6 address without its brackets). */
  host: string
  path: string
}

// The path part: absolute, portable characters only (it is quoted on the NAS, but an owner's NAS path never needs
// a shell's special characters, and refusing them keeps the value plain in every message).
const REMOTE_PATH = /^\/[A-Za-z0-9._+,=@%~/-]*$/

/** user@host:/path parsed, or undefined when it is not one (no options: nothing may start with "-"). */
export function parseRemoteBackupDir(s: string): RemoteBackupDir | undefined {
  const m = /^([^@:/\s]+)@(\[[0-9A-Fa-f:.]+\]|[^@:/[\]\s]+):(.*)$/.exec(s)
  if (!m) return undefined
  const [, user, rawHost, path] = m
  const host = rawHost.startsWith('[') ? rawHost.slice(1, -1) : rawHost
  if (!isUserName(user) || user.startsWith('-')) return undefined
  if (rawHost.startsWith('[') ? !isIPv6(host) || host.includes('%') : !isAddress(host) || isIPv6(host)) return undefined
  if (s.length > 4096 || !REMOTE_PATH.test(path) || path.split('/').includes('..')) return undefined
  return { user, host, path: path.length > 1 ? path.replace(/\/+$/, '') : path }
}

/** k3s_backup_dir: a directory the controller sees, or user@host:/path on a NAS reached over SSH. */
export const isBackupDir = (s: string): boolean =>
  isRemoteBackupDir(s) ? parseRemoteBackupDir(s) !== undefined : isPath(s)
export const BackupDir = text(
  'backup directory',
  isBackupDir,
  'expected a local directory or user@host:/absolute/path (a login name, an address or host name, ' +
    'an absolute path of letters, digits and "._+,=@%~/-"; no spaces, no options)',
)

/** kubeconfig context name: letters, digits, "._-@:/", not starting with "-". */
export const isContextName = (s: string): boolean =>
  s.length >= 1 && s.length <= 253 && /^[A-Za-z0-9_][A-Za-z0-9._@:/-]*$/.test(s)
export const ContextName = text(
  'context',
  isContextName,
  'expected a kubeconfig context name (letters, digits, ".", "_", "-", "@", ":", "/"; not starting with "-" or ".")',
)

/**
 * k3s_restore: latest (the newest usable backup, within backup_max_age), latest-anyway (the newest usable one
 * however old), none (an empty datastore, on purpose), or a backup folder name (no "/", not starting with "." or "-").
 */
export const isRestoreName = (s: string): boolean =>
  s === 'latest' ||
  s === 'latest-anyway' ||
  s === 'none' ||
  (s.length >= 1 && s.length <= 255 && !/[/\\\x00-\x1f\x7f]/.test(s) && !/^[.-]/.test(s))
export const RestoreName = text(
  'backup',
  isRestoreName,
  'expected "latest", "none" or a backup folder name in k3s_backup_dir (no "/", not starting with "." or "-"), ' +
    'or "latest-anyway" (the newest usable backup however old)',
)

// ---------------------------------------------------------------- secret references

const SECRET_REF = /^op:\/\/[^/\s]+\/[^/\s]+\/[^/\s]+$/
export const isSecretRef = (s: string): boolean => s.length <= 1024 && SECRET_REF.test(s)
export const SecretRef = text('secret reference', isSecretRef, 'expected a secret reference like op://vault/item/field')
