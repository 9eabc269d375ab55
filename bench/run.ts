// npm run bench: wall-clock figures for the runs owners repeat, against the floor measured in the same
// run (one OpenSSH session per host running pi-prep's checks as one script). Prints a table, writes JSON.
//
//   npm run bench                 # 3 and 12 hosts, 5 runs each
//   npm run bench -- --runs 3 --no-12 --no-fresh

import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
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

const REPO = resolve(import.meta.dirname, '..')
const { values: flags } = parseArgs({
  options: { runs: { type: 'string', default: '5' }, 'no-12': { type: 'boolean' }, 'no-fresh': { type: 'boolean' } },
})
const RUNS = Number(flags.runs)

interface Timing {
  wall: number
  user: number
  sys: number
  /** Steps run, summed over hosts (from the recap), when the command was a playbook. */
  steps?: number
}

interface Figure {
  name: string
  hosts: number
  runs: Timing[]
  min: number
  median: number
  max: number
  cpu: number
  /** Controller CPU (user+sys) per step per host, in milliseconds. */
  cpuMsPerStep?: number
}

/** Run a command under bash's `time`: wall, user and sys seconds of the whole process tree, Node start-up included. */
function timed(cmd: string): Promise<Timing & { code: number; out: string }> {
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
      if (!m) return rej(new Error(`no timing in output of ${cmd}:\n${out}`))
      let steps = 0
      for (const r of out.matchAll(/: ok=(\d+)\s+changed=\d+\s+unreachable=\d+\s+failed=(\d+)\s+skipped=(\d+)/g))
        steps += Number(r[1]) + Number(r[2]) + Number(r[3])
      res({
        code: code ?? 255,
        out,
        wall: Number(m[1]),
        user: Number(m[2]),
        sys: Number(m[3]),
        steps: steps || undefined,
      })
    })
  })
}

function figure(name: string, hosts: number, runs: Timing[]): Figure {
  const walls = runs.map((r) => r.wall).sort((a, b) => a - b)
  const cpu = runs.reduce((s, r) => s + r.user + r.sys, 0) / runs.length
  const steps = runs[0].steps
  return {
    name,
    hosts,
    runs,
    min: walls[0],
    median: walls[Math.floor(walls.length / 2)],
    max: walls[walls.length - 1],
    cpu,
    cpuMsPerStep: steps ? (cpu * 1000) / steps : undefined,
  }
}

async function repeat(
  name: string,
  hosts: number,
  cmd: string,
  n = RUNS,
  before?: () => Promise<void>,
): Promise<Figure> {
  const runs: Timing[] = []
  for (let i = 0; i < n; i++) {
    if (before) await before()
    const r = await timed(cmd)
    if (r.code !== 0) throw new Error(`${name}: exit ${r.code}\n${r.out}`)
    runs.push(r)
  }
  const f = figure(name, hosts, runs)
  process.stderr.write(`bench: ${name}: median ${f.median.toFixed(2)}s\n`)
  return f
}

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
    'systemctl show -p LoadState -p UnitFileState -p ActiveState dphys-swapfile.service systemd-zram-setup@zram0.service rpi-swap.service',
    '[ -e /var/swap ]; echo $?',
    "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' nfs-common curl ca-certificates iptables dphys-swapfile",
    'cat /etc/modules-load.d/k3s.conf /etc/sysctl.d/90-k3s.conf',
    'cat /sys/fs/cgroup/cgroup.controllers',
  ]
  const dir = mkdtempSync(join(tmpdir(), 'bench-floor-'))
  const ssh = (n: string, i: number) => {
    const script = join(dir, `${n}.sh`)
    writeFileSync(script, [...checks, ...extra(n, i)].join('\n') + '\n')
    return `ssh -o BatchMode=yes -o UserKnownHostsFile=${LAB_KNOWN_HOSTS} -o StrictHostKeyChecking=yes -i ${LAB_KEY} pi@${labAddress(n)} 'sudo -n sh -s' < ${script} >/dev/null &`
  }
  return `${names.map(ssh).join('\n')}\nwait`
}

/**
 * The site's floor: pi-prep's checks, plus what a no-op site must at least ask, in one script per host: k3s's
 * version, config and unit everywhere; on the server the node, the cluster reads of flux-bootstrap and apps
 * (side by side, several kinds per kubectl) and the one action a no-op still takes, `flux reconcile source git`.
 */
function siteFloorCommand(names: readonly string[]): string {
  const kubectl = 'k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml'
  const flux = '/usr/local/bin/flux --kubeconfig /etc/rancher/k3s/k3s.yaml'
  return floorCommand(names, (_n, i) => [
    '/usr/local/bin/k3s --version; cat /etc/rancher/k3s/config.yaml; systemctl show -p ActiveState -p UnitFileState k3s k3s-agent',
    ...(i > 0
      ? ['cat /etc/systemd/system/k3s-agent.service.env']
      : [
          `${kubectl} get nodes -o json`,
          `${kubectl} get namespaces -o json & ${kubectl} get gitrepositories.source.toolkit.fluxcd.io,kustomizations.kustomize.toolkit.fluxcd.io,deployments.apps -n flux-system -o json & ${kubectl} -n external-secrets get secret onepassword-service-account -o jsonpath='{.data.token}' & ${flux} --version & wait`,
          `${kubectl} get kustomizations.kustomize.toolkit.fluxcd.io,helmreleases.helm.toolkit.fluxcd.io -A -o json & ${kubectl} get clustersecretstores.external-secrets.io,externalsecrets.external-secrets.io -A -o json & ${kubectl} get nodes,pods,deployments.apps,statefulsets.apps,daemonsets.apps,cronjobs.batch -A -o json & wait`,
          `${flux} reconcile source git flux-system -n flux-system`,
        ]),
  ])
}

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

/**
 * Bring the lab to a converged site before the reruns are timed. A lab left by the tests may not converge (the
 * stand-in tests install a server with their own token): then it is flashed afresh and converged from there.
 */
async function converge(): Promise<void> {
  const cmd = `zx playbooks/site.mts -i ${resolve(REPO, 'inventory/lab.yaml')}`
  if ((await timed(cmd)).code === 0) return
  process.stderr.write('bench: the lab did not converge as it was; flashing it afresh\n')
  await labUp(DEFAULT_HOSTS, { fresh: true })
  const again = await timed(cmd)
  if (again.code !== 0) throw new Error(`the lab does not converge:\n${again.out}`)
}

const figures: Figure[] = []
const twelve = Array.from({ length: 12 }, (_, i) => `pi-lab-${String(i + 1).padStart(2, '0')}`)

await labUp(DEFAULT_HOSTS, { fresh: !flags['no-fresh'] })
const inv3 = resolve(REPO, 'inventory/lab.yaml')
if (!flags['no-fresh']) {
  // A fresh site run needs freshly flashed hosts each time: re-flash before every run (not timed).
  figures.push(
    await repeat('fresh site run', 3, `zx playbooks/site.mts -i ${inv3}`, Math.min(RUNS, 3), async () => {
      await labUp(DEFAULT_HOSTS, { fresh: true })
    }),
  )
} else {
  await converge()
}
if (!flags['no-fresh']) {
  const events = join(mkdtempSync(join(tmpdir(), 'bench-events-')), 'fresh.jsonl')
  const apt: Timing[] = []
  const rebootHandler: Timing[] = []
  const fresh = await repeat(
    'fresh pi-prep (incl. apt and reboot)',
    3,
    `zx playbooks/pi-prep.mts -i ${inv3} --json ${events}`,
    Math.min(RUNS, 3),
    async () => {
      if (existsSync(events)) {
        apt.push({ wall: slowestStep(events, 'Install the packages the cluster needs'), user: 0, sys: 0 })
        rebootHandler.push({ wall: slowestStep(events, 'Reboot'), user: 0, sys: 0 })
      }
      await labUp(DEFAULT_HOSTS, { fresh: true })
    },
  )
  apt.push({ wall: slowestStep(events, 'Install the packages the cluster needs'), user: 0, sys: 0 })
  rebootHandler.push({ wall: slowestStep(events, 'Reboot'), user: 0, sys: 0 })
  // The fresh target is "the reboot + 2 s"; apt (mirror download + dpkg) is not the runner's to speed up, so show the rest too.
  const withoutApt = fresh.runs.map((r, i) => ({ wall: r.wall - (apt[i]?.wall ?? 0), user: 0, sys: 0 }))
  figures.push(
    fresh,
    figure('  of which: apt install (slowest host)', 3, apt),
    figure('  of which: reboot handler (slowest host)', 3, rebootHandler),
    figure('  the rest (run minus slowest apt)', 3, withoutApt),
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
  figures.push(figure('host reboot (systemctl reboot -> SSH back)', 1, reboots))
  await converge()
}
figures.push(await repeat('no-op site rerun', 3, `zx playbooks/site.mts -i ${inv3}`))
figures.push(await repeat('no-op pi-prep rerun', 3, `zx playbooks/pi-prep.mts -i ${inv3}`))
figures.push(await repeat('floor (one ssh per host, all checks)', 3, floorCommand(DEFAULT_HOSTS)))
figures.push(await repeat('site floor (+ the cluster reads)', 3, siteFloorCommand(DEFAULT_HOSTS)))
figures.push(await repeat('start-up only: zx --list-hosts', 3, `zx playbooks/pi-prep.mts -i ${inv3} --list-hosts`))
figures.push(
  await repeat('start-up only: npx zx --list-hosts', 3, `npx zx playbooks/pi-prep.mts -i ${inv3} --list-hosts`),
)

// A lab of 12 that will not come up (seen once: a container whose cgroup setup failed at boot) costs the
// 12-host rows, not the figures already measured: they are still printed and written, with the error.
let twelveError: string | undefined
if (!flags['no-12']) {
  try {
    await labUp(twelve, { fresh: false })
    const inv12 = inventoryFor(twelve)
    await timed(`zx playbooks/pi-prep.mts -i ${inv12} -f 12`)
    figures.push(await repeat('no-op pi-prep rerun', 12, `zx playbooks/pi-prep.mts -i ${inv12} -f 12`))
    figures.push(await repeat('floor (one ssh per host, all checks)', 12, floorCommand(twelve)))
  } catch (e) {
    twelveError = e instanceof Error ? e.message : String(e)
    process.stderr.write(`bench: the 12-host figures are missing: ${twelveError}\n`)
  }
}

const floorOf = (f: Figure) =>
  figures.find((g) => g.hosts === f.hosts && g.name.startsWith(f.name.includes('site') ? 'site floor' : 'floor'))
const rows = figures.map((f) => {
  const floor = floorOf(f)
  // Ratios for the reruns and start-up only: a fresh run is bound by apt and the reboot, not by round trips.
  const ratio =
    floor && (f.name.startsWith('no-op') || f.name.startsWith('start-up')) ? f.median / floor.median : undefined
  return { ...f, ratioToFloor: ratio }
})
console.log(`\n${'run'.padEnd(40)} hosts   min    median   max    x floor   cpu s/run  cpu ms/step/host`)
for (const r of rows)
  console.log(
    `${r.name.padEnd(40)} ${String(r.hosts).padStart(5)} ${r.min.toFixed(2).padStart(6)} ${r.median.toFixed(2).padStart(8)} ${r.max.toFixed(2).padStart(6)} ${(r.ratioToFloor ? r.ratioToFloor.toFixed(1) + 'x' : '').padStart(9)} ${r.cpu.toFixed(2).padStart(10)} ${(r.cpuMsPerStep ? r.cpuMsPerStep.toFixed(1) : '').padStart(17)}`,
  )
const out = {
  commit: commit(),
  date: new Date().toISOString(),
  machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, platform: process.platform },
  runs: RUNS,
  figures: rows,
  ...(twelveError ? { twelveHostsError: twelveError } : {}),
}
mkdirSync(join(REPO, 'bench/results'), { recursive: true })
const file = join(REPO, 'bench/results', `bench-${out.date.replace(/[:.]/g, '-')}.json`)
writeFileSync(file, JSON.stringify(out, null, 2) + '\n')
console.log(`\nwrote ${file}`)
