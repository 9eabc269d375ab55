// The lab's network: its bridge (pilab0 by default) with the controller at .1, NAT so apt works inside hosts,
// stable host addresses, the host-side veth that `cut`/`heal` unplug, and the SSH-banner probe. Two labs (the
// user's and the tests') can be up at once: each has its own bridge, subnet and rules naming them; only
// ip_forward is one setting for the whole machine, saved by the first lab up and restored by the last one down.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { connect } from 'node:net'
import {
  FIRST_FREE_OCTET,
  FIXED_OCTETS,
  LAB_ADDRESSES_FILE,
  LAB_BRIDGE,
  LAB_BRIDGE_IP,
  LAB_DIR,
  LAB_IP_FORWARD_FILE,
  LAB_SUBNET,
  IP_FORWARD_SAVED,
  USER_LAB,
  hostPaths,
} from './paths.ts'
import { machineLocked } from './lock.ts'
import { LabError, run, which } from './run.ts'
import { sleep } from './procs.ts'

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward'
const NAT_RULE = ['POSTROUTING', '-s', `${LAB_SUBNET}.0/24`, '!', '-o', LAB_BRIDGE, '-j', 'MASQUERADE']
// Accept forwarding to and from the bridge even where the FORWARD policy is DROP (e.g. Docker installed).
const FORWARD_RULES = [
  ['FORWARD', '-i', LAB_BRIDGE, '-m', 'comment', '--comment', 'pi-lab', '-j', 'ACCEPT'],
  ['FORWARD', '-o', LAB_BRIDGE, '-m', 'comment', '--comment', 'pi-lab', '-j', 'ACCEPT'],
]

/** A host's address: fixed for the three real names, else the lowest free from .100, remembered. */
export function hostAddress(name: string): string {
  hostPaths(name) // validates the name
  const fixed = FIXED_OCTETS[name]
  if (fixed !== undefined) return `${LAB_SUBNET}.${fixed}`
  const table = readAddresses()
  if (table[name] === undefined) {
    const used = new Set([...Object.values(FIXED_OCTETS), ...Object.values(table)])
    let octet = FIRST_FREE_OCTET
    while (used.has(octet)) octet++
    if (octet > 254) throw new LabError(`no free address left in ${LAB_SUBNET}.0/24 for ${name}`)
    table[name] = octet
    mkdirSync(LAB_DIR, { recursive: true })
    writeFileSync(LAB_ADDRESSES_FILE, JSON.stringify(table, null, 2) + '\n')
  }
  return `${LAB_SUBNET}.${table[name]}`
}

function readAddresses(): Record<string, number> {
  try {
    return JSON.parse(readFileSync(LAB_ADDRESSES_FILE, 'utf8')) as Record<string, number>
  } catch {
    return {}
  }
}

interface IpLink {
  ifindex: number
  ifname: string
  flags: string[]
  master?: string
  address?: string
}

/**
 * Every lab's bridge has a fixed MAC (see networkUp) starting with these octets, followed by its subnet's: that is
 * how a lab tells the bridges of other labs (another state dir) on this machine.
 */
const LAB_BRIDGE_MAC_PREFIX = '02:50:4c:'

function bridgeMac(): string {
  return (
    LAB_BRIDGE_MAC_PREFIX +
    LAB_SUBNET.split('.')
      .map((o) => Number(o).toString(16).padStart(2, '0'))
      .join(':')
  )
}

/** Bridges of other labs that are up on this machine now (any state dir, this code's or an older one's). */
export async function otherLabBridges(): Promise<string[]> {
  return (await links())
    .filter((l) => l.ifname !== LAB_BRIDGE && l.address?.startsWith(LAB_BRIDGE_MAC_PREFIX))
    .map((l) => l.ifname)
}

interface IpAddr {
  ifname: string
  addr_info: { local: string; prefixlen: number }[]
}

async function links(): Promise<IpLink[]> {
  return JSON.parse((await run('ip', ['-j', 'link', 'show'])).stdout) as IpLink[]
}

/**
 * Whether the controller holds the bridge address. Probe lab addresses only when it does: without the
 * bridge, packets to them would follow the default route off this machine.
 */
export async function bridgeAddressed(): Promise<boolean> {
  const r = await run('ip', ['-j', '-4', 'addr', 'show', 'dev', LAB_BRIDGE], { allowFail: true })
  if (r.code !== 0) return false
  return (JSON.parse(r.stdout) as IpAddr[]).some((a) => a.addr_info.some((i) => i.local === LAB_BRIDGE_IP))
}

export async function bridgeState(): Promise<'up' | 'down' | 'missing'> {
  const link = (await links()).find((l) => l.ifname === LAB_BRIDGE)
  if (!link) return 'missing'
  return link.flags.includes('UP') ? 'up' : 'down'
}

/** Bridge, address, NAT and forwarding; each step checks first, so it also repairs a half-made lab. */
export async function networkUp(): Promise<void> {
  const addrs = JSON.parse((await run('ip', ['-j', '-4', 'addr', 'show'])).stdout) as IpAddr[]
  for (const a of addrs) {
    if (a.ifname === LAB_BRIDGE) continue
    const clash = a.addr_info.find((i) => i.local.startsWith(`${LAB_SUBNET}.`))
    if (clash)
      throw new LabError(
        `${LAB_SUBNET}.0/24 is already used by ${a.ifname} (${clash.local}): set PI_LAB_SUBNET to another /24`,
      )
  }
  const mine = addrs.find((a) => a.ifname === LAB_BRIDGE)?.addr_info ?? []
  // Another lab's bridge (another subnet) under this name: joining it would put both labs' hosts on one wire.
  const foreign = mine.find((i) => i.local !== LAB_BRIDGE_IP)
  if (foreign)
    throw new LabError(
      `bridge ${LAB_BRIDGE} already has ${foreign.local}, not ${LAB_BRIDGE_IP}: another lab uses it; set PI_LAB_BRIDGE`,
    )
  if ((await bridgeState()) === 'missing') {
    // A fixed MAC: by default a bridge takes the lowest MAC of its ports, so the gateway's MAC would change
    // under the hosts' ARP caches whenever a host is cut, stopped or started.
    await run('ip', ['link', 'add', LAB_BRIDGE, 'address', bridgeMac(), 'type', 'bridge'])
  }
  if (!mine.some((i) => i.local === LAB_BRIDGE_IP)) {
    await run('ip', ['addr', 'add', `${LAB_BRIDGE_IP}/24`, 'dev', LAB_BRIDGE])
  }
  await run('ip', ['link', 'set', LAB_BRIDGE, 'up'])
  await ensureRule('nat', NAT_RULE)
  for (const rule of FORWARD_RULES) await ensureRule('filter', rule)
  await machineLocked(async () => {
    // Save the old value before changing it, so a run killed in between still restores the original. A lab
    // already up saved it (and set 1): the value now is then not the original and is not saved.
    if (!existsSync(IP_FORWARD_SAVED)) {
      // A lab brought up by an older version of this code saved it in its own state dir (this one's or, up now
      // beside this one, the user's lab's).
      const legacy = [LAB_IP_FORWARD_FILE, join(USER_LAB.dir, 'ip_forward.saved')].find((f) => existsSync(f))
      writeAtomic(IP_FORWARD_SAVED, readFileSync(legacy ?? IP_FORWARD, 'utf8'))
    }
    rmSync(LAB_IP_FORWARD_FILE, { force: true })
    writeFileSync(IP_FORWARD, '1\n')
  })
}

/** Undoes networkUp; safe to run when some or all of it is already gone. */
export async function networkDown(): Promise<void> {
  if ((await bridgeState()) !== 'missing') await run('ip', ['link', 'del', LAB_BRIDGE])
  if (which('iptables')) {
    // without iptables installed there is no rule to delete
    await deleteRule('nat', NAT_RULE)
    for (const rule of FORWARD_RULES) await deleteRule('filter', rule)
  }
  await machineLocked(async () => {
    if (existsSync(LAB_IP_FORWARD_FILE)) {
      if (!existsSync(IP_FORWARD_SAVED)) writeAtomic(IP_FORWARD_SAVED, readFileSync(LAB_IP_FORWARD_FILE, 'utf8'))
      rmSync(LAB_IP_FORWARD_FILE, { force: true })
    }
    // Another lab still up needs forwarding for its NAT: the last lab down restores the original.
    if (!existsSync(IP_FORWARD_SAVED) || (await otherLabBridges()).length > 0) return
    writeFileSync(IP_FORWARD, readFileSync(IP_FORWARD_SAVED, 'utf8'))
    rmSync(IP_FORWARD_SAVED)
  })
}

function writeAtomic(file: string, content: string): void {
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(`${file}.tmp-${process.pid}`, content)
  renameSync(`${file}.tmp-${process.pid}`, file)
}

export async function natRulePresent(): Promise<boolean> {
  return (await run('iptables', ['-t', 'nat', '-C', ...NAT_RULE], { allowFail: true })).code === 0
}

async function ensureRule(table: string, rule: readonly string[]): Promise<void> {
  if ((await run('iptables', ['-t', table, '-C', ...rule], { allowFail: true })).code === 0) return
  await run('iptables', ['-t', table, table === 'nat' ? '-A' : '-I', ...rule])
}

async function deleteRule(table: string, rule: readonly string[]): Promise<void> {
  // A crashed run may have added a rule twice: delete until none is left.
  while ((await run('iptables', ['-t', table, '-C', ...rule], { allowFail: true })).code === 0) {
    await run('iptables', ['-t', table, '-D', ...rule])
  }
}

/**
 * The controller-side end of a container's veth. Found through the peer index of the container's host0
 * (not by the name vb-NAME, which systemd-nspawn shortens for long machine names).
 */
export async function hostLink(leader: number): Promise<IpLink | undefined> {
  const r = await run('nsenter', ['-t', String(leader), '-n', 'ip', '-o', 'link', 'show', 'host0'], { allowFail: true })
  const peer = /host0@if(\d+)/.exec(r.stdout)?.[1]
  if (!peer) return undefined
  return (await links()).find((l) => l.ifindex === Number(peer))
}

/** Cut: the cable is out (the host sees no carrier). Heal: back in, on the bridge. */
export async function setLinkConnected(link: IpLink, connected: boolean): Promise<void> {
  if (connected) await run('ip', ['link', 'set', link.ifname, 'master', LAB_BRIDGE, 'up'])
  else await run('ip', ['link', 'set', link.ifname, 'down'])
}

export function linkConnected(link: IpLink): boolean {
  return link.flags.includes('UP') && link.master === LAB_BRIDGE
}

/** One attempt: the SSH banner ("SSH-2.0-...") from address:22, or undefined. */
export function sshBanner(address: string, timeoutMs = 1500): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ host: address, port: 22 })
    let data = ''
    const done = (banner: string | undefined): void => {
      socket.destroy()
      resolve(banner)
    }
    socket.setTimeout(timeoutMs, () => done(undefined))
    socket.on('error', () => done(undefined))
    socket.on('data', (b: Buffer) => {
      data += b.toString('latin1')
      if (data.includes('\n')) done(data.startsWith('SSH-') ? data.trim() : undefined)
    })
    socket.on('end', () => done(undefined))
  })
}

export async function waitForSsh(address: string, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    if (await sshBanner(address)) return true
    await sleep(250)
  }
  return false
}
