// Strict OpenSSH known_hosts handling for ssh2's hostVerifier, which is handed the raw host key
// blob (SSH wire format: string key type, then the key data).
//
// Supported, as in sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT": comma-separated host lists,
// "[host]:port" for ports other than 22, hashed names "|1|base64 salt|base64 HMAC-SHA1",
// wildcards "*" and "?", negation "!pattern", the markers @revoked and @cert-authority,
// comments and blank lines. Host names and patterns match case-insensitively, as in OpenSSH.
// A malformed line is skipped and reported (KnownHosts.warnings), as OpenSSH skips it: it never
// stops the other lines, nor any host. Adding and removing lines: lib/knownhosts-write.ts.

import { createHash, createHmac } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { errnoCode, ProvisionError } from './errors.ts'

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

export function parseKnownHosts(path: string, text: string): KnownHosts {
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
export function parseLine(raw: string, line: number): ParsedLine | string | null {
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

export function hashHostName(name: string, salt: Buffer): Buffer {
  return createHmac('sha1', salt).update(name).digest()
}

export function specMatches(spec: HostSpec, name: string): boolean {
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
// Files

/** Lines without their '\n' (a '\r' stays); a trailing newline gives a final ''. */
export function splitLines(text: string): string[] {
  return text.split('\n')
}

export async function readIfExists(path: string): Promise<Buffer | undefined> {
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
