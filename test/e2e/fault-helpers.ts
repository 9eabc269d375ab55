// Helpers for the fault tests (faults.test.ts): a playbook run the test can act on while it runs (its pid
// for Ctrl-C, its --json event file to know what each host is doing), and the "no half-written file" check
// that reads every host through the lab (nsenter), never through the tool under test.

import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { labExec } from '../lab/lab.ts'
import { LAB_INVENTORY, parseRecap, REPO, type PlaybookRun } from './helpers.ts'

/** The --json events the tests read (a subset of lib/reporter.ts's RunEvent, plus the time every line gets). */
export type JsonEvent =
  | { time: string; kind: 'step-start'; host: string; role: string; step: string; handler: boolean }
  | {
      time: string
      kind: 'step-end'
      host: string
      role: string
      step: string
      handler: boolean
      status: string
      message?: string
      ms: number
    }
  | { time: string; kind: 'command'; host: string; script: string; code: number; ms: number }
  | { time: string; kind: 'unreachable'; host: string; message: string }
  | { time: string; kind: 'warning'; host?: string; message: string }
  | { time: string; kind: 'play-start'; play: string; hosts: string[] }
  | { time: string; kind: 'recap'; exitCode: number; retryFile?: string }
  | { time: string; kind: 'interrupted'; message: string }
  | { time: string; kind: 'run-start' | 'error' }

/** Every complete line of a --json file (a line being written is left for the next read). */
export function readEvents(file: string): JsonEvent[] {
  if (!existsSync(file)) return []
  const text = readFileSync(file, 'utf8')
  const complete = text.slice(0, text.lastIndexOf('\n') + 1)
  return complete
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as JsonEvent)
}

export interface LiveRun {
  pid: number
  /** Output so far (stdout and stderr, in order of arrival). */
  output(): string
  /** Whether the process has exited. */
  exited(): boolean
  done: Promise<PlaybookRun>
}

/**
 * Start `zx playbooks/<name>.mts -i LAB_INVENTORY ...args` as ONE process (node_modules/.bin/zx, not npx,
 * which would stand between a signal and the runner): its pid is the runner's, as for a user's Ctrl-C.
 */
export function startPlaybook(name: string, args: string[]): LiveRun {
  const bin = join(REPO, 'node_modules', '.bin')
  const child = spawn(join(bin, 'zx'), [`playbooks/${name}.mts`, '-i', LAB_INVENTORY, ...args], {
    cwd: REPO,
    // The pinned Node 24 first on PATH (zx's `#!/usr/bin/env node`), as `npx` would do.
    env: { ...process.env, CI: '1', PATH: `${bin}${delimiter}${process.env.PATH ?? ''}` },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  if (child.pid === undefined) throw new Error(`could not start playbooks/${name}.mts`)
  let out = ''
  let exited = false
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr.on('data', (d: Buffer) => (out += d.toString()))
  const done = new Promise<PlaybookRun>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => {
      exited = true
      resolve({ code: code ?? (signal ? 128 + signalNumber(signal) : 255), out, recap: parseRecap(out) })
    })
  })
  return { pid: child.pid, output: () => out, exited: () => exited, done }
}

function signalNumber(signal: NodeJS.Signals): number {
  return ({ SIGINT: 2, SIGKILL: 9, SIGTERM: 15 } as Partial<Record<NodeJS.Signals, number>>)[signal] ?? 0
}

/**
 * Wait (bounded) until the run's --json file has an event matching `match`; returns it. Fails early, with the
 * output, when the run ends first, and names what it waited for when the time is up.
 */
export async function waitForEvent<E extends JsonEvent>(
  run: LiveRun,
  file: string,
  what: string,
  match: (e: JsonEvent) => e is E,
  timeoutMs: number,
): Promise<E> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const hit = readEvents(file).find(match)
    if (hit) return hit
    if (run.exited()) throw new Error(`the run ended before ${what}:\n${run.output()}`)
    if (Date.now() > end) throw new Error(`no ${what} within ${timeoutMs / 1000}s:\n${run.output()}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

export const isStepStart =
  (host: string | null, step: string, handler = false) =>
  (e: JsonEvent): e is Extract<JsonEvent, { kind: 'step-start' }> =>
    e.kind === 'step-start' && (host === null || e.host === host) && e.step === step && e.handler === handler

export const isCommand =
  (host: string, scriptPart: string) =>
  (e: JsonEvent): e is Extract<JsonEvent, { kind: 'command' }> =>
    e.kind === 'command' && e.host === host && e.script.includes(scriptPart)

/** The recap line a user reads for one host, as printed (for assertion messages). */
export function recapLine(out: string, host: string): string {
  const at = out.lastIndexOf('PLAY RECAP')
  return (
    (at < 0 ? '' : out.slice(at)).split('\n').find((l) => l.startsWith(`${host} `)) ?? `(no recap line for ${host})`
  )
}

// ---------------------------------------------------------------- the "no half-written file" check

export const ORIGINAL_CMDLINE =
  'console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait'
export const CMDLINE_FLAGS = ['cgroup_memory=1', 'cgroup_enable=memory', 'cgroup_enable=cpuset']

/** Directories the roles write files into with planFile (temp file `.<name>.XXXXXX` + rename). */
export const WRITTEN_DIRS = [
  '/etc',
  '/etc/rancher/k3s',
  '/boot/firmware',
  '/etc/modules-load.d',
  '/etc/sysctl.d',
  '/etc/systemd/system',
]
/** Where the runner keeps owed handlers (temp file `<role>.tmp` + rename). */
const PENDING_DIR = '/var/lib/pi-provision/handlers'

/** Each edited file: the original content (null: absent before) and the complete content a run writes. */
function editedFiles(host: string): { path: string; before: string | null; after: (text: string) => boolean }[] {
  const exact = (want: string) => (text: string) => text === want
  const hosts = `127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${host}\n`
  return [
    {
      path: '/boot/firmware/cmdline.txt',
      before: `${ORIGINAL_CMDLINE}\n`,
      after: exact(`${ORIGINAL_CMDLINE} ${CMDLINE_FLAGS.join(' ')}\n`),
    },
    { path: '/etc/hostname', before: `${host}\n`, after: exact(`${host}\n`) },
    { path: '/etc/hosts', before: hosts, after: exact(hosts) },
    { path: '/etc/modules-load.d/k3s.conf', before: null, after: exact('overlay\nbr_netfilter\n') },
    {
      path: '/etc/sysctl.d/90-k3s.conf',
      before: null,
      after: exact(
        'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n',
      ),
    },
    // k3s's config.yaml holds the token: its exact bytes are the role's business; whole means the role's
    // header line first, one entry per line, and the final newline (a cut-off write loses the end).
    {
      path: '/etc/rancher/k3s/config.yaml',
      before: null,
      after: (t) =>
        t.startsWith('# Managed by pi-provision from the inventory') &&
        t.endsWith('\n') &&
        /^node-label:|^token:|^tls-san:/m.test(t),
    },
  ]
}

/**
 * What is wrong on a host with the files the roles edit: leftover temp files of an atomic write, or an
 * edited file that is neither its original content nor the complete new one. [] when all is whole.
 * The host must be running (a stopped one is started by the caller first: its disk is what survived).
 */
export async function halfWrittenFiles(host: string): Promise<string[]> {
  const problems: string[] = []
  const dirs = WRITTEN_DIRS.join(' ')
  // planFile's temp files: mktemp "$d/.$(basename path).XXXXXX" (six random letters or digits).
  const temps = await labExec(
    host,
    `find ${dirs} -maxdepth 1 -name '.*' -type f 2>/dev/null | grep -E '/\\.[^/]+\\.[A-Za-z0-9]{6}$'; find ${PENDING_DIR} -name '*.tmp' 2>/dev/null; true`,
  )
  if (temps.code !== 0) problems.push(`${host}: cannot list temp files: ${temps.stderr.trim()}`)
  for (const f of temps.stdout.split('\n').filter(Boolean)) problems.push(`${host}: leftover temp file ${f}`)
  for (const f of editedFiles(host)) {
    const r = await labExec(host, `if [ -e ${f.path} ]; then echo PRESENT; base64 -w0 ${f.path}; else echo ABSENT; fi`)
    if (r.code !== 0) {
      problems.push(`${host}: cannot read ${f.path}: ${r.stderr.trim()}`)
      continue
    }
    const [head, b64 = ''] = r.stdout.split('\n')
    if (head === 'ABSENT') {
      if (f.before !== null) problems.push(`${host}: ${f.path} is missing`)
      continue
    }
    const text = Buffer.from(b64, 'base64').toString('utf8')
    if (text !== f.before && !f.after(text))
      problems.push(`${host}: ${f.path} is neither the original nor the complete new content: ${JSON.stringify(text)}`)
  }
  return problems
}

/** halfWrittenFiles for several hosts at once. */
export async function halfWrittenOn(hosts: readonly string[]): Promise<string[]> {
  return (await Promise.all(hosts.map(halfWrittenFiles))).flat()
}
