// App health probes run from the controller, the way the owner checks by hand: an HTTP GET whose status
// and body are judged (Jellyfin /health -> Healthy, Immich /api/server/ping -> {"res":"pong"}, ...) and a DNS
// question put to Pi-hole at the server's address (dig @192.168.1.55 google.com). Only Node's own
// libraries: node:http/https and node:dns's Resolver pointed at one server. Every probe has a timeout and
// ends with a reason a person can act on; the apps role turns the results into the final table.

import { Resolver } from 'node:dns/promises'
import * as http from 'node:http'
import * as https from 'node:https'
import { ProvisionError } from './errors.ts'

export interface HttpCheck {
  kind: 'http'
  app: string
  url: string
  /** Exact status wanted; default any 2xx. */
  expectStatus?: number
  /** The body, trimmed, must equal this. */
  expectBody?: string
  /** The body must be JSON holding these keys with these values (other keys may be there too). */
  expectJson?: Record<string, unknown>
  timeoutMs: number
}

export interface DnsCheck {
  kind: 'dns'
  app: string
  /** Address of the DNS server asked (Pi-hole: the server's address). */
  server: string
  port: number
  /** The name asked for, e.g. google.com. */
  name: string
  type: 'A' | 'AAAA'
  timeoutMs: number
}

export type AppCheck = HttpCheck | DnsCheck

export interface ProbeResult {
  app: string
  /** What was asked, e.g. "GET https://jellyfin.lab.mtgibbs.dev/health" or "DNS A google.com @192.168.1.55:53". */
  check: string
  ok: boolean
  /** The answer when ok; why not when failing. */
  detail: string
  ms: number
}

const KEYS = ['app', 'url', 'expect', 'expect_status', 'expect_json', 'dns', 'server', 'port', 'type', 'timeout'] as const

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * The inventory's app_checks, validated. `server` of a DNS check may name an inventory host (its address is
 * used); resolveServer maps it, and without one the check asks defaultServer (the host the role runs on).
 */
export function parseAppChecks(
  raw: readonly unknown[],
  opts: { timeoutSec: number; defaultServer?: string; resolveServer?: (nameOrAddress: string) => string },
): AppCheck[] {
  const bad = (i: number, what: string): ProvisionError =>
    new ProvisionError('inventory', `app_checks[${i}]: ${what}`, {
      hint: 'each entry is {app, url, expect?, expect_json?, expect_status?, timeout?} or {app, dns: NAME, server?, port?, type?, timeout?} (see docs/gitops.md)',
    })
  return raw.map((entry, i): AppCheck => {
    if (!isRecord(entry)) throw bad(i, 'expected a map')
    const unknown = Object.keys(entry).filter((k) => !(KEYS as readonly string[]).includes(k))
    if (unknown.length) throw bad(i, `unknown key${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}`)
    const app = entry.app
    if (typeof app !== 'string' || app === '') throw bad(i, 'needs app: the name shown in the table')
    const timeout = entry.timeout ?? opts.timeoutSec
    if (typeof timeout !== 'number' || !(timeout > 0)) throw bad(i, `${app}: timeout must be a number of seconds`)
    const timeoutMs = Math.round(timeout * 1000)
    if (entry.url !== undefined && entry.dns !== undefined) throw bad(i, `${app}: either url or dns, not both`)
    if (typeof entry.url === 'string') {
      for (const k of ['server', 'port', 'type'] as const) if (entry[k] !== undefined) throw bad(i, `${app}: ${k} is for dns checks`)
      let url: URL
      try {
        url = new URL(entry.url)
      } catch {
        throw bad(i, `${app}: url ${JSON.stringify(entry.url)} is not a URL`)
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw bad(i, `${app}: url must be http:// or https://`)
      const check: HttpCheck = { kind: 'http', app, url: url.href, timeoutMs }
      if (entry.expect_status !== undefined) {
        if (typeof entry.expect_status !== 'number' || !Number.isInteger(entry.expect_status)) throw bad(i, `${app}: expect_status must be a status code`)
        check.expectStatus = entry.expect_status
      }
      if (entry.expect !== undefined) {
        if (typeof entry.expect !== 'string') throw bad(i, `${app}: expect must be a string (the whole body)`)
        check.expectBody = entry.expect
      }
      if (entry.expect_json !== undefined) {
        if (!isRecord(entry.expect_json)) throw bad(i, `${app}: expect_json must be a map`)
        check.expectJson = entry.expect_json
      }
      return check
    }
    if (typeof entry.dns === 'string' && entry.dns !== '') {
      for (const k of ['expect', 'expect_status', 'expect_json'] as const) if (entry[k] !== undefined) throw bad(i, `${app}: ${k} is for url checks`)
      const port = entry.port ?? 53
      if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw bad(i, `${app}: port must be a port number`)
      const type = entry.type ?? 'A'
      if (type !== 'A' && type !== 'AAAA') throw bad(i, `${app}: type must be A or AAAA`)
      if (entry.server !== undefined && (typeof entry.server !== 'string' || entry.server === '')) throw bad(i, `${app}: server must be a host name or an address`)
      let server = typeof entry.server === 'string' ? entry.server : opts.defaultServer
      if (server !== undefined && opts.resolveServer) server = opts.resolveServer(server)
      if (server === undefined) throw bad(i, `${app}: no server to ask`)
      return { kind: 'dns', app, server, port, name: entry.dns, type, timeoutMs }
    }
    throw bad(i, `${app}: needs url (an HTTP check) or dns (a name to resolve)`)
  })
}

export function describeCheck(c: AppCheck): string {
  if (c.kind === 'http') return `GET ${c.url}`
  const at = c.server.includes(':') ? `[${c.server}]` : c.server
  return `DNS ${c.type} ${c.name} @${at}:${c.port}`
}

const MAX_BODY = 64 * 1024

/** A short, one-line view of a body for messages. */
export function snippet(body: string, max = 80): string {
  const one = body.replace(/\s+/g, ' ').trim()
  return one.length > max ? `${one.slice(0, max - 1)}…` : one
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(1))}s`
}

/** Does `have` hold every key of `want` with an equal value (recursively for maps)? */
export function jsonContains(have: unknown, want: unknown): boolean {
  if (isRecord(want)) return isRecord(have) && Object.entries(want).every(([k, v]) => jsonContains(have[k], v))
  if (Array.isArray(want)) return Array.isArray(have) && have.length === want.length && want.every((v, i) => jsonContains(have[i], v))
  return have === want
}

/** Judge an HTTP answer against the check: undefined when healthy, else the reason. */
export function judgeHttp(c: Pick<HttpCheck, 'expectStatus' | 'expectBody' | 'expectJson'>, status: number, body: string, location?: string): string | undefined {
  const okStatus = c.expectStatus !== undefined ? status === c.expectStatus : status >= 200 && status < 300
  if (!okStatus) {
    const wanted = c.expectStatus !== undefined ? String(c.expectStatus) : '2xx'
    const tail = location ? ` -> ${location}` : body.trim() ? `: ${snippet(body)}` : ''
    return `HTTP ${status} (expected ${wanted})${tail}`
  }
  if (c.expectBody !== undefined && body.trim() !== c.expectBody) return `answered ${JSON.stringify(snippet(body))}, expected ${JSON.stringify(c.expectBody)}`
  if (c.expectJson !== undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(body)
    } catch {
      return `answered ${JSON.stringify(snippet(body))}, not JSON (expected ${JSON.stringify(c.expectJson)})`
    }
    if (!jsonContains(parsed, c.expectJson)) return `answered ${snippet(JSON.stringify(parsed))}, expected ${JSON.stringify(c.expectJson)}`
  }
  return undefined
}

function errCode(e: unknown): string | undefined {
  return isRecord(e) && typeof e.code === 'string' ? e.code : undefined
}

/** A network error as a person reads it. */
export function describeNetError(e: unknown, host: string): string {
  const code = errCode(e)
  const message = e instanceof Error ? e.message : String(e)
  switch (code) {
    case 'ECONNREFUSED':
      return `connection refused by ${host}`
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `cannot resolve ${host.replace(/:\d+$/, '')} (${code})`
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `${host} is unreachable (${code})`
    case 'ECONNRESET':
      return `connection reset by ${host}`
    case 'ETIMEDOUT':
      return `connection to ${host} timed out`
    default:
      if (code && (/CERT|SELF_SIGNED|TLS|SSL|ALTNAME|VERIFY/.test(code))) return `TLS: ${message} (${code})`
      return code ? `${message} (${code})` : message
  }
}

export function probeHttp(c: HttpCheck): Promise<ProbeResult> {
  const started = Date.now()
  const check = describeCheck(c)
  return new Promise((resolve) => {
    const url = new URL(c.url)
    const host = url.host
    let settled = false
    let req: http.ClientRequest | undefined
    const finish = (reason: string | undefined, detail: string): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      req?.destroy()
      resolve({ app: c.app, check, ok: reason === undefined, detail: reason ?? detail, ms: Date.now() - started })
    }
    const timer = setTimeout(() => finish(`no answer within ${seconds(c.timeoutMs)}`, ''), c.timeoutMs)
    const mod = url.protocol === 'https:' ? https : http
    try {
      req = mod.request(url, { method: 'GET', agent: false, headers: { 'user-agent': 'pi-provision health check', accept: '*/*' } }, (res) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (d: Buffer) => {
          if (size < MAX_BODY) chunks.push(d)
          size += d.length
        })
        res.on('error', (e: unknown) => finish(describeNetError(e, host), ''))
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8').slice(0, MAX_BODY)
          const status = res.statusCode ?? 0
          const reason = judgeHttp(c, status, body, typeof res.headers.location === 'string' ? res.headers.location : undefined)
          finish(reason, `HTTP ${status}${body.trim() ? ` ${snippet(body, 60)}` : ''}`)
        })
      })
    } catch (e) {
      finish(describeNetError(e, host), '')
      return
    }
    req.on('error', (e: unknown) => finish(describeNetError(e, host), ''))
    req.end()
  })
}

const DNS_REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'nothing answers DNS there (connection refused)',
  ESERVFAIL: 'the server failed to answer (SERVFAIL)',
  EREFUSED: 'the server refused the query (REFUSED)',
  ENOTFOUND: 'no such name (NXDOMAIN)',
  ENODATA: 'no record of that type in the answer',
  EBADRESP: 'the answer was malformed',
  ECONNRESET: 'the connection was reset',
}

export async function probeDns(c: DnsCheck): Promise<ProbeResult> {
  const started = Date.now()
  const check = describeCheck(c)
  const resolver = new Resolver({ timeout: c.timeoutMs, tries: 1 })
  resolver.setServers([c.server.includes(':') ? `[${c.server}]:${c.port}` : `${c.server}:${c.port}`])
  // The resolver's own timeout applies per try; this bounds the whole question whatever c-ares does.
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    resolver.cancel()
  }, c.timeoutMs + 250)
  const result = (ok: boolean, detail: string): ProbeResult => ({ app: c.app, check, ok, detail, ms: Date.now() - started })
  try {
    const addresses = c.type === 'AAAA' ? await resolver.resolve6(c.name) : await resolver.resolve4(c.name)
    if (addresses.length === 0) return result(false, `no ${c.type} record in the answer`)
    return result(true, `${c.name} -> ${addresses.join(', ')}`)
  } catch (e) {
    const code = errCode(e) ?? ''
    if (timedOut || code === 'ETIMEOUT' || code === 'ECANCELLED') return result(false, `no answer within ${seconds(c.timeoutMs)}`)
    return result(false, DNS_REASONS[code] ?? (e instanceof Error ? e.message : String(e)))
  } finally {
    clearTimeout(timer)
  }
}

export function probe(c: AppCheck): Promise<ProbeResult> {
  return c.kind === 'http' ? probeHttp(c) : probeDns(c)
}

/** Every check at once; a failing one is asked again (attempts in all) after a pause, since a pod may be just starting. */
export async function runChecks(checks: readonly AppCheck[], opts: { attempts?: number; retryDelayMs?: number } = {}): Promise<ProbeResult[]> {
  const attempts = Math.max(1, opts.attempts ?? 2)
  return Promise.all(
    checks.map(async (c) => {
      let r = await probe(c)
      for (let n = 1; n < attempts && !r.ok; n++) {
        await new Promise((done) => setTimeout(done, opts.retryDelayMs ?? 1000))
        r = await probe(c)
      }
      return r
    }),
  )
}

export interface AppVerdict {
  app: string
  ok: boolean
  /** The failing checks' reasons, or the ok checks' answers. */
  reasons: string[]
}

/** One verdict per app (an app with several checks is ok only when all are), in the order apps first appear. */
export function verdicts(results: readonly ProbeResult[]): AppVerdict[] {
  const out = new Map<string, AppVerdict>()
  for (const r of results) {
    const v = out.get(r.app) ?? { app: r.app, ok: true, reasons: [] }
    if (!r.ok) {
      if (v.ok) v.reasons = []
      v.ok = false
      v.reasons.push(r.detail)
    } else if (v.ok) v.reasons.push(r.detail)
    out.set(r.app, v)
  }
  return [...out.values()]
}

/** The final table: one row per check, app -> ok / FAILING, what was asked, and the answer or the reason. */
export function formatAppTable(results: readonly ProbeResult[]): string[] {
  const rows = results.map((r) => [r.app, r.ok ? 'ok' : 'FAILING', r.check, `${r.detail}${r.ok ? ` (${r.ms} ms)` : ''}`])
  const head = ['APP', 'RESULT', 'CHECK', 'ANSWER / REASON']
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()
  return [line(head), ...rows.map(line)]
}
