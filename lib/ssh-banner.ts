// Whether sshd answers at host:port yet (its "SSH-" greeting), probed without logging in: how a reboot is waited
// out; and the TCP socket an SSH connection is made on (no Nagle: SSH sends small packets both ways).

import { connect as tcpConnect, type Socket } from 'node:net'

/**
 * Resolves true once something at host:port greets like sshd ("SSH-"), false at the deadline (epoch ms). The
 * probes overlap, a new one every intervalMs, each living up to probeMs: a SYN sent while a rebooting host was
 * down is lost, and waiting for its retransmit (1 s, then 3 s) would add that much to every reboot.
 */
export function waitForSshBanner(
  host: string,
  port: number,
  deadline: number,
  opts: { intervalMs?: number; probeMs?: number } = {},
): Promise<boolean> {
  const intervalMs = opts.intervalMs ?? 200
  const probeMs = opts.probeMs ?? 2000
  return new Promise((resolve) => {
    const open = new Set<Socket>()
    let done = false
    const finish = (ok: boolean) => {
      if (done) return
      done = true
      clearInterval(every)
      clearTimeout(end)
      for (const s of open) s.destroy()
      resolve(ok)
    }
    const probe = () => {
      const s = tcpConnect({ host, port, noDelay: true })
      open.add(s)
      const giveUp = setTimeout(() => s.destroy(), probeMs)
      s.once('data', (d: Buffer) => {
        if (!d.toString('latin1').startsWith('SSH-')) return s.destroy()
        // Greet back before leaving: sshd then logs a plain closed connection, not a scanner that never spoke
        // (which fail2ban's aggressive mode and sshguard count against the address).
        s.end('SSH-2.0-pi-provision-probe\r\n')
        open.delete(s)
        finish(true)
      })
      s.on('error', () => undefined) // refused or unreachable: the next probe tries again
      s.once('close', () => {
        clearTimeout(giveUp)
        open.delete(s)
      })
    }
    const every = setInterval(probe, intervalMs)
    const end = setTimeout(() => finish(false), Math.max(0, deadline - Date.now()))
    probe()
  })
}

/**
 * The TCP connection, opened here so TCP_NODELAY is on from the first packet: SSH is many small
 * request/response packets, and Nagle + delayed ACKs otherwise add ~40-90 ms to the handshake and to every command.
 */
export function openSocket(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = tcpConnect({ host, port, noDelay: true })
    const timer = setTimeout(() => {
      sock.destroy()
      reject(Object.assign(new Error(`Timed out while waiting for handshake`), { code: 'ETIMEDOUT' }))
    }, timeoutMs)
    sock.once('connect', () => {
      clearTimeout(timer)
      resolve(sock)
    })
    sock.once('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
  })
}
