// App health probes run from the controller, the way the owner checks by hand: an HTTP GET whose status
// and body are judged (Jellyfin /health -> Healthy, Immich /api/server/ping -> {"res":"pong"}, ...) and a DNS
// question put to Pi-hole at the server's address (dig @192.168.1.55 google.com), and Pi-hole v6's API
// (log in, is blocking enabled?, log out: its sessions are few, so one is never left open). Only Node's own
// libraries: node:http/https and node:dns's Resolver pointed at one server. Every probe has a timeout and
// ends with a reason a person can act on; the apps role turns the results into the final table.

import { Resolver } from 'node:dns/promises'
import * as http from 'node:http'
import * as https from 'node:https'
import { ProvisionError } from './errors.ts'
import { registerSecret } from './mask.ts'
import { type AppCheck, type DnsCheck, type HttpCheck, type PiholeCheck, isRecord } from './appchecks.ts'

export interface ProbeResult {
  app: string
  /** What was asked, e.g. "GET https://jellyfin.lab.mtgibbs.dev/health" or "DNS A google.com @192.168.1.55:53". */
  check: string
  ok: boolean
  /** The answer when ok; why not when failing. */
  detail: string
  ms: number
}

export function describeCheck(c: AppCheck): string {
  if (c.kind === 'http') return `GET ${c.url}`
  if (c.kind === 'pihole') return `Pi-hole API ${c.api}: login, blocking, logout`
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
  if (Array.isArray(want))
    return Array.isArray(have) && have.length === want.length && want.every((v, i) => jsonContains(have[i], v))
  return have === want
}

/** Judge an HTTP answer against the check: undefined when healthy, else the reason. */
export function judgeHttp(
  c: Pick<HttpCheck, 'expectStatus' | 'expectBody' | 'expectJson'>,
  status: number,
  body: string,
  location?: string,
): string | undefined {
  const okStatus = c.expectStatus !== undefined ? status === c.expectStatus : status >= 200 && status < 300
  if (!okStatus) {
    const wanted = c.expectStatus !== undefined ? String(c.expectStatus) : '2xx'
    const tail = location ? ` -> ${location}` : body.trim() ? `: ${snippet(body)}` : ''
    return `HTTP ${status} (expected ${wanted})${tail}`
  }
  if (c.expectBody !== undefined && body.trim() !== c.expectBody)
    return `answered ${JSON.stringify(snippet(body))}, expected ${JSON.stringify(c.expectBody)}`
  if (c.expectJson !== undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(body)
    } catch {
      return `answered ${JSON.stringify(snippet(body))}, not JSON (expected ${JSON.stringify(c.expectJson)})`
    }
    if (!jsonContains(parsed, c.expectJson))
      return `answered ${snippet(JSON.stringify(parsed))}, expected ${JSON.stringify(c.expectJson)}`
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
      if (code && /CERT|SELF_SIGNED|TLS|SSL|ALTNAME|VERIFY/.test(code)) return `TLS: ${message} (${code})`
      return code ? `${message} (${code})` : message
  }
}

export interface HttpAnswer {
  status: number
  body: string
  location?: string
}

/** One HTTP request with a deadline; rejects with a reason a person can act on (refused, no answer, TLS, ...). */
export function request(
  url: URL,
  opts: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs: number },
): Promise<HttpAnswer> {
  const host = url.host
  return new Promise((resolve, reject) => {
    let settled = false
    let req: http.ClientRequest | undefined
    const finish = (answer: HttpAnswer | undefined, reason?: string): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      req?.destroy()
      if (answer) resolve(answer)
      else reject(new Error(reason))
    }
    const timer = setTimeout(() => finish(undefined, `no answer within ${seconds(opts.timeoutMs)}`), opts.timeoutMs)
    const mod = url.protocol === 'https:' ? https : http
    const headers: Record<string, string> = {
      'user-agent': 'pi-provision health check',
      accept: '*/*',
      ...opts.headers,
    }
    if (opts.body !== undefined) headers['content-length'] = String(Buffer.byteLength(opts.body))
    try {
      req = mod.request(url, { method: opts.method ?? 'GET', agent: false, headers }, (res) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (d: Buffer) => {
          if (size < MAX_BODY) chunks.push(d)
          size += d.length
        })
        res.on('error', (e: unknown) => finish(undefined, describeNetError(e, host)))
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8').slice(0, MAX_BODY)
          finish({
            status: res.statusCode ?? 0,
            body,
            location: typeof res.headers.location === 'string' ? res.headers.location : undefined,
          })
        })
      })
    } catch (e) {
      finish(undefined, describeNetError(e, host))
      return
    }
    req.on('error', (e: unknown) => finish(undefined, describeNetError(e, host)))
    req.end(opts.body)
  })
}

export async function probeHttp(c: HttpCheck): Promise<ProbeResult> {
  const started = Date.now()
  const result = (ok: boolean, detail: string): ProbeResult => ({
    app: c.app,
    check: describeCheck(c),
    ok,
    detail,
    ms: Date.now() - started,
  })
  let a: HttpAnswer
  try {
    a = await request(new URL(c.url), { timeoutMs: c.timeoutMs })
  } catch (e) {
    return result(false, (e as Error).message)
  }
  const reason = judgeHttp(c, a.status, a.body, a.location)
  return reason
    ? result(false, reason)
    : result(true, `HTTP ${a.status}${a.body.trim() ? ` ${snippet(a.body, 60)}` : ''}`)
}

function parseJson(body: string): unknown {
  try {
    return JSON.parse(body)
  } catch {
    return undefined
  }
}

/**
 * Pi-hole v6, as the owner checks it: POST /api/auth with the password, GET /api/dns/blocking with the session
 * id (X-FTL-SID), then DELETE /api/auth, whatever happened in between (Pi-hole keeps few sessions). The password
 * travels only in the login body; the session id is masked in every output like a secret.
 */
export async function probePihole(c: PiholeCheck, password: string): Promise<ProbeResult> {
  const started = Date.now()
  const result = (ok: boolean, detail: string): ProbeResult => ({
    app: c.app,
    check: describeCheck(c),
    ok,
    detail,
    ms: Date.now() - started,
  })
  const left = () => Math.max(250, c.timeoutMs - (Date.now() - started))
  let login: HttpAnswer
  try {
    login = await request(new URL(`${c.api}/auth`), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ password }),
      timeoutMs: left(),
    })
  } catch (e) {
    return result(false, `login: ${(e as Error).message}`)
  }
  const session = (
    parseJson(login.body) as { session?: { valid?: boolean; sid?: string | null; message?: string } } | undefined
  )?.session
  if (login.status === 401)
    return result(
      false,
      `the password at ${c.passwordRef} was refused (HTTP 401${session?.message ? `: ${session.message}` : ''})`,
    )
  if (login.status !== 200 || !session?.valid)
    return result(false, `login: HTTP ${login.status}${login.body.trim() ? `: ${snippet(login.body)}` : ''}`)
  const sid = typeof session.sid === 'string' && session.sid !== '' ? session.sid : undefined
  if (sid) registerSecret(sid)
  const withSid = sid ? { 'X-FTL-SID': sid } : undefined
  let verdict: ProbeResult
  try {
    const a = await request(new URL(`${c.api}/dns/blocking`), { headers: withSid, timeoutMs: left() })
    const b = parseJson(a.body) as { blocking?: string; timer?: number | null } | undefined
    if (a.status !== 200 || typeof b?.blocking !== 'string')
      verdict = result(false, `blocking status: HTTP ${a.status}${a.body.trim() ? `: ${snippet(a.body)}` : ''}`)
    else if (b.blocking === 'enabled') verdict = result(true, 'blocking enabled')
    else
      verdict = result(
        false,
        `blocking is ${b.blocking}${typeof b.timer === 'number' ? ` (for ${Math.round(b.timer)} s more)` : ''}`,
      )
  } catch (e) {
    verdict = result(false, `blocking status: ${(e as Error).message}`)
  }
  if (sid) {
    const out = await request(new URL(`${c.api}/auth`), {
      method: 'DELETE',
      headers: withSid,
      timeoutMs: Math.max(1000, left()),
    }).catch((e: unknown) => (e as Error).message)
    const loggedOut = typeof out !== 'string' && (out.status === 204 || out.status === 200 || out.status === 410)
    if (!loggedOut)
      verdict = {
        ...verdict,
        detail:
          `${verdict.detail}; logout failed (${typeof out === 'string' ? out : `HTTP ${out.status}`}): ` +
          'the session stays until it expires',
      }
  }
  return { ...verdict, ms: Date.now() - started }
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
  const result = (ok: boolean, detail: string): ProbeResult => ({
    app: c.app,
    check,
    ok,
    detail,
    ms: Date.now() - started,
  })
  try {
    const addresses = c.type === 'AAAA' ? await resolver.resolve6(c.name) : await resolver.resolve4(c.name)
    if (addresses.length === 0) return result(false, `no ${c.type} record in the answer`)
    return result(true, `${c.name} -> ${addresses.join(', ')}`)
  } catch (e) {
    const code = errCode(e) ?? ''
    if (timedOut || code === 'ETIMEOUT' || code === 'ECANCELLED')
      return result(false, `no answer within ${seconds(c.timeoutMs)}`)
    return result(false, DNS_REASONS[code] ?? (e instanceof Error ? e.message : String(e)))
  } finally {
    clearTimeout(timer)
  }
}

/** Secret references the checks need (Pi-hole passwords), to resolve before any host is touched. */
export function checkSecretRefs(checks: readonly AppCheck[]): string[] {
  return [...new Set(checks.flatMap((c) => (c.kind === 'pihole' ? [c.passwordRef] : [])))]
}

export function probe(c: AppCheck, secret: (ref: string) => string = noSecrets): Promise<ProbeResult> {
  if (c.kind === 'http') return probeHttp(c)
  if (c.kind === 'pihole') return probePihole(c, secret(c.passwordRef))
  return probeDns(c)
}

function noSecrets(ref: string): string {
  throw new ProvisionError('secrets', `no secrets store to read ${ref} from`)
}

/**
 * Every check at once; a failing one is asked again (attempts in all) after a pause, since a pod may be just
 * starting.
 */
export async function runChecks(
  checks: readonly AppCheck[],
  opts: { attempts?: number; retryDelayMs?: number; secret?: (ref: string) => string } = {},
): Promise<ProbeResult[]> {
  const attempts = Math.max(1, opts.attempts ?? 2)
  return Promise.all(
    checks.map(async (c) => {
      let r = await probe(c, opts.secret)
      for (let n = 1; n < attempts && !r.ok; n++) {
        await new Promise((done) => setTimeout(done, opts.retryDelayMs ?? 1000))
        r = await probe(c, opts.secret)
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
  const rows = results.map((r) => [
    r.app,
    r.ok ? 'ok' : 'FAILING',
    r.check,
    `${r.detail}${r.ok ? ` (${r.ms} ms)` : ''}`,
  ])
  const head = ['APP', 'RESULT', 'CHECK', 'ANSWER / REASON']
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd()
  return [line(head), ...rows.map(line)]
}
