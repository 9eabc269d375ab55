// Finding and ending the lab's own processes by what /proc says about them (argv, parent, pid namespace),
// so a lab left behind by a killed run can be found without trusting its pidfiles.
import { readdirSync, readFileSync } from 'node:fs'

export interface Proc {
  pid: number
  ppid: number
  argv: string[]
  /** Pid in the innermost pid namespace: 1 for a container's init. */
  nsPid: number
}

function readProc(pid: number): Proc | undefined {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1)
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    if (/^State:\s+Z/m.test(status)) return undefined // a zombie is gone for our purposes
    const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1] ?? 0)
    const nsPid = Number(/^NSpid:.*?(\d+)\s*$/m.exec(status)?.[1] ?? pid)
    return { pid, ppid, argv, nsPid }
  } catch {
    return undefined
  }
}

export function processes(): Proc[] {
  const list: Proc[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const p = readProc(Number(entry))
    if (p) list.push(p)
  }
  return list
}

export function alive(pid: number): boolean {
  return readProc(pid) !== undefined
}

/** The process if it is alive and its argv contains every marker (guards against reused pids). */
export function aliveWith(pid: number, markers: readonly string[]): boolean {
  const p = readProc(pid)
  return p !== undefined && markers.every((m) => p.argv.includes(m))
}

/** Clock ticks after boot at which the process started: with the pid, it names one process for good. */
export function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

export function readPidfile(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {} // already gone
}

/** Waits until none of the pids is alive; false if some still are after timeoutMs. */
export async function waitGone(pids: readonly number[], timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs
  while (pids.some(alive)) {
    if (Date.now() > end) return false
    await sleep(50)
  }
  return true
}

/** SIGTERM, then SIGKILL for what is still there after graceMs. */
export async function terminate(pids: readonly number[], graceMs: number): Promise<void> {
  if (pids.length === 0) return
  for (const pid of pids) signal(pid, 'SIGTERM')
  if (await waitGone(pids, graceMs)) return
  for (const pid of pids) signal(pid, 'SIGKILL')
  await waitGone(pids, 5000)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}
