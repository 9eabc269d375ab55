// Shared by the lab tests: run a playbook the way a user does (npx zx ... as a child process), and read
// host state through the lab (not through the tool under test).

import { spawn } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { labInventory } from '../lab/inventory.ts'
import { DEFAULT_HOSTS, labExec, labUp } from '../lab/lab.ts'

export const REPO = resolve(import.meta.dirname, '../..')
/**
 * The inventory of the lab the tests run on: inventory/lab.yaml's text with the test lab's addresses, state dir and
 * artifact server (test/lab/inventory.ts, test/lab/test-lab.ts), so the tests never reach the user's lab.
 */
export const LAB_INVENTORY = labInventory()

export interface PlaybookRun {
  code: number
  out: string
  /** Recap lines by host: { ok, changed, unreachable, failed, skipped }. */
  recap: Record<string, Record<string, number>>
}

/** A run of runPlaybookCli: `out` has both streams in order of arrival; here they are also apart. */
export interface PlaybookCliRun extends PlaybookRun {
  stdout: string
  stderr: string
}

/** `npx zx playbooks/<name>.mts -i LAB_INVENTORY ...args`, with output captured. */
export function runPlaybookCli(
  name: string,
  args: string[],
  opts: { onSpawn?: (pid: number) => void; env?: Record<string, string> } = {},
): Promise<PlaybookCliRun> {
  return new Promise((resolveRun, reject) => {
    const child = spawn('npx', ['zx', `playbooks/${name}.mts`, '-i', LAB_INVENTORY, ...args], {
      cwd: REPO,
      env: { ...process.env, CI: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    if (child.pid) opts.onSpawn?.(child.pid)
    let out = ''
    const stdout: Buffer[] = []
    const stderr: Buffer[] = []
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      stdout.push(d)
    })
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString()
      stderr.push(d)
    })
    child.on('error', reject)
    child.on('close', (code) =>
      resolveRun({
        code: code ?? 255,
        out,
        stdout: Buffer.concat(stdout).toString(),
        stderr: Buffer.concat(stderr).toString(),
        recap: parseRecap(out),
      }),
    )
  })
}

/** A freshly flashed lab brought to a converged cluster by site.mts (the starting point of several test files). */
export async function convergedLab(): Promise<void> {
  await labUp(DEFAULT_HOSTS, { fresh: true })
  const run = await runPlaybookCli('site', [])
  if (run.code !== 0) throw new Error(`site did not converge:\n${run.out}`)
}

export function parseRecap(out: string): Record<string, Record<string, number>> {
  const recap: Record<string, Record<string, number>> = {}
  const at = out.lastIndexOf('PLAY RECAP')
  if (at < 0) return recap
  for (const line of out.slice(at).split('\n')) {
    const m = /^(\S+)\s+: (ok=.*)$/.exec(line)
    if (!m) continue
    recap[m[1]] = Object.fromEntries(
      m[2]
        .trim()
        .split(/\s+/)
        .map((kv) => kv.split('='))
        .map(([k, v]) => [k, Number(v)]),
    )
  }
  return recap
}

/** Run as root in a host through the lab (independent of the tool's SSH); throws on failure. */
export async function onHost(host: string, cmd: string): Promise<string> {
  const r = await labExec(host, cmd)
  if (r.code !== 0) throw new Error(`${host}: ${cmd} -> exit ${r.code}: ${r.stderr}`)
  return r.stdout
}

/** Poll until probe gives a value (errors count as "not yet"); a bounded wait that names what it waited for. */
export async function until<T>(
  what: string,
  ms: number,
  probe: () => Promise<T | undefined>,
  intervalMs = 500,
): Promise<T> {
  const end = Date.now() + ms
  for (;;) {
    const v = await probe().catch(() => undefined)
    if (v !== undefined) return v
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, intervalMs))
  }
}

/**
 * The owner's 02:15 job, as the rebuild and leak tests take it: a sqlite3 .backup of state.db (waiting out k3s's
 * own writes, as a live backup must) and a tarball of token, tls and cred, to the NAS folder under {date}/k3s/.
 */
export async function takeNightlyBackup(nas: string, date: string): Promise<void> {
  const dir = join(nas, date, 'k3s')
  mkdirSync(dir, { recursive: true })
  const db = await onHost(
    'pi-k3s',
    'set -e; sqlite3 -cmd ".timeout 10000" /var/lib/rancher/k3s/server/db/state.db ".backup /tmp/state-backup.db"; base64 -w0 /tmp/state-backup.db; rm -f /tmp/state-backup.db',
  )
  writeFileSync(join(dir, 'state.db'), Buffer.from(db, 'base64'))
  const tar = await onHost('pi-k3s', 'tar -czf - -C /var/lib/rancher/k3s/server token tls cred | base64 -w0')
  writeFileSync(join(dir, 'server-token-tls-cred.tar.gz'), Buffer.from(tar, 'base64'))
}
