// lib/probes.ts against real servers on 127.0.0.1: HTTP answers judged, DNS answers read, every failure with
// a reason a person can act on, timeouts that hold; the app_checks parser; the final table.
import { createSocket, type Socket } from 'node:dgram'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ProvisionError } from '../../lib/errors.ts'
import { mask } from '../../lib/mask.ts'
import { freePort } from './fakes.ts'
import {
  checkSecretRefs,
  describeNetError,
  formatAppTable,
  judgeHttp,
  jsonContains,
  probeDns,
  probeHttp,
  probePihole,
  runChecks,
  verdicts,
  type ProbeResult,
} from '../../lib/probes.ts'
import { parseAppChecks, type DnsCheck, type HttpCheck, type PiholeCheck } from '../../lib/appchecks.ts'

let http: Server
let base = ''
let flaky = 0
let dns: Socket
let dnsPort = 0
let dnsMode: 'answer' | 'servfail' | 'nxdomain' | 'refused' | 'silent' | 'empty' = 'answer'

beforeAll(async () => {
  http = createServer((req, res) => {
    const send = (status: number, body: string, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'text/plain', ...headers })
      res.end(body)
    }
    switch (req.url) {
      case '/health':
        return send(200, 'Healthy\n')
      case '/unhealthy':
        return send(503, 'Unhealthy')
      case '/degraded':
        return send(200, 'Degraded')
      case '/ping':
        return send(200, '{"res":"pong","version":"2.4.1"}', { 'content-type': 'application/json' })
      case '/ping-wrong':
        return send(200, '{"res":"ping"}', { 'content-type': 'application/json' })
      case '/html':
        return send(200, '<html><body>login</body></html>')
      case '/redirect':
        return send(302, '', { location: '/login' })
      case '/empty':
        return send(204, '')
      case '/slow':
        setTimeout(() => send(200, 'too late'), 2000).unref()
        return
      case '/flaky':
        flaky++
        return flaky === 1 ? send(502, 'Bad Gateway') : send(200, 'up')
      default:
        return send(404, 'not found')
    }
  })
  await new Promise<void>((done) => http.listen(0, '127.0.0.1', done))
  base = `http://127.0.0.1:${(http.address() as AddressInfo).port}`

  dns = createSocket('udp4')
  dns.on('message', (q, peer) => {
    if (dnsMode === 'silent') return
    let end = 12
    while (q[end] !== 0) end += 1 + q[end]
    const question = q.subarray(12, end + 5)
    const rcode = { answer: 0, empty: 0, servfail: 2, nxdomain: 3, refused: 5, silent: 0 }[dnsMode]
    const header = Buffer.alloc(12)
    q.copy(header, 0, 0, 2)
    header.writeUInt16BE(0x8180 | rcode, 2)
    header.writeUInt16BE(1, 4)
    const answer =
      dnsMode === 'answer'
        ? Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 53])
        : Buffer.alloc(0)
    header.writeUInt16BE(answer.length ? 1 : 0, 6)
    dns.send(Buffer.concat([header, question, answer]), peer.port, peer.address)
  })
  await new Promise<void>((done) => dns.bind(0, '127.0.0.1', done))
  dnsPort = dns.address().port
})

afterAll(async () => {
  await new Promise<void>((done) => http.close(() => done()))
  await new Promise<void>((done) => dns.close(done))
})

const get = (path: string, extra: Partial<HttpCheck> = {}): HttpCheck => ({
  kind: 'http',
  app: 'x',
  url: `${base}${path}`,
  timeoutMs: 1500,
  ...extra,
})
const ask = (extra: Partial<DnsCheck> = {}): DnsCheck => ({
  kind: 'dns',
  app: 'pihole',
  server: '127.0.0.1',
  port: dnsPort,
  name: 'google.com',
  type: 'A',
  timeoutMs: 800,
  ...extra,
})

describe('HTTP probes', () => {
  it('a healthy answer is ok, with the status and body shown', async () => {
    const r = await probeHttp(get('/health', { expectBody: 'Healthy' }))
    expect(r).toMatchObject({ app: 'x', ok: true, check: `GET ${base}/health`, detail: 'HTTP 200 Healthy' })
  })

  it('names the status and what the app said when it is unhealthy', async () => {
    expect((await probeHttp(get('/unhealthy', { expectBody: 'Healthy' }))).detail).toBe(
      'HTTP 503 (expected 2xx): Unhealthy',
    )
    expect((await probeHttp(get('/degraded', { expectBody: 'Healthy' }))).detail).toBe(
      'answered "Degraded", expected "Healthy"',
    )
    expect((await probeHttp(get('/redirect'))).detail).toBe('HTTP 302 (expected 2xx) -> /login')
    expect((await probeHttp(get('/health', { expectStatus: 204 }))).detail).toBe('HTTP 200 (expected 204): Healthy')
    expect((await probeHttp(get('/empty', { expectStatus: 204 }))).ok).toBe(true)
  })

  it('checks JSON answers by the keys it names (Immich: {"res":"pong"})', async () => {
    expect((await probeHttp(get('/ping', { expectJson: { res: 'pong' } }))).ok).toBe(true)
    expect((await probeHttp(get('/ping-wrong', { expectJson: { res: 'pong' } }))).detail).toBe(
      'answered {"res":"ping"}, expected {"res":"pong"}',
    )
    expect((await probeHttp(get('/html', { expectJson: { res: 'pong' } }))).detail).toBe(
      'answered "<html><body>login</body></html>", not JSON (expected {"res":"pong"})',
    )
  })

  it('gives up after its timeout, and says so', async () => {
    const t0 = Date.now()
    const r = await probeHttp(get('/slow', { timeoutMs: 300 }))
    const took = Date.now() - t0
    expect(r).toMatchObject({ ok: false, detail: 'no answer within 0.3s' })
    expect(took).toBeGreaterThanOrEqual(290)
    expect(took).toBeLessThan(1500)
  })

  it('says when nothing listens; names resolver and TLS failures (no lookup leaves this machine)', async () => {
    const port = await freePort()
    expect(
      (await probeHttp({ kind: 'http', app: 'x', url: `http://127.0.0.1:${port}/health`, timeoutMs: 1000 })).detail,
    ).toBe(`connection refused by 127.0.0.1:${port}`)
    const err = (code: string, message: string): Error => Object.assign(new Error(message), { code })
    expect(
      describeNetError(err('ENOTFOUND', 'getaddrinfo ENOTFOUND jellyfin.lab.mtgibbs.dev'), 'jellyfin.lab.mtgibbs.dev'),
    ).toBe('cannot resolve jellyfin.lab.mtgibbs.dev (ENOTFOUND)')
    expect(describeNetError(err('CERT_HAS_EXPIRED', 'certificate has expired'), 'immich.lab.mtgibbs.dev')).toBe(
      'TLS: certificate has expired (CERT_HAS_EXPIRED)',
    )
    expect(describeNetError(err('EHOSTUNREACH', 'x'), '203.0.113.55:443')).toBe(
      '203.0.113.55:443 is unreachable (EHOSTUNREACH)',
    )
  })

  it('judges answers without a network (the pure part)', () => {
    expect(judgeHttp({}, 200, 'anything')).toBeUndefined()
    expect(judgeHttp({}, 500, '')).toBe('HTTP 500 (expected 2xx)')
    expect(judgeHttp({ expectBody: 'up' }, 200, '  up\n')).toBeUndefined()
    expect(judgeHttp({}, 503, 'x'.repeat(200))).toBe(`HTTP 503 (expected 2xx): ${'x'.repeat(79)}…`)
    expect(jsonContains({ a: { b: 1, c: 2 }, d: [1, 2] }, { a: { b: 1 }, d: [1, 2] })).toBe(true)
    expect(jsonContains({ a: { b: 1 } }, { a: { b: 2 } })).toBe(false)
    expect(jsonContains({ d: [1, 2, 3] }, { d: [1, 2] })).toBe(false)
  })
})

describe('DNS probes', () => {
  it('an answer from the server named is ok', async () => {
    dnsMode = 'answer'
    expect(await probeDns(ask())).toMatchObject({
      ok: true,
      check: `DNS A google.com @127.0.0.1:${dnsPort}`,
      detail: 'google.com -> 198.51.100.53',
    })
  })

  it('names SERVFAIL, NXDOMAIN, REFUSED and an empty answer', async () => {
    const reasons: Record<string, string> = {}
    for (const mode of ['servfail', 'nxdomain', 'refused', 'empty'] as const) {
      dnsMode = mode
      reasons[mode] = (await probeDns(ask())).detail
    }
    expect(reasons).toEqual({
      servfail: 'the server failed to answer (SERVFAIL)',
      nxdomain: 'no such name (NXDOMAIN)',
      refused: 'the server refused the query (REFUSED)',
      empty: 'no record of that type in the answer',
    })
  })

  it('a server that stays silent times out when told', async () => {
    dnsMode = 'silent'
    const t0 = Date.now()
    const r = await probeDns(ask({ timeoutMs: 400 }))
    const took = Date.now() - t0
    expect(r).toMatchObject({ ok: false, detail: 'no answer within 0.4s' })
    expect(took).toBeGreaterThanOrEqual(390)
    expect(took).toBeLessThan(2000)
  })

  it('nothing on the port: refused, or at worst no answer, never a hang', async () => {
    const port = await freePort()
    const r = await probeDns(ask({ port, timeoutMs: 500 }))
    expect(r.ok).toBe(false)
    expect(['nothing answers DNS there (connection refused)', 'no answer within 0.5s']).toContain(r.detail)
    expect(r.ms).toBeLessThan(2000)
  })
})

describe('runChecks and the app table', () => {
  it('asks a failing check again before calling it failing', async () => {
    flaky = 0
    const [r] = await runChecks([get('/flaky')], { attempts: 2, retryDelayMs: 10 })
    expect(r).toMatchObject({ ok: true, detail: 'HTTP 200 up' })
    flaky = 0
    const [once] = await runChecks([get('/flaky')], { attempts: 1 })
    expect(once.detail).toBe('HTTP 502 (expected 2xx): Bad Gateway')
  })

  it('one verdict per app; the table lists every check with its answer or reason', () => {
    const results: ProbeResult[] = [
      {
        app: 'pihole',
        check: 'DNS A google.com @10.199.55.55:53',
        ok: true,
        detail: 'google.com -> 198.51.100.53',
        ms: 3,
      },
      {
        app: 'jellyfin',
        check: 'GET http://10.199.55.1:8780/apps/jellyfin/health',
        ok: false,
        detail: 'HTTP 503 (expected 2xx): Unhealthy',
        ms: 5,
      },
      { app: 'immich', check: 'GET http://i/api/server/ping', ok: true, detail: 'HTTP 200 {"res":"pong"}', ms: 4 },
      { app: 'immich', check: 'GET http://i/api/other', ok: false, detail: 'no answer within 5s', ms: 5000 },
    ]
    expect(verdicts(results)).toEqual([
      { app: 'pihole', ok: true, reasons: ['google.com -> 198.51.100.53'] },
      { app: 'jellyfin', ok: false, reasons: ['HTTP 503 (expected 2xx): Unhealthy'] },
      { app: 'immich', ok: false, reasons: ['no answer within 5s'] },
    ])
    expect(formatAppTable(results)).toEqual([
      'APP       RESULT   CHECK                                             ANSWER / REASON',
      'pihole    ok       DNS A google.com @10.199.55.55:53                 google.com -> 198.51.100.53 (3 ms)',
      'jellyfin  FAILING  GET http://10.199.55.1:8780/apps/jellyfin/health  HTTP 503 (expected 2xx): Unhealthy',
      'immich    ok       GET http://i/api/server/ping                      HTTP 200 {"res":"pong"} (4 ms)',
      'immich    FAILING  GET http://i/api/other                            no answer within 5s',
    ])
  })
})

describe('app_checks from the inventory', () => {
  const opts = {
    timeoutSec: 5,
    defaultServer: '203.0.113.55',
    resolveServer: (n: string) => (n === 'pi-k3s' ? '203.0.113.55' : n),
  }

  it('reads HTTP and DNS checks, with defaults and inventory host names', () => {
    expect(
      parseAppChecks(
        [
          { app: 'pihole', dns: 'google.com' },
          { app: 'pihole-2', dns: 'example.org', server: 'pi-k3s', port: 5353, type: 'AAAA', timeout: 2 },
          { app: 'jellyfin', url: 'https://jellyfin.lab.mtgibbs.dev/health', expect: 'Healthy' },
          {
            app: 'immich',
            url: 'https://immich.lab.mtgibbs.dev/api/server/ping',
            expect_json: { res: 'pong' },
            expect_status: 200,
            timeout: 0.5,
          },
        ],
        opts,
      ),
    ).toEqual([
      { kind: 'dns', app: 'pihole', server: '203.0.113.55', port: 53, name: 'google.com', type: 'A', timeoutMs: 5000 },
      {
        kind: 'dns',
        app: 'pihole-2',
        server: '203.0.113.55',
        port: 5353,
        name: 'example.org',
        type: 'AAAA',
        timeoutMs: 2000,
      },
      {
        kind: 'http',
        app: 'jellyfin',
        url: 'https://jellyfin.lab.mtgibbs.dev/health',
        expectBody: 'Healthy',
        timeoutMs: 5000,
      },
      {
        kind: 'http',
        app: 'immich',
        url: 'https://immich.lab.mtgibbs.dev/api/server/ping',
        expectJson: { res: 'pong' },
        expectStatus: 200,
        timeoutMs: 500,
      },
    ])
  })

  it('rejects what it cannot run, naming the entry', () => {
    const err = (entry: unknown): string => {
      try {
        parseAppChecks([entry], opts)
      } catch (e) {
        expect(e).toBeInstanceOf(ProvisionError)
        expect((e as ProvisionError).kind).toBe('inventory')
        return (e as ProvisionError).message
      }
      return 'no error'
    }
    expect(err('jellyfin')).toBe('app_checks[0]: expected a map')
    expect(err({ url: 'http://x/' })).toBe('app_checks[0]: needs app: the name shown in the table')
    expect(err({ app: 'a' })).toBe(
      "app_checks[0]: a: needs url (an HTTP check), dns (a name to resolve) or pihole_api (Pi-hole's API)",
    )
    expect(err({ app: 'a', url: 'http://x/', dns: 'x' })).toBe(
      'app_checks[0]: a: one of url, dns or pihole_api, not url and dns',
    )
    expect(err({ app: 'p', pihole_api: 'http://x/api' })).toBe(
      "app_checks[0]: p: pihole_api needs password_ref, the password's secret reference (op://vault/item/field)",
    )
    expect(err({ app: 'p', pihole_api: 'http://x/api', password_ref: 'hunter2' })).toBe(
      "app_checks[0]: p: pihole_api needs password_ref, the password's secret reference (op://vault/item/field)",
    )
    expect(err({ app: 'p', pihole_api: 'x', password_ref: 'op://v/i/f' })).toBe(
      'app_checks[0]: p: pihole_api "x" is not a URL (e.g. http://<Pi-hole\'s address>/api)',
    )
    expect(err({ app: 'p', pihole_api: 'http://x/api', password_ref: 'op://v/i/f', expect: 'y' })).toBe(
      'app_checks[0]: p: expect is not for pihole_api checks',
    )
    expect(err({ app: 'p', url: 'http://x/', password_ref: 'op://v/i/f' })).toBe(
      'app_checks[0]: p: password_ref is for pihole_api checks',
    )
    expect(
      parseAppChecks(
        [{ app: 'pihole', pihole_api: 'http://203.0.113.55/api/', password_ref: 'op://pi-cluster/pihole/password' }],
        opts,
      ),
    ).toEqual([
      {
        kind: 'pihole',
        app: 'pihole',
        api: 'http://203.0.113.55/api',
        passwordRef: 'op://pi-cluster/pihole/password',
        timeoutMs: 5000,
      },
    ])
    expect(err({ app: 'a', url: 'not a url' })).toBe('app_checks[0]: a: url "not a url" is not a URL')
    expect(err({ app: 'a', url: 'ftp://x/' })).toBe('app_checks[0]: a: url must be http:// or https://')
    expect(err({ app: 'a', url: 'http://x/', expect_status: '200' })).toBe(
      'app_checks[0]: a: expect_status must be a status code',
    )
    expect(err({ app: 'a', url: 'http://x/', expect: { res: 'pong' } })).toBe(
      'app_checks[0]: a: expect must be a string (the whole body)',
    )
    expect(err({ app: 'a', url: 'http://x/', server: 'pi-k3s' })).toBe('app_checks[0]: a: server is for dns checks')
    expect(err({ app: 'a', dns: 'x', expect: 'y' })).toBe('app_checks[0]: a: expect is for url checks')
    expect(err({ app: 'a', dns: 'x', port: 70000 })).toBe('app_checks[0]: a: port must be a port number')
    expect(err({ app: 'a', dns: 'x', type: 'MX' })).toBe('app_checks[0]: a: type must be A or AAAA')
    expect(err({ app: 'a', dns: 'x', timeout: 0 })).toBe('app_checks[0]: a: timeout must be a number of seconds')
    expect(err({ app: 'a', url: 'http://x/', expct: 'typo' })).toBe('app_checks[0]: unknown key expct')
    expect(() => parseAppChecks([{ app: 'a', dns: 'x' }], { timeoutSec: 5 })).toThrow(
      'app_checks[0]: a: no server to ask',
    )
  })
})

describe('Pi-hole v6 API probe', () => {
  // A Pi-hole v6 API as the owner's answers: sessions by X-FTL-SID, the real shapes of /api/auth and /api/dns/blocking.
  const PASSWORD = 'correct horse battery staple'
  const seen: string[] = []
  const sessions = new Set<string>()
  let blocking: { blocking: string; timer: number | null } | 'error' = { blocking: 'enabled', timer: null }
  let server: Server
  let api = ''
  let n = 0
  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = ''
      req.on('data', (d: Buffer) => (body += d.toString()))
      req.on('end', () => {
        const sid = typeof req.headers['x-ftl-sid'] === 'string' ? req.headers['x-ftl-sid'] : ''
        seen.push(`${req.method} ${req.url}${sid ? ` sid=${sid}` : ''}${body ? ` ${body}` : ''}`)
        const json = (status: number, v: unknown) => {
          res.writeHead(status, { 'content-type': 'application/json' })
          res.end(JSON.stringify(v))
        }
        if (req.method === 'POST' && req.url === '/api/auth') {
          if ((JSON.parse(body) as { password?: string }).password !== PASSWORD)
            return json(401, {
              session: { valid: false, totp: false, sid: null, validity: -1, message: 'password incorrect' },
              took: 0.001,
            })
          const id = `sid-${++n}-Zm9vYmFy`
          sessions.add(id)
          return json(200, {
            session: { valid: true, totp: false, sid: id, csrf: 'x', validity: 300, message: 'password correct' },
            took: 0.01,
          })
        }
        if (!sessions.has(sid))
          return json(401, { error: { key: 'unauthorized', message: 'Unauthorized', hint: null }, took: 0 })
        if (req.method === 'GET' && req.url === '/api/dns/blocking')
          return blocking === 'error'
            ? json(500, { error: { key: 'ftl', message: 'FTL not ready' } })
            : json(200, { ...blocking, took: 0 })
        if (req.method === 'DELETE' && req.url === '/api/auth') {
          sessions.delete(sid)
          res.writeHead(204)
          return res.end()
        }
        json(404, { error: { key: 'not_found' } })
      })
    })
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done))
    api = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api`
  })
  afterAll(() => new Promise<void>((done) => server.close(() => done())))

  const check = (): PiholeCheck => ({
    kind: 'pihole',
    app: 'pihole',
    api,
    passwordRef: 'op://pi-cluster/pihole/password',
    timeoutMs: 2000,
  })
  const run = async (password: string) => {
    seen.length = 0
    const r = await probePihole(check(), password)
    return { r, requests: [...seen] }
  }

  it('logs in, reads the blocking status with the session, logs out; the password and the session id show nowhere', async () => {
    blocking = { blocking: 'enabled', timer: null }
    const { r, requests } = await run(PASSWORD)
    expect(r).toMatchObject({
      app: 'pihole',
      ok: true,
      detail: 'blocking enabled',
      check: `Pi-hole API ${api}: login, blocking, logout`,
    })
    const sid = /sid=(\S+)/.exec(requests[1])![1]
    expect(requests).toEqual([
      `POST /api/auth {"password":"${PASSWORD}"}`,
      `GET /api/dns/blocking sid=${sid}`,
      `DELETE /api/auth sid=${sid}`,
    ])
    expect(sessions.size).toBe(0)
    const shown = JSON.stringify(r) + formatAppTable([r]).join('\n')
    expect(shown).not.toContain(PASSWORD)
    expect(shown).not.toContain(sid)
    expect(mask(`X-FTL-SID: ${sid}`)).not.toContain(sid) // the session id is masked like a secret wherever it might be printed
  })

  it('a refused password names its reference; no session is left behind', async () => {
    const { r, requests } = await run('wrong')
    expect(r).toMatchObject({
      ok: false,
      detail: 'the password at op://pi-cluster/pihole/password was refused (HTTP 401: password incorrect)',
    })
    expect(requests).toEqual(['POST /api/auth {"password":"wrong"}'])
  })

  it('blocking disabled (for a while) or an API error fails the check, and the session is still closed', async () => {
    blocking = { blocking: 'disabled', timer: 299.6 }
    expect((await run(PASSWORD)).r).toMatchObject({ ok: false, detail: 'blocking is disabled (for 300 s more)' })
    expect(sessions.size).toBe(0)
    blocking = 'error'
    const { r, requests } = await run(PASSWORD)
    expect(r).toMatchObject({
      ok: false,
      detail: 'blocking status: HTTP 500: {"error":{"key":"ftl","message":"FTL not ready"}}',
    })
    expect(requests.at(-1)).toMatch(/^DELETE \/api\/auth sid=/)
    expect(sessions.size).toBe(0)
    blocking = { blocking: 'enabled', timer: null }
  })

  it('nothing listening: a login reason, not a hang', async () => {
    const r = await probePihole({ ...check(), api: `http://127.0.0.1:${await freePort()}/api` }, PASSWORD)
    expect(r.ok).toBe(false)
    expect(r.detail).toMatch(/^login: connection refused by 127\.0\.0\.1:\d+$/)
  })

  it('runChecks reads the password from the secrets store by its reference, once per probe; the refs are listed for resolving up front', async () => {
    const asked: string[] = []
    const [r] = await runChecks([check()], { secret: (ref) => (asked.push(ref), PASSWORD) })
    expect(r.ok).toBe(true)
    expect(asked).toEqual(['op://pi-cluster/pihole/password'])
    expect(checkSecretRefs([check(), check(), { kind: 'http', app: 'x', url: 'http://x/', timeoutMs: 1 }])).toEqual([
      'op://pi-cluster/pihole/password',
    ])
  })
})
