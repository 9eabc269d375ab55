// What a run cost on the lab hosts, seen from the hosts' side: every process started in each host while the run
// ran (fork or clone that is not a thread, from the kernel's task:task_newtask tracepoint) and every program
// executed (sched:sched_process_exec), kubectl, flux and curl among them. perf records the whole machine; a task
// belongs to a host when its pid namespace is the host container's (the tasks alive at the start) or its parent
// does (the tasks made during the run). Root and perf only; without them the bench says so and goes on.

import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { leaderPid } from '../test/lab/host.ts'

export interface HostProcesses {
  /** Processes started (not threads). */
  processes: number
  /** Programs executed. */
  execs: number
  kubectl: number
  flux: number
  curl: number
}

const CLONE_THREAD = 0x10000

export function perfAvailable(): boolean {
  if (process.getuid?.() !== 0) return false
  const r = spawnSync('perf', ['list', 'task:task_newtask'], { encoding: 'utf8' })
  return r.status === 0 && r.stdout.includes('task_newtask')
}

function pidNamespace(pid: number | string): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`)
  } catch {
    return undefined
  }
}

/** Run `fn` while perf records the machine; count per host what was started in it. */
export async function countHostProcesses<T>(
  hosts: readonly string[],
  fn: () => Promise<T>,
): Promise<{ result: T; perHost: Record<string, HostProcesses> }> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-perf-'))
  const data = join(dir, 'perf.data')
  const perf = spawn(
    'perf',
    ['record', '-q', '-a', '-e', 'task:task_newtask', '-e', 'sched:sched_process_exec', '-o', data],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let perfErr = ''
  perf.stderr.on('data', (d: Buffer) => (perfErr += d.toString()))
  const exited = new Promise<void>((done) => perf.on('close', () => done()))
  // perf needs a moment to attach to every CPU: what starts before that is not seen.
  await new Promise((r) => setTimeout(r, 700))
  // Which host each live process belongs to, by its pid namespace (a container's is its init's).
  const nsHost = new Map<string, string>()
  for (const h of hosts) {
    const leader = leaderPid(h)
    const ns = leader === undefined ? undefined : pidNamespace(leader)
    if (ns) nsHost.set(ns, h)
  }
  const hostOf = new Map<number, string>()
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    const h = nsHost.get(pidNamespace(p) ?? '')
    if (h) hostOf.set(Number(p), h)
  }
  let result: T
  try {
    result = await fn()
  } finally {
    perf.kill('SIGINT')
    await exited
  }
  const script = spawnSync('perf', ['script', '-i', data, '-F', 'pid,tid,event,trace'], {
    encoding: 'utf8',
    maxBuffer: 512 * 1024 * 1024,
  })
  rmSync(dir, { recursive: true, force: true })
  if (script.status !== 0) throw new Error(`perf script failed: ${script.stderr || perfErr}`)
  const perHost: Record<string, HostProcesses> = {}
  for (const h of hosts) perHost[h] = { processes: 0, execs: 0, kubectl: 0, flux: 0, curl: 0 }
  for (const line of script.stdout.split('\n')) {
    // "  4291/4343  task:task_newtask: pid=4767 comm=k3s-server clone_flags=3d0f00 oom_score_adj=0"
    const task = /^\s*(\d+)\/\d+\s+task:task_newtask:\s+pid=(\d+) .*clone_flags=([0-9a-f]+)/.exec(line)
    if (task) {
      const h = hostOf.get(Number(task[1]))
      if (!h) continue
      hostOf.set(Number(task[2]), h)
      if ((Number.parseInt(task[3], 16) & CLONE_THREAD) === 0) perHost[h].processes++
      continue
    }
    // "  4743/4743  sched:sched_process_exec: filename=/usr/bin/sleep pid=4743 old_pid=4743"
    const exec = /^\s*(\d+)\/\d+\s+sched:sched_process_exec:\s+filename=(\S+)/.exec(line)
    if (exec) {
      const h = hostOf.get(Number(exec[1]))
      if (!h) continue
      perHost[h].execs++
      const name = exec[2].slice(exec[2].lastIndexOf('/') + 1)
      if (name === 'kubectl') perHost[h].kubectl++
      if (name === 'flux') perHost[h].flux++
      if (name === 'curl') perHost[h].curl++
    }
  }
  return { result, perHost }
}
