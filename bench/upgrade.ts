// The wall time of a 3-node k3s upgrade on the lab: playbooks/upgrade.mts from the inventory's release to the next
// one the lab offers (test/standins/k3s/releases.txt), timed as a user runs it (the whole process, Node start-up
// included), with where the time went (snapshot, server, each agent) from the run's own --json events.
//
//   import { timeUpgrade } from './upgrade.ts'     (bench/run.ts)
//   node bench/upgrade.ts [--runs N]               (alone: prints the figures)
//
// Each run starts from a freshly flashed lab converged by site.mts at the inventory's release (not timed), and the
// lab is left that way afterwards: flashed and converged again, as the inventory wants it.

import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { hostVars, loadInventory } from '../lib/inventory.ts'
import { DEFAULT_HOSTS, labExec, labUp } from '../test/lab/lab.ts'

const REPO = resolve(import.meta.dirname, '..')
const INVENTORY = resolve(REPO, 'inventory/lab.yaml')

export interface UpgradeTiming {
  /** Wall seconds of `zx playbooks/upgrade.mts`, Node start-up included. */
  wall: number
  /** Controller CPU seconds (user, sys) of the whole process tree. */
  user: number
  sys: number
  from: string
  to: string
  /** Seconds by part of the run, from its step events: the check, the snapshot, the server, each agent. */
  phases: Record<string, number>
}

/** Run a command under bash's `time` in the repository, with the project's zx and Node first on PATH. */
function timed(cmd: string): Promise<{ code: number; out: string; wall: number; user: number; sys: number }> {
  return new Promise((res, rej) => {
    const child = spawn('bash', ['-c', `TIMEFORMAT='@@TIME %R %U %S'; time ( ${cmd} ) 2>&1`], {
      cwd: REPO,
      env: { ...process.env, CI: '1', PATH: `${join(REPO, 'node_modules/.bin')}:${process.env.PATH ?? ''}` },
    })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    child.on('error', rej)
    child.on('close', (code) => {
      const m = /@@TIME ([\d.]+) ([\d.]+) ([\d.]+)/.exec(out)
      if (!m) return rej(new Error(`no timing in the output of ${cmd}:\n${out}`))
      res({ code: code ?? 255, out, wall: Number(m[1]), user: Number(m[2]), sys: Number(m[3]) })
    })
  })
}

/** The inventory's release, and the next release the lab's artifact server offers after it. */
export function upgradeVersions(): { from: string; to: string } {
  const inv = loadInventory(INVENTORY)
  const from = hostVars(inv.hosts.get(inv.groups.get('server')![0])!, {}, {}).k3s_version!
  const offered = readFileSync(join(REPO, 'test/standins/k3s/releases.txt'), 'utf8')
    .split('\n')
    .filter((l) => /^v\d/.test(l))
  const to = offered[offered.indexOf(from) + 1]
  if (!offered.includes(from) || !to)
    throw new Error(`no release after ${from} in releases.txt (${offered.join(', ')})`)
  return { from, to }
}

/** A freshly flashed lab, converged by site.mts at the inventory's release. */
async function freshCluster(): Promise<void> {
  await labUp(DEFAULT_HOSTS, { fresh: true })
  const site = await timed(`zx playbooks/site.mts -i ${INVENTORY}`)
  if (site.code !== 0) throw new Error(`the lab did not converge:\n${site.out}`)
}

/** Seconds per part of the run, from the --json step events (the step's own ms). */
function phasesOf(events: string): Record<string, number> {
  const phases: Record<string, number> = {}
  for (const line of readFileSync(events, 'utf8').split('\n')) {
    if (!line) continue
    const e = JSON.parse(line) as { kind: string; host?: string; role?: string; ms?: number }
    if (e.kind !== 'step-end' || e.ms === undefined) continue
    const part =
      e.role === 'k3s-upgrade-preflight'
        ? 'check'
        : e.role === 'k3s-snapshot'
          ? 'snapshot'
          : e.role === 'k3s-upgrade-server'
            ? 'server'
            : e.role === 'k3s-upgrade-agent'
              ? `agent ${e.host}`
              : (e.role ?? 'other')
    phases[part] = (phases[part] ?? 0) + e.ms / 1000
  }
  return phases
}

/**
 * Time one 3-node upgrade: from a fresh lab at the inventory's release to the next release, checked done (every Node
 * Ready at it, per the server's API); the lab is flashed and converged again afterwards.
 */
export async function timeUpgrade(): Promise<UpgradeTiming> {
  const { from, to } = upgradeVersions()
  await freshCluster()
  const dir = mkdtempSync(join(tmpdir(), 'bench-upgrade-'))
  try {
    const events = join(dir, 'upgrade.jsonl')
    const run = await timed(`zx playbooks/upgrade.mts -i ${INVENTORY} -e k3s_version=${to} --json ${events}`)
    if (run.code !== 0) throw new Error(`the upgrade failed (exit ${run.code}):\n${run.out}`)
    const nodes = await labExec(
      'pi-k3s',
      'k3s kubectl get nodes -o jsonpath=\'{range .items[*]}{.status.nodeInfo.kubeletVersion}{"\\n"}{end}\'',
    )
    const versions = nodes.stdout.trim().split('\n')
    if (versions.length !== DEFAULT_HOSTS.length || versions.some((v) => v !== to))
      throw new Error(`after the upgrade the Nodes report ${versions.join(', ')}, not ${to} everywhere`)
    return { wall: run.wall, user: run.user, sys: run.sys, from, to, phases: phasesOf(events) }
  } finally {
    rmSync(dir, { recursive: true, force: true })
    await freshCluster()
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '1' } } })
  const runs: UpgradeTiming[] = []
  for (let i = 0; i < Number(values.runs); i++) runs.push(await timeUpgrade())
  const walls = runs.map((r) => r.wall).sort((a, b) => a - b)
  process.stdout.write(
    `3-node k3s upgrade ${runs[0].from} -> ${runs[0].to}: median ${walls[Math.floor(walls.length / 2)].toFixed(2)}s ` +
      `(${walls.map((w) => w.toFixed(2)).join(', ')})\n`,
  )
  for (const r of runs)
    process.stdout.write(
      `  ${r.wall.toFixed(2)}s wall, ${(r.user + r.sys).toFixed(2)}s CPU: ${Object.entries(r.phases)
        .map(([k, v]) => `${k} ${v.toFixed(2)}s`)
        .join(', ')}\n`,
    )
}
