// npm run bench: wall-clock figures for the runs owners repeat, timed as README tells them to type them
// (`npx zx playbooks/site.mts -i inventory/lab.yaml`, from a shell without node_modules/.bin on PATH) and as the
// executable playbooks (`./playbooks/site.mts ...`), beside the runner's own figure (the recap's "finished in"),
// against the floor measured in the same run (one OpenSSH session per host running the same checks as one script);
// where the time of a run goes, from npx to the recap (the recap's --json stats); and what a run costs on the hosts
// (round trips, kubectl and flux as the runner counts them; every process started, from the hosts' side, with perf).
// Prints tables, writes JSON to bench/results/.
//
//   npm run bench                 # 3 and 12 hosts, 5 runs each, fresh runs too
//   npm run bench -- --runs 3 --no-12 --no-fresh --no-upgrade

import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { delimiter, join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import {
  DEFAULT_HOSTS,
  LAB_ARTIFACT_BASE,
  LAB_KEY,
  LAB_KNOWN_HOSTS,
  LAB_SECRETS_FILE,
  labAddress,
  labBootId,
  labExec,
  labUp,
} from '../test/lab/lab.ts'
import { connect as tcpConnect } from 'node:net'
import type { HostCost, RunStats } from '../lib/run-events.ts'
import { CLUSTER_KINDS } from '../roles/apps.ts'
import { countHostProcesses, perfAvailable, type HostProcesses } from './hostprocs.ts'
import { timeUpgrade, type UpgradeTiming } from './upgrade.ts'

const REPO = resolve(import.meta.dirname, '..')
// The bench's temporary files (event logs, inventories, the runs' own) under one scratch directory, gone at exit.
// Node's compile cache stays where the owner's runs keep it (it lives under TMPDIR by default): a bench that started
// every run from a cold cache would time what the owner never sees.
process.env.NODE_COMPILE_CACHE ??= join(tmpdir(), 'node-compile-cache')
const SCRATCH = mkdtempSync(join(tmpdir(), 'pi-provision-bench-'))
process.env.TMPDIR = SCRATCH
process.on('exit', () => rmSync(SCRATCH, { recursive: true, force: true }))
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  process.once(signal, () => {
    rmSync(SCRATCH, { recursive: true, force: true })
    process.kill(process.pid, signal)
  })
const { values: flags } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    'no-12': { type: 'boolean' },
    'no-fresh': { type: 'boolean' },
    'no-perf': { type: 'boolean' },
    'no-upgrade': { type: 'boolean' },
  },
})
const RUNS = Number(flags.runs)

// ---------------------------------------------------------------- environments

/**
 * The owner's shell: what `npm run bench` added taken away again (node_modules/.bin on PATH, npm_* variables), so
 * `npx` and `./playbooks/...` find what they would find from a terminal.
 */
const TYPED_ENV: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env)
    .filter(([k]) => !/^npm_/i.test(k) && !['INIT_CWD', 'NODE', 'COLOR', 'EDITOR'].includes(k))
    .map(([k, v]) =>
      k === 'PATH'
        ? [
            k,
            (v ?? '')
              .split(delimiter)
              .filter((p) => !/[\\/]node_modules[\\/]\.bin$|node-gyp-bin/.test(p))
              .join(delimiter),
          ]
        : [k, v],
    ),
)
/** The project's tools first on PATH, in CI: for the floors and the runs that are not about start-up. */
const TOOL_ENV: NodeJS.ProcessEnv = {
  ...TYPED_ENV,
  CI: '1',
  PATH: `${join(REPO, 'node_modules/.bin')}${delimiter}${TYPED_ENV.PATH ?? ''}`,
}

// ---------------------------------------------------------------- timing

interface Timing {
  wall: number
  user: number
  sys: number
  /** Steps run, summed over hosts (from the recap), when the command was a playbook. */
  steps?: number
  /** The runner's own figure: the recap's "finished in" (seconds). */
  runner?: number
}

interface Figure {
  name: string
  command: string
  hosts: number
  runs: Timing[]
  min: number
  median: number
  max: number
  runnerMedian?: number
  cpu: number
  /** Controller CPU (user+sys) per step per host, in milliseconds. */
  cpuMsPerStep?: number
}

/** Run a command under bash's `time`: wall, user and sys seconds of the whole process tree; when it started. */
function timed(cmd: string, env = TOOL_ENV): Promise<Timing & { code: number; out: string; startedAt: number }> {
  return new Promise((res, rej) => {
    // $EPOCHREALTIME is bash's own clock: no process started before the command's own.
    const child = spawn(
      'bash',
      ['-c', `echo "@@T0 $EPOCHREALTIME"; TIMEFORMAT='@@TIME %R %U %S'; time ( ${cmd} ) 2>&1`],
      {
        cwd: REPO,
        env,
      },
    )
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    child.on('error', rej)
    child.on('close', (code) => {
      const m = /@@TIME ([\d.]+) ([\d.]+) ([\d.]+)/.exec(out)
      const t0 = /@@T0 ([\d.]+)/.exec(out)
      if (!m || !t0) return rej(new Error(`no timing in output of ${cmd}:\n${out}`))
      let steps = 0
      for (const r of out.matchAll(/: ok=(\d+)\s+changed=\d+\s+unreachable=\d+\s+failed=(\d+)\s+skipped=(\d+)/g))
        steps += Number(r[1]) + Number(r[2]) + Number(r[3])
      const runner = /^finished in ([\d.]+)s, exit/m.exec(out)
      res({
        code: code ?? 255,
        out,
        startedAt: Number(t0[1]) * 1000,
        wall: Number(m[1]),
        user: Number(m[2]),
        sys: Number(m[3]),
        steps: steps || undefined,
        runner: runner ? Number(runner[1]) : undefined,
      })
    })
  })
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

function figure(name: string, command: string, hosts: number, runs: Timing[]): Figure {
  const walls = runs.map((r) => r.wall).sort((a, b) => a - b)
  const cpu = runs.reduce((s, r) => s + r.user + r.sys, 0) / runs.length
  const steps = runs[0].steps
  const runner = runs.map((r) => r.runner).filter((r): r is number => r !== undefined)
  return {
    name,
    command,
    hosts,
    runs,
    min: walls[0],
    median: median(walls),
    max: walls[walls.length - 1],
    runnerMedian: runner.length ? median(runner) : undefined,
    cpu,
    cpuMsPerStep: steps ? (cpu * 1000) / steps : undefined,
  }
}

async function repeat(
  name: string,
  hosts: number,
  cmd: string,
  opts: { n?: number; env?: NodeJS.ProcessEnv; before?: () => Promise<void> } = {},
): Promise<Figure> {
  const runs: Timing[] = []
  for (let i = 0; i < (opts.n ?? RUNS); i++) {
    if (opts.before) await opts.before()
    const r = await timed(cmd, opts.env)
    if (r.code !== 0) throw new Error(`${name}: exit ${r.code}\n${r.out}`)
    runs.push(r)
  }
  const f = figure(name, cmd, hosts, runs)
  process.stderr.write(`bench: ${name}: median ${f.median.toFixed(2)}s\n`)
  return f
}

// ---------------------------------------------------------------- where a run's time goes

/** The phases of one run, in ms, from the moment the shell started the command to the process's end. */
interface Phases {
  /** npx (npm's start and its look for the command) and the shell, until the Node that runs the playbook starts. */
  launch: number
  /** That Node's start and zx's, until the playbook's first line. */
  nodeAndZx: number
  /** The tool's modules (lib/, roles/, their packages). */
  modules: number
  inventory: number
  secrets: number
  connecting: number
  cluster: number
  facts: number
  commands: number
  controller: number
  /** After the recap: closing, exit. */
  exit: number
  total: number
}

const PHASE_NAMES: Record<keyof Phases, string> = {
  launch: 'npx / shebang, until Node starts',
  nodeAndZx: 'Node and zx, until the playbook runs',
  modules: 'loading the modules',
  inventory: 'inventory, -e, checks',
  secrets: 'secrets',
  connecting: 'first SSH connections',
  cluster: 'cluster calls (kubectl, flux)',
  facts: 'facts',
  commands: 'commands',
  controller: 'controller (planning, probes, waits)',
  exit: 'recap and exit',
  total: 'total',
}

function phasesOf(startedAt: number, wallSec: number, s: RunStats): Phases {
  const m = s.marks
  const at = (k: string) => m[k] ?? 0
  return {
    launch: s.origin - startedAt,
    nodeAndZx: at('playbook'),
    modules: at('main') - at('playbook'),
    inventory: at('inventory') - at('main'),
    secrets: at('run') - at('inventory'),
    connecting: s.wall.connect,
    cluster: s.wall.cluster,
    facts: s.wall.facts,
    commands: s.wall.commands,
    controller: s.wall.controller,
    exit: startedAt + wallSec * 1000 - (s.origin + at('recap')),
    total: wallSec * 1000,
  }
}

/** The recap's stats from a --json event file. */
function statsOf(file: string): RunStats {
  for (const line of readFileSync(file, 'utf8').trim().split('\n').reverse()) {
    const e = JSON.parse(line) as { kind: string; stats?: RunStats }
    if (e.kind === 'recap' && e.stats) return e.stats
  }
  throw new Error(`no recap with stats in ${file}`)
}

/** The command as typed plus --json: the phases of each run (medians below), and the stats of the last. */
async function breakdown(cmd: string): Promise<{ phases: Phases; stats: RunStats } | undefined> {
  const file = join(mkdtempSync(join(tmpdir(), 'bench-json-')), 'events.jsonl')
  const all: Phases[] = []
  let stats: RunStats | undefined
  for (let i = 0; i < RUNS; i++) {
    const r = await timed(`${cmd} --json ${file}`, TYPED_ENV)
    if (r.code !== 0) throw new Error(`${cmd}: exit ${r.code}\n${r.out}`)
    try {
      stats = statsOf(file)
    } catch {
      return undefined // a runner that does not record its stats (an older commit)
    }
    all.push(phasesOf(r.startedAt, r.wall, stats))
  }
  const phases = Object.fromEntries(
    (Object.keys(PHASE_NAMES) as (keyof Phases)[]).map((k) => [k, Math.round(median(all.map((p) => p[k])))]),
  ) as unknown as Phases
  return { phases, stats: stats! }
}

// ---------------------------------------------------------------- floors

/** An inventory for N lab hosts: the first is the server, the rest agents. */
function inventoryFor(names: readonly string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'bench-inv-'))
  const host = (n: string) => `        ${n}:\n          address: ${labAddress(n)}\n`
  const text = `all:
  vars:
    ssh_user: pi
    ssh_key_file: ${LAB_KEY}
    known_hosts_file: ${LAB_KNOWN_HOSTS}
    secrets_backend: file
    secrets_file: ${LAB_SECRETS_FILE}
    k3s_version: v1.34.3+k3s1
    k3s_install_url: ${LAB_ARTIFACT_BASE}/k3s/install.sh
    k3s_token_ref: op://pi-cluster/k3s-node-token/token
  children:
    server:
      hosts:
${host(names[0])}    agent:
      hosts:
${names.slice(1).map(host).join('')}`
  const f = join(dir, 'inventory.yaml')
  writeFileSync(f, text)
  return f
}

/** The floor: one ssh process per host, all in parallel, each running pi-prep's checks as one script. */
function floorCommand(names: readonly string[], extra: (name: string, i: number) => string[] = () => []): string {
  const checks = [
    'uname -m; dpkg --print-architecture; getconf LONG_BIT',
    'cat /etc/hostname /etc/hosts',
    'for f in /boot/firmware/cmdline.txt /boot/cmdline.txt; do [ -f $f ] && cat $f && break; done',
    'cat /proc/swaps',
    'systemctl show -p LoadState -p UnitFileState -p ActiveState ' +
      'dphys-swapfile.service systemd-zram-setup@zram0.service rpi-swap.service',
    '[ -e /var/swap ]; echo $?',
    "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' nfs-common curl ca-certificates iptables dphys-swapfile",
    'cat /etc/modules-load.d/k3s.conf /etc/sysctl.d/90-k3s.conf',
    'cat /sys/fs/cgroup/cgroup.controllers',
  ]
  const dir = mkdtempSync(join(tmpdir(), 'bench-floor-'))
  const ssh = (n: string, i: number) => {
    const script = join(dir, `${n}.sh`)
    writeFileSync(script, [...checks, ...extra(n, i)].join('\n') + '\n')
    return (
      `ssh -o BatchMode=yes -o UserKnownHostsFile=${LAB_KNOWN_HOSTS} -o StrictHostKeyChecking=yes -i ${LAB_KEY} ` +
      `pi@${labAddress(n)} 'sudo -n sh -s' < ${script} >/dev/null &`
    )
  }
  return `${names.map(ssh).join('\n')}\nwait`
}

/**
 * The site's floor: pi-prep's checks, plus what a no-op site must at least ask, in one script per host: k3s's
 * version, config and unit everywhere; on the server the node, one cluster read per role that reads the cluster
 * (what flux-bootstrap and apps read, each in one kubectl), and the branch head where Flux fetches it from. No
 * flux reconcile: a no-op needs none when Flux has the head.
 */
function siteFloorCommand(names: readonly string[]): string {
  const kubectl = 'k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml'
  const flux = '/usr/local/bin/flux --kubeconfig /etc/rancher/k3s/k3s.yaml'
  // What the apps role reads in its one kubectl (the same list, so the floor follows the role).
  const kinds = CLUSTER_KINDS.join(',')
  return floorCommand(names, (_n, i) => [
    '/usr/local/bin/k3s --version; cat /etc/rancher/k3s/config.yaml; ' +
      'systemctl show -p ActiveState -p UnitFileState k3s k3s-agent',
    ...(i > 0
      ? ['cat /etc/systemd/system/k3s-agent.service.env']
      : [
          `${kubectl} get nodes -o json >/dev/null`,
          `${kubectl} get namespaces,gitrepositories.source.toolkit.fluxcd.io,` +
            'kustomizations.kustomize.toolkit.fluxcd.io,deployments.apps,secrets ' +
            `-n flux-system -o json >/dev/null & ${flux} --version & wait`,
          `${kubectl} get ${kinds} -A -o json >/dev/null & ` +
            `curl -s ${LAB_ARTIFACT_BASE}/gitops/github.com/mtgibbs/pi-cluster.git/info/refs` +
            '?service=git-upload-pack & wait',
        ]),
  ])
}

// ---------------------------------------------------------------- the lab

/** Seconds the slowest host spent in a step, from a --json event file. */
function slowestStep(file: string, step: string): number {
  let ms = 0
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line) continue
    const e = JSON.parse(line) as { kind: string; step?: string; ms?: number }
    if (e.kind === 'step-end' && e.step === step && (e.ms ?? 0) > ms) ms = e.ms ?? 0
  }
  return ms / 1000
}

function sshAnswers(address: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: address, port: 22 })
    const done = (ok: boolean) => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(500, () => done(false))
    s.once('data', (d: Buffer) => done(d.toString().startsWith('SSH-')))
    s.once('error', () => done(false))
  })
}

function commit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO }).toString().trim()
  } catch {
    return 'unknown'
  }
}

const SITE = './playbooks/site.mts -i inventory/lab.yaml'
const PIPREP = './playbooks/pi-prep.mts -i inventory/lab.yaml'
const TYPED_SITE = 'npx zx playbooks/site.mts -i inventory/lab.yaml'
const TYPED_PIPREP = 'npx zx playbooks/pi-prep.mts -i inventory/lab.yaml'

/**
 * Bring the lab to a converged site before the reruns are timed. A lab left by the tests may not converge (the
 * stand-in tests install a server with their own token): then it is flashed afresh and converged from there.
 */
async function converge(): Promise<void> {
  if ((await timed(SITE)).code === 0) return
  process.stderr.write('bench: the lab did not converge as it was; flashing it afresh\n')
  await labUp(DEFAULT_HOSTS, { fresh: true })
  const again = await timed(SITE)
  if (again.code !== 0) throw new Error(`the lab does not converge:\n${again.out}`)
}

// ---------------------------------------------------------------- the runs

const load = { start: loadavg()[0], end: 0 }
const figures: Figure[] = []
const twelve = Array.from({ length: 12 }, (_, i) => `pi-lab-${String(i + 1).padStart(2, '0')}`)

await labUp(DEFAULT_HOSTS, { fresh: !flags['no-fresh'] })
if (!flags['no-fresh']) {
  // A fresh site run needs freshly flashed hosts each time: re-flash before every run (not timed).
  figures.push(
    await repeat('fresh site run', 3, SITE, {
      n: Math.min(RUNS, 3),
      before: () => labUp(DEFAULT_HOSTS, { fresh: true }).then(() => undefined),
    }),
  )
} else {
  await converge()
}
if (!flags['no-fresh']) {
  const events = join(mkdtempSync(join(tmpdir(), 'bench-events-')), 'fresh.jsonl')
  const apt: Timing[] = []
  const rebootHandler: Timing[] = []
  const fresh = await repeat('fresh pi-prep (incl. apt and reboot)', 3, `${PIPREP} --json ${events}`, {
    n: Math.min(RUNS, 3),
    before: async () => {
      if (existsSync(events)) {
        apt.push({ wall: slowestStep(events, 'Install the packages the cluster needs'), user: 0, sys: 0 })
        rebootHandler.push({ wall: slowestStep(events, 'Reboot'), user: 0, sys: 0 })
      }
      await labUp(DEFAULT_HOSTS, { fresh: true })
    },
  })
  apt.push({ wall: slowestStep(events, 'Install the packages the cluster needs'), user: 0, sys: 0 })
  rebootHandler.push({ wall: slowestStep(events, 'Reboot'), user: 0, sys: 0 })
  // The fresh target is "the reboot + 2 s"; apt (mirror download + dpkg) is not the runner's to speed up, so show the
  // rest too.
  const withoutApt = fresh.runs.map((r, i) => ({ wall: r.wall - (apt[i]?.wall ?? 0), user: 0, sys: 0 }))
  figures.push(
    fresh,
    figure('  of which: apt install (slowest host)', '', 3, apt),
    figure('  of which: reboot handler (slowest host)', '', 3, rebootHandler),
    figure('  the rest (run minus slowest apt)', '', 3, withoutApt),
  )
  // What the fresh run cannot beat: one host's own reboot, from `systemctl reboot` until SSH answers again.
  const reboots: Timing[] = []
  for (let i = 0; i < Math.min(RUNS, 3); i++) {
    const t0 = Date.now()
    const before = await labBootId('pi3-worker-2')
    void labExec('pi3-worker-2', 'systemctl reboot').catch(() => undefined)
    for (;;) {
      await new Promise((r) => setTimeout(r, 100))
      const now = await labBootId('pi3-worker-2').catch(() => before)
      if (now !== before && (await sshAnswers(labAddress('pi3-worker-2')))) break
    }
    reboots.push({ wall: (Date.now() - t0) / 1000, user: 0, sys: 0 })
  }
  figures.push(figure('host reboot (systemctl reboot -> SSH back)', '', 1, reboots))
  await converge()
}

// Start-up: what a command costs before the first SSH packet.
figures.push(await repeat('node -e 0 (the pinned Node)', 0, 'node_modules/.bin/node -e 0'))
figures.push(await repeat('zx --version (its own start)', 0, 'zx --version'))
figures.push(await repeat('npx zx --version, as typed', 0, 'npx zx --version', { env: TYPED_ENV }))
figures.push(
  await repeat('--list-hosts, as typed', 3, `${TYPED_PIPREP} --list-hosts`, { env: TYPED_ENV }),
  await repeat('--list-hosts, executable', 3, `${PIPREP} --list-hosts`, { env: TYPED_ENV }),
)
// The no-op reruns.
figures.push(
  await repeat('no-op pi-prep, as typed', 3, TYPED_PIPREP, { env: TYPED_ENV }),
  await repeat('no-op pi-prep, executable', 3, PIPREP, { env: TYPED_ENV }),
  await repeat('no-op site, as typed', 3, TYPED_SITE, { env: TYPED_ENV }),
  await repeat('no-op site, executable', 3, SITE, { env: TYPED_ENV }),
)
figures.push(await repeat('floor (one ssh per host, all checks)', 3, floorCommand(DEFAULT_HOSTS)))
figures.push(await repeat('site floor (+ one cluster read per role)', 3, siteFloorCommand(DEFAULT_HOSTS)))

// Where the time goes, and what the no-op reruns cost on the hosts.
const siteBreakdown = await breakdown(TYPED_SITE)
const piprepBreakdown = await breakdown(TYPED_PIPREP)
let hostSide:
  | {
      site: Record<string, HostProcesses>
      piPrep: Record<string, HostProcesses>
      idle: Record<string, HostProcesses>
      idleSeconds: number
    }
  | undefined
let hostSideError: string | undefined
if (flags['no-perf'] || !perfAvailable()) hostSideError = 'perf not available (or --no-perf): no host-side counts'
else {
  try {
    const site = await countHostProcesses(DEFAULT_HOSTS, () => timed(TYPED_SITE, TYPED_ENV))
    const piPrep = await countHostProcesses(DEFAULT_HOSTS, () => timed(TYPED_PIPREP, TYPED_ENV))
    // What the hosts start by themselves in as long (timers, the k3s stand-in, agents' heartbeats): the noise.
    const idleSeconds = site.result.wall
    const idle = await countHostProcesses(DEFAULT_HOSTS, () => new Promise((r) => setTimeout(r, idleSeconds * 1000)))
    hostSide = { site: site.perHost, piPrep: piPrep.perHost, idle: idle.perHost, idleSeconds }
  } catch (e) {
    hostSideError = e instanceof Error ? e.message : String(e)
  }
}

// A lab of 12 that will not come up (seen once: a container whose cgroup setup failed at boot) costs the
// 12-host rows, not the figures already measured: they are still printed and written, with the error.
let twelveError: string | undefined
if (!flags['no-12']) {
  try {
    await labUp(twelve, { fresh: false })
    const inv12 = inventoryFor(twelve)
    await timed(`./playbooks/pi-prep.mts -i ${inv12} -f 12`)
    figures.push(await repeat('no-op pi-prep, executable', 12, `./playbooks/pi-prep.mts -i ${inv12} -f 12`))
    figures.push(await repeat('floor (one ssh per host, all checks)', 12, floorCommand(twelve)))
  } catch (e) {
    twelveError = e instanceof Error ? e.message : String(e)
    process.stderr.write(`bench: the 12-host figures are missing: ${twelveError}\n`)
  }
}
// A 3-node k3s upgrade (bench/upgrade.ts): each run flashes and converges the lab first (not timed) and leaves it
// converged again; at most 3 runs, since each costs a fresh cluster.
let upgradeRuns: UpgradeTiming[] = []
if (!flags['no-upgrade']) {
  try {
    for (let i = 0; i < Math.min(RUNS, 3); i++) upgradeRuns.push(await timeUpgrade())
    const first = upgradeRuns[0]
    figures.push(
      figure(
        `k3s upgrade ${first.from} -> ${first.to}`,
        'npx zx playbooks/upgrade.mts -i inventory/lab.yaml -e k3s_version=NEXT',
        3,
        upgradeRuns.map((u) => ({ wall: u.wall, user: u.user, sys: u.sys })),
      ),
    )
  } catch (e) {
    upgradeRuns = []
    process.stderr.write(`bench: the upgrade figure is missing: ${e instanceof Error ? e.message : String(e)}\n`)
  }
}
load.end = loadavg()[0]

// ---------------------------------------------------------------- the report

const floorOf = (f: Figure) =>
  figures.find((g) => g.hosts === f.hosts && g.name.startsWith(f.name.includes('site') ? 'site floor' : 'floor'))
const rows = figures.map((f) => {
  const floor = floorOf(f)
  // Ratios for the reruns only: a fresh run is bound by apt and the reboot, not by round trips.
  const ratio = floor && f.name.startsWith('no-op') ? f.median / floor.median : undefined
  return { ...f, ratioToFloor: ratio }
})
const s2 = (x: number | undefined) => (x === undefined ? '' : x.toFixed(2))
console.log(`\n${'run'.padEnd(44)} hosts   min    median   max   runner  x floor  cpu s/run  cpu ms/step/host`)
for (const r of rows)
  console.log(
    [
      r.name.padEnd(44),
      String(r.hosts || '').padStart(5),
      s2(r.min).padStart(6),
      s2(r.median).padStart(8),
      s2(r.max).padStart(6),
      s2(r.runnerMedian).padStart(7),
      (r.ratioToFloor ? `${r.ratioToFloor.toFixed(1)}x` : '').padStart(8),
      r.cpu.toFixed(2).padStart(10),
      (r.cpuMsPerStep ? r.cpuMsPerStep.toFixed(1) : '').padStart(17),
    ].join(' '),
  )
console.log('\ncommands:')
for (const r of rows) if (r.command && !r.command.includes('\n')) console.log(`  ${r.name.trim()}: ${r.command}`)

if (siteBreakdown && piprepBreakdown) {
  console.log(`\nwhere the time of a no-op run goes, as typed (ms, medians of ${RUNS} runs with --json):`)
  console.log(`${'phase'.padEnd(42)} ${'site'.padStart(6)} ${'pi-prep'.padStart(8)}`)
  for (const k of Object.keys(PHASE_NAMES) as (keyof Phases)[])
    console.log(
      `${PHASE_NAMES[k].padEnd(42)} ${String(siteBreakdown.phases[k]).padStart(6)} ` +
        String(piprepBreakdown.phases[k]).padStart(8),
    )
}

const costLine = (h: string, c: HostCost, p?: HostProcesses, idle?: HostProcesses) =>
  `${h.padEnd(14)} ${String(c.roundTrips).padStart(6)} ${String(c.kubectl).padStart(8)} ${String(c.flux).padStart(5)}` +
  (p
    ? ` ${[
        String(p.processes).padStart(10),
        String(p.execs).padStart(6),
        String(p.kubectl).padStart(8),
        String(p.flux).padStart(5),
        String(p.curl).padStart(5),
        String(idle?.processes ?? '').padStart(6),
      ].join(' ')}`
    : '')
for (const [name, b, side] of [
  ['no-op site', siteBreakdown, hostSide?.site],
  ['no-op pi-prep', piprepBreakdown, hostSide?.piPrep],
] as const) {
  if (!b) continue
  console.log(`\nwhat a ${name} costs on the hosts (runner's count${side ? "; then the hosts' own, by perf" : ''}):`)
  console.log(
    `${'host'.padEnd(14)} ${'trips'.padStart(6)} ${'kubectl'.padStart(8)} ${'flux'.padStart(5)}` +
      (side
        ? ` ${'processes'.padStart(10)} ${'execs'.padStart(6)} ${'kubectl'.padStart(8)} ` +
          `${'flux'.padStart(5)} ${'curl'.padStart(5)} ${'idle'.padStart(6)}`
        : ''),
  )
  for (const [h, c] of Object.entries(b.stats.hosts)) console.log(costLine(h, c, side?.[h], hostSide?.idle[h]))
  const server = b.stats.hosts[DEFAULT_HOSTS[0]]
  const byRole = Object.entries(server?.roles ?? {})
    .filter(([, r]) => r.kubectl || r.flux)
    .map(([role, r]) => `${role} ${r.kubectl}${r.flux ? ` (+${r.flux} flux)` : ''}`)
  if (byRole.length) console.log(`kubectl on ${DEFAULT_HOSTS[0]} by role: ${byRole.join(', ')}`)
}
if (upgradeRuns.length) {
  const byWall = [...upgradeRuns].sort((x, y) => x.wall - y.wall)
  const mid = byWall[Math.floor(byWall.length / 2)]
  console.log(`\nwhere the median k3s upgrade's ${mid.wall.toFixed(2)} s went (s):`)
  for (const [part, sec] of Object.entries(mid.phases)) console.log(`  ${part.padEnd(40)} ${sec.toFixed(2)}`)
}
if (hostSide)
  console.log(`(idle: processes the hosts start by themselves in ${hostSide.idleSeconds.toFixed(1)} s, no run)`)
if (hostSideError) console.log(`\n${hostSideError}`)

const target = (name: string, limit: number) => {
  const f = rows.find((r) => r.name === name && r.hosts === 3)
  return f ? `${name}: ${f.median.toFixed(2)} s (target <= ${limit} s: ${f.median <= limit ? 'met' : 'NOT met'})` : ''
}
console.log(`\ntargets (medians, load ${load.start.toFixed(2)} at the start, ${load.end.toFixed(2)} at the end):`)
for (const t of [
  target('no-op pi-prep, as typed', 0.6),
  target('no-op site, as typed', 1.5),
  target('--list-hosts, as typed', 0.4),
  target('no-op pi-prep, executable', 0.6),
  target('no-op site, executable', 1.5),
  target('--list-hosts, executable', 0.4),
])
  if (t) console.log(`  ${t}`)

const out = {
  commit: commit(),
  date: new Date().toISOString(),
  machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, platform: process.platform },
  load,
  runs: RUNS,
  figures: rows,
  breakdown: { site: siteBreakdown, piPrep: piprepBreakdown },
  hostSide,
  ...(hostSideError ? { hostSideError } : {}),
  ...(twelveError ? { twelveHostsError: twelveError } : {}),
}
mkdirSync(join(REPO, 'bench/results'), { recursive: true })
const file = join(REPO, 'bench/results', `bench-${out.date.replace(/[:.]/g, '-')}.json`)
writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`)
console.log(`\nwrote ${file}`)
