// Strict OpenSSH known_hosts handling for ssh2's hostVerifier, which is handed the raw host key
// blob (SSH wire format: string key type, then the key data).
//
// Supported, as in sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT": comma-separated host lists,
// "[host]:port" for ports other than 22, hashed names "|1|base64 salt|base64 HMAC-SHA1",
// wildcards "*" and "?", negation "!pattern", the markers @revoked and @cert-authority,
// comments and blank lines. Host names and patterns match case-insensitively, as in OpenSSH.
// A malformed line is skipped and reported (KnownHosts.warnings), as OpenSSH skips it: it never
// stops the other lines, nor any host.

import { isUtf8 } from 'node:buffer'
import { createHash, createHmac, randomBytes } from 'node:crypto'
import { lstat, mkdir, readFile, readlink, realpath, stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { writeFileAtomic } from './fsutil.ts'
import { ProvisionError } from './errors.ts'

export type KnownHostMarker = 'revoked' | 'cert-authority'

export interface HostPattern {
  negated: boolean
  /** Lowercased; may contain * and ?. */
  pattern: string
}

export type HostSpec = { kind: 'hashed'; salt: Buffer; hash: Buffer } | { kind: 'patterns'; patterns: HostPattern[] }

export interface KnownHostEntry {
  /** 1-based line number in the file. */
  line: number
  marker?: KnownHostMarker
  /** The host field as written. */
  hostField: string
  hosts: HostSpec
  /** The key type, e.g. 'ssh-ed25519' (as stored in the key blob). */
  keyType: string
  /** The key blob (SSH wire format), as ssh2's hostVerifier receives it. */
  key: Buffer
  comment: string
}

/**
 * A line that could not be read. Like OpenSSH, such a line is skipped and every other line still
 * counts. `reason` says what is wrong in a few words and never quotes the line (it might hold a
 * key, or a private key pasted into the wrong file).
 */
export interface KnownHostsWarning {
  /** 1-based line number in the file. */
  line: number
  reason: string
}

export interface KnownHosts {
  path: string
  entries: KnownHostEntry[]
  /** Malformed lines, skipped. */
  warnings: KnownHostsWarning[]
}

/**
 * 'unknown' also covers a host for which only keys of OTHER types are known: like OpenSSH this
 * is not a mismatch (a host may hold several keys), but the connection should have asked for a
 * known type first (see knownKeyTypes). `knownTypes` then lists those types so the caller can
 * say "keys of a different type are already known for this host", as ssh does.
 */
export type HostKeyVerdict =
  | { status: 'match' }
  | { status: 'unknown'; knownTypes?: string[] }
  | { status: 'changed'; expected: string[]; got: string }
  | { status: 'revoked'; got: string }

// ---------------------------------------------------------------------------------------------
// Key blobs

/** The key type at the start of a host key blob, e.g. 'ssh-ed25519'. */
export function keyType(blob: Buffer): string {
  const t = blobType(blob)
  if (t.ok) return t.type
  throw new ProvisionError('hostkey', `malformed SSH public key: ${t.why}`)
}

/** The key type of a blob, or why it is not an SSH public key (the reason never quotes the blob). */
function blobType(blob: Buffer): { ok: true; type: string } | { ok: false; why: string } {
  if (!Buffer.isBuffer(blob) || blob.length < 4) return { ok: false, why: 'shorter than its length field' }
  const n = blob.readUInt32BE(0)
  if (n === 0 || n > 64) return { ok: false, why: `implausible key type length ${n}` }
  if (4 + n > blob.length) return { ok: false, why: 'truncated key type' }
  const type = blob.toString('latin1', 4, 4 + n)
  if (!/^[\x21-\x7e]+$/.test(type)) return { ok: false, why: 'the key type is not printable text' }
  if (4 + n === blob.length) return { ok: false, why: `no key data after the type ${printable(type)}` }
  return { ok: true, type }
}

/**
 * A name from the file, shown in a warning only when it looks like a key type or a marker
 * (short, lowercase, punctuation of those names only): anything else might be key material.
 */
function printable(name: string): string {
  return /^@?[a-z][a-z0-9.-]{0,47}(@[a-z0-9.-]{1,32})?$/.test(name) ? name : '(an unreadable name)'
}

/** 'SHA256:' + unpadded base64 of the blob's SHA-256, as printed by ssh-keygen -l. */
export function fingerprint(blob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')
}

// ---------------------------------------------------------------------------------------------
// Reading

/**
 * Read a known_hosts file (a missing file is empty). A malformed line does not fail the load:
 * like OpenSSH it is skipped, listed in `warnings`, and every other line is kept. Only a file
 * that cannot be read at all (permissions, a directory) is an error.
 */
export async function loadKnownHosts(path: string): Promise<KnownHosts> {
  const bytes = await readIfExists(path)
  // Bytes that are not UTF-8 decode to U+FFFD: such a line then fails to parse or names no host.
  return parseKnownHosts(path, bytes === undefined ? '' : bytes.toString('utf8'))
}

function parseKnownHosts(path: string, text: string): KnownHosts {
  const entries: KnownHostEntry[] = []
  const warnings: KnownHostsWarning[] = []
  splitLines(text).forEach((raw, i) => {
    const parsed = parseLine(raw, i + 1)
    if (parsed === null) return
    if (typeof parsed === 'string') warnings.push({ line: i + 1, reason: parsed })
    else entries.push(parsed.entry)
  })
  return { path, entries, warnings }
}

interface ParsedLine {
  entry: KnownHostEntry
  /** Offsets of the host field within the line, for rewriting it in place. */
  hostStart: number
  hostEnd: number
}

/**
 * null for blank and comment lines, a reason for a malformed line. Each line is read on its own:
 * nothing carries over from one line to the next, so a bad line cannot spoil its neighbours.
 */
function parseLine(raw: string, line: number): ParsedLine | string | null {
  const text = raw.endsWith('\r') ? raw.slice(0, -1) : raw
  const fields: Array<{ text: string; start: number; end: number }> = []
  const re = /[^ \t]+/g
  for (let m = re.exec(text); m !== null; m = re.exec(text))
    fields.push({ text: m[0], start: m.index, end: m.index + m[0].length })
  if (fields.length === 0 || fields[0].text.startsWith('#')) return null

  let marker: KnownHostMarker | undefined
  let at = 0
  if (fields[0].text.startsWith('@')) {
    if (fields[0].text === '@revoked') marker = 'revoked'
    else if (fields[0].text === '@cert-authority') marker = 'cert-authority'
    else return `unknown marker ${printable(fields[0].text)} (expected @revoked or @cert-authority)`
    at = 1
  }
  const missing = ['the host names, key type and key', 'the key type and key', 'the key']
  if (fields.length < at + 3) return `missing ${missing[fields.length - at]}`
  const hostField = fields[at]
  const typeField = fields[at + 1].text
  const keyField = fields[at + 2].text
  const comment = fields.length > at + 3 ? text.slice(fields[at + 3].start).trim() : ''

  const hosts = parseHostField(hostField.text)
  if (typeof hosts === 'string') return hosts

  // "host bits exponent modulus": an SSH-1 RSA key, which OpenSSH no longer reads either.
  if (/^\d+$/.test(typeField)) return 'an SSH-1 key (not supported)'
  const key = decodeBase64(keyField)
  if (key === null) return 'bad base64 in the key'
  const type = blobType(key)
  if (!type.ok) return `the key is not an SSH public key (${type.why})`
  if (type.type !== typeField) return `the line says ${printable(typeField)} but the key is ${printable(type.type)}`
  return {
    entry: { line, marker, hostField: hostField.text, hosts, keyType: type.type, key, comment },
    hostStart: hostField.start,
    hostEnd: hostField.end,
  }
}

function parseHostField(field: string): HostSpec | string {
  if (field.startsWith('|')) {
    const parts = field.split('|')
    if (parts.length !== 4 || parts[1] !== '1') return 'unsupported hashed host name (expected |1|salt|hash)'
    const salt = decodeBase64(parts[2])
    const hash = decodeBase64(parts[3])
    if (!salt || !hash || salt.length !== 20 || hash.length !== 20)
      return 'malformed hashed host name (salt and hash must be 20 bytes of base64 each)'
    return { kind: 'hashed', salt, hash }
  }
  const patterns: HostPattern[] = []
  for (const item of field.split(',')) {
    const negated = item.startsWith('!')
    const pattern = (negated ? item.slice(1) : item).toLowerCase()
    if (pattern === '') return 'an empty name in the host list'
    patterns.push({ negated, pattern })
  }
  return { kind: 'patterns', patterns }
}

function decodeBase64(text: string): Buffer | null {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 !== 0) return null
  return Buffer.from(text, 'base64')
}

// ---------------------------------------------------------------------------------------------
// Matching

/** The name known_hosts uses for host:port: "host" on port 22, "[host]:port" otherwise. */
export function knownHostName(host: string, port: number): string {
  const h = host.toLowerCase()
  return port === 22 ? h : `[${h}]:${port}`
}

function hashHostName(name: string, salt: Buffer): Buffer {
  return createHmac('sha1', salt).update(name).digest()
}

function specMatches(spec: HostSpec, name: string): boolean {
  if (spec.kind === 'hashed') return hashHostName(name, spec.salt).equals(spec.hash)
  // OpenSSH: a matching negated pattern rejects the host whatever else matches.
  let matched = false
  for (const p of spec.patterns) {
    if (globMatch(p.pattern, name)) {
      if (p.negated) return false
      matched = true
    }
  }
  return matched
}

/** Glob with * (any run, possibly empty) and ? (one character), over the whole string. */
function globMatch(pattern: string, text: string): boolean {
  let p = 0
  let t = 0
  let starP = -1
  let starT = 0
  while (t < text.length) {
    if (p < pattern.length && (pattern[p] === '?' || pattern[p] === text[t])) {
      p++
      t++
    } else if (p < pattern.length && pattern[p] === '*') {
      starP = p++
      starT = t
    } else if (starP >= 0) {
      p = starP + 1
      t = ++starT
    } else return false
  }
  while (p < pattern.length && pattern[p] === '*') p++
  return p === pattern.length
}

function entriesFor(kh: KnownHosts, host: string, port: number): KnownHostEntry[] {
  const name = knownHostName(host, port)
  return kh.entries.filter((e) => specMatches(e.hosts, name))
}

export function checkHostKey(kh: KnownHosts, host: string, port: number, blob: Buffer): HostKeyVerdict {
  const type = keyType(blob)
  const got = fingerprint(blob)
  const mine = entriesFor(kh, host, port)
  // A revoked key is refused even when another line lists it as valid.
  if (mine.some((e) => e.marker === 'revoked' && e.key.equals(blob))) return { status: 'revoked', got }
  const plain = mine.filter((e) => e.marker === undefined)
  if (plain.some((e) => e.key.equals(blob))) return { status: 'match' }
  const sameType = plain.filter((e) => e.keyType === type)
  if (sameType.length > 0) return { status: 'changed', expected: unique(sameType.map((e) => fingerprint(e.key))), got }
  const knownTypes = unique(plain.map((e) => e.keyType))
  return knownTypes.length > 0 ? { status: 'unknown', knownTypes } : { status: 'unknown' }
}

/**
 * Key types known for host:port, in file order ('ssh-rsa' covers rsa-sha2-256/512). Like
 * OpenSSH, a connection should offer these host key algorithms first, so that a host with
 * several keys presents the one that is known.
 */
export function knownKeyTypes(kh: KnownHosts, host: string, port: number): string[] {
  return unique(
    entriesFor(kh, host, port)
      .filter((e) => e.marker === undefined)
      .map((e) => e.keyType),
  )
}

/**
 * kh plus a key for host:port that is not in the file (its line is 0): a key accepted for this
 * run only, which later connections must then find again (a different key is 'changed').
 */
export function withSessionKey(kh: KnownHosts, host: string, port: number, blob: Buffer): KnownHosts {
  const name = knownHostName(host, port)
  const entry: KnownHostEntry = {
    line: 0,
    hostField: name,
    hosts: { kind: 'patterns', patterns: [{ negated: false, pattern: name }] },
    keyType: keyType(blob),
    key: blob,
    comment: 'accepted for this run, not recorded',
  }
  return { ...kh, entries: [...kh.entries, entry] }
}

function unique(list: string[]): string[] {
  return [...new Set(list)]
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface AddKnownHostOptions {
  /** Write the host name hashed (|1|salt|hash), like HashKnownHosts yes. Default false. */
  hash?: boolean
}

/**
 * Record host:port's key. Atomic (temp file + rename, see writeFileAtomic): a new file is made
 * 0600 and its missing directories 0700, an existing file keeps its mode. When the path is a
 * symlink (dotfile managers), its target is written and the link stays. No-op when the key is
 * already recorded for that host; refuses to add a key that checkHostKey reports as changed or
 * revoked (that would silently trust it). Malformed lines are kept as they are.
 */
export async function addKnownHost(
  path: string,
  host: string,
  port: number,
  blob: Buffer,
  opts: AddKnownHostOptions = {},
): Promise<void> {
  const type = keyType(blob)
  const target = await resolveLink(path)
  await serialize(target, async () => {
    const bytes = await readIfExists(target)
    const text = bytes?.toString('utf8') ?? ''
    const verdict = checkHostKey(parseKnownHosts(path, text), host, port, blob)
    if (verdict.status === 'match') return
    if (verdict.status === 'changed' || verdict.status === 'revoked') {
      throw new ProvisionError(
        'hostkey',
        `refusing to record ${fingerprint(blob)} for ${knownHostName(host, port)}: ` +
          `known_hosts says its key is ${verdict.status}`,
        {
          place: { file: path },
          hint:
            verdict.status === 'changed'
              ? `remove the old key first (ssh-keygen -R ${knownHostName(host, port)} -f ${path})`
              : undefined,
        },
      )
    }
    const name = knownHostName(host, port)
    let hostField = name
    if (opts.hash) {
      const salt = randomBytes(20)
      hostField = `|1|${salt.toString('base64')}|${hashHostName(name, salt).toString('base64')}`
    }
    // A last line without its newline (malformed or not) gets one, so the new entry is a line of its own.
    const sep = text === '' || text.endsWith('\n') ? '' : '\n'
    const content = `${text}${sep}${hostField} ${type} ${blob.toString('base64')}\n`
    assertRewritable(path, bytes)
    try {
      await mkdir(dirname(target), { recursive: true, mode: 0o700 })
    } catch (e) {
      throw new ProvisionError('hostkey', `cannot create the directory of ${path}: ${errnoCode(e) ?? String(e)}`, {
        place: { file: path },
        cause: e,
      })
    }
    await writeKnownHostsFile(path, target, content, await modeOr(target, 0o600))
  })
}

/**
 * Forget host:port (port 22 when omitted), like ssh-keygen -R: returns how many entries were
 * removed. Only entries that name the host itself are touched: a hashed entry of that name is
 * deleted; in a plain host list only that name is dropped (the line is deleted when no other
 * host is left on it), so other hosts on the same line stay trusted. Wildcard entries and
 * @revoked / @cert-authority lines are kept, as ssh-keygen keeps marker lines. Every other line
 * is left byte-identical; lines this code cannot parse are kept as they are.
 */
export async function removeKnownHost(path: string, host: string, port: number = 22): Promise<number> {
  const target = await resolveLink(path)
  return serialize(target, async () => {
    const bytes = await readIfExists(target)
    if (bytes === undefined) return 0
    const text = bytes.toString('utf8')
    const name = knownHostName(host, port)
    const lines = splitLines(text)
    const out: string[] = []
    let removed = 0
    lines.forEach((raw, i) => {
      const parsed = parseLine(raw, i + 1)
      if (parsed === null || typeof parsed === 'string' || parsed.entry.marker !== undefined) {
        out.push(raw)
        return
      }
      const { hosts } = parsed.entry
      if (hosts.kind === 'hashed') {
        if (specMatches(hosts, name)) removed++
        else out.push(raw)
        return
      }
      const items = parsed.entry.hostField.split(',')
      const kept = items.filter((item) => item.toLowerCase() !== name)
      if (kept.length === items.length) {
        out.push(raw)
        return
      }
      removed++
      if (kept.some((item) => !item.startsWith('!')))
        out.push(raw.slice(0, parsed.hostStart) + kept.join(',') + raw.slice(parsed.hostEnd))
    })
    if (removed === 0) return 0
    assertRewritable(path, bytes)
    // splitLines keeps a final '' when the text ends with a newline: join restores it.
    await writeKnownHostsFile(path, target, out.join('\n'), await modeOr(target, 0o600))
    return removed
  })
}

// ---------------------------------------------------------------------------------------------
// Files

/** Lines without their '\n' (a '\r' stays); a trailing newline gives a final ''. */
function splitLines(text: string): string[] {
  return text.split('\n')
}

async function readIfExists(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path)
  } catch (e) {
    const code = errnoCode(e)
    if (code === 'ENOENT') return undefined
    throw new ProvisionError('hostkey', `cannot read known_hosts file ${path}: ${code ?? String(e)}`, {
      place: { file: path },
      cause: e,
    })
  }
}

/**
 * A rewrite must give back every line it does not change byte for byte. Bytes that are not
 * UTF-8 would not survive decoding and encoding again: refuse, naming the line, rather than
 * alter it.
 */
function assertRewritable(path: string, bytes: Buffer | undefined): void {
  if (bytes === undefined || isUtf8(bytes)) return
  let line = 1
  for (let start = 0; start <= bytes.length; line++) {
    const nl = bytes.indexOf(0x0a, start)
    const end = nl === -1 ? bytes.length : nl
    if (!isUtf8(bytes.subarray(start, end))) break
    start = end + 1
  }
  throw new ProvisionError(
    'hostkey',
    `line ${line} of ${path} is not UTF-8 text: refusing to rewrite the file (that line would change)`,
    {
      place: { file: path, line },
      hint: `fix or delete line ${line} of ${path}`,
    },
  )
}

/**
 * The file to write for `path`: its final target when it is a symlink (relative links resolve
 * from the link's own directory; a link to a file that does not exist yet gives that file), so
 * the link survives the rename of the new file over its target.
 */
async function resolveLink(path: string): Promise<string> {
  let at = path
  for (let hops = 0; hops < 40; hops++) {
    try {
      if (!(await lstat(at)).isSymbolicLink()) return at
      at = resolve(await realpath(dirname(at)), await readlink(at))
    } catch (e) {
      const code = errnoCode(e)
      if (code === 'ENOENT') return at
      throw new ProvisionError('hostkey', `cannot resolve known_hosts file ${path}: ${code ?? String(e)}`, {
        place: { file: path },
        cause: e,
      })
    }
  }
  throw new ProvisionError('hostkey', `cannot resolve known_hosts file ${path}: too many levels of symbolic links`, {
    place: { file: path },
  })
}

async function modeOr(path: string, fallback: number): Promise<number> {
  try {
    return (await stat(path)).mode & 0o777
  } catch {
    return fallback
  }
}

function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' ? e.code : undefined
}

// Parallel connections in this process add hosts concurrently: one read-modify-write per file
// (keyed by the resolved target, so two links to one file share a queue) at a time, or one
// worker's rename would drop another's line. Other processes are not coordinated with.
const queues = new Map<string, Promise<unknown>>()

function serialize<T>(path: string, work: () => Promise<T>): Promise<T> {
  const before = queues.get(path) ?? Promise.resolve()
  const run = before.then(work)
  const tail = run.catch(() => undefined)
  queues.set(path, tail)
  void tail.then(() => {
    if (queues.get(path) === tail) queues.delete(path)
  })
  return run
}

/**
 * writeFileAtomic creates its temp file (random name, next to the target) with O_EXCL, so a
 * symlink or file planted at that name makes the write fail instead of writing through it.
 */
async function writeKnownHostsFile(path: string, target: string, content: string, mode: number): Promise<void> {
  try {
    await writeFileAtomic(target, content, mode)
  } catch (e) {
    const where = target === path ? path : `${path} (-> ${target})`
    throw new ProvisionError('hostkey', `cannot write known_hosts file ${where}: ${errnoCode(e) ?? String(e)}`, {
      place: { file: path },
      cause: e,
    })
  }
}
