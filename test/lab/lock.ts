// One changing lab command at a time: an in-process queue plus a lock file in the state dir holding the
// holder's pid and start time. A lock whose holder is gone (a killed run) is taken over.
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { LAB_LOCK_FILE } from './paths.ts'
import { sleep, startTime } from './procs.ts'
import { requireRootOnLinux } from './run.ts'

let queue: Promise<unknown> = Promise.resolve()

/** Runs fn when no other lab command (in this process or another) is changing the lab. */
export function locked<T>(fn: () => Promise<T>): Promise<T> {
  const next = queue.then(() => withLockFile(LAB_LOCK_FILE, fn))
  queue = next.catch(() => {})
  return next
}

/** The lock of what all labs on this machine share (ip_forward): held briefly, inside a lab's own lock. */
export const MACHINE_LOCK_FILE = '/run/pi-lab/lock'

/** Runs fn when no lab (of any state dir) is changing what the labs share. Not re-entrant; call inside locked(). */
export function machineLocked<T>(fn: () => Promise<T>): Promise<T> {
  return withLockFile(MACHINE_LOCK_FILE, fn)
}

async function withLockFile<T>(lockFile: string, fn: () => Promise<T>): Promise<T> {
  requireRootOnLinux()
  mkdirSync(dirname(lockFile), { recursive: true })
  let waiting = false
  for (;;) {
    try {
      // pid and start time: after a crash the pid alone may already belong to another process.
      writeFileSync(lockFile, `${process.pid} ${startTime(process.pid)}\n`, { flag: 'wx' })
      break
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    }
    const [pid, started] = readText(lockFile).trim().split(' ')
    const holder = Number(pid) || undefined
    // No pid yet may be a lock being written this instant: only an old empty one is stale.
    const stale =
      holder === undefined
        ? Date.now() - mtimeMs(lockFile) > 5000
        : holder === process.pid || startTime(holder) !== started
    if (stale) {
      rmSync(lockFile, { force: true })
      continue
    }
    if (!waiting && holder !== undefined)
      process.stderr.write(`lab: waiting for another lab command (pid ${holder}) to finish\n`)
    waiting = holder !== undefined
    await sleep(200)
  }
  try {
    return await fn()
  } finally {
    rmSync(lockFile, { force: true })
  }
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

function mtimeMs(file: string): number {
  try {
    return statSync(file).mtimeMs
  } catch {
    return 0
  }
}
