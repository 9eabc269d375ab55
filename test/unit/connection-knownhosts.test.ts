// SshConnection and known_hosts, against a real ssh2 server on 127.0.0.1: a first-use key in check
// mode (accepted, not written), the recorded default, and warnings for malformed known_hosts lines
// (reported once per file and line however many hosts and reconnects share the file).
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import ssh2 from 'ssh2'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { resetKnownHostsWarnings, SshConnection, type SshTarget } from '../../lib/connection.ts'
import { ProvisionError } from '../../lib/errors.ts'
import { fingerprint } from '../../lib/knownhosts.ts'

interface HostKey {
  private: string
  /** The blob ssh2's hostVerifier receives. */
  blob: Buffer
  /** "ssh-ed25519 AAAA..." as in known_hosts. */
  line: string
}

function hostKey(): HostKey {
  const k = ssh2.utils.generateKeyPairSync('ed25519')
  const [type, b64] = k.public.trim().split(/\s+/)
  return { private: k.private, blob: Buffer.from(b64, 'base64'), line: `${type} ${b64}` }
}

/** An sshd stand-in on 127.0.0.1: any login is accepted, every command prints "ok" and exits 0. */
async function startServer(key: HostKey, port = 0): Promise<{ port: number; close: () => Promise<void> }> {
  const clients = new Set<ssh2.Connection>()
  const server = new ssh2.Server({ hostKeys: [key.private] }, (client) => {
    clients.add(client)
    client.on('close', () => clients.delete(client))
    client.on('error', () => undefined) // a client that refuses our host key just hangs up
    client.on('authentication', (ctx) => ctx.accept())
    client.on('session', (accept) => {
      accept().on('exec', (acceptExec) => {
        const ch = acceptExec()
        ch.write('ok\n')
        ch.exit(0)
        ch.end()
      })
    })
  })
  await new Promise<void>((done) => server.listen(port, '127.0.0.1', done))
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((done) => {
        for (const c of clients) c.end()
        server.close(() => done())
      }),
  }
}

let dir: string
let keyA: HostKey
let keyB: HostKey
const stops: Array<() => Promise<void>> = []
const conns: SshConnection[] = []

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'conn-knownhosts-'))
  keyA = hostKey()
  keyB = hostKey()
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))
beforeEach(() => resetKnownHostsWarnings())
afterEach(async () => {
  await Promise.all(conns.splice(0).map((c) => c.close()))
  await Promise.all(stops.splice(0).map((stop) => stop()))
})

async function server(key: HostKey, port = 0): Promise<number> {
  const s = await startServer(key, port)
  stops.push(s.close)
  return s.port
}

function connection(port: number, knownHostsFile: string, more: Partial<SshTarget> = {}): SshConnection {
  const c = new SshConnection({
    host: 'pi',
    address: '127.0.0.1',
    port,
    user: 'pi',
    knownHostsFile,
    trustNewHostKeys: false,
    connectTimeoutSec: 5,
    ...more,
  })
  conns.push(c)
  return c
}

async function runOk(c: SshConnection): Promise<void> {
  expect(await c.run('true', { sudo: false })).toEqual({ code: 0, stdout: 'ok\n', stderr: '' })
}

describe('a host key seen for the first time', () => {
  it('recordNewHostKeys false (check mode): accepted for this connection, nothing written, the callback told "not recorded"', async () => {
    const port = await server(keyA)
    const kh = join(dir, 'check-mode', 'ssh', 'known_hosts')
    const told: Array<[string, boolean]> = []
    const c = connection(port, kh, {
      trustNewHostKeys: true,
      recordNewHostKeys: false,
      onNewHostKey: (fp, recorded) => told.push([fp, recorded]),
    })

    await runOk(c)
    expect(told).toEqual([[fingerprint(keyA.blob), false]])
    expect(existsSync(join(dir, 'check-mode'))).toBe(false) // not even the directory

    // A reconnect (after a reboot, a lost connection) meets the same key: accepted, not announced again.
    await c.reset()
    await runOk(c)
    expect(told).toHaveLength(1)
    expect(existsSync(join(dir, 'check-mode'))).toBe(false)
  })

  it('recordNewHostKeys false: a different key on a reconnect is refused as changed, though the file never had the first', async () => {
    const first = await startServer(keyA)
    const kh = join(dir, 'check-mode-changed', 'known_hosts')
    const c = connection(first.port, kh, { trustNewHostKeys: true, recordNewHostKeys: false })
    await runOk(c)
    await c.reset()
    await first.close()
    await server(keyB, first.port) // the same address and port, another key

    const err = await c.run('true', { sudo: false }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ProvisionError)
    expect((err as ProvisionError).kind).toBe('hostkey')
    expect((err as ProvisionError).message).toContain('HOST KEY CHANGED')
    expect((err as ProvisionError).message).toContain(fingerprint(keyA.blob))
    expect((err as ProvisionError).message).toContain(fingerprint(keyB.blob))
    expect(existsSync(join(dir, 'check-mode-changed'))).toBe(false)
  })

  it('by default: recorded in known_hosts, the callback told "recorded"', async () => {
    const port = await server(keyA)
    const kh = join(dir, 'record', 'known_hosts')
    const told: Array<[string, boolean]> = []
    const c = connection(port, kh, {
      trustNewHostKeys: true,
      onNewHostKey: (fp, recorded) => told.push([fp, recorded]),
    })
    await runOk(c)
    expect(told).toEqual([[fingerprint(keyA.blob), true]])
    expect(readFileSync(kh, 'utf8')).toBe(`[127.0.0.1]:${port} ${keyA.line}\n`)
  })

  it('a one-parameter callback (what the runner passes) still works', async () => {
    const port = await server(keyA)
    const fps: string[] = []
    const onNewHostKey = (fp: string) => fps.push(fp)
    await runOk(
      connection(port, join(dir, 'one-param', 'known_hosts'), {
        trustNewHostKeys: true,
        recordNewHostKeys: false,
        onNewHostKey,
      }),
    )
    expect(fps).toEqual([fingerprint(keyA.blob)])
  })

  it('without trustNewHostKeys: refused whatever recordNewHostKeys says, nothing written', async () => {
    const port = await server(keyA)
    const kh = join(dir, 'untrusted', 'known_hosts')
    let told = 0
    const c = connection(port, kh, { recordNewHostKeys: false, onNewHostKey: () => told++ })
    await expect(c.run('true', { sudo: false })).rejects.toMatchObject({
      kind: 'hostkey',
      message: expect.stringContaining('unknown host key'),
    })
    expect(told).toBe(0)
    expect(existsSync(join(dir, 'untrusted'))).toBe(false)
  })
})

describe('malformed known_hosts lines', () => {
  function fileWithBadLines(name: string, port: number): string {
    const kh = join(dir, name)
    const b64 = keyA.line.split(' ')[1]
    writeFileSync(
      kh,
      [
        `garbage`,
        `[127.0.0.1]:${port} ${keyA.line}`,
        `@bogus pi ${keyA.line}`,
        `other ssh-ed25519 ${b64.slice(0, -2)}`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    )
    return kh
  }

  it('do not stop a host whose own line is good, and each is reported once however many hosts and reconnects share the file', async () => {
    const port = await server(keyA)
    const kh = fileWithBadLines('kh-bad-lines', port)
    const heard: string[] = []
    const onKnownHostsWarning = (m: string) => heard.push(m)
    // A host without a listener first: it does not use up the reports.
    await runOk(connection(port, kh))
    const a = connection(port, kh, { host: 'pi-a', onKnownHostsWarning })
    const b = connection(port, kh, { host: 'pi-b', onKnownHostsWarning })
    await Promise.all([runOk(a), runOk(b)])
    await a.reset()
    await runOk(a)

    const expected = [
      `${kh}:1: skipped a malformed line (missing the key type and key)`,
      `${kh}:3: skipped a malformed line (unknown marker @bogus (expected @revoked or @cert-authority))`,
      `${kh}:4: skipped a malformed line (bad base64 in the key)`,
    ]
    expect(heard).toEqual(expected)
    for (const m of heard) expect(m).not.toContain(keyA.line.split(' ')[1].slice(0, 16))

    resetKnownHostsWarnings()
    await a.reset()
    await runOk(a)
    expect(heard).toEqual([...expected, ...expected])
  })

  it('the same line number in another file is reported for that file', async () => {
    const port = await server(keyA)
    const kh1 = fileWithBadLines('kh-one', port)
    const kh2 = fileWithBadLines('kh-two', port)
    const heard: string[] = []
    await runOk(connection(port, kh1, { onKnownHostsWarning: (m) => heard.push(m) }))
    await runOk(connection(port, kh2, { onKnownHostsWarning: (m) => heard.push(m) }))
    expect(heard.map((m) => m.split(': ')[0])).toEqual([
      `${kh1}:1`,
      `${kh1}:3`,
      `${kh1}:4`,
      `${kh2}:1`,
      `${kh2}:3`,
      `${kh2}:4`,
    ])
  })

  it('with trustNewHostKeys, a new host is still recorded into a file that has bad lines (they stay as they were)', async () => {
    const port = await server(keyA)
    const kh = join(dir, 'kh-bad-record')
    const before = `garbage\n@bogus pi ${keyA.line}\n`
    writeFileSync(kh, before, { mode: 0o600 })
    const heard: string[] = []
    await runOk(connection(port, kh, { trustNewHostKeys: true, onKnownHostsWarning: (m) => heard.push(m) }))
    expect(readFileSync(kh, 'utf8')).toBe(`${before}[127.0.0.1]:${port} ${keyA.line}\n`)
    expect(heard).toHaveLength(2)
  })
})
