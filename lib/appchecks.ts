// The inventory's app_checks as data: what each kind of check is, and the parser that validates entries. Kept
// apart from the probes (lib/probes.ts, which load node:http, https and dns) so the inventory loader can check
// app_checks at their lines without loading the network code on every run's start-up.

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

export interface PiholeCheck {
  kind: 'pihole'
  app: string
  /** Pi-hole v6's API base, e.g. http://192.168.1.55/api */
  api: string
  /** Secret reference of the web interface / API password (resolved once, before any host is touched). */
  passwordRef: string
  timeoutMs: number
}

export type AppCheck = HttpCheck | DnsCheck | PiholeCheck

const KEYS = [
  'app',
  'url',
  'expect',
  'expect_status',
  'expect_json',
  'dns',
  'server',
  'port',
  'type',
  'pihole_api',
  'password_ref',
  'timeout',
] as const

export function isRecord(v: unknown): v is Record<string, unknown> {
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
      hint:
        'each entry is {app, url, expect?, expect_json?, expect_status?, timeout?}, ' +
        '{app, dns: NAME, server?, port?, type?, timeout?} or {app, pihole_api: URL, password_ref, timeout?} ' +
        '(see docs/gitops.md)',
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
    const kinds = (['url', 'dns', 'pihole_api'] as const).filter((k) => entry[k] !== undefined)
    if (kinds.length > 1) throw bad(i, `${app}: one of url, dns or pihole_api, not ${kinds.join(' and ')}`)
    if (entry.password_ref !== undefined && entry.pihole_api === undefined)
      throw bad(i, `${app}: password_ref is for pihole_api checks`)
    if (entry.pihole_api !== undefined) {
      for (const k of ['expect', 'expect_status', 'expect_json', 'server', 'port', 'type'] as const)
        if (entry[k] !== undefined) throw bad(i, `${app}: ${k} is not for pihole_api checks`)
      let api: URL
      try {
        api = new URL(String(entry.pihole_api))
      } catch {
        throw bad(
          i,
          `${app}: pihole_api ${JSON.stringify(entry.pihole_api)} is not a URL (e.g. http://<Pi-hole's address>/api)`,
        )
      }
      if (typeof entry.pihole_api !== 'string' || (api.protocol !== 'http:' && api.protocol !== 'https:'))
        throw bad(i, `${app}: pihole_api must be an http:// or https:// URL`)
      if (typeof entry.password_ref !== 'string' || !/^op:\/\/[^/]+\/[^/]+\/.+/.test(entry.password_ref))
        throw bad(i, `${app}: pihole_api needs password_ref, the password's secret reference (op://vault/item/field)`)
      return { kind: 'pihole', app, api: api.href.replace(/\/+$/, ''), passwordRef: entry.password_ref, timeoutMs }
    }
    if (typeof entry.url === 'string') {
      for (const k of ['server', 'port', 'type'] as const)
        if (entry[k] !== undefined) throw bad(i, `${app}: ${k} is for dns checks`)
      let url: URL
      try {
        url = new URL(entry.url)
      } catch {
        throw bad(i, `${app}: url ${JSON.stringify(entry.url)} is not a URL`)
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw bad(i, `${app}: url must be http:// or https://`)
      const check: HttpCheck = { kind: 'http', app, url: url.href, timeoutMs }
      if (entry.expect_status !== undefined) {
        if (typeof entry.expect_status !== 'number' || !Number.isInteger(entry.expect_status))
          throw bad(i, `${app}: expect_status must be a status code`)
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
      for (const k of ['expect', 'expect_status', 'expect_json'] as const)
        if (entry[k] !== undefined) throw bad(i, `${app}: ${k} is for url checks`)
      const port = entry.port ?? 53
      if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)
        throw bad(i, `${app}: port must be a port number`)
      const type = entry.type ?? 'A'
      if (type !== 'A' && type !== 'AAAA') throw bad(i, `${app}: type must be A or AAAA`)
      if (entry.server !== undefined && (typeof entry.server !== 'string' || entry.server === ''))
        throw bad(i, `${app}: server must be a host name or an address`)
      let server = typeof entry.server === 'string' ? entry.server : opts.defaultServer
      if (server !== undefined && opts.resolveServer) server = opts.resolveServer(server)
      if (server === undefined) throw bad(i, `${app}: no server to ask`)
      return { kind: 'dns', app, server, port, name: entry.dns, type, timeoutMs }
    }
    throw bad(i, `${app}: needs url (an HTTP check), dns (a name to resolve) or pihole_api (Pi-hole's API)`)
  })
}
