// waitForSshBanner: how the reboot handler notices a host's sshd is back, against local TCP servers.
import { createServer, type Server } from 'node:net'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { waitForSshBanner } from '../../lib/ssh-banner.ts'
import { freePort } from './fakes.ts'

const servers: Server[] = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((done) => s.close(() => done()))))
})

/** A server on 127.0.0.1 that greets every connection with `greeting`. */
async function greeter(greeting: string, port = 0): Promise<number> {
  const s = createServer((c) => {
    c.resume() // read what the client says, as sshd does, so the connection can close
    c.end(greeting)
  })
  servers.push(s)
  await new Promise<void>((done) => s.listen(port, '127.0.0.1', done))
  return (s.address() as AddressInfo).port
}

describe('waiting for sshd to greet again', () => {
  it('true as soon as something answers like sshd; it greets back before leaving (no scanner-like silent close)', async () => {
    let heard = ''
    const s = createServer((c) => {
      c.on('data', (d: Buffer) => (heard += d.toString()))
      c.end('SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n')
    })
    servers.push(s)
    await new Promise<void>((done) => s.listen(0, '127.0.0.1', done))
    expect(await waitForSshBanner('127.0.0.1', (s.address() as AddressInfo).port, Date.now() + 5000)).toBe(true)
    await new Promise<void>((done) => s.close(() => done())) // every connection was closed by both sides
    servers.pop()
    expect(heard).toBe('SSH-2.0-pi-provision-probe\r\n')
  })

  it('keeps probing while the port is closed, and is true once sshd is back (a reboot)', async () => {
    const port = await freePort()
    const back = new Promise((r) => setTimeout(r, 300)).then(() => greeter('SSH-2.0-OpenSSH_9.2p1\r\n', port))
    expect(await waitForSshBanner('127.0.0.1', port, Date.now() + 10_000, { intervalMs: 50 })).toBe(true)
    await back
  })

  it('false at the deadline when nothing listens, or what listens is not sshd', async () => {
    expect(await waitForSshBanner('127.0.0.1', await freePort(), Date.now() + 300, { intervalMs: 50 })).toBe(false)
    const http = await greeter('HTTP/1.1 400 Bad Request\r\n\r\n')
    expect(await waitForSshBanner('127.0.0.1', http, Date.now() + 300, { intervalMs: 50 })).toBe(false)
  })
})
