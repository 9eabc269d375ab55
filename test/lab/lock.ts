// One changing lab command at a time: an in-process queue plus a lock file in the state dir holding the
// holder's pid and start time. A lock whose holder is gone (a killed run) is taken over.
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { LAB_DIR, LAB_LOCK_FILE } from './paths.ts'
import { sleep, startTime } from './procs.ts'
import { requireRootOnLinux } from './run.ts'

let queue: Promise<unknown> = Promise.resolve()

/** Runs fn when no other lab command (in this process or another) is changing the lab. */
export function locked<T>(fn: () => Promise<T>): Promise<T> {
  const next = queue.then(() => withLockFile(fn))
  queue = next.catch(() => {})
  return next
}

async function withLockFile<T>(fn: () => Promise<T>): Promise<T> {
  requireRootOnLinux()
  mkdirSync(LAB_DIR, { recursive: true })
  let waiting = false
  for (;;) {
    try {
      // pid and start time: after a crash the pid alone may already belong to another process.
      writeFileSync(LAB_LOCK_FILE, `${process.pid} ${startTime(process.pid)}\n`, { flag: 'wx' })
      break
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    }
    const [pid, started] = readText(LAB_LOCK_FILE).trim().split(' ')
    const holder = Number(pid) || undefined
    // No pid yet may be a lock being written this instant: only an old empty one is stale.
    const stale =
      holder === undefined
        ? Date.now() - mtimeMs(LAB_LOCK_FILE) > 5000
        : holder === process.pid || startTime(holder) !== started
    if (stale) {
      rmSync(LAB_LOCK_FILE, { force: true })
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
    rmSync(LAB_LOCK_FILE, { force: true })
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
